package zmtp

import (
	"bufio"
	"container/list"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
	ztransport "github.com/go-zeromq/zmq4/transport"
	"golang.org/x/sys/unix"
)

// Config configures every connection of one zmq4 socket. It travels to the
// transport in the socket's context (WithConfig), because zmq4 gives a
// transport nothing but that context and an address.
type Config struct {
	// Mechanism secures the connection; nil means NULL.
	Mechanism Mechanism
	// SocketType is the zmq4 socket type above ("ROUTER", "DEALER", …),
	// announced to the peer in the handshake metadata.
	SocketType string
	// HandshakeTimeout bounds greeting plus handshake (default 10s).
	HandshakeTimeout time.Duration
	// MaxFrame bounds one inbound frame (default 4 MiB), MaxMessage one
	// inbound message (default 8 MiB), MaxFrames its frame count (default 16).
	MaxFrame, MaxMessage, MaxFrames int
	// SendQueue bounds the octets queued to one peer (default 8 MiB).
	SendQueue int
	// Burst, when set, lets a peer's queue grow past SendQueue up to
	// Burst.PerPeer octets while all the queues sharing it hold no more
	// than Burst.Max: room for a subscriber that falls behind for a moment,
	// bounded for the whole socket whatever the number of peers.
	Burst *Burst
	// NoCopy promises that the socket's owner never modifies a frame after
	// sending it: queued frames then reference the sender's memory instead
	// of a copy (an XPUB with many subscribers queues one message, not one
	// copy per subscriber).
	NoCopy bool
	// OnFull is what happens when SendQueue would be exceeded.
	OnFull FullPolicy
	// Identity returns the routing identity zmq4 gets for an accepted peer
	// (ROUTER). Nil: 16 random octets. The peer never chooses it.
	Identity func(*Peer) []byte
	// AnnounceKey, on a server using CURVE, is put in the ERROR sent to a
	// peer that greets with another mechanism, so that clients can learn the
	// server's public key on first contact (see docs/PROTOCOL.md).
	AnnounceKey string
	// Barrier, on an XPUB, makes every connection subscribe (towards zmq4)
	// to this topic; a message whose first frame starts with it is not sent
	// to the peer but reported to OnBarrier with the rest of that frame.
	// zmq4's publisher writes each message to every connection before the
	// next, so a barrier seen on one connection means every earlier
	// message was handed to every connection: a publisher waits for its
	// barrier to keep zmq4's unbounded queue short.
	Barrier   []byte
	OnBarrier func(payload []byte)
	// Hello lists messages (one frame each) sent to every peer right after
	// the handshake, before anything zmq4 sends: an XSUB uses it to
	// subscribe at each publisher that connects.
	Hello [][]byte
	// Subscribe, on an XPUB, authorises each subscription a peer sends
	// (the topic, without its leading 1 octet): false drops it before
	// zmq4 sees it, so publications are never matched against it.
	// ZeroMQ subscriptions match by prefix ("" gets everything), so an
	// XPUB that publishes anything private must set this. It must not
	// block. Setting Subscribe or MaxSubscriptions makes the connection
	// filter what the peer sends: only subscriptions it admitted, and
	// unsubscriptions of those, reach zmq4; anything else is dropped.
	Subscribe func(p *Peer, topic []byte) bool
	// MaxSubscriptions bounds the subscriptions one connection holds
	// (default 64 when filtering): zmq4 matches every publication against
	// each of them, so their number is a cost the peer must not choose.
	MaxSubscriptions int
	// OnRefuse reports a subscription (or other message) that the filter
	// dropped: reason is "unauthorised", "limit" or "not a subscription".
	OnRefuse func(p *Peer, topic []byte, reason string)
	// MaxHandshakes bounds handshakes in progress on a listener (default
	// 256). When it is reached, a silent handshake (the peer has sent
	// nothing yet) is dropped for the new connection: the oldest of the
	// address with the most silent ones. When all are talking, the new
	// connection is refused. An honest client greets at once, so a flood
	// of silent connections evicts its own.
	MaxHandshakes int
	// Dial, when set, makes the connection instead of the network: the
	// socket's endpoint is then SchemeDial+"://NAME" (NAME for logs). A
	// fleet client dials an agent through a hub's tunnel this way.
	Dial func(ctx context.Context) (net.Conn, error)
	// Inject, on a listening socket, hands it connections made elsewhere
	// (an agent's tunnels), which it treats as accepted ones: handshake,
	// limits and all.
	Inject <-chan net.Conn
	// Hooks; each may be nil and must not block.
	// OnConnect receives a function that closes this connection.
	OnConnect func(id []byte, p *Peer, remote net.Addr, closeConn func())
	// OnDirect receives a function that queues one message (its frames)
	// on this connection as zmq4's Send would, under the same SendQueue
	// and OnFull policy, but without zmq4: its Send makes a context, a
	// timer and an errgroup goroutine for every message, which small
	// messages (a FILE per entry of a tree) pay in full. An owner that uses
	// it must send nothing through zmq4's Send on this connection, or the
	// frames of the two could interleave.
	OnDirect func(id []byte, send func(frames [][]byte) error)
	// OnRecv, when set, takes every message the peer sends instead of
	// zmq4 (whose reader allocates every frame afresh and hands each
	// message through a channel): it is called on the connection's reader
	// goroutine with the message's frames, which it owns; a frame of
	// bufpool.Min octets or more comes from bufpool, and the owner may
	// bufpool.Put it once done with it. It may block: the connection then
	// stops reading from the peer. zmq4's Recv then returns only errors
	// (the socket's end). Ignored on a filtering connection (Subscribe).
	OnRecv             func(id []byte, frames [][]byte)
	OnClose            func(id []byte, p *Peer, err error)
	OnHandshakeFailure func(remote net.Addr, err *HandshakeError)
	OnDrop             func()
}

func (c *Config) mechanism() Mechanism {
	if c.Mechanism == nil {
		return Null{}
	}
	return c.Mechanism
}

func orDefault(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

func (c *Config) maxFrame() int   { return orDefault(c.MaxFrame, 4<<20) }
func (c *Config) maxMessage() int { return orDefault(c.MaxMessage, 8<<20) }
func (c *Config) maxFrames() int  { return orDefault(c.MaxFrames, 16) }
func (c *Config) sendQueue() int  { return orDefault(c.SendQueue, 8<<20) }

// Burst is the room past Config.SendQueue that the connections of one
// socket share (see Config.Burst). It counts the octets their queues
// reference, each frame once however many queues hold it (with NoCopy an
// XPUB queues one publication on every subscriber), until written or the
// connection ends. Safe for concurrent use.
type Burst struct {
	// PerPeer is the most one connection may queue.
	PerPeer int
	// Max bounds what all the queues together reference when one of them
	// grows past its SendQueue; give or take one message, since a message
	// is admitted by its first frame and never split.
	Max int64

	mu   sync.Mutex
	refs map[frameKey]int32
	used int64
}

type frameKey struct {
	p *byte
	n int
}

// Used returns the octets the queues sharing b reference.
func (b *Burst) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

func (b *Burst) hold(f []byte) {
	if len(f) == 0 {
		return
	}
	k := frameKey{&f[0], len(f)}
	b.mu.Lock()
	if b.refs == nil {
		b.refs = make(map[frameKey]int32)
	}
	if b.refs[k]++; b.refs[k] == 1 {
		b.used += int64(len(f))
	}
	b.mu.Unlock()
}

func (b *Burst) release(f []byte) {
	if len(f) == 0 {
		return
	}
	k := frameKey{&f[0], len(f)}
	b.mu.Lock()
	if n, ok := b.refs[k]; ok {
		if n <= 1 {
			delete(b.refs, k)
			b.used -= int64(len(f))
		} else {
			b.refs[k] = n - 1
		}
	}
	b.mu.Unlock()
}

// direct reports whether connections hand messages to OnRecv.
func (c *Config) direct() bool { return c.OnRecv != nil && !c.filters() }

// filters reports whether connections check what the peer sends (XPUB).
func (c *Config) filters() bool { return c.Subscribe != nil || c.MaxSubscriptions > 0 }

func (c *Config) maxSubscriptions() int { return orDefault(c.MaxSubscriptions, 64) }

// maxOutFrame bounds what our own side may write: a bug guard only.
func (c *Config) maxOutFrame() int { return 1 << 30 }

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
}

type ctxKey struct{}

// WithConfig returns a context for zmq4.NewX that makes the zp transports use cfg.
func WithConfig(ctx context.Context, cfg *Config) context.Context {
	return context.WithValue(ctx, ctxKey{}, cfg)
}

func configFrom(ctx context.Context) (*Config, error) {
	cfg, ok := ctx.Value(ctxKey{}).(*Config)
	if !ok || cfg == nil {
		return nil, errors.New("zmtp: socket context carries no zmtp.Config (use zmtp.WithConfig)")
	}
	return cfg, nil
}

// Transport names registered with zmq4.
const (
	SchemeTCP  = "zptcp"
	SchemeIPC  = "zpipc"
	SchemeDial = "zpdial" // Config.Dial makes the connection
)

func init() {
	for scheme, network := range map[string]string{SchemeTCP: "tcp", SchemeIPC: "unix", SchemeDial: "dial"} {
		if err := zmq4.RegisterTransport(scheme, transport{network: network}); err != nil {
			panic(fmt.Sprintf("bug: registering %s: %v", scheme, err))
		}
	}
}

// Endpoint maps a ZeroMQ endpoint (tcp://host:port, ipc:///path) to the zp
// transport that serves it.
func Endpoint(ep string) (string, error) {
	switch {
	case strings.HasPrefix(ep, "tcp://"):
		return SchemeTCP + ep[len("tcp"):], nil
	case strings.HasPrefix(ep, "ipc://"):
		return SchemeIPC + ep[len("ipc"):], nil
	}
	return "", fmt.Errorf("zmtp: unsupported endpoint %q (want tcp://HOST:PORT or ipc:///PATH)", ep)
}

type transport struct{ network string }

func (t transport) Addr(ep string) (string, error) {
	if t.network == "unix" || t.network == "dial" {
		if ep == "" {
			return "", errors.New("zmtp: empty ipc path")
		}
		return ep, nil
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", err
	}
	if port == "*" || port == "" {
		port = "0"
	}
	if host == "*" {
		host = ""
	}
	return net.JoinHostPort(host, port), nil
}

func (t transport) Dial(ctx context.Context, d ztransport.Dialer, addr string) (net.Conn, error) {
	cfg, err := configFrom(ctx)
	if err != nil {
		return nil, err
	}
	var raw net.Conn
	switch {
	case t.network == "dial" && cfg.Dial == nil:
		return nil, errors.New("zmtp: " + SchemeDial + ":// without Config.Dial")
	case t.network == "dial":
		raw, err = cfg.Dial(ctx)
	default:
		raw, err = d.DialContext(ctx, t.network, addr)
	}
	if err != nil {
		return nil, err
	}
	c, err := handshake(ctx, raw, cfg, false, nil)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

func (t transport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	cfg, err := configFrom(ctx)
	if err != nil {
		return nil, err
	}
	if t.network == "dial" {
		return nil, errors.New("zmtp: cannot listen on " + SchemeDial + "://")
	}
	ln, err := net.Listen(t.network, addr)
	if err != nil {
		return nil, err
	}
	l := &listener{
		Listener: ln,
		cfg:      cfg,
		ready:    make(chan net.Conn),
		done:     make(chan struct{}),
		max:      orDefault(cfg.MaxHandshakes, 256),
		silent:   make(map[string]int),
	}
	l.pending.Init()
	l.ctx, l.cancel = context.WithCancel(ctx)
	go l.run()
	if cfg.Inject != nil {
		go l.injected(cfg.Inject)
	}
	return l, nil
}

// listener accepts connections and runs each handshake in its own goroutine
// with a deadline, so that a peer stalling mid-handshake delays nobody
// (zmq4's accept loop would otherwise run the handshake inline).
type listener struct {
	net.Listener
	cfg       *Config
	ctx       context.Context
	cancel    context.CancelFunc
	ready     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	max     int
	mu      sync.Mutex
	pending list.List      // *pendingConn, oldest first
	silent  map[string]int // silent handshakes in progress per remote address
}

// pendingConn is a connection whose handshake is in progress.
type pendingConn struct {
	raw     net.Conn
	addr    string
	evicted bool // under listener.mu
	talking bool // under listener.mu: the peer has sent something
}

// remoteHost is what the per-address limit counts by: the IP for TCP, one
// bucket for everything on a Unix socket.
func remoteHost(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.Network()
}

// admit registers a new handshake. When the listener already holds
// MaxHandshakes, one silent connection (its peer has sent nothing yet) is
// dropped for the new one: the oldest of the address that holds the most
// silent connections, so that a flood from one address evicts its own
// first. If every handshake in progress is talking, the new connection is
// refused (nil). An honest client greets at once, so honest connections
// are almost never silent, and a burst of them is never limited below
// MaxHandshakes.
func (l *listener) admit(raw net.Conn) (*list.Element, *pendingConn) {
	p := &pendingConn{raw: raw, addr: remoteHost(raw.RemoteAddr())}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending.Len() >= l.max {
		victim := l.evictable()
		if victim == nil {
			return nil, nil
		}
		v := victim.Value.(*pendingConn)
		v.evicted = true
		l.forgetLocked(victim, v)
		_ = v.raw.Close()
	}
	e := l.pending.PushBack(p)
	l.silent[p.addr]++
	return e, p
}

// evictable picks the handshake to drop: the oldest silent one of the
// address with the most silent ones (addresses tried heaviest first, as
// some of those counted silent turn out to have data waiting).
func (l *listener) evictable() *list.Element {
	tried := map[string]bool{}
	for {
		heaviest, n := "", 0
		for addr, k := range l.silent {
			if k > n && !tried[addr] {
				heaviest, n = addr, k
			}
		}
		if n == 0 {
			return nil
		}
		tried[heaviest] = true
		if e := l.oldestSilent(func(v *pendingConn) bool { return v.addr == heaviest }); e != nil {
			return e
		}
	}
}

// oldestSilent returns the oldest handshake in progress that match accepts
// and whose peer has sent nothing, marking those found talking on the way.
func (l *listener) oldestSilent(match func(*pendingConn) bool) *list.Element {
	for e := l.pending.Front(); e != nil; e = e.Next() {
		v := e.Value.(*pendingConn)
		if v.talking || !match(v) {
			continue
		}
		if hasInput(v.raw) { // arrived, not read yet: a busy machine
			l.talkingLocked(v)
			continue
		}
		return e
	}
	return nil
}

// talking records that p's peer has sent something.
func (l *listener) talking(p *pendingConn) {
	l.mu.Lock()
	if !p.evicted {
		l.talkingLocked(p)
	}
	l.mu.Unlock()
}

func (l *listener) talkingLocked(p *pendingConn) {
	if !p.talking {
		p.talking = true
		l.silentDone(p.addr)
	}
}

func (l *listener) silentDone(addr string) {
	if l.silent[addr]--; l.silent[addr] <= 0 {
		delete(l.silent, addr)
	}
}

func (l *listener) forgetLocked(e *list.Element, p *pendingConn) {
	l.pending.Remove(e)
	if !p.talking {
		l.silentDone(p.addr)
	}
}

// hasInput reports whether the peer has sent something that is waiting to
// be read: a connection whose handshake goroutine has not run yet (a busy
// machine) but whose greeting arrived is talking, not idling.
func hasInput(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n > 0
}

// finish forgets a handshake that ended; it reports whether it had been
// evicted.
func (l *listener) finish(e *list.Element, p *pendingConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.evicted {
		return true
	}
	l.forgetLocked(e, p)
	return false
}

func (l *listener) run() {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.ctx.Err() != nil {
				return
			}
			time.Sleep(50 * time.Millisecond) // EMFILE and friends
			continue
		}
		l.serve(raw)
	}
}

// injected serves the connections handed in through Config.Inject.
func (l *listener) injected(in <-chan net.Conn) {
	for {
		select {
		case raw := <-in:
			l.serve(raw)
		case <-l.done:
			return
		}
	}
}

// serve runs the handshake of an accepted (or injected) connection in its
// own goroutine and hands the result to Accept.
func (l *listener) serve(raw net.Conn) {
	e, p := l.admit(raw)
	if p == nil {
		_ = raw.Close()
		l.failed(raw.RemoteAddr(), Fail(ReasonEvicted, errors.New("zmtp: too many handshakes in progress, all of them talking; refused")))
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		c, err := handshake(l.ctx, raw, l.cfg, true, func(bool) { l.talking(p) })
		if l.finish(e, p) {
			if c != nil {
				c.Close()
			}
			l.failed(raw.RemoteAddr(), Fail(ReasonEvicted, errors.New("zmtp: too many handshakes in progress; dropped the oldest")))
			return
		}
		if err != nil {
			raw.Close()
			l.failed(raw.RemoteAddr(), err)
			return
		}
		select {
		case l.ready <- c:
		case <-l.done:
			c.Close()
		}
	}()
}

func (l *listener) failed(remote net.Addr, err error) {
	var he *HandshakeError
	if !errors.As(err, &he) {
		he = &HandshakeError{Reason: ReasonIO, Err: err}
	}
	if l.cfg.OnHandshakeFailure != nil {
		l.cfg.OnHandshakeFailure(remote, he)
	}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		l.cancel()
		err = l.Listener.Close()
	})
	return err
}

// handshake runs greeting and mechanism handshake on raw and returns the
// connection that zmq4 will use.
// greeted, if not nil, is told as soon as the peer has sent anything.
func handshake(ctx context.Context, raw net.Conn, cfg *Config, asServer bool, greeted func(bool)) (c *conn, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.handshakeTimeout())
	defer cancel()
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		if err != nil {
			err = classify(ctx, err)
		}
	}()

	mech := cfg.mechanism()
	curve := mech.Name() != "NULL"
	g := greeting(mech.Name(), asServer && curve)
	if _, err := raw.Write(g[:]); err != nil {
		return nil, Fail(ReasonIO, err)
	}
	var src io.Reader = raw
	if greeted != nil {
		src = &noticeReader{Reader: raw, notice: greeted}
	}
	br := bufio.NewReaderSize(src, 32<<10)
	var pg [greetingLen]byte
	if _, err := io.ReadFull(br, pg[:]); err != nil {
		return nil, Fail(ReasonIO, err)
	}
	peerMech, err := parseGreeting(pg[:])
	if err != nil {
		return nil, Fail(ReasonGreeting, err)
	}
	rw := &rawCommandRW{r: br, w: raw}
	if peerMech != mech.Name() {
		if asServer && cfg.AnnounceKey != "" && peerMech == "NULL" {
			_ = rw.WriteCommand("ERROR", ErrorBody(keyAnnouncePrefix+cfg.AnnounceKey))
			return nil, Fail(ReasonKeyQuery, errors.New("zmtp: announced the server key to a NULL client"))
		}
		if !asServer {
			// A server that wants CURVE may tell us its key; surface it.
			if name, data, err := rw.ReadCommand(); err == nil && name == "ERROR" {
				return nil, Fail(ReasonMechanism, fmt.Errorf("zmtp: server wants %s, we offered %s: %w", peerMech, mech.Name(), &PeerError{Reason: errorReason(data)}))
			}
		}
		return nil, Fail(ReasonMechanism, fmt.Errorf("zmtp: peer wants mechanism %q, we use %q", peerMech, mech.Name()))
	}
	local := Metadata{{Name: PropSocketType, Value: []byte(cfg.SocketType)}}
	if !asServer || cfg.SocketType != "ROUTER" {
		local = append(local, Property{Name: PropIdentity, Value: nil})
	}
	peer, err := mech.Handshake(ctx, rw, asServer, local)
	if err != nil {
		return nil, err
	}
	st, _ := peer.Meta.Get(PropSocketType)
	if !zmq4.SocketType(st).IsCompatible(zmq4.SocketType(cfg.SocketType)) {
		if asServer {
			_ = rw.WriteCommand("ERROR", ErrorBody("incompatible socket type"))
		}
		return nil, Fail(ReasonSocketType, fmt.Errorf("zmtp: peer socket type %q cannot talk to %s", st, cfg.SocketType))
	}
	var id []byte
	if asServer {
		if cfg.Identity != nil {
			id = cfg.Identity(peer)
		} else {
			id = make([]byte, 16)
			_, _ = rand.Read(id)
		}
	}
	_ = raw.SetDeadline(time.Time{})
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
	}
	c = newConn(raw, br, cfg, peer, id)
	if cfg.OnConnect != nil {
		cfg.OnConnect(id, peer, raw.RemoteAddr(), func() { c.Close() })
	}
	if cfg.OnDirect != nil {
		cfg.OnDirect(id, c.sendDirect)
	}
	return c, nil
}

// noticeReader calls notice(true) before handing out the first octets read.
type noticeReader struct {
	io.Reader
	notice func(bool)
}

func (r *noticeReader) Read(p []byte) (int, error) {
	n, err := r.Reader.Read(p)
	if n > 0 && r.notice != nil {
		r.notice(true)
		r.notice = nil
	}
	return n, err
}

func classify(ctx context.Context, err error) error {
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		var he *HandshakeError
		if errors.As(err, &he) {
			return &HandshakeError{Reason: ReasonTimeout, Err: he.Err}
		}
		return &HandshakeError{Reason: ReasonTimeout, Err: err}
	}
	return Fail(ReasonIO, err)
}

const keyAnnouncePrefix = "CURVE required; server-key="

// QueryServerKey asks a zp server for its public key without authenticating
// (first contact, like ssh's host key): it greets with NULL, and a CURVE zp
// server answers with an ERROR that carries its public key in Z85. The key
// is NOT trusted by this call: the caller shows its fingerprint to the user
// and pins it, and the CURVE handshake that follows proves that the server
// holds the matching secret key.
func QueryServerKey(ctx context.Context, endpoint string, timeout time.Duration) (string, error) {
	network, addr, err := splitEndpoint(endpoint)
	if err != nil {
		return "", err
	}
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(timeout))
	g := greeting("NULL", false)
	if _, err := raw.Write(g[:]); err != nil {
		return "", err
	}
	br := bufio.NewReader(raw)
	var pg [greetingLen]byte
	if _, err := io.ReadFull(br, pg[:]); err != nil {
		return "", fmt.Errorf("zmtp: reading greeting: %w", err)
	}
	mech, err := parseGreeting(pg[:])
	if err != nil {
		return "", err
	}
	if mech == "NULL" {
		return "", ErrServerInsecure
	}
	name, data, err := (&rawCommandRW{r: br, w: raw}).ReadCommand()
	if err != nil {
		return "", fmt.Errorf("zmtp: server did not announce its key: %w", err)
	}
	reason := errorReason(data)
	if name != "ERROR" || !strings.HasPrefix(reason, keyAnnouncePrefix) {
		return "", fmt.Errorf("zmtp: server did not announce its key (got %s %q)", name, reason)
	}
	return strings.TrimPrefix(reason, keyAnnouncePrefix), nil
}

// ErrServerInsecure means the server runs without encryption (--insecure).
var ErrServerInsecure = errors.New("zmtp: server runs without encryption (NULL mechanism)")

func splitEndpoint(ep string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(ep, "tcp://"):
		return "tcp", ep[len("tcp://"):], nil
	case strings.HasPrefix(ep, "ipc://"):
		return "unix", ep[len("ipc://"):], nil
	}
	return "", "", fmt.Errorf("zmtp: unsupported endpoint %q", ep)
}
