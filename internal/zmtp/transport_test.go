package zmtp_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/zmtp"
)

func listen(t *testing.T, cfg *zmtp.Config, mk func(context.Context, ...zmq4.Option) zmq4.Socket) (zmq4.Socket, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := mk(zmtp.WithConfig(ctx, cfg))
	if err := s.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, "zptcp://" + s.Addr().String()
}

func dial(t *testing.T, cfg *zmtp.Config, mk func(context.Context, ...zmq4.Option) zmq4.Socket, ep string) zmq4.Socket {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := mk(zmtp.WithConfig(ctx, cfg), zmq4.WithDialerMaxRetries(0))
	if err := s.Dial(ep); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRouterDealerNull(t *testing.T) {
	router, ep := listen(t, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect}, zmq4.NewRouter)
	dealer := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)

	big := bytes.Repeat([]byte("x"), 300000)
	for i := 0; i < 20; i++ {
		if err := dealer.Send(zmq4.NewMsgFrom([]byte(fmt.Sprint("hello", i)), big[:i*1000], nil)); err != nil {
			t.Fatal(err)
		}
	}
	var id []byte
	for i := 0; i < 20; i++ {
		m, err := router.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Frames) != 4 || string(m.Frames[1]) != fmt.Sprint("hello", i) || len(m.Frames[2]) != i*1000 || len(m.Frames[3]) != 0 {
			t.Fatalf("msg %d: %d frames", i, len(m.Frames))
		}
		id = m.Frames[0]
	}
	if len(id) != 16 {
		t.Fatalf("routing id %x", id)
	}
	if err := router.Send(zmq4.NewMsgFrom(id, []byte("reply"), big)); err != nil {
		t.Fatal(err)
	}
	m, err := dealer.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Frames[0]) != "reply" || !bytes.Equal(m.Frames[1], big) {
		t.Fatalf("bad reply %q", m.Frames[0])
	}
}

// A stalled handshake must not delay other clients.
func TestStalledHandshake(t *testing.T) {
	var fails = make(chan string, 4)
	_, ep := listen(t, &zmtp.Config{SocketType: "ROUTER", HandshakeTimeout: 300 * time.Millisecond,
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) { fails <- e.Reason }}, zmq4.NewRouter)
	raw, err := net.Dial("tcp", ep[len("zptcp://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte{0xff, 0, 0}) // partial greeting, then silence
	start := time.Now()
	dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("dial took %v behind a stalled peer", d)
	}
	select {
	case r := <-fails:
		if r != zmtp.ReasonTimeout {
			t.Fatalf("reason %s", r)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("stalled handshake was not dropped")
	}
}

func TestGarbageAndOversize(t *testing.T) {
	fails := make(chan string, 8)
	router, ep := listen(t, &zmtp.Config{SocketType: "ROUTER", MaxFrame: 1000,
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) { fails <- e.Reason }}, zmq4.NewRouter)
	addr := ep[len("zptcp://"):]
	// Garbage instead of a greeting.
	raw, _ := net.Dial("tcp", addr)
	raw.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 8))
	if r := <-fails; r != zmtp.ReasonGreeting {
		t.Fatalf("reason %s", r)
	}
	raw.Close()

	// A frame header announcing 2^62 octets after a valid handshake.
	d := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)
	d.Send(zmq4.NewMsgFrom(bytes.Repeat([]byte("y"), 5000)))
	d.Send(zmq4.NewMsgFrom([]byte("after")))
	// The oversized message closes that peer; the router is still alive
	// and serves a new peer.
	d2 := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)
	d2.Send(zmq4.NewMsgFrom([]byte("ok")))
	m, err := router.Recv()
	if err != nil || string(m.Frames[1]) != "ok" {
		t.Fatalf("got %v %v", m, err)
	}
}
