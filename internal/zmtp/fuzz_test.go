package zmtp

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func FuzzDecodeMetadata(f *testing.F) {
	f.Add(Metadata{{Name: PropSocketType, Value: []byte("DEALER")}, {Name: PropIdentity, Value: nil}}.AppendEncode(nil))
	f.Add([]byte{0x0b, 'S', 'o', 'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMetadata(b)
		if err != nil {
			return
		}
		if again := m.AppendEncode(nil); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %x vs %x", again, b)
		}
	})
}

func FuzzParseGreeting(f *testing.F) {
	g := greeting("CURVE", true)
	f.Add(g[:])
	g = greeting("NULL", false)
	f.Add(g[:])
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		mech, err := parseGreeting(b)
		if err == nil && (len(b) != greetingLen || len(mech) > 20) {
			t.Fatalf("accepted %x as %q", b, mech)
		}
	})
}

// FuzzConnRead feeds arbitrary traffic from a peer to a connection (after
// the handshake, NULL mechanism) and reads it as zmq4 would: it must never
// panic, hang or hand out a frame over the limits.
func FuzzConnRead(f *testing.F) {
	f.Add([]byte{0x00, 0x03, 'a', 'b', 'c'})
	f.Add([]byte{0x01, 0x01, 'x', 0x00, 0x00})
	f.Add([]byte{0x02, 0, 0, 0, 0, 0, 0, 0x10, 0x00})
	f.Add([]byte{0x06, 0, 0, 0, 0, 0, 0, 0, 5, 4, 'P', 'I', 'N', 'G'})
	f.Add([]byte{0x04, 0x05, 0x04, 'P', 'I', 'N', 'G'})
	f.Fuzz(func(t *testing.T, traffic []byte) {
		a, b := net.Pipe()
		defer b.Close()
		cfg := &Config{SocketType: "ROUTER", MaxFrame: 64, MaxMessage: 128, MaxFrames: 4, OnFull: Disconnect}
		peer := &Peer{Meta: Metadata{{Name: PropSocketType, Value: []byte("DEALER")}}}
		c := newConn(a, bufio.NewReader(a), cfg, peer, []byte("id"))
		defer c.Close()
		go func() {
			b.Write(traffic)
			b.Close()
		}()
		// Skip the synthetic greeting and READY.
		if _, err := io.ReadFull(c, make([]byte, len(c.rpending))); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("read did not end")
		}
	})
}
