package secretbox

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"golang.org/x/crypto/poly1305"
)

// polyKeys are random keys and the extremes clamping allows.
func polyKeys(r *rand.Rand) [][32]byte {
	var keys [][32]byte
	var k [32]byte
	keys = append(keys, k) // r = 0, s = 0
	for i := range k {
		k[i] = 0xff // largest clamped r, s = 2^128-1
	}
	keys = append(keys, k)
	for i := 16; i < 32; i++ {
		k[i] = 0
	}
	keys = append(keys, k)
	for range 6 {
		copy(k[:], randBytes(r, 32))
		keys = append(keys, k)
	}
	return keys
}

// polyMessages returns messages of length n: random, all ones, all zeros,
// and alternating runs.
func polyMessages(r *rand.Rand, n int) [][]byte {
	ones := bytes.Repeat([]byte{0xff}, n)
	alt := make([]byte, n)
	for i := range alt {
		if i/16%3 != 1 {
			alt[i] = 0xff
		}
	}
	return [][]byte{randBytes(r, n), ones, make([]byte, n), alt}
}

// TestPoly1305 compares the Poly1305 code with x/crypto's, whole and
// streamed in pieces.
func TestPoly1305(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(7, 8))
		lengths := []int{0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 300, 319, 320, 321,
			383, 384, 511, 512, 1000, 1024, 1039, 4096 + 15, 16384 + 32, 65536, 100000 + 7}
		for n := 0; n < 700; n += 1 + n/50 {
			lengths = append(lengths, n)
		}
		for _, key := range polyKeys(r) {
			for _, n := range lengths {
				for _, m := range polyMessages(r, n) {
					var want [16]byte
					poly1305.Sum(&want, m, &key)
					if got := polySum(m, &key); got != want {
						t.Fatalf("key %x, length %d: polySum = %x, want %x", key, n, got, want)
					}
					if !polyVerify(&want, m, &key) {
						t.Fatalf("key %x, length %d: polyVerify rejects the right tag", key, n)
					}
					bad := want
					bad[r.IntN(16)] ^= 1 << r.IntN(8)
					if polyVerify(&bad, m, &key) {
						t.Fatalf("key %x, length %d: polyVerify accepts a wrong tag", key, n)
					}

					// Streamed: random whole-block pieces, then the tail.
					p := newPolyMAC(&key, impl)
					rest := m
					for len(rest) >= 16 {
						c := 16 * (1 + r.IntN(min(len(rest)/16, 100)))
						if r.IntN(4) == 0 {
							c = len(rest) &^ 15
						}
						p.blocks(rest[:c])
						rest = rest[c:]
					}
					if got := p.sum(rest); got != want {
						t.Fatalf("key %x, length %d: streamed tag = %x, want %x", key, n, got, want)
					}
				}
			}
		}
	})
}

// TestPolyLimbs checks the conversions between the 64-bit and 26-bit forms.
func TestPolyLimbs(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for i := range 100000 {
		h0, h1, h2 := r.Uint64(), r.Uint64(), r.Uint64()&3
		if i%3 == 0 {
			h0, h1 = ^uint64(0), ^uint64(0)
		}
		var l [5]uint64
		l[0], l[1], l[2], l[3], l[4] = to26(h0, h1, h2)
		for k, x := range l[:4] {
			if x>>26 != 0 {
				t.Fatalf("limb %d of %x:%x:%x is %#x", k, h2, h1, h0, x)
			}
		}
		g0, g1, g2 := from26(&l)
		if h2 < 3 && (g0 != h0 || g1 != h1 || g2 != h2) {
			t.Fatalf("from26(to26(%x:%x:%x)) = %x:%x:%x", h2, h1, h0, g2, g1, g0)
		}
	}
}

func BenchmarkPoly1305(b *testing.B) {
	var key [32]byte
	m := make([]byte, 64<<10)
	b.Run("ours-avx2", func(b *testing.B) {
		if !supported(implAVX2) {
			b.Skip("no AVX2")
		}
		setImpl(b, implAVX2)
		b.SetBytes(int64(len(m)))
		for b.Loop() {
			polySum(m, &key)
		}
	})
	b.Run("ours-avx512", func(b *testing.B) {
		if !supported(implAVX512) {
			b.Skip("no AVX-512")
		}
		setImpl(b, implAVX512)
		b.SetBytes(int64(len(m)))
		for b.Loop() {
			polySum(m, &key)
		}
	})
	b.Run("xcrypto", func(b *testing.B) {
		var tag [16]byte
		b.SetBytes(int64(len(m)))
		for b.Loop() {
			poly1305.Sum(&tag, m, &key)
		}
	})
}
