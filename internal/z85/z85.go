// Package z85 implements the Z85 binary-to-text encoding of ZeroMQ RFC 32
// (https://rfc.zeromq.org/spec/32/), used to print CURVE keys.
//
// Z85 encodes every 4 octets as 5 printable characters. Unlike Ascii85 it has
// no padding rules: the binary length must be a multiple of 4 and the text
// length a multiple of 5.
package z85

import (
	"errors"
	"fmt"
)

// alphabet maps a base-85 digit to its character (RFC 32).
const alphabet = "0123456789" +
	"abcdefghij" +
	"klmnopqrst" +
	"uvwxyzABCD" +
	"EFGHIJKLMN" +
	"OPQRSTUVWX" +
	"YZ.-:+=^!/" +
	"*?&<>()[]{" +
	"}@%$#"

// invalid marks a byte that is not a Z85 character in decodeMap.
const invalid = 0xff

var decodeMap = func() (m [256]byte) {
	for i := range m {
		m[i] = invalid
	}
	for i := 0; i < len(alphabet); i++ {
		m[alphabet[i]] = byte(i)
	}
	return m
}()

// ErrLength is returned for input whose length is not a multiple of 4
// (Encode) or 5 (Decode).
var ErrLength = errors.New("z85: bad input length")

// EncodedLen returns the length of the Z85 encoding of n octets (n must be a
// multiple of 4).
func EncodedLen(n int) int { return n / 4 * 5 }

// DecodedLen returns the number of octets that n Z85 characters decode to (n
// must be a multiple of 5).
func DecodedLen(n int) int { return n / 5 * 4 }

// Encode returns the Z85 encoding of src. len(src) must be a multiple of 4.
func Encode(src []byte) (string, error) {
	if len(src)%4 != 0 {
		return "", fmt.Errorf("%w: %d octets is not a multiple of 4", ErrLength, len(src))
	}
	dst := make([]byte, EncodedLen(len(src)))
	for i, j := 0, 0; i < len(src); i, j = i+4, j+5 {
		v := uint32(src[i])<<24 | uint32(src[i+1])<<16 | uint32(src[i+2])<<8 | uint32(src[i+3])
		for k := 4; k >= 0; k-- {
			dst[j+k] = alphabet[v%85]
			v /= 85
		}
	}
	return string(dst), nil
}

// Decode returns the octets encoded by the Z85 string s. len(s) must be a
// multiple of 5; a character outside the Z85 alphabet, or a group of five
// characters whose value does not fit in 32 bits, is an error.
func Decode(s string) ([]byte, error) {
	if len(s)%5 != 0 {
		return nil, fmt.Errorf("%w: %d characters is not a multiple of 5", ErrLength, len(s))
	}
	dst := make([]byte, DecodedLen(len(s)))
	for i, j := 0, 0; i < len(s); i, j = i+5, j+4 {
		var v uint64
		for k := 0; k < 5; k++ {
			d := decodeMap[s[i+k]]
			if d == invalid {
				return nil, fmt.Errorf("z85: invalid character %q at offset %d", s[i+k], i+k)
			}
			v = v*85 + uint64(d)
		}
		if v > 0xffffffff {
			return nil, fmt.Errorf("z85: group at offset %d overflows 32 bits", i)
		}
		dst[j] = byte(v >> 24)
		dst[j+1] = byte(v >> 16)
		dst[j+2] = byte(v >> 8)
		dst[j+3] = byte(v)
	}
	return dst, nil
}
