// Package subscriber is the receiving half of zp's reliable streams: it
// drops what it already has (after a resend), detects gaps, and decides when
// to acknowledge and how much credit to grant, so that what a receiver
// holds is bounded by its window.
package subscriber

import (
	"errors"
	"fmt"
	"sync"

	"github.com/zpipes/zp/publisher"
)

// Errors returned by Stream.
var (
	ErrOverrun  = errors.New("subscriber: data beyond granted credit")
	ErrAfterEOF = errors.New("subscriber: data after end of stream")
)

// ErrProtocol wraps what a Receiver returns when its sender broke the
// protocol (credit, order, entry numbers): not a network fault, so
// trying again would meet the same sender.
var ErrProtocol = errors.New("subscriber: the sender broke the protocol")

// ErrKind is an entry of a kind the Receiver does not know (a newer
// sender's): answered with FILE_DONE 400, the transfer goes on.
var ErrKind = errors.New("subscriber: entry of unknown kind")

// Stream tracks one incoming byte stream. Safe for concurrent use.
type Stream struct {
	mu       sync.Mutex
	window   uint64
	next     uint64 // every octet below arrived
	consumed uint64 // every octet below was delivered to the application
	limit    uint64 // credit granted: octets below may arrive
	ackCons  uint64 // consumed at the last ACK
	msgs     int    // DATA messages since the last ACK
	eof      bool
	dropped  int // messages dropped for arriving ahead of the position
}

// New returns a stream at offset 0 that grants window octets of credit.
func New(window uint64) *Stream {
	return &Stream{window: window, limit: window}
}

// Accept takes a DATA message and returns the part of data that is new
// (a resend may overlap what arrived before). Data that starts beyond the
// next expected octet is dropped: within one connection it cannot happen,
// and right after a session resumes the sender may send new data before it
// has processed our ACK — its resend covers what we dropped. A message
// beyond the granted credit is an error.
func (s *Stream) Accept(offset uint64, data []byte, eof bool) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	end := offset + uint64(len(data))
	if offset > s.next {
		s.dropped++
		return nil, nil
	}
	if s.eof {
		if end > s.next {
			return nil, ErrAfterEOF
		}
		return nil, nil
	}
	if end > s.limit {
		return nil, fmt.Errorf("%w: %d > %d", ErrOverrun, end, s.limit)
	}
	s.msgs++
	if end <= s.next {
		if eof && end == s.next {
			s.eof = true
		}
		return nil, nil
	}
	fresh := data[s.next-offset:]
	s.next = end
	if eof {
		s.eof = true
	}
	return fresh, nil
}

// Consumed records n octets delivered to the application and reports
// whether an ACK is due now, with its offset and limit.
func (s *Stream) Consumed(n int) (due bool, offset, limit uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.consumed += uint64(n)
	if s.consumed > s.next {
		panic("bug: consumed more than received")
	}
	if s.consumed-s.ackCons >= s.window/4 || s.msgs >= publisher.MaxInflight/4 {
		off, lim := s.ackLocked()
		return true, off, lim
	}
	return false, 0, 0
}

// Pending reports whether octets were consumed (or messages arrived) since
// the last ACK, so that a periodic ACK is worth sending.
func (s *Stream) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.consumed != s.ackCons || s.msgs > 0
}

// Ack returns the offset and limit of an ACK to send now.
func (s *Stream) Ack() (offset, limit uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ackLocked()
}

func (s *Stream) ackLocked() (uint64, uint64) {
	s.ackCons = s.consumed
	s.msgs = 0
	s.limit = s.consumed + s.window
	return s.next, s.limit
}

// Next returns the offset of the next octet expected.
func (s *Stream) Next() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// EOF reports whether the end of the stream arrived.
func (s *Stream) EOF() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof
}

// violation is an error of the peer's that breaks the protocol: it reads
// as the error itself and matches ErrProtocol.
type violation struct{ err error }

func (v violation) Error() string        { return v.err.Error() }
func (v violation) Unwrap() error        { return v.err }
func (v violation) Is(target error) bool { return target == ErrProtocol }
