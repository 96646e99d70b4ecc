package credit

import (
	"errors"
	"fmt"
	"sync"
)

// Errors returned by Receiver.
var (
	ErrOverrun  = errors.New("credit: data beyond granted credit")
	ErrAfterEOF = errors.New("credit: data after end of stream")
)

// Receiver tracks one incoming byte stream. Safe for concurrent use.
type Receiver struct {
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

// NewReceiver returns a stream at offset 0 that grants window octets of
// credit.
func NewReceiver(window uint64) *Receiver {
	return &Receiver{window: window, limit: window}
}

// Accept takes a DATA message and returns the part of data that is new
// (a resend may overlap what arrived before). Data that starts beyond the
// next expected octet is dropped: within one connection it cannot happen,
// and right after a session resumes the sender may send new data before it
// has processed our ACK — its resend covers what we dropped. A message
// beyond the granted credit is an error.
func (s *Receiver) Accept(offset uint64, data []byte, eof bool) ([]byte, error) {
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
func (s *Receiver) Consumed(n int) (due bool, offset, limit uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.consumed += uint64(n)
	if s.consumed > s.next {
		panic("bug: consumed more than received")
	}
	if s.consumed-s.ackCons >= s.window/4 || s.msgs >= MaxInflight/4 {
		off, lim := s.ackLocked()
		return true, off, lim
	}
	return false, 0, 0
}

// Pending reports whether octets were consumed (or messages arrived) since
// the last ACK, so that a periodic ACK is worth sending.
func (s *Receiver) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.consumed != s.ackCons || s.msgs > 0
}

// Ack returns the offset and limit of an ACK to send now.
func (s *Receiver) Ack() (offset, limit uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ackLocked()
}

func (s *Receiver) ackLocked() (uint64, uint64) {
	s.ackCons = s.consumed
	s.msgs = 0
	s.limit = s.consumed + s.window
	return s.next, s.limit
}

// Next returns the offset of the next octet expected.
func (s *Receiver) Next() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// EOF reports whether the end of the stream arrived.
func (s *Receiver) EOF() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof
}
