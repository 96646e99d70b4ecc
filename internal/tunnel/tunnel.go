// Package tunnel carries a byte stream over a ZP channel: a net.Conn whose
// octets travel as DATA on two streams of one channel, with offsets, credit
// and ACKs end to end (docs/PROTOCOL.md §13.4). A fleet client dials an
// agent's socket through a hub with it, and the agent hands its end to its
// own listener; what flows inside is an ordinary ZMTP connection, CURVE
// included, that the hub relays without reading.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/wire"
)

// Config describes one end of a tunnel.
type Config struct {
	Channel uint32
	// Opener is true at the end that sent TUNNEL (the client): it writes
	// stream 0 and reads stream 1; the agent's end does the opposite.
	Opener bool
	// Send delivers a message to the peer (through the hub). It may block
	// briefly; it is called from Read, Write and Close.
	Send func(wire.Message) error
	// Window is the credit this end grants for what it receives, and
	// PeerWindow the credit the peer granted for what this end sends.
	Window, PeerWindow uint64
	// Chunk is the largest DATA payload this end sends (default 64 KiB).
	Chunk int
	// Local and Remote name the ends for logs and limits.
	Local, Remote net.Addr
}

// Addr is a tunnel end's address: network "tunnel".
type Addr string

func (Addr) Network() string  { return "tunnel" }
func (a Addr) String() string { return string(a) }

// ErrClosed is returned by a closed tunnel's Read and Write.
var ErrClosed = errors.New("tunnel: closed")

// Conn is one end of a tunnel. Read, Write and Close are safe to call from
// different goroutines; Deliver is called by the owner's receive loop.
type Conn struct {
	cfg   Config
	out   *credit.Sender
	outID wire.Stream
	in    *credit.Receiver
	inID  wire.Stream

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	queue    [][]byte      // received, not yet read
	queued   int
	eof      bool  // the peer closed its direction
	err      error // the tunnel failed or was closed
	rdl, wdl time.Time

	closeOnce sync.Once
}

// New returns one end of a tunnel.
func New(cfg Config) *Conn {
	if cfg.Chunk <= 0 {
		cfg.Chunk = 64 << 10
	}
	c := &Conn{cfg: cfg, changed: make(chan struct{}),
		out: credit.NewSender(cfg.PeerWindow), in: credit.NewReceiver(cfg.Window)}
	c.outID, c.inID = wire.TunnelDown, wire.TunnelUp
	if cfg.Opener {
		c.outID, c.inID = wire.TunnelUp, wire.TunnelDown
	}
	return c
}

func (c *Conn) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Deliver hands the tunnel a message from the peer: DATA of the inbound
// stream, ACK of the outbound one, FIN or ERROR ending it. It never
// blocks; an error means the peer broke the protocol (the tunnel is then
// closed).
func (c *Conn) Deliver(m wire.Message) error {
	switch m := m.(type) {
	case *wire.Data:
		if m.Stream != c.inID {
			return c.fail(fmt.Errorf("tunnel: DATA on stream %d", m.Stream))
		}
		fresh, err := c.in.Accept(m.Offset, m.Bytes, m.EOF())
		if err != nil {
			return c.fail(fmt.Errorf("tunnel: %w", err))
		}
		c.mu.Lock()
		if len(fresh) > 0 {
			if len(c.queue) >= credit.MaxInflight+16 {
				c.mu.Unlock()
				return c.fail(errors.New("tunnel: peer sent more messages than the protocol allows in flight"))
			}
			c.queue = append(c.queue, fresh)
			c.queued += len(fresh)
		}
		if m.EOF() {
			c.eof = true
		}
		c.notifyLocked()
		c.mu.Unlock()
	case *wire.Ack:
		if m.Stream != c.outID {
			return c.fail(fmt.Errorf("tunnel: ACK of stream %d", m.Stream))
		}
		if err := c.out.Ack(m.Offset, m.Limit); err != nil {
			return c.fail(fmt.Errorf("tunnel: %w", err))
		}
	case *wire.Fin:
		c.fail(io.EOF)
	case *wire.Error:
		c.fail(m)
	default:
		return c.fail(fmt.Errorf("tunnel: unexpected %s", m.ID()))
	}
	return nil
}

// fail ends the tunnel with err (the first error sticks) and returns it.
func (c *Conn) fail(err error) error {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		c.notifyLocked()
	}
	c.mu.Unlock()
	c.out.Close(err)
	return err
}

// wait blocks until changed is closed or the deadline passes.
func wait(changed chan struct{}, deadline time.Time) error {
	if deadline.IsZero() {
		<-changed
		return nil
	}
	d := time.Until(deadline)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-changed:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.queue) == 0 {
		switch {
		case c.eof:
			c.mu.Unlock()
			return 0, io.EOF
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		ch, dl := c.changed, c.rdl
		c.mu.Unlock()
		if err := wait(ch, dl); err != nil {
			c.mu.Lock()
			if len(c.queue) == 0 {
				c.mu.Unlock()
				return 0, err
			}
			break
		}
		c.mu.Lock()
	}
	n := 0
	for n < len(p) && len(c.queue) > 0 {
		k := copy(p[n:], c.queue[0])
		n += k
		if k == len(c.queue[0]) {
			c.queue[0] = nil
			c.queue = c.queue[1:]
		} else {
			c.queue[0] = c.queue[0][k:]
		}
	}
	c.queued -= n
	c.mu.Unlock()
	if due, off, lim := c.in.Consumed(n); due {
		_ = c.cfg.Send(&wire.Ack{Channel: c.cfg.Channel, Stream: c.inID, Offset: off, Limit: lim})
	}
	return n, nil
}

// Write implements net.Conn: it sends p as DATA within the peer's credit,
// waiting for credit (or the write deadline).
func (c *Conn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		n, err := c.credit(min(len(p)-written, c.cfg.Chunk))
		if err != nil {
			return written, err
		}
		// The stream keeps what it sent until it is acknowledged: a copy,
		// since the caller may reuse p.
		data := append([]byte(nil), p[written:written+n]...)
		off := c.out.Sent(data)
		if err := c.cfg.Send(&wire.Data{Channel: c.cfg.Channel, Stream: c.outID, Offset: off, Bytes: data}); err != nil {
			return written, c.fail(err)
		}
		written += n
	}
	return written, nil
}

// credit waits for credit to send up to max octets, honouring the write
// deadline and the tunnel's end.
func (c *Conn) credit(max int) (int, error) {
	for {
		c.mu.Lock()
		err, dl, ch := c.err, c.wdl, c.changed
		c.mu.Unlock()
		if err != nil {
			return 0, err
		}
		ctx, cancel := deadlineContext(dl, ch)
		n, cerr := c.out.Credit(ctx, max)
		cancel()
		if cerr == nil {
			return n, nil
		}
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		// Woken by a change (deadline moved, tunnel failed): look again.
	}
}

// Close implements net.Conn: the peer gets EOF and FIN.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		off, _ := c.out.Offsets()
		_ = c.cfg.Send(&wire.Data{Channel: c.cfg.Channel, Stream: c.outID, Offset: off, Flags: wire.DataEOF, Bytes: []byte{}})
		_ = c.cfg.Send(&wire.Fin{Channel: c.cfg.Channel})
		c.fail(ErrClosed)
	})
	return nil
}

// Done reports whether the tunnel has ended (closed, failed or FIN).
func (c *Conn) Done() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

func (c *Conn) LocalAddr() net.Addr  { return c.cfg.Local }
func (c *Conn) RemoteAddr() net.Addr { return c.cfg.Remote }

func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl, c.wdl = t, t
	c.notifyLocked()
	c.mu.Unlock()
	return nil
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.notifyLocked()
	c.mu.Unlock()
	return nil
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.notifyLocked()
	c.mu.Unlock()
	return nil
}

// deadlineContext is cancelled at the deadline (if any) or when changed is
// closed, whichever comes first.
func deadlineContext(dl time.Time, changed <-chan struct{}) (context.Context, context.CancelFunc) {
	var ctx context.Context
	var cancel context.CancelFunc
	if dl.IsZero() {
		ctx, cancel = context.WithCancel(context.Background())
	} else {
		ctx, cancel = context.WithDeadline(context.Background(), dl)
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-changed:
			cancel()
		case <-stop:
		}
	}()
	return ctx, func() { close(stop); cancel() }
}
