package publisher

import (
	"io"

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
	buf []byte
}

// Read reads at most n octets from r with one Read call.
func (b *Reader) Read(r io.Reader, n int) ([]byte, error) {
	if cap(b.buf) < n {
		b.buf = bufpool.Get(n)
	}
	buf := b.buf[:n]
	k, err := r.Read(buf)
	if k >= n/4 && k > 0 {
		b.buf = nil
		return buf[:k], err
	}
	return append([]byte(nil), buf[:k]...), err
}
