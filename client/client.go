// Package client is zp's public Go API, the library behind zp, zpc and
// libzp: it opens a CURVE-encrypted session with a zpd, runs commands with
// flow-controlled streams (io.Reader and io.Writers), starts, follows and
// kills background jobs, and copies files with progress reports.
//
// Connect does what zp does (identity and known_hosts in $ZP_CONFIG or
// ~/.config/zp, "[user@]host[:port]" targets); Dial takes every setting
// explicitly. Nothing in this package's API is an internal type: keys
// (KeyPair, PublicKey), known_hosts (KnownHosts), results (ExitStatus,
// JobInfo, TransferStats, ServerInfo) and errors (*Error with the
// protocol's stable Code, *HandshakeError, *UnknownHostError,
// *HostKeyChangedError, *ConnectError, *ProtocolError) are its own.
// A Session is safe for concurrent use.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
	"github.com/zpipes/zp/publisher"
)

// Config configures a session.
type Config struct {
	// Endpoint is tcp://HOST:PORT or ipc:///PATH.
	Endpoint string
	// User is the remote account; empty lets the server choose (zpd
	// takes the account the key is authorised for). Connect fills in the
	// local user name, as ssh does.
	User string

	// Security: CURVE unless Insecure. Key is the client's identity
	// (LoadIdentity, LoadKeyPair). The server must prove it holds
	// ServerKey or, when that is zero, the key pinned for HostName in
	// KnownHosts. On first contact (nothing pinned) the server's
	// announced key is passed to AcceptHost: if it returns nil, the key is
	// pinned and used; if AcceptHost is nil or refuses, Dial fails with an
	// *UnknownHostError. A pinned key that no longer matches fails with a
	// *HostKeyChangedError.
	Key        *KeyPair
	ServerKey  PublicKey
	KnownHosts *KnownHosts
	// HostName names the server in KnownHosts and messages (default: the
	// Endpoint's HOST:PORT, or the ipc:// endpoint).
	HostName string
	// AcceptHost decides on an unknown host key (first contact); it may
	// ask the user. It runs on the caller's goroutine, inside Dial.
	AcceptHost func(host string, key PublicKey) error
	// Insecure connects without encryption or authentication (ZMTP NULL),
	// only to a zpd started with --insecure.
	Insecure bool

	// ConnectTimeout bounds connecting, the handshake and OPEN (5s).
	ConnectTimeout time.Duration
	// Timeout is the silence after which the server is presumed dead; zero
	// takes the server's value (5s by default).
	Timeout time.Duration
	// Window is the credit granted per output stream (16 MiB for a
	// command's stdout and stderr; 4 MiB for job output; a download grants
	// four times as much); Chunk the largest DATA payload sent (1 MiB,
	// the frame limit, for stdin and for files).
	Window, Chunk int
	// ClientName is sent in OPEN (free text).
	ClientName string
	Logger     *slog.Logger
	// Resume makes the session survive a broken connection: it reconnects
	// and resumes for ReconnectFor (at most the server's grace period).
	Resume       bool
	ReconnectFor time.Duration
	// OnLinkLost and OnLinkBack report a lost and a restored connection
	// (for a one-line notice); they must not block.
	OnLinkLost func(cause error)
	OnLinkBack func(after time.Duration)
	// Dial, when set, makes the connection instead of the network
	// (Endpoint then only names the peer): Fleet.DialAgent reaches an
	// agent through a hub's tunnel this way.
	Dial func(ctx context.Context) (net.Conn, error)
	// DialPublish, if set, makes the connection to the server's XPUB
	// for following jobs (a tunnel through a hub); else FOLLOW_OK's
	// publish endpoint is dialled.
	DialPublish func(ctx context.Context) (net.Conn, error)

	// mech, when set (tests in this package), replaces the security above.
	mech zmtp.Mechanism
}

func (c *Config) connectTimeout() time.Duration {
	if c.ConnectTimeout > 0 {
		return c.ConnectTimeout
	}
	return 5 * time.Second
}

func (c *Config) window() int {
	if c.Window > 0 {
		return c.Window
	}
	return 4 << 20
}

func (c *Config) chunk() int {
	if c.Chunk > 0 {
		return min(c.Chunk, wire.MaxData)
	}
	// A read returns what is there, so a larger limit costs a slow
	// writer nothing, and publisher.Reader copies short reads out: on a
	// 1 GiB pipe up, 1 MiB took 1.85 s where 256 KiB took 2.45 s
	// (bench/README.md, 2026-12-03, sixth round).
	return wire.MaxData
}

// execWindow is the credit granted per output stream of a command (16
// MiB unless Window is set): see broker's execWindow for the measurement.
func (c *Config) execWindow() int {
	if c.Window > 0 {
		return c.Window
	}
	return 16 << 20
}

// xferChunk is the DATA size for file transfers (1 MiB unless Chunk is
// set): see broker's xferWindow for the measurement.
func (c *Config) xferChunk() int {
	if c.Chunk > 0 {
		return min(c.Chunk, wire.MaxData)
	}
	return wire.MaxData
}

// Errors a session reports.
var (
	// ErrTimeout: the server went silent for longer than the timeout.
	ErrTimeout = errors.New("no reply from the server")
	// ErrClosed: the session was closed.
	ErrClosed = errors.New("session closed")
)

// ConnectError is a failure to reach or authenticate with the server.
type ConnectError struct {
	Endpoint string
	Err      error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("cannot connect to %s: %v", e.Endpoint, e.Err)
}
func (e *ConnectError) Unwrap() error { return e.Err }

// Session is an open session with a zpd. Its methods are safe for
// concurrent use; each Exec runs on its own channel. With Config.Resume,
// a session survives its connection: when the link breaks (or goes silent
// past the timeout) it reconnects with backoff, resumes the session on the
// server, and every stream resends what the other side has not received.
type Session struct {
	cfg  Config
	log  *slog.Logger
	zcfg *zmtp.Config
	ep   string
	info *wire.OpenOK

	mu      sync.Mutex
	link    *link         // nil while reconnecting
	linkUp  chan struct{} // closed when link is set
	opening chan wire.Message
	closing chan struct{} // closed when the server confirms CLOSE
	// hangingUp: Close was called. A link lost from then on ends the
	// session as Close does, with no reconnect and no OnLinkLost: zpd
	// may close a connection whose session ended before its client does.
	hangingUp bool
	channels  map[uint32]chan wire.Message
	nextChan  uint32
	resumed   chan struct{}           // closed and replaced after each resume
	outgoing  map[*credit.Sender]bool // streams to resend after a resume

	lastRecv atomic.Int64
	resent   atomic.Uint64
	fleet    tunnelRoutes // tunnels through this session (fleet.go)
	done     chan struct{}
	doneOnce sync.Once
	err      error
	wg       sync.WaitGroup
}

// link is one connection of a session. Everything it sends goes straight
// to the transport (direct), not through zmq4's Send.
type link struct {
	dealer  zmq4.Socket
	direct  func(frames [][]byte) error
	stopped bool // a message ended the session: ignore the rest (receive)
	cancel  context.CancelFunc
	sendMu  sync.Mutex
	dead    chan struct{}
	dieOnce sync.Once
}

func (l *link) close() {
	l.dieOnce.Do(func() {
		close(l.dead)
		l.dealer.Close()
		l.cancel()
	})
}

// Errors of a resumable session.
var (
	// ErrSessionGone: the server no longer has the session (the grace
	// period passed, or zpd restarted); its commands were hung up.
	ErrSessionGone = errors.New("the session expired on the server")
)

// ProtocolError is a server that broke the protocol (docs/PROTOCOL.md):
// a message that does not decode, more data or messages than the credit
// allows, an acknowledgement of what was never sent, a wrong reply. It is
// not a network fault: a new connection would meet the same server, so
// callers should not retry. The session fails with it.
type ProtocolError struct{ Err error }

func (e *ProtocolError) Error() string { return "the server broke the protocol: " + e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// Dial connects, authenticates and opens a session.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := dialEndpoint(cfg)
	if err != nil {
		return nil, err
	}
	var pinned PublicKey
	var pinnedLine int
	if cfg.mech == nil && !cfg.Insecure {
		if cfg.Key == nil {
			return nil, errors.New("client: Config needs Key (the client's identity) or Insecure")
		}
		pinned, pinnedLine, err = resolveServerKey(ctx, &cfg)
		if err != nil {
			return nil, public(err)
		}
		cfg.mech = &curve.Client{Key: cfg.Key.curve(), ServerKey: curve.PublicKey(pinned)}
	}
	s := &Session{
		cfg: cfg, log: cfg.Logger, ep: ep,
		zcfg: &zmtp.Config{
			Mechanism:        cfg.mech,
			SocketType:       string(zmq4.Dealer),
			HandshakeTimeout: cfg.connectTimeout(),
			OnFull:           zmtp.Block,
			NoCopy:           true, // nothing here modifies a frame once sent
			MaxFrame:         wire.MaxHeader + 64,
			MaxMessage:       wire.MaxHeader + wire.MaxData + 128,
			MaxFrames:        2,
			Dial:             cfg.Dial,
		},
		linkUp:   make(chan struct{}),
		channels: make(map[uint32]chan wire.Message),
		resumed:  make(chan struct{}),
		outgoing: make(map[*credit.Sender]bool),
		done:     make(chan struct{}),
	}
	if err := s.connect(ctx, false); err != nil {
		s.fail(err)
		s.wg.Wait()
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, public(err)
		}
		if changed := hostChanged(ctx, &cfg, pinned, pinnedLine, err); changed != nil {
			return nil, changed
		}
		return nil, &ConnectError{Endpoint: cfg.Endpoint, Err: public(err)}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.heartbeat()
	}()
	return s, nil
}

// connect dials a new link and opens (or resumes) the session on it.
func (s *Session) connect(ctx context.Context, resume bool) error {
	l := &link{dead: make(chan struct{})}
	zcfg := *s.zcfg
	// Set before dealer.Dial returns (the handshake ends in it), read
	// only after.
	zcfg.OnDirect = func(_ []byte, send func([][]byte) error) { l.direct = send }
	// Messages arrive on the connection's reader goroutine, not through
	// zmq4's channel (zmtp.Config.OnRecv); recvLoop waits for the end.
	zcfg.OnRecv = func(_ []byte, frames [][]byte) { s.receive(l, frames) }
	sctx, cancel := context.WithCancel(zmtp.WithConfig(context.Background(), &zcfg))
	dealer := zmq4.NewDealer(sctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(s.cfg.connectTimeout()),
		zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithTimeout(24*time.Hour))
	l.dealer, l.cancel = dealer, cancel
	dialDone := make(chan error, 1)
	go func() { dialDone <- dealer.Dial(s.ep) }()
	var err error
	select {
	case err = <-dialDone:
	case <-ctx.Done():
		err = ctx.Err()
	case <-s.done:
		err = s.err
	}
	if err != nil {
		l.close()
		return unwrapDial(err)
	}
	opened := make(chan wire.Message, 1)
	s.mu.Lock()
	s.opening = opened
	s.mu.Unlock()
	s.lastRecv.Store(time.Now().UnixNano())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.recvLoop(l)
	}()
	open := &wire.Open{Version: wire.Version, User: s.cfg.User, Client: s.cfg.ClientName}
	if resume {
		open.Version = s.info.Version
		open.Session, open.Token = s.info.Session, s.info.Token
		// Armed before anything can arrive on the new link: the server's
		// ACK then triggers the resend, and nothing new from us overtakes
		// it.
		s.mu.Lock()
		for ps := range s.outgoing {
			ps.MarkResend()
		}
		s.mu.Unlock()
	}
	timer := time.NewTimer(s.cfg.connectTimeout())
	defer timer.Stop()
	for {
		if err := l.send(open); err != nil {
			l.close()
			return err
		}
		var reply wire.Message
		select {
		case reply = <-opened:
		case <-l.dead:
			err = errors.New("connection closed during OPEN")
		case <-timer.C:
			err = fmt.Errorf("no answer to OPEN within %v", s.cfg.connectTimeout())
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.done:
			err = s.err
		}
		if err == nil {
			switch m := reply.(type) {
			case *wire.OpenOK:
				if !resume {
					s.info = m
				}
			case *wire.Error:
				err = m
				// A zpd that predates the fleet speaks version 1 only
				// (docs/PROTOCOL.md §12): ask again in its version.
				if m.Code == wire.CodeVersion && open.Version > wire.MinVersion && !resume {
					open.Version--
					err = nil
					opened = make(chan wire.Message, 1)
					s.mu.Lock()
					s.opening = opened
					s.mu.Unlock()
					continue
				}
			}
		}
		break
	}
	if err != nil {
		l.close()
		return err
	}
	s.mu.Lock()
	s.link = l
	close(s.linkUp)
	s.mu.Unlock()
	return nil
}

// track registers an outgoing stream for resends after a resume.
func (s *Session) track(ps *credit.Sender) func() {
	s.mu.Lock()
	s.outgoing[ps] = true
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.outgoing, ps)
		s.mu.Unlock()
	}
}

func (l *link) send(m wire.Message) error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	select {
	case <-l.dead:
		return net.ErrClosed
	default:
	}
	if l.direct == nil { // not through internal/zmtp's transport
		return l.dealer.Send(zmq4.NewMsgFrom(wire.Frames(m)...))
	}
	return l.direct(wire.Frames(m))
}

// unwrapDial strips zmq4's wrapping ("zmq4: could not dial to …") so users
// see the cause: connection refused, handshake failure, timeout.
func unwrapDial(err error) error {
	var he *zmtp.HandshakeError
	if errors.As(err, &he) {
		return he
	}
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// Info returns what the server said when the session opened.
func (s *Session) Info() ServerInfo {
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	return ServerInfo{Protocol: int(s.info.Version), Session: s.info.Session, Server: s.info.Server,
		Heartbeat: ms(s.info.Heartbeat), Timeout: ms(s.info.Timeout), Grace: ms(s.info.Grace)}
}

// send delivers m on the current link; while the session reconnects it
// waits. A message on a link that breaks may be lost: streams resend from
// the peer's acknowledgement after a resume.
func (s *Session) send(m wire.Message) error {
	for {
		s.mu.Lock()
		l, up := s.link, s.linkUp
		s.mu.Unlock()
		if l == nil {
			select {
			case <-up:
				continue
			case <-s.done:
				return s.err
			}
		}
		err := l.send(m)
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			return s.err
		default:
		}
		// A link that fails a send is broken: resume (or fail) and send
		// this message on the next link.
		s.linkLost(l, fmt.Errorf("connection lost: %w", unwrapDial(err)))
		if !s.cfg.Resume {
			return err
		}
	}
}

func (s *Session) recvLoop(l *link) {
	for {
		msg, err := l.dealer.Recv()
		if err != nil {
			s.linkLost(l, fmt.Errorf("connection lost: %w", unwrapDial(err)))
			return
		}
		s.receive(l, msg.Frames) // none with OnRecv set; kept for safety
	}
}

// receive handles one message from the server. It runs on the link's
// reader goroutine (or recvLoop's), one message at a time per link.
func (s *Session) receive(l *link, frames [][]byte) {
	if l.stopped {
		return
	}
	s.lastRecv.Store(time.Now().UnixNano())
	m, err := wire.Decode(frames)
	if err != nil {
		l.stopped = true
		s.fail(&ProtocolError{fmt.Errorf("undecodable message: %w", err)})
		return
	}
	switch m := m.(type) {
	case *wire.OpenOK:
		s.opened(m)
		return
	case *wire.Ping:
		_ = l.send(&wire.Pong{Seq: m.Seq})
		return
	case *wire.Pong:
		return
	case *wire.OK:
		if m.Channel == 0 { // the answer to CLOSE
			s.mu.Lock()
			if s.closing != nil {
				close(s.closing)
				s.closing = nil
			}
			s.mu.Unlock()
			return
		}
	case *wire.Error:
		if m.Channel == 0 {
			if s.opened(m) {
				return // connect decides (it may ask again in version 1)
			}
			l.stopped = true
			s.fail(m)
			return
		}
	}
	s.route(m)
}

// opened hands an OPEN reply to connect; false if none was awaited.
func (s *Session) opened(m wire.Message) bool {
	s.mu.Lock()
	ch := s.opening
	s.opening = nil
	s.mu.Unlock()
	if ch == nil {
		return false
	}
	ch <- m
	return true
}

// linkLost handles the end of a link: reconnect and resume, or fail.
func (s *Session) linkLost(l *link, cause error) {
	s.mu.Lock()
	current := s.link == l
	if current {
		s.link = nil
		s.linkUp = make(chan struct{})
	}
	s.mu.Unlock()
	s.mu.Lock()
	hangingUp := s.hangingUp
	s.mu.Unlock()
	l.close()
	if !current || hangingUp {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	if !s.cfg.Resume {
		s.fail(cause)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.reconnect(cause)
	}()
}

// reconnect redials with backoff until the session is resumed, the server
// says it is gone, or the grace period passes.
func (s *Session) reconnect(cause error) {
	start := time.Now()
	if s.cfg.OnLinkLost != nil {
		s.cfg.OnLinkLost(cause)
	}
	grace := s.cfg.ReconnectFor
	if g := time.Duration(s.info.Grace) * time.Millisecond; grace <= 0 || (g > 0 && g < grace) {
		grace = g
	}
	if grace <= 0 {
		grace = time.Minute
	}
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.connectTimeout())
		err := s.connect(ctx, true)
		cancel()
		if err == nil {
			s.mu.Lock()
			close(s.resumed)
			s.resumed = make(chan struct{})
			s.mu.Unlock()
			if s.cfg.OnLinkBack != nil {
				s.cfg.OnLinkBack(time.Since(start))
			}
			return
		}
		var we *wire.Error
		if errors.As(err, &we) && we.Code == wire.CodeGone {
			s.fail(fmt.Errorf("%w: %s", ErrSessionGone, we.Reason))
			return
		}
		if time.Since(start) > grace {
			s.fail(fmt.Errorf("%w (%v); gave up reconnecting after %v", cause, err, grace.Round(time.Second)))
			return
		}
		select {
		case <-time.After(backoff):
		case <-s.done:
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// resumedSignal is closed at the next resume of the session.
func (s *Session) resumedSignal() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumed
}

func (s *Session) route(m wire.Message) {
	if s.fleet.route(m) {
		return
	}
	id, ok := wire.ChannelOf(m)
	if !ok {
		s.log.Warn("unexpected message from server", "msg", m.ID().String())
		return
	}
	s.mu.Lock()
	inbox := s.channels[id]
	s.mu.Unlock()
	if inbox == nil {
		return // a channel we already released
	}
	select {
	case inbox <- m:
	default:
		// The server sent more than the credit allows.
		s.fail(&ProtocolError{fmt.Errorf("more messages on channel %d than the credit allows", id)})
	}
}

// openChannel allocates a channel id and its inbox. The inbox holds what
// the credit allows: credit.MaxInflight messages per stream plus control.
func (s *Session) openChannel() (uint32, chan wire.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextChan++
	id := s.nextChan
	inbox := make(chan wire.Message, 3*credit.MaxInflight+2*publisher.MaxEntries+64)
	s.channels[id] = inbox
	return id, inbox
}

func (s *Session) closeChannel(id uint32) {
	s.mu.Lock()
	delete(s.channels, id)
	s.mu.Unlock()
}

func (s *Session) heartbeat() {
	ivl := time.Duration(s.info.Heartbeat) * time.Millisecond
	if ivl <= 0 {
		ivl = time.Second
	}
	timeout := s.cfg.Timeout
	if timeout <= 0 {
		timeout = time.Duration(s.info.Timeout) * time.Millisecond
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	t := time.NewTicker(ivl)
	defer t.Stop()
	var seq uint64
	lastTick := time.Now()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if time.Since(lastTick) > 3*ivl {
			// We were not running (SIGSTOP, a suspended laptop): the
			// server's silence was ours. Start counting afresh.
			s.lastRecv.Store(time.Now().UnixNano())
		}
		lastTick = time.Now()
		s.mu.Lock()
		l := s.link
		s.mu.Unlock()
		if l == nil {
			continue // reconnecting
		}
		silent := time.Since(time.Unix(0, s.lastRecv.Load()))
		if silent > timeout {
			s.linkLost(l, fmt.Errorf("%w for %v", ErrTimeout, silent.Round(time.Second)))
			continue
		}
		seq++
		_ = l.send(&wire.Ping{Seq: seq})
	}
}

// Done is closed when the session fails or is closed; Err says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended, or nil while it is open.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

func (s *Session) fail(err error) {
	s.doneOnce.Do(func() {
		s.err = public(err)
		close(s.done)
		s.mu.Lock()
		l := s.link
		s.link = nil
		s.mu.Unlock()
		if l != nil {
			l.close()
		}
		s.fleet.fail(err)
	})
}

// Close ends the session: the server stops anything still running on it.
// It waits (a second at most) for the server to confirm, so that a CLOSE
// lost with the connection does not leave the session's commands running
// for the whole grace period.
func (s *Session) Close() error {
	select {
	case <-s.done:
	default:
		confirmed := make(chan struct{})
		s.mu.Lock()
		l := s.link
		s.closing = confirmed
		s.hangingUp = true
		s.mu.Unlock()
		if l != nil && l.send(&wire.Close{}) == nil {
			t := time.NewTimer(time.Second)
			select {
			case <-confirmed:
			case <-l.dead:
			case <-t.C:
			}
			t.Stop()
		}
		s.fail(ErrClosed)
	}
	s.wg.Wait()
	return nil
}
