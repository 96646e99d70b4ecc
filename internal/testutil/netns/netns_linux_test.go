package netns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary an echo server (see TestMain), so that a
// test can run a server process inside a namespace with ns.Command.
const helperEnv = "ZP_NETNS_TEST_ECHO"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		echoProcess(addr)
		return
	}
	goleak.VerifyTestMain(m)
}

// echoProcess listens on addr, prints "listening ADDR" and echoes every
// connection until its standard input closes.
func echoProcess(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

// links runs f once per kind of link, as parallel subtests. needNetem skips
// the veth case on kernels without netem (the TUN case covers it there).
func links(t *testing.T, needNetem bool, f func(t *testing.T, k LinkKind)) {
	for _, k := range []LinkKind{LinkVeth, LinkTun} {
		t.Run(k.String(), func(t *testing.T) {
			t.Parallel()
			if needNetem && k == LinkVeth {
				ns := New(t, "probe", WithLink(LinkVeth))
				if !kernelNetem(ns.Name()) {
					t.Skip("netns: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); the tun case covers it")
				}
			}
			f(t, k)
		})
	}
}

// echoServer serves echo inside ns on NSIP:port until the test ends.
func echoServer(t *testing.T, ns *NS) string {
	t.Helper()
	ln, err := ns.Listen("tcp", ns.NSIP()+":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func ping(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	buf := make([]byte, 4)
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func minRTT(t *testing.T, c net.Conn, n int) time.Duration {
	t.Helper()
	best := time.Hour
	for range n {
		best = min(best, ping(t, c))
	}
	return best
}

func netnsList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(must(tool("ip")), "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return string(out)
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(must(tool("ip")), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestNewAndCleanup(t *testing.T) {
	links(t, false, func(t *testing.T, k LinkKind) {
		var name, hostIf string
		t.Run("use", func(t *testing.T) {
			ns := New(t, t.Name(), WithLink(k))
			name, hostIf = ns.Name(), ns.HostIf()
			if ns.Link() != k {
				t.Errorf("Link() = %v, want %v", ns.Link(), k)
			}
			if !strings.HasPrefix(name, "zp-") {
				t.Errorf("name %q", name)
			}
			if !strings.Contains(netnsList(t), name) {
				t.Fatalf("%s not in ip netns list", name)
			}
			h, n := net.ParseIP(ns.HostIP()).To4(), net.ParseIP(ns.NSIP()).To4()
			if h[0] != 10 || h[1] < 200 || h[1] > 250 || h[3]%4 != 1 || n[3] != h[3]+1 {
				t.Errorf("addresses %s, %s not a 10.200-250.x.y/30 pair", h, n)
			}
			if out := ipOut(t, "-n", name, "-o", "addr", "show", "dev", ns.NSIf()); !strings.Contains(out, ns.NSIP()+"/30") {
				t.Errorf("namespace device lacks %s/30: %s", ns.NSIP(), out)
			}
			if out := ipOut(t, "-o", "addr", "show", "dev", hostIf); !strings.Contains(out, ns.HostIP()+"/30") {
				t.Errorf("host device lacks %s/30: %s", ns.HostIP(), out)
			}
			if out := ipOut(t, "-n", name, "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
				t.Errorf("lo is not up in the namespace: %s", out)
			}
			// The namespace routes nowhere but its /30.
			if out := ipOut(t, "-n", name, "route", "show"); strings.Contains(out, "default") {
				t.Errorf("namespace has a default route: %s", out)
			}
			ping(t, dial(t, echoServer(t, ns)))
		})
		if name == "" {
			return
		}
		if strings.Contains(netnsList(t), name) {
			t.Errorf("%s still in ip netns list after the test", name)
		}
		if _, err := os.Stat(filepath.Join(runDir, name)); !os.IsNotExist(err) {
			t.Errorf("%s/%s still exists: %v", runDir, name, err)
		}
		if _, err := net.InterfaceByName(hostIf); err == nil {
			t.Errorf("host device %s still exists", hostIf)
		}
	})
}

func TestCleanupKillsProcessesAndSweepsStale(t *testing.T) {
	var pid int
	t.Run("use", func(t *testing.T) {
		ns := New(t, "kill", WithLink(LinkTun))
		cmd := ns.Command(context.Background(), "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid = cmd.Process.Pid
		// Reap it once the cleanup kills it.
		go cmd.Wait()
		// Wait until "ip netns exec" has moved it into the namespace.
		id, _ := nsOf(filepath.Join(runDir, ns.Name()))
		deadline := time.Now().Add(3 * time.Second)
		for {
			if got, ok := nsOf(fmt.Sprintf("/proc/%d/ns/net", pid)); ok && got == id {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the command never entered the namespace")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	deadline := time.Now().Add(3 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d left running in a deleted namespace", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A namespace named as if by a test process that no longer exists is
	// swept.
	stale := fmt.Sprintf("zp-stale-%d-abcdef", deadPID(t))
	if err := ipCmd("netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("netns", "del", stale) })
	sweepStale()
	if strings.Contains(netnsList(t), stale) {
		t.Errorf("stale namespace %s not swept", stale)
	}
}

// deadPID returns the id of a process that has exited.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestCommandRunsInNamespace(t *testing.T) {
	links(t, false, func(t *testing.T, k LinkKind) {
		ns := New(t, "cmd", WithLink(k))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := ns.Command(ctx, os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"="+ns.NSIP()+":0")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("helper: %v", err)
		}
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
		if !ok {
			t.Fatalf("helper said %q", line)
		}
		// It could bind NSIP, which exists only in the namespace, and
		// the host reaches it there.
		ping(t, dial(t, addr))
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper exit: %v", err)
		}

		out, err := ns.Command(ctx, must(tool("ip")), "-o", "-4", "addr").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), ns.NSIP()) || strings.Contains(string(out), ns.HostIP()) {
			t.Errorf("ip addr inside the namespace:\n%s", out)
		}
	})
}

func TestDo(t *testing.T) {
	ns := New(t, "do")
	var names []string
	err := ns.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, ","); got != "lo,"+ns.NSIf() {
		t.Errorf("interfaces inside the namespace: %s, want lo,%s", got, ns.NSIf())
	}
	want := errors.New("fn error")
	if err := ns.Do(func() error { return want }); err != want {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	// The calling goroutine is not moved into the namespace.
	if _, err := net.InterfaceByName(ns.NSIf()); err == nil {
		t.Error("namespace device visible from the host after Do")
	}
}

// retransmits reads the namespace's TCP retransmitted-segment counter.
func retransmits(t *testing.T, ns *NS) int64 {
	t.Helper()
	var n int64 = -1
	err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Tcp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i, name := range names {
				if name == "RetransSegs" && i < len(f) {
					n, err = strconv.ParseInt(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Tcp RetransSegs in snmp")
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNetemDelay(t *testing.T) {
	links(t, true, func(t *testing.T, k LinkKind) {
		ns := New(t, "delay", WithLink(k))
		c := dial(t, echoServer(t, ns))
		base := minRTT(t, c, 10)

		if err := ns.Netem("delay", "50ms"); err != nil {
			t.Fatal(err)
		}
		rtt := minRTT(t, c, 5)
		t.Logf("%v link: RTT %v clean, %v with netem delay 50ms on both ends", k, base, rtt)
		if rtt < 100*time.Millisecond || rtt > 160*time.Millisecond {
			t.Errorf("RTT with delay 50ms each way = %v, want about 100ms", rtt)
		}

		// Impair replaces rather than adds.
		if err := ns.Impair(Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		if rtt := minRTT(t, c, 5); rtt < 30*time.Millisecond || rtt > 90*time.Millisecond {
			t.Errorf("RTT with delay 20ms±5ms each way = %v, want 30-50ms", rtt)
		}

		if err := ns.ClearNetem(); err != nil {
			t.Fatal(err)
		}
		if err := ns.ClearNetem(); err != nil { // already clean
			t.Fatal(err)
		}
		if rtt := minRTT(t, c, 5); rtt > 20*time.Millisecond {
			t.Errorf("RTT after ClearNetem = %v", rtt)
		}
	})
}

// transfer echoes size random bytes through c and checks they come back
// intact.
func transfer(t *testing.T, c *net.TCPConn, size int64) {
	t.Helper()
	src := rand.NewChaCha8([32]byte{42})
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(c, sent), io.LimitReader(src, size))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		t.Fatalf("read after %d bytes: %v", n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("received %d bytes (want %d) or content differs", n, size)
	}
}

func TestNetemLoss(t *testing.T) {
	links(t, true, func(t *testing.T, k LinkKind) {
		ns := New(t, "loss", WithLink(k))
		c := dial(t, echoServer(t, ns))
		if err := ns.Netem("loss", "5%"); err != nil {
			t.Fatal(err)
		}
		before := retransmits(t, ns)
		start := time.Now()
		const size = 2 << 20
		transfer(t, c, size)
		rt := retransmits(t, ns) - before
		sent, dropped := ns.LinkStats()
		t.Logf("%v link: 2 MiB each way with 5%% loss each way in %v; namespace TCP retransmitted %d segments; link carried %d packets, dropped %d",
			k, time.Since(start), rt, sent, dropped)
		if rt == 0 {
			t.Error("no retransmission: the loss did not happen")
		}
		if k == LinkTun {
			if ratio := float64(dropped) / float64(sent+dropped); ratio < 0.02 || ratio > 0.10 {
				t.Errorf("dropped %d of %d packets (%.1f%%), want about 5%%", dropped, sent+dropped, 100*ratio)
			}
		}
	})
}

func TestNetemRate(t *testing.T) {
	links(t, true, func(t *testing.T, k LinkKind) {
		ns := New(t, "rate", WithLink(k))
		c := dial(t, echoServer(t, ns))
		if err := ns.Netem("rate", "40mbit"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		const size = 1 << 20 // 8 Mbit each way, in parallel: 0.2 s at 40 Mbit/s
		transfer(t, c, size)
		el := time.Since(start)
		t.Logf("%v link: 1 MiB each way at 40mbit in %v", k, el)
		if el < 180*time.Millisecond || el > 2*time.Second {
			t.Errorf("1 MiB each way at 40 Mbit/s took %v, want about 0.2s (plus headers)", el)
		}
	})
}

func TestNetemUnsupportedArgs(t *testing.T) {
	ns := New(t, "args", WithLink(LinkTun))
	if err := ns.Netem("duplicate", "1%"); err == nil {
		t.Error("Netem duplicate on a tun link: want an error")
	}
	if err := ns.Impair(Impairment{Loss: 2}); err == nil {
		t.Error("Impair with loss 2: want an error")
	}
}

func TestVethNetemUnsupportedError(t *testing.T) {
	ns := New(t, "veth", WithLink(LinkVeth))
	if kernelNetem(ns.Name()) {
		t.Skip("the kernel has netem")
	}
	if err := ns.Netem("delay", "10ms"); !errors.Is(err, ErrNetemUnsupported) {
		t.Errorf("Netem on veth without kernel netem: %v, want ErrNetemUnsupported", err)
	}
	if err := ns.ClearNetem(); err != nil {
		t.Errorf("ClearNetem on a clean veth link: %v", err)
	}
}

func TestThroughput(t *testing.T) {
	links(t, false, func(t *testing.T, k LinkKind) {
		ns := New(t, "tput", WithLink(k))
		c := dial(t, echoServer(t, ns))
		const size = 16 << 20
		start := time.Now()
		transfer(t, c, size)
		el := time.Since(start)
		t.Logf("%v link: 16 MiB each way in %v (%.0f Mbit/s each way)", k, el, float64(size*8)/el.Seconds()/1e6)
	})
}

func TestLinkDownUp(t *testing.T) {
	links(t, false, func(t *testing.T, k LinkKind) {
		ns := New(t, "down", WithLink(k))
		addr := echoServer(t, ns)
		c := dial(t, addr)
		ping(t, c)

		if err := ns.LinkDown(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// No new connection gets through.
		if nc, err := net.DialTimeout("tcp", addr, 300*time.Millisecond); err == nil {
			nc.Close()
			t.Fatal("dial succeeded while the link was down")
		} else {
			t.Logf("%v link: dial while down: %v", k, err)
		}
		// The host still routes NSIP to the link, not the default route.
		if out := ipOut(t, "route", "get", ns.NSIP()); !strings.Contains(out, "dev "+ns.HostIf()) {
			t.Errorf("host route to %s while down: %s", ns.NSIP(), out)
		}
		if out := ipOut(t, "link", "show", "dev", ns.HostIf()); !strings.Contains(out, "NO-CARRIER") {
			t.Errorf("host end while down: %s", out)
		}
		if out := ipOut(t, "-n", ns.Name(), "link", "show", "dev", ns.NSIf()); !strings.Contains(out, "state DOWN") {
			t.Errorf("namespace end while down: %s", out)
		}
		// The established connection stalls but stays open.
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(make([]byte, 4)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read while down: %d, %v; want a timeout", n, err)
		}

		if err := ns.LinkUp(); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("after LinkUp got %q, %v", buf, err)
		}
		t.Logf("%v link: held echo arrived %v after LinkDown", k, time.Since(start))
		ping(t, dial(t, addr))
	})
}

func TestUnavailableSkipsOrFails(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		tb := &fakeTB{}
		unavailable(tb, "not running as root (euid 1000)")
		if ci == "" && (!tb.skipped || tb.failed) || ci != "" && (tb.skipped || !tb.failed) {
			t.Errorf("CI=%q: skipped=%v failed=%v", ci, tb.skipped, tb.failed)
		}
		if !strings.HasPrefix(tb.msg, "netns: needs root and iproute2: not running as root") {
			t.Errorf("message %q", tb.msg)
		}
	}
}

// fakeTB records Skip and Fatal instead of ending the goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()                   {}
func (f *fakeTB) Skip(args ...any)          { f.skipped, f.msg = true, fmt.Sprint(args...) }
func (f *fakeTB) Fatal(args ...any)         { f.failed, f.msg = true, fmt.Sprint(args...) }
func (f *fakeTB) Skipf(s string, a ...any)  { f.Skip(fmt.Sprintf(s, a...)) }
func (f *fakeTB) Fatalf(s string, a ...any) { f.Fatal(fmt.Sprintf(s, a...)) }
