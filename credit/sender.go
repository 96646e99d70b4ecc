// Package credit is the flow control of zp's reliable byte streams
// (docs/PROTOCOL.md, "Flow control"). A Sender keeps byte offsets, the
// credit its receiver grants and the data sent but not yet acknowledged,
// for resending after a reconnect; a Receiver drops what it already has,
// detects gaps and decides when to acknowledge and how much credit to
// grant. Memory per stream is bounded by the receiver's window, never by
// the size of the stream. No sockets: callers send the messages.
package credit

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// MaxInflight bounds the DATA messages of one stream beyond the receiver's
// acknowledged offset, so that tiny messages cannot pile up without limit
// (docs/PROTOCOL.md, "Flow control").
const MaxInflight = 512

// Errors returned by Sender.
var (
	ErrClosed = errors.New("credit: stream closed")
	ErrAck    = errors.New("credit: invalid acknowledgement")
)

type chunk struct {
	off  uint64
	data []byte
}

// Sender tracks one outgoing byte stream. Its methods are safe for
// concurrent use: typically one goroutine sends while another applies ACKs.
type Sender struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every state change

	next      uint64 // offset of the next octet to send
	acked     uint64 // every octet below was acknowledged
	limit     uint64 // octets below may be sent
	unacked   []chunk
	closed    error
	eof       bool // the end of the stream was sent (at next)
	resend    bool // the next Ack asks for a resend (after a resume)
	resending bool // a resend is being sent: new data waits for it
	release   func([]byte)
}

// NewSender returns a stream starting at offset 0 with the initial credit
// window.
func NewSender(window uint64) *Sender {
	return &Sender{limit: window, changed: make(chan struct{})}
}

func (s *Sender) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// ReleaseAcked makes the stream hand each piece of data given to Sent to
// release once the receiver has acknowledged all of it (to recycle its
// buffer: bufpool.Put). Nothing is released on Close: what was queued on a
// connection may still be written from it.
func (s *Sender) ReleaseAcked(release func([]byte)) {
	s.mu.Lock()
	s.release = release
	s.mu.Unlock()
}

// Credit waits until the receiver allows at least one octet, or until at
// most max octets are allowed, and returns how many may be sent now.
func (s *Sender) Credit(ctx context.Context, max int) (int, error) {
	for {
		s.mu.Lock()
		if s.closed != nil {
			err := s.closed
			s.mu.Unlock()
			return 0, err
		}
		// After a resume nothing new goes out before the resend.
		if s.next < s.limit && len(s.unacked) < MaxInflight && !s.resend && !s.resending {
			n := s.limit - s.next
			s.mu.Unlock()
			if n > uint64(max) {
				return max, nil
			}
			return int(n), nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Sent records data as sent at the current offset, which it returns. The
// stream keeps data (without copying it) until it is acknowledged; the
// caller must not modify it afterwards.
func (s *Sender) Sent(data []byte) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	off := s.next
	if len(data) > 0 {
		s.unacked = append(s.unacked, chunk{off: off, data: data})
	}
	s.next += uint64(len(data))
	return off
}

// Ack applies an acknowledgement: the receiver has every octet below
// offset and accepts octets below limit.
func (s *Sender) Ack(offset, limit uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if offset > s.next || limit < offset {
		return fmt.Errorf("%w: offset %d limit %d, sent %d", ErrAck, offset, limit, s.next)
	}
	if offset > s.acked {
		s.acked = offset
		i := 0
		for i < len(s.unacked) && s.unacked[i].off+uint64(len(s.unacked[i].data)) <= offset {
			if s.release != nil {
				s.release(s.unacked[i].data)
			}
			s.unacked[i] = chunk{}
			i++
		}
		s.unacked = s.unacked[i:]
	}
	if limit > s.limit {
		s.limit = limit
	}
	s.notifyLocked()
	return nil
}

// SentEOF records that the end of the stream was sent, at the current
// offset, which it returns.
func (s *Sender) SentEOF() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eof = true
	return s.next
}

// MarkResend arms a resend: after a session resumes, the peer's next ACK
// tells from where to send again (TakeResend).
func (s *Sender) MarkResend() {
	s.mu.Lock()
	s.resend = true
	s.mu.Unlock()
}

// Resend is what to send again after a resume.
type Resend struct {
	Offsets []uint64
	Data    [][]byte
	EOF     bool   // send the end-of-stream marker again
	End     uint64 // its offset
}

// TakeResend applies an ACK like Ack and, if a resend was armed, returns
// what the peer is missing from the ACK's offset on; ok is false when no
// resend was armed. After sending it, the caller must call ResendDone:
// until then nothing new is allowed out, so that the resend comes first.
func (s *Sender) TakeResend(offset, limit uint64) (r Resend, ok bool, err error) {
	if err := s.Ack(offset, limit); err != nil {
		return r, false, err
	}
	s.mu.Lock()
	armed := s.resend
	s.resend = false
	s.resending = armed
	eof, end := s.eof, s.next
	s.mu.Unlock()
	if !armed {
		return r, false, nil
	}
	r.Offsets, r.Data = s.Unacked(offset)
	r.EOF, r.End = eof, end
	return r, true, nil
}

// ResendDone lets new data out again after a resend was sent.
func (s *Sender) ResendDone() {
	s.mu.Lock()
	s.resending = false
	s.notifyLocked()
	s.mu.Unlock()
}

// Unacked returns the data not yet acknowledged from offset on, for
// resending after a reconnect, as (offset, data) pairs.
func (s *Sender) Unacked(from uint64) (offs []uint64, data [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.unacked {
		end := c.off + uint64(len(c.data))
		if end <= from {
			continue
		}
		d := c.data
		off := c.off
		if off < from {
			d = d[from-off:]
			off = from
		}
		offs = append(offs, off)
		data = append(data, d)
	}
	return offs, data
}

// Offsets returns the next offset to send and the acknowledged offset.
func (s *Sender) Offsets() (next, acked uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next, s.acked
}

// Drained reports whether every octet sent was acknowledged.
func (s *Sender) Drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked == s.next
}

// Wait blocks until every octet sent was acknowledged, ctx ends or the
// stream closes.
func (s *Sender) Wait(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.acked == s.next {
			s.mu.Unlock()
			return nil
		}
		if s.closed != nil {
			err := s.closed
			s.mu.Unlock()
			return err
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close wakes every waiter with err (ErrClosed if nil) and drops the
// resend buffer.
func (s *Sender) Close(err error) {
	if err == nil {
		err = ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed == nil {
		s.closed = err
		s.unacked = nil
		s.notifyLocked()
	}
}
