package subscriber

import (
	"bytes"
	"context"
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

// basis reads the file root holds at name once, in chunks of c octets
// hashed at every chunk boundary: whether it is e's content (its size, and
// every chunk that of list, e's chunk digests), and, when it is not, which
// of e's chunks it holds: nil when none (or when it cannot be read).
//
// A file whose chunks are all the index's is taken as the file whose
// SHA-256 the manifest has: the client hashed both in one read of the same
// octets (docs/PROTOCOL.md §14.12). So a held file costs one SHA-256 pass,
// as without chunk lists.
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
	at := make(map[[32]byte]int64)
	same = uint64(st.Size()) == e.Size
	// A file that cannot be read to its end: what was read counts.
	read, _ := chunkstore.HashChunks(f, int(c), -1, nil, func(off int64, d [32]byte) {
		if _, dup := at[d]; !dup {
			at[d] = off
		}
		k := uint64(off) / c
		if k >= uint64(len(list)/32) || !bytes.Equal(d[:], list[k*32:k*32+32]) {
			same = false
		}
	})
	if same && uint64(read) == e.Size {
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

// slices is the chunk map of the stream's part of entry i (ApplyConfig),
// or nil when the stream holds the whole file.
func (a *applier) slices(i int) []byte {
	if i < len(a.cfg.Slices) {
		return a.cfg.Slices[i]
	}
	return nil
}

// streamLen is the octets of entry i's content the stream holds, when its
// bit is set in the content bitmap.
func (a *applier) streamLen(i int) uint64 {
	e := a.cfg.Entries[i]
	return wire.SliceLen(e.Size, a.slices(i), a.cfg.Chunk, 0)
}

// patch hands the receiver e's content chunk by chunk, each from where it
// is: a chunk the basis b holds from b's file (its octets in the stream,
// if there, passed over unread), any other from the stream, which holds
// the chunks set in its chunk map in (nil: all of them). Then COMMIT, whose
// digest covers the whole file. have is what the receiver holds already
// (FILE_OK). It runs on a goroutine that runs the receiver's Thread first,
// so the basis is read as the user. A basis that cannot be opened is none;
// a chunk neither held nor in the stream, or a basis that fails later,
// fails that entry only (FILE_DONE 409), and a basis that changed since
// Needs hashed it fails at COMMIT (its digest).
func (a *applier) patch(ctx context.Context, e *wire.File, r io.Reader, have uint64, b *Basis, in []byte) error {
	c := a.cfg.Chunk
	if b != nil {
		c = b.Chunk
	}
	errc := make(chan error, 1)
	go func() {
		if t := a.cfg.Receiver.Thread; t != nil && b != nil {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			t()
		}
		var f *os.File
		if b != nil {
			var err error
			if f, err = a.cfg.Receiver.Root.OpenFile(b.Name); err != nil {
				b = nil
			} else {
				defer f.Close()
			}
		}
		errc <- a.patchFrom(ctx, e, r, have, b, f, in, c)
	}()
	return <-errc
}

func (a *applier) patchFrom(ctx context.Context, e *wire.File, r io.Reader, have uint64, b *Basis, f *os.File, in []byte, c uint64) error {
	held := func(k uint64) bool { return b != nil && k < uint64(len(b.From)) && b.From[k] >= 0 }
	inStream := func(k uint64) bool { return in == nil || wire.BitmapHas(in, int(k)) }
	// fail passes over the rest of e's content in the stream, from off,
	// and fails e.
	fail := func(off uint64, reason string) error {
		if err := skip(r, e, wire.SliceLen(e.Size, in, c, off)); err != nil {
			return err
		}
		if !a.recv.Deliver(&wire.FileDone{Channel: 1, FID: e.FID, Code: uint16(wire.CodeConflict), Reason: reason}) {
			return errors.New("bug: the receiver's inbox is full")
		}
		a.finish(e.FID)
		return nil
	}
	off := min(have, e.Size)
	if err := skip(r, e, wire.SliceLen(e.Size, in, c, 0)-wire.SliceLen(e.Size, in, c, off)); err != nil {
		return err
	}
	for off < e.Size {
		k := off / c
		end := min((k+1)*c, e.Size)
		switch {
		case held(k):
			if inStream(k) {
				if err := skip(r, e, end-off); err != nil {
					return err
				}
			}
			var localErr error
			from := io.NewSectionReader(f, b.From[k]+int64(off-k*c), int64(end-off))
			err := a.run(ctx, e, from, off, end, func(_ *wire.File, err error) error {
				localErr = err
				return errLocal
			})
			if localErr != nil {
				return fail(end, fmt.Sprintf("reading %s: %v", b.Name, localErr))
			}
			if err != nil {
				return err
			}
		case inStream(k):
			for end < e.Size && !held(end/c) && inStream(end/c) {
				end = min(end+c, e.Size)
			}
			if ex, ok := r.(Expecter); ok {
				ex.Expect(end - off)
			}
			if err := a.run(ctx, e, r, off, end, streamErr); err != nil {
				return err
			}
		default:
			return fail(off, errNotInBroadcast.Error())
		}
		off = end
	}
	return a.commit(e)
}

// ChunkMap is the chunk map of what n needs (BCAST_NEED_CHUNKS, docs/
// PROTOCOL.md §14.12) for entries in chunks of c: every chunk of a file
// it needs that its basis does not hold.
func (n Needed) ChunkMap(entries []*wire.File, c uint32) []byte {
	out := make([]byte, 0, max(wire.ChunkMapLen(entries, c), 0))
	for i, e := range entries {
		if e.Kind != wire.KindFile {
			continue
		}
		k := int(wire.ChunkCount(e.Size, c))
		if k == 0 {
			continue
		}
		m := make([]byte, wire.BitmapLen(k))
		if wire.BitmapHas(n.Need, i) {
			b := n.Bases[e.FID]
			for j := range k {
				if b == nil || b.From[j] < 0 {
					wire.BitmapSet(m, j)
				}
			}
		}
		out = append(out, m...)
	}
	return out
}
