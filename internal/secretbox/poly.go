package secretbox

import (
	"crypto/subtle"
	"encoding/binary"
	"math/bits"

	"golang.org/x/crypto/poly1305"
)

// Poly1305 for long messages. A vector core (polyBlocksAVX2: 64-octet
// groups in four lanes; polyBlocksAVX512: 128-octet groups in eight) takes
// runs of whole groups; the scalar code below does what is left and the
// final reduction. Short messages, and CPUs without a vector core, use
// x/crypto's poly1305.
//
// Limb bounds in the vector cores: the accumulator limbs enter each
// multiplication below 2^27 (about 2^26 after the carry pass, plus a message
// limb below 2^26), the key limbs are below 2^26 and their multiples by 5
// below 2^29, so each of the five products summed per limb is below 2^56
// and the sums stay below 2^59: no 64-bit lane overflows.

// polyVectorMin is the shortest run of whole blocks handed to a vector core;
// below it, setting up the powers of r costs more than it saves.
const polyVectorMin = 256

// polyPowers holds the 26-bit limbs R0..R4 and S1..S4 (5*R1..5*R4) of r^4,
// each broadcast to four 64-bit lanes, and then those of the per-lane final
// powers r^4, r^2, r^3, r (the lane order polyBlocksAVX2 loads blocks in).
type polyPowers [18][4]uint64

// polyPowers8 is polyPowers for polyBlocksAVX512: r^8 in eight lanes, then
// the final powers r^8, r^4, r^7, r^3, r^6, r^2, r^5, r.
type polyPowers8 [18][8]uint64

// polyMAC is a Poly1305 state. h is the accumulator (h2 holds bits 128 and
// up, and stays small), r the clamped key half, s the other.
type polyMAC struct {
	h0, h1, h2 uint64
	r0, r1     uint64
	s0, s1     uint64
	vector     int // the vector core for long runs: implAVX2, implAVX512 or none
	havePowers bool
	pw4        polyPowers
	pw8        polyPowers8
}

// newPolyMAC returns a Poly1305 state for key that hands long runs of
// blocks to the vector core of implementation vector (implGeneric: none).
func newPolyMAC(key *[32]byte, vector int) polyMAC {
	return polyMAC{
		r0:     binary.LittleEndian.Uint64(key[0:]) & 0x0ffffffc0fffffff,
		r1:     binary.LittleEndian.Uint64(key[8:]) & 0x0ffffffc0ffffffc,
		s0:     binary.LittleEndian.Uint64(key[16:]),
		s1:     binary.LittleEndian.Uint64(key[24:]),
		vector: vector,
	}
}

// mulR returns h*r, reduced modulo 2^130-5 enough that the top word stays
// below 8. h2 must be below 16.
func (p *polyMAC) mulR(h0, h1, h2 uint64) (uint64, uint64, uint64) {
	// The 256-bit product m0..m3. Clamping keeps r0, r1 < 2^60, so the
	// high halves and the h2 products leave room for the carries.
	hi00, m0 := bits.Mul64(h0, p.r0)
	hi01, lo01 := bits.Mul64(h0, p.r1)
	hi10, lo10 := bits.Mul64(h1, p.r0)
	hi11, lo11 := bits.Mul64(h1, p.r1)

	m1, c := bits.Add64(hi00, lo01, 0)
	m2, c := bits.Add64(hi01, lo11, c)
	m3 := hi11 + c
	m1, c = bits.Add64(m1, lo10, 0)
	m2, c = bits.Add64(m2, hi10, c)
	m3 += c
	m2, c = bits.Add64(m2, h2*p.r0, 0)
	m3 += h2*p.r1 + c

	// product = low + 2^130*k with low = bits 0..129. 2^130 = 5 mod p, so
	// product = low + 4k + k, and 4k is (m2 &^ 3, m3).
	h0, h1, h2 = m0, m1, m2&3
	k0, k1 := m2&^3, m3
	var cc uint64
	h0, cc = bits.Add64(h0, k0, 0)
	h1, cc = bits.Add64(h1, k1, cc)
	h2 += cc
	k0, k1 = k0>>2|k1<<62, k1>>2
	h0, cc = bits.Add64(h0, k0, 0)
	h1, cc = bits.Add64(h1, k1, cc)
	h2 += cc
	return h0, h1, h2
}

// block adds one 16-octet block (plus pad, 1 for a whole block, at bit 128)
// and multiplies by r.
func (p *polyMAC) block(b []byte, pad uint64) {
	var c uint64
	p.h0, c = bits.Add64(p.h0, binary.LittleEndian.Uint64(b[0:]), 0)
	p.h1, c = bits.Add64(p.h1, binary.LittleEndian.Uint64(b[8:]), c)
	p.h2 += c + pad
	p.h0, p.h1, p.h2 = p.mulR(p.h0, p.h1, p.h2)
}

// blocks authenticates whole blocks; len(m) must be a multiple of 16.
func (p *polyMAC) blocks(m []byte) {
	if p.vector != implGeneric && len(m) >= polyVectorMin {
		if !p.havePowers {
			p.setPowers()
		}
		var l [5]uint64
		l[0], l[1], l[2], l[3], l[4] = to26(p.h0, p.h1, p.h2)
		var n int
		if p.vector == implAVX512 {
			n = len(m) / 128
			polyBlocks8(&l, &m[0], n, &p.pw8)
			n *= 128
		} else {
			n = len(m) / 64
			polyBlocks4(&l, &m[0], n, &p.pw4)
			n *= 64
		}
		p.h0, p.h1, p.h2 = from26(&l)
		m = m[n:]
	}
	for len(m) >= 16 {
		p.block(m[:16], 1)
		m = m[16:]
	}
}

// sum authenticates the final tail (shorter than 16 octets) and returns the
// tag.
func (p *polyMAC) sum(tail []byte) (tag [16]byte) {
	if len(tail) > 0 {
		var b [16]byte
		copy(b[:], tail)
		b[len(tail)] = 1
		p.block(b[:], 0)
	}
	h0, h1 := reduce(p.h0, p.h1, p.h2)
	var c uint64
	h0, c = bits.Add64(h0, p.s0, 0)
	h1, _ = bits.Add64(h1, p.s1, c)
	binary.LittleEndian.PutUint64(tag[0:], h0)
	binary.LittleEndian.PutUint64(tag[8:], h1)
	return tag
}

// reduce returns the low 128 bits of h mod 2^130-5, for h < 2*(2^130-5), in
// constant time.
func reduce(h0, h1, h2 uint64) (uint64, uint64) {
	// g = h + 5 - 2^130; keep it if it did not go negative.
	g0, c := bits.Add64(h0, 5, 0)
	g1, c := bits.Add64(h1, 0, c)
	g2 := h2 + c
	keep := -(g2 >> 2) // all ones if h+5 >= 2^130
	return h0&^keep | g0&keep, h1&^keep | g1&keep
}

// fullReduce returns h mod 2^130-5 for h < 2*(2^130-5).
func fullReduce(h0, h1, h2 uint64) (uint64, uint64, uint64) {
	g0, c := bits.Add64(h0, 5, 0)
	g1, c := bits.Add64(h1, 0, c)
	g2 := h2 + c
	keep := -(g2 >> 2)
	return h0&^keep | g0&keep, h1&^keep | g1&keep, h2&^keep | (g2&3)&keep
}

const mask26 = 1<<26 - 1

// to26 splits h (below 2^131) into five 26-bit limbs, the last one longer.
func to26(h0, h1, h2 uint64) (l0, l1, l2, l3, l4 uint64) {
	return h0 & mask26, h0 >> 26 & mask26, (h0>>52 | h1<<12) & mask26,
		h1 >> 14 & mask26, h1>>40 | h2<<24
}

// from26 returns l[0] + l[1]<<26 + l[2]<<52 + l[3]<<78 + l[4]<<104 for limbs
// below 2^58, reduced so that the top word is below 8.
func from26(l *[5]uint64) (h0, h1, h2 uint64) {
	var c uint64
	// Bits 0..63: l0, l1<<26, the low 12 bits of l2 at 52.
	h0, c = bits.Add64(l[0], l[1]<<26, 0)
	h1, _ = bits.Add64(l[1]>>38, 0, c)
	h0, c = bits.Add64(h0, l[2]<<52, 0)
	h1, c = bits.Add64(h1, l[2]>>12, c)
	h2 = c
	// l3 at 78 = 64+14, l4 at 104 = 64+40.
	h1, c = bits.Add64(h1, l[3]<<14, 0)
	h2 += l[3]>>50 + c
	h1, c = bits.Add64(h1, l[4]<<40, 0)
	h2 += l[4]>>24 + c
	// Fold bits 130 and up back in, times 5.
	k := h2 >> 2
	h2 &= 3
	h0, c = bits.Add64(h0, k*5, 0)
	h1, c = bits.Add64(h1, 0, c)
	h2 += c
	return h0, h1, h2
}

// setPowers fills the powers table of p's vector core from r.
func (p *polyMAC) setPowers() {
	var pow [9][5]uint64 // pow[i]: the limbs of r^i
	h0, h1, h2 := p.r0, p.r1, uint64(0)
	for i := 1; i <= 8; i++ {
		if i > 1 {
			h0, h1, h2 = p.mulR(h0, h1, h2)
		}
		g0, g1, g2 := fullReduce(h0, h1, h2)
		l := &pow[i]
		l[0], l[1], l[2], l[3], l[4] = to26(g0, g1, g2)
	}
	// fill sets table rows 9*half+k (R_k) and 9*half+4+k (S_k) from the
	// powers of each lane.
	fill := func(rows [][]uint64, lanes []int) {
		for k := range 5 {
			for j, e := range lanes {
				rows[k][j] = pow[e][k]
				if k > 0 {
					rows[4+k][j] = 5 * pow[e][k]
				}
			}
		}
	}
	var rows [18][]uint64
	if p.vector == implAVX512 {
		for i := range rows {
			rows[i] = p.pw8[i][:]
		}
		fill(rows[:9], []int{8, 8, 8, 8, 8, 8, 8, 8})
		fill(rows[9:], []int{8, 4, 7, 3, 6, 2, 5, 1})
	} else {
		for i := range rows {
			rows[i] = p.pw4[i][:]
		}
		fill(rows[:9], []int{4, 4, 4, 4})
		fill(rows[9:], []int{4, 2, 3, 1})
	}
	p.havePowers = true
}

// usePolyVector reports whether the current implementation has a vector
// Poly1305 core (every implementation but the generic one).
func usePolyVector() bool { return impl != implGeneric }

// polySum returns the Poly1305 tag of m.
func polySum(m []byte, key *[32]byte) [16]byte {
	if !usePolyVector() || len(m) < polyVectorMin {
		var tag [16]byte
		poly1305.Sum(&tag, m, key)
		return tag
	}
	p := newPolyMAC(key, impl)
	n := len(m) &^ 15
	p.blocks(m[:n])
	return p.sum(m[n:])
}

// polyVerify reports, in constant time, whether tag is m's Poly1305 tag.
func polyVerify(tag *[16]byte, m []byte, key *[32]byte) bool {
	want := polySum(m, key)
	return subtle.ConstantTimeCompare(tag[:], want[:]) == 1
}
