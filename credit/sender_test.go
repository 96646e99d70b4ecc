package credit

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCreditAndAck(t *testing.T) {
	s := NewSender(10)
	ctx := context.Background()
	if n, err := s.Credit(ctx, 4); err != nil || n != 4 {
		t.Fatalf("credit %d %v", n, err)
	}
	if off := s.Sent([]byte("abcd")); off != 0 {
		t.Fatalf("offset %d", off)
	}
	if n, _ := s.Credit(ctx, 100); n != 6 {
		t.Fatalf("credit %d, want the 6 left", n)
	}
	s.Sent([]byte("efghij"))
	// No credit left: Credit blocks until an ACK raises the limit.
	got := make(chan int, 1)
	go func() {
		n, _ := s.Credit(ctx, 100)
		got <- n
	}()
	select {
	case n := <-got:
		t.Fatalf("credit %d without an ACK", n)
	case <-time.After(20 * time.Millisecond):
	}
	if err := s.Ack(4, 14); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != 4 {
		t.Fatalf("credit %d after ACK, want 4", n)
	}
	// The resend buffer holds exactly what was not acknowledged.
	offs, data := s.Unacked(0)
	if len(offs) != 1 || offs[0] != 4 || string(data[0]) != "efghij" {
		t.Fatalf("unacked %v %q", offs, data)
	}
	offs, data = s.Unacked(7)
	if offs[0] != 7 || string(data[0]) != "hij" {
		t.Fatalf("unacked from 7: %v %q", offs, data)
	}
	// Invalid ACKs are refused.
	if err := s.Ack(11, 20); !errors.Is(err, ErrAck) {
		t.Fatalf("ack beyond sent: %v", err)
	}
	if err := s.Ack(5, 4); !errors.Is(err, ErrAck) {
		t.Fatalf("limit below offset: %v", err)
	}
}

func TestMaxInflight(t *testing.T) {
	s := NewSender(1 << 30)
	for i := 0; i < MaxInflight; i++ {
		s.Sent([]byte{1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Credit(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("credit with %d messages in flight: %v", MaxInflight, err)
	}
	s.Ack(MaxInflight/2, 1<<30)
	if _, err := s.Credit(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
}

func TestResendAfterResume(t *testing.T) {
	s := NewSender(100)
	s.Sent([]byte("0123456789"))
	end := s.SentEOF()
	s.MarkResend()
	// Armed: no new data goes out.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Credit(ctx, 1); err == nil {
		t.Fatal("credit while a resend is armed")
	}
	r, ok, err := s.TakeResend(6, 106)
	if err != nil || !ok || len(r.Offsets) != 1 || r.Offsets[0] != 6 || string(r.Data[0]) != "6789" || !r.EOF || r.End != end {
		t.Fatalf("resend %+v %v %v", r, ok, err)
	}
	// Still held until the resend was sent.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := s.Credit(ctx2, 1); err == nil {
		t.Fatal("credit before ResendDone")
	}
	s.ResendDone()
	if _, err := s.Credit(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	// A second ACK is a plain one.
	if _, ok, _ := s.TakeResend(10, 110); ok {
		t.Fatal("resend without arming")
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	s := NewSender(0)
	credit := make(chan error, 1)
	go func() { _, err := s.Credit(context.Background(), 1); credit <- err }()
	s2 := NewSender(10)
	s2.Sent([]byte("x")) // never acknowledged
	wait := make(chan error, 1)
	go func() { wait <- s2.Wait(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	s.Close(nil)
	s2.Close(errors.New("link gone"))
	if err := <-credit; !errors.Is(err, ErrClosed) {
		t.Fatalf("credit after close: %v", err)
	}
	if err := <-wait; err == nil || err.Error() != "link gone" {
		t.Fatalf("wait after close: %v", err)
	}
}

func TestReleaseAcked(t *testing.T) {
	s := NewSender(1 << 20)
	var released [][]byte
	s.ReleaseAcked(func(b []byte) { released = append(released, b) })
	a, b, c := []byte("aaaa"), []byte("bbbb"), []byte("cccc")
	s.Sent(a)
	s.Sent(b)
	s.Sent(c)
	if err := s.Ack(6, 1<<20); err != nil { // a whole, b half
		t.Fatal(err)
	}
	if len(released) != 1 || &released[0][0] != &a[0] {
		t.Fatalf("released %q, want only the first piece", released)
	}
	if _, ok, err := s.TakeResend(8, 1<<20); err != nil || ok {
		t.Fatalf("TakeResend: ok %v err %v", ok, err)
	}
	if len(released) != 2 || &released[1][0] != &b[0] {
		t.Fatalf("released %q, want the second piece next", released)
	}
	s.Close(nil)
	if len(released) != 2 {
		t.Fatalf("Close released %d pieces: what was queued may still be written", len(released)-2)
	}
}
