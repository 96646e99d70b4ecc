package curve

import (
	"encoding/binary"
	"errors"
	"math"
	"unsafe"

	"github.com/zpipes/zp/internal/secretbox"
	"github.com/zpipes/zp/internal/zmtp"
)

const messageName = "\x07MESSAGE"

// Overhead is the number of octets a MESSAGE body adds to a frame: the
// command name (8), the short nonce (8), the Poly1305 tag (16) and the flags
// octet (1).
const Overhead = len(messageName) + 8 + boxOverhead + 1

// flagsMask is the flags a MESSAGE box may carry; RFC 26 reserves the others
// and libzmq 4.3 only ever sets these two.
const flagsMask = zmtp.FlagMore | zmtp.FlagCommand

// Errors returned by Cipher.Open.
var (
	ErrMessageMalformed = errors.New("curve: malformed MESSAGE command")
	ErrMessageReplay    = errors.New("curve: MESSAGE short nonce did not increase (replayed or reordered)")
	ErrMessageAuth      = errors.New("curve: MESSAGE box did not open (tampered or wrong key)")
)

// cipher is the zmtp.Cipher of an established CURVE connection. The sealer
// and the opener share nothing mutable, so Seal and Open may run concurrently.
type cipher struct {
	s *sealer
	o *opener
}

type sealer struct {
	key    sharedKey
	prefix string // 16 octets
	next   uint64 // the next short nonce to send
}

type opener struct {
	key    sharedKey
	prefix string // 16 octets
	last   uint64 // the last short nonce accepted from the peer
}

// newCipher returns the cipher of one side. key is the session key (C' <-> S'),
// next the first short nonce this side sends in a MESSAGE and last the last
// short nonce the peer used in the handshake.
func newCipher(key *sharedKey, asServer bool, next, last uint64) *cipher {
	s := &sealer{key: *key, prefix: prefixMessageC, next: next}
	o := &opener{key: *key, prefix: prefixMessageS, last: last}
	if asServer {
		s.prefix, o.prefix = prefixMessageS, prefixMessageC
	}
	return &cipher{s: s, o: o}
}

// Overhead returns the constant Overhead.
func (*cipher) Overhead() int { return Overhead }

// Seal appends to dst the MESSAGE command body ("\x07MESSAGE", short nonce,
// Box[flags + frame]) that carries frame. Flags other than zmtp.FlagMore and
// zmtp.FlagCommand are dropped. The box is sealed from the flags octet and
// frame where they lie, straight into dst: Seal keeps no buffer of its own,
// reads frame once, and does not allocate when dst has room for
// len(frame)+Overhead more octets. frame must not overlap dst's spare
// capacity.
func (c *cipher) Seal(dst []byte, flags byte, frame []byte) []byte {
	s := c.s
	n := s.next
	if n == math.MaxUint64 {
		// 2^64-1 commands on one connection cannot happen; never reuse a nonce.
		panic("curve: short nonce space exhausted")
	}
	s.next++
	dst = append(dst, messageName...)
	dst = binary.BigEndian.AppendUint64(dst, n)
	nonce := shortNonce(s.prefix, n)
	f := [1]byte{flags & flagsMask}
	return secretbox.SealPrefixed(dst, f[:], frame, &nonce, (*[32]byte)(&s.key))
}

// Open authenticates and decrypts a MESSAGE command body (name included) and
// appends the frame to dst, returning the extended slice as frame. It rejects
// a body whose short nonce is not greater than the last one accepted, whose
// box does not open, or whose flags have reserved bits set; after an error
// the connection must be dropped, and frame is dst unchanged. It does not
// allocate when dst has room for len(body)-Overhead more octets (one more if
// dst is empty).
func (c *cipher) Open(dst []byte, body []byte) (flags byte, frame []byte, err error) {
	o := c.o
	if len(body) < Overhead || string(body[:len(messageName)]) != messageName {
		return 0, dst, ErrMessageMalformed
	}
	n := binary.BigEndian.Uint64(body[8:16])
	if n <= o.last {
		return 0, dst, ErrMessageReplay
	}
	sealed := body[16:]
	nonce := shortNonce(o.prefix, n)
	key := (*[32]byte)(&o.key)
	plainLen := len(sealed) - boxOverhead // flags + frame

	// secretbox.Open needs flags+frame contiguous and its output must not
	// overlap its input. When dst is not empty, let the flags octet land on
	// dst's last octet and put that octet back afterwards: the frame then
	// lands where it belongs without a copy.
	base := len(dst)
	if base > 0 {
		base--
	}
	if cap(dst) >= base+plainLen && overlap(dst[base:base+plainLen], sealed) {
		// The caller's buffer holds the body: decrypt aside.
		plain, ok := secretbox.Open(nil, sealed, &nonce, key)
		if !ok {
			return 0, dst, ErrMessageAuth
		}
		if plain[0]&^flagsMask != 0 {
			return 0, dst, ErrMessageMalformed
		}
		o.last = n
		return plain[0], append(dst, plain[1:]...), nil
	}
	var saved byte
	if len(dst) > 0 {
		saved = dst[base]
	}
	out, ok := secretbox.Open(dst[:base], sealed, &nonce, key)
	if !ok {
		return 0, dst, ErrMessageAuth
	}
	flags = out[base]
	if flags&^flagsMask != 0 {
		if len(dst) > 0 { // out may share dst's array
			out[base] = saved
		}
		return 0, dst, ErrMessageMalformed
	}
	o.last = n
	if len(dst) > 0 {
		out[base] = saved
		return flags, out, nil
	}
	// dst was empty: shift the frame over the flags octet.
	copy(out, out[1:])
	return flags, out[:len(out)-1], nil
}

// Verify checks a MESSAGE command body as Open does (its name, a short
// nonce greater than the last one accepted, the box) and accepts its
// short nonce, but decrypts only the flags: Decrypt then decrypts the
// frame, in pieces if need be, straight into the buffer that is to hold
// it (zmtp's reader hands zmq4 its frames so, a copy fewer). It returns
// the frame's length.
func (c *cipher) Verify(body []byte) (flags byte, size int, err error) {
	o := c.o
	if len(body) < Overhead || string(body[:len(messageName)]) != messageName {
		return 0, 0, ErrMessageMalformed
	}
	n := binary.BigEndian.Uint64(body[8:16])
	if n <= o.last {
		return 0, 0, ErrMessageReplay
	}
	nonce := shortNonce(o.prefix, n)
	var f [1]byte
	if !secretbox.VerifyHead(f[:], body[16:], &nonce, (*[32]byte)(&o.key)) {
		return 0, 0, ErrMessageAuth
	}
	if f[0]&^flagsMask != 0 {
		return 0, 0, ErrMessageMalformed
	}
	o.last = n
	return f[0], len(body) - Overhead, nil
}

// Decrypt writes the frame octets off to off+len(dst) of the MESSAGE
// command body that Verify accepted last into dst.
func (c *cipher) Decrypt(dst []byte, body []byte, off int) {
	nonce := shortNonce(c.o.prefix, c.o.last)
	secretbox.DecryptAt(dst, body[16:], 1+off, &nonce, (*[32]byte)(&c.o.key))
}

// overlap reports whether a and b share memory.
func overlap(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	pa := uintptr(unsafe.Pointer(unsafe.SliceData(a)))
	pb := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pa < pb+uintptr(len(b)) && pb < pa+uintptr(len(a))
}
