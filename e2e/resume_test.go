package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/testutil/faultproxy"
	"github.com/zpipes/zp/internal/testutil/netns"
)

// makeFile writes size pseudo-random octets and returns the path and the
// SHA-256.
func makeFile(t *testing.T, size int) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), &patternReader{left: size}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p, hex.EncodeToString(h.Sum(nil))
}

func proxyTo(t *testing.T, d *zpd) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// zpVia starts zp against addr (a proxy in front of d).
func zpVia(t *testing.T, d *zpd, addr string, stdin io.Reader, stdout io.Writer, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	// Not -q: the tests read zp's notices about the link.
	cmd := exec.Command(bin("zp"), append([]string{"--accept-new", addr}, args...)...)
	cmd.Env = append(os.Environ(), d.env()...)
	cmd.Stdin = stdin
	cmd.Stdout = stdout
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, errb
}

// cutAt cuts every connection through p each time the octets carried
// (both ways) pass one of the marks.
func cutAt(p *faultproxy.Proxy, marks ...int64) chan int {
	cuts := make(chan int, len(marks))
	go func() {
		for i, m := range marks {
			for {
				up, down := p.Bytes()
				if up+down >= m {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			p.Cut()
			cuts <- i + 1
		}
		close(cuts)
	}()
	return cuts
}

// A running zp survives its TCP connection being cut three times: output
// byte-identical, nothing lost or duplicated, memory bounded, and at most
// a window resent per cut.
func TestResumeAfterCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d, murl := metricsZPD(t, "--grace", "30s")
	const size = 200 << 20
	src, sum := makeFile(t, size)
	p := proxyTo(t, d)

	t.Run("download", func(t *testing.T) {
		h := sha256.New()
		var n atomic.Int64
		w := writerFunc(func(b []byte) (int, error) { n.Add(int64(len(b))); return h.Write(b) })
		cmd, errb := zpVia(t, d, p.Addr(), nil, w, "cat", src)
		rss := sampleRSS(cmd.Process.Pid)
		cuts := cutAt(p, size/4, size/2, 3*size/4)
		code := waitExit(t, cmd, 2*time.Minute)
		if code != 0 || hex.EncodeToString(h.Sum(nil)) != sum || n.Load() != size {
			t.Fatalf("exit %d, %d octets, digest ok=%v; stderr:\n%s", code, n.Load(), hex.EncodeToString(h.Sum(nil)) == sum, errb)
		}
		got := 0
		for range cuts {
			got++
		}
		if c := strings.Count(errb.String(), "reconnected"); got != 3 || c != 3 {
			t.Fatalf("%d cuts, %d reconnections:\n%s", got, c, errb)
		}
		if kb := rss(); int(kb) > rssLimitKB() {
			t.Fatalf("zp peak RSS %d KiB", kb)
		}
	})
	t.Run("upload", func(t *testing.T) {
		f, _ := os.Open(src)
		defer f.Close()
		var out bytes.Buffer
		cmd, errb := zpVia(t, d, p.Addr(), f, &out, "sha256sum")
		cutAt(p, p0(p)+size/3, p0(p)+2*size/3)
		code := waitExit(t, cmd, 2*time.Minute)
		if code != 0 || !strings.HasPrefix(out.String(), sum) {
			t.Fatalf("exit %d, got %q want %s; stderr:\n%s", code, out.String(), sum, errb)
		}
		if c := strings.Count(errb.String(), "reconnected"); c != 2 {
			t.Fatalf("%d reconnections:\n%s", c, errb)
		}
	})
	resent := metric(t, murl, "zp_resent_bytes_total")
	t.Logf("zpd resent %.0f octets over 3 download cuts", resent)
	// A command's output window is 16 MiB (broker execWindow): at most
	// that much is unacknowledged, so resent, per cut.
	if resent > 3*16<<20 {
		t.Fatalf("zpd resent %.0f octets for 3 cuts: more than a 16 MiB window per cut", resent)
	}
	if kb, _ := rssKB(d.PID()); kb > rssLimitKB() {
		t.Fatalf("zpd peak RSS %d KiB", kb)
	}
}

func p0(p *faultproxy.Proxy) int64 {
	up, down := p.Bytes()
	return up + down
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// A stall longer than the timeout is detected within seconds; when the
// link comes back the session resumes and the command goes on unharmed.
func TestResumeAfterStall(t *testing.T) {
	d := startZPD(t, "--heartbeat", "500ms", "--timeout", "2s", "--grace", "30s")
	p := proxyTo(t, d)
	pr, pw := io.Pipe()
	cmd, errb := zpVia(t, d, p.Addr(), nil, pw, "sh", "-c", "i=0; while [ $i -lt 30 ]; do echo line $i; i=$((i+1)); sleep 0.2; done")
	lines := bufio.NewReader(pr)
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			l, err := lines.ReadString('\n')
			if err != nil {
				return
			}
			got = append(got, strings.TrimSpace(l))
		}
	}()
	time.Sleep(1 * time.Second)
	p.Stall()
	stalled := time.Now()
	eventually(t, 10*time.Second, "the stall detected", func() bool { return strings.Contains(errb.String(), "connection to") })
	detect := time.Since(stalled)
	time.Sleep(3 * time.Second)
	p.Unstall()
	code := waitExit(t, cmd, 60*time.Second)
	pw.Close()
	<-done
	if code != 0 || len(got) != 30 || got[0] != "line 0" || got[29] != "line 29" {
		t.Fatalf("exit %d, %d lines; stderr:\n%s", code, len(got), errb)
	}
	for i, l := range got {
		if l != fmt.Sprintf("line %d", i) {
			t.Fatalf("line %d is %q: lost or duplicated output", i, l)
		}
	}
	t.Logf("stall detected after %v; %s", detect.Round(10*time.Millisecond), strings.TrimSpace(errb.String()))
	if detect > 4*time.Second {
		t.Fatalf("took %v to notice a stall with a 2s timeout", detect)
	}
	if !strings.Contains(errb.String(), "reconnected") {
		t.Fatalf("did not resume:\n%s", errb)
	}
}

// A client that never comes back: after the grace period its session is
// reaped, the command gets SIGHUP, and nothing leaks.
func TestClientNeverReturns(t *testing.T) {
	d, murl := metricsZPD(t, "--grace", "2s", "--timeout", "2s")
	baseGo := metric(t, murl, "go_goroutines")
	baseFD := countFDs(t, d.PID())
	token := strconv.Itoa(int(time.Now().UnixNano() % 1e6))
	marker := filepath.Join(t.TempDir(), "hup")
	cmd, out, _ := startZP(t, d, nil, "sh", "-c", fmt.Sprintf("trap 'echo hup > %s; exit 1' HUP; echo ready; sleep 100%s & wait", marker, token))
	expectLine(t, out, "ready")
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	eventually(t, 10*time.Second, "session reaped", func() bool {
		return metric(t, murl, "zp_sessions_reaped_total") == 1
	})
	eventually(t, 5*time.Second, "the command got SIGHUP", func() bool {
		_, err := os.Stat(marker)
		return err == nil
	})
	eventually(t, 10*time.Second, "the command's process group gone", func() bool {
		return exec.Command("pgrep", "-f", "sleep 100"+token).Run() != nil
	})
	eventually(t, 10*time.Second, "goroutines and fds back to the baseline", func() bool {
		return metric(t, murl, "go_goroutines") <= baseGo+2 && countFDs(t, d.PID()) <= baseFD+1
	})
	if metric(t, murl, "zp_sessions") != 0 {
		t.Fatal("a session is still held")
	}
}

func countFDs(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// zpdInNS starts zpd inside a network namespace.
func zpdInNS(t *testing.T, ns *netns.NS, args ...string) *zpd {
	t.Helper()
	home := t.TempDir()
	r := run(t, nil, []string{"ZP_CONFIG=" + home}, "zp", "keygen")
	ak := filepath.Join(home, "authorized_for_zpd")
	os.WriteFile(ak, []byte(strings.TrimSpace(r.Stdout)+"\n"), 0o600)
	d := &zpd{t: t, State: t.TempDir(), Home: home, log: &syncBuffer{}, done: make(chan struct{}), secure: true}
	all := append([]string{"--listen", ns.NSIP() + ":0", "--state", d.State, "--authorized-keys", ak}, args...)
	d.cmd = ns.Command(context.Background(), bin("zpd"), all...)
	startAndWait(t, d)
	return d
}

var mbRE = regexp.MustCompile(`"bytes_sent": (\d+)`)

// Real packets: zpd in its own network namespace behind an impaired link.
func TestResumeNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ns := netns.New(t, "resume")
	d := zpdInNS(t, ns, "--heartbeat", "500ms", "--timeout", "3s", "--grace", "60s")

	t.Run("link down and up under zp", func(t *testing.T) {
		const size = 64 << 20
		src, sum := makeFile(t, size)
		h := sha256.New()
		var n atomic.Int64
		w := writerFunc(func(b []byte) (int, error) { n.Add(int64(len(b))); return h.Write(b) })
		cmd, errb := zpVia(t, d, d.Addr, nil, w, "sh", "-c", "head -c 33554432 "+src+"; sleep 2; tail -c +33554433 "+src)
		eventually(t, 30*time.Second, "half the output", func() bool { return n.Load() >= size/2 })
		ns.LinkDown()
		time.Sleep(5 * time.Second) // longer than the timeout: zp notices and reconnects
		ns.LinkUp()
		if code := waitExit(t, cmd, 2*time.Minute); code != 0 || hex.EncodeToString(h.Sum(nil)) != sum {
			t.Fatalf("exit %d, %d octets; stderr:\n%s", code, n.Load(), errb)
		}
		if !strings.Contains(errb.String(), "reconnected") {
			t.Fatalf("no reconnection:\n%s", errb)
		}
		t.Logf("%s", strings.TrimSpace(errb.String()))
	})

	t.Run("zpc with 5% loss and 50ms delay", func(t *testing.T) {
		size := 500 << 20
		if s := os.Getenv("ZP_LOSSY_MIB"); s != "" {
			m, _ := strconv.Atoi(s)
			size = m << 20
		}
		src, sum := makeFile(t, size)
		if err := ns.Impair(netns.Impairment{Delay: 50 * time.Millisecond, Loss: 0.05}); err != nil {
			t.Fatal(err)
		}
		defer ns.ClearNetem()
		dest := filepath.Join(t.TempDir(), "copy")
		start := time.Now()
		args := append(append([]string{"--json"}, d.clientArgs()...), src, d.Addr+":"+dest)
		cmd := exec.Command(bin("zpc"), args...)
		cmd.Env = append(os.Environ(), d.env()...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		zpcRSS := sampleRSS(cmd.Process.Pid)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("zpc: %v\n%s\n%s", err, out.String(), errb.String())
		}
		el := time.Since(start)
		f, _ := os.Open(dest)
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		if hex.EncodeToString(h.Sum(nil)) != sum {
			t.Fatal("copy differs")
		}
		m := mbRE.FindStringSubmatch(out.String())
		sent, _ := strconv.Atoi(m[1])
		t.Logf("zpc %d MiB over 5%% loss, 50 ms delay each way: %v (%.2f MB/s), bytes_sent %d, zpc peak RSS %d KiB; %s",
			size>>20, el.Round(time.Millisecond), float64(size)/el.Seconds()/1e6, sent, zpcRSS(), strings.TrimSpace(errb.String()))
		// A resume resends at most what was in flight: one transfer window
		// (zpd's default, 16 MiB) per reconnection. The link may drop more
		// than once under loss on a busy machine.
		const window = 16 << 20
		if n := max(1, strings.Count(errb.String(), "reconnected to")); sent > size+n*window {
			t.Fatalf("sent %d octets for %d with %d reconnections: more than a window resent per reconnection", sent, size, n)
		}
		if kb := zpcRSS(); int(kb) > rssLimitKB() {
			t.Fatalf("zpc peak RSS %d KiB", kb)
		}
	})
}
