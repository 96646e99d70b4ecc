package credit

import (
	"errors"
	"testing"
)

func TestAccept(t *testing.T) {
	s := NewReceiver(16)
	if b, err := s.Accept(0, []byte("hello"), false); err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
	// A resend overlapping what arrived: only the new part.
	if b, _ := s.Accept(3, []byte("lo world"), false); string(b) != " world" {
		t.Fatalf("overlap gave %q", b)
	}
	// Entirely old: nothing.
	if b, _ := s.Accept(0, []byte("hel"), false); b != nil {
		t.Fatalf("duplicate gave %q", b)
	}
	// Ahead of the position (after a resume): dropped, no error.
	if b, err := s.Accept(20, []byte("x"), false); b != nil || err != nil || s.Next() != 11 {
		t.Fatalf("ahead: %q %v next %d", b, err, s.Next())
	}
	// Beyond the credit: an error.
	if _, err := s.Accept(11, make([]byte, 10), false); !errors.Is(err, ErrOverrun) {
		t.Fatalf("overrun: %v", err)
	}
	if _, err := s.Accept(11, []byte("!"), true); err != nil || !s.EOF() {
		t.Fatalf("eof: %v", err)
	}
	if _, err := s.Accept(12, []byte("?"), false); !errors.Is(err, ErrAfterEOF) {
		t.Fatalf("after eof: %v", err)
	}
}

func TestAckPolicy(t *testing.T) {
	s := NewReceiver(400)
	s.Accept(0, make([]byte, 300), false)
	if due, _, _ := s.Consumed(99); due {
		t.Fatal("ack due before a quarter window")
	}
	due, off, lim := s.Consumed(1)
	if !due || off != 300 || lim != 100+400 {
		t.Fatalf("ack %v %d %d", due, off, lim)
	}
	// Many small messages call for an ACK too.
	s2 := NewReceiver(1 << 20)
	var due2 bool
	for i := 0; i < MaxInflight/4; i++ {
		s2.Accept(uint64(i), []byte{1}, false)
		due2, _, _ = s2.Consumed(1)
	}
	if !due2 {
		t.Fatal("no ACK after many small messages")
	}
	if s2.Pending() {
		t.Fatal("pending right after an ACK")
	}
}
