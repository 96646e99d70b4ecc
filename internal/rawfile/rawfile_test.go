package rawfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRawFileReadFull(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		buf   int
		left  int
		want  string
		wantE error
	}{
		{"the size the walk saw, plus one octet to see the end", 11, 10, "0123456789", io.ErrUnexpectedEOF},
		{"a file that shrank since the walk", 13, 12, "0123456789", io.ErrUnexpectedEOF},
		{"a file that grew since the walk", 11, 8, "0123456789", io.ErrUnexpectedEOF},
		{"a chunk of a larger file", 4, 4, "0123", nil},
		{"a file that grew past what the walk saw", 4, -1, "0123", nil},
	}
	for _, c := range cases {
		f, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, c.buf)
		n, err := f.ReadFull(buf, c.left)
		f.Close()
		if string(buf[:n]) != c.want || err != c.wantE {
			t.Errorf("%s: %q, %v; want %q, %v", c.name, buf[:n], err, c.want, c.wantE)
		}
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if n, err := f.ReadFull(make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("at the end: %d, %v; want 0, EOF", n, err)
	}
}

// TestRawFileRefusesFIFO: a FIFO put where the walk saw a file is refused
// at once; os.Open would wait for a writer.
func TestRawFileRefusesFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err == nil {
		f.Close()
		t.Fatal("a FIFO was opened")
	}
	if !errors.Is(err, ErrNotRegular) {
		t.Errorf("error %v, want %v", err, ErrNotRegular)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

func TestRawFileWriteTruncateClose(t *testing.T) {
	p := filepath.Join(t.TempDir(), "w")
	fd, err := syscall.Open(p, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f := New(fd, "shown/name")
	if n, err := f.Write([]byte("hello, world")); n != 12 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if err := f.Truncate(5); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	if n, err := f.ReadFull(b, -1); string(b[:n]) != "hello" || err != io.ErrUnexpectedEOF {
		t.Errorf("read back %q, %v", b[:n], err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{f.Close(), f.Truncate(0)} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("after Close: %v, want %v", err, os.ErrClosed)
		}
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, os.ErrClosed) || !strings.Contains(err.Error(), "shown/name") {
		t.Errorf("write after Close: %v", err)
	}
}

// TestRawFileBlocking: the descriptor Open returns is blocking (O_NONBLOCK
// served only the open).
func TestRawFileBlocking(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, err := unix.FcntlInt(uintptr(f.Fd()), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		t.Errorf("flags %#o: O_NONBLOCK still set", fl)
	}
}
