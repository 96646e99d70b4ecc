package broker

import (
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// A broadcast channel takes one BCAST_CHUNKS, and only when its BCAST
// announced it (flag chunks); one BCAST_GO; nothing else.
func TestBcastChanDeliver(t *testing.T) {
	chunks := &wire.BcastChunks{Channel: 1}
	plain := &bcastChan{id: 1, gos: make(chan *wire.BcastGo, 1)}
	if e := plain.deliver(chunks); e == nil || e.Code != wire.CodeBadRequest {
		t.Fatalf("BCAST_CHUNKS unannounced: %v", e)
	}
	c := &bcastChan{id: 1, gos: make(chan *wire.BcastGo, 1), chunks: make(chan *wire.BcastChunks, 1)}
	if e := c.deliver(chunks); e != nil {
		t.Fatalf("BCAST_CHUNKS: %v", e)
	}
	if e := c.deliver(chunks); e == nil || e.Code != wire.CodeBadRequest {
		t.Fatalf("a second BCAST_CHUNKS: %v", e)
	}
	if got := <-c.chunks; got != chunks {
		t.Fatal("BCAST_CHUNKS not handed on")
	}
	if e := c.deliver(&wire.BcastGo{Channel: 1}); e != nil {
		t.Fatalf("BCAST_GO: %v", e)
	}
	for _, m := range []wire.Message{&wire.BcastGo{Channel: 1}, &wire.Data{Channel: 1}} {
		if e := c.deliver(m); e == nil || e.Code != wire.CodeBadRequest {
			t.Fatalf("%s: %v", m.ID(), e)
		}
	}
}
