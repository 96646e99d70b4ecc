// Package secretbox is a faster drop-in for golang.org/x/crypto/nacl/secretbox:
// NaCl's crypto_secretbox_xsalsa20poly1305, which is also crypto_box after
// the key agreement (crypto_box_afternm).
//
// Its output is identical to x/crypto's. On amd64 CPUs with AVX2 or AVX-512
// the XSalsa20 keystream is computed 8 or 16 blocks at a time in vector
// registers, and Poly1305 over messages of 256 octets or more 4 or 8 blocks
// at a time (see poly.go); elsewhere, and for short messages, it uses
// x/crypto's salsa and poly1305 packages.
//
// Unlike x/crypto, which panics on any overlap, Seal and Open also work in
// place (see their documentation).
package secretbox

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/crypto/poly1305"
	"golang.org/x/crypto/salsa20/salsa"
)

// Overhead is the number of octets a box adds to its message: the Poly1305
// tag, which comes first.
const Overhead = poly1305.TagSize

// chunkSize is how much Seal encrypts before handing the cipher text to
// Poly1305, so that the MAC reads it from L1 cache. A multiple of 1024.
const chunkSize = 16 << 10

// setup derives the XSalsa20 sub-key (HSalsa20 of key and nonce[:16]) and
// the Salsa20 nonce and counter (nonce[16:] and block 0).
func setup(subKey *[32]byte, counter *[16]byte, nonce *[24]byte, key *[32]byte) {
	var hNonce [16]byte
	copy(hNonce[:], nonce[:16])
	salsa.HSalsa20(subKey, &hNonce, key, &salsa.Sigma)
	copy(counter[:8], nonce[16:])
	clear(counter[8:])
}

// firstBlock returns the Poly1305 key (the first 32 octets of keystream
// block 0) and the rest of block 0, which encrypts the message's first 32
// octets. It leaves counter at block 1.
func firstBlock(subKey *[32]byte, counter *[16]byte) (polyKey, ks [32]byte) {
	var b [64]byte
	salsa.XORKeyStream(b[:], b[:], counter, subKey)
	copy(polyKey[:], b[:32])
	copy(ks[:], b[32:])
	counter[8] = 1
	return polyKey, ks
}

// Seal appends an encrypted and authenticated copy of message to out and
// returns the extended slice: Overhead octets of tag, then the cipher text.
// The key and nonce pair must be unique for each distinct message.
//
// message may be sealed in place: if out[len(out)+Overhead:] (after it is
// extended) starts exactly where message does, the cipher text replaces the
// message and the tag goes into the Overhead octets before it. Any other
// overlap of out's extension with message panics.
func Seal(out, message []byte, nonce *[24]byte, key *[32]byte) []byte {
	return seal(out, nil, message, nonce, key)
}

// SealPrefixed is Seal of prefix followed by message, read where each
// lies: the caller need not copy them together first (a ZMTP-CURVE box
// holds a flags octet and then the frame). prefix is at most 32 octets and
// must not overlap out's extension. message may be sealed in place: if the
// cipher text's octet len(prefix) (after out is extended) is where message
// starts; any other overlap panics.
func SealPrefixed(out, prefix, message []byte, nonce *[24]byte, key *[32]byte) []byte {
	if len(prefix) > 32 {
		panic("secretbox: prefix longer than 32 octets")
	}
	return seal(out, prefix, message, nonce, key)
}

func seal(out, head, message []byte, nonce *[24]byte, key *[32]byte) []byte {
	ret, o := sliceForAppend(out, len(head)+len(message)+Overhead)
	ct := o[Overhead:]
	if anyOverlap(o, head) || anyOverlap(o[:Overhead+len(head)], message) || inexactOverlap(ct[len(head):], message) {
		panic("secretbox: invalid buffer overlap")
	}

	var subKey [32]byte
	var counter [16]byte
	setup(&subKey, &counter, nonce, key)
	polyKey, ks := firstBlock(&subKey, &counter)

	// The first 32 octets of plain text are gathered before anything is
	// written: message may be sealed in place.
	var first [32]byte
	n := copy(first[:], head)
	n += copy(first[n:], message)
	for i := range n {
		ct[i] = first[i] ^ ks[i]
	}

	// The rest, a chunk at a time: encrypt, then authenticate while the
	// cipher text is still in cache.
	var tag [Overhead]byte
	msg, rest := message[n-len(head):], ct[n:]
	block := uint64(1)
	if usePolyVector() && len(head)+len(message) >= polyVectorMin {
		mac := newPolyMAC(&polyKey, impl)
		mac.blocks(ct[:n]) // n = 32: whole blocks
		for {
			c := min(len(msg), chunkSize)
			binary.LittleEndian.PutUint64(counter[8:], block)
			xorKeyStream(rest[:c], msg[:c], &counter, &subKey)
			whole := c &^ (16 - 1)
			mac.blocks(rest[:whole])
			if c == len(msg) {
				tag = mac.sum(rest[whole:c])
				break
			}
			block += chunkSize / 64
			msg, rest = msg[c:], rest[c:]
		}
	} else {
		mac := poly1305.New(&polyKey)
		mac.Write(ct[:n])
		for len(msg) > 0 {
			c := min(len(msg), chunkSize)
			binary.LittleEndian.PutUint64(counter[8:], block)
			xorKeyStream(rest[:c], msg[:c], &counter, &subKey)
			mac.Write(rest[:c])
			block += chunkSize / 64
			msg, rest = msg[c:], rest[c:]
		}
		mac.Sum(tag[:0])
	}
	copy(o, tag[:])
	return ret
}

// VerifyHead authenticates box (in constant time) and, when it does,
// decrypts the first len(head) octets of its message (at most 32) into
// head and returns true. The rest of the message is left for DecryptAt,
// which lets a reader decrypt straight into the buffer that is to hold
// it. It writes nothing when the box does not authenticate.
func VerifyHead(head, box []byte, nonce *[24]byte, key *[32]byte) bool {
	if len(head) > 32 || len(head) > len(box)-Overhead {
		return false
	}
	_, _, ks, ok := authenticate(box, nonce, key)
	if !ok {
		return false
	}
	for i := range head {
		head[i] = box[Overhead+i] ^ ks[i]
	}
	return true
}

// DecryptAt decrypts the octets off to off+len(dst) of box's message into
// dst. box must have authenticated (VerifyHead) under the same nonce and
// key: DecryptAt checks nothing. dst and box may overlap only exactly
// (dst starting where those octets of cipher text are).
func DecryptAt(dst, box []byte, off int, nonce *[24]byte, key *[32]byte) {
	src := box[Overhead+off : Overhead+off+len(dst)]
	if len(src) == 0 {
		return
	}
	var subKey [32]byte
	var counter [16]byte
	setup(&subKey, &counter, nonce, key)
	pos := 32 + off // the message starts 32 octets into keystream block 0
	block := uint64(pos / 64)
	if skip := pos % 64; skip != 0 {
		var b [64]byte
		binary.LittleEndian.PutUint64(counter[8:], block)
		salsa.XORKeyStream(b[:], b[:], &counter, &subKey)
		n := min(64-skip, len(src))
		for i := range n {
			dst[i] = src[i] ^ b[skip+i]
		}
		dst, src = dst[n:], src[n:]
		block++
	}
	if len(src) > 0 {
		binary.LittleEndian.PutUint64(counter[8:], block)
		xorKeyStream(dst, src, &counter, &subKey)
	}
}

// authenticate checks box's tag in constant time and returns what
// decrypting it needs: the XSalsa20 sub-key, the counter at block 1 and
// the rest of keystream block 0.
func authenticate(box []byte, nonce *[24]byte, key *[32]byte) (subKey [32]byte, counter [16]byte, ks [32]byte, ok bool) {
	if len(box) < Overhead {
		return subKey, counter, ks, false
	}
	setup(&subKey, &counter, nonce, key)
	polyKey, ks := firstBlock(&subKey, &counter)
	var tag [Overhead]byte
	copy(tag[:], box)
	return subKey, counter, ks, polyVerify(&tag, box[Overhead:], &polyKey)
}

// Open authenticates and decrypts a box produced by Seal, appends the
// message to out and returns the extended slice and true. If the box does
// not authenticate it returns nil and false and writes nothing.
//
// A box may be opened in place: if out[len(out):] (after it is extended)
// starts exactly where box[Overhead:] does, the message replaces the cipher
// text. Any other overlap of out's extension with box panics.
func Open(out, box []byte, nonce *[24]byte, key *[32]byte) ([]byte, bool) {
	// Authenticate before writing anything.
	subKey, counter, ks, ok := authenticate(box, nonce, key)
	if !ok {
		return nil, false
	}
	ct := box[Overhead:]

	ret, o := sliceForAppend(out, len(ct))
	if anyOverlap(o, box[:Overhead]) || inexactOverlap(o, ct) {
		panic("secretbox: invalid buffer overlap")
	}
	n := min(len(ct), len(ks))
	for i := range n {
		o[i] = ct[i] ^ ks[i]
	}
	if len(ct) > n {
		xorKeyStream(o[n:], ct[n:], &counter, &subKey)
	}
	return ret, true
}

// sliceForAppend returns in extended by n octets (reusing its array when it
// has the capacity) and the extension.
func sliceForAppend(in []byte, n int) (head, tail []byte) {
	if total := len(in) + n; cap(in) >= total {
		head = in[:total]
	} else {
		head = make([]byte, total)
		copy(head, in)
	}
	return head, head[len(in):]
}

// anyOverlap reports whether x and y share memory.
func anyOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 {
		return false
	}
	x0 := uintptr(unsafe.Pointer(unsafe.SliceData(x)))
	y0 := uintptr(unsafe.Pointer(unsafe.SliceData(y)))
	return x0 < y0+uintptr(len(y)) && y0 < x0+uintptr(len(x))
}

// inexactOverlap reports whether x and y share memory other than by
// starting at the same address.
func inexactOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 || unsafe.SliceData(x) == unsafe.SliceData(y) {
		return false
	}
	return anyOverlap(x, y)
}
