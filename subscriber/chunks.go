package subscriber

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
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

// Bases finds the bases of the files set in need that list chunks (lists,
// from wire.DecodeChunkIndex, by entry position): the regular file root
// holds under each name is read once, its chunks hashed at every chunk
// boundary and matched against the list. A file with no chunk in common
// is no basis. It reads on a goroutine that runs thread first (the user's
// file-system identity), and returns the bases by fid and the octets they
// hold. A name that cannot be read is no basis: its file comes whole.
func Bases(ctx context.Context, root *chunkstore.Root, asName string, entries []*wire.File, need []byte, lists [][]byte, chunk uint32, thread func()) (bases map[uint32]*Basis, held uint64, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if thread != nil {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			thread()
		}
		buf := make([]byte, chunk)
		for i, e := range entries {
			if ctx.Err() != nil {
				err = ctx.Err()
				return
			}
			if i >= len(lists) || len(lists[i]) == 0 || !wire.BitmapHas(need, i) || e.Kind != wire.KindFile {
				continue
			}
			name, cerr := entryName(e.Path, asName)
			if cerr != nil {
				continue
			}
			b := basis(root, name, e, lists[i], buf)
			if b == nil {
				continue
			}
			if bases == nil {
				bases = make(map[uint32]*Basis)
			}
			bases[e.FID] = b
			held += b.Held
		}
	}()
	<-done
	return bases, held, err
}

// basis hashes the file root holds at name in chunks of len(buf) and
// matches them against list, e's chunk digests: nil when none matches.
func basis(root *chunkstore.Root, name string, e *wire.File, list []byte, buf []byte) *Basis {
	f, err := root.OpenFile(name)
	if err != nil {
		return nil
	}
	defer f.Close()
	c := uint64(len(buf))
	at := make(map[[32]byte]int64)
	for off := int64(0); ; off += int64(c) {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			d := sha256.Sum256(buf[:n])
			if _, dup := at[d]; !dup {
				at[d] = off
			}
		}
		if err != nil { // the end, or a file that cannot be read: what was read counts
			break
		}
	}
	b := &Basis{Name: name, Chunk: c, From: make([]int64, len(list)/32)}
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
		return nil
	}
	return b
}

// patch hands the receiver e's content from the stream, taking the
// chunks b holds from b's file instead: their octets in the stream are
// skipped, not read. Then COMMIT, whose digest covers the whole file.
// have is what the receiver holds already (FILE_OK). It runs on a
// goroutine that runs the receiver's Thread first, so the basis is read
// as the user. A basis that cannot be opened leaves the whole file to the
// stream; one that fails later fails that entry only (FILE_DONE 409), and
// one that changed since Bases hashed it fails at COMMIT (its digest).
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
