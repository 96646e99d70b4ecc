package publisher

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
)

// Manifest is a broadcast's list of entries (docs/PROTOCOL.md §14.2),
// built from local sources: what every agent writes, with the SHA-256 of
// each file, and the tree digest (the SHA-256 of the encoded manifest).
type Manifest struct {
	Entries []*wire.File
	Paths   []string // each entry's local path
	Encoded []byte
	Digest  [32]byte
	Bytes   uint64 // content octets of the regular files
	// Chunks is the chunk index (docs/PROTOCOL.md §14.12): the SHA-256
	// of every wire.BcastChunk octets of each file of more than one
	// chunk, in manifest order; empty when no file is that large.
	Chunks []byte
}

// BuildManifest walks sources as Walk does and reads every regular file
// once for its SHA-256. warn reports what Walk skips and files that
// cannot be read (which are left out).
func BuildManifest(sources []string, recursive, single bool, warn func(msg string, failed bool)) (*Manifest, error) {
	m := &Manifest{}
	err := Walk(sources, recursive, single, warn, func(e Entry) error {
		if len(m.Entries) >= wire.MaxManifestEntries {
			return fmt.Errorf("more than %d entries: broadcast the tree in parts", wire.MaxManifestEntries)
		}
		f, err := fileMessage(0, uint32(len(m.Entries)+1), e)
		if err != nil {
			warn(fmt.Sprintf("%s: %v", e.Path, unwrap(err)), true)
			return nil
		}
		if f.Kind == wire.KindFile {
			var chunks []byte
			if f.Digest, chunks, err = fileDigests(e.Path, f.Size, wire.BcastChunk); err != nil {
				warn(fmt.Sprintf("%s: %v", e.Path, unwrap(err)), true)
				return nil
			}
			m.Bytes += f.Size
			m.Chunks = append(m.Chunks, chunks...)
			if len(m.Chunks) > wire.MaxChunkIndex {
				return fmt.Errorf("the chunk index exceeds %d MiB: broadcast the tree in parts", wire.MaxChunkIndex>>20)
			}
		}
		m.Entries = append(m.Entries, f)
		m.Paths = append(m.Paths, e.Path)
		m.Encoded = wire.AppendManifestEntry(m.Encoded, f)
		if len(m.Encoded) > wire.MaxManifest {
			return fmt.Errorf("the manifest exceeds %d MiB: broadcast the tree in parts", wire.MaxManifest>>20)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.Digest = sha256.Sum256(m.Encoded)
	return m, nil
}

// fileDigests reads the file at path once for its SHA-256 and, when its
// size (as the walk saw it) is more than one chunk, the SHA-256 of each
// chunk of its first size octets. A file that shrank since has its
// missing octets hashed as zeros in the chunks, as the content stream
// sends them; its own digest is of what it holds (the agents refuse it).
func fileDigests(path string, size uint64, chunk uint32) (digest, chunks []byte, err error) {
	n := wire.ChunkCount(size, chunk)
	if n == 0 {
		digest, err = fileDigest(path, sha256.New)
		return digest, nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	h := sha256.New()
	chunks = make([]byte, 0, n*32)
	if _, err := chunkstore.HashChunks(f, int(chunk), int64(size), h, func(_ int64, d [32]byte) {
		chunks = append(chunks, d[:]...)
	}); err != nil {
		return nil, nil, err
	}
	if _, err := io.Copy(h, f); err != nil { // it grew
		return nil, nil, err
	}
	return h.Sum(nil), chunks, nil
}

func unwrap(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// Content returns the content stream for the entries set in bitmap, in
// manifest order: each file's Size octets as the manifest has them, or,
// for a file with a chunk map in slices (by entry position, chunks of
// wire.BcastChunk), the chunks it sets. A file that changed since (its
// octets no longer match its digest or a sent chunk's, or it shrank) is
// reported to changed; its octets are sent as they are (the agents then
// refuse that file), or padded with zeros to its size, so that the stream
// stays aligned with the manifest.
func (m *Manifest) Content(bitmap []byte, slices [][]byte, changed func(path string)) io.Reader {
	c := &contentReader{m: m, bitmap: bitmap, slices: slices, changed: changed}
	if slices != nil {
		lists, err := wire.DecodeChunkIndex(m.Chunks, m.Entries, wire.BcastChunk)
		if err != nil {
			panic("bug: the manifest's own chunk index does not decode: " + err.Error())
		}
		c.lists = lists
	}
	return c
}

type contentReader struct {
	m       *Manifest
	bitmap  []byte
	slices  [][]byte // chunk maps by entry, or nil
	lists   [][]byte // the chunk index by entry, with slices
	next    int      // the next entry to consider
	cur     *os.File
	curIdx  int
	left    uint64
	hash    hash.Hash // of the current file, or of its current chunk when sliced
	changed func(string)
	failed  bool // the current file could not be read in full, or a chunk did not match
	// A sliced file (a chunk map in slices) is sent chunk by chunk:
	// ranges are the chunks still to send, chunk the one being sent.
	sliced  bool
	inChunk bool
	ranges  []uint64
	chunk   uint64
}

func (c *contentReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.sliced && c.nextChunk() {
			break
		}
		if c.cur != nil || c.failed || c.sliced {
			c.endFile()
		}
		if !c.open() {
			return 0, io.EOF
		}
	}
	if uint64(len(p)) > c.left {
		p = p[:c.left]
	}
	var n int
	if c.cur != nil {
		var err error
		n, err = io.ReadFull(c.cur, p)
		if err != nil {
			// It shrank (or cannot be read): pad with zeros.
			c.cur.Close()
			c.cur = nil
			c.failed = true
		}
	}
	if c.cur == nil {
		clear(p[n:])
		n = len(p)
	}
	c.hash.Write(p[:n])
	c.left -= uint64(n)
	return n, nil
}

// open starts the next entry in the stream; false at the end.
func (c *contentReader) open() bool {
	for c.next < len(c.m.Entries) {
		i := c.next
		c.next++
		e := c.m.Entries[i]
		if e.Kind != wire.KindFile || !wire.BitmapHas(c.bitmap, i) {
			continue
		}
		c.curIdx, c.left, c.failed = i, e.Size, false
		c.hash = sha256.New()
		f, err := os.Open(c.m.Paths[c.curIdx])
		if err != nil {
			c.failed = true
		} else {
			c.cur = f
		}
		if c.curIdx < len(c.slices) && c.slices[c.curIdx] != nil {
			c.sliced, c.inChunk, c.ranges, c.left = true, false, c.ranges[:0], 0
			for k := range wire.ChunkCount(e.Size, wire.BcastChunk) {
				if wire.BitmapHas(c.slices[c.curIdx], int(k)) {
					c.ranges = append(c.ranges, k)
				}
			}
			if c.nextChunk() {
				return true
			}
			c.endFile() // none of its chunks is in the stream
			continue
		}
		if e.Size == 0 {
			c.endFile()
			continue
		}
		return true
	}
	return false
}

// nextChunk checks the chunk of a sliced file just sent against the
// index, and starts the next one: false when none is left.
func (c *contentReader) nextChunk() bool {
	if c.inChunk {
		c.inChunk = false
		k := c.chunk * 32
		if !bytes.Equal(c.hash.Sum(nil), c.lists[c.curIdx][k:k+32]) {
			c.failed = true
		}
	}
	if len(c.ranges) == 0 {
		return false
	}
	c.chunk, c.ranges = c.ranges[0], c.ranges[1:]
	off := c.chunk * wire.BcastChunk
	c.left = min(wire.BcastChunk, c.m.Entries[c.curIdx].Size-off)
	c.hash.Reset()
	c.inChunk = true
	if c.cur != nil {
		if _, err := c.cur.Seek(int64(off), io.SeekStart); err != nil {
			c.cur.Close()
			c.cur = nil
			c.failed = true
		}
	}
	return true
}

// endFile closes the current file and reports it if it changed.
func (c *contentReader) endFile() {
	if c.cur != nil {
		c.cur.Close()
		c.cur = nil
	}
	e := c.m.Entries[c.curIdx]
	if (c.failed || !c.sliced && !bytes.Equal(c.hash.Sum(nil), e.Digest)) && c.changed != nil {
		c.changed(c.m.Paths[c.curIdx])
	}
	c.failed, c.sliced = false, false
}
