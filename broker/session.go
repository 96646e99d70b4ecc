package broker

import (
	"crypto/rand"
	"io"
	"log"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/wire"
)

type sessState int

const (
	attached sessState = iota
	detached
	ended
)

// session is one client's session. It outlives its connection for the
// grace period, so that a client can resume it.
type session struct {
	b     *Broker
	id    string
	token []byte
	key   []byte
	acct  *Account
	// version is the protocol version of the session (OPEN's).
	version uint16
	// fleetOnly: a hub's fleet client whose key is not authorised for the
	// user here; it may only use the fleet (hub.go).
	fleetOnly bool

	mu       sync.Mutex
	conn     *connInfo // nil while detached
	st       sessState
	since    time.Time // last message (attached) or detach time (detached)
	channels map[uint32]channel
	resumes  int           // times the session was resumed
	fetchSem chan struct{} // bounds concurrent FETCHes
}

func newSession(b *Broker, acct *Account, c *connInfo) *session {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	return &session{
		b: b, id: newSessionID(), token: token, key: c.key, acct: acct,
		conn: c, st: attached, since: time.Now(),
		channels: make(map[uint32]channel),
		fetchSem: make(chan struct{}, 2),
	}
}

func (s *session) state() (sessState, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st, s.since
}

func (s *session) currentConn() *connInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// send delivers m to the client if it is connected; while detached the
// message is dropped (streams resend what was not acknowledged on resume).
func (s *session) send(m wire.Message) bool {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return false
	}
	s.b.reply(c.id, m)
	return true
}

// detach is called when the session's connection closes.
func (s *session) detach(c *connInfo) {
	s.mu.Lock()
	if s.conn != c || s.st != attached {
		s.mu.Unlock()
		return
	}
	s.conn = nil
	s.st = detached
	s.since = time.Now()
	var ends []interface{ detached() }
	for _, ch := range s.channels {
		if d, ok := ch.(interface{ detached() }); ok {
			ends = append(ends, d)
		}
	}
	s.mu.Unlock()
	s.b.m.SessionsDetached.Inc()
	s.b.log.Info("session detached", "session", s.id, "grace", s.b.cfg.grace())
	for _, d := range ends {
		d.detached() // transfers: see xferChan.detached
	}
}

// attach binds the session to a new connection; false if it ended.
func (s *session) attach(c *connInfo) bool {
	s.mu.Lock()
	if s.st == ended {
		s.mu.Unlock()
		return false
	}
	old := s.conn
	wasDetached := s.st == detached
	s.resumes++
	s.conn = c
	s.st = attached
	s.since = time.Now()
	s.mu.Unlock()
	s.b.mu.Lock()
	c.sess = s
	if old != nil {
		old.sess = nil
	}
	s.b.mu.Unlock()
	if wasDetached {
		s.b.m.SessionsDetached.Dec()
	}
	if old != nil {
		old.close() // a half-dead connection the client gave up on
	}
	return true
}

// resumeStreams answers a resume: OPEN_OK, then for every channel an ACK of
// what we received (so the client resends the rest) and a resend of what
// the client has not acknowledged, then any EXIT it missed.
func (s *session) resumeStreams(ok *wire.OpenOK) {
	s.send(ok)
	s.mu.Lock()
	chans := make([]channel, 0, len(s.channels))
	for _, ch := range s.channels {
		chans = append(chans, ch)
	}
	s.mu.Unlock()
	for _, ch := range chans {
		ch.resend()
	}
}

// channel is a conversation of a session: an exec or a transfer.
type channel interface {
	// deliver takes a message for the channel; it never blocks.
	deliver(m wire.Message) *wire.Error
	// stop abandons the channel.
	stop()
	// resend replays what the client may have missed after a resume.
	resend()
}

// handle processes a message of this session; called by the receive loop,
// so nothing here may block.
func (s *session) handle(m wire.Message) {
	s.mu.Lock()
	s.since = time.Now()
	s.mu.Unlock()
	if s.b.hub.session(s, m) {
		return
	}
	switch m := m.(type) {
	case *wire.Ping:
		s.send(&wire.Pong{Seq: m.Seq})
	case *wire.Pong:
	case *wire.Close:
		c := s.currentConn()
		s.end("client closed the session")
		if c != nil {
			s.b.reply(c.id, &wire.OK{}) // the session is gone: the client may close
		}
	case *wire.Exec:
		s.exec(m)
	case *wire.Send:
		s.transfer(m.Channel, m, nil)
	case *wire.Recv:
		s.transfer(m.Channel, nil, m)
	case *wire.Bcast:
		s.bcast(m)
	case *wire.Fin:
		if ch := s.channel(m.Channel); ch != nil {
			s.release(m.Channel, ch)
		}
	case *wire.Batch:
		if s.version < 6 {
			s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "BATCH needs protocol version 6 (this session speaks %d)", s.version))
			return
		}
		// Each message as if it had come alone: the decoder let in only
		// FILE, FILE_OK, COMMIT, FILE_DONE and ACK of the batch's channel.
		for _, in := range m.Msgs {
			s.handle(in)
		}
	case *wire.Data, *wire.Ack, *wire.Signal, *wire.File, *wire.FileOK, *wire.Chunk, *wire.Commit, *wire.FileDone, *wire.End, *wire.BcastGo, *wire.BcastChunks, *wire.BcastGoChunks:
		id, _ := wire.ChannelOf(m)
		ch := s.channel(id)
		if ch == nil {
			if _, ok := m.(*wire.Ack); ok {
				return // a late ACK for a released channel
			}
			s.sendErr(wire.Errorf(id, wire.CodeNotFound, "no channel %d", id))
			return
		}
		if e := ch.deliver(m); e != nil {
			s.failChannel(id, ch, e)
		}
	case *wire.Jobs:
		s.send(&wire.JobList{Channel: m.Channel, Jobs: s.b.jobs.list(s)})
	case *wire.JobStatus:
		if j := s.job(m.Channel, m.Job); j != nil {
			s.send(&wire.JobInfo{Channel: m.Channel, Info: j.info()})
		}
	case *wire.JobKill:
		if j := s.job(m.Channel, m.Job); j != nil {
			if e := j.kill(m.Signal); e != nil {
				e.Channel = m.Channel
				s.sendErr(e)
			} else {
				s.send(&wire.OK{Channel: m.Channel})
			}
		}
	case *wire.JobRm:
		if j := s.job(m.Channel, m.Job); j != nil {
			// Deleting the output is file system work: off the receive loop.
			s.b.spawn(func() {
				if e := s.b.jobs.remove(j); e != nil {
					e.Channel = m.Channel
					s.sendErr(e)
				} else {
					s.send(&wire.OK{Channel: m.Channel})
				}
			})
		}
	case *wire.Follow:
		if j := s.job(m.Channel, m.Job); j != nil {
			j.mu.Lock()
			topic := j.meta.Topic
			j.mu.Unlock()
			s.b.grants.grant(s.key, topic) // before the client can subscribe
			s.send(&wire.FollowOK{Channel: m.Channel, Topic: topic, Publish: s.b.publishEndpoint(), Info: j.info()})
		}
	case *wire.Fetch:
		if j := s.job(m.Channel, m.Job); j != nil {
			select {
			case s.fetchSem <- struct{}{}:
				s.b.spawn(func() {
					s.b.jobs.fetch(s, j, m, func() { <-s.fetchSem })
				})
			default:
				s.sendErr(wire.Errorf(m.Channel, wire.CodeTooMany, "too many fetches in progress"))
			}
		}
	default:
		s.sendErr(wire.Errorf(0, wire.CodeBadRequest, "unexpected %s from a client", m.ID()))
	}
}

func (s *session) sendErr(e *wire.Error) { s.send(e) }

// failChannel answers a message of channel id with e and ends the channel:
// an ERROR on a channel ends it (PROTOCOL §4), and nothing of it follows
// the ERROR on the wire.
func (s *session) failChannel(id uint32, ch channel, e *wire.Error) {
	if ec, ok := ch.(*execChan); ok {
		ec.send(e)
	} else {
		s.sendErr(e)
	}
	s.release(id, ch)
}

// job finds a job the session may see, or answers 404.
func (s *session) job(channel uint32, id string) *job {
	j := s.b.jobs.lookup(s, id)
	if j == nil {
		s.sendErr(wire.Errorf(channel, wire.CodeNotFound, "no job %s", id))
	}
	return j
}

func (s *session) channel(id uint32) channel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.channels[id]
}

func (s *session) exec(m *wire.Exec) {
	s.mu.Lock()
	if _, dup := s.channels[m.Channel]; dup && s.resumes > 0 {
		s.mu.Unlock()
		return // resent by a client that lost our EXEC_OK: resend() covered it
	}
	if m.Channel == 0 {
		s.mu.Unlock()
		s.sendErr(wire.Errorf(0, wire.CodeBadRequest, "EXEC on channel 0 (the session itself)"))
		return
	}
	if _, dup := s.channels[m.Channel]; dup {
		// On channel 0: an ERROR on the channel would end the one in use.
		s.mu.Unlock()
		s.sendErr(wire.Errorf(0, wire.CodeConflict, "channel %d is in use", m.Channel))
		return
	}
	if len(s.channels) >= s.b.cfg.maxChannels() {
		s.mu.Unlock()
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d channels", s.b.cfg.maxChannels()))
		return
	}
	if m.Flags&wire.ExecSharedStdin != 0 && s.b.agent == nil {
		s.mu.Unlock()
		s.sendErr(wire.Errorf(m.Channel, wire.CodeNotFound, "shared stdin: this zpd is not a fleet agent"))
		return
	}
	if e := s.b.limits.acquire(limCommands, s.acct.Name); e != nil {
		s.mu.Unlock()
		e.Channel = m.Channel
		s.sendErr(e)
		return
	}
	ch := newExecChan(s, m.Channel, m.Window, m.Flags&wire.ExecStdin != 0)
	ch.slot = true
	s.channels[m.Channel] = ch
	s.mu.Unlock()
	s.b.spawn(func() { ch.run(m) })
}

// addChannel registers a new channel unless the id is taken or too many
// are open; it reports false after answering the error.
func (s *session) addChannel(id uint32, ch channel) bool {
	if e := s.admitChannel(id, ch); e != nil {
		s.sendErr(e) // not under s.mu
		return false
	}
	return true
}

func (s *session) admitChannel(id uint32, ch channel) *wire.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == 0 {
		return wire.Errorf(0, wire.CodeBadRequest, "a request on channel 0 (the session itself)")
	}
	if _, dup := s.channels[id]; dup {
		// On channel 0: an ERROR on the channel would end the one in use.
		return wire.Errorf(0, wire.CodeConflict, "channel %d is in use", id)
	}
	if len(s.channels) >= s.b.cfg.maxChannels() {
		return wire.Errorf(id, wire.CodeTooMany, "more than %d channels", s.b.cfg.maxChannels())
	}
	if holdsTransferSlot(ch) {
		// A transfer holds its slot until the channel is released.
		if e := s.b.limits.acquire(limTransfers, s.acct.Name); e != nil {
			e.Channel = id
			return e
		}
	}
	s.channels[id] = ch
	return nil
}

// holdsTransferSlot: uploads, downloads and broadcasts count against the
// transfer limits (a broadcast holds its manifest in memory).
func holdsTransferSlot(ch channel) bool {
	switch ch.(type) {
	case *xferChan, *bcastChan:
		return true
	}
	return false
}

// releaseSlot gives back what an open channel holds of its user's limits
// (transfers; a command gives its slot back when it ends).
func (s *session) releaseSlot(ch channel) {
	if holdsTransferSlot(ch) {
		s.b.limits.release(limTransfers, s.acct.Name)
	}
}

// release forgets a channel; a command still running gets SIGHUP.
func (s *session) release(id uint32, ch channel) {
	s.mu.Lock()
	held := s.channels[id] == ch
	if held {
		delete(s.channels, id)
	}
	s.mu.Unlock()
	if held {
		s.releaseSlot(ch)
	}
	ch.stop()
}

// end stops the session and everything it runs.
func (s *session) end(reason string) {
	s.mu.Lock()
	if s.st == ended {
		s.mu.Unlock()
		return
	}
	wasDetached := s.st == detached
	s.st = ended
	c := s.conn
	s.conn = nil
	chans := s.channels
	s.channels = nil
	s.mu.Unlock()
	if wasDetached {
		s.b.m.SessionsDetached.Dec()
	}
	if c != nil {
		s.b.mu.Lock()
		c.sess = nil
		s.b.mu.Unlock()
	}
	for _, ch := range chans {
		s.releaseSlot(ch)
		ch.stop()
	}
	s.b.hub.sessionGone(s)
	s.b.forget(s)
	s.b.log.Info("session ended", "session", s.id, "reason", reason)
}

// armResend makes every output stream wait for the client's ACK (and the
// resend it triggers) before sending anything new.
func (s *session) armResend() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.channels {
		if ec, ok := ch.(*execChan); ok {
			for _, ps := range ec.out {
				if ps != nil {
					ps.MarkResend()
				}
			}
		}
	}
}

// resend replays, after a resume, what the client may have missed: the
// EXEC_OK, an ACK of the stdin we have (the client resends the rest), and
// the EXIT if the command ended. Output is resent when the client's ACKs
// say from where (deliver).
func (ch *execChan) resend() {
	ch.mu.Lock()
	ok, exit, failed := ch.okMsg, ch.exit, ch.failed
	ch.mu.Unlock()
	if failed != nil {
		ch.s.send(failed)
		return
	}
	if ok != nil {
		ch.s.send(ok)
	}
	if ch.in != nil {
		off, lim := ch.in.Ack()
		ch.s.send(&wire.Ack{Channel: ch.id, Stream: wire.Stdin, Offset: off, Limit: lim})
	}
	// The output streams were armed by armResend before the new link.
	if exit != nil {
		ch.s.send(exit)
	}
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
