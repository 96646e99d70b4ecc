package client

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// zpd may close a connection whose session ended (its sweep of
// connections without a session) before the client hangs up. A client
// that is closing its session must take that as the end it asked for:
// no "connection lost; reconnecting" (OnLinkLost), no new OPEN. Here the
// server answers CLOSE by closing the connection at once, without its OK.
func TestCloseTakesALostLinkAsTheEnd(t *testing.T) {
	var mu sync.Mutex
	closers := map[string]func(){}
	cfg := &zmtp.Config{OnConnect: func(id []byte, _ *zmtp.Peer, _ net.Addr, closeConn func()) {
		mu.Lock()
		closers[string(id)] = closeConn
		mu.Unlock()
	}}
	var opens atomic.Int32
	ep := fakeServer(t, cfg, func(id []byte, m wire.Message, reply func(wire.Message)) {
		switch m := m.(type) {
		case *wire.Open:
			opens.Add(1)
			reply(&wire.OpenOK{Version: m.Version, Session: "S", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 60000})
		case *wire.Close:
			mu.Lock()
			c := closers[string(id)]
			mu.Unlock()
			if c != nil {
				c()
			}
		}
	})
	var lost atomic.Int32
	s, err := Dial(context.Background(), Config{Endpoint: ep, Insecure: true, Resume: true,
		OnLinkLost: func(error) { lost.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("Close took %v: it waited for an answer on a connection that was gone", d)
	}
	time.Sleep(300 * time.Millisecond) // a reconnect would have dialled by now
	if n := lost.Load(); n != 0 {
		t.Errorf("OnLinkLost called %d times while the session was closing", n)
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("%d OPENs: the client reconnected to a session it was closing", n)
	}
}
