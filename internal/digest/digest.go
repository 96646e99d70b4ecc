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

	"github.com/zeebo/blake3"
)

// BLAKE3Version is the first protocol version whose transfers use BLAKE3.
const BLAKE3Version = 7

// SHA256 makes the digest of protocol versions 1 to 6 and of broadcasts.
func SHA256() hash.Hash { return sha256.New() }

// BLAKE3 makes the digest of protocol version 7 and later: BLAKE3 with its
// default 32-octet output, unkeyed.
func BLAKE3() hash.Hash { return blake3.New() }

// For returns the content digest of a session of protocol version v.
func For(v uint16) func() hash.Hash {
	if v >= BLAKE3Version {
		return BLAKE3
	}
	return SHA256
}
