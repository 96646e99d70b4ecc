package secretbox

import (
	"encoding/binary"

	"golang.org/x/crypto/salsa20/salsa"
)

// Salsa20 keystream implementations.
const (
	implGeneric = iota // x/crypto's salsa.XORKeyStream, one block at a time
	implAVX2           // 8 blocks per batch in YMM registers
	implAVX512         // 16 blocks per batch in ZMM registers
)

var implNames = [...]string{implGeneric: "generic", implAVX2: "avx2", implAVX512: "avx512"}

var (
	// bestImpl is the fastest implementation this CPU supports.
	bestImpl int
	// impl is the implementation in use. Tests set it to exercise each
	// one; nothing else changes it after init.
	impl int
)

// batchSize returns the octets implementation i processes per batch.
func batchSize(i int) int {
	switch i {
	case implAVX512:
		return 1024
	case implAVX2:
		return 512
	}
	return 64
}

// tailGenericBlocks is the longest tail, in 64-octet blocks, left to the
// one-block generic code rather than padded out to a whole 8-block batch:
// one vector batch of 8 costs about as much as 3 generic blocks.
const tailGenericBlocks = 3

// xorKeyStream XORs src with the Salsa20/20 keystream of key into dst.
// counter holds the 8-octet nonce followed by the 64-bit little-endian
// number of the first block, as for salsa.XORKeyStream, and is not modified.
// dst must be at least as long as src, and dst and src must overlap exactly
// or not at all.
func xorKeyStream(dst, src []byte, counter *[16]byte, key *[32]byte) {
	i := impl
	if i == implGeneric || len(src) <= tailGenericBlocks*64 {
		salsa.XORKeyStream(dst, src, counter, key)
		return
	}
	dst = dst[:len(src)]

	var st [16]uint32
	st[0] = 0x61707865
	st[1] = binary.LittleEndian.Uint32(key[0:])
	st[2] = binary.LittleEndian.Uint32(key[4:])
	st[3] = binary.LittleEndian.Uint32(key[8:])
	st[4] = binary.LittleEndian.Uint32(key[12:])
	st[5] = 0x3320646e
	st[6] = binary.LittleEndian.Uint32(counter[0:])
	st[7] = binary.LittleEndian.Uint32(counter[4:])
	ctr := binary.LittleEndian.Uint64(counter[8:])
	st[10] = 0x79622d32
	st[11] = binary.LittleEndian.Uint32(key[16:])
	st[12] = binary.LittleEndian.Uint32(key[20:])
	st[13] = binary.LittleEndian.Uint32(key[24:])
	st[14] = binary.LittleEndian.Uint32(key[28:])
	st[15] = 0x6b206574

	// Whole batches of the chosen core; after AVX-512 batches, at most one
	// AVX2 batch remains.
	for _, c := range [...]int{implAVX512, implAVX2} {
		bs := batchSize(c)
		if c > i || len(src) < bs {
			continue
		}
		n := len(src) / bs
		st[8], st[9] = uint32(ctr), uint32(ctr>>32)
		xorBlocks(c, &dst[0], &src[0], n, &st)
		ctr += uint64(n * bs / 64)
		dst, src = dst[n*bs:], src[n*bs:]
	}
	if len(src) == 0 {
		return
	}

	if len(src) <= tailGenericBlocks*64 {
		var c [16]byte
		copy(c[:8], counter[:8])
		binary.LittleEndian.PutUint64(c[8:], ctr)
		salsa.XORKeyStream(dst, src, &c, key)
		return
	}
	// Pad the tail out to one AVX2 batch.
	var buf [512]byte
	copy(buf[:], src)
	st[8], st[9] = uint32(ctr), uint32(ctr>>32)
	xorBlocks(implAVX2, &buf[0], &buf[0], 1, &st)
	copy(dst, buf[:len(src)])
	clear(buf[:])
}
