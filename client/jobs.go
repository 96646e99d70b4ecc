package client

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/bufpool"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
	"github.com/zpipes/zp/subscriber"
)

// request sends a request on a fresh channel and returns the first reply;
// an ERROR reply is returned as a *wire.Error.
func (s *Session) request(ctx context.Context, mk func(ch uint32) wire.Message) (wire.Message, error) {
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	if err := s.send(mk(id)); err != nil {
		return nil, err
	}
	select {
	case m := <-inbox:
		if e, ok := m.(*wire.Error); ok {
			return nil, e
		}
		return m, nil
	case <-s.done:
		return nil, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// StartJob starts a background job and returns its id. A command that
// cannot start still gets an id (its job is recorded as failed-to-start)
// and a non-nil ExitStatus saying why. With req.Stdin, its content is
// uploaded first and becomes the job's stdin.
func (s *Session) StartJob(ctx context.Context, req ExecRequest) (_ string, _ *ExitStatus, err error) {
	defer func() { err = public(err) }()
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	defer func() { _ = s.send(&wire.Fin{Channel: id}) }()
	flags := wire.ExecAsync
	if req.Stdin != nil {
		flags |= wire.ExecStdin
	}
	if err := s.send(&wire.Exec{Channel: id, Flags: flags, Argv: req.Argv, Env: req.Env, Dir: req.Dir}); err != nil {
		return "", nil, err
	}
	var stdin *credit.Sender
	pumpCtx, stopPump := context.WithCancel(ctx)
	defer stopPump()
	job := ""
	for {
		var m wire.Message
		select {
		case m = <-inbox:
		case <-s.done:
			return "", nil, s.err
		case <-ctx.Done():
			return "", nil, ctx.Err()
		}
		switch m := m.(type) {
		case *wire.ExecOK:
			if m.Job != "" {
				job = m.Job
				// A failed start follows at once; otherwise we are done.
				select {
				case next := <-inbox:
					if e, ok := next.(*wire.Exit); ok {
						return job, exitFrom(e), nil
					}
				case <-time.After(50 * time.Millisecond):
				}
				return job, nil, nil
			}
			if req.Stdin != nil && stdin == nil {
				stdin = credit.NewSender(uint64(m.Window))
				go s.pumpStdin(pumpCtx, id, stdin, req.Stdin)
			}
		case *wire.Ack:
			if stdin != nil && m.Stream == wire.Stdin {
				if err := stdin.Ack(m.Offset, m.Limit); err != nil {
					return "", nil, err
				}
			}
		case *wire.Exit:
			return job, exitFrom(m), nil
		case *wire.Error:
			return "", nil, m
		}
	}
}

// Jobs lists this key's jobs on the server, oldest first.
func (s *Session) Jobs(ctx context.Context) ([]*JobInfo, error) {
	m, err := s.request(ctx, func(ch uint32) wire.Message { return &wire.Jobs{Channel: ch} })
	if err != nil {
		return nil, public(err)
	}
	l, ok := m.(*wire.JobList)
	if !ok {
		return nil, &ProtocolError{fmt.Errorf("%s in answer to JOBS", m.ID())}
	}
	out := make([]*JobInfo, 0, len(l.Jobs))
	for _, j := range l.Jobs {
		out = append(out, jobFrom(j))
	}
	return out, nil
}

// JobStatus describes one job; an unknown id is an *Error with
// CodeNotFound.
func (s *Session) JobStatus(ctx context.Context, job string) (*JobInfo, error) {
	info, err := s.jobStatus(ctx, job)
	if err != nil {
		return nil, public(err)
	}
	return jobFrom(info), nil
}

func (s *Session) jobStatus(ctx context.Context, job string) (map[string]string, error) {
	m, err := s.request(ctx, func(ch uint32) wire.Message { return &wire.JobStatus{Channel: ch, Job: job} })
	if err != nil {
		return nil, err
	}
	info, ok := m.(*wire.JobInfo)
	if !ok {
		return nil, &ProtocolError{fmt.Errorf("%s in answer to JOB_STATUS", m.ID())}
	}
	return info.Info, nil
}

// KillJob signals a job's process group ("TERM", "KILL", "INT", …).
func (s *Session) KillJob(ctx context.Context, job, signal string) error {
	_, err := s.request(ctx, func(ch uint32) wire.Message { return &wire.JobKill{Channel: ch, Job: job, Signal: signal} })
	return public(err)
}

// RemoveJob forgets a finished job and deletes its output (a running job
// is an *Error with CodeConflict).
func (s *Session) RemoveJob(ctx context.Context, job string) error {
	_, err := s.request(ctx, func(ch uint32) wire.Message { return &wire.JobRm{Channel: ch, Job: job} })
	return public(err)
}

// followRetry is how long Follow waits to fetch again after zpd refused a
// FETCH (ERROR 429).
const followRetry = 20 * time.Millisecond

// FollowOptions says what Follow writes and from where.
type FollowOptions struct {
	Stdout, Stderr io.Writer // nil: that stream is not followed
	// Start is where each stream starts ([Stdout], [Stderr]);
	// used to continue after a reconnect. Ignored with NoHistory or Tail.
	Start [3]uint64
	// NoHistory starts at the current end of the output.
	NoHistory bool
	// Tail starts each stream at its last Tail lines (0: from Start).
	Tail int
}

// FollowResult is where a Follow stopped.
type FollowResult struct {
	Info *JobInfo  // the job's final description (when Done)
	Next [3]uint64 // offsets reached per stream
	Done bool      // the job ended and every followed stream was delivered
	// History counts octets fetched that existed when Follow started;
	// Missed those published after, which the live path did not deliver
	// (a slow follower, a gap) and that were fetched over the ROUTER.
	History, Missed uint64
	Live            uint64 // octets delivered from live publications
}

// Follow writes a job's output from the start (or opts) as it is
// produced, until the job ends: it subscribes to the job's topic on the
// broker's XPUB, fetches history over the ROUTER up to the live position,
// then applies live publications, and fetches again over any gap (zguide's
// Clone pattern). A follower that falls behind never slows the job or
// other followers. It returns the job's final description; on a lost
// connection it returns the offsets reached with the error, so the caller
// can continue with opts.Start.
func (s *Session) Follow(ctx context.Context, job string, opts FollowOptions) (_ *FollowResult, err error) {
	defer func() { err = public(err) }()
	// Until following starts, where to continue is where we started: a
	// caller that continues from a zero Next would deliver again what it
	// had (a loss while a reconnection waits for FOLLOW_OK did so).
	res := &FollowResult{Next: opts.Start}
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	writers := [3]io.Writer{wire.Stdout: opts.Stdout, wire.Stderr: opts.Stderr}
	var streams uint8
	var followed []wire.Stream
	for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
		if writers[st] != nil {
			streams |= 1 << (st - 1)
			followed = append(followed, st)
		}
	}
	if err := s.send(&wire.Follow{Channel: id, Job: job, Streams: streams}); err != nil {
		return res, err
	}
	var fok *wire.FollowOK
	select {
	case m := <-inbox:
		switch m := m.(type) {
		case *wire.FollowOK:
			fok = m
		case *wire.Error:
			return res, m
		default:
			return res, fmt.Errorf("unexpected %s", m.ID())
		}
	case <-s.done:
		return res, s.err
	case <-ctx.Done():
		return res, ctx.Err()
	}

	// Subscribe first (Clone): whatever is published from now on reaches
	// us live; history up to there comes from FETCH.
	live := make(chan wire.Message, 1024)
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	// Publications are decoded on the connection's reader goroutine
	// (zmtp.Config.OnRecv), their payloads in bufpool buffers that the
	// Follower hands back once written.
	sub, err := s.subscribe(subCtx, fok.Publish, fok.Topic, followed, func(frames [][]byte) {
		if len(frames) < 2 {
			return
		}
		m, err := wire.Decode(frames[1:])
		if err != nil {
			return
		}
		select {
		case live <- m:
		default: // we are behind: the gap is fetched later
			if o, ok := m.(*wire.JobOutput); ok {
				bufpool.Put(o.Bytes)
			}
		}
	})
	if err != nil {
		return res, err
	}
	defer sub.Close()

	start := opts.Start
	var size [3]uint64
	for _, st := range followed {
		size[st] = parseUint(fok.Info[st.String()+"_bytes"])
		switch {
		case opts.NoHistory:
			start[st] = size[st]
		case opts.Tail > 0:
			n, err := s.tailStart(ctx, job, st, size[st], opts.Tail)
			if err != nil {
				return res, err
			}
			start[st] = n
		}
	}
	f := subscriber.NewFollower(followed, start, size, fok.Info, func(st wire.Stream, data []byte) error {
		if _, err := writers[st].Write(data); err != nil {
			return &OutputError{Stream: Stream(st), Err: err}
		}
		return nil
	})
	f.Release = bufpool.Put // writers keep nothing (io.Writer)
	defer func() { res.History, res.Missed, res.Live = f.Stats() }()
	send := func(fetches []subscriber.Fetch) error {
		for _, q := range fetches {
			if err := s.send(&wire.Fetch{Channel: id, Job: job, Stream: q.Stream, Offset: q.Offset, Length: q.Length}); err != nil {
				return err
			}
		}
		return nil
	}
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	var retry <-chan time.Time // after a FETCH was refused: when to fetch again
	for !f.Done() {
		if retry == nil {
			if err := send(f.Fetches()); err != nil {
				res.Next = f.Next()
				return res, err
			}
		}
		select {
		case <-retry:
			retry = nil
		case m := <-inbox:
			switch m := m.(type) {
			case *wire.Data:
				err := f.Data(m)
				bufpool.Put(m.Bytes)
				if err != nil {
					return res, err
				}
			case *wire.FetchOK:
				f.FetchOK(m)
			case *wire.Error:
				if m.Code == wire.CodeTooMany {
					// FETCH is a request, not a channel: a refused one
					// is asked again (PROTOCOL §9.2).
					f.Refused()
					if retry == nil {
						retry = time.After(followRetry)
					}
					continue
				}
				res.Next = f.Next()
				return res, m
			}
		case m := <-live:
			if err := f.Live(m); err != nil {
				return res, err
			}
		case <-poll.C:
			fetches, askStatus := f.Tick()
			if err := send(fetches); err != nil {
				res.Next = f.Next()
				return res, err
			}
			if askStatus {
				if st, err := s.jobStatus(ctx, job); err == nil && st["done"] == "true" {
					f.End(st)
				}
			}
		case <-s.done:
			res.Next = f.Next()
			return res, s.err
		case <-ctx.Done():
			res.Next = f.Next()
			return res, ctx.Err()
		}
	}
	res.Next = f.Next()
	res.Done = true
	info := f.Info()
	if st, err := s.jobStatus(ctx, job); err == nil {
		info = st
	}
	res.Info = jobFrom(info)
	return res, nil
}

// tailStart finds the offset of the last n lines of a stream.
func (s *Session) tailStart(ctx context.Context, job string, st wire.Stream, size uint64, n int) (uint64, error) {
	const step = 64 << 10
	end := size
	lines := 0
	for end > 0 {
		start := uint64(0)
		if end > step {
			start = end - step
		}
		data, err := s.fetchRange(ctx, job, st, start, end)
		if err != nil {
			return 0, err
		}
		for i := len(data) - 1; i >= 0; i-- {
			if data[i] != '\n' || start+uint64(i) == size-1 {
				continue
			}
			lines++
			if lines == n {
				return start + uint64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}

// fetchRange reads [start, end) of a job's stream.
func (s *Session) fetchRange(ctx context.Context, job string, st wire.Stream, start, end uint64) ([]byte, error) {
	id, inbox := s.openChannel()
	defer s.closeChannel(id)
	if err := s.send(&wire.Fetch{Channel: id, Job: job, Stream: st, Offset: start, Length: uint32(end - start)}); err != nil {
		return nil, err
	}
	var out []byte
	for {
		select {
		case m := <-inbox:
			switch m := m.(type) {
			case *wire.Data:
				out = append(out, m.Bytes...)
			case *wire.FetchOK:
				return out, nil
			case *wire.Error:
				return nil, m
			}
		case <-s.done:
			return nil, s.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// subscribe connects a SUB to the broker's XPUB with the session's
// security and subscribes to the streams' topics.
// Each message goes to onRecv on its connection's reader goroutine; the
// socket's Recv returns nothing but its end.
func (s *Session) subscribe(ctx context.Context, publish, topic string, streams []wire.Stream, onRecv func([][]byte)) (zmq4.Socket, error) {
	ep := publish
	if strings.HasPrefix(publish, ":") && s.cfg.DialPublish == nil {
		host, _, err := net.SplitHostPort(strings.TrimPrefix(s.cfg.Endpoint, "tcp://"))
		if err != nil {
			return nil, fmt.Errorf("publish endpoint: %w", err)
		}
		ep = "tcp://" + net.JoinHostPort(host, publish[1:])
	}
	zep := zmtp.SchemeDial + "://publish" // DialPublish: a tunnel
	if s.cfg.DialPublish == nil {
		var err error
		if zep, err = zmtp.Endpoint(ep); err != nil {
			return nil, err
		}
	}
	zcfg := &zmtp.Config{Mechanism: s.cfg.mech, SocketType: string(zmq4.Sub),
		HandshakeTimeout: s.cfg.connectTimeout(), OnFull: zmtp.Block,
		MaxFrame: wire.MaxHeader + 64, MaxMessage: wire.MaxHeader + wire.MaxData + 256, MaxFrames: 3,
		Dial: s.cfg.DialPublish, OnRecv: func(_ []byte, frames [][]byte) { onRecv(frames) }}
	sub := zmq4.NewSub(zmtp.WithConfig(ctx, zcfg), zmq4.WithDialerMaxRetries(0),
		zmq4.WithDialerTimeout(s.cfg.connectTimeout()), zmq4.WithLogger(log.New(io.Discard, "", 0)))
	topics := []string{topic + "x"}
	for _, st := range streams {
		topics = append(topics, fmt.Sprintf("%s%d", topic, st))
	}
	for _, t := range topics {
		if err := sub.SetOption(zmq4.OptionSubscribe, t); err != nil {
			sub.Close()
			return nil, err
		}
	}
	if err := sub.Dial(zep); err != nil {
		sub.Close()
		return nil, fmt.Errorf("subscribing to %s: %w", ep, unwrapDial(err))
	}
	return sub, nil
}

func parseUint(s string) uint64 {
	var v uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}
