package publisher

import (
	"errors"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/internal/bufpool"
)

// Reader reads the data of DATA messages from a pipe or a stream. The
// slices it returns are kept (for resending) until acknowledged, so a short
// read (a command printing a line at a time) must not pin a buffer of a
// whole chunk: up to credit.MaxInflight of them would be held per stream,
// 128 MiB at 256 KiB each. A read that fills less than a quarter of the buffer is
// copied into a slice of its own size and the buffer is reused; a fuller
// one is handed over as it is (no copy on the bulk path, where a writer's
// 64 KiB or more arrive at once) and the next read allocates a fresh
// buffer. What a stream pins is so at most four times its window.
//
// Fresh buffers come from bufpool: a stream that recycles what was
// acknowledged (credit.Sender.ReleaseAcked(bufpool.Put)) reads into the
// same few buffers throughout. A slice handed over keeps its buffer's
// capacity, which bufpool.Put needs; nothing appends to it.
type Reader struct {
	buf  []byte
	peek *[peekSize]byte // ReadPipe's
}

// peekSize is what ReadPipe reads before it takes a chunk-sized buffer.
const peekSize = 4 << 10

// Read reads at most n octets from r with one Read call.
func (b *Reader) Read(r io.Reader, n int) ([]byte, error) {
	if cap(b.buf) < n {
		b.buf = bufpool.Get(n)
	}
	k, err := r.Read(b.buf[:n])
	out, handed := handOver(b.buf, k, n)
	if handed {
		b.buf = nil
	}
	return out, err
}

// handOver returns the k octets read into buf, a chunk of n: the chunk
// itself when they fill a quarter of it or more (the bulk path, no copy),
// else a copy of their own size; handed says which.
func handOver(buf []byte, k, n int) (out []byte, handed bool) {
	if k > 0 && k >= n/4 {
		return buf[:k], true
	}
	return append([]byte(nil), buf[:k]...), false
}

// ReadPipe is Read for a pipe that Go's poller watches (the ends os.Pipe
// makes). It waits for output holding no chunk-sized buffer: it reads up
// to 4 KiB, and only when that fills does it take a chunk for the rest of
// what is waiting, without waiting for more. Read waits in a chunk-sized
// buffer, so every running command pinned a chunk (1 MiB) per output
// stream for as long as it ran, printing or not, and zpd zeroed two of
// them even for a command that printed nothing (7% of zpd's CPU in a
// profile of `zp HOST true`). What leaves is the same as with Read: a
// burst in one piece of up to n octets, short ones copied out.
func (b *Reader) ReadPipe(f *os.File, n int) ([]byte, error) {
	rc, err := f.SyscallConn()
	if err != nil || n <= peekSize {
		return b.Read(f, n)
	}
	if b.peek == nil {
		b.peek = new([peekSize]byte)
	}
	var out []byte
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		k, err := readFd(int(fd), b.peek[:])
		switch {
		case err == unix.EAGAIN:
			return false // nothing yet: the poller waits
		case err != nil:
			rerr = &fs.PathError{Op: "read", Path: f.Name(), Err: err}
			return true
		case k == 0:
			rerr = io.EOF
			return true
		case k < peekSize:
			out = append([]byte(nil), b.peek[:k]...)
			return true
		}
		// The peek filled: more is likely waiting. Take what is there
		// now; an error or the end of file shows on the next call.
		if cap(b.buf) < n {
			b.buf = bufpool.Get(n)
		}
		copy(b.buf, b.peek[:k])
		if m, err := readFd(int(fd), b.buf[k:n]); err == nil {
			k += m
		}
		var handed bool
		if out, handed = handOver(b.buf, k, n); !handed {
			bufpool.Put(b.buf) // hold nothing while waiting for the next burst
		}
		b.buf = nil
		return true
	})
	if err != nil {
		// The poller's own failure: the pipe was closed under us (a
		// stopped channel), as os.File.Read reports it.
		return nil, &fs.PathError{Op: "read", Path: f.Name(), Err: fs.ErrClosed}
	}
	return out, rerr
}

func readFd(fd int, p []byte) (int, error) {
	for {
		k, err := unix.Read(fd, p)
		if !errors.Is(err, unix.EINTR) {
			return max(k, 0), err
		}
	}
}
