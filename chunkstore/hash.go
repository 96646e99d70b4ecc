package chunkstore

import (
	"crypto/sha256"
	"hash"
	"io"
)

// HashChunks reads r in chunks of c octets and gives each the SHA-256 of
// each chunk, with its offset, in order; it also writes every octet read
// to whole, if set. It reads to r's end, or, when size >= 0, exactly size
// octets, hashing the chunks past an early end as zeros (what a sender
// pads a file that shrank with). The chunks are hashed on a goroutine of
// their own while the caller's goroutine reads and feeds whole: the two
// hashes take about the time of one. each runs on that goroutine, one call
// at a time. It returns the octets read from r; a read error ends it.
func HashChunks(r io.Reader, c int, size int64, whole hash.Hash, each func(off int64, d [32]byte)) (int64, error) {
	type block struct {
		b   []byte
		off int64
	}
	work, free, done := make(chan block, 2), make(chan []byte, 3), make(chan struct{})
	for range cap(free) {
		free <- make([]byte, c)
	}
	go func() {
		defer close(done)
		for w := range work {
			each(w.off, sha256.Sum256(w.b))
			free <- w.b[:cap(w.b)]
		}
	}()
	defer func() {
		close(work)
		<-done
	}()
	var read, off int64
	eof := false
	for size < 0 || off < size {
		b := <-free
		if size >= 0 {
			b = b[:min(int64(c), size-off)]
		}
		n := 0
		if !eof {
			var err error
			n, err = io.ReadFull(r, b)
			switch {
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				eof = true
			case err != nil:
				free <- b
				return read, err
			}
		}
		read += int64(n)
		if whole != nil {
			whole.Write(b[:n])
		}
		if size < 0 {
			if n == 0 {
				free <- b
				break
			}
			b = b[:n]
		} else {
			clear(b[n:])
		}
		work <- block{b, off}
		off += int64(len(b))
		if size < 0 && eof {
			break
		}
	}
	return read, nil
}
