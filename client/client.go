// Package client is the Go library behind zp and zpc: it opens a session
// with a zpd, runs commands with flow-controlled streams, and reports how
// they ended. Other programs embed it the same way.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
	"github.com/zpipes/zp/publisher"
)

// Config configures a session.
type Config struct {
	// Endpoint is tcp://HOST:PORT or ipc:///PATH.
	Endpoint string
	// User is the remote account; empty lets the server use its own.
	User string
	// Mechanism secures the connection; nil is NULL (insecure).
	Mechanism zmtp.Mechanism
	// ConnectTimeout bounds connecting, the handshake and OPEN (5s).
	ConnectTimeout time.Duration
	// Timeout is the silence after which the server is presumed dead; zero
	// takes the server's value (5s by default).
	Timeout time.Duration
	// Window is the credit granted per output stream (4 MiB); Chunk the
	// largest DATA payload sent (256 KiB).
	Window, Chunk int
	// ClientName is sent in OPEN (free text).
	ClientName string
	Logger     *slog.Logger
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
	return 256 << 10
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
// concurrent use; each Exec runs on its own channel.
type Session struct {
	cfg    Config
	log    *slog.Logger
	dealer zmq4.Socket
	info   *wire.OpenOK

	sendMu sync.Mutex

	mu       sync.Mutex
	channels map[uint32]chan wire.Message
	nextChan uint32

	lastRecv atomic.Int64
	done     chan struct{}
	doneOnce sync.Once
	err      error
	wg       sync.WaitGroup
}

// Dial connects, authenticates and opens a session.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := zmtp.Endpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	zcfg := &zmtp.Config{
		Mechanism:        cfg.Mechanism,
		SocketType:       string(zmq4.Dealer),
		HandshakeTimeout: cfg.connectTimeout(),
		OnFull:           zmtp.Block,
		MaxFrame:         wire.MaxHeader + 64,
		MaxMessage:       wire.MaxHeader + wire.MaxData + 128,
		MaxFrames:        2,
	}
	sctx, cancel := context.WithCancel(zmtp.WithConfig(context.Background(), zcfg))
	dealer := zmq4.NewDealer(sctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(cfg.connectTimeout()),
		zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithTimeout(24*time.Hour))
	dialDone := make(chan error, 1)
	go func() { dialDone <- dealer.Dial(ep) }()
	select {
	case err = <-dialDone:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		dealer.Close()
		cancel()
		return nil, &ConnectError{Endpoint: cfg.Endpoint, Err: unwrapDial(err)}
	}
	s := &Session{
		cfg: cfg, log: cfg.Logger, dealer: dealer,
		channels: make(map[uint32]chan wire.Message),
		done:     make(chan struct{}),
	}
	go func() { <-s.done; cancel() }()
	s.lastRecv.Store(time.Now().UnixNano())
	opened := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.recvLoop(opened)
	}()
	if err := s.send(&wire.Open{Version: wire.Version, User: cfg.User, Client: cfg.ClientName}); err != nil {
		s.fail(err)
		return nil, &ConnectError{Endpoint: cfg.Endpoint, Err: err}
	}
	timer := time.NewTimer(cfg.connectTimeout())
	defer timer.Stop()
	select {
	case err = <-opened:
	case <-timer.C:
		err = fmt.Errorf("no answer to OPEN within %v", cfg.connectTimeout())
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		s.fail(err)
		s.wg.Wait()
		var we *wire.Error
		if errors.As(err, &we) {
			return nil, err
		}
		return nil, &ConnectError{Endpoint: cfg.Endpoint, Err: err}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.heartbeat()
	}()
	return s, nil
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

// Info returns the server's OPEN_OK.
func (s *Session) Info() *wire.OpenOK { return s.info }

func (s *Session) send(m wire.Message) error {
	select {
	case <-s.done:
		return s.err
	default:
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.dealer.Send(zmq4.NewMsgFrom(wire.Frames(m)...))
}

func (s *Session) recvLoop(opened chan<- error) {
	for {
		msg, err := s.dealer.Recv()
		if err != nil {
			select {
			case <-s.done:
			default:
				s.fail(fmt.Errorf("connection lost: %w", unwrapDial(err)))
			}
			if opened != nil {
				opened <- s.err
			}
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		m, err := wire.Decode(msg.Frames)
		if err != nil {
			s.log.Warn("undecodable message from server", "err", err)
			continue
		}
		switch m := m.(type) {
		case *wire.OpenOK:
			if opened != nil {
				s.info = m
				opened <- nil
				opened = nil
			}
			continue
		case *wire.Pong, *wire.Ping:
			if p, ok := m.(*wire.Ping); ok {
				_ = s.send(&wire.Pong{Seq: p.Seq})
			}
			continue
		case *wire.Error:
			if m.Channel == 0 {
				if opened != nil {
					opened <- m
					opened = nil
				}
				s.fail(m)
				return
			}
		}
		s.route(m)
	}
}

func (s *Session) route(m wire.Message) {
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
		s.fail(fmt.Errorf("server overran channel %d", id))
	}
}

// openChannel allocates a channel id and its inbox. The inbox holds what
// the credit allows: MaxInflight messages per stream plus control.
func (s *Session) openChannel() (uint32, chan wire.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextChan++
	id := s.nextChan
	inbox := make(chan wire.Message, 3*publisher.MaxInflight+64)
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
		silent := time.Since(time.Unix(0, s.lastRecv.Load()))
		if silent > timeout {
			s.fail(fmt.Errorf("%w for %v", ErrTimeout, silent.Round(time.Second)))
			return
		}
		seq++
		_ = s.send(&wire.Ping{Seq: seq})
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
		s.err = err
		close(s.done)
		s.dealer.Close()
	})
}

// Close ends the session: the server stops anything still running on it.
func (s *Session) Close() error {
	select {
	case <-s.done:
	default:
		_ = s.send(&wire.Close{})
		s.fail(ErrClosed) // the transport flushes CLOSE before it closes

	}
	s.wg.Wait()
	return nil
}
