package zmtp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/zmtp"
)

// libzmqPython returns a python3 that has pyzmq (Debian python3-zmq), or
// skips. CI installs python3-zmq (.ci/run), so there these tests run.
func libzmqPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import zmq").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("python3-zmq is missing on CI: the libzmq interoperability tests cannot run")
	}
	t.Skip("no python3 with pyzmq (apt-get install python3-zmq): skipping libzmq interop")
	return ""
}

// PeerScript is the libzmq peer used by interop tests.
const peerScript = "testdata/peer.py"

// EchoWithLibzmqDealer: a libzmq DEALER sends multi-frame messages to our
// ROUTER, which echoes them back.
func echoWithLibzmqDealer(t *testing.T, cfg *zmtp.Config, keys ...string) {
	py := libzmqPython(t)
	router, ep := listen(t, cfg, zmq4.NewRouter)
	go func() {
		for {
			m, err := router.Recv()
			if err != nil {
				return
			}
			router.Send(m)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{peerScript, "dealer-echo", "tcp://" + ep[len("zptcp://"):]}, keys...)
	out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("libzmq dealer: %v\n%s", err, out)
	}
}

// libzmqRouter starts a libzmq ROUTER echo server and returns its endpoint.
func libzmqRouter(t *testing.T, keys ...string) string {
	py := libzmqPython(t)
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{peerScript, "router-echo", "tcp://127.0.0.1:*"}, keys...)
	cmd := exec.CommandContext(ctx, py, args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("libzmq router did not start: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestInteropNullLibzmqDealer(t *testing.T) {
	echoWithLibzmqDealer(t, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect})
}

func TestInteropNullLibzmqRouter(t *testing.T) {
	ep := libzmqRouter(t)
	zep, _ := zmtp.Endpoint(ep)
	d := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, zep)
	payload := strings.Repeat("z", 70000)
	if err := d.Send(zmq4.NewMsgFrom([]byte("a"), []byte(payload))); err != nil {
		t.Fatal(err)
	}
	m, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Frames) != 2 || string(m.Frames[0]) != "a" || string(m.Frames[1]) != payload {
		t.Fatalf("echo mismatch: %d frames", len(m.Frames))
	}
}

// --- CURVE ---

func keyPair(t *testing.T) curve.KeyPair {
	t.Helper()
	kp, err := curve.GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// secretZ85 returns the Z85 secret key as pyzmq reads it from our key file,
// which also proves that pyzmq's zmq.auth.load_certificate reads our files.
func secretZ85(t *testing.T, py string, kp curve.KeyPair) string {
	t.Helper()
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "k_secret"), filepath.Join(dir, "k")
	if err := curve.WriteKeyFiles(sec, pub, kp, false); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(py, "-c", `import sys, zmq.auth
p, s = zmq.auth.load_certificate(sys.argv[1]); q, _ = zmq.auth.load_certificate(sys.argv[2])
assert p == q and zmq.curve_public(s) == p
print(s.decode())`, sec, pub).CombinedOutput()
	if err != nil {
		t.Fatalf("pyzmq cannot read our key files: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// curveRouter starts our CURVE ROUTER echo server admitting the given keys.
func curveRouter(t *testing.T, allowed ...curve.PublicKey) (curve.KeyPair, string, chan *zmtp.HandshakeError) {
	server := keyPair(t)
	fails := make(chan *zmtp.HandshakeError, 8)
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect,
		Mechanism:          &curve.Server{Key: server, Authorize: curve.AllowKeys(allowed...)},
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) { fails <- e }}
	router, ep := listen(t, cfg, zmq4.NewRouter)
	go func() {
		for {
			m, err := router.Recv()
			if err != nil {
				return
			}
			router.Send(m)
		}
	}()
	return server, "tcp://" + ep[len("zptcp://"):], fails
}

func pyRun(t *testing.T, py string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, py, append([]string{peerScript}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func expectFailure(t *testing.T, fails chan *zmtp.HandshakeError, reason string) {
	t.Helper()
	select {
	case e := <-fails:
		if e.Reason != reason {
			t.Fatalf("server saw %v, want reason %s", e, reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("server saw no handshake failure (want %s)", reason)
	}
}

func TestInteropCurveLibzmqDealer(t *testing.T) {
	py := libzmqPython(t)
	client := keyPair(t)
	server, ep, _ := curveRouter(t, client.Public)
	out := pyRun(t, py, "dealer-echo", ep, server.Public.String(), client.Public.String(), secretZ85(t, py, client))
	if out != "OK" {
		t.Fatalf("libzmq CURVE dealer: %s", out)
	}
}

func TestInteropCurveLibzmqDealerUnauthorised(t *testing.T) {
	py := libzmqPython(t)
	client, stranger := keyPair(t), keyPair(t)
	server, ep, fails := curveRouter(t, client.Public)
	out := pyRun(t, py, "dealer-event", ep, server.Public.String(), stranger.Public.String(), secretZ85(t, py, stranger))
	// libzmq reports our ERROR "400" as an authentication failure, as from
	// a libzmq server whose ZAP handler said no.
	if out != "FAILED_AUTH 400" {
		t.Fatalf("libzmq saw %q", out)
	}
	expectFailure(t, fails, zmtp.ReasonUnauthorised)
}

func TestInteropCurveLibzmqDealerWrongServerKey(t *testing.T) {
	py := libzmqPython(t)
	client, wrong := keyPair(t), keyPair(t)
	_, ep, fails := curveRouter(t, client.Public)
	out := pyRun(t, py, "dealer-event", ep, wrong.Public.String(), client.Public.String(), secretZ85(t, py, client))
	if out == "SUCCEEDED" {
		t.Fatal("handshake succeeded with the wrong server key")
	}
	expectFailure(t, fails, zmtp.ReasonCrypto)
}

// startLibzmqRouter starts a libzmq CURVE ROUTER; its handshake events go
// to the returned buffer.
func startLibzmqRouter(t *testing.T, py string, args ...string) (string, *lockedBuffer) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, py, append([]string{peerScript, "router-echo", "tcp://127.0.0.1:*"}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	events := &lockedBuffer{}
	cmd.Stderr = events
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("libzmq router did not start: %v %s", err, events)
	}
	zep, _ := zmtp.Endpoint(strings.TrimSpace(line))
	return zep, events
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func curveDealer(t *testing.T, client curve.KeyPair, server curve.PublicKey, ep string) (zmq4.Socket, error) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := &zmtp.Config{SocketType: "DEALER", Mechanism: &curve.Client{Key: client, ServerKey: server}, HandshakeTimeout: 5 * time.Second}
	d := zmq4.NewDealer(zmtp.WithConfig(ctx, cfg), zmq4.WithDialerMaxRetries(0))
	t.Cleanup(func() { d.Close() })
	return d, d.Dial(ep)
}

func TestInteropCurveLibzmqRouter(t *testing.T) {
	py := libzmqPython(t)
	server, client := keyPair(t), keyPair(t)
	ep, events := startLibzmqRouter(t, py, secretZ85(t, py, server))
	d, err := curveDealer(t, client, server.Public, ep)
	if err != nil {
		t.Fatal(err, events)
	}
	payload := strings.Repeat("z", 70000)
	for i := 0; i < 5; i++ {
		d.Send(zmq4.NewMsgFrom([]byte("a"), []byte(payload), nil))
		m, err := d.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Frames) != 3 || string(m.Frames[0]) != "a" || string(m.Frames[1]) != payload || len(m.Frames[2]) != 0 {
			t.Fatalf("echo mismatch: %d frames", len(m.Frames))
		}
	}
}

func TestInteropCurveLibzmqRouterRefuses(t *testing.T) {
	py := libzmqPython(t)
	server, client, other := keyPair(t), keyPair(t), keyPair(t)
	ep, _ := startLibzmqRouter(t, py, secretZ85(t, py, server), other.Public.String())
	_, err := curveDealer(t, client, server.Public, ep)
	var he *zmtp.HandshakeError
	var pe *zmtp.PeerError
	if !errors.As(err, &he) || he.Reason != zmtp.ReasonRejected || !errors.As(err, &pe) || pe.Reason != "400" {
		t.Fatalf("dial: %v", err)
	}
}

func TestInteropCurveWrongKeyAgainstLibzmqRouter(t *testing.T) {
	py := libzmqPython(t)
	server, client, wrong := keyPair(t), keyPair(t), keyPair(t)
	ep, events := startLibzmqRouter(t, py, secretZ85(t, py, server))
	if _, err := curveDealer(t, client, wrong.Public, ep); err == nil {
		t.Fatal("handshake succeeded with the wrong server key")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(events.String(), "EVENT FAILED_") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(events.String(), "EVENT FAILED_") {
		t.Fatalf("libzmq reported no handshake failure: %q", events)
	}
}

func TestInteropCurveLibzmqSub(t *testing.T) {
	py := libzmqPython(t)
	server, client := keyPair(t), keyPair(t)
	cfg := &zmtp.Config{SocketType: "XPUB", OnFull: zmtp.DropMessage,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)}}
	xpub, ep := listen(t, cfg, zmq4.NewXPub)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, peerScript, "sub", "tcp://"+ep[len("zptcp://"):], server.Public.String(), client.Public.String(), secretZ85(t, py, client))
	out, _ := cmd.StdoutPipe()
	cmd.Start()
	defer cmd.Wait()
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if l := <-lines; l != "READY" {
		t.Fatalf("sub: %q", l)
	}
	// Publish until the subscription has propagated and 3 messages arrive.
	got := 0
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 0; got < 3; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("sub exited after %d messages", got)
			}
			if !strings.HasPrefix(l, "topic|payload ") {
				t.Fatalf("sub got %q", l)
			}
			got++
		case <-tick.C:
			n++
			xpub.Send(zmq4.NewMsgFrom([]byte("topic"), []byte(fmt.Sprintf("payload %d", n))))
			xpub.Send(zmq4.NewMsgFrom([]byte("other"), []byte("not subscribed")))
		case <-ctx.Done():
			t.Fatal("no messages reached the libzmq SUB")
		}
	}
}

// Garbage after a valid greeting fails the handshake cleanly.
func TestCurveGarbageHandshake(t *testing.T) {
	client := keyPair(t)
	_, ep, fails := curveRouter(t, client.Public)
	addr := ep[len("tcp://"):]
	g := [64]byte{0: 0xff, 9: 0x7f, 10: 3}
	copy(g[12:], "CURVE")
	cases := map[string][]byte{
		"truncated HELLO":  {0x04, 200, 5, 'H', 'E', 'L', 'L', 'O', 1, 0},
		"HELLO wrong size": append([]byte{0x04, 20, 5, 'H', 'E', 'L', 'L', 'O'}, make([]byte, 14)...),
		"garbage command":  append([]byte{0x04, 50, 7, 'G', 'A', 'R', 'B', 'A', 'G', 'E'}, make([]byte, 42)...),
		"data frame":       append([]byte{0x00, 10}, make([]byte, 10)...),
	}
	for name, payload := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(g[:])
			c.Write(payload)
			if name == "truncated HELLO" {
				c.(*net.TCPConn).CloseWrite()
			}
			select {
			case e := <-fails:
				if e.Reason != zmtp.ReasonProtocol && e.Reason != zmtp.ReasonIO && e.Reason != zmtp.ReasonCrypto {
					t.Fatalf("reason %s: %v", e.Reason, e)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no failure reported")
			}
		})
	}
}
