package client

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
	"github.com/zpipes/zp/subscriber"
)

// TransferOptions says how to copy.
type TransferOptions struct {
	Recursive bool // copy directories
	// Preserve keeps the whole mode (setuid, setgid, sticky; not masked by
	// the receiver's umask) and the owner, where the receiver may set it.
	Preserve bool
	Checksum bool // compare digests, not size and time, to skip files
	// OnFile reports each finished entry; OnProgress content octets moved
	// for the current file.
	OnFile     func(name string, err error, skipped bool)
	OnProgress func(name string, done, size uint64)
	Warn       func(string) // a source that was skipped (a notice) or missing (a failure)
}

func (o *TransferOptions) flags() uint8 {
	var f uint8
	if o.Recursive {
		f |= wire.XferRecursive
	}
	if o.Preserve {
		f |= wire.XferPreserve
	}
	if o.Checksum {
		f |= wire.XferChecksum
	}
	return f
}

// LocalError is a failure on this machine that ends a download (its
// destination cannot be opened or created): the connection is fine and
// reconnecting would not help. The entry is also reported as a failure.
type LocalError struct{ Err error }

func (e *LocalError) Error() string { return e.Err.Error() }
func (e *LocalError) Unwrap() error { return e.Err }

// Failure is an entry that could not be copied.
type Failure struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// TransferStats summarises a copy.
type TransferStats struct {
	Files        int       `json:"files"`         // regular files copied
	Skipped      int       `json:"skipped"`       // files already identical
	Dirs         int       `json:"dirs"`          // directories
	Links        int       `json:"links"`         // symlinks
	BytesSent    uint64    `json:"bytes_sent"`    // content octets moved
	BytesSkipped uint64    `json:"bytes_skipped"` // octets of identical files not moved
	BytesResumed uint64    `json:"bytes_resumed"` // octets already there from an interrupted copy
	Seconds      float64   `json:"seconds"`
	Failures     []Failure `json:"failures"`
}

// forward hands a channel's messages to a transfer half until ctx ends.
// If the session ends (the connection is lost) or the server breaks the
// protocol, it calls abort, which stops the transfer half: that may be
// waiting for credit or data that will never come.
func (s *Session) forward(ctx context.Context, inbox <-chan wire.Message, deliver func(wire.Message) bool, warn func(*wire.FileDone) bool, abort func()) error {
	for {
		select {
		case m := <-inbox:
			msgs := []wire.Message{m}
			if b, ok := m.(*wire.Batch); ok {
				msgs = b.Msgs // each as if it had come alone
			}
			for _, m := range msgs {
				if fd, ok := m.(*wire.FileDone); ok && warn != nil && warn(fd) {
					continue
				}
				if !deliver(m) {
					abort()
					return &ProtocolError{errors.New("more messages in flight than the protocol allows")}
				}
			}
		case <-ctx.Done():
			return nil
		case <-s.done:
			abort()
			return s.err
		}
	}
}

// protocolError makes a violation that a transfer half detected a
// ProtocolError.
func protocolError(err error) error {
	var pe *ProtocolError
	if !errors.As(err, &pe) && (errors.Is(err, subscriber.ErrProtocol) || errors.Is(err, publisher.ErrProtocol)) {
		return &ProtocolError{err}
	}
	return err
}

// Upload copies local sources to dest on the server, as zpc does
// (rsync's rules for "dir" and "dir/"). Per-file failures are in the
// stats; the error is for the whole transfer.
func (s *Session) Upload(ctx context.Context, sources []string, dest string, opts TransferOptions) (_ *TransferStats, err error) {
	defer func() { err = public(err) }()
	start := time.Now()
	single := false
	if len(sources) == 1 {
		if st, err := os.Lstat(sources[0]); err == nil && !st.IsDir() {
			single = true
		}
	}
	flags := opts.flags()
	if single {
		flags |= wire.XferSingle
	}
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	defer func() { _ = s.send(&wire.Fin{Channel: id}) }()
	if err := s.send(&wire.Send{Channel: id, Flags: flags, Dest: dest}); err != nil {
		return nil, err
	}
	var ok *wire.SendOK
	select {
	case m := <-inbox:
		switch m := m.(type) {
		case *wire.SendOK:
			ok = m
		case *wire.Error:
			return nil, m
		default:
			return nil, &ProtocolError{fmt.Errorf("%s in answer to SEND", m.ID())}
		}
	case <-s.done:
		return nil, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	sender := publisher.NewSender(publisher.SenderConfig{
		Channel: id, Send: s.send, Window: uint64(ok.Window), Chunk: s.cfg.xferChunk(), Checksum: opts.Checksum,
		Batch: s.info.Version >= 6, Hash: digest.For(s.info.Version),
		OnFile: func(r publisher.FileResult) {
			if opts.OnFile != nil {
				opts.OnFile(r.Path, r.Err, r.Skipped)
			}
		},
		OnProgress: opts.OnProgress,
	})
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	rctx, abort := context.WithCancel(ctx)
	defer abort()
	fwdErr := make(chan error, 1)
	warn := opts.Warn
	if warn == nil {
		warn = func(string) {}
	}
	go func() {
		fwdErr <- s.forward(fctx, inbox, sender.Deliver, func(fd *wire.FileDone) bool {
			if fd.FID != 0 || fd.Code != 0 {
				return false
			}
			warn(fd.Reason) // a notice from the receiver
			return true
		}, abort)
	}()
	var warnings []Failure
	st, err := sender.Run(rctx, func(emit func(publisher.Entry) error) error {
		return publisher.Walk(sources, opts.Recursive, single && ok.Mode == wire.TargetAs, func(w string, failed bool) {
			if failed {
				warnings = append(warnings, Failure{Path: "", Error: w})
			}
			warn(w)
		}, emit)
	})
	stop()
	if ferr := <-fwdErr; ferr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		err = ferr // the session ended under the transfer
	}
	err = protocolError(err)
	out := &TransferStats{Files: st.Files, Skipped: st.Skipped, Dirs: st.Dirs, Links: st.Links,
		BytesSent: st.BytesSent, BytesSkipped: st.BytesSkipped, BytesResumed: st.BytesResumed,
		Seconds: time.Since(start).Seconds(), Failures: warnings}
	for _, f := range st.Failures {
		out.Failures = append(out.Failures, Failure{Path: f.Path, Error: f.Err.Error()})
	}
	if out.Failures == nil {
		out.Failures = []Failure{}
	}
	return out, err
}

// umask returns the process's umask (what a file made here without -p
// is masked with, as under rsync), read from /proc so that it is never
// changed, even for a moment; 022 if it cannot be read.
func umask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0o022
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(m)
			}
		}
	}
	return 0o022
}

// Download copies sources from the server to the local dest. Files and
// directories get the source's permission bits less the process's umask,
// or, with Preserve, the source's whole mode (setuid, setgid, sticky).
func (s *Session) Download(ctx context.Context, sources []string, dest string, opts TransferOptions) (_ *TransferStats, err error) {
	defer func() { err = public(err) }()
	start := time.Now()
	st, err := os.Stat(dest)
	destIsDir := err == nil && st.IsDir()
	flags := opts.flags()
	if len(sources) == 1 && !destIsDir && !strings.HasSuffix(dest, "/") {
		flags |= wire.XferSingle
	}
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	defer func() { _ = s.send(&wire.Fin{Channel: id}) }()
	window := uint64(4 * s.cfg.window())
	out := &TransferStats{Failures: []Failure{}}
	var mu sync.Mutex // the receiver reports from its commit goroutines
	recv := subscriber.NewReceiver(subscriber.ReceiverConfig{
		Channel: id, Flags: flags, Window: window, Send: s.send, Batch: s.info.Version >= 6,
		Hash:  digest.For(s.info.Version),
		Chown: opts.Preserve && os.Geteuid() == 0,
		Umask: umask(),
		Open: func(first *wire.File) (*chunkstore.Root, string, error) {
			if first.Path == "" && first.Kind != wire.KindDir {
				root, err := chunkstore.OpenRoot(filepath.Dir(filepath.Clean(dest)))
				if err != nil {
					return nil, "", &LocalError{err}
				}
				return root, filepath.Base(filepath.Clean(dest)), nil
			}
			if err := os.MkdirAll(dest, 0o755); err != nil {
				return nil, "", &LocalError{err}
			}
			root, err := chunkstore.OpenRoot(dest)
			if err != nil {
				return nil, "", &LocalError{err}
			}
			return root, "", nil
		},
		OnFile: func(name string, kind uint8, err error, skipped bool) {
			if name == "" {
				name = dest // the single file that is the destination itself
			}
			if err != nil {
				mu.Lock()
				out.Failures = append(out.Failures, Failure{Path: name, Error: err.Error()})
				mu.Unlock()
			}
			if opts.OnFile != nil {
				opts.OnFile(name, err, skipped)
			}
		},
		OnNotice: func(name, notice string) {
			if opts.Warn != nil {
				opts.Warn(notice)
			}
		},
		OnChunk: func(n int) {
			mu.Lock()
			out.BytesSent += uint64(n)
			done := out.BytesSent
			mu.Unlock()
			if opts.OnProgress != nil {
				opts.OnProgress("", done, 0)
			}
		},
	})
	if err := s.send(&wire.Recv{Channel: id, Flags: flags, Window: uint32(window), Sources: sources}); err != nil {
		return nil, err
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	rctx, abort := context.WithCancel(ctx)
	defer abort()
	fwdErr := make(chan error, 1)
	go func() {
		fwdErr <- s.forward(fctx, inbox, recv.Deliver, func(fd *wire.FileDone) bool {
			if fd.FID != 0 {
				return false
			}
			if fd.Code != 0 { // Code 0: only a notice (a skipped entry)
				mu.Lock()
				out.Failures = append(out.Failures, Failure{Error: fd.Reason})
				mu.Unlock()
			}
			if opts.Warn != nil {
				opts.Warn(fd.Reason)
			}
			return true
		}, abort)
	}()
	err = recv.Run(rctx)
	stop()
	if ferr := <-fwdErr; ferr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		err = ferr // the session ended under the transfer
	}
	err = protocolError(err)
	mu.Lock()
	defer mu.Unlock()
	rs := recv.Stats()
	out.Files, out.Skipped, out.Dirs, out.Links = rs.Files, rs.Skipped, rs.Dirs, rs.Links
	out.BytesSkipped, out.BytesResumed = rs.BytesSkipped, rs.BytesResumed
	out.Seconds = time.Since(start).Seconds()
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("%s: %w", dest, err)
	}
	return out, err
}
