package zmtp_test

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/zmtp"
)

// refusals collects what an XPUB's filter dropped.
type refusals struct {
	mu  sync.Mutex
	got []string
}

func (r *refusals) add(_ *zmtp.Peer, topic []byte, reason string) {
	r.mu.Lock()
	r.got = append(r.got, reason+":"+string(topic))
	r.mu.Unlock()
}

func (r *refusals) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.got {
		if g == s {
			return true
		}
	}
	return false
}

// xpubFilterCase publishes "secret…" and "ok/…" topics on an XPUB whose
// filter admits only "ok/" subscriptions (at most 3), to a SUB that asks
// for "" (everything), for many "ok/" topics and for a "j/" prefix; the
// SUB must receive only what it was admitted to.
func xpubFilterCase(t *testing.T, server, client zmtp.Mechanism, keyOf func(*zmtp.Peer) []byte, wantKey []byte) {
	t.Helper()
	ref := &refusals{}
	var keyMu sync.Mutex
	var keys [][]byte
	cfg := &zmtp.Config{SocketType: "XPUB", OnFull: zmtp.DropMessage, Mechanism: server,
		MaxFrame: 1024, MaxMessage: 1024, MaxFrames: 1, MaxSubscriptions: 3,
		Subscribe: func(p *zmtp.Peer, topic []byte) bool {
			keyMu.Lock()
			keys = append(keys, keyOf(p))
			keyMu.Unlock()
			return bytes.HasPrefix(topic, []byte("ok/"))
		},
		OnRefuse: ref.add,
	}
	xpub, ep := listen(t, cfg, zmq4.NewXPub)
	sub := dial(t, &zmtp.Config{SocketType: "SUB", Mechanism: client}, zmq4.NewSub, ep)
	for _, topic := range []string{"", "j/", "ok/1", "ok/2", "ok/3", "ok/4"} {
		if err := sub.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan string, 64)
	go func() {
		for {
			m, err := sub.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- string(m.Frames[0])
		}
	}()
	seen := map[string]bool{}
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !(seen["ok/1x"] && seen["ok/3x"]) {
		select {
		case topic := <-got:
			if !strings.HasPrefix(topic, "ok/1") && !strings.HasPrefix(topic, "ok/2") && !strings.HasPrefix(topic, "ok/3") {
				t.Fatalf("subscriber received %q, which it was not admitted to", topic)
			}
			seen[topic] = true
		case <-tick.C:
			for _, topic := range []string{"secret", "j/job", "ok/4x", "ok/1x", "ok/3x"} {
				xpub.Send(zmq4.NewMsgFrom([]byte(topic), []byte("payload")))
			}
		case <-deadline:
			t.Fatalf("admitted publications did not arrive (seen %v)", seen)
		}
	}
	for _, want := range []string{"unauthorised:", "unauthorised:j/", "limit:ok/4"} {
		if !ref.has(want) {
			t.Errorf("no refusal %q (got %v)", want, ref.got)
		}
	}
	keyMu.Lock()
	defer keyMu.Unlock()
	for _, k := range keys {
		if !bytes.Equal(k, wantKey) {
			t.Fatalf("filter saw key %x, want %x", k, wantKey)
		}
	}
}

func TestXPubFilterNull(t *testing.T) {
	xpubFilterCase(t, nil, nil, func(p *zmtp.Peer) []byte { return p.Key }, nil)
}

func TestXPubFilterCurve(t *testing.T) {
	server, client := keyPair(t), keyPair(t)
	xpubFilterCase(t,
		&curve.Server{Key: server, Authorize: curve.AllowKeys(client.Public)},
		&curve.Client{Key: client, ServerKey: server.Public},
		func(p *zmtp.Peer) []byte { return p.Key }, client.Public[:])
}

// A flood of silent connections must not lock out an honest client: the
// oldest handshakes in progress are dropped for new ones.
func TestHandshakeFloodEvictsOldest(t *testing.T) {
	var mu sync.Mutex
	reasons := map[string]int{}
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, HandshakeTimeout: 30 * time.Second,
		MaxHandshakes: 16,
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) {
			mu.Lock()
			reasons[e.Reason]++
			mu.Unlock()
		}}
	router, ep := listen(t, cfg, zmq4.NewRouter)
	addr := ep[len("zptcp://"):]
	for i := 0; i < 100; i++ {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
	}
	start := time.Now()
	dealer := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)
	if err := dealer.Send(zmq4.NewMsgFrom([]byte("hello"))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); router.Close() }()
	m, err := router.Recv()
	if err != nil || string(m.Frames[1]) != "hello" {
		t.Fatalf("honest client not served behind 100 silent connections: %v %v", m, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("honest client waited %v", d)
	}
	// Each evicted handshake reports from its own goroutine as it ends:
	// the count may still be catching up when the honest client is served.
	evicted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return reasons[zmtp.ReasonEvicted]
	}
	for deadline := time.Now().Add(5 * time.Second); evicted() < 84; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("evictions: %v", reasons)
		}
	}
}

// When the listener is full, the address holding the most silent
// handshakes loses its oldest first: others keep theirs.
func TestHandshakeHeaviestAddressEvicted(t *testing.T) {
	evicted := make(chan struct{}, 64)
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, HandshakeTimeout: 30 * time.Second,
		MaxHandshakes: 8,
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) {
			if e.Reason == zmtp.ReasonEvicted {
				evicted <- struct{}{}
			}
		}}
	_, ep := listen(t, cfg, zmq4.NewRouter)
	from := func(ip string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", ep[len("zptcp://"):])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var others []net.Conn
	for i := 0; i < 3; i++ {
		others = append(others, from("127.0.0.3"))
	}
	var flood []net.Conn
	for i := 0; i < 12; i++ { // 3 + 12 = 15 > 8: seven evictions, all from .2
		flood = append(flood, from("127.0.0.2"))
	}
	for i := 0; i < 7; i++ {
		select {
		case <-evicted:
		case <-time.After(3 * time.Second):
			t.Fatalf("only %d of 7 evictions", i)
		}
	}
	open := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, 256)
		for {
			if _, err := c.Read(buf); err != nil {
				return strings.Contains(err.Error(), "timeout")
			}
		}
	}
	for i, c := range others {
		if !open(c) {
			t.Fatalf("connection %d of the lighter address was evicted", i)
		}
	}
	for i, c := range flood {
		if open(c) != (i >= 7) {
			t.Fatalf("flood connection %d: open=%v", i, !(i >= 7))
		}
	}
}

// Connections that have not even greeted are evicted before those that
// are talking (an honest handshake in progress).
func TestHandshakeEvictsSilentFirst(t *testing.T) {
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, HandshakeTimeout: 30 * time.Second,
		MaxHandshakes: 8}
	_, ep := listen(t, cfg, zmq4.NewRouter)
	addr := ep[len("zptcp://"):]
	greeting := make([]byte, 64)
	greeting[0], greeting[9], greeting[10] = 0xff, 0x7f, 3
	copy(greeting[12:], "NULL")
	var talkers []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write(greeting) // then stall before READY
		talkers = append(talkers, c)
	}
	time.Sleep(200 * time.Millisecond) // the server has read the greetings
	for i := 0; i < 40; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	time.Sleep(200 * time.Millisecond)
	buf := make([]byte, 256)
	for i, c := range talkers {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			_, err := c.Read(buf)
			if err == nil {
				continue // the server's greeting
			}
			if !strings.Contains(err.Error(), "timeout") {
				t.Fatalf("talking connection %d was evicted by silent ones: %v", i, err)
			}
			break
		}
	}
}

// A burst of honest clients from one address is served: nothing is
// evicted below MaxHandshakes.
func TestHandshakeHonestBurst(t *testing.T) {
	server := keyPair(t)
	var clients []curve.KeyPair
	var pubs []curve.PublicKey
	for i := 0; i < 60; i++ {
		k := keyPair(t)
		clients = append(clients, k)
		pubs = append(pubs, k.Public)
	}
	var mu sync.Mutex
	failures := map[string]int{}
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, MaxHandshakes: 256,
		Mechanism: &curve.Server{Key: server, Authorize: curve.AllowKeys(pubs...)},
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) {
			mu.Lock()
			failures[e.Reason]++
			mu.Unlock()
		}}
	router, ep := listen(t, cfg, zmq4.NewRouter)
	var wg sync.WaitGroup
	for _, k := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := dial(t, &zmtp.Config{SocketType: "DEALER", Mechanism: &curve.Client{Key: k, ServerKey: server.Public}}, zmq4.NewDealer, ep)
			d.Send(zmq4.NewMsgFrom([]byte("hi")))
		}()
	}
	wg.Wait()
	timer := time.AfterFunc(10*time.Second, func() { router.Close() })
	defer timer.Stop()
	for i := 0; i < len(clients); i++ {
		if _, err := router.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) != 0 {
		t.Fatalf("honest handshakes failed: %v", failures)
	}
}

// When every handshake in progress is talking, a new connection is refused
// and the listener goes on accepting once they are done.
func TestHandshakeAllTalkingRefusesNewcomer(t *testing.T) {
	refused := make(chan struct{}, 8)
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect, HandshakeTimeout: 30 * time.Second, MaxHandshakes: 2,
		OnHandshakeFailure: func(_ net.Addr, e *zmtp.HandshakeError) {
			if e.Reason == zmtp.ReasonEvicted {
				refused <- struct{}{}
			}
		}}
	router, ep := listen(t, cfg, zmq4.NewRouter)
	addr := ep[len("zptcp://"):]
	greeting := make([]byte, 64)
	greeting[0], greeting[9], greeting[10] = 0xff, 0x7f, 3
	copy(greeting[12:], "NULL")
	var talkers []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(greeting) // then stall
		talkers = append(talkers, c)
	}
	time.Sleep(200 * time.Millisecond)
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	select {
	case <-refused:
	case <-time.After(3 * time.Second):
		t.Fatal("the third connection was not refused")
	}
	for _, c := range talkers {
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	d := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, ep)
	d.Send(zmq4.NewMsgFrom([]byte("still accepting")))
	got := make(chan string, 1)
	go func() {
		if m, err := router.Recv(); err == nil {
			got <- string(m.Frames[1])
		}
	}()
	select {
	case s := <-got:
		if s != "still accepting" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the listener stopped accepting after refusing a connection")
	}
}
