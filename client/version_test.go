package client

import (
	"context"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// A zpd that predates the fleet answers OPEN versions 7 down to 2 with 426;
// the client asks again, one version lower each time, on the same connection.
func TestOpenFallsBackToVersion1(t *testing.T) {
	versions := make(chan uint16, wire.Version)
	ep := fakeServer(t, nil, func(_ []byte, m wire.Message, reply func(wire.Message)) {
		o, ok := m.(*wire.Open)
		if !ok {
			return
		}
		versions <- o.Version
		if o.Version == 1 {
			reply(&wire.OpenOK{Version: 1, Session: "S", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 1000})
			return
		}
		reply(wire.Errorf(0, wire.CodeVersion, "protocol version %d not supported (this zpd speaks 1)", o.Version))
	})
	s, err := Dial(context.Background(), Config{Endpoint: ep, Insecure: true})
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
