package e2e

import (
	"bufio"
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestExitCodes(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	notExec := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notExec, []byte("#!/bin/sh\necho hi\n"), 0o644)
	cases := []struct {
		name   string
		argv   []string
		code   int
		stderr string
	}{
		{"true", []string{"true"}, 0, ""},
		{"false", []string{"false"}, 1, ""},
		{"exit 3", []string{"sh", "-c", "exit 3"}, 3, ""},
		{"exit 255", []string{"sh", "-c", "exit 255"}, 255, ""},
		{"killed by signal 9", []string{"sh", "-c", "kill -9 $$"}, 128 + 9, ""},
		{"killed by signal 15", []string{"sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{"not found", []string{"no-such-command-zp"}, 127, "zp: no-such-command-zp: command not found"},
		{"not found by path", []string{"/no/such/file"}, 127, "/no/such/file: no such file or directory"},
		{"not executable", []string{notExec}, 126, "permission denied"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := d.zp(t, nil, c.argv...)
			if r.Code != c.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.Code, c.code, r.Stderr)
			}
			if !strings.Contains(r.Stderr, c.stderr) {
				t.Fatalf("stderr %q, want it to contain %q", r.Stderr, c.stderr)
			}
		})
	}
}

func TestStreams(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	t.Run("stderr separate", func(t *testing.T) {
		r := d.zp(t, nil, "sh", "-c", "echo out; echo err >&2; exit 3")
		if r.Stdout != "out\n" || r.Stderr != "err\n" || r.Code != 3 {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("stdin to EOF", func(t *testing.T) {
		r := d.zp(t, strings.NewReader("hello\n"), "tr", "a-z", "A-Z")
		if r.Stdout != "HELLO\n" || r.Code != 0 {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("empty stdin is EOF", func(t *testing.T) {
		r := d.zp(t, strings.NewReader(""), "wc", "-c")
		if strings.TrimSpace(r.Stdout) != "0" {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("no-stdin flag", func(t *testing.T) {
		r := run(t, strings.NewReader("ignored"), d.env(), "zp", append(d.clientArgs(), "-n", d.Addr, "wc", "-c")...)
		if strings.TrimSpace(r.Stdout) != "0" {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("argv as given", func(t *testing.T) {
		r := d.zp(t, nil, "printf", "%s|", "a b", "*", "$HOME", "'q'", "")
		if r.Stdout != "a b|*|$HOME|'q'||" {
			t.Fatalf("%q", r.Stdout)
		}
	})
	t.Run("env", func(t *testing.T) {
		r := run(t, nil, append(d.env(), "LANG=C.UTF-8"), "zp", append(d.clientArgs(), "-e", "ZP_X=1 2", d.Addr, "sh", "-c", `echo "$ZP_X|$LANG|$HOME|$USER"`)...)
		want := fmt.Sprintf("1 2|C.UTF-8|%s|%s\n", os.Getenv("HOME"), currentUser(t))
		if r.Stdout != want {
			t.Fatalf("got %q want %q (stderr %q)", r.Stdout, want, r.Stderr)
		}
	})
	t.Run("binary both ways", func(t *testing.T) {
		data := make([]byte, 10<<20+7)
		crand.Read(data)
		r := d.zp(t, bytes.NewReader(data), "cat")
		if r.Code != 0 || r.Stdout != string(data) {
			t.Fatalf("binary round trip differs: %d octets back, exit %d, %s", len(r.Stdout), r.Code, r.Stderr)
		}
	})
	t.Run("interleaved order within each stream", func(t *testing.T) {
		r := d.zp(t, nil, "sh", "-c", "for i in $(seq 1 2000); do echo o$i; echo e$i >&2; done")
		var wo, we strings.Builder
		for i := 1; i <= 2000; i++ {
			fmt.Fprintf(&wo, "o%d\n", i)
			fmt.Fprintf(&we, "e%d\n", i)
		}
		if r.Stdout != wo.String() || r.Stderr != we.String() {
			t.Fatal("streams out of order or mixed")
		}
	})
}

func currentUser(t *testing.T) string {
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// A command that never reads stdin must not wait for zp's stdin to end.
func TestStdinNotRead(t *testing.T) {
	d := startZPD(t)
	pr, pw := io.Pipe() // never closed until the end
	defer pw.Close()
	go func() {
		for {
			if _, err := pw.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	r := d.zp(t, pr, "echo", "done")
	if r.Code != 0 || r.Stdout != "done\n" || r.Elapsed > 5*time.Second {
		t.Fatalf("%+v", r)
	}
}

// startZP starts zp in the background with its stdout on a pipe.
func startZP(t *testing.T, d *zpd, stdin io.Reader, args ...string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(bin("zp"), append(append(d.clientArgs(), d.Addr), args...)...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), d.env()...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewReader(out), &errb
}

func expectLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	done := make(chan string, 1)
	go func() {
		l, _ := r.ReadString('\n')
		done <- l
	}()
	select {
	case l := <-done:
		if strings.TrimSpace(l) != want {
			t.Fatalf("got line %q, want %q", l, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no line %q", want)
	}
}

func waitExit(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		cmd.Process.Kill()
		t.Fatalf("%s did not exit within %v", cmd.Path, within)
		return -1
	}
}

func TestSignalsForwarded(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	for _, c := range []struct {
		sig  syscall.Signal
		name string
	}{{syscall.SIGINT, "INT"}, {syscall.SIGTERM, "TERM"}, {syscall.SIGHUP, "HUP"}} {
		t.Run(c.name, func(t *testing.T) {
			script := fmt.Sprintf(`trap 'echo got %s; exit 7' %s; echo ready; while :; do sleep 0.05; done`, c.name, c.name)
			cmd, out, errb := startZP(t, d, nil, "sh", "-c", script)
			expectLine(t, out, "ready")
			cmd.Process.Signal(c.sig)
			expectLine(t, out, "got "+c.name)
			if code := waitExit(t, cmd, 10*time.Second); code != 7 {
				t.Fatalf("exit %d, want 7; stderr %s", code, errb)
			}
		})
	}
	t.Run("default action reaches the process group", func(t *testing.T) {
		// The shell and its child both die of SIGTERM: zp reports 143.
		cmd, out, _ := startZP(t, d, nil, "sh", "-c", "echo ready; sleep 100; echo not-killed")
		expectLine(t, out, "ready")
		cmd.Process.Signal(syscall.SIGTERM)
		if code := waitExit(t, cmd, 10*time.Second); code != 128+15 {
			t.Fatalf("exit %d, want 143", code)
		}
	})
	t.Run("closing stdin delivers EOF", func(t *testing.T) {
		pr, pw := io.Pipe()
		cmd, out, _ := startZP(t, d, pr, "sh", "-c", "echo ready; cat >/dev/null; echo eof")
		expectLine(t, out, "ready")
		pw.Write([]byte("some input\n"))
		pw.Close()
		expectLine(t, out, "eof")
		if code := waitExit(t, cmd, 10*time.Second); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})
}

func TestDaemonDown(t *testing.T) {
	// A port nobody listens on: refused at once.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	r := run(t, nil, nil, "zp", "--insecure", addr, "true")
	if r.Code != 255 || !strings.Contains(r.Stderr, "connection refused") || r.Elapsed > 3*time.Second {
		t.Fatalf("refused: %+v", r)
	}
	// A listener that never speaks: the handshake times out.
	silent, _ := net.Listen("tcp", "127.0.0.1:0")
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	r = run(t, nil, nil, "zp", "--insecure", "--connect-timeout", "2s", silent.Addr().String(), "true")
	if r.Code != 255 || !strings.Contains(r.Stderr, "timeout") || r.Elapsed > 5*time.Second {
		t.Fatalf("silent: %+v", r)
	}
}

// A daemon that freezes mid-session is detected by heartbeats.
func TestDaemonFrozen(t *testing.T) {
	d := startZPD(t, "--heartbeat", "300ms", "--timeout", "2s")
	// zp rides out a broken link for --reconnect-for; with a short one it
	// must give up promptly with a clear message and 255.
	args := append(d.clientArgs(), "--reconnect-for", "1s", "--connect-timeout", "1s", d.Addr, "sh", "-c", "echo ready; sleep 60")
	cmd := exec.Command(bin("zp"), args...)
	cmd.Env = append(os.Environ(), d.env()...)
	stdout, _ := cmd.StdoutPipe()
	errb := &syncBuffer{}
	cmd.Stderr = errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	expectLine(t, bufio.NewReader(stdout), "ready")
	syscall.Kill(d.PID(), syscall.SIGSTOP)
	defer syscall.Kill(d.PID(), syscall.SIGCONT)
	start := time.Now()
	code := waitExit(t, cmd, 15*time.Second)
	if code != 255 || !strings.Contains(errb.String(), "lost contact") {
		t.Fatalf("exit %d, stderr %q", code, errb)
	}
	if e := time.Since(start); e > 6*time.Second {
		t.Fatalf("took %v to give up", e)
	}
}

func TestConcurrentSessions(t *testing.T) {
	d := startZPD(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each session gets its own input and must see only its own output.
			in := strings.Repeat(fmt.Sprintf("session %d\n", i), 1000)
			// 200 clients start at once on a machine that may be busy with
			// other tests: the claim here is isolation, not connect latency,
			// so allow longer than the default 5 s to connect.
			args := append(d.clientArgs(), "--connect-timeout", "60s", d.Addr,
				"sh", "-c", fmt.Sprintf("sleep 0.5; cat; echo end %d >&2; exit %d", i, i%7))
			r := run(t, strings.NewReader(in), d.env(), "zp", args...)
			if r.Stdout != in || r.Stderr != fmt.Sprintf("end %d\n", i) || r.Code != i%7 {
				errs <- fmt.Sprintf("session %d: exit %d, %d octets out, stderr %q", i, r.Code, len(r.Stdout), r.Stderr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// 1 GiB through cat: both processes stay under 100 MiB RSS.
func TestGigabyteBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d := startZPD(t)
	const size = 1 << 30
	src := &patternReader{left: size}
	cmd := exec.Command(bin("zp"), append(d.clientArgs(), d.Addr, "cat")...)
	cmd.Env = append(os.Environ(), d.env()...)
	cmd.Stdin = src
	stdout, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	clientRSS := sampleRSS(cmd.Process.Pid)
	h := sha256.New()
	n, _ := io.Copy(h, stdout)
	want := sha256.New()
	io.Copy(want, &patternReader{left: size})
	if err := cmd.Wait(); err != nil {
		t.Fatalf("zp: %v %s", err, errb.String())
	}
	serverRSS, err := rssKB(d.PID())
	if err != nil {
		t.Fatal(err)
	}
	clientRSSKB := clientRSS()
	if n != size || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		t.Fatalf("got %d octets, digest mismatch", n)
	}
	t.Logf("peak RSS: zp %d KiB, zpd %d KiB", clientRSSKB, serverRSS)
	if clientRSSKB == 0 || int(clientRSSKB) > rssLimitKB() || int(serverRSS) > rssLimitKB() {
		t.Fatalf("RSS over %d MiB: zp %d KiB, zpd %d KiB", rssLimitKB()>>10, clientRSSKB, serverRSS)
	}
}

// patternReader yields a deterministic pseudo-random stream (ChaCha8 with
// a fixed seed): fast enough for gigabytes, even under -race.
type patternReader struct {
	left int
	rng  *rand.ChaCha8
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if p.rng == nil {
		p.rng = rand.NewChaCha8([32]byte{'z', 'p'})
	}
	n := min(len(b), p.left)
	p.rng.Read(b[:n])
	p.left -= n
	return n, nil
}

// sampleRSS polls a process's peak RSS until it exits; the returned
// function gives the last value read (VmHWM only grows).
func sampleRSS(pid int) func() int {
	var mu sync.Mutex
	last := 0
	stop := make(chan struct{})
	go func() {
		for {
			if kb, err := rssKB(pid); err == nil {
				mu.Lock()
				last = kb
				mu.Unlock()
			} else {
				close(stop)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() int {
		<-stop
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}
