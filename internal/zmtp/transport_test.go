package zmtp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/bufpool"
	"github.com/zpipes/zp/internal/curve"
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

// TestRouterDealerCurve: frames of every size class, several to a message,
// both ways over CURVE, where the reader decrypts each frame straight into
// zmq4's buffer (zmtp.Decrypter).
func TestRouterDealerCurve(t *testing.T) {
	server, client := keyPair(t), keyPair(t)
	router, ep := listen(t, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)}}, zmq4.NewRouter)
	dealer := dial(t, &zmtp.Config{SocketType: "DEALER", Mechanism: &curve.Client{Key: client, ServerKey: server.Public}}, zmq4.NewDealer, ep)

	sizes := []int{0, 1, 30, 31, 32, 33, 255, 256, 4095, 65536, 1<<20 + 7}
	frame := func(n, salt int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*31 + salt)
		}
		return b
	}
	for i, n := range sizes {
		if err := dealer.Send(zmq4.NewMsgFrom(frame(n, i), []byte("tail"))); err != nil {
			t.Fatal(err)
		}
	}
	var id []byte
	for i, n := range sizes {
		m, err := router.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Frames) != 3 || !bytes.Equal(m.Frames[1], frame(n, i)) || string(m.Frames[2]) != "tail" {
			t.Fatalf("message %d (%d octets): %d frames, or wrong contents", i, n, len(m.Frames))
		}
		id = m.Frames[0]
	}
	for i, n := range sizes {
		if err := router.Send(zmq4.NewMsgFrom(id, frame(n, 100+i))); err != nil {
			t.Fatal(err)
		}
		m, err := dealer.Recv()
		if err != nil || len(m.Frames) != 1 || !bytes.Equal(m.Frames[0], frame(n, 100+i)) {
			t.Fatalf("reply %d (%d octets): %v", i, n, err)
		}
	}
}

// TestCurveTamperedFrame: one bit flipped on the wire inside a large frame
// (after the handshake) closes the connection with the box's failure; no
// part of that message reaches the socket, and the earlier one does.
// With Config.OnRecv the same holds for the messages it is handed.
func TestCurveTamperedFrame(t *testing.T) {
	t.Run("zmq4", func(t *testing.T) { curveTamperedFrame(t, false) })
	t.Run("OnRecv", func(t *testing.T) { curveTamperedFrame(t, true) })
}

func curveTamperedFrame(t *testing.T, direct bool) {
	server, client := keyPair(t), keyPair(t)
	closed := make(chan error, 1)
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)},
		OnClose:   func(_ []byte, _ *zmtp.Peer, err error) { closed <- err }}
	received := make(chan zmq4.Msg, 4)
	if direct {
		cfg.OnRecv = func(id []byte, frames [][]byte) { received <- zmq4.NewMsgFrom(append([][]byte{id}, frames...)...) }
	}
	router, ep := listen(t, cfg, zmq4.NewRouter)
	recv := func() (zmq4.Msg, error) {
		if direct {
			return <-received, nil
		}
		return router.Recv()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A proxy that flips one bit 200,000 octets into the client's stream:
	// well inside the second message's 256 KiB frame.
	go func() {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", ep[len("zptcp://"):])
		if err != nil {
			in.Close()
			return
		}
		go func() { io.Copy(in, out); in.Close() }()
		buf := make([]byte, 32<<10)
		total := 0
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if at := 200000 - total; at >= 0 && at < n {
					buf[at] ^= 0x10
				}
				total += n
				if _, err := out.Write(buf[:n]); err != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		out.Close()
	}()
	dealer := dial(t, &zmtp.Config{SocketType: "DEALER", Mechanism: &curve.Client{Key: client, ServerKey: server.Public}},
		zmq4.NewDealer, "zptcp://"+ln.Addr().String())
	dealer.Send(zmq4.NewMsgFrom([]byte("first"), make([]byte, 100000)))
	dealer.Send(zmq4.NewMsgFrom([]byte("second"), make([]byte, 256<<10)))
	m, err := recv()
	if err != nil || string(m.Frames[1]) != "first" {
		t.Fatalf("first message: %v", err)
	}
	select {
	case err := <-closed:
		if !errors.Is(err, curve.ErrMessageAuth) {
			t.Fatalf("connection closed with %v, want %v", err, curve.ErrMessageAuth)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the tampered connection was not closed")
	}
	got := make(chan zmq4.Msg, 1)
	go func() {
		m, _ := recv()
		got <- m
	}()
	select {
	case m := <-got:
		if len(m.Frames) > 1 {
			t.Fatalf("a message arrived after the tampered frame: %q", m.Frames[1])
		}
	case <-time.After(300 * time.Millisecond):
	}
}

// TestDirectSend: messages queued through Config.OnDirect (not zmq4's
// Send) arrive whole and in order, several frames each, both ways over
// CURVE; without NoCopy the frames are copied when queued.
func TestDirectSend(t *testing.T) {
	server, client := keyPair(t), keyPair(t)
	sends := make(chan func([][]byte) error, 2)
	router, ep := listen(t, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, SendQueue: 1 << 20, NoCopy: true,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)},
		OnDirect:  func(_ []byte, send func([][]byte) error) { sends <- send }}, zmq4.NewRouter)
	var dealerSend func([][]byte) error
	dealer := dial(t, &zmtp.Config{SocketType: "DEALER", OnFull: zmtp.Block, // NoCopy unset: the frames are copied
		Mechanism: &curve.Client{Key: client, ServerKey: server.Public},
		OnDirect:  func(_ []byte, send func([][]byte) error) { dealerSend = send }}, zmq4.NewDealer, ep)
	if dealerSend == nil {
		t.Fatal("OnDirect was not called before Dial returned")
	}
	routerSend := <-sends
	big := bytes.Repeat([]byte{0xa5}, 300000)
	for i := range 50 {
		frames := [][]byte{[]byte(fmt.Sprint("m", i)), big[:i*997], nil}
		if err := dealerSend(frames); err != nil {
			t.Fatal(err)
		}
		frames[0] = []byte("changed after sending") // copied: must not show
	}
	for i := range 50 {
		m, err := router.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Frames) != 4 || string(m.Frames[1]) != fmt.Sprint("m", i) || !bytes.Equal(m.Frames[2], big[:i*997]) || len(m.Frames[3]) != 0 {
			t.Fatalf("message %d: %d frames, first %q", i, len(m.Frames), m.Frames[1])
		}
	}
	for i := range 50 {
		if err := routerSend([][]byte{[]byte(fmt.Sprint("r", i)), big[:i*1009]}); err != nil {
			t.Fatal(err)
		}
		m, err := dealer.Recv()
		if err != nil || len(m.Frames) != 2 || string(m.Frames[0]) != fmt.Sprint("r", i) || !bytes.Equal(m.Frames[1], big[:i*1009]) {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
}

// TestDirectReceive: with Config.OnRecv every message reaches the owner
// whole and in order, on both sides, NULL and CURVE, frames of every size
// class (the large ones in bufpool buffers); zmq4's Recv sees none of them,
// and the per-message limits still close a peer that exceeds them.
func TestDirectReceive(t *testing.T) {
	server, client := keyPair(t), keyPair(t)
	for _, mech := range []string{"NULL", "CURVE"} {
		t.Run(mech, func(t *testing.T) {
			type msg struct {
				id     []byte
				frames [][]byte
			}
			atRouter, atDealer := make(chan msg, 64), make(chan msg, 64)
			closed := make(chan error, 4)
			sends := make(chan func([][]byte) error, 4)
			rcfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, MaxMessage: 3 << 20,
				OnRecv:   func(id []byte, f [][]byte) { atRouter <- msg{id, f} },
				OnDirect: func(_ []byte, send func([][]byte) error) { sends <- send },
				OnClose:  func(_ []byte, _ *zmtp.Peer, err error) { closed <- err }}
			dcfg := &zmtp.Config{SocketType: "DEALER", OnFull: zmtp.Block,
				OnRecv: func(id []byte, f [][]byte) { atDealer <- msg{id, f} }}
			if mech == "CURVE" {
				rcfg.Mechanism = &curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)}
				dcfg.Mechanism = &curve.Client{Key: client, ServerKey: server.Public}
			}
			router, ep := listen(t, rcfg, zmq4.NewRouter)
			dealer := dial(t, dcfg, zmq4.NewDealer, ep)
			routerSend := <-sends
			frame := func(n, salt int) []byte {
				b := make([]byte, n)
				for i := range b {
					b[i] = byte(i*31 + salt)
				}
				return b
			}
			sizes := []int{0, 1, 33, 4095, 65535, 65536, 65537, 1 << 20, 1<<20 + 7, 2 << 20}
			for i, n := range sizes {
				if err := dealer.Send(zmq4.NewMsgFrom(frame(n, i), []byte("tail"))); err != nil {
					t.Fatal(err)
				}
			}
			var id []byte
			for i, n := range sizes {
				m := <-atRouter
				if len(m.frames) != 2 || !bytes.Equal(m.frames[0], frame(n, i)) || string(m.frames[1]) != "tail" {
					t.Fatalf("message %d (%d octets): %d frames, or wrong contents", i, n, len(m.frames))
				}
				if id != nil && !bytes.Equal(id, m.id) {
					t.Fatalf("routing id changed: %x, %x", id, m.id)
				}
				id = m.id
				bufpool.Put(m.frames[0]) // the owner's to recycle: the next ones must not suffer
			}
			for i, n := range sizes {
				if err := routerSend([][]byte{frame(n, 100+i)}); err != nil {
					t.Fatal(err)
				}
				m := <-atDealer
				if len(m.frames) != 1 || !bytes.Equal(m.frames[0], frame(n, 100+i)) {
					t.Fatalf("reply %d (%d octets): %d frames, or wrong contents", i, n, len(m.frames))
				}
				bufpool.Put(m.frames[0])
			}
			got := make(chan error, 1)
			go func() {
				_, err := router.Recv()
				got <- err
			}()
			// Over MaxMessage in two frames: the peer is closed, nothing delivered.
			if err := dealer.Send(zmq4.NewMsgFrom(frame(2<<20, 1), frame(2<<20, 2))); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-closed:
				if err == nil || !strings.Contains(err.Error(), "message of 2 frames") {
					t.Fatalf("closed with %v, want the message limit", err)
				}
			case m := <-atRouter:
				t.Fatalf("an oversized message was delivered (%d frames)", len(m.frames))
			case <-time.After(5 * time.Second):
				t.Fatal("the peer over MaxMessage was not closed")
			}
			select {
			case err := <-got:
				t.Fatalf("zmq4's Recv returned (%v): it should see no traffic", err)
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}
