// Command lossy times a zpc upload and an scp upload of the same file over a
// lossy, delayed link, side by side in one run. It is the "lossy link" group
// of bench/bench.sh, which builds it and runs it as root:
//
//	go build -o /tmp/lossy ./bench/lossy
//	/tmp/lossy -bin bin -dir /tmp/zp-bench/lossy -ssh-dir /tmp/zp-bench -mib 64 -runs 3
//
// zpd and a private sshd run inside a network namespace made by
// internal/testutil/netns, joined to the host by a point-to-point link that
// drops -loss of the packets and delays each by -delay, in each direction.
// On kernels without the netem qdisc (this one) the link is a TUN pair whose
// packets this process carries across in userspace, applying loss and delay
// itself, so the process must stay alive for the whole measurement.
//
// Each run copies the file with scp and then with zpc in every -modes mode,
// interleaved; every copy starts with the destination removed and is checked
// against the source afterwards. The table (markdown) goes to stdout,
// progress to stderr. Without root (or iproute2) it prints why and exits 3.
// SIGINT/SIGTERM stop the running copy, zpd and sshd, delete the namespace
// and the work directory.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/testutil/netns"
)

// exitSkip is the exit status when the machine cannot make namespaces.
const exitSkip = 3

// tb is the small part of testing.TB that netns uses (Helper, Cleanup,
// Fatal, Skip, Errorf), for a program rather than a test. The embedded
// interface is nil: netns calls no other method.
type tb struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	once     sync.Once
}

func (t *tb) Helper() {}

func (t *tb) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *tb) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "lossy: "+format+"\n", args...)
}

func (t *tb) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"lossy:"}, args...)...)
	t.exit(1)
}

func (t *tb) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }

func (t *tb) Skip(args ...any) {
	msg := fmt.Sprint(args...)
	fmt.Fprintln(os.Stderr, "lossy: skipped:", msg)
	fmt.Println("skipped:", msg)
	t.exit(exitSkip)
}

// runCleanups runs the cleanups once, last registered first.
func (t *tb) runCleanups() {
	t.once.Do(func() {
		t.mu.Lock()
		fs := t.cleanups
		t.cleanups = nil
		t.mu.Unlock()
		for _, f := range slices.Backward(fs) {
			f()
		}
	})
}

func (t *tb) exit(code int) {
	t.runCleanups()
	os.Exit(code)
}

type config struct {
	bin, dir, sshDir string
	mib, runs        int
	loss, delay      string
	modes            []string
	timeout          time.Duration
}

// mode is one zp configuration: a zpd in the namespace and the flags zpc
// needs for it.
type mode struct {
	name  string   // "CURVE", "--insecure"
	flags []string // zpc's security flags
	host  string   // NSIP:PORT of its zpd
}

// result is one timed copy.
type result struct {
	secs          float64
	sent, dropped int64 // link packets, both directions, during the copy
	reconnects    int
	bytesSent     uint64 // zpc --json bytes_sent
}

var (
	t   = &tb{}
	cfg config
	env []string // environment for zp and zpc: the private ZP_CONFIG
)

func main() {
	flag.StringVar(&cfg.bin, "bin", "bin", "directory with zp, zpd and zpc")
	flag.StringVar(&cfg.dir, "dir", "", "work directory (created; removed at exit): source file, zpd states, copies")
	flag.StringVar(&cfg.sshDir, "ssh-dir", "", "directory with bench.sh's ssh keys: hostkey, key, authorized_keys")
	flag.IntVar(&cfg.mib, "mib", 64, "file size in MiB")
	flag.IntVar(&cfg.runs, "runs", 3, "runs per cell (median and best reported)")
	flag.StringVar(&cfg.loss, "loss", "5%", "packet loss, each direction (netem syntax)")
	flag.StringVar(&cfg.delay, "delay", "50ms", "one-way delay, each direction (netem syntax)")
	modes := flag.String("modes", "curve,insecure", "zp modes to measure: curve, insecure (comma-separated)")
	flag.DurationVar(&cfg.timeout, "timeout", 15*time.Minute, "give up on one copy after this long")
	flag.Parse()
	if cfg.dir == "" || cfg.sshDir == "" || cfg.runs < 1 || cfg.mib < 1 {
		fmt.Fprintln(os.Stderr, "usage: lossy -dir DIR -ssh-dir DIR [-bin DIR] [-mib N] [-runs N] [-loss 5%] [-delay 50ms] [-modes curve,insecure]")
		os.Exit(2)
	}
	cfg.modes = strings.Split(*modes, ",")
	var err error
	if cfg.bin, err = filepath.Abs(cfg.bin); err != nil {
		t.Fatal(err)
	}

	// SIGINT/SIGTERM (bench.sh's trap): stop everything, delete the namespace.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "lossy: %v: cleaning up\n", s)
		cancel()
		t.exit(128 + int(s.(syscall.Signal)))
	}()
	defer t.runCleanups()

	if err := netns.Available(); err != nil {
		t.Skip("netns: needs root and iproute2: " + err.Error())
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(cfg.dir) })
	env = append(os.Environ(), "ZP_CONFIG="+filepath.Join(cfg.dir, "zp-config"))

	src := filepath.Join(cfg.dir, "src")
	size := int64(cfg.mib) << 20
	sum := makeFile(src, size)

	ns := netns.New(t, "lossy")
	sshHost := startSSHD(ctx, ns)
	var ms []mode
	for _, m := range cfg.modes {
		switch m {
		case "curve":
			ms = append(ms, startZPD(ctx, ns, "CURVE", true))
		case "insecure":
			ms = append(ms, startZPD(ctx, ns, "--insecure", false))
		default:
			t.Fatalf("unknown mode %q", m)
		}
	}

	if err := ns.Netem("delay", cfg.delay, "loss", cfg.loss); err != nil {
		t.Fatal(err)
	}
	sshO := sshOpts()
	dst := filepath.Join(cfg.dir, "dst")
	scpRes := []result{}
	zpcRes := make([][]result, len(ms))
	for r := 1; r <= cfg.runs; r++ {
		fmt.Fprintf(os.Stderr, "lossy: run %d/%d: scp\n", r, cfg.runs)
		args := append(append([]string{}, sshO...), "-P", "22", src, sshHost+":"+dst)
		scpRes = append(scpRes, timed(ctx, ns, "scp", args, dst, size, sum))
		for i, m := range ms {
			fmt.Fprintf(os.Stderr, "lossy: run %d/%d: zpc %s\n", r, cfg.runs, m.name)
			args := append(append([]string{"--json"}, m.flags...), src, m.host+":"+dst)
			zpcRes[i] = append(zpcRes[i], timed(ctx, ns, filepath.Join(cfg.bin, "zpc"), args, dst, size, sum))
		}
	}

	linkDesc := map[netns.LinkKind]string{
		netns.LinkTun:  "TUN pair, loss and delay applied in userspace by this bench process (the kernel has no netem)",
		netns.LinkVeth: "veth pair with tc netem",
	}[ns.Link()]
	name := fmt.Sprintf("%d MiB", cfg.mib)
	fmt.Printf("Link: %s; %s loss and %s delay in each direction (round trip +2×%s); file %s; %d run(s) per cell, scp and zpc interleaved; MB/s = 10^6 B/s from the median\n\n",
		linkDesc, cfg.loss, cfg.delay, cfg.delay, name, cfg.runs)
	fmt.Println("| upload over the lossy link | zpc median | scp median | zpc/scp time | zpc MB/s | scp MB/s | packets lost on the link (zpc / scp) | zpc reconnects |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	sm, sb := stats(scpRes)
	for i, m := range ms {
		zm, zb := stats(zpcRes[i])
		reconn := 0
		for _, r := range zpcRes[i] {
			reconn += r.reconnects
		}
		fmt.Printf("| %s, zpc %s vs scp | %.1f s (best %.1f) | %.1f s (best %.1f) | %.2f | %.2f | %.2f | %s / %s | %d |\n",
			name, m.name, zm, zb, sm, sb, zm/sm, float64(size)/zm/1e6, float64(size)/sm/1e6,
			lossPct(zpcRes[i]), lossPct(scpRes), reconn)
	}
}

// makeFile writes size pseudo-random octets (ChaCha8, fixed seed) and
// returns their SHA-256.
func makeFile(path string, size int64) [32]byte {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{'z', 'p'})
	if _, err := io.CopyN(io.MultiWriter(f, h), rng, size); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func sshOpts() []string {
	return []string{"-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "SetEnv=SHLVL=1", "-i", filepath.Join(cfg.sshDir, "key")}
}

// startSSHD runs a private sshd inside the namespace on NSIP:22 (the
// namespace has its own ports) with bench.sh's keys, and returns NSIP.
func startSSHD(ctx context.Context, ns *netns.NS) string {
	conf := filepath.Join(cfg.dir, "sshd_config")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`Port 22
ListenAddress %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
AcceptEnv SHLVL
`, ns.NSIP(), filepath.Join(cfg.sshDir, "hostkey"), filepath.Join(cfg.dir, "sshd.pid"),
		filepath.Join(cfg.sshDir, "authorized_keys"))), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	logf := filepath.Join(cfg.dir, "sshd.log")
	cmd := ns.Command(ctx, "/usr/sbin/sshd", "-D", "-f", conf, "-E", logf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	args := append(sshOpts(), "-p", "22", ns.NSIP(), "true")
	for range 100 {
		if exec.CommandContext(ctx, "ssh", args...).Run() == nil {
			return ns.NSIP()
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(logf)
	t.Fatalf("sshd in the namespace does not answer: %s", bytes.TrimSpace(b))
	return ""
}

var addrRE = regexp.MustCompile(`zpd listening.* addr=([0-9.]+:[0-9]+)`)

// startZPD runs zpd inside the namespace on NSIP:<free port>. A CURVE zpd
// authorises a key made with zp keygen in the private ZP_CONFIG, and its
// key is pinned with zp --accept-new (on the clean link).
func startZPD(ctx context.Context, ns *netns.NS, name string, curve bool) mode {
	state, err := os.MkdirTemp(cfg.dir, "zpd-state-")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--listen", ns.NSIP() + ":0", "--state", state}
	m := mode{name: name}
	if curve {
		out, err := zpCmd(ctx, "zp", "keygen").Output()
		if err != nil {
			t.Fatalf("zp keygen: %v", err)
		}
		ak := filepath.Join(cfg.dir, "authorized-keys")
		if err := os.WriteFile(ak, []byte(lastLine(string(out))+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--authorized-keys", ak)
	} else {
		// --insecure is refused off loopback unless allowed: this link
		// is private to the machine.
		args = append(args, "--insecure", "--insecure-allow-remote")
		if os.Geteuid() == 0 {
			// and as root only with this (the namespace's zpd serves
			// this bench alone)
			args = append(args, "--insecure-anyone-is-root")
		}
		m.flags = []string{"--insecure"}
	}
	logf := filepath.Join(cfg.dir, "zpd-"+strings.Trim(name, "-")+".log")
	lf, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(ctx, filepath.Join(cfg.bin, "zpd"), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); lf.Close() })
	for range 200 {
		b, _ := os.ReadFile(logf)
		if sm := addrRE.FindSubmatch(b); sm != nil {
			m.host = string(sm[1])
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if m.host == "" {
		b, _ := os.ReadFile(logf)
		t.Fatalf("zpd (%s) in the namespace did not start: %s", name, bytes.TrimSpace(b))
	}
	pin := append(append([]string{}, m.flags...), "--accept-new", m.host, "true")
	if out, err := zpCmd(ctx, "zp", pin...).CombinedOutput(); err != nil {
		t.Fatalf("zp %s: %v: %s", strings.Join(pin, " "), err, bytes.TrimSpace(out))
	}
	return m
}

func zpCmd(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.bin, prog), args...)
	cmd.Env = env
	return cmd
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// timed removes dst, runs prog args to completion and checks that dst is
// the source (size and SHA-256). Any failure ends the program.
func timed(ctx context.Context, ns *netns.NS, prog string, args []string, dst string, size int64, sum [32]byte) result {
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	syscall.Sync() // earlier copies' dirty pages are not this one's business
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	sent0, drop0 := ns.LinkStats()
	start := time.Now()
	err := cmd.Run()
	el := time.Since(start)
	sent1, drop1 := ns.LinkStats()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (timed out after %v)", err, cfg.timeout)
		}
		t.Fatalf("%s %s: %v\n%s", filepath.Base(prog), strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	if got := fileSum(dst); got != sum {
		t.Fatalf("%s: %s differs from the source", filepath.Base(prog), dst)
	}
	r := result{secs: el.Seconds(), sent: sent1 - sent0, dropped: drop1 - drop0}
	sc := bufio.NewScanner(&errb)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "reconnect") {
			r.reconnects++
		}
	}
	var js struct {
		BytesSent uint64 `json:"bytes_sent"`
	}
	if json.Unmarshal(out.Bytes(), &js) == nil {
		r.bytesSent = js.BytesSent
	}
	fmt.Fprintf(os.Stderr, "lossy:   %.1f s, %.2f MB/s, link packets %d carried, %d dropped\n",
		r.secs, float64(size)/r.secs/1e6, r.sent, r.dropped)
	return r
}

func fileSum(path string) [32]byte {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return [32]byte{}
		}
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// stats returns the median and best time in seconds.
func stats(rs []result) (median, best float64) {
	ts := make([]float64, len(rs))
	for i, r := range rs {
		ts[i] = r.secs
	}
	slices.Sort(ts)
	n := len(ts)
	if n%2 == 1 {
		median = ts[n/2]
	} else {
		median = (ts[n/2-1] + ts[n/2]) / 2
	}
	return median, ts[0]
}

// lossPct is the share of packets the link dropped during these copies,
// both directions together: a check that the impairment is what was asked.
func lossPct(rs []result) string {
	var sent, dropped int64
	for _, r := range rs {
		sent += r.sent
		dropped += r.dropped
	}
	if sent+dropped == 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(dropped)/float64(sent+dropped))
}
