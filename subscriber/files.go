package subscriber

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// ReceiverConfig configures a Receiver.
type ReceiverConfig struct {
	Channel uint32
	Root    *chunkstore.Root
	// Open, when Root is nil, opens the root at the first entry: a single
	// file named "" may become the target itself (returning its name in
	// the root as asName), anything else goes into a directory.
	Open func(first *wire.File) (root *chunkstore.Root, asName string, err error)
	// AsName, when set, is the name in Root that the entry "" becomes
	// (TargetAs); otherwise "" is Root itself.
	AsName  string
	Flags   uint8 // wire.Xfer*
	Chown   bool  // set owners (-p, and the receiver may)
	Window  uint64
	Send    func(wire.Message) error
	Commits int    // concurrent commits (fdatasync+rename); default 16
	Thread  func() // run first on every goroutine that touches files
	OnFile  func(name string, kind uint8, err error, skipped bool)
	OnChunk func(n int)
}

// RecvStats counts what a Receiver did.
type RecvStats struct {
	Files, Dirs, Links, Skipped, Failed int
	Bytes                               uint64 // content octets written
	BytesSkipped                        uint64 // octets of identical files
	BytesResumed                        uint64 // octets kept from partial files
}

// Receiver writes the entries a Sender sends into a chunkstore.Root: it
// answers each FILE (skip, resume from a partial, or send), writes CHUNKs
// as they come (granting credit as it writes), verifies and commits files
// on a pool of goroutines, and sets directory attributes at the end.
// Deliver hands it the sender's messages; Run processes them.
type Receiver struct {
	cfg    ReceiverConfig
	inbox  chan wire.Message
	credit *Stream

	files      map[uint32]*recvFile
	batch      []sealed // sealed small files waiting for one syncfs
	batchBytes uint64
	dev        uint64 // the root's file system
	dirs       []dirAttrs
	touched    map[string]bool // directories to fsync
	commits    chan func()
	inflight   sync.WaitGroup

	mu    sync.Mutex
	stats RecvStats
}

type recvFile struct {
	name    string
	msg     *wire.File
	partial *chunkstore.Partial
	failed  bool
	resumed uint64 // octets of the partial the sender kept
	started bool   // a chunk arrived
}

type dirAttrs struct {
	name string
	a    chunkstore.Attrs
}

// NewReceiver returns a Receiver; call Run.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	if cfg.Commits <= 0 {
		cfg.Commits = 16
	}
	return &Receiver{
		cfg:     cfg,
		inbox:   make(chan wire.Message, publisher.MaxInflight+2*publisher.MaxEntries+64),
		credit:  New(cfg.Window),
		files:   make(map[uint32]*recvFile),
		touched: make(map[string]bool),
		commits: make(chan func(), cfg.Commits),
	}
}

// Deliver queues a message from the sender without blocking; false means
// the sender exceeded what the protocol allows in flight.
func (r *Receiver) Deliver(m wire.Message) bool {
	select {
	case r.inbox <- m:
		return true
	default:
		return false
	}
}

// Stats returns the counts so far.
func (r *Receiver) Stats() RecvStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// lockThread prepares the calling goroutine for file work.
func (r *Receiver) lockThread() {
	if r.cfg.Thread != nil {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		r.cfg.Thread()
	}
}

// Run processes messages until the sender's END has been answered, ctx
// ends, or the sender breaks the protocol.
func (r *Receiver) Run(ctx context.Context) error {
	r.lockThread()
	var workers sync.WaitGroup
	defer func() {
		close(r.commits)
		workers.Wait()
		for _, f := range r.files {
			if f.partial != nil {
				f.partial.Close() // kept for a resume
			}
		}
	}()
	for i := 0; i < r.cfg.Commits; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			r.lockThread()
			for job := range r.commits {
				job()
			}
		}()
	}
	flushTimer := time.NewTimer(time.Hour)
	flushTimer.Stop()
	defer flushTimer.Stop()
	for {
		var m wire.Message
		select {
		case m = <-r.inbox:
		case <-flushTimer.C:
			r.flush()
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		switch m := m.(type) {
		case *wire.File:
			if r.cfg.Root == nil {
				root, as, err := r.cfg.Open(m)
				if err != nil {
					r.fail(m, m.Path, err)
					_ = r.cfg.Send(wire.Errorf(r.cfg.Channel, errorCode(err), "%v", err))
					return err
				}
				r.cfg.Root, r.cfg.AsName = root, as
			}
			r.file(m)
		case *wire.Chunk:
			if err := r.chunk(m); err != nil {
				return err
			}
		case *wire.Commit:
			if r.commit(m) {
				flushTimer.Reset(batchDelay)
			}
		case *wire.FileDone: // the sender gave up on an entry
			if f := r.files[m.FID]; f != nil {
				if f.partial != nil {
					f.partial.Close()
				}
				delete(r.files, m.FID)
				r.done(f.name, f.msg.Kind, errors.New(m.Reason), false)
			}
		case *wire.End:
			r.flush()
			r.inflight.Wait()
			// A sender ends only after every entry is finished; one whose
			// content never came (a broken or hostile sender) is a
			// failure, not silently missing. Its partial stays.
			for _, f := range r.files {
				if !f.failed {
					f.failed = true
					r.done(f.name, f.msg.Kind, errors.New("the sender ended the transfer before this file's content"), false)
				}
			}
			r.finishDirs()
			return r.cfg.Send(&wire.End{Channel: r.cfg.Channel, Count: m.Count})
		}
	}
}

// target maps an entry name to its name in Root.
func (r *Receiver) target(path string) (string, error) {
	name, err := chunkstore.CleanName(path)
	if err != nil {
		return "", err
	}
	if r.cfg.AsName != "" {
		if name != "" {
			return "", fmt.Errorf("%w: %q for a single-file target", chunkstore.ErrUnsafePath, path)
		}
		return r.cfg.AsName, nil
	}
	return name, nil
}

func parent(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return ""
}

func (r *Receiver) fail(m *wire.File, name string, err error) {
	r.done(name, m.Kind, err, false)
	_ = r.cfg.Send(&wire.FileDone{Channel: r.cfg.Channel, FID: m.FID, Code: uint16(errorCode(err)), Reason: err.Error()})
}

func (r *Receiver) done(name string, kind uint8, err error, skipped bool) {
	r.mu.Lock()
	switch {
	case err != nil:
		r.stats.Failed++
	case skipped:
		r.stats.Skipped++
	case kind == wire.KindFile:
		r.stats.Files++
	case kind == wire.KindDir:
		r.stats.Dirs++
	case kind == wire.KindSymlink:
		r.stats.Links++
	}
	r.mu.Unlock()
	if r.cfg.OnFile != nil {
		r.cfg.OnFile(name, kind, err, skipped)
	}
}

// errorCode maps a file error to a protocol code.
func errorCode(err error) wire.Code {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return wire.CodeNoSpace
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return wire.CodeForbidden
	case errors.Is(err, chunkstore.ErrUnsafePath), errors.Is(err, chunkstore.ErrEscape):
		return wire.CodeBadRequest
	case errors.Is(err, chunkstore.ErrMismatch), errors.Is(err, chunkstore.ErrSize):
		return wire.CodeConflict
	case errors.Is(err, fs.ErrNotExist):
		return wire.CodeNotFound
	}
	return wire.CodeInternal
}

func (r *Receiver) attrs(m *wire.File) chunkstore.Attrs {
	return chunkstore.Attrs{Mode: m.Mode, MTime: m.MTime, Chown: r.cfg.Chown, UID: m.UID, GID: m.GID}
}

func (r *Receiver) file(m *wire.File) {
	name, err := r.target(m.Path)
	if err != nil {
		r.fail(m, m.Path, err)
		return
	}
	if m.Kind != wire.KindDir || name != "" {
		if err := r.cfg.Root.MkdirAll(parent(name)); err != nil {
			r.fail(m, name, err)
			return
		}
	}
	switch m.Kind {
	case wire.KindDir:
		if r.cfg.Flags&wire.XferRecursive == 0 {
			r.fail(m, name, fmt.Errorf("%s is a directory (not a recursive copy)", name))
			return
		}
		if st, err := r.cfg.Root.Lstat(name); err == nil && st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			r.fail(m, name, &fs.PathError{Op: "mkdir", Path: name, Err: syscall.EEXIST})
			return
		}
		if err := r.cfg.Root.MkdirAll(name); err != nil {
			r.fail(m, name, err)
			return
		}
		r.dirs = append(r.dirs, dirAttrs{name, r.attrs(m)})
		r.done(name, m.Kind, nil, false)
		_ = r.cfg.Send(&wire.FileOK{Channel: r.cfg.Channel, FID: m.FID, Action: wire.ActionDone})
	case wire.KindSymlink:
		if err := r.cfg.Root.Symlink(m.Target, name); err != nil {
			r.fail(m, name, err)
			return
		}
		a := r.attrs(m)
		a.Mode = 0
		_ = r.cfg.Root.SetAttrs(name, a)
		r.touched[parent(name)] = true
		r.done(name, m.Kind, nil, false)
		_ = r.cfg.Send(&wire.FileOK{Channel: r.cfg.Channel, FID: m.FID, Action: wire.ActionDone})
	case wire.KindFile:
		same := false
		if r.cfg.Flags&wire.XferChecksum != 0 && len(m.Digest) == 32 {
			same = r.cfg.Root.SameDigest(name, m.Size, m.Digest)
		} else {
			same = r.cfg.Root.Same(name, m.Size, m.MTime)
		}
		if same {
			_ = r.cfg.Root.SetAttrs(name, r.attrs(m)) // modes may differ
			r.mu.Lock()
			r.stats.BytesSkipped += m.Size
			r.mu.Unlock()
			r.done(name, m.Kind, nil, true)
			_ = r.cfg.Send(&wire.FileOK{Channel: r.cfg.Channel, FID: m.FID, Action: wire.ActionSkip})
			return
		}
		p, err := r.cfg.Root.OpenPartial(name, m.Size, m.MTime)
		if err != nil {
			r.fail(m, name, err)
			return
		}
		r.files[m.FID] = &recvFile{name: name, msg: m, partial: p, resumed: p.Have()}
		ok := &wire.FileOK{Channel: r.cfg.Channel, FID: m.FID, Action: wire.ActionSend, Have: p.Have()}
		if p.Have() > 0 {
			ok.Prefix = p.Prefix()
		}
		_ = r.cfg.Send(ok)
	}
}

// chunk writes content; a protocol violation (gap, credit) ends the run.
func (r *Receiver) chunk(m *wire.Chunk) error {
	fresh, err := r.credit.Accept(m.Seq, m.Bytes, false)
	if err != nil {
		_ = r.cfg.Send(wire.Errorf(r.cfg.Channel, wire.CodeFlowControl, "%v", err))
		return err
	}
	if len(fresh) < len(m.Bytes) {
		// Part of a resend we already have.
		skip := uint64(len(m.Bytes) - len(fresh))
		m.Offset += skip
	}
	if f := r.files[m.FID]; f != nil && !f.failed && len(fresh) > 0 {
		f.started = true
		if m.Offset == 0 && f.partial.Have() > 0 {
			f.resumed = 0
			// The sender's content differs from our partial: start over.
			if err := f.partial.Restart(); err != nil {
				r.fileFailed(m.FID, f, err)
			}
		}
		if !f.failed {
			if err := f.partial.Write(m.Offset, fresh); err != nil {
				r.fileFailed(m.FID, f, err)
			} else {
				r.mu.Lock()
				r.stats.Bytes += uint64(len(fresh))
				r.mu.Unlock()
				if r.cfg.OnChunk != nil {
					r.cfg.OnChunk(len(fresh))
				}
			}
		}
	}
	if due, off, lim := r.credit.Consumed(len(fresh)); due {
		return r.cfg.Send(&wire.Ack{Channel: r.cfg.Channel, Stream: wire.Stdin, Offset: off, Limit: lim})
	}
	return nil
}

// fileFailed records a write error (disk full…): the partial stays for a
// later resume, the sender learns at once, later chunks are dropped.
func (r *Receiver) fileFailed(fid uint32, f *recvFile, err error) {
	f.failed = true
	f.partial.Close()
	r.done(f.name, f.msg.Kind, err, false)
	_ = r.cfg.Send(&wire.FileDone{Channel: r.cfg.Channel, FID: fid, Code: uint16(errorCode(err)), Reason: err.Error()})
}

// Small files are committed in batches: their data is made durable by
// one syncfs for the batch instead of one fdatasync each (on ext4 every
// fdatasync of a new file is a journal commit: 5,000 small files cost
// seconds). Still, each file is renamed into place only after its data is
// durable. Large files, and files on another file system than the root,
// are synced on their own.
const (
	batchFiles = 768
	batchBytes = 32 << 20
	batchDelay = 250 * time.Millisecond
	bigFile    = 8 << 20
)

type sealed struct {
	fid uint32
	f   *recvFile
}

// commit verifies a file and queues its publication; it reports whether
// the file joined a batch that is not flushed yet.
func (r *Receiver) commit(m *wire.Commit) bool {
	f := r.files[m.FID]
	delete(r.files, m.FID)
	if f == nil || f.failed {
		return false // already reported
	}
	r.touched[parent(f.name)] = true
	if err := f.partial.Seal(m.Size, m.Digest, r.attrs(f.msg)); err != nil {
		r.finished(m.FID, f, err)
		return false
	}
	if m.Size >= bigFile || f.partial.Dev() != r.rootDev() {
		r.inflight.Add(1)
		r.commits <- func() {
			defer r.inflight.Done()
			err := f.partial.Sync()
			if err == nil {
				err = f.partial.Publish()
			} else {
				f.partial.Close()
			}
			r.finished(m.FID, f, err)
		}
		return false
	}
	r.batch = append(r.batch, sealed{m.FID, f})
	r.batchBytes += m.Size
	if len(r.batch) >= batchFiles || r.batchBytes >= batchBytes {
		r.flush()
		return false
	}
	return len(r.batch) == 1
}

// flush makes the batch durable and publishes it, on a commit worker.
func (r *Receiver) flush() {
	if len(r.batch) == 0 {
		return
	}
	batch := r.batch
	r.batch, r.batchBytes = nil, 0
	r.inflight.Add(1)
	r.commits <- func() {
		defer r.inflight.Done()
		err := r.cfg.Root.SyncFS()
		for _, s := range batch {
			if err != nil {
				s.f.partial.Close() // kept for a resume
				r.finished(s.fid, s.f, err)
				continue
			}
			r.finished(s.fid, s.f, s.f.partial.Publish())
		}
	}
}

func (r *Receiver) rootDev() uint64 {
	if r.dev == 0 {
		r.dev = r.cfg.Root.Dev()
	}
	return r.dev
}

// finished reports a file's outcome to the sender.
func (r *Receiver) finished(fid uint32, f *recvFile, err error) {
	if err == nil && f.resumed > 0 {
		r.mu.Lock()
		r.stats.BytesResumed += f.resumed
		r.mu.Unlock()
	}
	r.done(f.name, f.msg.Kind, err, false)
	done := &wire.FileDone{Channel: r.cfg.Channel, FID: fid}
	if err != nil {
		done.Code, done.Reason = uint16(errorCode(err)), err.Error()
	}
	_ = r.cfg.Send(done)
}

// finishDirs makes renames durable and gives directories their modes and
// times, deepest first (writing into a directory changes its mtime).
func (r *Receiver) finishDirs() {
	for d := range r.touched {
		_ = r.cfg.Root.SyncDir(d)
	}
	sort.Slice(r.dirs, func(i, j int) bool {
		return strings.Count(r.dirs[i].name, "/") > strings.Count(r.dirs[j].name, "/")
	})
	for _, d := range r.dirs {
		_ = r.cfg.Root.SetAttrs(d.name, d.a)
	}
}
