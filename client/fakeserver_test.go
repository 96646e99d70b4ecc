package client

import (
	"context"
	"testing"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// fakeServer listens with a ROUTER (NULL mechanism) on 127.0.0.1 and calls
// handle with every message a client sends that decodes, on one goroutine;
// reply answers that client. cfg, if set, is the transport's (SocketType
// and OnFull are filled in). It returns the "tcp://" endpoint to dial.
func fakeServer(t *testing.T, cfg *zmtp.Config, handle func(id []byte, m wire.Message, reply func(wire.Message))) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if cfg == nil {
		cfg = &zmtp.Config{}
	}
	cfg.SocketType, cfg.OnFull = "ROUTER", zmtp.Disconnect
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, cfg))
	t.Cleanup(func() { router.Close() })
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
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
			id := msg.Frames[0]
			handle(id, m, func(r wire.Message) {
				router.Send(zmq4.NewMsgFrom(append([][]byte{id}, wire.Frames(r)...)...))
			})
		}
	}()
	return "tcp://" + router.Addr().String()
}
