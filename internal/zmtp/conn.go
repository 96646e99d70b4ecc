package zmtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/bufpool"
)

// FullPolicy says what a connection does when its send queue is full.
type FullPolicy int

const (
	// Block makes the sender wait (a client talking to one server).
	Block FullPolicy = iota
	// Disconnect closes the connection (ROUTER: a peer that does not read
	// must never stall the socket's other peers; the zp protocol's credit
	// keeps a healthy peer far below the limit).
	Disconnect
	// DropMessage drops whole messages for this peer only (XPUB: a slow
	// subscriber loses messages and repairs the gap over ROUTER).
	DropMessage
)

// ErrSlowPeer closes a Disconnect-policy connection whose queue overflowed.
var ErrSlowPeer = errors.New("zmtp: peer is not reading; send queue full")

// netError makes any error look like a permanent net.Error, so that zmq4
// marks the connection closed and reaps it (zmq4's Conn.checkIO only does so
// for io.EOF and net.Error values).
type netError struct{ err error }

func (e *netError) Error() string   { return e.err.Error() }
func (e *netError) Unwrap() error   { return e.err }
func (e *netError) Timeout() bool   { return false }
func (e *netError) Temporary() bool { return false }

func asNetError(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return &netError{err: err}
}

type outFrame struct {
	flags    byte // FlagMore, FlagCommand (mechanism-level flags)
	body     []byte
	borrowed bool // body belongs to the sender (Config.NoCopy): not pooled
}

// conn sits between a zmq4 socket and the network. zmq4 talks NULL to it;
// it talks the configured mechanism to the peer. It parses the frames zmq4
// writes, queues them (bounded) for its own writer goroutine, and hands
// zmq4 a synthetic greeting and READY followed by the peer's frames.
type conn struct {
	raw    net.Conn
	br     *bufio.Reader
	cfg    *Config
	peer   *Peer
	id     []byte
	cipher Cipher

	// Read side: only zmq4's reader goroutine calls Read.
	rpending []byte              // bytes to hand out before reading the network
	rpass    int                 // NULL: body bytes passed straight from br
	rframes  int                 // frames of the current inbound message so far
	rbytes   int                 // bytes of the current inbound message so far
	rbuf     []byte              // CURVE: ciphertext of one frame (reused)
	rplain   []byte              // CURVE: header (+ plaintext without rdec) handed to zmq4 (reused)
	rdec     Decrypter           // CURVE: the cipher, when it decrypts into zmq4's buffer
	roff     int                 // rdec: frame octets of rbuf decrypted for zmq4 so far
	rleft    int                 // rdec: frame octets of rbuf still to decrypt for zmq4
	subs     map[string]struct{} // subscriptions admitted (filtering only)
	rmid     bool                // filtering: inside a multi-frame message

	// Write side: parser of what zmq4 writes, guarded by wmu.
	wmu       sync.Mutex
	wskip     int // greeting octets zmq4 still has to write
	wready    bool
	whdr      []byte
	wflags    byte
	wbody     []byte
	wneed     int
	wlong     bool
	whave     bool // header complete, collecting body
	wdrop     bool // dropping the rest of the current message
	wborrowed bool // wbody is the sender's own slice (NoCopy)
	wmid      bool // inside a message whose earlier frames were queued
	dropped   uint64

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []outFrame
	queued int
	closed bool
	err    error

	closeOnce sync.Once
	done      chan struct{}
}

func newConn(raw net.Conn, br *bufio.Reader, cfg *Config, peer *Peer, id []byte) *conn {
	c := &conn{
		raw:    raw,
		br:     br,
		cfg:    cfg,
		peer:   peer,
		id:     id,
		cipher: peer.Cipher,
		wskip:  greetingLen,
		done:   make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	if d, ok := peer.Cipher.(Decrypter); ok && !cfg.filters() {
		c.rdec = d // filtering needs each frame's plain text before zmq4 does
	}
	// What zmq4 reads first: a NULL greeting and a READY carrying the peer's
	// socket type and the routing identity this side assigned.
	g := greeting("NULL", false)
	st, _ := peer.Meta.Get(PropSocketType)
	meta := Metadata{{Name: PropSocketType, Value: st}, {Name: PropIdentity, Value: id}}
	ready := encodeCommand("READY", meta.AppendEncode(nil))
	c.rpending = append(g[:], appendFrameHeader(nil, flagCommand, len(ready))...)
	c.rpending = append(c.rpending, ready...)
	if len(cfg.Barrier) > 0 {
		// A subscription, as if the peer had sent it (see Config.Barrier).
		sub := append([]byte{1}, cfg.Barrier...)
		c.rpending = append(appendFrameHeader(c.rpending, 0, len(sub)), sub...)
	}
	for _, h := range cfg.Hello {
		c.enqueueLocked(outFrame{body: append([]byte(nil), h...)})
		c.queued += len(h)
	}
	go c.writer()
	return c
}

// Read implements net.Conn for zmq4's reader goroutine.
func (c *conn) Read(p []byte) (int, error) {
	if len(c.rpending) == 0 && c.rpass == 0 && c.rleft == 0 {
		if err := c.next(); err != nil {
			c.fail(err)
			return 0, asNetError(err)
		}
	}
	if len(c.rpending) > 0 {
		n := copy(p, c.rpending)
		c.rpending = c.rpending[n:]
		return n, nil
	}
	if c.rleft > 0 {
		// zmq4 reads the body into a buffer of its own: decrypt into it.
		n := min(len(p), c.rleft)
		c.rdec.Decrypt(p[:n], c.rbuf, c.roff)
		c.roff += n
		c.rleft -= n
		return n, nil
	}
	if len(p) > c.rpass {
		p = p[:c.rpass]
	}
	n, err := c.br.Read(p)
	c.rpass -= n
	if err != nil {
		err = eofToUnexpected(err)
		c.fail(err)
		return n, asNetError(err)
	}
	return n, nil
}

// next reads the next traffic frame from the peer and stages it for Read.
func (c *conn) next() error {
	limit := c.cfg.maxFrame()
	if c.cipher != nil {
		limit += c.cipher.Overhead()
	}
	if c.cfg.direct() {
		return c.receive(limit)
	}
	for {
		flags, size, err := readFrameHeader(c.br, limit)
		if err != nil {
			if errors.Is(err, io.EOF) && c.rframes == 0 {
				return io.EOF
			}
			return eofToUnexpected(err)
		}
		if c.cipher == nil {
			if flags&flagCommand != 0 {
				// ZMTP 3.0 defines no traffic-phase commands; skip any.
				if _, err := c.br.Discard(size); err != nil {
					return eofToUnexpected(err)
				}
				continue
			}
			if err := c.account(size, flags&flagMore != 0); err != nil {
				return err
			}
			c.rplain = appendFrameHeader(c.rplain[:0], flags, size)
			if c.cfg.filters() {
				// Small frames (MaxFrame): read the body to judge it.
				k := len(c.rplain)
				c.rplain = slices.Grow(c.rplain, size)[:k+size]
				if _, err := io.ReadFull(c.br, c.rplain[k:]); err != nil {
					return eofToUnexpected(err)
				}
				if !c.admit(c.rplain[k:], flags&flagMore != 0) {
					continue
				}
				c.rpending = c.rplain
				return nil
			}
			c.rpending = c.rplain
			c.rpass = size
			return nil
		}
		// CURVE: every frame is a MESSAGE command body, whatever its frame
		// flags (libzmq sends it as a plain frame).
		if cap(c.rbuf) < size {
			c.rbuf = make([]byte, size)
		}
		c.rbuf = c.rbuf[:size]
		if _, err := io.ReadFull(c.br, c.rbuf); err != nil {
			return eofToUnexpected(err)
		}
		plainLen := size - c.cipher.Overhead()
		if plainLen < 0 {
			return fmt.Errorf("%w: MESSAGE too short", errFrame)
		}
		// A large frame is authenticated now and decrypted as zmq4 reads
		// it (Read); a small one is opened here in one go.
		split := c.rdec != nil && plainLen >= splitOpenMin
		var mflags byte
		var hdr, out []byte
		if split {
			mflags, _, err = c.rdec.Verify(c.rbuf)
		} else {
			hdr = appendFrameHeader(c.rplain[:0], 0, plainLen)
			mflags, out, err = c.cipher.Open(hdr, c.rbuf)
		}
		if err != nil {
			return err
		}
		if mflags&FlagCommand != 0 {
			continue
		}
		zflags := mflags & FlagMore
		if err := c.account(plainLen, zflags != 0); err != nil {
			return err
		}
		if split {
			c.rplain = appendFrameHeader(c.rplain[:0], zflags, plainLen)
			c.rpending = c.rplain
			c.roff, c.rleft = 0, plainLen
			return nil
		}
		out[0] |= zflags
		c.rplain = out
		if c.cfg.filters() && !c.admit(out[len(hdr):], zflags != 0) {
			continue
		}
		c.rpending = out
		return nil
	}
}

// receive hands every message the peer sends to Config.OnRecv, on zmq4's
// reader goroutine, until the connection fails; zmq4 sees none of them. A
// frame of bufpool.Min octets or more is read (or decrypted) into a buffer
// from bufpool, a smaller one into an allocation of its own size.
func (c *conn) receive(limit int) error {
	var frames [][]byte
	for {
		flags, size, err := readFrameHeader(c.br, limit)
		if err != nil {
			if errors.Is(err, io.EOF) && len(frames) == 0 {
				return io.EOF
			}
			return eofToUnexpected(err)
		}
		var body []byte
		var more bool
		if c.cipher == nil {
			if flags&flagCommand != 0 { // no traffic-phase commands in ZMTP 3.0
				if _, err := c.br.Discard(size); err != nil {
					return eofToUnexpected(err)
				}
				continue
			}
			more = flags&flagMore != 0
			if err := c.account(size, more); err != nil {
				return err
			}
			body = bufpool.Get(size)
			if _, err := io.ReadFull(c.br, body); err != nil {
				return eofToUnexpected(err)
			}
		} else {
			if cap(c.rbuf) < size {
				c.rbuf = make([]byte, size)
			}
			c.rbuf = c.rbuf[:size]
			if _, err := io.ReadFull(c.br, c.rbuf); err != nil {
				return eofToUnexpected(err)
			}
			plainLen := size - c.cipher.Overhead()
			if plainLen < 0 {
				return fmt.Errorf("%w: MESSAGE too short", errFrame)
			}
			var mflags byte
			if c.rdec != nil && plainLen >= bufpool.Min {
				if mflags, _, err = c.rdec.Verify(c.rbuf); err == nil && mflags&FlagCommand == 0 {
					body = bufpool.Get(plainLen)
					c.rdec.Decrypt(body, c.rbuf, 0)
				}
			} else {
				mflags, body, err = c.cipher.Open(make([]byte, 0, plainLen), c.rbuf)
			}
			if err != nil {
				return err
			}
			if mflags&FlagCommand != 0 {
				continue
			}
			more = mflags&FlagMore != 0
			if err := c.account(plainLen, more); err != nil {
				return err
			}
		}
		frames = append(frames, body)
		if !more {
			c.cfg.OnRecv(c.id, frames)
			frames = nil
		}
	}
}

// splitOpenMin is the smallest frame decrypted straight into zmq4's buffer
// (Decrypter): below it, opening in one go and copying costs less than
// deriving the keystream a second time.
const splitOpenMin = 16 << 10

// admit decides whether a frame from the peer of a filtering connection
// (an XPUB) reaches zmq4: subscriptions that Config.Subscribe allows, up
// to MaxSubscriptions, and unsubscriptions of what was admitted. A
// duplicate subscription is dropped (zmq4 keeps a set: it would change
// nothing).
func (c *conn) admit(body []byte, more bool) bool {
	refuse := func(topic []byte, reason string) bool {
		if c.cfg.OnRefuse != nil {
			c.cfg.OnRefuse(c.peer, topic, reason)
		}
		return false
	}
	mid := c.rmid
	c.rmid = more
	if more || mid || len(body) == 0 || body[0] > 1 {
		return refuse(nil, "not a subscription")
	}
	topic := body[1:]
	if c.subs == nil {
		c.subs = make(map[string]struct{})
	}
	_, have := c.subs[string(topic)]
	if body[0] == 0 {
		delete(c.subs, string(topic))
		return have
	}
	switch {
	case have:
		return false
	case len(c.subs) >= c.cfg.maxSubscriptions():
		return refuse(topic, "limit")
	case c.cfg.Subscribe != nil && !c.cfg.Subscribe(c.peer, topic):
		return refuse(topic, "unauthorised")
	}
	c.subs[string(topic)] = struct{}{}
	return true
}

// account enforces the per-message limits on what the peer sends.
func (c *conn) account(size int, more bool) error {
	c.rframes++
	c.rbytes += size
	if c.rframes > c.cfg.maxFrames() || c.rbytes > c.cfg.maxMessage() {
		return fmt.Errorf("%w: message of %d frames, %d octets", errTooLarge, c.rframes, c.rbytes)
	}
	if !more {
		c.rframes, c.rbytes = 0, 0
	}
	return nil
}

// Write implements net.Conn for zmq4's writers. It parses ZMTP frames and
// queues them; it never blocks on the network unless the policy is Block.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := len(p)
	for len(p) > 0 {
		if c.wskip > 0 { // zmq4's own greeting: discard
			n := min(c.wskip, len(p))
			c.wskip -= n
			p = p[n:]
			continue
		}
		if !c.whave {
			c.whdr = append(c.whdr, p[0])
			p = p[1:]
			need := 2
			if c.whdr[0]&flagLong != 0 {
				need = 9
			}
			if len(c.whdr) < need {
				continue
			}
			var size uint64
			if need == 9 {
				for _, b := range c.whdr[1:9] {
					size = size<<8 | uint64(b)
				}
			} else {
				size = uint64(c.whdr[1])
			}
			if size > uint64(c.cfg.maxOutFrame()) {
				err := fmt.Errorf("bug: zmq4 wrote a frame of %d octets", size)
				c.fail(err)
				return 0, asNetError(err)
			}
			c.wflags = c.whdr[0] &^ flagLong
			c.whdr = c.whdr[:0]
			c.whave = true
			c.wneed = int(size)
			c.wbody, c.wborrowed = nil, false
			if c.wneed == 0 { // an empty frame is complete at once
				c.wbody = getBuf(0)
				c.whave = false
				if err := c.frameDone(); err != nil {
					return 0, asNetError(err)
				}
				continue
			}
			if len(p) == 0 {
				break // the body comes in the next write
			}
		}
		if c.wbody == nil {
			if c.cfg.NoCopy && len(p) >= c.wneed {
				// The whole body in one write from an owner that never
				// modifies what it sent: keep a reference, not a copy.
				c.wbody, c.wborrowed = p[:c.wneed:c.wneed], true
				p = p[c.wneed:]
				c.wneed = 0
				c.whave = false
				if err := c.frameDone(); err != nil {
					return 0, asNetError(err)
				}
				continue
			}
			c.wbody = getBuf(c.wneed)
		}
		n := min(c.wneed, len(p))
		c.wbody = append(c.wbody, p[:n]...)
		c.wneed -= n
		p = p[n:]
		if c.wneed == 0 {
			c.whave = false
			if err := c.frameDone(); err != nil {
				return 0, asNetError(err)
			}
		}
	}
	return total, nil
}

// frameDone routes a complete frame written by zmq4.
func (c *conn) frameDone() error {
	body, flags, borrowed := c.wbody, c.wflags, c.wborrowed
	c.wbody = nil
	putBuf := func(b []byte) {
		if !borrowed {
			putBuf(b)
		}
	}
	if flags&flagCommand != 0 {
		// zmq4's READY (and any later command) concerns only the synthetic
		// NULL session between zmq4 and us.
		c.wready = true
		putBuf(body)
		return nil
	}
	more := flags&flagMore != 0
	if !c.wmid && len(c.cfg.Barrier) > 0 && bytes.HasPrefix(body, c.cfg.Barrier) {
		if c.cfg.OnBarrier != nil {
			c.cfg.OnBarrier(body[len(c.cfg.Barrier):])
		}
		putBuf(body)
		c.wdrop = more // swallow the rest of the barrier message
		return nil
	}
	if c.wdrop {
		putBuf(body)
		c.wdrop = more
		return nil
	}
	f := outFrame{body: body, borrowed: borrowed}
	if more {
		f.flags = FlagMore
	}
	first := !c.wmid
	c.wmid = more

	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			putBuf(body)
			return c.errLocked()
		}
		if c.admitLocked(len(body), first) {
			break
		}
		switch c.cfg.OnFull {
		case Disconnect:
			c.failLocked(ErrSlowPeer)
			putBuf(body)
			return ErrSlowPeer
		case DropMessage:
			c.dropped++
			c.wdrop = more
			c.wmid = false
			putBuf(body)
			if c.cfg.OnDrop != nil {
				c.cfg.OnDrop()
			}
			return nil
		default:
			c.cond.Wait()
		}
	}
	c.enqueueLocked(f)
	c.cond.Broadcast()
	return nil
}

// admitLocked counts n more octets on c's queue if they may join it, and
// reports whether they may; first is false inside a message whose earlier
// frames were queued (a message is never split). Past SendQueue, a
// connection with a Burst may grow to Burst.PerPeer while all the queues
// sharing it reference at most Burst.Max octets.
func (c *conn) admitLocked(n int, first bool) bool {
	q := c.queued + n
	ok := q <= c.cfg.sendQueue() || c.queued == 0 || !first
	if b := c.cfg.Burst; !ok && b != nil {
		ok = q <= b.PerPeer && b.Used()+int64(n) <= b.Max
	}
	if ok {
		c.queued = q
	}
	return ok
}

// enqueueLocked appends f to c's queue (counted by admitLocked).
func (c *conn) enqueueLocked(f outFrame) {
	c.queue = append(c.queue, f)
	if b := c.cfg.Burst; b != nil {
		b.hold(f.body)
	}
}

// sendDirect queues one message, its frames in order (Config.OnDirect).
// With NoCopy the queue references the frames; else it copies them.
func (c *conn) sendDirect(frames [][]byte) error {
	total := 0
	for _, f := range frames {
		total += len(f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return c.errLocked()
		}
		if c.admitLocked(total, true) {
			break
		}
		switch c.cfg.OnFull {
		case Disconnect:
			c.failLocked(ErrSlowPeer)
			return ErrSlowPeer
		case DropMessage:
			c.dropped++
			if c.cfg.OnDrop != nil {
				c.cfg.OnDrop()
			}
			return nil
		default:
			c.cond.Wait()
		}
	}
	for i, f := range frames {
		of := outFrame{body: f, borrowed: true}
		if !c.cfg.NoCopy {
			of = outFrame{body: append(getBuf(len(f)), f...)}
		}
		if i < len(frames)-1 {
			of.flags = FlagMore
		}
		c.enqueueLocked(of)
	}
	c.cond.Broadcast()
	return nil
}

// writeBatch bounds the octets the writer takes from the queue at once,
// and so the sealing buffer it needs.
const writeBatch = 256 << 10

// writer is the connection's only network writer. It holds no buffer
// between batches, so an idle connection costs no memory.
func (c *conn) writer() {
	var (
		batch []outFrame
		bufs  net.Buffers
		hdrs  []byte
	)
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closed {
			c.cond.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(c.queue) && (n == 0 || size+len(c.queue[n].body) <= writeBatch) {
			size += len(c.queue[n].body)
			n++
		}
		batch = append(batch[:0], c.queue[:n]...)
		rest := copy(c.queue, c.queue[n:])
		clear(c.queue[rest:])
		c.queue = c.queue[:rest]
		c.mu.Unlock()

		bufs = bufs[:0]
		var out []byte
		if c.cipher == nil {
			hdrs = hdrs[:0]
			for _, f := range batch {
				hdrs = appendFrameHeader(hdrs, f.flags&FlagMore, len(f.body))
			}
			h := hdrs
			for _, f := range batch {
				k := 2
				if len(f.body) > 255 {
					k = 9
				}
				bufs = append(bufs, h[:k], f.body)
				h = h[k:]
			}
		} else {
			out = getBuf(size + len(batch)*(9+c.cipher.Overhead()))
			for _, f := range batch {
				out = appendFrameHeader(out, 0, len(f.body)+c.cipher.Overhead())
				out = c.cipher.Seal(out, f.flags, f.body)
			}
			bufs = append(bufs, out)
		}
		_, err := bufs.WriteTo(c.raw)
		for i := range batch {
			if b := c.cfg.Burst; b != nil {
				b.release(batch[i].body)
			}
			if !batch[i].borrowed {
				putBuf(batch[i].body)
			}
			batch[i] = outFrame{}
		}
		putBuf(out)
		c.mu.Lock()
		c.queued -= size
		c.cond.Broadcast()
		c.mu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *conn) errLocked() error {
	if c.err != nil {
		return c.err
	}
	return net.ErrClosed
}

func (c *conn) fail(err error) {
	c.mu.Lock()
	c.failLocked(err)
	c.mu.Unlock()
}

func (c *conn) failLocked(err error) {
	if c.closed {
		return
	}
	if b := c.cfg.Burst; b != nil { // the queue is dropped
		for _, f := range c.queue {
			b.release(f.body)
		}
		c.queue = nil
	}
	c.closed = true
	c.err = err
	c.cond.Broadcast()
	_ = c.raw.Close()
	go c.closeOnce.Do(func() {
		close(c.done)
		if c.cfg.OnClose != nil {
			c.cfg.OnClose(c.id, c.peer, err)
		}
	})
}

// Close implements net.Conn. A Block-policy connection (a client) first
// lets its writer flush what is queued, for up to a second, so that a last
// message sent just before closing the socket is not lost.
func (c *conn) Close() error {
	if c.cfg.OnFull == Block {
		// The writer broadcasts after every batch; the timer wakes us at
		// the deadline.
		expired := false
		t := time.AfterFunc(time.Second, func() {
			c.mu.Lock()
			expired = true
			c.cond.Broadcast()
			c.mu.Unlock()
		})
		c.mu.Lock()
		for (len(c.queue) > 0 || c.queued > 0) && !c.closed && !expired {
			c.cond.Wait()
		}
		c.mu.Unlock()
		t.Stop()
	}
	c.fail(net.ErrClosed)
	return nil
}

func (c *conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.raw.SetReadDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return nil }

// Dropped returns how many messages the DropMessage policy discarded.
func (c *conn) Dropped() uint64 {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.dropped
}

// Frame bodies are pooled by power-of-two size class.
var pools [32]sync.Pool

func class(n int) int {
	c := 0
	for (1 << c) < n {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	if n < 512 {
		return make([]byte, 0, n)
	}
	c := class(n)
	if v := pools[c].Get(); v != nil {
		return (*(v.(*[]byte)))[:0]
	}
	return make([]byte, 0, 1<<c)
}

func putBuf(b []byte) {
	if cap(b) < 512 || cap(b)&(cap(b)-1) != 0 {
		return
	}
	b = b[:0]
	pools[class(cap(b))].Put(&b)
}
