package broker

import (
	"context"
	"errors"
	"io"
	"sync"
)

// skipPipe joins a broadcast's content reader (readPublication, which
// writes) to subscriber.Apply (which reads), as io.Pipe does, with one
// addition: the reader may Skip octets it does not want, and the writer
// learns from Wanted where to go on. So an agent neither fetches nor
// decrypts the records of files it holds (readPublication, full records).
//
// Like io.Pipe it holds no copy: a Write blocks until the reader has read
// or skipped its octets, or closed.
type skipPipe struct {
	mu      sync.Mutex
	cond    sync.Cond
	pos     uint64 // stream offset of the next octet written
	wanted  uint64 // stream offset of the next octet read: what lies before was read or skipped
	p       []byte // the blocked Write's octets from wanted on
	werr    error  // the writer closed: what Read returns once p is empty
	rclosed bool   // the reader closed: Write fails
	waiting bool   // a Read waits for octets
	expect  uint64 // the reader will read what lies before this offset (Expect)
}

func newSkipPipe() *skipPipe {
	p := &skipPipe{}
	p.cond.L = &p.mu
	return p
}

var errPipeGap = errors.New("bug: a write past the octets wanted")

// Write hands b, the octets at the stream offset Seek set (or the end of
// the last Write), to the reader: what lies before the octets wanted is
// dropped. It returns once all of b was read or skipped.
func (p *skipPipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rclosed || p.werr != nil {
		return 0, io.ErrClosedPipe
	}
	off := p.pos
	if off > p.wanted {
		return 0, errPipeGap
	}
	p.pos += uint64(len(b))
	if p.pos <= p.wanted {
		return len(b), nil // skipped
	}
	p.p = b[p.wanted-off:]
	p.cond.Broadcast()
	for len(p.p) > 0 && !p.rclosed {
		p.cond.Wait()
	}
	if len(p.p) > 0 {
		p.p = nil
		return 0, io.ErrClosedPipe
	}
	return len(b), nil
}

// Seek sets the stream offset of the next Write's first octet. It must
// not be past Wanted: nothing the reader wants may be left out.
func (p *skipPipe) Seek(off uint64) {
	p.mu.Lock()
	p.pos = off
	p.mu.Unlock()
}

// Wanted is the stream offset of the next octet the reader wants.
func (p *skipPipe) Wanted() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wanted
}

// CloseWrite ends the stream: Read returns err (io.EOF if nil) once the
// octets written were read.
func (p *skipPipe) CloseWrite(err error) {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	if p.werr == nil {
		p.werr = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Read reads the next octets wanted.
func (p *skipPipe) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.p) == 0 && p.werr == nil && !p.rclosed {
		p.waiting = true
		p.cond.Broadcast() // Demand
		p.cond.Wait()
	}
	p.waiting = false
	switch {
	case p.rclosed:
		return 0, io.ErrClosedPipe
	case len(p.p) == 0:
		return 0, p.werr
	}
	n := copy(b, p.p)
	p.p = p.p[n:]
	p.wanted += uint64(n)
	if len(p.p) == 0 {
		p.cond.Broadcast()
	}
	return n, nil
}

// Skip passes over the next n octets without reading them
// (subscriber.Skipper): those not yet written need not be.
func (p *skipPipe) Skip(n uint64) {
	p.mu.Lock()
	p.wanted += n
	p.p = p.p[min(n, uint64(len(p.p))):]
	if len(p.p) == 0 {
		p.cond.Broadcast()
	}
	p.mu.Unlock()
}

// Expect says that the reader will read the next n octets (an entry's
// content it writes): the writer may fetch them before the reader asks.
func (p *skipPipe) Expect(n uint64) {
	p.mu.Lock()
	p.expect = max(p.expect, p.wanted+n)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Demand returns once the reader wants more (true): a Read waits for
// octets, or the next octet wanted is one the reader said it will read
// (Expect); or once the reader closed, or ctx ended (false). A writer that
// must fetch what it writes calls it first: it then fetches what the
// reader wants, not the next octets of a file the reader is about to skip
// (it decides after hashing its own copy), and nothing once the reader is
// done.
func (p *skipPipe) Demand(ctx context.Context) bool {
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.waiting && p.wanted >= p.expect && !p.rclosed && ctx.Err() == nil {
		p.cond.Wait()
	}
	return !p.rclosed && ctx.Err() == nil
}

// CloseRead ends the reading: a blocked Write, and those after, fail.
func (p *skipPipe) CloseRead() {
	p.mu.Lock()
	p.rclosed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}
