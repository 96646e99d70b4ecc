package subscriber

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// The agent's side of a broadcast (docs/PROTOCOL.md §14): a manifest of
// entries, and one stream with the content of the files some agent lacks,
// in manifest order. Needs says which files this agent lacks; Apply writes
// the manifest's entries through a Receiver, exactly as an upload does
// (temporary names, digest checked against the manifest, fdatasync,
// atomic rename, nothing outside the root), playing the sender's part
// itself with the content stream as its source.

// Needed is what Needs found.
type Needed struct {
	// Need is the bitmap of the regular files the destination lacks.
	Need []byte
	// Have counts the octets of the files it holds, of those it copies
	// (Copies) and of the chunks bases hold (Held).
	Have uint64
	// Copies maps the fid of a file the destination lacks whose SHA-256
	// is that of another entry it holds (the tree holds the same content
	// twice) to that entry's name: it is copied from there when applied
	// (ApplyConfig), and not needed.
	Copies map[uint32]string
	// Bases are the needed files whose older version the destination
	// holds, with some of the new content's chunks, by fid.
	Bases map[uint32]*Basis
	Held  uint64
}

// Index is a broadcast's chunk index (docs/PROTOCOL.md §14.12): each
// entry's chunk digests by position (wire.DecodeChunkIndex), and the chunk
// size.
type Index struct {
	Lists [][]byte
	Chunk uint32
}

// Needs says which of the manifest's regular files root does not hold
// with the manifest's size and SHA-256. asName is the name the entry ""
// becomes in root (a single file), or "". thread, if set, runs first on
// the goroutine that reads files (the user's file-system identity). Names
// the receiver would refuse are not needed: their entries fail when
// applied. With idx, a file that lists chunks is read once for both its
// SHA-256 and its chunks: if it is not the manifest's, it is the file's
// basis when some of its chunks are the new content's (Basis).
func Needs(ctx context.Context, root *chunkstore.Root, asName string, entries []*wire.File, idx *Index, thread func()) (n Needed, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if thread != nil {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			thread()
		}
		n.Need = make([]byte, wire.BitmapLen(len(entries)))
		held := make(map[string]string) // SHA-256 → a name root holds it at
		var lacking []int
		bases := make(map[int]*Basis)
		for i, e := range entries {
			if ctx.Err() != nil {
				err = ctx.Err()
				return
			}
			if e.Kind != wire.KindFile {
				continue
			}
			name, cerr := entryName(e.Path, asName)
			if cerr != nil {
				continue
			}
			var same bool
			if idx != nil && i < len(idx.Lists) && len(idx.Lists[i]) > 0 {
				var b *Basis
				if same, b = basis(root, name, e, idx.Lists[i], uint64(idx.Chunk)); b != nil {
					bases[i] = b
				}
			} else {
				same = root.SameDigest(name, e.Size, e.Digest, digest.SHA256) // a manifest's digests are SHA-256 (14.4)
			}
			if same {
				n.Have += e.Size
				if e.Size > 0 {
					held[string(e.Digest)] = name
				}
				continue
			}
			lacking = append(lacking, i)
		}
		for _, i := range lacking {
			e := entries[i]
			if from, ok := held[string(e.Digest)]; ok {
				if n.Copies == nil {
					n.Copies = make(map[uint32]string)
				}
				n.Copies[e.FID] = from
				n.Have += e.Size
				continue
			}
			wire.BitmapSet(n.Need, i)
			if b := bases[i]; b != nil {
				if n.Bases == nil {
					n.Bases = make(map[uint32]*Basis)
				}
				n.Bases[e.FID] = b
				n.Held += b.Held
			}
		}
		n.Have += n.Held
	}()
	<-done
	return n, err
}

// entryName maps an entry's path to its name in the root, as the Receiver
// does.
func entryName(path, asName string) (string, error) {
	name, err := chunkstore.CleanName(path)
	if err != nil {
		return "", err
	}
	if asName != "" {
		if name != "" {
			return "", fmt.Errorf("%w: %q for a single-file target", chunkstore.ErrUnsafePath, path)
		}
		return asName, nil
	}
	return name, nil
}

// ApplyConfig configures Apply. Receiver is the configuration of the
// Receiver that writes the entries; Apply sets its Channel, Send, Window
// and the checksum flag itself.
type ApplyConfig struct {
	Receiver ReceiverConfig
	Entries  []*wire.File
	// Content has a bit set for every entry whose content the stream
	// holds (wire.BitmapHas), in manifest order.
	Content []byte
	// Failure, if set, reports an entry that failed.
	Failure func(path string, err error)
	// Copies are the entries (by fid) written from a file the
	// destination holds (Needs), not from the stream. They are read on a
	// goroutine that runs Receiver.Thread first (the user's identity).
	Copies map[uint32]string
	// Bases are the entries (by fid) whose older version the destination
	// holds (Needed.Bases): the chunks it holds are read from it, read as
	// Copies are, and passed over in the stream.
	Bases map[uint32]*Basis
	// Slices, when set, say which chunks of Chunk octets the stream holds
	// of each file that lists chunks, by entry position (BCAST_GO_CHUNKS,
	// wire.SplitChunkMap): only those, in order. Without, whole files.
	Slices [][]byte
	Chunk  uint64
}

// Skipper is a content stream that can pass over octets without them
// being read: Apply skips the content of entries it does not write, so
// that the stream's source need not fetch or decrypt it.
type Skipper interface {
	Skip(n uint64)
}

// Expecter is a content stream that Apply tells what it will read: it
// calls Expect(n) before it reads an entry's n octets, so that the
// stream's source may fetch them ahead (and only them).
type Expecter interface {
	Expect(n uint64)
}

// ApplyStats counts what Apply did.
type ApplyStats struct {
	RecvStats
	Discarded uint64 // content octets for entries this agent did not need
}

// errNotInBroadcast fails an entry the receiver asked content for that the
// stream does not hold (the file changed since Needs looked at it).
var errNotInBroadcast = errors.New("its content is not in the broadcast (the file here changed meanwhile): broadcast again")

// applier plays the sender's part for Apply.
type applier struct {
	cfg    ApplyConfig
	recv   *Receiver
	inbox  chan wire.Message // the receiver's answers
	credit *credit.Sender
	slots  chan struct{} // one per entry announced and not finished

	mu       sync.Mutex
	answers  map[uint32]*wire.FileOK // FILE_OK send, by fid, until its content is taken
	answered []byte                  // bitmap by fid-1: FILE_OK or FILE_DONE came
	finished []byte                  // bitmap by fid-1: the entry's slot is free
	changed  chan struct{}           // closed and replaced when an entry is answered
}

// Apply writes entries into cfg.Receiver.Root, taking from content the
// octets of the entries set in cfg.Content, in order, and skipping those
// of entries it does not write when content is a Skipper. It returns once the
// receiver has answered the end of the transfer; entries that failed are
// in the stats (and reported to cfg.Failure), the error is for the whole.
func Apply(ctx context.Context, cfg ApplyConfig, content io.Reader) (ApplyStats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const window = 16 << 20
	a := &applier{
		cfg:      cfg,
		inbox:    make(chan wire.Message, queueLen),
		credit:   credit.NewSender(window),
		slots:    make(chan struct{}, publisher.MaxEntries),
		answers:  make(map[uint32]*wire.FileOK),
		answered: make([]byte, wire.BitmapLen(len(cfg.Entries))),
		finished: make([]byte, wire.BitmapLen(len(cfg.Entries))),
		changed:  make(chan struct{}),
	}
	rc := cfg.Receiver
	rc.Channel, rc.Window = 1, window
	rc.Flags |= wire.XferChecksum
	rc.Send = func(m wire.Message) error {
		select {
		case a.inbox <- m:
			return nil
		default:
			return errors.New("bug: the applier's inbox is full")
		}
	}
	onFile := rc.OnFile
	rc.OnFile = func(name string, kind uint8, err error, skipped bool) {
		if err != nil && cfg.Failure != nil {
			cfg.Failure(name, err)
		}
		if onFile != nil {
			onFile(name, kind, err, skipped)
		}
	}
	a.recv = NewReceiver(rc)
	recvErr := make(chan error, 1)
	go func() { recvErr <- a.recv.Run(ctx) }()

	var discarded uint64
	sendErr := make(chan error, 1)
	go func() {
		var err error
		discarded, err = a.send(ctx, content)
		sendErr <- err
	}()
	routeErr := make(chan error, 1)
	go func() { routeErr <- a.route(ctx) }()

	stats := func() ApplyStats { return ApplyStats{RecvStats: a.recv.Stats(), Discarded: discarded} }
	select {
	case err := <-sendErr:
		var sf *streamFailure
		if errors.As(err, &sf) {
			// The receiver ends the transfer with what arrived whole.
			rerr := <-recvErr
			cancel()
			<-routeErr
			if rerr != nil {
				return stats(), rerr
			}
			return stats(), sf.err
		}
		if err != nil {
			cancel()
			<-recvErr
			return stats(), err
		}
	case err := <-recvErr:
		if err == nil {
			// The receiver answered END: the sender, which sent it, is
			// ending too (both were ready; select took this one).
			t := time.NewTimer(5 * time.Second)
			select {
			case serr := <-sendErr:
				t.Stop()
				cancel()
				<-routeErr
				var sf *streamFailure
				if errors.As(serr, &sf) {
					serr = sf.err
				}
				return stats(), serr
			case <-t.C:
			}
			err = errors.New("bug: the receiver ended before the sender")
		}
		cancel()
		<-sendErr
		return stats(), err
	}
	err := <-recvErr // it returns once it answered END
	cancel()
	<-routeErr
	return stats(), err
}

// route takes the receiver's answers: FILE_OK, FILE_DONE and ACK.
func (a *applier) route(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-a.inbox:
			switch m := m.(type) {
			case *wire.FileOK:
				if m.Action == wire.ActionSend {
					a.mu.Lock()
					a.answers[m.FID] = m
					a.mu.Unlock()
				} else {
					a.finish(m.FID)
				}
				a.answer(m.FID)
			case *wire.FileDone:
				if m.FID != 0 {
					a.finish(m.FID)
					a.answer(m.FID)
				}
			case *wire.Ack:
				if err := a.credit.Ack(m.Offset, m.Limit); err != nil {
					return err
				}
			case *wire.End:
				a.credit.Close(nil)
				return nil
			case *wire.Error:
				a.credit.Close(m)
				return m
			}
		}
	}
}

// known reports whether fid is an entry of the manifest (fids are
// positions from 1).
func (a *applier) known(fid uint32) bool { return fid >= 1 && int(fid) <= len(a.cfg.Entries) }

// answer marks fid as answered (FILE_OK or FILE_DONE).
func (a *applier) answer(fid uint32) {
	if !a.known(fid) {
		return
	}
	a.mu.Lock()
	if !wire.BitmapHas(a.answered, int(fid-1)) {
		wire.BitmapSet(a.answered, int(fid-1))
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
}

// wait returns once fid was answered.
func (a *applier) wait(ctx context.Context, fid uint32) error {
	for {
		a.mu.Lock()
		if wire.BitmapHas(a.answered, int(fid-1)) {
			a.mu.Unlock()
			return nil
		}
		c := a.changed
		a.mu.Unlock()
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// finish frees the slot of a finished entry, once.
func (a *applier) finish(fid uint32) {
	if !a.known(fid) {
		return
	}
	a.mu.Lock()
	done := wire.BitmapHas(a.finished, int(fid-1))
	wire.BitmapSet(a.finished, int(fid-1))
	a.mu.Unlock()
	if !done {
		<-a.slots
	}
}

// send announces every entry (at most publisher.MaxEntries unfinished)
// and hands the receiver the content of those it asked for, in stream
// order; then END. It returns the content octets it discarded.
func (a *applier) send(ctx context.Context, content io.Reader) (discarded uint64, err error) {
	actx, stop := context.WithCancel(ctx)
	defer stop()
	announced := make(chan error, 1)
	var count uint32 // entries announced, once announced is received
	go func() {
		for _, e := range a.cfg.Entries {
			select {
			case a.slots <- struct{}{}:
			case <-actx.Done():
				announced <- nil
				return
			}
			f := *e
			f.Channel = 1
			if !a.recv.Deliver(&f) {
				announced <- errors.New("bug: the receiver's inbox is full")
				return
			}
			count++
		}
		announced <- nil
	}()
	defer func() {
		// The stream failed: what arrived whole still goes in place. The
		// receiver ends the transfer; entries without their content fail.
		var sf *streamFailure
		if errors.As(err, &sf) {
			stop()
			if aerr := <-announced; aerr != nil {
				err = aerr
				return
			}
			if !a.recv.Deliver(&wire.End{Channel: 1, Count: count}) {
				err = errors.New("bug: the receiver's inbox is full")
			}
		}
	}()
	for i, e := range a.cfg.Entries {
		inStream := wire.BitmapHas(a.cfg.Content, i) && e.Kind == wire.KindFile
		// Wait for the receiver's answer before taking the entry's
		// content: a file it skips or refused is discarded.
		if err := a.wait(ctx, e.FID); err != nil {
			return discarded, err
		}
		a.mu.Lock()
		ok := a.answers[e.FID]
		delete(a.answers, e.FID)
		a.mu.Unlock()
		from, local := a.cfg.Copies[e.FID]
		switch {
		case ok != nil && local:
			if inStream { // for other agents
				n := a.streamLen(i)
				if err := skip(content, e, n); err != nil {
					return discarded, err
				}
				discarded += n
			}
			if err := a.copyLocal(ctx, e, from, ok.Have); err != nil {
				return discarded, err
			}
		case ok != nil && inStream && (a.cfg.Bases[e.FID] != nil || a.slices(i) != nil):
			if err := a.patch(ctx, e, content, ok.Have, a.cfg.Bases[e.FID], a.slices(i)); err != nil {
				return discarded, err
			}
		case ok != nil && inStream:
			if err := a.content(ctx, e, content, ok.Have); err != nil {
				return discarded, err
			}
		case ok != nil:
			// The receiver wants content the stream does not hold.
			if !a.recv.Deliver(&wire.FileDone{Channel: 1, FID: e.FID, Code: uint16(wire.CodeConflict), Reason: errNotInBroadcast.Error()}) {
				return discarded, errors.New("bug: the receiver's inbox is full")
			}
			a.finish(e.FID)
		case inStream:
			n := a.streamLen(i)
			if err := skip(content, e, n); err != nil {
				return discarded, err
			}
			discarded += n
		}
	}
	if err := <-announced; err != nil {
		return discarded, err
	}
	// Every entry finishes (FILE_DONE after COMMIT) before END.
	for range publisher.MaxEntries {
		select {
		case a.slots <- struct{}{}:
		case <-ctx.Done():
			return discarded, ctx.Err()
		}
	}
	if !a.recv.Deliver(&wire.End{Channel: 1, Count: uint32(len(a.cfg.Entries))}) {
		return discarded, errors.New("bug: the receiver's inbox is full")
	}
	return discarded, nil
}

// content hands the receiver e's content from the stream, within its
// credit, and COMMIT with the manifest's size and digest: the receiver
// checks what it wrote against them. have is what the receiver holds of
// the file from an earlier attempt (FILE_OK): the first have octets are
// passed over and the partial is kept. Nothing tells whether that partial
// holds this content (its name says the manifest's size and mtime), but
// the digest at COMMIT covers it: one that does not fails that entry, and
// the receiver removes it, so the next broadcast writes the file whole.
func (a *applier) content(ctx context.Context, e *wire.File, r io.Reader, have uint64) error {
	var off uint64
	if have > 0 && have <= e.Size {
		if err := skip(r, e, have); err != nil {
			return err
		}
		off = have
	}
	if ex, ok := r.(Expecter); ok && off < e.Size {
		ex.Expect(e.Size - off)
	}
	return a.chunks(ctx, e, r, off, streamErr)
}

// chunks hands the receiver e's content from r, from offset off on,
// within its credit, and COMMIT; readErr makes the error of a read that
// failed.
func (a *applier) chunks(ctx context.Context, e *wire.File, r io.Reader, off uint64, readErr func(*wire.File, error) error) error {
	if err := a.run(ctx, e, r, off, e.Size, readErr); err != nil {
		return err
	}
	return a.commit(e)
}

// run hands the receiver e's octets off to end from r, within its credit.
func (a *applier) run(ctx context.Context, e *wire.File, r io.Reader, off, end uint64, readErr func(*wire.File, error) error) error {
	const chunk = 1 << 20
	for off < end {
		n, err := a.credit.Credit(ctx, int(min(chunk, end-off)))
		if err != nil {
			return err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			return readErr(e, err)
		}
		seq := a.credit.Sent(buf)
		if !a.recv.Deliver(&wire.Chunk{Channel: 1, FID: e.FID, Offset: off, Seq: seq, Bytes: buf}) {
			return errors.New("bug: the receiver's inbox is full")
		}
		off += uint64(n)
	}
	return nil
}

// commit ends e with the manifest's size and digest.
func (a *applier) commit(e *wire.File) error {
	if !a.recv.Deliver(&wire.Commit{Channel: 1, FID: e.FID, Size: e.Size, Digest: e.Digest}) {
		return errors.New("bug: the receiver's inbox is full")
	}
	return nil
}

// skip passes over n octets of e's content in the stream: without reading
// them if it is a Skipper.
func skip(r io.Reader, e *wire.File, n uint64) error {
	if sk, ok := r.(Skipper); ok {
		sk.Skip(n)
		return nil
	}
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		return streamErr(e, err)
	}
	return nil
}

// copyLocal hands the receiver e's content read from the file from in the
// destination (an entry with the same SHA-256), from have on, and COMMIT.
// It reads on a goroutine of its own that runs the receiver's Thread
// first, so the file is read as the user, whatever zpd may read. A file
// that cannot be read fails that entry only (FILE_DONE 409), and one that
// changed since Needs hashed it fails at COMMIT (its digest), as any.
func (a *applier) copyLocal(ctx context.Context, e *wire.File, from string, have uint64) error {
	failed := func(err error) error {
		if !a.recv.Deliver(&wire.FileDone{Channel: 1, FID: e.FID, Code: uint16(wire.CodeConflict), Reason: fmt.Sprintf("copying from %s: %v", from, err)}) {
			return errors.New("bug: the receiver's inbox is full")
		}
		a.finish(e.FID)
		return nil
	}
	var localErr error
	errc := make(chan error, 1)
	go func() {
		if t := a.cfg.Receiver.Thread; t != nil {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			t()
		}
		f, err := a.cfg.Receiver.Root.OpenFile(from)
		if err != nil {
			localErr = err
			errc <- nil
			return
		}
		defer f.Close()
		off := min(have, e.Size)
		if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
			localErr = err
			errc <- nil
			return
		}
		errc <- a.chunks(ctx, e, f, off, func(_ *wire.File, err error) error {
			localErr = err
			return errLocal
		})
	}()
	err := <-errc
	if localErr != nil && (err == nil || errors.Is(err, errLocal)) {
		return failed(localErr)
	}
	return err
}

// errLocal: reading the local file an entry is copied from failed.
var errLocal = errors.New("reading the local copy failed")

// ErrShortContent: the content stream ended before an entry's content.
var ErrShortContent = errors.New("the broadcast's content ended early")

// streamFailure is a content stream that failed (or ended early) in an
// entry's content.
type streamFailure struct{ err error }

func (e *streamFailure) Error() string { return e.err.Error() }
func (e *streamFailure) Unwrap() error { return e.err }

func streamErr(e *wire.File, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w (in %q)", ErrShortContent, e.Path)
	}
	return &streamFailure{err}
}
