package subscriber

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
)

// Chunk lists (docs/PROTOCOL.md §14.12): an agent that lacks a file of
// several chunks but holds an older version of it under the same name
// takes the chunks that version holds from it, and only the others from
// the content stream, as rsync takes the blocks its basis file holds.
// Chunks are matched at the old file's chunk boundaries: a change in
// place (a database, an image, a log that grew) keeps every other chunk;
// an insertion shifts what follows it, which then moves again.

// Basis is the older version of a file that the destination holds under
// the file's name, and which of the new content's chunks it holds.
type Basis struct {
	Name  string  // in the Root
	Chunk uint64  // the chunk size
	From  []int64 // per chunk of the new content: its offset in Name, or -1
	Held  uint64  // octets of the new content it holds
}

// basis reads the file root holds at name once: whether it is e's content
// (its size and SHA-256), and, when it is not, which of e's chunks (list)
// it holds, hashed in chunks of c octets at every chunk boundary: nil when
// none (or when it cannot be read).
func basis(root *chunkstore.Root, name string, e *wire.File, list []byte, c uint64) (same bool, b *Basis) {
	f, err := root.OpenFile(name)
	if err != nil {
		return false, nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, nil
	}
	var whole hash.Hash
	if uint64(st.Size()) == e.Size {
		whole = sha256.New()
	}
	at := make(map[[32]byte]int64)
	// A file that cannot be read to its end: what was read counts.
	read, _ := chunkstore.HashChunks(f, int(c), -1, whole, func(off int64, d [32]byte) {
		if _, dup := at[d]; !dup {
			at[d] = off
		}
	})
	if whole != nil && uint64(read) == e.Size && bytes.Equal(whole.Sum(nil), e.Digest) {
		return true, nil
	}
	b = &Basis{Name: name, Chunk: c, From: make([]int64, len(list)/32)}
	for k := range b.From {
		from, ok := at[[32]byte(list[k*32:k*32+32])]
		if !ok {
			b.From[k] = -1
			continue
		}
		b.From[k] = from
		b.Held += min(c, e.Size-uint64(k)*c)
	}
	if b.Held == 0 {
		return false, nil
	}
	return false, b
}

// patch hands the receiver e's content from the stream, taking the
// chunks b holds from b's file instead: their octets in the stream are
// skipped, not read. Then COMMIT, whose digest covers the whole file.
// have is what the receiver holds already (FILE_OK). It runs on a
// goroutine that runs the receiver's Thread first, so the basis is read
// as the user. A basis that cannot be opened leaves the whole file to the
// stream; one that fails later fails that entry only (FILE_DONE 409), and
// one that changed since Needs hashed it fails at COMMIT (its digest).
func (a *applier) patch(ctx context.Context, e *wire.File, r io.Reader, have uint64, b *Basis) error {
	errc := make(chan error, 1)
	go func() {
		if t := a.cfg.Receiver.Thread; t != nil {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			t()
		}
		f, err := a.cfg.Receiver.Root.OpenFile(b.Name)
		if err != nil {
			errc <- a.content(ctx, e, r, have)
			return
		}
		defer f.Close()
		errc <- a.patchFrom(ctx, e, r, have, b, f)
	}()
	return <-errc
}

func (a *applier) patchFrom(ctx context.Context, e *wire.File, r io.Reader, have uint64, b *Basis, f *os.File) error {
	off := min(have, e.Size)
	if err := skip(r, e, off); err != nil {
		return err
	}
	for off < e.Size {
		k := off / b.Chunk
		end := min((k+1)*b.Chunk, e.Size)
		if k >= uint64(len(b.From)) || b.From[k] < 0 {
			for end < e.Size && end/b.Chunk < uint64(len(b.From)) && b.From[end/b.Chunk] < 0 {
				end = min(end+b.Chunk, e.Size)
			}
			if ex, ok := r.(Expecter); ok {
				ex.Expect(end - off)
			}
			if err := a.run(ctx, e, r, off, end, streamErr); err != nil {
				return err
			}
			off = end
			continue
		}
		if err := skip(r, e, end-off); err != nil {
			return err
		}
		var localErr error
		from := io.NewSectionReader(f, b.From[k]+int64(off-k*b.Chunk), int64(end-off))
		err := a.run(ctx, e, from, off, end, func(_ *wire.File, err error) error {
			localErr = err
			return errLocal
		})
		if localErr != nil {
			// The rest of e's content in the stream is passed over.
			if err := skip(r, e, e.Size-end); err != nil {
				return err
			}
			if !a.recv.Deliver(&wire.FileDone{Channel: 1, FID: e.FID, Code: uint16(wire.CodeConflict), Reason: fmt.Sprintf("reading %s: %v", b.Name, localErr)}) {
				return errors.New("bug: the receiver's inbox is full")
			}
			a.finish(e.FID)
			return nil
		}
		if err != nil {
			return err
		}
		off = end
	}
	return a.commit(e)
}
