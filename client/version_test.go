package client

import (
	"context"
	"testing"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// A zpd that predates the fleet answers OPEN versions 7 down to 2 with 426;
// the client asks again, one version lower each time, on the same connection.
func TestOpenFallsBackToVersion1(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect}))
	defer router.Close()
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	versions := make(chan uint16, wire.Version)
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
			o, ok := m.(*wire.Open)
			if !ok {
				continue
			}
			versions <- o.Version
			var reply wire.Message = wire.Errorf(0, wire.CodeVersion, "protocol version %d not supported (this zpd speaks 1)", o.Version)
			if o.Version == 1 {
				reply = &wire.OpenOK{Version: 1, Session: "S", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 1000}
			}
			router.Send(zmq4.NewMsgFrom(append([][]byte{msg.Frames[0]}, wire.Frames(reply)...)...))
		}
	}()
	s, err := Dial(ctx, Config{Endpoint: "tcp://" + router.Addr().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Info().Protocol != 1 {
		t.Fatalf("negotiated version %d", s.Info().Protocol)
	}
	for want := uint16(wire.Version); want >= 1; want-- {
		if got := <-versions; got != want {
			t.Fatalf("OPEN version %d, want %d", got, want)
		}
	}
	if _, err := NewFleet(s); err != ErrNotHub {
		t.Fatalf("fleet on a version 1 zpd: %v", err)
	}
}
