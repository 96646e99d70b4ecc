package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	chunkSize = 32 << 10
	maxChunks = 64

	// MaxBuffered is the most data the proxy holds in memory for one
	// direction of one connection. With a delay d set, a direction carries
	// at most MaxBuffered/d bytes per second (2 MiB / 50 ms = 40 MiB/s).
	MaxBuffered = chunkSize * maxChunks

	// CutAfterDrain bounds how long CutAfter waits, once its byte count is
	// reached, for the last bytes to be acknowledged before resetting.
	CutAfterDrain = 500 * time.Millisecond

	// DialTimeout bounds the dial to the target for each accepted
	// connection; on failure the accepted connection is reset.
	DialTimeout = 5 * time.Second
)

// Proxy forwards TCP connections from a loopback listener to a target
// address and injects faults on demand. Create one with New and stop it with
// Close. All methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     *net.TCPListener
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	closed      bool
	conns       map[*pair]struct{}
	stalled     bool
	delay       time.Duration
	changed     chan struct{} // closed and replaced when stalled or delay change
	refusing    bool
	unlistened  bool          // the listener was taken out of LISTEN state
	refuseDone  chan struct{} // closed when refusing ends
	relistenErr error
	armed       bool  // CutAfter pending
	budget      int64 // bytes still allowed through while armed
	cutting     bool  // CutAfter fired: nothing more is forwarded until the cut

	up, down atomic.Int64
	accepted atomic.Int64
}

// New starts a proxy listening on 127.0.0.1 (a free port) that forwards
// every accepted connection to target (host:port). The target is dialled
// once per accepted connection, so it need not be up yet.
func New(target string) (*Proxy, error) {
	ln, err := listenLoopback()
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		conns:   make(map[*pair]struct{}),
		changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// listenLoopback listens on a free loopback port bound explicitly by number,
// so that the socket keeps its port when Refuse takes it out of the LISTEN
// state (Linux releases a port picked by bind(0) at that point).
func listenLoopback() (*net.TCPListener, error) {
	var lastErr error
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addr := l.Addr().String()
		l.Close()
		l2, err := net.Listen("tcp", addr)
		if err == nil {
			return l2.(*net.TCPListener), nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// Addr returns the proxy's listening address, 127.0.0.1:port. It does not
// change for the life of the proxy, Refuse included.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address connections are forwarded to.
func (p *Proxy) Target() string { return p.target }

// Cut resets every open connection on both sides at once: both the client
// and the target see ECONNRESET (SO_LINGER 0), as after a NAT drop or a
// pulled cable followed by a reset. Data held by the proxy is discarded.
// New connections are accepted afterwards as usual.
func (p *Proxy) Cut() {
	p.mu.Lock()
	prs := p.takeConnsLocked()
	p.mu.Unlock()
	for _, pr := range prs {
		pr.shut(true)
	}
}

// Stall stops forwarding in both directions of every connection, open or
// new, without closing anything. Data stays in the kernel's socket buffers
// (plus at most one read chunk per direction in the proxy), so senders
// eventually block, as behind a black-holed route. Unstall resumes.
func (p *Proxy) Stall() { p.setStalled(true) }

// Unstall resumes forwarding after Stall: everything held is delivered, in
// order, nothing lost.
func (p *Proxy) Unstall() { p.setStalled(false) }

func (p *Proxy) setStalled(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != on {
		p.stalled = on
		p.notifyLocked()
	}
}

// SetDelay makes each direction of every connection a delay line: a chunk
// read from one side at time t is written to the other side at t+d (so a
// request/response round trip gains 2d). Order is kept and throughput is
// limited only by MaxBuffered/d. The delay is applied when a chunk is
// written, so a change also affects data already held. d <= 0 removes it.
func (p *Proxy) SetDelay(d time.Duration) {
	if d < 0 {
		d = 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.delay != d {
		p.delay = d
		p.notifyLocked()
	}
}

// Refuse makes the port look closed while on is true: new connection
// attempts are refused by the kernel (the client's dial fails with
// ECONNREFUSED, as for a host with nothing listening on the port) while the
// port stays reserved to the proxy, so Addr does not change. Connections
// already open are untouched. Refuse(false) listens again. This models
// "port closed / daemon down"; a host that is down altogether (SYNs
// unanswered) is not modelled, Stall comes closest for open connections.
//
// On Linux this takes the listening socket out of the LISTEN state
// (connect(AF_UNSPEC)); elsewhere new connections are accepted and reset at
// once, which clients see as a reset right after connecting.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.refusing == on {
		return
	}
	if on {
		p.refusing = true
		p.refuseDone = make(chan struct{})
		p.unlistened = unlisten(p.ln) == nil
		return
	}
	if p.unlistened {
		if err := relisten(p.ln); err != nil && p.relistenErr == nil {
			p.relistenErr = fmt.Errorf("faultproxy: listen again after Refuse: %w", err)
		}
		p.unlistened = false
	}
	p.refusing = false
	close(p.refuseDone)
}

// CutAfter arms a one-shot Cut that fires once n more bytes have been
// forwarded, counted over all connections and both directions. Exactly n
// bytes are written to the receiving sockets, then nothing more is forwarded;
// the proxy waits up to CutAfterDrain for the peer to acknowledge them and
// then cuts every connection as Cut does. A receiver that keeps reading thus
// gets exactly n bytes before the reset; one that does not may get fewer.
// n == 0 cuts now; n < 0 disarms a pending CutAfter.
func (p *Proxy) CutAfter(n int64) {
	if n == 0 {
		p.mu.Lock()
		if !p.cutting {
			p.armed = false
		}
		p.mu.Unlock()
		p.Cut()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cutting {
		return // the cut in progress finishes first
	}
	p.armed = n > 0
	p.budget = n
}

// Bytes returns how many bytes have been forwarded client→target (up) and
// target→client (down) since New, over all connections.
func (p *Proxy) Bytes() (up, down int64) { return p.up.Load(), p.down.Load() }

// Conns returns the number of proxied connections currently open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted returns the total number of connections accepted since New
// (including those whose dial to the target failed; not those refused).
func (p *Proxy) Accepted() int { return int(p.accepted.Load()) }

// Close stops the listener, resets every open connection and waits for all
// of the proxy's goroutines to exit. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	prs := p.takeConnsLocked()
	err := p.relistenErr
	p.mu.Unlock()

	p.cancel()
	if cerr := p.ln.Close(); err == nil {
		err = cerr
	}
	for _, pr := range prs {
		pr.shut(true)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) takeConnsLocked() []*pair {
	prs := make([]*pair, 0, len(p.conns))
	for pr := range p.conns {
		prs = append(prs, pr)
		delete(p.conns, pr)
	}
	return prs
}

func (p *Proxy) remove(pr *pair) {
	p.mu.Lock()
	delete(p.conns, pr)
	p.mu.Unlock()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			p.mu.Lock()
			closed, refusing, done := p.closed, p.refusing, p.refuseDone
			p.mu.Unlock()
			switch {
			case closed:
				return
			case refusing:
				// The listener is out of LISTEN state: wait for Refuse(false).
				select {
				case <-done:
				case <-p.ctx.Done():
					return
				}
			default:
				// Transient (EMFILE, ECONNABORTED, a stale wake-up
				// after Refuse): back off briefly.
				select {
				case <-time.After(5 * time.Millisecond):
				case <-p.ctx.Done():
					return
				}
			}
			continue
		}
		p.mu.Lock()
		closed, refusing := p.closed, p.refusing
		p.mu.Unlock()
		if closed || refusing {
			resetConn(c)
			if closed {
				return
			}
			continue
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.handle(c)
	}
}

func (p *Proxy) handle(c *net.TCPConn) {
	defer p.wg.Done()
	var d net.Dialer
	ctx, cancel := context.WithTimeout(p.ctx, DialTimeout)
	sc, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		resetConn(c)
		return
	}
	s := sc.(*net.TCPConn)
	pr := &pair{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		resetConn(c)
		resetConn(s)
		return
	}
	p.conns[pr] = struct{}{}
	p.mu.Unlock()

	upDir := newDirection(c, s, &p.up)
	downDir := newDirection(s, c, &p.down)
	p.wg.Add(4)
	go p.reader(pr, upDir)
	go p.writer(pr, upDir)
	go p.reader(pr, downDir)
	go p.writer(pr, downDir)
}

// pair is one proxied connection: the accepted client side and the dialled
// target side.
type pair struct {
	client, server *net.TCPConn
	done           chan struct{} // closed when the pair is shut
	once           sync.Once
	halves         atomic.Int32 // directions that finished with EOF
}

// shut closes both sides once; abrupt sends resets (SO_LINGER 0).
func (pr *pair) shut(abrupt bool) {
	pr.once.Do(func() {
		if abrupt {
			resetConn(pr.client)
			resetConn(pr.server)
		} else {
			pr.client.Close()
			pr.server.Close()
		}
		close(pr.done)
	})
}

func (p *Proxy) abort(pr *pair) {
	p.remove(pr)
	pr.shut(true)
}

// halfDone records that one direction finished cleanly (EOF forwarded as a
// FIN); when both have, the pair is closed normally.
func (p *Proxy) halfDone(pr *pair) {
	if pr.halves.Add(1) == 2 {
		p.remove(pr)
		pr.shut(false)
	}
}

func resetConn(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// chunk is data read from one side, stamped with the time it was read.
type chunk struct {
	buf []byte
	t   time.Time
	eof bool
}

// direction is one half of a pair: a reader goroutine fills chunks from src
// into queue, a writer goroutine drains them to dst. At most maxChunks
// buffers exist per direction.
type direction struct {
	src, dst *net.TCPConn
	counter  *atomic.Int64
	queue    chan chunk
	free     chan []byte
	nbufs    int // buffers allocated; touched by the reader only
}

func newDirection(src, dst *net.TCPConn, counter *atomic.Int64) *direction {
	return &direction{
		src:     src,
		dst:     dst,
		counter: counter,
		queue:   make(chan chunk, maxChunks+1), // +1 for the EOF mark: sends never block
		free:    make(chan []byte, maxChunks),
	}
}

// getBuf returns a free buffer, allocating up to maxChunks of them, then
// waiting for the writer to return one. It returns nil if the pair is shut.
func (d *direction) getBuf(done <-chan struct{}) []byte {
	select {
	case b := <-d.free:
		return b
	default:
	}
	if d.nbufs < maxChunks {
		d.nbufs++
		return make([]byte, chunkSize)
	}
	select {
	case b := <-d.free:
		return b
	case <-done:
		return nil
	}
}

func (p *Proxy) reader(pr *pair, d *direction) {
	defer p.wg.Done()
	for {
		if !p.waitUnstalled(pr) {
			return
		}
		buf := d.getBuf(pr.done)
		if buf == nil {
			return
		}
		n, err := d.src.Read(buf)
		if n > 0 {
			d.queue <- chunk{buf: buf[:n], t: time.Now()}
		} else {
			d.free <- buf
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				d.queue <- chunk{eof: true, t: time.Now()}
			} else {
				p.abort(pr)
			}
			return
		}
	}
}

func (p *Proxy) writer(pr *pair, d *direction) {
	defer p.wg.Done()
	for {
		var c chunk
		select {
		case c = <-d.queue:
		case <-pr.done:
			return
		}
		if !p.waitSend(pr, c.t) {
			return
		}
		if c.eof {
			if err := d.dst.CloseWrite(); err != nil {
				p.abort(pr)
				return
			}
			p.halfDone(pr)
			return
		}
		n, trigger := p.take(len(c.buf))
		if n == 0 && !trigger {
			// A CutAfter has fired elsewhere: hold everything until
			// the cut reaches this pair.
			<-pr.done
			return
		}
		w, err := d.dst.Write(c.buf[:n])
		d.counter.Add(int64(w))
		if trigger {
			// Cut even if this write failed: other writers are
			// holding their data until the cut.
			p.fireCutAfter(d.dst)
			return
		}
		if err != nil {
			p.abort(pr)
			return
		}
		d.free <- c.buf[:cap(c.buf)]
	}
}

// take reserves up to n bytes of the CutAfter budget. It returns how many
// may be written and whether writing them must be followed by a Cut.
func (p *Proxy) take(n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cutting {
		return 0, false
	}
	if !p.armed {
		return n, false
	}
	if p.budget <= int64(n) {
		p.armed = false
		p.cutting = true
		return int(p.budget), true
	}
	p.budget -= int64(n)
	return n, false
}

// fireCutAfter waits (bounded) for the bytes last written to dst to be
// acknowledged, then cuts every connection.
func (p *Proxy) fireCutAfter(dst *net.TCPConn) {
	deadline := time.Now().Add(CutAfterDrain)
	for unacked(dst) > 0 && time.Now().Before(deadline) {
		select {
		case <-time.After(time.Millisecond):
		case <-p.ctx.Done():
		}
		if p.ctx.Err() != nil {
			break
		}
	}
	p.mu.Lock()
	p.cutting = false
	prs := p.takeConnsLocked()
	p.mu.Unlock()
	for _, pr := range prs {
		pr.shut(true)
	}
}

// waitUnstalled blocks while the proxy is stalled. It returns false if the
// pair was shut meanwhile.
func (p *Proxy) waitUnstalled(pr *pair) bool {
	for {
		p.mu.Lock()
		stalled, changed := p.stalled, p.changed
		p.mu.Unlock()
		if !stalled {
			return true
		}
		select {
		case <-changed:
		case <-pr.done:
			return false
		}
	}
}

// waitSend blocks until data read at t may be written: not stalled and
// t+delay reached, both re-evaluated whenever they change. It returns false
// if the pair was shut meanwhile.
func (p *Proxy) waitSend(pr *pair, t time.Time) bool {
	for {
		p.mu.Lock()
		stalled, delay, changed := p.stalled, p.delay, p.changed
		p.mu.Unlock()
		if stalled {
			select {
			case <-changed:
				continue
			case <-pr.done:
				return false
			}
		}
		wait := time.Until(t.Add(delay))
		if wait <= 0 {
			return true
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-changed:
			timer.Stop()
		case <-pr.done:
			timer.Stop()
			return false
		}
	}
}
