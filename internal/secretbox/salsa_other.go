//go:build !amd64 || !gc || purego

package secretbox

func init() {
	bestImpl = implGeneric
	impl = bestImpl
}

func supported(i int) bool { return i == implGeneric }

func xorBlocks(i int, dst, src *byte, n int, state *[16]uint32) {
	panic("secretbox: no vector Salsa20 core on this platform")
}

func polyBlocks4(h *[5]uint64, msg *byte, n int, pw *polyPowers) {
	panic("secretbox: no vector Poly1305 core on this platform")
}

func polyBlocks8(h *[5]uint64, msg *byte, n int, pw *polyPowers8) {
	panic("secretbox: no vector Poly1305 core on this platform")
}
