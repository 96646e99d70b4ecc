package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/bufpool"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// ExecRequest describes a command to run remotely.
type ExecRequest struct {
	Argv []string
	Env  map[string]string
	Dir  string
	// Stdin streams to the command until EOF; nil gives it /dev/null. A
	// read that blocks after the command ended is left behind (a terminal
	// stdin): close the reader to release it.
	Stdin io.Reader
	// Shared, instead of Stdin, feeds the command's stdin from a
	// publication on the hub the session's agent belongs to (Fleet.Publish).
	Shared *SharedStdin
	// Stdout and Stderr receive the command's output; nil discards it.
	Stdout, Stderr io.Writer
	// Signals forwards signal names ("INT", "TERM", …) to the command's
	// process group while it runs.
	Signals <-chan string
}

// OutputError is a failure to write the command's output locally (a closed
// pipe, a full disk). The remote command was hung up.
type OutputError struct {
	Stream Stream
	Err    error
}

func (e *OutputError) Error() string { return fmt.Sprintf("writing %s: %v", e.Stream, e.Err) }
func (e *OutputError) Unwrap() error { return e.Err }

// Exec runs a command and returns when it has ended and all its output was
// written. Cancelling ctx abandons the command (the server hangs it up).
func (s *Session) Exec(ctx context.Context, req ExecRequest) (_ *ExitStatus, err error) {
	defer func() { err = public(err) }()
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	window := s.cfg.execWindow()
	flags := uint8(0)
	if req.Stdin != nil && req.Shared != nil {
		return nil, errors.New("client: Stdin or Shared, not both")
	}
	if req.Stdin != nil {
		flags |= wire.ExecStdin
	}
	execMsg := &wire.Exec{Channel: id, Flags: flags, Window: uint32(window), Argv: req.Argv, Env: req.Env, Dir: req.Dir}
	if sh := req.Shared; sh != nil {
		execMsg.Flags |= wire.ExecSharedStdin
		execMsg.Topic, execMsg.Key, execMsg.Record = sh.Topic, append([]byte(nil), sh.Key[:]...), uint32(sh.Record)
	}
	if err := s.send(execMsg); err != nil {
		return nil, err
	}
	started := false
	resumed := s.resumedSignal()
	out := [3]*credit.Receiver{wire.Stdout: credit.NewReceiver(uint64(window)), wire.Stderr: credit.NewReceiver(uint64(window))}
	writers := [3]io.Writer{wire.Stdout: orDiscard(req.Stdout), wire.Stderr: orDiscard(req.Stderr)}
	var stdin *credit.Sender
	pumpCtx, stopPump := context.WithCancel(ctx)
	defer stopPump()
	defer func() {
		if stdin != nil {
			stdin.Close(nil)
		}
	}()
	var exit *ExitStatus
	release := func() { _ = s.send(&wire.Fin{Channel: id}) }
	ackTicker := time.NewTicker(time.Second)
	defer ackTicker.Stop()

	for {
		if exit != nil && (exit.Status == FailedToStart || (out[wire.Stdout].EOF() && out[wire.Stderr].EOF())) {
			release()
			return exit, nil
		}
		var m wire.Message
		select {
		case m = <-inbox:
		case <-resumed:
			// The session was resumed on a new connection: tell the server
			// what we have (it resends the rest), and resend what it has
			// not acknowledged once its ACK arrives.
			resumed = s.resumedSignal()
			if !started {
				_ = s.send(execMsg) // it may have been lost; zpd ignores a duplicate
			}
			for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
				off, lim := out[st].Ack()
				_ = s.send(&wire.Ack{Channel: id, Stream: st, Offset: off, Limit: lim})
			}
			continue
		case sig := <-req.Signals:
			if err := s.send(&wire.Signal{Channel: id, Name: sig}); err != nil {
				return nil, err
			}
			continue
		case <-ackTicker.C:
			// Acknowledge what trickled in, so the server can free its
			// resend buffer even when output is too slow to trigger ACKs.
			for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
				if out[st].Pending() {
					off, lim := out[st].Ack()
					_ = s.send(&wire.Ack{Channel: id, Stream: st, Offset: off, Limit: lim})
				}
			}
			continue
		case <-s.done:
			return nil, s.err
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
		switch m := m.(type) {
		case *wire.ExecOK:
			started = true
			if req.Stdin != nil && stdin == nil {
				stdin = credit.NewSender(uint64(m.Window))
				defer s.track(stdin)()
				go s.pumpStdin(pumpCtx, id, stdin, req.Stdin)
			}
		case *wire.Data:
			if m.Stream != wire.Stdout && m.Stream != wire.Stderr {
				release()
				return nil, fmt.Errorf("server sent data on %s", m.Stream)
			}
			fresh, err := out[m.Stream].Accept(m.Offset, m.Bytes, m.EOF())
			if err != nil {
				release()
				return nil, fmt.Errorf("channel %d: %w", id, err)
			}
			if len(fresh) > 0 {
				if _, err := writers[m.Stream].Write(fresh); err != nil {
					release()
					return nil, &OutputError{Stream: Stream(m.Stream), Err: err}
				}
			}
			bufpool.Put(m.Bytes) // written (an io.Writer keeps nothing)
			if due, off, lim := out[m.Stream].Consumed(len(fresh)); due {
				if err := s.send(&wire.Ack{Channel: id, Stream: m.Stream, Offset: off, Limit: lim}); err != nil {
					return nil, err
				}
			}
		case *wire.Ack:
			if stdin != nil && m.Stream == wire.Stdin {
				r, ok, err := stdin.TakeResend(m.Offset, m.Limit)
				if err != nil {
					release()
					return nil, err
				}
				if ok {
					s.resendStream(id, wire.Stdin, r)
					stdin.ResendDone()
				}
			}
		case *wire.Exit:
			exit = exitFrom(m)
			stopPump()
		case *wire.Error:
			release()
			return nil, m
		}
	}
}

// pumpStdin sends stdin within the server's credit.
func (s *Session) pumpStdin(ctx context.Context, id uint32, ps *credit.Sender, r io.Reader) {
	chunk := s.cfg.chunk()
	ps.ReleaseAcked(bufpool.Put) // rd's buffers, once the server has them
	var rd publisher.Reader
	for {
		n, err := ps.Credit(ctx, chunk)
		if err != nil {
			return
		}
		buf, rerr := rd.Read(r, n)
		if ctx.Err() != nil {
			return
		}
		if len(buf) > 0 {
			off := ps.Sent(buf)
			if s.send(&wire.Data{Channel: id, Stream: wire.Stdin, Offset: off, Bytes: buf}) != nil {
				return
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				s.log.Warn("reading stdin", "err", rerr)
			}
			off := ps.SentEOF()
			_ = s.send(&wire.Data{Channel: id, Stream: wire.Stdin, Offset: off, Flags: wire.DataEOF, Bytes: []byte{}})
			return
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// resendStream sends again what the peer is missing after a resume.
func (s *Session) resendStream(id uint32, st wire.Stream, r credit.Resend) {
	var n int
	for i, off := range r.Offsets {
		n += len(r.Data[i])
		_ = s.send(&wire.Data{Channel: id, Stream: st, Offset: off, Bytes: r.Data[i]})
	}
	if r.EOF {
		_ = s.send(&wire.Data{Channel: id, Stream: st, Offset: r.End, Flags: wire.DataEOF, Bytes: []byte{}})
	}
	s.resent.Add(uint64(n))
}

// Resent counts the octets this session sent again after resumes.
func (s *Session) Resent() uint64 { return s.resent.Load() }
