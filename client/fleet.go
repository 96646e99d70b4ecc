package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/tunnel"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// Agent is an agent as its hub lists it (docs/PROTOCOL.md §13.3).
type Agent struct {
	Name        string
	Key         string // its public key, Z85: what DialAgent expects it to prove
	Fingerprint string
	Address     string // IP:PORT of its link, as the hub sees it
	Labels      map[string]string
	Software    string
	Joined      time.Time // the current (or last) link's JOIN
	LastSeen    time.Time
	State       string // AgentUp or AgentLost
	Metrics     string // HOST:PORT of its /metrics, or ""
	// Relay is the agent's XPUB ("tcp://HOST:PORT") where it can relay
	// broadcasts, or "". Parent is its parent ("" for the hub) in the last
	// relay tree it was placed in, at TreeAt (zero if never).
	Relay  string
	Parent string
	TreeAt time.Time
}

// Agent states.
const (
	AgentUp   = "up"
	AgentLost = "lost"
)

// Selector chooses agents: those whose name matches one of Hosts (shell
// patterns, path.Match; none: every agent) and that have every label in
// Labels.
type Selector struct {
	Hosts  []string
	Labels map[string]string
}

// Listing is a hub's answer to a fleet listing.
type Listing struct {
	Agents []Agent // sorted by name
	// HubMetrics is where the hub serves its own /metrics: "HOST:PORT",
	// ":PORT" (on the hub's host) or "".
	HubMetrics string
}

// ErrNotHub: the session's server does not speak the fleet protocol
// (version 2).
var ErrNotHub = errors.New("the server does not speak protocol version 2 (no fleet)")

// Fleet is the fleet API of a session with a hub: list its agents and
// reach them through tunnels. Safe for concurrent use; it lives as long as
// the session.
type Fleet struct {
	s *Session
	// TunnelWindow is the credit granted per tunnel for what the agent
	// sends (1 MiB): a hub holds at most this much per tunnel for a client
	// that does not read.
	TunnelWindow int
}

// NewFleet returns the fleet API of s, a session with a hub.
func NewFleet(s *Session) (*Fleet, error) {
	if s.info.Version < 2 {
		return nil, ErrNotHub
	}
	return &Fleet{s: s}, nil
}

func (f *Fleet) tunnelWindow() int {
	if f.TunnelWindow > 0 {
		return f.TunnelWindow
	}
	return 1 << 20
}

// List asks the hub for the agents sel selects.
func (f *Fleet) List(ctx context.Context, sel Selector) (*Listing, error) {
	m, err := f.s.request(ctx, func(ch uint32) wire.Message {
		return &wire.Fleet{Channel: ch, Hosts: sel.Hosts, Labels: sel.Labels}
	})
	if err != nil {
		return nil, public(err)
	}
	l, ok := m.(*wire.FleetList)
	if !ok {
		return nil, fmt.Errorf("unexpected %s", m.ID())
	}
	out := &Listing{HubMetrics: l.Metrics, Agents: make([]Agent, 0, len(l.Agents))}
	for _, d := range l.Agents {
		out.Agents = append(out.Agents, agentFrom(d))
	}
	return out, nil
}

// Agents lists the agents sel selects, sorted by name.
func (f *Fleet) Agents(ctx context.Context, sel Selector) ([]Agent, error) {
	l, err := f.List(ctx, sel)
	if err != nil {
		return nil, err
	}
	return l.Agents, nil
}

func agentFrom(d map[string]string) Agent {
	a := Agent{Name: d["name"], Key: d["key"], Fingerprint: d["fingerprint"], Address: d["address"],
		Software: d["software"], State: d["state"], Metrics: d["metrics"], Labels: map[string]string{}}
	for _, kv := range strings.Split(d["labels"], ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			a.Labels[k] = v
		}
	}
	a.Relay, a.Parent = d["relay"], d["parent"]
	a.TreeAt, _ = time.Parse(time.RFC3339, d["tree_at"])
	a.Joined, _ = time.Parse(time.RFC3339, d["joined"])
	a.LastSeen, _ = time.Parse(time.RFC3339, d["last_seen"])
	return a
}

// Ports of an agent that Tunnel reaches.
const (
	PortControl uint8 = 0 // the agent's ROUTER (sessions)
	PortPublish uint8 = 1 // the agent's XPUB (job output)
)

// Tunnel opens a tunnel to an agent's socket (PortControl: its
// ROUTER; PortPublish: its XPUB): a byte stream through the hub, which
// relays it without reading. Whatever runs over it must authenticate the
// agent itself (DialAgent runs CURVE with the agent's key).
func (f *Fleet) Tunnel(ctx context.Context, agent string, port uint8) (_ net.Conn, err error) {
	defer func() { err = public(err) }()
	s := f.s
	s.mu.Lock()
	s.nextChan++
	id := s.nextChan
	s.mu.Unlock()
	p := &pendingTunnel{done: make(chan tunnelResult, 1), cfg: tunnel.Config{
		Channel: id, Opener: true, Window: uint64(f.tunnelWindow()), Chunk: 128 << 10,
		Local: tunnel.Addr("hub"), Remote: tunnel.Addr(agent),
		Send: func(m wire.Message) error {
			if _, fin := m.(*wire.Fin); fin {
				s.fleet.drop(id) // channel ids are never reused
			}
			return s.send(m)
		},
	}}
	if err := s.fleet.add(id, p); err != nil {
		return nil, err
	}
	if err := s.send(&wire.Tunnel{Channel: id, Agent: agent, Port: port, Window: uint32(f.tunnelWindow())}); err != nil {
		s.fleet.drop(id)
		return nil, err
	}
	select {
	case r := <-p.done:
		if r.err != nil {
			return nil, r.err
		}
		return r.conn, nil
	case <-ctx.Done():
		// The hub may still open it: a FIN closes it on both sides.
		if c := s.fleet.drop(id); c != nil {
			c.Close()
		} else {
			_ = s.send(&wire.Fin{Channel: id})
		}
		return nil, ctx.Err()
	case <-s.done:
		return nil, s.err
	}
}

// DialAgent opens a session with an agent through the hub: an ordinary
// session (exec, jobs, copies) over a tunnel, CURVE end to end with the
// agent's key, authorised by the agent's own keyring for cfg.User.
// cfg.Endpoint and cfg.Dial are set here. When cfg has neither ServerKey
// nor KnownHosts, the key the hub listed (a.Key) is used: the caller is
// responsible for trusting it (zp pins it in known_hosts as NAME@HUB).
// Each reconnection (cfg.Resume) opens a new tunnel.
func (f *Fleet) DialAgent(ctx context.Context, a Agent, cfg Config) (*Session, error) {
	if c, ok := cfg.mech.(*curve.Client); ok && c.ServerKey == (curve.PublicKey{}) {
		key, err := curve.ParsePublicKey(a.Key)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", a.Name, err)
		}
		cc := *c
		cc.ServerKey = key
		cfg.mech = &cc
	}
	if cfg.mech == nil && !cfg.Insecure && cfg.ServerKey.IsZero() && cfg.KnownHosts == nil {
		key, err := ParsePublicKey(a.Key)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", a.Name, err)
		}
		cfg.ServerKey = key
	}
	cfg.Endpoint = a.Name
	timeout := cfg.connectTimeout()
	cfg.Dial = func(ctx context.Context) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return f.Tunnel(ctx, a.Name, wire.PortControl)
	}
	cfg.DialPublish = func(ctx context.Context) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return f.Tunnel(ctx, a.Name, wire.PortPublish)
	}
	return Dial(ctx, cfg)
}

// dialEndpoint is the zmq4 endpoint of a session: the network endpoint,
// or zpdial://NAME when Config.Dial makes the connection.
func dialEndpoint(cfg Config) (string, error) {
	if cfg.Dial != nil {
		name := strings.TrimPrefix(cfg.Endpoint, zmtp.SchemeDial+"://")
		if name == "" {
			name = "tunnel"
		}
		return zmtp.SchemeDial + "://" + name, nil
	}
	return zmtp.Endpoint(cfg.Endpoint)
}

// tunnelRoutes are a session's tunnels: the receive loop hands them their
// messages (route), and they end with the session (fail).
type tunnelRoutes struct {
	mu      sync.Mutex
	pending map[uint32]*pendingTunnel
	open    map[uint32]*tunnel.Conn
	err     error // the session ended
}

type pendingTunnel struct {
	cfg  tunnel.Config
	done chan tunnelResult
}

type tunnelResult struct {
	conn *tunnel.Conn
	err  error
}

func (r *tunnelRoutes) add(id uint32, p *pendingTunnel) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if r.pending == nil {
		r.pending = make(map[uint32]*pendingTunnel)
		r.open = make(map[uint32]*tunnel.Conn)
	}
	r.pending[id] = p
	return nil
}

// drop forgets a tunnel; it returns the connection if it was open.
func (r *tunnelRoutes) drop(id uint32) *tunnel.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, id)
	c := r.open[id]
	delete(r.open, id)
	return c
}

func (r *tunnelRoutes) forget(id uint32, c *tunnel.Conn) {
	r.mu.Lock()
	if c != nil && r.open[id] == c {
		delete(r.open, id)
	}
	r.mu.Unlock()
}

// route hands a tunnel its message; false if the channel is not a tunnel.
// Called by the receive loop: it never blocks.
func (r *tunnelRoutes) route(m wire.Message) bool {
	id, ok := wire.ChannelOf(m)
	if !ok {
		return false
	}
	r.mu.Lock()
	if p := r.pending[id]; p != nil {
		delete(r.pending, id)
		var res tunnelResult
		switch m := m.(type) {
		case *wire.TunnelOK:
			cfg := p.cfg
			cfg.PeerWindow = uint64(m.Window)
			// Open before anything else arrives: the agent's first DATA
			// follows its TUNNEL_OK on the same path.
			res.conn = tunnel.New(cfg)
			r.open[id] = res.conn
		case *wire.Error:
			res.err = m
		default:
			res.err = fmt.Errorf("hub answered TUNNEL with %s", m.ID())
		}
		r.mu.Unlock()
		p.done <- res
		return true
	}
	c := r.open[id]
	r.mu.Unlock()
	if c == nil {
		return false
	}
	_ = c.Deliver(m)
	if c.Done() {
		r.forget(id, c)
	}
	return true
}

// fail ends every tunnel of a session that ended.
func (r *tunnelRoutes) fail(err error) {
	r.mu.Lock()
	r.err = err
	pending, open := r.pending, r.open
	r.pending, r.open = nil, nil
	r.mu.Unlock()
	for _, p := range pending {
		p.done <- tunnelResult{err: err}
	}
	for id, c := range open {
		_ = c.Deliver(wire.Errorf(id, wire.CodeUnavailable, "the session with the hub ended: %v", err))
	}
}

// FleetJob is a hub's record of a background job started on several
// agents (docs/PROTOCOL.md §13.6).
type FleetJob struct {
	ID      string
	Command string
	Started time.Time
	Jobs    map[string]string // agent name → job id on that agent
}

// RecordJob records jobs started on agents (name → job id there) as one
// fleet job on the hub and returns its id.
func (f *Fleet) RecordJob(ctx context.Context, command string, jobs map[string]string) (string, error) {
	m, err := f.s.request(ctx, func(ch uint32) wire.Message {
		return &wire.FleetJob{Channel: ch, Command: command, Jobs: jobs}
	})
	if err != nil {
		return "", public(err)
	}
	ok, isOK := m.(*wire.FleetJobOK)
	if !isOK {
		return "", &ProtocolError{fmt.Errorf("%s in answer to FLEET_JOB", m.ID())}
	}
	return ok.Job, nil
}

// Jobs lists the caller's fleet jobs, oldest first, or (id != "") the one
// with that id: an id that is not the caller's is an *Error with
// CodeNotFound.
func (f *Fleet) Jobs(ctx context.Context, id string) ([]FleetJob, error) {
	m, err := f.s.request(ctx, func(ch uint32) wire.Message {
		return &wire.FleetJobs{Channel: ch, Job: id}
	})
	if err != nil {
		return nil, public(err)
	}
	l, ok := m.(*wire.FleetJobList)
	if !ok {
		return nil, &ProtocolError{fmt.Errorf("%s in answer to FLEET_JOBS", m.ID())}
	}
	out := make([]FleetJob, 0, len(l.Jobs))
	for _, d := range l.Jobs {
		j := FleetJob{ID: d["id"], Command: d["command_line"], Jobs: map[string]string{}}
		j.Started, _ = time.Parse(time.RFC3339, d["started"])
		for k, v := range d {
			if name, ok := strings.CutPrefix(k, "job."); ok {
				j.Jobs[name] = v
			}
		}
		out = append(out, j)
	}
	return out, nil
}

// IsFleetJobID reports whether id names a fleet job ("F-" and 20
// letters or digits) rather than a job on one zpd.
func IsFleetJobID(id string) bool {
	if len(id) != 22 || !strings.HasPrefix(id, "F-") {
		return false
	}
	for _, c := range id[2:] {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}
