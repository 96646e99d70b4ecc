package publisher

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"testing"
	"time"
)

// pieces returns its chunks one per Read, like a pipe written line by line.
type pieces [][]byte

func (p *pieces) Read(b []byte) (int, error) {
	if len(*p) == 0 {
		return 0, io.EOF
	}
	n := copy(b, (*p)[0])
	(*p)[0] = (*p)[0][n:]
	if len((*p)[0]) == 0 {
		*p = (*p)[1:]
	}
	return n, nil
}

func TestReaderShortReadsDoNotPinBuffers(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 200<<10)
	src := pieces{[]byte("line 1\n"), []byte("line 2\n"), big, []byte("tail")}
	var r Reader
	var got [][]byte
	for {
		b, err := r.Read(&src, 256<<10)
		if len(b) > 0 {
			got = append(got, b)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 4 {
		t.Fatalf("%d reads, want 4", len(got))
	}
	for i, b := range got {
		if cap(b) > 2*len(b)+64 {
			t.Errorf("read %d: %d octets in a buffer of %d", i, len(b), cap(b))
		}
	}
	if string(got[0]) != "line 1\n" || string(got[1]) != "line 2\n" || !bytes.Equal(got[2], big) || string(got[3]) != "tail" {
		t.Fatalf("wrong data")
	}
	// Slices handed out stay intact while the reader goes on.
	if string(got[0]) != "line 1\n" {
		t.Fatal("a short read was overwritten by a later one")
	}
}

// TestReadPipe: a pipe read with ReadPipe holds no chunk-sized buffer
// while it waits or after a short read, hands a burst over in one piece,
// and ends with io.EOF, or with fs.ErrClosed when closed under a read.
func TestReadPipe(t *testing.T) {
	const chunk = 1 << 20
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var rd Reader
	read := func() ([]byte, error) {
		t.Helper()
		b, err := rd.ReadPipe(r, chunk)
		if rd.buf != nil {
			t.Fatalf("a buffer of %d octets held after a read", cap(rd.buf))
		}
		return b, err
	}

	// A line: copied out, nothing pinned.
	if _, err := w.Write([]byte("line 1\n")); err != nil {
		t.Fatal(err)
	}
	b, err := read()
	if err != nil || string(b) != "line 1\n" || cap(b) > 64 {
		t.Fatalf("read %q (cap %d), %v", b, cap(b), err)
	}

	// A burst larger than the peek, already waiting: one piece.
	burst := bytes.Repeat([]byte("0123456789abcdef"), 40<<10) // 640 KiB
	go func() { _, _ = w.Write(burst) }()
	var got []byte
	for len(got) < len(burst) {
		b, err := read()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, burst) {
		t.Fatal("the burst came out changed")
	}

	// A reader waiting for output is woken by it.
	done := make(chan []byte)
	go func() {
		b, _ := rd.ReadPipe(r, chunk)
		done <- b
	}()
	time.Sleep(20 * time.Millisecond)
	if _, err := w.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if b := <-done; string(b) != "late" {
		t.Fatalf("read %q, want late", b)
	}

	w.Close()
	if b, err := read(); len(b) != 0 || err != io.EOF {
		t.Fatalf("at the end: %q, %v; want io.EOF", b, err)
	}

	// Closed while waiting (a stopped channel): fs.ErrClosed.
	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	errc := make(chan error)
	go func() {
		var rd Reader
		_, err := rd.ReadPipe(r2, chunk)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	r2.Close()
	if err := <-errc; !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("closed under a read: %v, want fs.ErrClosed", err)
	}
}
