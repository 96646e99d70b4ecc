package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
	"github.com/zpipes/zp/subscriber"
)

// xferChan is a file transfer channel: an upload (zpd receives) or a
// download (zpd sends).
type xferChan struct {
	s      *session
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	recv   *subscriber.Receiver // upload
	send   *publisher.Sender    // download
	ready  chan struct{}        // closed once recv or send is set
}

func (x *xferChan) deliver(m wire.Message) *wire.Error {
	select {
	case <-x.ready:
	default:
		return wire.Errorf(x.id, wire.CodeBadRequest, "%s before the transfer started", m.ID())
	}
	ok := false
	switch {
	case x.recv != nil:
		ok = x.recv.Deliver(m)
	case x.send != nil:
		ok = x.send.Deliver(m)
	}
	if !ok {
		return wire.Errorf(x.id, wire.CodeFlowControl, "more messages in flight than the protocol allows")
	}
	return nil
}

func (x *xferChan) stop()   { x.cancel() }
func (x *xferChan) resend() {}

// detached ends the transfer when its session loses its connection:
// transfers are never resumed on a new connection (docs/PROTOCOL.md §7;
// the client starts a new transfer, which resumes from the partial
// files), so holding on would only keep partial files locked from the
// transfer that replaces this one (chunkstore.LockWait).
func (x *xferChan) detached() { x.s.release(x.id, x) }

// fsThread returns what makes the calling (locked) thread use acct's
// identity for file system access, or nil when zpd already is that user.
// setfsuid, setfsgid and setgroups are issued as raw system calls so they
// change only this thread (Go's own wrappers change every thread).
func (a *Account) fsThread() func() {
	if uint32(os.Geteuid()) == a.UID {
		return nil
	}
	groups := make([]uint32, len(a.Groups))
	copy(groups, a.Groups)
	uid, gid := uintptr(a.UID), uintptr(a.GID)
	return func() {
		var p unsafe.Pointer
		if len(groups) > 0 {
			p = unsafe.Pointer(&groups[0])
		}
		unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(p), 0)
		unix.RawSyscall(unix.SYS_SETFSGID, gid, 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uid, 0, 0)
	}
}

// asUser runs f on a thread with the session user's file system identity
// and waits for it.
func (s *session) asUser(f func() error) error {
	thread := s.acct.fsThread()
	if thread == nil {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with us
		thread()
		errc <- f()
	}()
	return <-errc
}

// userPath resolves a path the client gave: relative to the user's home.
func (s *session) userPath(p string) string {
	if strings.HasPrefix(p, "/") {
		return filepath.Clean(p)
	}
	if p == "" || p == "~" {
		return s.acct.Home
	}
	p = strings.TrimPrefix(p, "~/")
	return filepath.Join(s.acct.Home, p)
}

func (s *session) transfer(id uint32, send *wire.Send, recv *wire.Recv) {
	ctx, cancel := context.WithCancel(s.b.ctx)
	x := &xferChan{s: s, id: id, ctx: ctx, cancel: cancel, ready: make(chan struct{})}
	if !s.addChannel(id, x) {
		cancel()
		return
	}
	if send != nil {
		s.b.spawn(func() { x.upload(send) })
	} else {
		s.b.spawn(func() { x.download(recv) })
	}
}

// upload receives files into the user's destination.
func (x *xferChan) upload(m *wire.Send) {
	s := x.s
	defer x.cancel()
	dest := s.userPath(m.Dest)
	root, mode, asName, err := s.openDest(m.Dest, m.Flags)
	if err != nil {
		s.sendErr(wire.Errorf(x.id, transferCode(err), "%s: %v", m.Dest, unwrapPath(err)))
		s.release(x.id, x)
		return
	}
	defer root.Close()
	window := uint64(s.b.cfg.xferWindow())
	x.recv = subscriber.NewReceiver(subscriber.ReceiverConfig{
		Channel: x.id, Root: root, AsName: asName, Flags: m.Flags,
		Chown: m.Flags&wire.XferPreserve != 0 && (s.acct.UID == 0 && os.Geteuid() == 0),
		// Without -p, what zpd makes gets the source's permission bits
		// less 022, whatever umask zpd itself was started with (README).
		Umask:  uploadUmask,
		Window: window, Send: func(msg wire.Message) error { s.send(msg); return nil },
		Batch:  s.version >= 6,
		Hash:   digest.For(s.version),
		Thread: s.acct.fsThread(),
		OnChunk: func(n int) {
			s.b.m.TransferBytes.WithLabelValues("received").Add(float64(n))
		},
		OnNotice: func(name, notice string) {
			// Someone may have planted a file at a partial's name: the
			// operator sees it in the log, the user as a notice.
			s.b.log.Warn("partial file not resumed", "session", s.id, "user", s.acct.Name, "dest", dest, "path", name, "reason", notice)
			s.send(&wire.FileDone{Channel: x.id, FID: 0, Code: 0, Reason: notice})
		},
		OnFile: func(_ string, kind uint8, err error, skipped bool) {
			if kind != wire.KindFile {
				return
			}
			switch {
			case err != nil:
				s.b.m.TransferFiles.WithLabelValues("failed").Inc()
			case skipped:
				s.b.m.TransferFiles.WithLabelValues("skipped").Inc()
			default:
				s.b.m.TransferFiles.WithLabelValues("copied").Inc()
			}
		},
	})
	close(x.ready)
	s.send(&wire.SendOK{Channel: x.id, Mode: mode, Window: uint32(window), Root: dest})
	if err := x.recv.Run(x.ctx); err != nil && !errors.Is(err, context.Canceled) {
		// The receiver has answered the violation with an ERROR, which
		// ends the channel (PROTOCOL §4).
		s.b.log.Warn("upload ended", "session", s.id, "channel", x.id, "err", err)
		s.release(x.id, x)
	}
}

// openDest opens the destination of an upload or broadcast, as the user:
// with the single flag, one file becomes dest itself (mode TargetAs, its
// name in the root asName) unless dest is a directory or ends in "/";
// otherwise dest is a directory, made if missing (TargetInto).
func (s *session) openDest(typed string, flags uint8) (root *chunkstore.Root, mode uint8, asName string, err error) {
	mode = wire.TargetInto
	dest := s.userPath(typed)
	err = s.asUser(func() error {
		st, err := os.Stat(dest)
		isDir := err == nil && st.IsDir()
		if flags&wire.XferSingle != 0 && !isDir && !strings.HasSuffix(typed, "/") {
			// The one file becomes dest itself.
			mode = wire.TargetAs
			asName = filepath.Base(dest)
			parentDir := filepath.Dir(dest)
			if pst, err := os.Stat(parentDir); err != nil || !pst.IsDir() {
				return fmt.Errorf("%s: no such directory", parentDir)
			}
			root, err = chunkstore.OpenRoot(parentDir)
			return err
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil && !isDir {
			return fmt.Errorf("%s exists and is not a directory", dest)
		}
		if err := os.MkdirAll(dest, 0o755); err != nil {
			return err
		}
		root, err = chunkstore.OpenRoot(dest)
		return err
	})
	return root, mode, asName, err
}

// download sends the user's files to the client.
func (x *xferChan) download(m *wire.Recv) {
	s := x.s
	defer x.cancel()
	sources := make([]string, len(m.Sources))
	for i, src := range m.Sources {
		p := s.userPath(src)
		if strings.HasSuffix(src, "/") && !strings.HasSuffix(p, "/") {
			p += "/" // keep rsync's "contents of" meaning
		}
		sources[i] = p
	}
	single := false
	if len(sources) == 1 && m.Flags&wire.XferSingle != 0 {
		single = true
	}
	x.send = publisher.NewSender(publisher.SenderConfig{
		Channel: x.id, Send: func(msg wire.Message) error { s.send(msg); return nil },
		Window: uint64(m.Window), Chunk: s.b.cfg.xferChunk(), Checksum: m.Flags&wire.XferChecksum != 0,
		Batch:      s.version >= 6,
		Hash:       digest.For(s.version),
		OnProgress: func(string, uint64, uint64) {},
	})
	close(x.ready)
	err := s.asUser(func() error {
		_, err := x.send.Run(x.ctx, func(emit func(publisher.Entry) error) error {
			// A warning (missing source, skipped directory) is a
			// FILE_DONE for entry 0: the client reports it and goes on.
			return publisher.Walk(sources, m.Flags&wire.XferRecursive != 0, single, func(w string, failed bool) {
				var code uint16
				if failed {
					code = uint16(wire.CodeNotFound)
				}
				s.send(&wire.FileDone{Channel: x.id, FID: 0, Code: code, Reason: w})
			}, emit)
		})
		return err
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		s.b.log.Warn("download ended", "session", s.id, "channel", x.id, "err", err)
		var we *wire.Error
		if !errors.As(err, &we) { // not the client's own ERROR: tell it why
			code := wire.CodeInternal
			if errors.Is(err, credit.ErrAck) {
				code = wire.CodeFlowControl
			}
			s.sendErr(wire.Errorf(x.id, code, "download: %v", err))
		}
		s.release(x.id, x)
	}
}

// uploadUmask is the umask of uploads without -p: that of a typical
// login (zpd's own, from however it was started, says nothing about the
// user's wishes).
const uploadUmask = 0o022

func transferCode(err error) wire.Code {
	switch {
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return wire.CodeForbidden
	case errors.Is(err, fs.ErrNotExist):
		return wire.CodeNotFound
	case errors.Is(err, syscall.ENOSPC):
		return wire.CodeNoSpace
	}
	return wire.CodeConflict
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}
