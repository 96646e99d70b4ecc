package client

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// zpd may close a connection whose session ended (its sweep of
// connections without a session) before the client hangs up. A client
// that is closing its session must take that as the end it asked for:
// no "connection lost; reconnecting" (OnLinkLost), no new OPEN. Here the
// server answers CLOSE by closing the connection at once, without its OK.
func TestCloseTakesALostLinkAsTheEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	closers := map[string]func(){}
	cfg := &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect,
		OnConnect: func(id []byte, _ *zmtp.Peer, _ net.Addr, closeConn func()) {
			mu.Lock()
			closers[string(id)] = closeConn
			mu.Unlock()
		}}
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, cfg))
	defer router.Close()
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	var opens atomic.Int32
	go func() {
		for {
			msg, err := router.Recv()
			if err != nil {
				return
			}
			m, err := wire.Decode(msg.Frames[1:])
			if err != nil {
				continue
			}
			switch m := m.(type) {
			case *wire.Open:
				opens.Add(1)
				ok := &wire.OpenOK{Version: m.Version, Session: "S", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 60000}
				router.Send(zmq4.NewMsgFrom(append([][]byte{msg.Frames[0]}, wire.Frames(ok)...)...))
			case *wire.Close:
				mu.Lock()
				c := closers[string(msg.Frames[0])]
				mu.Unlock()
				if c != nil {
					c()
				}
			}
		}
	}()
	var lost atomic.Int32
	s, err := Dial(ctx, Config{Endpoint: "tcp://" + router.Addr().String(), Insecure: true, Resume: true,
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
