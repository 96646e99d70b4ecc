// Package publisher is the sending half of zp's reliable streams: byte
// offsets, the credit a receiver grants, and the buffer of data sent but not
// yet acknowledged, kept for resending after a reconnect. Memory per stream
// is bounded by the receiver's window, never by the size of the stream.
package publisher

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

// Errors returned by Stream.
var (
	ErrClosed = errors.New("publisher: stream closed")
	ErrAck    = errors.New("publisher: invalid acknowledgement")
	// ErrProtocol wraps what a Sender returns when its receiver broke the
	// protocol: not a network fault, trying again would not help.
	ErrProtocol = errors.New("publisher: the receiver broke the protocol")
)

type chunk struct {
	off  uint64
	data []byte
}

// Stream tracks one outgoing byte stream. Its methods are safe for
// concurrent use: typically one goroutine sends while another applies ACKs.
type Stream struct {
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
}

// New returns a stream starting at offset 0 with the initial credit window.
func New(window uint64) *Stream {
	return &Stream{limit: window, changed: make(chan struct{})}
}

func (s *Stream) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Credit waits until the receiver allows at least one octet, or until at
// most max octets are allowed, and returns how many may be sent now.
func (s *Stream) Credit(ctx context.Context, max int) (int, error) {
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
func (s *Stream) Sent(data []byte) uint64 {
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
func (s *Stream) Ack(offset, limit uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if offset > s.next || limit < offset {
		return fmt.Errorf("%w: offset %d limit %d, sent %d", ErrAck, offset, limit, s.next)
	}
	if offset > s.acked {
		s.acked = offset
		i := 0
		for i < len(s.unacked) && s.unacked[i].off+uint64(len(s.unacked[i].data)) <= offset {
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
func (s *Stream) SentEOF() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eof = true
	return s.next
}

// MarkResend arms a resend: after a session resumes, the peer's next ACK
// tells from where to send again (TakeResend).
func (s *Stream) MarkResend() {
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
func (s *Stream) TakeResend(offset, limit uint64) (r Resend, ok bool, err error) {
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
func (s *Stream) ResendDone() {
	s.mu.Lock()
	s.resending = false
	s.notifyLocked()
	s.mu.Unlock()
}

// Unacked returns the data not yet acknowledged from offset on, for
// resending after a reconnect, as (offset, data) pairs.
func (s *Stream) Unacked(from uint64) (offs []uint64, data [][]byte) {
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
func (s *Stream) Offsets() (next, acked uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next, s.acked
}

// Drained reports whether every octet sent was acknowledged.
func (s *Stream) Drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked == s.next
}

// Wait blocks until every octet sent was acknowledged, ctx ends or the
// stream closes.
func (s *Stream) Wait(ctx context.Context) error {
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
func (s *Stream) Close(err error) {
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

// violation is an error of the peer's that breaks the protocol: it reads
// as the error itself and matches ErrProtocol.
type violation struct{ err error }

func (v violation) Error() string        { return v.err.Error() }
func (v violation) Unwrap() error        { return v.err }
func (v violation) Is(target error) bool { return target == ErrProtocol }
