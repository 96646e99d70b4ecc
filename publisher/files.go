package publisher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/bufpool"
	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/rawfile"
	"github.com/zpipes/zp/internal/wire"
)

// Entry is one thing to send: Name is its path on the receiving side,
// relative to the target ("" is the target itself), Path where it is here.
type Entry struct {
	Name string
	Path string
	Info fs.FileInfo
}

// Walk lists the entries for sources, rsync-style: "dir" sends the
// directory itself (dir/...), "dir/" sends its contents; without recursive,
// directories are skipped with a warning. With single (one source that is
// a file, and the receiver chose TargetAs), the file's name is "". Special
// files (devices, sockets, FIFOs) are skipped with a warning. Entries come
// parents first; emit returning an error stops the walk. warn reports a
// skipped entry (failed false, as rsync: a notice) or a source that cannot
// be read (failed true).
func Walk(sources []string, recursive, single bool, warn func(msg string, failed bool), emit func(Entry) error) error {
	for _, src := range sources {
		info, err := os.Lstat(src)
		if err != nil {
			warn(fmt.Sprintf("%s: %v", src, errors.Unwrap(err)), true)
			continue
		}
		contents := strings.HasSuffix(src, "/") && info.IsDir()
		base := filepath.Base(filepath.Clean(src))
		if !contents && !single && reserved(base) {
			warn(skipReserved(src), false)
			continue
		}
		if !info.IsDir() {
			name := base
			if single {
				name = ""
			}
			if err := emitOne(Entry{Name: name, Path: src, Info: info}, warn, emit); err != nil {
				return err
			}
			continue
		}
		if !recursive {
			warn(fmt.Sprintf("skipping directory %s (use -r)", src), false)
			continue
		}
		prefix := base
		if contents {
			prefix = ""
		}
		root := filepath.Clean(src)
		if err := emitOne(Entry{Name: prefix, Path: root, Info: info}, warn, emit); err != nil {
			return err
		}
		if err := walkDir(root, prefix, true, warn, emit); err != nil {
			return err
		}
	}
	return nil
}

// reserved reports whether a name is one receivers refuse: theirs for
// temporary files (a partial of an interrupted transfer, for instance).
func reserved(base string) bool { return strings.HasPrefix(base, chunkstore.ReservedPrefix) }

func skipReserved(path string) string {
	return fmt.Sprintf("skipping %s (names beginning with %s are zpc's temporary files)", path, chunkstore.ReservedPrefix)
}

func emitOne(e Entry, warn func(string, bool), emit func(Entry) error) error {
	switch m := e.Info.Mode(); {
	case m.IsRegular(), m.IsDir(), m&fs.ModeSymlink != 0:
		return emit(e)
	default:
		warn(fmt.Sprintf("skipping special file %s", e.Path), false)
		return nil
	}
}

// fileMessage describes an entry in a FILE message.
func fileMessage(channel, fid uint32, e Entry) (*wire.File, error) {
	m := &wire.File{Channel: channel, FID: fid, Path: e.Name, Mode: uint32(e.Info.Mode().Perm()), MTime: e.Info.ModTime().UnixNano()}
	mode := e.Info.Mode()
	if mode&fs.ModeSetuid != 0 {
		m.Mode |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		m.Mode |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		m.Mode |= 0o1000
	}
	if o, ok := e.Info.(interface{ owner() (uint32, uint32) }); ok {
		m.UID, m.GID = o.owner()
	} else if st, ok := e.Info.Sys().(*syscall.Stat_t); ok {
		m.UID, m.GID = st.Uid, st.Gid
	}
	switch {
	case mode.IsDir():
		m.Kind = wire.KindDir
	case mode&fs.ModeSymlink != 0:
		m.Kind = wire.KindSymlink
		t, err := os.Readlink(e.Path)
		if err != nil {
			return nil, err
		}
		m.Target = t
	default:
		m.Kind = wire.KindFile
		m.Size = uint64(e.Info.Size())
	}
	return m, nil
}

// FileResult is the outcome of one entry.
type FileResult struct {
	Name, Path string
	Kind       uint8
	Err        error // nil: in place (copied or skipped)
	Skipped    bool
}

// SendStats counts what a Sender did.
type SendStats struct {
	Files        int    // regular files copied
	Dirs, Links  int    // directories and symlinks created
	Skipped      int    // files already identical
	BytesSent    uint64 // content octets sent
	BytesSkipped uint64 // octets of identical files not sent
	BytesResumed uint64 // octets already at the receiver from an interrupted transfer
	Failures     []FileResult
}

// SenderConfig configures a Sender.
type SenderConfig struct {
	Channel  uint32
	Send     func(wire.Message) error
	Window   uint64 // credit granted by the receiver
	Chunk    int    // largest CHUNK payload
	Checksum bool   // send each file's digest with FILE (read twice)
	// Batch: the peer speaks protocol version 6, so FILE messages may
	// leave in BATCH messages (a walk's run of entries in one message).
	Batch bool
	// Hash makes the content digest (FILE's with Checksum, the resume
	// prefix, COMMIT's): internal/digest.For the session's protocol
	// version; nil means SHA-256.
	Hash func() hash.Hash
	// Outstanding bounds FILE messages not yet answered (pipelining).
	Outstanding int
	// OnFile, if set, reports each finished entry; OnProgress content
	// octets as they are sent (for a progress display).
	OnFile     func(FileResult)
	OnProgress func(name string, sent, size uint64)
}

// MaxEntries bounds the entries a sender has announced and not seen
// finished (docs/PROTOCOL.md): a receiver can rely on it to size its queue.
const MaxEntries = 1024

// A walk's FILE messages leave in batches of up to fileBatch, or what
// gathered in fileBatchWait, or before hashing a file of batchHashFlush
// octets or more (with Checksum): the receiver never waits long for the
// entries the sender has.
const (
	fileBatch      = 128
	fileBatchWait  = 2 * time.Millisecond
	batchHashFlush = 1 << 20
)

// Sender sends entries to a Receiver over one channel: FILE for each,
// then, for those the receiver asks for, CHUNKs within its credit and a
// COMMIT with the SHA-256; it pipelines many files without a round trip
// each. Deliver passes it the receiver's messages; Run drives it.
type Sender struct {
	cfg    SenderConfig
	inbox  chan wire.Message
	credit *credit.Sender

	slots chan struct{} // one per unfinished entry

	mu      sync.Mutex
	pending map[uint32]*sendFile // announced, not finished
	stats   SendStats
}

type sendFile struct {
	fid      uint32
	entry    Entry
	msg      *wire.File
	answered bool // FILE_OK came (Run only)
}

// NewSender returns a Sender; call Run.
func NewSender(cfg SenderConfig) *Sender {
	if cfg.Hash == nil {
		cfg.Hash = digest.SHA256
	}
	if cfg.Outstanding <= 0 || cfg.Outstanding > MaxEntries {
		cfg.Outstanding = MaxEntries
	}
	if cfg.Chunk <= 0 {
		cfg.Chunk = 256 << 10
	}
	return &Sender{
		cfg:     cfg,
		inbox:   make(chan wire.Message, credit.MaxInflight+2*cfg.Outstanding+64),
		credit:  credit.NewSender(cfg.Window),
		pending: make(map[uint32]*sendFile),
		slots:   make(chan struct{}, cfg.Outstanding),
	}
}

// Deliver queues a message from the receiver; it never blocks. It reports
// false if the receiver sent more than the protocol allows.
func (s *Sender) Deliver(m wire.Message) bool {
	select {
	case s.inbox <- m:
		return true
	default:
		return false
	}
}

// ErrAborted is returned when the receiver ended the transfer.
var ErrAborted = errors.New("publisher: transfer aborted by the receiver")

// Run sends every entry that walk emits and returns when the receiver has
// answered for all of them. Per-entry failures are in the stats; the error
// is for the transfer as a whole (connection, protocol, cancellation).
func (s *Sender) Run(ctx context.Context, walk func(emit func(Entry) error) error) (SendStats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.credit.Close(nil)
	s.credit.ReleaseAcked(bufpool.Put) // sendContent's buffers
	ready := make(chan *wire.FileOK, s.cfg.Outstanding+1)
	dataErr := make(chan error, 1)
	go func() { dataErr <- s.data(ctx, ready) }()

	// Announce entries, at most Outstanding unfinished at once (so that
	// what the receiver may have queued is bounded: docs/PROTOCOL.md).
	slots := s.slots
	walkErr := make(chan error, 1)
	var fid uint32
	var count uint32
	go func() {
		// With Batch, FILE messages wait in pend until fileBatch of them
		// are there, a few milliseconds passed, or the walk would block
		// (no free slot, a large file to hash first, its end).
		var pend []wire.Message
		var since time.Time
		flush := func() error {
			err := s.sendRun(pend)
			pend = nil
			return err
		}
		err := walk(func(e Entry) error {
			select {
			case slots <- struct{}{}:
			default:
				if err := flush(); err != nil {
					return err
				}
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			fid++
			m, err := fileMessage(s.cfg.Channel, fid, e)
			if err != nil {
				<-slots
				s.finish(&sendFile{fid: fid, entry: e}, err)
				return nil
			}
			if s.cfg.Checksum && m.Kind == wire.KindFile {
				if m.Size >= batchHashFlush {
					if err := flush(); err != nil {
						return err
					}
				}
				if m.Digest, err = fileDigest(e.Path, s.cfg.Hash); err != nil {
					<-slots
					s.finish(&sendFile{fid: fid, entry: e, msg: m}, err)
					return nil
				}
			}
			s.mu.Lock()
			s.pending[fid] = &sendFile{fid: fid, entry: e, msg: m}
			s.mu.Unlock()
			count++
			if !s.cfg.Batch {
				return s.cfg.Send(m)
			}
			if len(pend) == 0 {
				since = time.Now()
			}
			pend = append(pend, m)
			if len(pend) >= fileBatch || time.Since(since) >= fileBatchWait {
				return flush()
			}
			return nil
		})
		if err == nil {
			err = flush()
		}
		walkErr <- err
	}()

	walked := false
	for {
		s.mu.Lock()
		outstanding := len(s.pending)
		s.mu.Unlock()
		if walked && outstanding == 0 {
			break
		}
		select {
		case err := <-walkErr:
			if err != nil {
				return s.snapshot(), err
			}
			walked = true
			walkErr = nil
			continue
		case err := <-dataErr:
			if err == nil {
				err = errors.New("bug: data pump ended early")
			}
			return s.snapshot(), err
		case <-ctx.Done():
			return s.snapshot(), ctx.Err()
		case m := <-s.inbox:
			switch m := m.(type) {
			case *wire.FileOK:
				if !s.answer(m.FID) {
					continue // a duplicate after a resend, or not ours
				}
				switch m.Action {
				case wire.ActionSend:
					ready <- m
				case wire.ActionSkip:
					s.skip(m.FID)
				default:
					s.finish(s.take(m.FID), nil)
				}
			case *wire.FileDone:
				var err error
				if m.Code != 0 {
					err = &wire.Error{Channel: m.Channel, Code: wire.Code(m.Code), Reason: m.Reason}
				}
				s.finish(s.take(m.FID), err)
			case *wire.Ack:
				if err := s.credit.Ack(m.Offset, m.Limit); err != nil {
					return s.snapshot(), violation{err}
				}
			case *wire.Error:
				return s.snapshot(), m
			}
		}
	}
	if err := s.cfg.Send(&wire.End{Channel: s.cfg.Channel, Count: count}); err != nil {
		return s.snapshot(), err
	}
	// The receiver answers END once directories have their attributes.
	for {
		select {
		case m := <-s.inbox:
			switch m := m.(type) {
			case *wire.End:
				return s.snapshot(), nil
			case *wire.Error:
				return s.snapshot(), m
			}
		case <-ctx.Done():
			return s.snapshot(), ctx.Err()
		}
	}
}

// answer marks the entry fid answered; false if it is not pending or was
// answered before. What the sender remembers so stays bounded by the
// entries in flight, however many a transfer has.
func (s *Sender) answer(fid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.pending[fid]
	if f == nil || f.answered {
		return false
	}
	f.answered = true
	return true
}

// take removes a finished entry and frees its slot.
func (s *Sender) take(fid uint32) *sendFile {
	s.mu.Lock()
	f := s.pending[fid]
	delete(s.pending, fid)
	s.mu.Unlock()
	if f != nil {
		<-s.slots
	}
	return f
}

func (s *Sender) skip(fid uint32) {
	f := s.take(fid)
	if f == nil {
		return
	}
	s.mu.Lock()
	s.stats.Skipped++
	s.stats.BytesSkipped += f.msg.Size
	s.mu.Unlock()
	s.report(f, nil, true)
}

func (s *Sender) finish(f *sendFile, err error) {
	if f == nil {
		return
	}
	s.mu.Lock()
	if err != nil {
		s.stats.Failures = append(s.stats.Failures, FileResult{Name: f.entry.Name, Path: f.entry.Path, Err: err})
	} else if f.msg != nil {
		switch f.msg.Kind {
		case wire.KindFile:
			s.stats.Files++
		case wire.KindDir:
			s.stats.Dirs++
		case wire.KindSymlink:
			s.stats.Links++
		}
	}
	s.mu.Unlock()
	s.report(f, err, false)
}

func (s *Sender) report(f *sendFile, err error, skipped bool) {
	if s.cfg.OnFile == nil {
		return
	}
	r := FileResult{Name: f.entry.Name, Path: f.entry.Path, Err: err, Skipped: skipped}
	if f.msg != nil {
		r.Kind = f.msg.Kind
	}
	s.cfg.OnFile(r)
}

func (s *Sender) snapshot() SendStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Failures = append([]FileResult(nil), s.stats.Failures...)
	sort.Slice(st.Failures, func(i, j int) bool { return st.Failures[i].Path < st.Failures[j].Path })
	return st
}

// data sends the content of files the receiver asked for, one after the
// other, within the channel's credit. With Batch, the COMMITs of small
// files wait while the next file's content is ready to go, and leave
// together in one BATCH (before this side would wait for a file to send,
// before a file of batchHashFlush octets or more, or fileBatch of them).
func (s *Sender) data(ctx context.Context, ready <-chan *wire.FileOK) error {
	var commits []wire.Message
	flush := func() error {
		err := s.sendRun(commits)
		commits = nil
		if err != nil {
			return &sendError{err}
		}
		return nil
	}
	commit := func(m *wire.Commit) error {
		if !s.cfg.Batch {
			if err := s.cfg.Send(m); err != nil {
				return &sendError{err}
			}
			return nil
		}
		commits = append(commits, m)
		if len(commits) >= fileBatch {
			return flush()
		}
		return nil
	}
	for {
		var ok *wire.FileOK
		select {
		case ok = <-ready:
		default:
			if err := flush(); err != nil {
				return err.(*sendError).err
			}
			select {
			case ok = <-ready:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		s.mu.Lock()
		f := s.pending[ok.FID]
		s.mu.Unlock()
		if f == nil {
			continue
		}
		if f.msg.Size >= batchHashFlush {
			if err := flush(); err != nil {
				return err.(*sendError).err
			}
		}
		if err := s.sendContent(ctx, f, ok, commit); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, credit.ErrClosed) {
				return err
			}
			var se *sendError
			if errors.As(err, &se) {
				return se.err // the connection, not the file
			}
			// The file could not be read: tell the receiver to drop the
			// entry (FILE_DONE from the sender), and report it ourselves.
			s.take(f.fid)
			_ = s.cfg.Send(&wire.FileDone{Channel: s.cfg.Channel, FID: f.fid, Code: uint16(wire.CodeConflict), Reason: err.Error()})
			s.finish(f, err)
		}
	}
}

// sendRun sends msgs (batchable, of this channel): one alone, more as a
// BATCH, none not at all.
func (s *Sender) sendRun(msgs []wire.Message) error {
	if m := wire.Bundle(s.cfg.Channel, msgs); m != nil {
		return s.cfg.Send(m)
	}
	return nil
}

type sendError struct{ err error }

func (e *sendError) Error() string { return e.err.Error() }

func (s *Sender) sendContent(ctx context.Context, f *sendFile, ok *wire.FileOK, commit func(*wire.Commit) error) error {
	file, err := rawfile.Open(f.entry.Path)
	if err != nil {
		return err
	}
	defer file.Close()
	h := s.cfg.Hash()
	defer digest.Release(h)
	off := uint64(0)
	if ok.Have > 0 {
		// Resume only if the receiver's partial is a prefix of our file.
		if _, err := io.CopyN(h, file, int64(ok.Have)); err == nil && bytes.Equal(h.Sum(nil), ok.Prefix) {
			off = ok.Have
			s.mu.Lock()
			s.stats.BytesResumed += ok.Have
			s.mu.Unlock()
		} else {
			h.Reset()
			if _, err := file.Seek(0, io.SeekStart); err != nil {
				return err
			}
		}
	}
	size := f.msg.Size
	for {
		// Ask for no more than what is left (plus one octet, to see the
		// end or a file that grew): a 4 KiB file must not cost a buffer
		// of a whole chunk, allocated and cleared.
		want := s.cfg.Chunk
		if off <= size && size-off < uint64(want) {
			want = int(size-off) + 1
		}
		n, err := s.credit.Credit(ctx, want)
		if err != nil {
			return &sendError{err}
		}
		buf := bufpool.Get(n) // recycled once acknowledged (run: ReleaseAcked)
		// What the walk saw remain (-1 if the file grew: read to the end).
		left := -1
		if off <= size {
			left = int(min(size-off, uint64(len(buf))))
		}
		k, rerr := file.ReadFull(buf, left)
		if k > 0 {
			h.Write(buf[:k])
			seq := s.credit.Sent(buf[:k])
			if err := s.cfg.Send(&wire.Chunk{Channel: s.cfg.Channel, FID: f.fid, Offset: off, Seq: seq, Bytes: buf[:k]}); err != nil {
				return &sendError{err}
			}
			off += uint64(k)
			s.mu.Lock()
			s.stats.BytesSent += uint64(k)
			s.mu.Unlock()
			if s.cfg.OnProgress != nil {
				s.cfg.OnProgress(f.entry.Name, off, size)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return commit(&wire.Commit{Channel: s.cfg.Channel, FID: f.fid, Size: off, Digest: h.Sum(nil)})
}

// fileDigest is the digest (made by newHash) of the file at path.
func fileDigest(path string, newHash func() hash.Hash) ([]byte, error) {
	f, err := rawfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := newHash()
	defer digest.Release(h)
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
