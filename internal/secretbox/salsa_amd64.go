//go:build amd64 && gc && !purego

package secretbox

import "golang.org/x/sys/cpu"

// xorBlocksAVX2 XORs n*512 octets of src with the Salsa20/20 keystream of
// state (eight blocks at a time) into dst. n must be at least 1, and dst and
// src must overlap exactly or not at all. state is not modified.
//
//go:noescape
func xorBlocksAVX2(dst, src *byte, n int, state *[16]uint32)

// xorBlocksAVX512 is xorBlocksAVX2 with n*1024 octets, sixteen blocks at a
// time.
//
//go:noescape
func xorBlocksAVX512(dst, src *byte, n int, state *[16]uint32)

func init() {
	bestImpl = detectImpl()
	impl = bestImpl
}

// detectImpl picks the fastest core this CPU (and OS) supports.
//
// The AVX-512 core is used only on CPUs that also report VBMI2 (Ice Lake,
// Sapphire Rapids and later Intel; AMD Zen 4 and later). That leaves out the
// Skylake-SP/Cascade Lake generation, whose cores lower their clock for
// sustained 512-bit work and slow down everything else on that core.
func detectImpl() int {
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX512VBMI2:
		return implAVX512
	case cpu.X86.HasAVX2:
		return implAVX2
	}
	return implGeneric
}

// supported reports whether this CPU can run implementation i.
func supported(i int) bool {
	switch i {
	case implAVX512:
		return cpu.X86.HasAVX512F
	case implAVX2:
		return cpu.X86.HasAVX2
	case implGeneric:
		return true
	}
	return false
}

// xorBlocks runs the vector core of implementation i over n batches of
// batchSize(i) octets.
func xorBlocks(i int, dst, src *byte, n int, state *[16]uint32) {
	if i == implAVX512 {
		xorBlocksAVX512(dst, src, n, state)
	} else {
		xorBlocksAVX2(dst, src, n, state)
	}
}

// polyBlocksAVX2 runs Poly1305 over n >= 1 groups of 64 octets at msg,
// starting from and updating the accumulator h (five 26-bit limbs).
//
//go:noescape
func polyBlocksAVX2(h *[5]uint64, msg *byte, n int, pw *polyPowers)

// polyBlocksAVX512 is polyBlocksAVX2 with groups of 128 octets.
//
//go:noescape
func polyBlocksAVX512(h *[5]uint64, msg *byte, n int, pw *polyPowers8)

func polyBlocks4(h *[5]uint64, msg *byte, n int, pw *polyPowers) {
	polyBlocksAVX2(h, msg, n, pw)
}

func polyBlocks8(h *[5]uint64, msg *byte, n int, pw *polyPowers8) {
	polyBlocksAVX512(h, msg, n, pw)
}
