package broker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/tunnel"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// AgentConfig makes a zpd an agent of a hub (docs/PROTOCOL.md §13): it
// dials out to the hub, joins under a name, and serves the tunnels the hub
// opens to it on its own sockets, as if they were accepted connections.
type AgentConfig struct {
	// Hub is the hub's control endpoint: tcp://HOST:PORT or ipc:///PATH.
	Hub string
	// HubKey is the hub's public key (Z85). Empty: learn it on first
	// contact and pin it in StateDir/hub_known_hosts; a changed key is
	// then refused.
	HubKey string
	// Key is this zpd's own key pair (its server key): the agent
	// authenticates to the hub with it, so the hub's --fleet-keys lists
	// what zpd --print-key shows.
	Key curve.KeyPair
	// Name is the agent's name on the hub; Labels describe it.
	Name   string
	Labels map[string]string
	// Metrics is where this zpd serves /metrics, as JOIN reports it:
	// "HOST:PORT", ":PORT" (the hub uses the link's address) or "".
	Metrics string
	// Users, when set, are the only users a session that came through a
	// tunnel may act as (--fleet-users); the keyring still decides.
	Users []string
	// NoRelay: never relay broadcasts (JOIN offers no XPUB to the hub).
	NoRelay bool
	// Window is the credit granted for a tunnel's inbound stream (1 MiB);
	// MaxTunnels bounds the tunnels open on the link (10000).
	Window, MaxTunnels int
}

// hubKnownHosts is the agent's record of the hub keys it pinned.
const hubKnownHosts = "hub_known_hosts"

// Back-off of the join loop (docs/PROTOCOL.md §13.2), and the slow retry
// after a refusal that only an operator can fix.
const (
	joinBackoffMin = 100 * time.Millisecond
	joinBackoffMax = 5 * time.Second
	joinRefusedIvl = 10 * time.Second
)

// errJoinRefused marks failures that retrying soon will not fix: a key the
// hub does not admit, a name taken, a hub key that changed.
type errJoinRefused struct{ err error }

func (e *errJoinRefused) Error() string { return e.err.Error() }
func (e *errJoinRefused) Unwrap() error { return e.err }

func refused(format string, args ...any) error {
	return &errJoinRefused{fmt.Errorf(format, args...)}
}

// agentRunner is the agent side of a Broker: one goroutine (run) owned by
// Broker.Run that keeps the link to the hub up.
type agentRunner struct {
	b   *Broker
	cfg AgentConfig
	ep  string // zmtp endpoint of the hub

	cur  atomic.Pointer[agentLink] // the joined link, if any
	live liveRoutes                // shared stdin readers by topic
	// faultDrop is the share of live publications dropped on purpose
	// (ZP_FAULT_DROP_LIVE, for fault tests): what is dropped is fetched.
	faultDrop float64
	// faultSlow is how long a broadcast's writer waits for every MiB of
	// content it reads (ZP_FAULT_SLOW_APPLY, for fault tests: a slow disk).
	faultSlow time.Duration
}

func newAgent(b *Broker, cfg *AgentConfig) (*agentRunner, error) {
	if cfg == nil {
		return nil, nil
	}
	if err := wire.ValidAgentName(cfg.Name); err != nil {
		return nil, fmt.Errorf("broker: agent name: %w", err)
	}
	for k, v := range cfg.Labels {
		if err := wire.ValidLabel(k, v); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	if cfg.Key.Public == (curve.PublicKey{}) {
		return nil, errors.New("broker: an agent needs its CURVE key pair")
	}
	if cfg.HubKey != "" {
		if _, err := curve.ParsePublicKey(cfg.HubKey); err != nil {
			return nil, fmt.Errorf("broker: hub key: %w", err)
		}
	}
	ep, err := zmtp.Endpoint(cfg.Hub)
	if err != nil {
		return nil, fmt.Errorf("broker: hub: %w", err)
	}
	a := &agentRunner{b: b, cfg: *cfg, ep: ep}
	if v := os.Getenv("ZP_FAULT_DROP_LIVE"); v != "" {
		p, err := strconv.ParseFloat(v, 64)
		if err != nil || p < 0 || p > 1 {
			return nil, fmt.Errorf("broker: ZP_FAULT_DROP_LIVE=%q: want a share between 0 and 1", v)
		}
		a.faultDrop = p
		b.log.Warn("fault injection: dropping live publications", "share", p)
	}
	if v := os.Getenv("ZP_FAULT_SLOW_APPLY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("broker: ZP_FAULT_SLOW_APPLY=%q: want a duration per MiB", v)
		}
		a.faultSlow = d
		b.log.Warn("fault injection: broadcasts written slowly", "per_mib", d)
	}
	return a, nil
}

func (a *agentRunner) window() int     { return intOr(a.cfg.Window, 1<<20) }
func (a *agentRunner) maxTunnels() int { return intOr(a.cfg.MaxTunnels, 10000) }

// userAllowed reports whether a tunnelled session may act as user.
func (a *agentRunner) userAllowed(user string) bool {
	if a == nil || len(a.cfg.Users) == 0 {
		return true
	}
	for _, u := range a.cfg.Users {
		if u == user {
			return true
		}
	}
	return false
}

// run joins the hub and rejoins whenever the link is lost, until ctx ends.
func (a *agentRunner) run(ctx context.Context) {
	lg := a.b.log.With("hub", a.cfg.Hub)
	backoff := joinBackoffMin
	lastErr := ""
	for ctx.Err() == nil {
		joined, err := a.once(ctx, lg)
		if ctx.Err() != nil {
			return
		}
		wait := backoff
		var re *errJoinRefused
		switch {
		case errors.As(err, &re):
			// An operator must act; say so every time, slowly.
			lg.Error("hub refused this agent", "agent", a.cfg.Name, "err", err)
			wait = joinRefusedIvl
		case joined:
			lg.Warn("lost hub", "err", err)
			backoff, lastErr = joinBackoffMin, ""
			wait = backoff
		default:
			if msg := err.Error(); msg != lastErr {
				lg.Warn("cannot join hub; retrying", "err", err)
				lastErr = msg
			} else {
				lg.Debug("cannot join hub; retrying", "err", err)
			}
			backoff = min(2*backoff, joinBackoffMax)
		}
		// Jitter: between half and all of the wait, so that agents cut off
		// together do not come back in lockstep.
		wait = wait/2 + rand.N(wait/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// hubKey returns the hub's key: configured, pinned, or learned now and
// pinned (first contact). pinned says whether it came from the file.
func (a *agentRunner) hubKey(ctx context.Context) (key curve.PublicKey, pinned bool, err error) {
	if a.cfg.HubKey != "" {
		key, err = curve.ParsePublicKey(a.cfg.HubKey)
		return key, false, err
	}
	path := filepath.Join(a.b.cfg.StateDir, hubKnownHosts)
	if k, ok, err := lookupHubKey(path, a.cfg.Hub); err != nil {
		return key, false, refused("%s: %v", path, err)
	} else if ok {
		return k, true, nil
	}
	announced, err := zmtp.QueryServerKey(ctx, a.cfg.Hub, a.b.cfg.timeout())
	if err != nil {
		return key, false, fmt.Errorf("asking the hub for its key: %w", err)
	}
	key, err = curve.ParsePublicKey(announced)
	if err != nil {
		return key, false, fmt.Errorf("the hub announced a malformed key: %w", err)
	}
	if err := pinHubKey(path, a.cfg.Hub, key); err != nil {
		return key, false, fmt.Errorf("pinning the hub's key: %w", err)
	}
	a.b.log.Info("pinned the hub's key on first contact", "hub", a.cfg.Hub, "fingerprint", key.Fingerprint(), "file", path)
	return key, false, nil
}

func lookupHubKey(path, hub string) (curve.PublicKey, bool, error) {
	var key curve.PublicKey
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return key, false, nil
	}
	if err != nil {
		return key, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || fields[0] != hub {
			continue
		}
		key, err := curve.ParsePublicKey(fields[1])
		if err != nil {
			return key, false, fmt.Errorf("line %d: %v", n, err)
		}
		return key, true, nil
	}
	return key, false, sc.Err()
}

func pinHubKey(path, hub string, key curve.PublicKey) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s added %s\n", hub, key.String(), time.Now().Format("2006-01-02"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// agentLink is one connection of the agent to its hub.
type agentLink struct {
	a       *agentRunner
	dealer  zmq4.Socket
	sendMu  sync.Mutex
	dead    chan struct{} // closed when the connection closes
	dieOnce sync.Once
	recv    atomic.Int64 // unix nanoseconds of the last message
	joined  atomic.Bool
	hubErr  atomic.Pointer[wire.Error] // an ERROR on channel 0 after JOIN_OK

	mu        sync.Mutex
	tunnels   map[uint32]*tunnel.Conn
	fetches   map[uint32]*pendingFetch // PUB_FETCH channels (pubChannelBit set)
	nextFetch uint32

	subMu sync.Mutex
	sub   zmq4.Socket // on the hub's XPUB; nil until dialled
}

func (l *agentLink) die() { l.dieOnce.Do(func() { close(l.dead) }) }

// send writes m to the hub; it may block briefly while the connection's
// queue is full.
func (l *agentLink) send(m wire.Message) error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	select {
	case <-l.dead:
		return net.ErrClosed
	default:
	}
	return l.dealer.Send(zmq4.NewMsgFrom(wire.Frames(m)...))
}

// once dials the hub, joins and serves the link until it fails. joined
// reports whether the hub had accepted the agent.
func (a *agentRunner) once(ctx context.Context, lg *slog.Logger) (joined bool, err error) {
	key, pinned, err := a.hubKey(ctx)
	if err != nil {
		return false, err
	}
	l := &agentLink{a: a, dead: make(chan struct{}), tunnels: make(map[uint32]*tunnel.Conn), fetches: make(map[uint32]*pendingFetch)}
	zcfg := &zmtp.Config{
		Mechanism:        &curve.Client{Key: a.cfg.Key, ServerKey: key},
		SocketType:       string(zmq4.Dealer),
		HandshakeTimeout: a.b.cfg.timeout(),
		OnFull:           zmtp.Block,
		// Tunnels are flow-controlled end to end; this only has to hold
		// their windows (a tunnel's Write waits briefly beyond it).
		SendQueue:  64 << 20,
		NoCopy:     true,
		MaxFrame:   wire.MaxHeader + 64,
		MaxMessage: wire.MaxHeader + wire.MaxData + 128,
		MaxFrames:  2,
		OnClose:    func([]byte, *zmtp.Peer, error) { l.die() },
	}
	lctx, cancel := context.WithCancel(zmtp.WithConfig(ctx, zcfg))
	defer cancel()
	l.dealer = zmq4.NewDealer(lctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(a.b.cfg.timeout()),
		zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithTimeout(24*time.Hour))
	if err := l.dealer.Dial(a.ep); err != nil {
		l.dealer.Close()
		return false, a.dialError(ctx, err, key, pinned)
	}
	replies := make(chan wire.Message, 1)
	var wg sync.WaitGroup
	defer func() {
		l.dealer.Close()
		l.die()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.receive(replies)
	}()
	l.recv.Store(time.Now().UnixNano())
	if err := l.send(&wire.Join{Version: wire.JoinVersion, Name: a.cfg.Name, Labels: a.cfg.Labels,
		Software: "zpd/" + wire.SoftwareVersion, Metrics: a.cfg.Metrics,
		Heartbeat: uint32(a.b.cfg.heartbeat().Milliseconds()), Relay: a.relay(), RelayControl: a.relayControl()}); err != nil {
		return false, err
	}
	var ok *wire.JoinOK
	select {
	case m := <-replies:
		switch m := m.(type) {
		case *wire.JoinOK:
			ok = m
		case *wire.Error:
			switch m.Code {
			case wire.CodeUnauthorised, wire.CodeConflict, wire.CodeVersion, wire.CodeBadRequest:
				return false, refused("%s (%d)", m.Reason, m.Code)
			}
			return false, fmt.Errorf("hub answered JOIN with %d: %s", m.Code, m.Reason)
		}
	case <-l.dead:
		return false, errors.New("the hub closed the connection during JOIN")
	case <-time.After(a.b.cfg.timeout()):
		return false, errors.New("no answer to JOIN")
	case <-ctx.Done():
		return false, ctx.Err()
	}
	l.joined.Store(true)
	ivl := durOr(time.Duration(ok.Heartbeat)*time.Millisecond, a.b.cfg.heartbeat())
	timeout := durOr(time.Duration(ok.Timeout)*time.Millisecond, a.b.cfg.timeout())
	lg.Info("joined hub", "agent", a.cfg.Name, "hub_name", ok.Hub, "fingerprint", key.Fingerprint())
	defer l.failTunnels()
	a.cur.Store(l)
	defer a.cur.CompareAndSwap(l, nil)
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.runSub(lctx, ok.Publish, key)
	}()
	return true, l.heartbeat(ctx, ivl, timeout)
}

// dialError explains a failed connection; a refused key, or a pinned hub
// key that the hub no longer has, is for an operator to fix.
func (a *agentRunner) dialError(ctx context.Context, err error, key curve.PublicKey, pinned bool) error {
	var he *zmtp.HandshakeError
	if !errors.As(err, &he) {
		return unwrapAll(err)
	}
	var pe *zmtp.PeerError
	if errors.As(err, &pe) {
		return refused("the hub refused this agent's key %s (%s): add the key that 'zpd --print-key' shows here to the hub's --fleet-keys", a.cfg.Key.Public.Fingerprint(), pe.Reason)
	}
	// The handshake failed against the key we expect: does the hub now
	// announce another one?
	if k, qerr := zmtp.QueryServerKey(ctx, a.cfg.Hub, a.b.cfg.timeout()); qerr == nil {
		if now, perr := curve.ParsePublicKey(k); perr == nil && now != key {
			where := "--hub-key"
			if pinned {
				where = filepath.Join(a.b.cfg.StateDir, hubKnownHosts)
			}
			return refused("HUB KEY CHANGED: %s announces %s, but %s pins %s; someone may be impersonating the hub. If the change is expected, fix %s", a.cfg.Hub, now.Fingerprint(), where, key.Fingerprint(), where)
		}
	}
	return he
}

func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// receive reads the link until it closes; the first reply goes to
// replies (JOIN_OK or ERROR), everything else is handled here. It never
// blocks for long: tunnels take their messages without waiting.
func (l *agentLink) receive(replies chan<- wire.Message) {
	log := l.a.b.log
	for {
		msg, err := l.dealer.Recv()
		if err != nil {
			l.die()
			return
		}
		l.recv.Store(time.Now().UnixNano())
		m, err := wire.Decode(msg.Frames)
		if err != nil {
			log.Warn("undecodable message from the hub", "err", err)
			continue
		}
		switch m := m.(type) {
		case *wire.JoinOK:
			select {
			case replies <- m:
			default:
			}
		case *wire.Ping:
			_ = l.send(&wire.Pong{Seq: m.Seq})
		case *wire.Pong:
		case *wire.Tunnel:
			l.openTunnel(m)
		case *wire.Data, *wire.Ack, *wire.Fin, *wire.PubFetchOK:
			id, _ := wire.ChannelOf(m)
			if !l.routeFetch(id, m) {
				l.deliver(id, m)
			}
		case *wire.Error:
			if m.Channel == 0 {
				if !l.joined.Load() {
					select {
					case replies <- m:
					default:
					}
					continue
				}
				// The hub ends the link (replaced by another link of
				// this agent's key): heartbeat reports why.
				l.hubErr.Store(m)
				l.die()
				return
			}
			if !l.routeFetch(m.Channel, m) {
				l.deliver(m.Channel, m)
			}
		default:
			log.Debug("unexpected message from the hub", "msg", m.ID().String())
		}
	}
}

// deliver hands a tunnel its message; a tunnel that ended is forgotten.
func (l *agentLink) deliver(id uint32, m wire.Message) {
	l.mu.Lock()
	t := l.tunnels[id]
	l.mu.Unlock()
	if t == nil {
		return // a tunnel that ended: late traffic
	}
	_ = t.Deliver(m)
	if t.Done() {
		l.forget(id, t)
	}
}

func (l *agentLink) forget(id uint32, t *tunnel.Conn) {
	l.mu.Lock()
	if l.tunnels[id] == t {
		delete(l.tunnels, id)
	}
	l.mu.Unlock()
}

// openTunnel answers the hub's TUNNEL: a tunnel end handed to our own
// socket's listener, which treats it as an accepted connection (CURVE
// handshake, keyring, limits).
func (l *agentLink) openTunnel(m *wire.Tunnel) {
	a := l.a
	in := a.b.inject[m.Port]
	l.mu.Lock()
	switch {
	case in == nil:
		l.mu.Unlock()
		_ = l.send(wire.Errorf(m.Channel, wire.CodeBadRequest, "no port %d", m.Port))
		return
	case l.tunnels[m.Channel] != nil:
		l.mu.Unlock()
		_ = l.send(wire.Errorf(m.Channel, wire.CodeConflict, "channel %d is in use", m.Channel))
		return
	case len(l.tunnels) >= a.maxTunnels():
		l.mu.Unlock()
		_ = l.send(wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d tunnels", a.maxTunnels()))
		return
	}
	var t *tunnel.Conn
	t = tunnel.New(tunnel.Config{
		Channel: m.Channel,
		Send: func(msg wire.Message) error {
			if _, fin := msg.(*wire.Fin); fin {
				l.forget(m.Channel, t)
			}
			return l.send(msg)
		},
		Window: uint64(a.window()), PeerWindow: uint64(m.Window), Chunk: 128 << 10,
		Local: tunnel.Addr("fleet"), Remote: tunnel.Addr("fleet:" + m.Agent),
	})
	l.tunnels[m.Channel] = t
	l.mu.Unlock()
	// TUNNEL_OK goes out before the listener can write the greeting.
	if err := l.send(&wire.TunnelOK{Channel: m.Channel, Window: uint32(a.window())}); err != nil {
		l.forget(m.Channel, t)
		return
	}
	select {
	case in <- t:
		a.b.log.Debug("tunnel opened", "client", m.Agent, "port", int(m.Port))
	default:
		l.forget(m.Channel, t)
		_ = t.Deliver(wire.Errorf(m.Channel, wire.CodeUnavailable, "busy"))
		_ = l.send(wire.Errorf(m.Channel, wire.CodeUnavailable, "the agent has too many tunnels being opened"))
	}
}

// failTunnels ends every tunnel of a link that died: their connections
// close, and the sessions on them detach (and may expire) as usual.
func (l *agentLink) failTunnels() {
	l.mu.Lock()
	ts := l.tunnels
	l.tunnels = make(map[uint32]*tunnel.Conn)
	l.mu.Unlock()
	for id, t := range ts {
		_ = t.Deliver(wire.Errorf(id, wire.CodeUnavailable, "the link to the hub was lost"))
	}
}

// heartbeat pings the hub and returns when the link dies, goes silent
// past the timeout, or ctx ends.
func (l *agentLink) heartbeat(ctx context.Context, ivl, timeout time.Duration) error {
	t := time.NewTicker(ivl)
	defer t.Stop()
	var seq uint64
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.dead:
			if e := l.hubErr.Load(); e != nil {
				if e.Code == wire.CodeConflict {
					return refused("the hub ended the link: %s (another zpd with this key and name? each agent needs its own state directory)", e.Reason)
				}
				return fmt.Errorf("the hub ended the link: %w", e)
			}
			return errors.New("connection closed")
		case <-t.C:
		}
		if time.Since(last) > 3*ivl {
			// We were not running (SIGSTOP): the silence was ours.
			l.recv.Store(time.Now().UnixNano())
		}
		last = time.Now()
		if silent := time.Since(time.Unix(0, l.recv.Load())); silent > timeout {
			return fmt.Errorf("the hub was silent for %v", silent.Round(time.Millisecond))
		}
		seq++
		if err := l.send(&wire.Ping{Seq: seq}); err != nil {
			return err
		}
	}
}
