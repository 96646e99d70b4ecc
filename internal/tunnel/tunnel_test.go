package tunnel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/tunnel"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// pair makes the two ends of a tunnel joined by a relay that, like a hub,
// re-encodes every message (so nothing is shared) and rewrites the channel.
func pair(t *testing.T, window uint64) (client, agent *tunnel.Conn) {
	t.Helper()
	toAgent, toClient := make(chan wire.Message, 4096), make(chan wire.Message, 4096)
	relay := func(to chan wire.Message, channel uint32) func(wire.Message) error {
		return func(m wire.Message) error {
			frames := wire.Frames(m)
			cp := make([][]byte, len(frames))
			for i, f := range frames {
				cp[i] = append([]byte(nil), f...)
			}
			d, err := wire.Decode(cp)
			if err != nil {
				return err
			}
			switch d := d.(type) {
			case *wire.Data:
				d.Channel = channel
			case *wire.Ack:
				d.Channel = channel
			case *wire.Fin:
				d.Channel = channel
			}
			to <- d
			return nil
		}
	}
	client = tunnel.New(tunnel.Config{Channel: 1, Opener: true, Send: relay(toAgent, 900), Window: window, PeerWindow: window,
		Local: tunnel.Addr("client"), Remote: tunnel.Addr("agent")})
	agent = tunnel.New(tunnel.Config{Channel: 900, Send: relay(toClient, 1), Window: window, PeerWindow: window,
		Local: tunnel.Addr("agent"), Remote: tunnel.Addr("client")})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, h := range []struct {
		in  chan wire.Message
		dst *tunnel.Conn
	}{{toAgent, agent}, {toClient, client}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case m := <-h.in:
					h.dst.Deliver(m)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return client, agent
}

// Bulk data both ways at once, far beyond the window: credit flows back.
func TestTunnelBothWays(t *testing.T) {
	client, agent := pair(t, 256<<10)
	up, down := make([]byte, 8<<20), make([]byte, 5<<20)
	rand.Read(up)
	rand.Read(down)
	var wg sync.WaitGroup
	var gotUp, gotDown []byte
	wg.Add(4)
	go func() { defer wg.Done(); client.Write(up); client.Close() }()
	go func() { defer wg.Done(); agent.Write(down) }()
	go func() { defer wg.Done(); gotUp, _ = io.ReadAll(agent) }()
	go func() {
		defer wg.Done()
		gotDown = make([]byte, len(down))
		io.ReadFull(client, gotDown)
	}()
	wg.Wait()
	if sha256.Sum256(gotUp) != sha256.Sum256(up) || !bytes.Equal(gotDown, down) {
		t.Fatalf("up %d/%d octets, down %d/%d", len(gotUp), len(up), len(gotDown), len(down))
	}
}

// A reader that stops reading stops the writer at the window, and
// deadlines interrupt both.
func TestTunnelCreditAndDeadlines(t *testing.T) {
	client, agent := pair(t, 64<<10)
	client.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := client.Write(make([]byte, 1<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != 64<<10 {
		t.Fatalf("write past the window: %d, %v", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("not a timeout: %v", err)
	}
	agent.SetReadDeadline(time.Now().Add(-time.Second))
	buf := make([]byte, 100<<10)
	if _, err := agent.Read(buf); err != nil {
		t.Fatalf("data waiting must be readable whatever the deadline: %v", err)
	}
	client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := client.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with nothing to read: %v", err)
	}
	agent.Close()
	client.SetReadDeadline(time.Time{})
	if _, err := client.Read(buf); err != io.EOF {
		t.Fatalf("after the peer closed: %v", err)
	}
}

// A ZMTP connection with CURVE runs over a tunnel: the dialer side uses
// Config.Dial, the listening side receives its end through Config.Inject.
func TestZMTPOverTunnel(t *testing.T) {
	server, clientKey := mustKey(t), mustKey(t)
	client, agent := pair(t, 1<<20)
	inject := make(chan net.Conn, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(clientKey.Public)}, Inject: inject}))
	defer router.Close()
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	inject <- agent
	dealer := zmq4.NewDealer(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "DEALER",
		Mechanism: &curve.Client{Key: clientKey, ServerKey: server.Public},
		Dial:      func(context.Context) (net.Conn, error) { return client, nil }}), zmq4.WithDialerMaxRetries(0))
	defer dealer.Close()
	if err := dealer.Dial(zmtp.SchemeDial + "://agent"); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20)
	rand.Read(big)
	if err := dealer.Send(zmq4.NewMsgFrom([]byte("hello"), big)); err != nil {
		t.Fatal(err)
	}
	m, err := router.Recv()
	if err != nil || string(m.Frames[1]) != "hello" || !bytes.Equal(m.Frames[2], big) {
		t.Fatalf("router got %d frames, %v", len(m.Frames), err)
	}
	router.Send(zmq4.NewMsgFrom(m.Frames[0], []byte("back")))
	r, err := dealer.Recv()
	if err != nil || string(r.Frames[0]) != "back" {
		t.Fatalf("dealer got %v %v", r, err)
	}
}

func mustKey(t *testing.T) curve.KeyPair {
	t.Helper()
	k, err := curve.GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
