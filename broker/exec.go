package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/bufpool"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// stdinItem is a piece of stdin queued for the writer goroutine.
type stdinItem struct {
	data []byte
	eof  bool
}

// execChan is one running command of a session (an exec channel).
type execChan struct {
	s      *session
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc

	out    [3]*credit.Sender // [wire.Stdout], [wire.Stderr]
	in     *credit.Receiver  // nil without stdin
	stdinQ chan stdinItem

	sendMu   sync.Mutex // held while sending a message of the channel
	released bool       // under sendMu: send nothing more

	mu      sync.Mutex
	pipes   []*os.File // zpd's ends of the command's pipes, closed by stop
	pgid    int        // 0 until started
	okMsg   *wire.ExecOK
	exit    *wire.Exit
	stopped bool        // the client abandoned it (FIN, session end)
	slot    bool        // holds one of its user's running commands (limits)
	failed  *wire.Error // zpd could not run it (its own failure, not the command's)
}

// releaseSlot gives the user's command slot back once: when the command
// ended, or it never started, or its job took the slot over.
func (ch *execChan) releaseSlot() {
	ch.mu.Lock()
	held := ch.slot
	ch.slot = false
	ch.mu.Unlock()
	if held {
		ch.s.b.limits.release(limCommands, ch.s.acct.Name)
	}
}

func newExecChan(s *session, id uint32, window uint32, stdin bool) *execChan {
	ctx, cancel := context.WithCancel(context.Background())
	ch := &execChan{s: s, id: id, ctx: ctx, cancel: cancel}
	// A window of 0 grants nothing until the client's first ACK; more
	// than zpd allows is capped.
	w := min(uint64(window), uint64(s.b.cfg.execWindow()))
	ch.out[wire.Stdout] = credit.NewSender(w)
	ch.out[wire.Stderr] = credit.NewSender(w)
	if stdin {
		ch.in = credit.NewReceiver(uint64(s.b.cfg.execWindow()))
		ch.stdinQ = make(chan stdinItem, credit.MaxInflight+16)
	}
	return ch
}

// run starts the command and reports its end. It owns the process.
func (ch *execChan) run(m *wire.Exec) {
	defer ch.releaseSlot()
	if m.Flags&wire.ExecAsync != 0 {
		ch.runAsync(m)
		return
	}
	b := ch.s.b
	acct := ch.s.acct
	env, dir, path, code, err := acct.resolve(m)
	if err != nil {
		ch.finish(&wire.Exit{Channel: ch.id, Status: wire.FailedToStart, Code: uint32(code), Message: err.Error()})
		return
	}

	var files []*os.File // parent's ends
	var child []*os.File // child's ends, closed after start
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	cmd := &exec.Cmd{Path: path, Args: m.Argv, Env: env, Dir: dir,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Credential: acct.credential()}}
	var stdinW *os.File
	shared := m.Flags&wire.ExecSharedStdin != 0
	if ch.in != nil || shared {
		r, w, err := os.Pipe()
		if err != nil {
			ch.fail(zpdFailure(ch.id, "make the command's stdin pipe", err))
			return
		}
		setPipeSize(w)
		cmd.Stdin, stdinW = r, w
		child = append(child, r)
	}
	var outR [3]*os.File
	for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			if stdinW != nil {
				stdinW.Close()
			}
			ch.fail(zpdFailure(ch.id, "make the command's output pipes", err))
			return
		}
		setPipeSize(r)
		outR[st] = r
		files = append(files, r)
		child = append(child, w)
		if st == wire.Stdout {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
	}
	if err := cmd.Start(); err != nil {
		for _, f := range files {
			f.Close()
		}
		if stdinW != nil {
			stdinW.Close()
		}
		if isResourceFailure(err) {
			ch.fail(zpdFailure(ch.id, "start the command", err))
		} else {
			ch.finish(startFailure(ch.id, err))
		}
		return
	}
	for _, f := range child {
		f.Close()
	}
	child = nil
	started := time.Now()
	ch.mu.Lock()
	ch.pipes = append(files, stdinW)
	ch.pgid = cmd.Process.Pid
	stopped := ch.stopped
	ch.mu.Unlock()
	if stopped { // abandoned while starting
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGHUP)
	}
	b.m.ExecStarted.Inc()
	b.m.ExecRunning.Inc()
	b.log.Debug("exec started", "session", ch.s.id, "channel", ch.id, "pid", cmd.Process.Pid, "user", acct.Name)

	var window uint32
	if ch.in != nil {
		window = uint32(b.cfg.execWindow())
	}
	ok := &wire.ExecOK{Channel: ch.id, Job: "", PID: uint32(cmd.Process.Pid), Window: window}
	ch.mu.Lock()
	ch.okMsg = ok
	ch.mu.Unlock()
	ch.send(ok)

	var pumps sync.WaitGroup
	for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
		pumps.Add(1)
		b.spawn(func() {
			defer pumps.Done()
			ch.pump(st, outR[st])
		})
	}
	switch {
	case stdinW != nil && shared:
		b.spawn(func() { ch.feedShared(stdinW, m) })
	case stdinW != nil:
		b.spawn(func() { ch.writeStdin(stdinW) })
	}
	if err := waitExited(b.ctx, cmd.Process.Pid); err != nil {
		if b.ctx.Err() != nil {
			// zpd is stopping: the command got SIGHUP with its session and
			// may outlive zpd (as a nohup'd command outlives sshd); it is
			// not waited for, so that zpd can exit.
			return
		}
		if !errors.Is(err, errNoPidfd) {
			b.log.Warn("waiting for a command through its pidfd", "session", ch.s.id, "channel", ch.id, "err", err)
		}
	}
	waitErr := cmd.Wait() // reaps at once: the command has exited
	pumps.Wait()
	b.m.ExecRunning.Dec()
	b.m.ExecDuration.Observe(time.Since(started).Seconds())

	exit := &wire.Exit{Channel: ch.id}
	var ws syscall.WaitStatus
	if cmd.ProcessState != nil {
		ws, _ = cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	switch {
	case cmd.ProcessState == nil:
		exit.Status, exit.Code, exit.Message = wire.Exited, 255, fmt.Sprint(waitErr)
	case ws.Signaled():
		exit.Status, exit.Code = wire.Signaled, uint32(ws.Signal())
	default:
		exit.Status, exit.Code = wire.Exited, uint32(ws.ExitStatus())
	}
	ch.finish(exit)
}

// pump sends one output stream, never reading more from the pipe than the
// client has granted: a slow client blocks the command's writes.
func (ch *execChan) pump(st wire.Stream, f *os.File) {
	defer f.Close()
	ps := ch.out[st]
	ps.ReleaseAcked(bufpool.Put) // rd's buffers, once the client has them
	b := ch.s.b
	var rd publisher.Reader
	for {
		n, err := ps.Credit(ch.ctx, b.cfg.execChunk())
		if err != nil {
			return // abandoned: closing f gives the command EPIPE, as under ssh
		}
		buf, rerr := rd.ReadPipe(f, n)
		if len(buf) > 0 {
			off := ps.Sent(buf)
			b.m.Bytes.WithLabelValues("out", "exec").Add(float64(len(buf)))
			ch.send(&wire.Data{Channel: ch.id, Stream: st, Offset: off, Bytes: buf})
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) && !errors.Is(rerr, fs.ErrClosed) {
				b.log.Warn("reading command output", "session", ch.s.id, "channel", ch.id, "stream", st.String(), "err", rerr)
			}
			off := ps.SentEOF()
			ch.send(&wire.Data{Channel: ch.id, Stream: st, Offset: off, Flags: wire.DataEOF, Bytes: []byte{}})
			return
		}
	}
}

// deliver implements channel.
func (ch *execChan) deliver(m wire.Message) *wire.Error {
	switch m := m.(type) {
	case *wire.Data:
		if m.Stream != wire.Stdin {
			return wire.Errorf(m.Channel, wire.CodeBadRequest, "clients send only stdin")
		}
		return ch.acceptStdin(m)
	case *wire.Ack:
		if m.Stream != wire.Stdout && m.Stream != wire.Stderr {
			return wire.Errorf(m.Channel, wire.CodeBadRequest, "no stream %d to acknowledge", m.Stream)
		}
		r, ok, err := ch.out[m.Stream].TakeResend(m.Offset, m.Limit)
		if err != nil {
			return wire.Errorf(m.Channel, wire.CodeFlowControl, "%v", err)
		}
		if ok {
			n := 0
			for i, off := range r.Offsets {
				n += len(r.Data[i])
				ch.send(&wire.Data{Channel: ch.id, Stream: m.Stream, Offset: off, Bytes: r.Data[i]})
			}
			if r.EOF {
				ch.send(&wire.Data{Channel: ch.id, Stream: m.Stream, Offset: r.End, Flags: wire.DataEOF, Bytes: []byte{}})
			}
			ch.out[m.Stream].ResendDone()
			ch.s.b.m.Resent.Add(float64(n))
		}
		return nil
	case *wire.Signal:
		return ch.signal(m.Name)
	}
	return wire.Errorf(ch.id, wire.CodeBadRequest, "unexpected %s on an exec channel", m.ID())
}

// acceptStdin queues stdin from the client; called by the receive loop,
// never blocks.
func (ch *execChan) acceptStdin(m *wire.Data) *wire.Error {
	if ch.in == nil {
		return wire.Errorf(ch.id, wire.CodeBadRequest, "channel %d has no stdin", ch.id)
	}
	fresh, err := ch.in.Accept(m.Offset, m.Bytes, m.EOF())
	if err != nil {
		return wire.Errorf(ch.id, wire.CodeFlowControl, "stdin: %v", err)
	}
	if len(fresh) == 0 && !m.EOF() {
		return nil
	}
	ch.s.b.m.Bytes.WithLabelValues("in", "exec").Add(float64(len(fresh)))
	select {
	case ch.stdinQ <- stdinItem{data: fresh, eof: m.EOF()}:
		return nil
	default:
		return wire.Errorf(ch.id, wire.CodeFlowControl, "stdin: more than %d messages in flight", credit.MaxInflight)
	}
}

// writeStdin feeds the command's stdin and acknowledges what it wrote. When
// the command stops reading (exits, closes stdin) the rest is discarded but
// still acknowledged, so the client is never stuck.
func (ch *execChan) writeStdin(w *os.File) {
	defer w.Close()
	ch.copyStdin(w)
}

// copyStdin writes stdin to w until EOF (true) or abandonment (false);
// werr is the first write error (what was sent after it was discarded).
func (ch *execChan) copyStdin(w io.Writer) (ok bool, werr error) {
	broken := false
	for {
		select {
		case <-ch.ctx.Done():
			return false, werr
		case it := <-ch.stdinQ:
			if len(it.data) > 0 && !broken {
				if _, err := w.Write(it.data); err != nil {
					broken, werr = true, err
				}
			}
			bufpool.Put(it.data) // the payload of its DATA: written or discarded
			if due, off, lim := ch.in.Consumed(len(it.data)); due || it.eof {
				if !due {
					off, lim = ch.in.Ack()
				}
				ch.send(&wire.Ack{Channel: ch.id, Stream: wire.Stdin, Offset: off, Limit: lim})
			}
			if it.eof {
				return !broken, werr
			}
		}
	}
}

// runAsync starts a background job. With stdin, the client's stdin is
// spooled to an unlinked file first (EXEC_OK without a job id grants the
// credit), and the job starts when it ends; the job's EXEC_OK follows.
func (ch *execChan) runAsync(m *wire.Exec) {
	jm := ch.s.b.jobs
	var spool *os.File
	if ch.in != nil {
		f, err := os.CreateTemp(jm.dir, ".stdin-")
		if err != nil {
			ch.fail(zpdFailure(ch.id, "spool the job's stdin", err))
			return
		}
		os.Remove(f.Name()) // the job gets the open file
		defer f.Close()
		ch.send(&wire.ExecOK{Channel: ch.id, Window: uint32(ch.s.b.cfg.execWindow())})
		if ok, err := ch.copyStdin(f); !ok {
			if err != nil { // the spool failed (disk full): no job
				ch.fail(zpdFailure(ch.id, "spool the job's stdin", err))
			}
			return // or abandoned
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			ch.fail(zpdFailure(ch.id, "spool the job's stdin", err))
			return
		}
		spool = f
	}
	// A job that starts takes the user's command slot over until it ends.
	ch.mu.Lock()
	slot := ch.slot
	ch.slot = false
	ch.mu.Unlock()
	j, exit, zerr := jm.start(ch.s.b.ctx, ch.s, m, spool, slot)
	if slot && (exit != nil || zerr != nil) {
		ch.s.b.limits.release(limCommands, ch.s.acct.Name)
	}
	if zerr != nil {
		ch.fail(zerr)
		return
	}
	if j != nil {
		j.mu.Lock()
		id, pid := j.meta.ID, j.meta.ShimPID
		j.mu.Unlock()
		ch.send(&wire.ExecOK{Channel: ch.id, Job: id, PID: uint32(pid)})
	}
	if exit != nil {
		ch.finish(exit)
	}
}

// fail reports that zpd itself could not run the command (out of
// descriptors or processes, its state directory full): an ERROR on the
// channel, so that the client reports zpd's failure (zp exits 255) rather
// than an exit code the command never had. Kept to resend after a resume.
func (ch *execChan) fail(e *wire.Error) {
	ch.mu.Lock()
	ch.failed = e
	ch.mu.Unlock()
	ch.s.b.log.Warn("could not run a command", "session", ch.s.id, "channel", ch.id, "user", ch.s.acct.Name, "code", int(e.Code), "err", e.Reason)
	ch.send(e)
	ch.s.release(ch.id, ch) // an ERROR ends the channel (PROTOCOL §4)
}

// isResourceFailure tells zpd's own lack of resources (descriptors,
// processes, memory) from a command that cannot be executed.
func isResourceFailure(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOMEM)
}

// zpdFailure describes zpd's own failure to do something for a command:
// 503 when it lacks descriptors, processes or memory (it may work again
// soon), 507 when its disk is full, else 500.
func zpdFailure(channel uint32, what string, err error) *wire.Error {
	code, hint := wire.CodeInternal, ""
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		code, hint = wire.CodeUnavailable, " (zpd's open-file limit: ulimit -n, systemd LimitNOFILE)"
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.ENOMEM):
		code, hint = wire.CodeUnavailable, " (out of processes or memory)"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		code, hint = wire.CodeNoSpace, " (zpd's state directory)"
	}
	return wire.Errorf(channel, code, "zpd could not %s: %v%s", what, err, hint)
}

// finish records the end of the command and reports it; the report is kept
// until the client releases the channel, to resend after a reconnect.
func (ch *execChan) finish(exit *wire.Exit) {
	b := ch.s.b
	result := "exited_zero"
	switch {
	case exit.Status == wire.FailedToStart:
		result = "failed_to_start"
	case exit.Status == wire.Signaled:
		result = "signaled"
	case exit.Code != 0:
		result = "exited_nonzero"
	}
	ch.mu.Lock()
	if ch.stopped && exit.Status != wire.FailedToStart {
		result = "lost"
	}
	ch.exit = exit
	ch.mu.Unlock()
	b.m.ExecFinished.WithLabelValues(result).Inc()
	b.log.Debug("exec finished", "session", ch.s.id, "channel", ch.id, "status", exit.Status, "code", exit.Code)
	ch.send(exit)
}

// send sends a message of this channel, unless the channel was released
// (FIN, an ERROR that ended it, the end of the session): nothing follows
// that on the wire. sendMu orders sends against the release.
func (ch *execChan) send(m wire.Message) {
	ch.sendMu.Lock()
	defer ch.sendMu.Unlock()
	if ch.released {
		return
	}
	ch.s.send(m)
}

// signalNum parses a signal name with or without "SIG"; 0 if unknown.
func signalNum(name string) syscall.Signal {
	return unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG"))
}

func syscallSignalName(s syscall.Signal) string { return unix.SignalName(s) }

// signal delivers a signal to the command's process group.
func (ch *execChan) signal(name string) *wire.Error {
	sig := signalNum(name)
	if sig == 0 {
		return wire.Errorf(ch.id, wire.CodeBadRequest, "unknown signal %q", name)
	}
	ch.mu.Lock()
	pgid := ch.pgid
	done := ch.exit != nil
	ch.mu.Unlock()
	if pgid == 0 || done {
		return nil // not started yet, or already gone: nothing to signal
	}
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return wire.Errorf(ch.id, wire.CodeInternal, "signal: %v", err)
	}
	return nil
}

// stop abandons the channel: the command gets SIGHUP (as when an ssh
// connection drops), its pipes close, the goroutines end.
func (ch *execChan) stop() {
	ch.sendMu.Lock()
	ch.released = true
	ch.sendMu.Unlock()
	ch.mu.Lock()
	if ch.stopped {
		ch.mu.Unlock()
		return
	}
	ch.stopped = true
	pgid, done := ch.pgid, ch.exit != nil
	pipes := ch.pipes
	ch.mu.Unlock()
	if pgid != 0 && !done {
		_ = syscall.Kill(-pgid, syscall.SIGHUP)
	}
	ch.cancel()
	// A pump blocked reading output (or a writer blocked on a full stdin)
	// returns when its pipe is closed, as under ssh the command then gets
	// EPIPE: the channel's goroutines end now, not when the command does.
	for _, f := range pipes {
		if f != nil {
			f.Close()
		}
	}
	for _, ps := range ch.out {
		if ps != nil {
			ps.Close(nil)
		}
	}
}

func startFailure(channel uint32, err error) *wire.Exit {
	code := uint32(126)
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = fmt.Sprintf("%s: %v", pe.Path, pe.Err)
		if errors.Is(pe.Err, syscall.ENOENT) && pe.Op != "chdir" {
			code = 127
		}
	}
	return &wire.Exit{Channel: channel, Status: wire.FailedToStart, Code: code, Message: msg}
}

// resolve prepares a command for acct: its environment, working directory
// (the home, or / when the home is not usable) and executable, looked up
// in the command's PATH; code is 127/126 when it cannot be started, 1 when
// the working directory asked for does not exist (as "cd DIR && cmd").
func (a *Account) resolve(m *wire.Exec) (env []string, dir, path string, code int, err error) {
	env = a.environ(m.Env)
	pathEnv := a.defaultPath()
	if p, ok := m.Env["PATH"]; ok {
		pathEnv = p
	}
	dir = m.Dir
	if dir == "" {
		dir = a.Home
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			dir = "/"
		}
	} else if !filepath.IsAbs(dir) {
		dir = filepath.Join(a.Home, dir)
	}
	if st, err := os.Stat(dir); m.Dir != "" && (err != nil || !st.IsDir()) {
		why := "not a directory"
		if err != nil {
			why = "no such file or directory"
			if !errors.Is(err, fs.ErrNotExist) {
				why = err.(*fs.PathError).Err.Error()
			}
		}
		return env, dir, "", 1, fmt.Errorf("cd: %s: %s", dir, why)
	}
	path, code, err = lookPath(m.Argv[0], pathEnv, dir)
	return env, dir, path, code, err
}

// lookPath finds argv0 in pathEnv (the command's PATH, not zpd's) like a
// shell: 127 when not found, 126 when found but not executable.
func lookPath(argv0, pathEnv, dir string) (string, int, error) {
	if strings.Contains(argv0, "/") {
		p := argv0
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		st, err := os.Stat(p)
		switch {
		case err != nil:
			return "", 127, fmt.Errorf("%s: no such file or directory", argv0)
		case st.IsDir() || st.Mode()&0o111 == 0:
			return "", 126, fmt.Errorf("%s: permission denied", argv0)
		}
		return p, 0, nil
	}
	denied := ""
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, argv0)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		st, err := os.Stat(p)
		if err != nil || st.IsDir() {
			continue
		}
		if st.Mode()&0o111 == 0 {
			denied = p
			continue
		}
		return p, 0, nil
	}
	if denied != "" {
		return "", 126, fmt.Errorf("%s: permission denied", denied)
	}
	return "", 127, fmt.Errorf("%s: command not found", argv0)
}

// setPipeSize enlarges a pipe to 1 MiB (the unprivileged maximum) so that
// bulk output moves in large reads. SyscallConn, not Fd: Fd would switch
// the pipe to blocking mode and take it off the poller.
func setPipeSize(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20)
	})
}
