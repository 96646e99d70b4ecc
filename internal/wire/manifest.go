package wire

import (
	"encoding/binary"
	"fmt"
)

// A broadcast's manifest (docs/PROTOCOL.md §14.2) lists its entries in
// order, each as a 4-octet length and the header frame of a FILE whose
// channel is 0 and whose fid is its position from 1. A regular file
// carries its SHA-256; nothing else carries a digest. The SHA-256 of the
// whole manifest is the broadcast's tree digest.

// AppendManifestEntry appends one entry to a manifest.
func AppendManifestEntry(dst []byte, f *File) []byte {
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = Encode(dst, f)
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	return dst
}

// DecodeManifest parses a manifest of count entries. It never panics,
// whatever the input; it rejects a manifest that breaks the rules above,
// or names a path twice.
func DecodeManifest(b []byte, count uint32) ([]*File, error) {
	if count > MaxManifestEntries || len(b) > MaxManifest {
		return nil, fmt.Errorf("%w: manifest of %d entries, %d octets", ErrInvalid, count, len(b))
	}
	// Each entry takes at least its length and a FILE header (52 octets):
	// check before allocating.
	if uint64(count)*56 > uint64(len(b)) {
		return nil, fmt.Errorf("manifest: %w", ErrTruncated)
	}
	out := make([]*File, 0, count)
	seen := make(map[string]struct{}, count)
	for i := uint32(0); i < count; i++ {
		if len(b) < 4 {
			return nil, fmt.Errorf("manifest entry %d: %w", i+1, ErrTruncated)
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, fmt.Errorf("manifest entry %d: %w", i+1, ErrTruncated)
		}
		m, err := Decode([][]byte{b[4 : 4+n]})
		if err != nil {
			return nil, fmt.Errorf("manifest entry %d: %w", i+1, err)
		}
		f, ok := m.(*File)
		if !ok {
			return nil, fmt.Errorf("%w: manifest entry %d is %s, not FILE", ErrInvalid, i+1, m.ID())
		}
		if err := manifestEntry(f, i+1); err != nil {
			return nil, err
		}
		if _, dup := seen[f.Path]; dup {
			return nil, fmt.Errorf("%w: manifest names %q twice", ErrInvalid, f.Path)
		}
		seen[f.Path] = struct{}{}
		out = append(out, f)
		b = b[4+n:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("manifest: %w", ErrTrailing)
	}
	return out, nil
}

func manifestEntry(f *File, fid uint32) error {
	switch {
	case f.Channel != 0 || f.FID != fid:
		return fmt.Errorf("%w: manifest entry %d has channel %d, fid %d", ErrInvalid, fid, f.Channel, f.FID)
	case f.Kind == KindFile && len(f.Digest) != 32:
		return fmt.Errorf("%w: manifest entry %d (a file) has no digest", ErrInvalid, fid)
	case f.Kind != KindFile && (len(f.Digest) != 0 || f.Size != 0):
		return fmt.Errorf("%w: manifest entry %d (kind %d) has a size or digest", ErrInvalid, fid, f.Kind)
	}
	return nil
}

// BitmapLen is the octets of a bitmap of n entries.
func BitmapLen(n int) int { return (n + 7) / 8 }

// BitmapBytes sums the sizes of the entries set in bitmap (regular files:
// every other entry has size 0).
func BitmapBytes(entries []*File, bitmap []byte) uint64 {
	var n uint64
	for i, e := range entries {
		if BitmapHas(bitmap, i) {
			n += e.Size
		}
	}
	return n
}

// BitmapHas reports whether bit i (entry i from 0) is set.
func BitmapHas(b []byte, i int) bool {
	return i/8 < len(b) && b[i/8]&(0x80>>(i%8)) != 0
}

// BitmapSet sets bit i; b must be long enough.
func BitmapSet(b []byte, i int) { b[i/8] |= 0x80 >> (i % 8) }

// Chunk lists (docs/PROTOCOL.md §14.12, version 5): a regular file of more
// than one chunk is cut in chunks of C octets (the last may be shorter),
// and the chunk index lists the SHA-256 of each, for every such file in
// manifest order. A file of at most C octets lists none: its one chunk's
// digest is the file's.
const (
	MinChunk      = 64 << 10
	MaxChunk      = 64 << 20
	MaxChunkIndex = 64 << 20 // octets: 2^21 chunks
	// BcastChunk is the chunk size zp's client uses.
	BcastChunk = 1 << 20
	// MaxChunkMap bounds a chunk map: a bit per chunk the index lists.
	MaxChunkMap = MaxChunkIndex / 32 / 8
)

// ValidChunk reports whether c is a chunk size the protocol allows: a
// power of two from MinChunk to MaxChunk.
func ValidChunk(c uint32) bool { return c >= MinChunk && c <= MaxChunk && c&(c-1) == 0 }

// ChunkCount is the chunks the index lists for a file of size octets: 0
// when it is one chunk.
func ChunkCount(size uint64, c uint32) uint64 {
	if size <= uint64(c) {
		return 0
	}
	return (size-1)/uint64(c) + 1
}

// DecodeChunkIndex splits a chunk index for entries into each entry's
// digests, by position: 32 octets per chunk, nil for an entry that lists
// none. It never panics; it rejects a chunk size the protocol does not
// allow, and an index that is not exactly as long as entries make it. The
// slices share b's octets.
func DecodeChunkIndex(b []byte, entries []*File, c uint32) ([][]byte, error) {
	if !ValidChunk(c) {
		return nil, fmt.Errorf("%w: chunk size %d", ErrInvalid, c)
	}
	if len(b) > MaxChunkIndex {
		return nil, fmt.Errorf("%w: chunk index of %d octets", ErrInvalid, len(b))
	}
	out := make([][]byte, len(entries))
	for i, e := range entries {
		if e.Kind != KindFile {
			continue
		}
		n := ChunkCount(e.Size, c)
		if n == 0 {
			continue
		}
		if n > uint64(len(b)/32) {
			return nil, fmt.Errorf("chunk index: %w at entry %d", ErrTruncated, i+1)
		}
		out[i], b = b[:n*32:n*32], b[n*32:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("chunk index: %w", ErrTrailing)
	}
	return out, nil
}

// A chunk map (docs/PROTOCOL.md §14.12) has a bitmap for every entry that
// lists chunks, in manifest order: ceil(n / 8) octets for n chunks, bit k
// (0x80 >> k%8 of octet k/8) for chunk k, the bits past n − 1 zero.

// ChunkMapLen is the octets of a chunk map for entries in chunks of c.
func ChunkMapLen(entries []*File, c uint32) int {
	var n uint64
	for _, e := range entries {
		if e.Kind == KindFile {
			k := ChunkCount(e.Size, c)
			if k > MaxChunkMap*8 {
				return -1 // more than an index may list: no map fits
			}
			n += (k + 7) / 8
			if n > MaxChunkMap {
				return -1
			}
		}
	}
	return int(n)
}

// SplitChunkMap splits a chunk map by entry position (nil for an entry
// that lists no chunks; the slices share b). It rejects a map that is not
// ChunkMapLen octets or sets a bit past a file's last chunk; c must be
// valid (ValidChunk).
func SplitChunkMap(b []byte, entries []*File, c uint32) ([][]byte, error) {
	if len(b) != ChunkMapLen(entries, c) {
		return nil, fmt.Errorf("%w: a chunk map of %d octets, not %d", ErrInvalid, len(b), ChunkMapLen(entries, c))
	}
	out := make([][]byte, len(entries))
	for i, e := range entries {
		if e.Kind != KindFile {
			continue
		}
		n := int(ChunkCount(e.Size, c))
		if n == 0 {
			continue
		}
		m := BitmapLen(n)
		if n%8 != 0 && b[m-1]&(0xFF>>(n%8)) != 0 {
			return nil, fmt.Errorf("%w: chunk map of entry %d sets a bit past its chunk %d", ErrInvalid, i+1, n-1)
		}
		out[i], b = b[:m:m], b[m:]
	}
	return out, nil
}

// SliceLen is the octets past from of a file of size octets that a
// content stream holds when its chunk map (in chunks of c) is in (nil: all
// of them).
func SliceLen(size uint64, in []byte, c, from uint64) uint64 {
	if in == nil {
		return size - min(from, size)
	}
	var n uint64
	for k := from / c; k*c < size; k++ {
		if BitmapHas(in, int(k)) {
			n += min((k+1)*c, size) - max(k*c, from)
		}
	}
	return n
}

// StreamBytes is the octets of the content stream of the files set in
// content (§14.6), which holds of each file that has a chunk map in slices
// (by entry position, in chunks of c) only the chunks it sets.
func StreamBytes(entries []*File, content []byte, slices [][]byte, c uint64) uint64 {
	var n uint64
	for i, e := range entries {
		if e.Kind != KindFile || !BitmapHas(content, i) {
			continue
		}
		var in []byte
		if i < len(slices) {
			in = slices[i]
		}
		n += SliceLen(e.Size, in, c, 0)
	}
	return n
}
