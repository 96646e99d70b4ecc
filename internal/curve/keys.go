package curve

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/curve25519"

	"github.com/zpipes/zp/internal/z85"
)

// KeySize is the size in octets of a Curve25519 public or secret key.
const KeySize = 32

// PublicKey is a Curve25519 public key.
type PublicKey [KeySize]byte

// SecretKey is a Curve25519 secret key. Its String and GoString methods do not
// reveal it, so that a stray log line cannot leak it.
type SecretKey [KeySize]byte

// KeyPair is a long-term key pair.
type KeyPair struct {
	Public PublicKey
	Secret SecretKey
}

var errZeroKey = errors.New("curve: key is all zero")

// GenerateKeyPair returns a new key pair from crypto/rand.
func GenerateKeyPair() (KeyPair, error) {
	return generateKeyPair(rand.Reader)
}

func generateKeyPair(r io.Reader) (KeyPair, error) {
	var sk SecretKey
	if _, err := io.ReadFull(r, sk[:]); err != nil {
		return KeyPair{}, fmt.Errorf("curve: generate key: %w", err)
	}
	return NewKeyPair(sk)
}

// NewKeyPair returns the key pair whose secret key is sk, deriving the public
// key from it.
func NewKeyPair(sk SecretKey) (KeyPair, error) {
	if sk == (SecretKey{}) {
		return KeyPair{}, errZeroKey
	}
	pub, err := curve25519.X25519(sk[:], curve25519.Basepoint)
	if err != nil {
		return KeyPair{}, fmt.Errorf("curve: derive public key: %w", err)
	}
	kp := KeyPair{Secret: sk}
	copy(kp.Public[:], pub)
	return kp, nil
}

// String returns k in Z85 (40 characters), the form libzmq's
// zmq_curve_keypair and pyzmq print.
func (k PublicKey) String() string {
	s, _ := z85.Encode(k[:]) // 32 is a multiple of 4
	return s
}

// Fingerprint returns "SHA256:" followed by the unpadded standard base64 of
// the SHA-256 of k, like ssh-keygen -l.
func (k PublicKey) Fingerprint() string {
	sum := sha256.Sum256(k[:])
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// IsZero reports whether k is the all-zero (unset) key.
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// ParsePublicKey parses a 40-character Z85 public key.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	if err := parseKey(k[:], s); err != nil {
		return PublicKey{}, fmt.Errorf("curve: bad public key: %w", err)
	}
	return k, nil
}

// ParseSecretKey parses a 40-character Z85 secret key.
func ParseSecretKey(s string) (SecretKey, error) {
	var k SecretKey
	if err := parseKey(k[:], s); err != nil {
		return SecretKey{}, errors.New("curve: bad secret key") // do not echo it
	}
	return k, nil
}

func parseKey(dst []byte, s string) error {
	if len(s) != z85.EncodedLen(KeySize) {
		return fmt.Errorf("want %d Z85 characters, have %d", z85.EncodedLen(KeySize), len(s))
	}
	b, err := z85.Decode(s)
	if err != nil {
		return err
	}
	copy(dst, b)
	return nil
}

// String returns a fixed placeholder, never the key.
func (SecretKey) String() string { return "curve.SecretKey(REDACTED)" }

// GoString returns a fixed placeholder, never the key.
func (k SecretKey) GoString() string { return k.String() }

// z85 returns the Z85 form of k, for key files only.
func (k SecretKey) z85() string {
	s, _ := z85.Encode(k[:])
	return s
}
