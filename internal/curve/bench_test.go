package curve

import (
	"testing"
)

const benchFrame = 64 << 10

func benchCiphers(b *testing.B) (client, server *cipher) {
	cp, sp := connected(b)
	return cp.Cipher.(*cipher), sp.Cipher.(*cipher)
}

func BenchmarkSeal64K(b *testing.B) {
	c, _ := benchCiphers(b)
	frame := make([]byte, benchFrame)
	dst := make([]byte, 0, benchFrame+Overhead)
	b.SetBytes(benchFrame)
	b.ReportAllocs()
	for b.Loop() {
		c.Seal(dst, 0, frame)
	}
}

func BenchmarkOpen64K(b *testing.B) {
	c, s := benchCiphers(b)
	body := c.Seal(nil, 0, make([]byte, benchFrame))
	dst := make([]byte, 0, benchFrame+1)
	b.SetBytes(benchFrame)
	b.ReportAllocs()
	for b.Loop() {
		s.o.last = 0 // reopen the same body: rewind the replay check
		if _, _, err := s.Open(dst, body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen64KHeader opens into a dst that already holds a frame
// header, as the zmtp connection does.
func BenchmarkOpen64KHeader(b *testing.B) {
	c, s := benchCiphers(b)
	body := c.Seal(nil, 0, make([]byte, benchFrame))
	dst := make([]byte, 9, benchFrame+9)
	b.SetBytes(benchFrame)
	b.ReportAllocs()
	for b.Loop() {
		s.o.last = 0
		if _, _, err := s.Open(dst, body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHandshake(b *testing.B) {
	c, s := pair(b)
	b.ReportAllocs()
	for b.Loop() {
		cr, sr, _, _ := handshake(b, c, s, dealerMeta, routerMeta)
		if cr.err != nil || sr.err != nil {
			b.Fatal(cr.err, sr.err)
		}
	}
}
