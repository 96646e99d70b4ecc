// Package digest chooses the content digest of a transfer (docs/PROTOCOL.md,
// sections 10 and 12): the hash of a FILE's digest with the checksum flag,
// of SEND's resume prefix and of COMMIT. Sessions of protocol version 7 and
// later use BLAKE3 (32 octets); older ones SHA-256. Broadcasts (section 14)
// keep SHA-256 in every version.
//
// Why BLAKE3: both ends of a copy hash every octet, and at SHA-256's 1.7 GB/s
// (SHA-NI) that was half of zpc's and half of zpd's CPU in a 1 GiB upload;
// BLAKE3 runs at 3.3 GB/s here on one core (bench/README.md). It is a
// cryptographic hash, as SHA-256 is: a file altered in transit or on disk
// still fails its COMMIT.
package digest

import (
	"crypto/sha256"
	"hash"
	"sync"

	"github.com/zeebo/blake3"
)

// BLAKE3Version is the first protocol version whose transfers use BLAKE3.
const BLAKE3Version = 7

// SHA256 makes the digest of protocol versions 1 to 6 and of broadcasts.
func SHA256() hash.Hash { return sha256.New() }

// BLAKE3 makes the digest of protocol version 7 and later: BLAKE3 with its
// default 32-octet output, unkeyed. The hasher may come from those given
// back by Release.
func BLAKE3() hash.Hash {
	h := blake3Pool.Get().(*blake3.Hasher)
	h.Reset()
	return h
}

// blake3Pool keeps hashers for reuse: a new one costs an allocation of
// 10.9 KB and 3.4 µs here, more than hashing a 4 KiB file (2.9 µs), and
// both ends of a copy make one per file (bench/README.md, ninth round).
var blake3Pool = sync.Pool{New: func() any { return blake3.New() }}

// Release gives back a hasher made by BLAKE3 for reuse (any other is left
// to the collector). The caller must not use h afterwards; digests taken
// with Sum before are the caller's own.
func Release(h hash.Hash) {
	if b, ok := h.(*blake3.Hasher); ok {
		blake3Pool.Put(b)
	}
}

// For returns the content digest of a session of protocol version v.
func For(v uint16) func() hash.Hash {
	if v >= BLAKE3Version {
		return BLAKE3
	}
	return SHA256
}
