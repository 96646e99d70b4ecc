package curve

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/salsa20/salsa"

	"github.com/zpipes/zp/internal/secretbox"
)

// boxOverhead is the octets a box adds to its plain text (the Poly1305 tag).
const boxOverhead = secretbox.Overhead

// Nonce prefixes (RFC 26 and libzmq). A short nonce is an 8-octet big-endian
// counter after a 16-octet prefix, a long nonce 16 random octets after an
// 8-octet prefix.
const (
	prefixHello    = "CurveZMQHELLO---"
	prefixInitiate = "CurveZMQINITIATE"
	prefixReady    = "CurveZMQREADY---"
	prefixMessageC = "CurveZMQMESSAGEC" // client to server
	prefixMessageS = "CurveZMQMESSAGES" // server to client
	prefixWelcome  = "WELCOME-"
	prefixCookie   = "COOKIE--"
	prefixVouch    = "VOUCH---"
)

// sharedKey is a Box key precomputed from one side's secret key and the
// other's public key (crypto_box_beforenm).
type sharedKey [32]byte

// lowOrderKey is the key box.Precompute yields when the Diffie-Hellman output
// is all zero, i.e. when the peer's public key is a low-order point.
// libsodium's crypto_box_beforenm refuses such keys, and so do we. It is
// HSalsa20 of that zero output, as box.Precompute derives it, without the
// scalar multiplication that gives zero: a tenth of a millisecond less at
// every start of zp (TestPrecompute checks the low-order points).
var lowOrderKey = func() (k sharedKey) {
	var zero [32]byte
	var nonce [16]byte
	salsa.HSalsa20((*[32]byte)(&k), &nonce, &zero, &salsa.Sigma)
	return k
}()

var errLowOrder = errors.New("curve: peer public key is a low-order point")

var errNonCanonical = errors.New("curve: peer public key is not a canonical Curve25519 point (at least 2^255 - 19)")

// canonical reports whether a public key is the reduced encoding of its
// u-coordinate: below 2^255 - 19, so its top bit is clear. X25519 ignores
// the top bit and reduces the rest, so each point has other encodings that
// give the same shared key: a HELLO whose C' is re-encoded so would still
// open. Every key libsodium or zp makes is canonical; any other is refused.
func canonical(k *[32]byte) bool {
	if k[31]&0x80 != 0 {
		return false
	}
	if k[31] != 0x7f || k[0] < 0xed {
		return true
	}
	for _, b := range k[1:31] {
		if b != 0xff {
			return true
		}
	}
	return false
}

// precompute returns the Box key between secret and the peer's public key.
func precompute(peer *[32]byte, secret *[32]byte) (sharedKey, error) {
	if !canonical(peer) {
		return sharedKey{}, errNonCanonical
	}
	var k sharedKey
	box.Precompute((*[32]byte)(&k), peer, secret)
	if subtle.ConstantTimeCompare(k[:], lowOrderKey[:]) == 1 {
		return sharedKey{}, errLowOrder
	}
	return k, nil
}

// shortNonce returns prefix (16 octets) followed by n in network order.
func shortNonce(prefix string, n uint64) (nonce [24]byte) {
	copy(nonce[:16], prefix)
	binary.BigEndian.PutUint64(nonce[16:], n)
	return nonce
}

// longNonce returns prefix (8 octets) followed by the 16 octets of long.
func longNonce(prefix string, long []byte) (nonce [24]byte) {
	copy(nonce[:8], prefix)
	copy(nonce[8:], long[:16])
	return nonce
}

// seal appends Box[plain] (tag and cipher text, no nonce) to dst.
func seal(dst, plain []byte, nonce [24]byte, k *sharedKey) []byte {
	return secretbox.Seal(dst, plain, &nonce, (*[32]byte)(k))
}

// open returns the plain text of a box, or false if it does not open.
func open(sealed []byte, nonce [24]byte, k *sharedKey) ([]byte, bool) {
	return secretbox.Open(nil, sealed, &nonce, (*[32]byte)(k))
}

// transientKey reads a fresh secret key from r and returns it with its public
// key.
func transientKey(r io.Reader) (sec, pub [32]byte, err error) {
	if _, err = io.ReadFull(r, sec[:]); err != nil {
		return sec, pub, err
	}
	p, err := curve25519.X25519(sec[:], curve25519.Basepoint)
	if err != nil {
		return sec, pub, err
	}
	copy(pub[:], p)
	return sec, pub, nil
}
