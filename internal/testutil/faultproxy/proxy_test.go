package faultproxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a loopback TCP server for the tests. handler runs once per
// connection; the server closes the connection when handler returns.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newServer(t *testing.T, handler func(net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handler(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// echo copies everything back, then closes after the client's FIN.
func echo(c net.Conn) { io.Copy(c, c) }

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends data through c to an echo server and checks that the same
// bytes come back; it returns the SHA-256 of what was received.
func roundTrip(t *testing.T, c *net.TCPConn, size int64, seed uint64) {
	t.Helper()
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(c, sent), io.LimitReader(src, size))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		t.Fatalf("read after %d bytes: %v", n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != size {
		t.Fatalf("received %d bytes, want %d", n, size)
	}
	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("SHA-256 mismatch after %d bytes", n)
	}
}

func TestLargeTransferIntegrity(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	const size = 50 << 20
	start := time.Now()
	roundTrip(t, dial(t, p.Addr()), size, 1)
	t.Logf("50 MiB echoed through the proxy in %v", time.Since(start))
	up, down := p.Bytes()
	if up != size || down != size {
		t.Errorf("Bytes() = %d, %d; want %d, %d", up, down, size, size)
	}
	if a := p.Accepted(); a != 1 {
		t.Errorf("Accepted() = %d, want 1", a)
	}
	waitFor(t, "connection closed", func() bool { return p.Conns() == 0 })
}

func TestConcurrentConnsWithDelay(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	p.SetDelay(5 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range 8 {
		c := dial(t, p.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			roundTrip(t, c, 2<<20+int64(i)*1000, uint64(i))
		}()
	}
	wg.Wait()
	if a := p.Accepted(); a != 8 {
		t.Errorf("Accepted() = %d, want 8", a)
	}
}

// ping does one small request/response through an echo server.
func ping(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	msg := []byte("ping")
	buf := make([]byte, len(msg))
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func minRTT(t *testing.T, c net.Conn, n int) time.Duration {
	best := time.Hour
	for range n {
		best = min(best, ping(t, c))
	}
	return best
}

func TestSetDelay(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	base := minRTT(t, c, 5)

	const d = 50 * time.Millisecond
	p.SetDelay(d) // applies to the connection already open
	rtt := minRTT(t, c, 3)
	t.Logf("RTT %v without delay, %v with SetDelay(%v)", base, rtt, d)
	if rtt < 2*d || rtt > 2*d+150*time.Millisecond {
		t.Errorf("RTT with delay %v = %v, want about %v", d, rtt, 2*d)
	}

	c2 := dial(t, p.Addr()) // and to new ones
	if rtt := minRTT(t, c2, 2); rtt < 2*d {
		t.Errorf("new connection RTT = %v, want >= %v", rtt, 2*d)
	}

	p.SetDelay(0)
	if rtt := minRTT(t, c, 3); rtt > 40*time.Millisecond {
		t.Errorf("RTT after SetDelay(0) = %v", rtt)
	}
}

// TestDelayIsNotRateLimit checks that the delay line keeps throughput: 8 MiB
// each way with 20 ms one-way delay takes far less than it would if each
// chunk waited for the previous one.
func TestDelayIsNotRateLimit(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	p.SetDelay(20 * time.Millisecond)
	start := time.Now()
	roundTrip(t, dial(t, p.Addr()), 8<<20, 7)
	el := time.Since(start)
	t.Logf("8 MiB echoed with 20 ms one-way delay in %v", el)
	// Serialised 32 KiB chunks would take 256 * 20 ms = 5 s.
	if el > 4*time.Second {
		t.Errorf("transfer took %v: delay behaves like a rate limit", el)
	}
}

// readErr reads from c until an error, with a deadline.
func readErr(c net.Conn, within time.Duration) error {
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		return io.EOF
	}
	return err
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func TestCut(t *testing.T) {
	serverErr := make(chan error, 1)
	srv := newServer(t, func(c net.Conn) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			serverErr <- err
			return
		}
		c.Write(buf)
		serverErr <- readErr(c, 5*time.Second)
	})
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	ping(t, c)
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns() = %d, want 1", n)
	}

	start := time.Now()
	p.Cut()
	if n := p.Conns(); n != 0 {
		t.Errorf("Conns() after Cut = %d, want 0", n)
	}
	cerr := readErr(c, 2*time.Second)
	if !isReset(cerr) {
		t.Errorf("client read after Cut: %v, want connection reset", cerr)
	}
	select {
	case serr := <-serverErr:
		if !isReset(serr) {
			t.Errorf("server read after Cut: %v, want connection reset", serr)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("server saw nothing within 2s of Cut")
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("errors took %v to show", el)
	}

	// The proxy keeps accepting.
	c2 := dial(t, p.Addr())
	ping(t, c2)
	if a := p.Accepted(); a != 2 {
		t.Errorf("Accepted() = %d, want 2", a)
	}
}

func TestCutWhileStalledAndDelayed(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	ping(t, c)
	p.SetDelay(time.Hour)
	c.Write([]byte("held in the delay line"))
	p.Stall()
	c.Write([]byte("held by the stall"))
	time.Sleep(20 * time.Millisecond)
	p.Cut()
	if err := readErr(c, 2*time.Second); !isReset(err) {
		t.Errorf("read after Cut: %v, want connection reset", err)
	}
}

func TestStallUnstall(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	c := dial(t, p.Addr())
	ping(t, c) // the connection is established end to end
	// The proxy counts a chunk after writing it, so the echo may be read
	// before it is counted.
	waitFor(t, "ping counted", func() bool { up, down := p.Bytes(); return up == 4 && down == 4 })

	p.Stall()
	upBefore, downBefore := p.Bytes()
	const size = 4 << 20
	payload := make([]byte, size)
	rand.NewChaCha8([32]byte{9}).Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload) // blocks once the kernel buffers are full
		werr <- err
	}()

	// Nothing moves while stalled, and nothing is closed.
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 1)
	if n, err := c.Read(buf); n != 0 || !errors.Is(err, syscall.EAGAIN) && !isTimeout(err) {
		t.Fatalf("read while stalled: n=%d err=%v, want a timeout", n, err)
	}
	if up, down := p.Bytes(); up != upBefore || down != downBefore {
		t.Errorf("bytes moved while stalled: up %d→%d down %d→%d", upBefore, up, downBefore, down)
	}
	if n := p.Conns(); n != 1 {
		t.Errorf("Conns() while stalled = %d, want 1", n)
	}

	p.Unstall()
	got := make([]byte, size)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read after Unstall: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatal("data after Unstall differs from data sent")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestStallNewConnection(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	p.Stall()
	c := dial(t, p.Addr()) // accepted, but nothing flows
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 4)); !isTimeout(err) {
		t.Fatalf("read on a new connection while stalled: %v, want timeout", err)
	}
	p.Unstall()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after Unstall got %q, %v", buf, err)
	}
}

func TestRefuse(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	old := dial(t, p.Addr())
	ping(t, old)

	p.Refuse(true)
	for range 3 {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err == nil {
			// The fallback (non-Linux) accepts and resets.
			err = readErr(c, time.Second)
			c.Close()
			if !isReset(err) {
				t.Fatalf("connection while refusing: %v, want refused or reset", err)
			}
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial while refusing: %v, want ECONNREFUSED", err)
		}
	}
	ping(t, old) // existing connections are untouched
	if a := p.Accepted(); a != 1 {
		t.Errorf("Accepted() = %d, want 1", a)
	}

	p.Refuse(false)
	addr := p.Addr()
	c := dial(t, addr)
	ping(t, c)
	if a := p.Accepted(); a != 2 {
		t.Errorf("Accepted() = %d, want 2", a)
	}

	// Toggle a few times; the port stays the same and keeps working.
	for range 3 {
		p.Refuse(true)
		p.Refuse(false)
	}
	if p.Addr() != addr {
		t.Fatalf("address changed: %s → %s", addr, p.Addr())
	}
	ping(t, dial(t, p.Addr()))
}

func TestCutAfter(t *testing.T) {
	var received atomic.Int64
	serverErr := make(chan error, 4)
	srv := newServer(t, func(c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		received.Add(n)
		serverErr <- err
	})
	p := newProxy(t, srv.addr())
	const total, limit = 1 << 20, 300_000
	p.CutAfter(limit)

	c := dial(t, p.Addr())
	_, werr := c.Write(make([]byte, total))
	if werr == nil {
		// Everything fitted in socket buffers; the reset shows on read.
		werr = readErr(c, 2*time.Second)
	}
	if !isReset(werr) {
		t.Errorf("client after CutAfter: %v, want connection reset", werr)
	}
	select {
	case err := <-serverErr:
		if !isReset(err) {
			t.Errorf("server after CutAfter: %v, want connection reset", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("server saw no error")
	}
	up, _ := p.Bytes()
	if up != limit {
		t.Errorf("forwarded %d bytes before the cut, want exactly %d", up, limit)
	}
	if r := received.Load(); r != limit {
		t.Errorf("server received %d bytes before the reset, want exactly %d", r, limit)
	}

	// One-shot: the next connection is not cut.
	received.Store(0)
	c2 := dial(t, p.Addr())
	if _, err := c2.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	c2.CloseWrite()
	if err := <-serverErr; err != nil {
		t.Fatalf("second transfer: %v", err)
	}
	if r := received.Load(); r != total {
		t.Errorf("second transfer delivered %d bytes, want %d", r, total)
	}
}

func TestCutAfterDisarm(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	p.CutAfter(10)
	p.CutAfter(-1)
	roundTrip(t, dial(t, p.Addr()), 1<<16, 3)
}

func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newProxy(t, target)
	// The client sees a reset, either at once (dial) or on first read.
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err == nil {
		err = readErr(c, 2*time.Second)
		c.Close()
	}
	if !isReset(err) {
		t.Errorf("with target down: %v, want connection reset", err)
	}
	if a := p.Accepted(); a != 1 {
		t.Errorf("Accepted() = %d, want 1", a)
	}
	waitFor(t, "no open connection", func() bool { return p.Conns() == 0 })
}

// TestControlsConcurrently flips every control while traffic flows, for the
// race detector, then checks the proxy still forwards correctly.
func TestControlsConcurrently(t *testing.T) {
	srv := newServer(t, echo)
	p := newProxy(t, srv.addr())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1000)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(200 * time.Millisecond))
				c.Write(buf)
				io.ReadFull(c, buf)
				c.Close()
				_ = i
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(1, 2))
		deadline := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(deadline) {
			switch r.IntN(7) {
			case 0:
				p.Cut()
			case 1:
				p.Stall()
			case 2:
				p.Unstall()
			case 3:
				p.SetDelay(time.Duration(r.IntN(3)) * time.Millisecond)
			case 4:
				p.Refuse(r.IntN(2) == 0)
			case 5:
				p.CutAfter(int64(r.IntN(5000)))
			case 6:
				p.Bytes()
				p.Conns()
				p.Accepted()
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(600 * time.Millisecond)
	close(stop)
	wg.Wait()

	p.Unstall()
	p.Refuse(false)
	p.SetDelay(0)
	p.CutAfter(-1)
	roundTrip(t, dial(t, p.Addr()), 1<<20, 5)
}

// TestCloseNoLeak closes a proxy with connections in every state and checks
// that none of its goroutines survive.
func TestCloseNoLeak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // runs after the server's cleanup
	srv := newServer(t, echo)
	p, err := New(srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		ping(t, c)
	}
	p.SetDelay(time.Hour)
	conns[0].Write([]byte("stuck in the delay line"))
	p.Stall()
	conns[1].Write(make([]byte, 1<<20))
	p.Refuse(true)
	time.Sleep(20 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("dial after Close succeeded")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
