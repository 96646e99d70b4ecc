package broker

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// TestRelayRouterDenial: a relay's ROUTER answers a child's PUB_FETCH for
// the relayed topic from what it kept, and nothing else: another topic is
// 404, OPEN is refused (the child is no user here), another key fails the
// handshake, and once the broadcast ends the child's key does too.
func TestRelayRouterDenial(t *testing.T) {
	srv, _ := curve.GenerateKeyPair()
	hub, _ := curve.GenerateKeyPair()
	child, _ := curve.GenerateKeyPair()
	other, _ := curve.GenerateKeyPair()
	// A hub nobody answers on: the agent keeps trying to join, harmlessly.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	b, err := New(Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(),
		Mechanism: &curve.Server{Key: srv, Authorize: curve.AllowKeys()}, // no user key at all
		Authorize: func([]byte, string) (*Account, error) { return nil, errors.New("not authorised") },
		Agent:     &AgentConfig{Hub: "tcp://" + deadAddr, HubKey: hub.Public.String(), Key: srv, Name: "relay1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() { cancel(); <-done }()

	const topic = "f/AAAAAAAAAAAAAAAAAAAAAAAA"
	st, end := b.admitChildren(child.Public[:], topic)
	if st == nil {
		t.Fatal("no relay store")
	}
	st.write(0, []byte("sealed records"), true)
	ep := "tcp://" + b.Addr().String()

	dial := func(k curve.KeyPair) (zmq4.Socket, error) {
		zcfg := &zmtp.Config{Mechanism: &curve.Client{Key: k, ServerKey: srv.Public}, SocketType: string(zmq4.Dealer),
			HandshakeTimeout: 2 * time.Second, OnFull: zmtp.Block, MaxFrame: 1 << 20, MaxMessage: 1 << 20, MaxFrames: 4}
		d := zmq4.NewDealer(zmtp.WithConfig(ctx, zcfg), zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(2*time.Second),
			zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithTimeout(2*time.Second))
		zep, _ := zmtp.Endpoint(ep)
		if err := d.Dial(zep); err != nil {
			d.Close()
			return nil, err
		}
		return d, nil
	}
	ask := func(d zmq4.Socket, m wire.Message) []wire.Message {
		t.Helper()
		if err := d.Send(zmq4.NewMsgFrom(wire.Frames(m)...)); err != nil {
			t.Fatalf("send %s: %v", m.ID(), err)
		}
		var out []wire.Message
		for {
			msg, err := d.Recv()
			if err != nil {
				t.Fatalf("after %s: %v", m.ID(), err)
			}
			r, err := wire.Decode(msg.Frames)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
			switch r.(type) {
			case *wire.PubFetchOK, *wire.Error, *wire.OpenOK:
				return out
			}
		}
	}

	d, err := dial(child)
	if err != nil {
		t.Fatalf("the child's key refused while relaying: %v", err)
	}
	got := ask(d, &wire.PubFetch{Channel: 1, Topic: topic, Offset: 7, Length: 100})
	if len(got) != 2 || string(got[0].(*wire.Data).Bytes) != "records" || !got[1].(*wire.PubFetchOK).Final {
		t.Fatalf("the child's fetch: %#v", got)
	}
	got = ask(d, &wire.PubFetch{Channel: 2, Topic: "f/BBBBBBBBBBBBBBBBBBBBBBBB", Offset: 0, Length: 100})
	if e, ok := got[0].(*wire.Error); !ok || e.Code != wire.CodeNotFound {
		t.Fatalf("another topic: %#v", got)
	}
	got = ask(d, &wire.Open{Version: wire.Version, User: "root", Client: "test"})
	if e, ok := got[0].(*wire.Error); !ok || e.Code != wire.CodeUnauthorised {
		t.Fatalf("OPEN with a child's key: %#v", got)
	}
	d.Close()

	if d, err := dial(other); err == nil {
		d.Close()
		t.Fatal("a key that is no child passed the handshake")
	}
	end()
	if d, err := dial(child); err == nil {
		d.Close()
		t.Fatal("the child's key still passes the handshake after the broadcast")
	}
}

// A relay's own copy is read from its store as the store grows (full
// records: from the record its reader wants), and a store that failed
// says so.
func TestRelayStoreRead(t *testing.T) {
	b := &Broker{cfg: Config{StateDir: t.TempDir()}}
	st, err := b.openRelayStore("p/t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	stream := records("abc", "def", "ghi", "j")
	pipe := newSkipPipe()
	r := &recordReader{key: fuzzKey, max: 3, w: pipe, full: true}
	done := make(chan error, 1)
	go func() { done <- st.read(context.Background(), r, pipe) }()
	// The reader wants octets 0-1, then skips to 7 (record 2).
	got := make([]byte, 2)
	st.write(0, stream[:30], false)
	if _, err := io.ReadFull(pipe, got); err != nil || string(got) != "ab" {
		t.Fatalf("read %q %v", got, err)
	}
	pipe.Skip(5)
	st.write(30, stream[30:], true)
	rest, err := io.ReadAll(io.LimitReader(pipe, 3))
	if err != nil || string(rest) != "hij" {
		t.Fatalf("after a skip: %q %v", rest, err)
	}
	if err := <-done; err != nil || !r.done {
		t.Fatalf("read ended with %v, done %v", err, r.done)
	}
	// A store whose write failed.
	st2, _ := b.openRelayStore("p/u", nil)
	st2.mu.Lock()
	st2.failed = true
	st2.moved()
	st2.mu.Unlock()
	if err := st2.read(context.Background(), &recordReader{key: fuzzKey, max: 3, w: io.Discard}, nil); !errors.Is(err, errStoreFailed) {
		t.Fatalf("a failed store: %v", err)
	}
	st2.close()
}
