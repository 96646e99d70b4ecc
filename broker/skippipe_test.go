package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// A skipPipe passes what is read, drops what is skipped (written or not
// yet), tells the writer where the reader is, and ends as io.Pipe does.
func TestSkipPipe(t *testing.T) {
	p := newSkipPipe()
	wrote := make(chan error, 1)
	go func() {
		_, err := p.Write([]byte("0123456789"))
		wrote <- err
	}()
	buf := make([]byte, 3)
	if n, err := p.Read(buf); err != nil || string(buf[:n]) != "012" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	p.Skip(5) // 34567: three written, two not
	if n, err := p.Read(buf); err != nil || string(buf[:n]) != "89" {
		t.Fatalf("read after a skip %q %v", buf[:n], err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	p.Skip(10) // 10 to 19: none written yet
	if w := p.Wanted(); w != 20 {
		t.Fatalf("wanted %d, want 20", w)
	}
	// The writer goes on at 15 (a record's start): 15-19 dropped.
	p.Seek(15)
	go func() {
		_, err := p.Write([]byte("fffffTWENTY"))
		wrote <- err
	}()
	got := make([]byte, 6)
	if _, err := io.ReadFull(p, got); err != nil || string(got) != "TWENTY" {
		t.Fatalf("read after a seek %q %v", got, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	// A write past what the reader wants would lose octets: refused.
	p.Seek(30)
	if _, err := p.Write([]byte("x")); !errors.Is(err, errPipeGap) {
		t.Fatalf("a write past the octets wanted: %v", err)
	}
	p.Seek(26)
	// Ends: the writer's error reaches the reader after the octets.
	go func() {
		p.Write([]byte("end"))
		p.CloseWrite(errors.New("cut"))
	}()
	var all bytes.Buffer
	_, err := io.Copy(&all, p)
	if err == nil || err.Error() != "cut" || all.String() != "end" {
		t.Fatalf("end: %q %v", all.String(), err)
	}
	// Demand: not while the reader only skips; once a Read waits; at
	// once when ctx ended or the reader closed.
	p = newSkipPipe()
	demanded := make(chan struct{})
	go func() {
		if p.Demand(context.Background()) {
			close(demanded)
		}
	}()
	p.Skip(3)
	select {
	case <-demanded:
		t.Fatal("Demand returned while nothing was read")
	case <-time.After(20 * time.Millisecond):
	}
	read := make(chan string, 1)
	go func() {
		b := make([]byte, 8)
		n, _ := p.Read(b)
		read <- string(b[:n])
	}()
	<-demanded
	p.Seek(3)
	p.Write([]byte("abc"))
	if got := <-read; got != "abc" {
		t.Fatalf("read %q", got)
	}
	// Expect: the octets the reader said it will read are demanded at
	// once, and only those.
	p.Expect(2)
	if !p.Demand(context.Background()) {
		t.Fatal("Demand after Expect: false")
	}
	p.Skip(2)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if p.Demand(ctx) {
		t.Fatal("Demand after ctx ended: true")
	}
	go func() { time.Sleep(10 * time.Millisecond); p.CloseRead() }()
	if p.Demand(context.Background()) {
		t.Fatal("Demand after the reader closed: true")
	}

	// The reader closing unblocks a writer.
	p = newSkipPipe()
	go func() {
		_, err := p.Write([]byte("never read"))
		wrote <- err
	}()
	time.Sleep(10 * time.Millisecond)
	p.CloseRead()
	if err := <-wrote; !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write after the reader closed: %v", err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("write after the reader closed: %v", err)
	}
}
