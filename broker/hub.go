package broker

import (
	"fmt"
	"net"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/metrics"
)

// HubConfig makes a zpd a fleet hub (docs/PROTOCOL.md §13): agents join
// it, and the clients it admits list them and open tunnels to them. The
// hub relays tunnel traffic without reading it (CURVE end to end between
// the client and the agent) and holds nothing for a tunnel.
type HubConfig struct {
	// Agents lists the agents' own server keys (--fleet-keys): only they
	// may JOIN. Clients lists the client keys that may use the fleet
	// (--fleet-clients). Both deny everything when nil or empty. The
	// broker's CURVE mechanism must admit these keys too (zpd's does).
	Agents, Clients *KeyList
	// MaxTunnels bounds the tunnels one session holds (10000), beside its
	// other channels.
	MaxTunnels int
	// MaxAgents bounds the registry (65536): when full, the agent lost
	// longest ago is forgotten for a newcomer.
	MaxAgents int
	// Metrics is where the hub's own /metrics are, as FLEET_LIST reports
	// it: "HOST:PORT", ":PORT" or "".
	Metrics string
	// OnRelay, if set, sees every tunnel payload the hub relays (tests
	// check that it is ciphertext); it must not block or keep p.
	OnRelay func(toAgent bool, p []byte)
}

// hub is the fleet side of a Broker: the registry of agents and the
// tunnel relays. Its lock and b.mu are never held together, and nothing
// is sent while it is held.
type hub struct {
	b    *Broker
	cfg  HubConfig
	m    *metrics.Fleet
	name string

	mu      sync.Mutex
	agents  map[string]*hubAgent           // by name
	links   map[string]*hubAgent           // by the link's routing identity
	clients map[*session]map[uint32]*relay // tunnels by client session and channel
	tunnels int                            // open relays
	pubs    map[string]*publication        // by topic
	pubsOf  map[*session]map[uint32]*publication
	// fleetJobs are the fleet job records, by id (fleetjobs.go).
	fleetJobs map[string]*fleetJob
}

// hubAgent is an agent as the hub knows it.
type hubAgent struct {
	name, software, metrics, address string
	// publish is the agent's XPUB ("tcp://HOST:PORT") where it relays
	// broadcasts, or "" (JOIN version 2, or not on TCP); parent is its
	// parent in the last relay tree it was placed in (at treeAt), "" for
	// the hub.
	publish, control, parent   string
	treeAt                     time.Time
	key                        []byte
	labels                     map[string]string
	joined, lastSeen, lastPing time.Time
	link                       *connInfo // nil once the link closed
	lost                       bool      // silent for three heartbeats, or the link closed
	relays                     map[uint32]*relay
	nextCh                     uint32
	seq                        uint64
	fetches                    int // PUB_FETCH being answered
}

// relay joins a client's tunnel channel to a channel on an agent's link.
// It enforces the credit of both streams, so that the hub never holds
// more than a window per direction for a tunnel, whatever either end
// sends: stream 0 (up, client → agent) within what the agent granted,
// stream 1 (down) within what the client granted.
type relay struct {
	sess     *session
	clientCh uint32
	agent    *hubAgent
	link     *connInfo
	agentCh  uint32
	open     bool // the agent answered TUNNEL_OK

	upWin, downWin     uint64 // the windows each receiver declared
	upLimit, downLimit uint64 // the credit granted so far
	upSent, downSent   uint64 // the end of what was relayed
}

// maxTunnelWindow is the largest credit window a tunnel end may declare
// (docs/PROTOCOL.md §13.4).
const maxTunnelWindow = 4 << 20

// outMsg is a message to send once the hub's lock is released: to a
// connection (agent link) or to a session.
type outMsg struct {
	conn *connInfo
	sess *session
	m    wire.Message
}

func newHub(b *Broker, cfg *HubConfig) *hub {
	if cfg == nil {
		return nil
	}
	host, _ := os.Hostname()
	h := &hub{
		b: b, cfg: *cfg, m: metrics.NewFleet(b.cfg.Registerer),
		name:    host + " zpd/" + wire.SoftwareVersion,
		agents:  make(map[string]*hubAgent),
		links:   make(map[string]*hubAgent),
		clients: make(map[*session]map[uint32]*relay),
		pubs:    make(map[string]*publication),
		pubsOf:  make(map[*session]map[uint32]*publication),

		fleetJobs: make(map[string]*fleetJob),
	}
	if err := h.loadFleetJobs(); err != nil {
		b.log.Error("could not read the fleet job records", "dir", h.fleetJobDir(), "err", err)
	}
	return h
}

func (h *hub) maxTunnels() int { return intOr(h.cfg.MaxTunnels, 10000) }
func (h *hub) maxAgents() int  { return intOr(h.cfg.MaxAgents, 65536) }

func (h *hub) flush(out []outMsg) {
	for _, o := range out {
		switch {
		case o.sess != nil:
			o.sess.send(o.m)
		case o.conn != nil:
			h.b.reply(o.conn.id, o.m)
		}
	}
}

// admitsClient reports whether a key the keyring refused may still open a
// (fleet-only) session: it is a fleet client and speaks version 2.
func (h *hub) admitsClient(key []byte, version uint16) bool {
	return h != nil && version >= 2 && h.cfg.Clients.Contains(key)
}

// link handles a message of a connection that joined (or JOIN itself); it
// reports false for anything else. Called by the receive loop.
func (h *hub) link(c *connInfo, m wire.Message) bool {
	if h == nil {
		return false
	}
	if j, ok := m.(*wire.Join); ok {
		h.join(c, j)
		return true
	}
	if !c.agentLink {
		return false
	}
	var out []outMsg
	h.mu.Lock()
	a := h.links[string(c.id)]
	if a == nil || a.link != c {
		h.mu.Unlock()
		return true // a replaced link's last words
	}
	now := time.Now()
	a.lastSeen = now
	if a.lost {
		a.lost = false
		h.gauges()
		h.b.log.Info("agent is back", "agent", a.name)
	}
	switch m := m.(type) {
	case *wire.Ping:
		out = append(out, outMsg{conn: c, m: &wire.Pong{Seq: m.Seq}})
	case *wire.Pong:
	case *wire.TunnelOK:
		if r := a.relays[m.Channel]; r != nil && !r.open {
			r.open = true
			r.upWin = min(uint64(m.Window), maxTunnelWindow)
			r.upLimit = r.upWin
			h.m.TunnelsOpened.WithLabelValues("ok").Inc()
			out = append(out, outMsg{sess: r.sess, m: &wire.TunnelOK{Channel: r.clientCh, Window: uint32(r.upWin)}})
		}
	case *wire.Data:
		if r := a.relays[m.Channel]; r != nil {
			if m.Stream != wire.TunnelDown || m.Offset+uint64(len(m.Bytes)) > r.downLimit {
				out = append(out, h.violationLocked(r, "the agent sent past the client's credit")...)
				break
			}
			r.downSent = max(r.downSent, m.Offset+uint64(len(m.Bytes)))
			h.m.RelayedBytes.WithLabelValues("to_client").Add(float64(len(m.Bytes)))
			if h.cfg.OnRelay != nil {
				h.cfg.OnRelay(false, m.Bytes)
			}
			m.Channel = r.clientCh
			out = append(out, outMsg{sess: r.sess, m: m})
		}
	case *wire.Ack:
		if r := a.relays[m.Channel]; r != nil && m.Stream == wire.TunnelUp {
			m.Limit = min(m.Limit, min(m.Offset, r.upSent)+r.upWin)
			r.upLimit = max(r.upLimit, m.Limit)
			m.Channel = r.clientCh
			out = append(out, outMsg{sess: r.sess, m: m})
		}
	case *wire.PubFetch:
		out = append(out, h.pubFetchLocked(a, c, m)...)
	case *wire.Fin:
		if r := a.relays[m.Channel]; r != nil {
			h.dropLocked(r)
			out = append(out, outMsg{sess: r.sess, m: &wire.Fin{Channel: r.clientCh}})
		}
	case *wire.Error:
		if r := a.relays[m.Channel]; r != nil && m.Channel != 0 {
			if !r.open {
				h.m.TunnelsOpened.WithLabelValues("refused").Inc()
			}
			h.dropLocked(r)
			out = append(out, outMsg{sess: r.sess, m: &wire.Error{Channel: r.clientCh, Code: m.Code, Reason: m.Reason}})
		} else if m.Channel == 0 {
			h.b.log.Warn("agent reported an error", "agent", a.name, "code", int(m.Code), "reason", m.Reason)
		}
	default:
		out = append(out, outMsg{conn: c, m: wire.Errorf(0, wire.CodeBadRequest, "%s on an agent link", m.ID())})
	}
	h.mu.Unlock()
	h.flush(out)
	return true
}

// join admits an agent (docs/PROTOCOL.md §13.2).
func (h *hub) join(c *connInfo, m *wire.Join) {
	refuse := func(result string, e *wire.Error) {
		h.m.Joins.WithLabelValues(result).Inc()
		h.b.log.Warn("join refused", "agent", m.Name, "peer", c.remote, "key", keyFingerprint(c.key), "code", int(e.Code), "reason", e.Reason)
		h.b.reply(c.id, e)
	}
	switch {
	case c.sess != nil || c.agentLink:
		refuse("bad_request", wire.Errorf(0, wire.CodeBadRequest, "JOIN on a connection that already has a session or a link"))
		return
	case m.Version < 2 || m.Version > wire.JoinVersion:
		refuse("bad_request", wire.Errorf(0, wire.CodeVersion, "JOIN version %d not supported (this hub speaks 2-%d)", m.Version, wire.JoinVersion))
		return
	case !h.cfg.Agents.Contains(c.key):
		refuse("unauthorised", wire.Errorf(0, wire.CodeUnauthorised, "key %s is not an agent key of this hub (--fleet-keys)", keyFingerprint(c.key)))
		return
	case len(m.Labels) > 64:
		refuse("bad_request", wire.Errorf(0, wire.CodeTooLarge, "more than 64 labels"))
		return
	}
	now := time.Now()
	var out []outMsg
	var closeOld *connInfo
	h.mu.Lock()
	old := h.agents[m.Name]
	if old != nil && old.link != nil && !old.lost && string(old.key) != string(c.key) {
		h.mu.Unlock()
		refuse("conflict", wire.Errorf(0, wire.CodeConflict, "name %s is taken by an agent that is up, key %s", m.Name, keyFingerprint(old.key)))
		return
	}
	if old == nil && len(h.agents) >= h.maxAgents() && !h.evictLocked() {
		h.mu.Unlock()
		refuse("limit", wire.Errorf(0, wire.CodeTooMany, "the hub lists %d agents, none of them lost", len(h.agents)))
		return
	}
	if old != nil && old.link != nil {
		// The same agent again (restarted, or its link broke unseen), or
		// a lost one's name taken over: the old link goes.
		out = append(out, h.failRelaysLocked(old, "the agent joined again")...)
		closeOld = old.link
		delete(h.links, string(old.link.id))
		old.link = nil
		h.m.AgentsReplaced.Inc()
	}
	a := &hubAgent{
		name: m.Name, software: m.Software, key: append([]byte(nil), c.key...), labels: m.Labels,
		address: c.remote, metrics: metricsAddr(m.Metrics, c.remote), publish: relayAddr(m.Relay, c.remote), control: relayAddr(m.RelayControl, c.remote),
		joined: now, lastSeen: now, lastPing: now, link: c, relays: make(map[uint32]*relay),
	}
	if old != nil {
		a.parent, a.treeAt = old.parent, old.treeAt // its place in the last relay tree
	}
	h.agents[m.Name] = a
	h.links[string(c.id)] = a
	h.gauges()
	h.mu.Unlock()
	h.b.mu.Lock()
	c.agentLink = true
	h.b.mu.Unlock()
	h.flush(out)
	if closeOld != nil {
		// Tell the old link why, then close it: an agent that is still
		// there (a clone with the same key and name) backs off instead of
		// taking the name back at once; a dead one's link goes anyway.
		h.b.reply(closeOld.id, wire.Errorf(0, wire.CodeConflict, "replaced: an agent with this key joined as %s from %s", m.Name, c.remote))
		time.AfterFunc(time.Second, closeOld.close)
	}
	h.m.Joins.WithLabelValues("ok").Inc()
	h.b.log.Info("agent joined", "agent", m.Name, "peer", c.remote, "key", keyFingerprint(c.key), "software", m.Software, "rejoined", old != nil)
	h.b.reply(c.id, &wire.JoinOK{
		Hub: h.name, Publish: h.b.publishEndpoint(),
		Heartbeat: uint32(h.b.cfg.heartbeat().Milliseconds()),
		Timeout:   uint32(h.b.cfg.timeout().Milliseconds()),
	})
}

// evictLocked forgets the agent lost longest ago; false if none is lost.
func (h *hub) evictLocked() bool {
	var victim *hubAgent
	for _, a := range h.agents {
		if a.link == nil && (victim == nil || a.lastSeen.Before(victim.lastSeen)) {
			victim = a
		}
	}
	if victim == nil {
		return false
	}
	delete(h.agents, victim.name)
	return true
}

// metricsAddr resolves JOIN's metrics (":PORT" means the link's IP).
func metricsAddr(m, remote string) string {
	if m == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(m)
	if err != nil || port == "" {
		return ""
	}
	if host == "" {
		rh, _, err := net.SplitHostPort(remote)
		if err != nil || rh == "" {
			rh = "127.0.0.1" // an ipc:// link: the agent is on this machine
		}
		host = rh
	}
	return net.JoinHostPort(host, port)
}

// violationLocked ends a tunnel whose end broke the credit rules: ERROR
// 422 to both ends.
func (h *hub) violationLocked(r *relay, why string) []outMsg {
	h.dropLocked(r)
	h.b.log.Warn("tunnel flow control violation", "agent", r.agent.name, "reason", why)
	return []outMsg{
		{sess: r.sess, m: wire.Errorf(r.clientCh, wire.CodeFlowControl, "%s", why)},
		{conn: r.link, m: wire.Errorf(r.agentCh, wire.CodeFlowControl, "%s", why)},
	}
}

// failRelaysLocked ends every tunnel to a: ERROR 503 to each client.
func (h *hub) failRelaysLocked(a *hubAgent, why string) []outMsg {
	var out []outMsg
	for _, r := range a.relays {
		h.dropLocked(r)
		if !r.open {
			h.m.TunnelsOpened.WithLabelValues("lost").Inc()
		}
		out = append(out, outMsg{sess: r.sess, m: wire.Errorf(r.clientCh, wire.CodeUnavailable, "agent %s: %s", a.name, why)})
	}
	return out
}

// dropLocked forgets a relay on both sides.
func (h *hub) dropLocked(r *relay) {
	if r.agent.relays[r.agentCh] == r {
		delete(r.agent.relays, r.agentCh)
	}
	if m := h.clients[r.sess]; m != nil && m[r.clientCh] == r {
		delete(m, r.clientCh)
		if len(m) == 0 {
			delete(h.clients, r.sess)
		}
		h.tunnels--
		h.m.Tunnels.Set(float64(h.tunnels))
	}
}

// gauges updates zp_fleet_agents.
func (h *hub) gauges() {
	up, lost := 0, 0
	for _, a := range h.agents {
		if a.lost || a.link == nil {
			lost++
		} else {
			up++
		}
	}
	h.m.Agents.WithLabelValues("up").Set(float64(up))
	h.m.Agents.WithLabelValues("lost").Set(float64(lost))
}

// closed is told that a connection closed: an agent link (its agent is
// lost, its tunnels fail) or a client session's (its tunnels end: a
// tunnel does not survive its client's connection).
func (h *hub) closed(c *connInfo, s *session) {
	if h == nil {
		return
	}
	if s != nil {
		h.sessionGone(s)
	}
	var out []outMsg
	h.mu.Lock()
	a := h.links[string(c.id)]
	delete(h.links, string(c.id))
	current := a != nil && a.link == c
	if current {
		out = h.failRelaysLocked(a, "the agent's link to the hub closed")
		a.link = nil
		a.lost = true
		h.gauges()
	}
	h.mu.Unlock()
	h.flush(out)
	if current {
		h.b.log.Warn("agent link closed", "agent", a.name, "peer", c.remote)
	}
}

// sessionGone ends the tunnels of a session that ended or lost its
// connection (FIN to each agent) and deletes its publications.
func (h *hub) sessionGone(s *session) {
	if h == nil {
		return
	}
	var out []outMsg
	h.mu.Lock()
	for _, r := range h.clients[s] {
		h.dropLocked(r)
		if r.link != nil && r.agent.link == r.link {
			out = append(out, outMsg{conn: r.link, m: &wire.Fin{Channel: r.agentCh}})
		}
	}
	h.mu.Unlock()
	h.flush(out)
	h.pubsGone(s)
}

// tick runs the hub's heartbeats: ping every agent, mark the silent ones
// lost after three heartbeats, close their links after the timeout.
func (h *hub) tick(now time.Time) {
	if h == nil {
		return
	}
	hb, timeout := h.b.cfg.heartbeat(), h.b.cfg.timeout()
	var out []outMsg
	var kick []*connInfo
	var lost []string
	h.mu.Lock()
	changed := false
	for _, a := range h.agents {
		if a.link == nil {
			continue
		}
		silent := now.Sub(a.lastSeen)
		if silent > timeout {
			kick = append(kick, a.link)
			continue
		}
		if silent > 3*hb && !a.lost {
			a.lost, changed = true, true
			lost = append(lost, a.name)
		}
		if now.Sub(a.lastPing) >= hb {
			a.lastPing = now
			a.seq++
			out = append(out, outMsg{conn: a.link, m: &wire.Ping{Seq: a.seq}})
		}
	}
	if changed {
		h.gauges()
	}
	h.mu.Unlock()
	for _, name := range lost {
		h.b.log.Warn("agent lost: silent for three heartbeats", "agent", name)
	}
	h.flush(out)
	for _, c := range kick {
		h.b.log.Info("closing a silent agent link", "peer", c.remote)
		c.close()
	}
}

// session handles the fleet requests of a client session, relays its
// tunnels' traffic, and keeps a fleet-only session to the fleet. It
// reports whether it handled m. Called by the receive loop; never blocks.
func (h *hub) session(s *session, m wire.Message) bool {
	switch m.(type) {
	case *wire.Fleet, *wire.Tunnel, *wire.Publish, *wire.PubFetch, *wire.FleetJob, *wire.FleetJobs, *wire.BcastTree:
		id, _ := wire.ChannelOf(m)
		switch {
		case s.version < 2:
			s.sendErr(wire.Errorf(id, wire.CodeBadRequest, "%s needs protocol version 2", m.ID()))
		case h == nil:
			s.sendErr(wire.Errorf(id, wire.CodeBadRequest, "this zpd is not a fleet hub"))
		case !h.cfg.Clients.Contains(s.key):
			s.sendErr(wire.Errorf(id, wire.CodeUnauthorised, "key %s is not a fleet client of this hub", keyFingerprint(s.key)))
		default:
			h.request(s, m)
		}
		return true
	case *wire.Data, *wire.Ack, *wire.Fin:
		if h != nil && (h.relayFromClient(s, m) || h.pubFromClient(s, m)) {
			return true
		}
	case *wire.Ping, *wire.Pong, *wire.Close:
		return false
	}
	if s.fleetOnly {
		id, _ := wire.ChannelOf(m)
		s.sendErr(wire.Errorf(id, wire.CodeUnauthorised, "key %s may only use the fleet on this hub (it is not authorised for that user here)", keyFingerprint(s.key)))
		return true
	}
	return false
}

func (h *hub) request(s *session, m wire.Message) {
	switch m := m.(type) {
	case *wire.Fleet:
		agents, err := h.list(m.Hosts, m.Labels)
		if err != nil {
			s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "%v", err))
			return
		}
		s.send(&wire.FleetList{Channel: m.Channel, Agents: agents, Metrics: h.cfg.Metrics})
	case *wire.Tunnel:
		h.openTunnel(s, m)
	case *wire.Publish:
		h.publish(s, m)
	case *wire.FleetJob:
		h.recordFleetJob(s, m)
	case *wire.FleetJobs:
		h.listFleetJobs(s, m)
	case *wire.BcastTree:
		h.tree(s, m)
	default:
		id, _ := wire.ChannelOf(m)
		s.sendErr(wire.Errorf(id, wire.CodeBadRequest, "%s is not supported by this hub yet", m.ID()))
	}
}

// list selects agents (docs/PROTOCOL.md §13.3), sorted by name.
func (h *hub) list(hosts []string, labels map[string]string) ([]map[string]string, error) {
	for _, p := range hosts {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("bad host pattern %q", p)
		}
	}
	h.mu.Lock()
	var sel []*hubAgent
	for _, a := range h.agents {
		if selects(a.name, a.labels, hosts, labels) {
			sel = append(sel, a)
		}
	}
	sort.Slice(sel, func(i, j int) bool { return sel[i].name < sel[j].name })
	out := make([]map[string]string, 0, len(sel))
	for _, a := range sel {
		out = append(out, a.info())
	}
	h.mu.Unlock()
	return out, nil
}

// selects reports whether an agent matches a selection: its name matches
// one of hosts (or hosts is empty) and it has every label.
func selects(name string, have map[string]string, hosts []string, labels map[string]string) bool {
	for k, v := range labels {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	if len(hosts) == 0 {
		return true
	}
	for _, p := range hosts {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// info is the agent's FLEET_LIST dictionary; the hub's lock is held.
func (a *hubAgent) info() map[string]string {
	state := "up"
	if a.lost || a.link == nil {
		state = "lost"
	}
	var key curve.PublicKey
	copy(key[:], a.key)
	labels := make([]string, 0, len(a.labels))
	for k, v := range a.labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	m := map[string]string{
		"name": a.name, "key": key.String(), "fingerprint": key.Fingerprint(),
		"address": a.address, "labels": strings.Join(labels, ","), "software": a.software,
		"joined": a.joined.UTC().Format(time.RFC3339), "last_seen": a.lastSeen.UTC().Format(time.RFC3339),
		"state": state, "metrics": a.metrics, "relay": a.publish, "relay_control": a.control,
	}
	if !a.treeAt.IsZero() {
		m["parent"], m["tree_at"] = a.parent, a.treeAt.UTC().Format(time.RFC3339)
	}
	return m
}

// openTunnel relays a client's TUNNEL to the agent (docs/PROTOCOL.md §13.4).
func (h *hub) openTunnel(s *session, m *wire.Tunnel) {
	fail := func(result string, e *wire.Error) {
		h.m.TunnelsOpened.WithLabelValues(result).Inc()
		s.sendErr(e)
	}
	if m.Channel == 0 || s.channel(m.Channel) != nil || h.channelInUse(s, m.Channel) {
		fail("bad_request", wire.Errorf(m.Channel, wire.CodeConflict, "channel %d is in use", m.Channel))
		return
	}
	h.mu.Lock()
	mine := h.clients[s]
	switch a := h.agents[m.Agent]; {
	case mine[m.Channel] != nil:
		h.mu.Unlock()
		fail("bad_request", wire.Errorf(m.Channel, wire.CodeConflict, "channel %d is in use", m.Channel))
	case len(mine) >= h.maxTunnels():
		h.mu.Unlock()
		fail("limit", wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d tunnels", h.maxTunnels()))
	case a == nil:
		h.mu.Unlock()
		fail("unknown_agent", wire.Errorf(m.Channel, wire.CodeNotFound, "no agent %s", m.Agent))
	case a.link == nil || a.lost:
		h.mu.Unlock()
		fail("unknown_agent", wire.Errorf(m.Channel, wire.CodeNotFound, "agent %s is lost (last seen %s)", m.Agent, a.lastSeen.UTC().Format(time.RFC3339)))
	case m.Window > maxTunnelWindow:
		h.mu.Unlock()
		fail("bad_request", wire.Errorf(m.Channel, wire.CodeTooLarge, "tunnel window %d over %d", m.Window, maxTunnelWindow))
	default:
		ch := a.nextCh
		for {
			ch = (ch + 1) &^ pubChannelBit // the agent's own channels have it
			if ch != 0 && a.relays[ch] == nil {
				break
			}
		}
		a.nextCh = ch
		r := &relay{sess: s, clientCh: m.Channel, agent: a, link: a.link, agentCh: ch,
			downWin: uint64(m.Window), downLimit: uint64(m.Window)}
		a.relays[ch] = r
		if mine == nil {
			mine = make(map[uint32]*relay)
			h.clients[s] = mine
		}
		mine[m.Channel] = r
		h.tunnels++
		h.m.Tunnels.Set(float64(h.tunnels))
		link := a.link
		h.mu.Unlock()
		h.b.log.Debug("tunnel", "agent", a.name, "key", keyFingerprint(s.key), "port", int(m.Port))
		h.b.reply(link.id, &wire.Tunnel{Channel: ch, Agent: keyFingerprint(s.key), Port: m.Port, Window: m.Window})
	}
}

// relayFromClient forwards a tunnel's DATA, ACK or FIN to the agent with
// the channel rewritten; false if the channel is not a tunnel.
func (h *hub) relayFromClient(s *session, m wire.Message) bool {
	id, _ := wire.ChannelOf(m)
	h.mu.Lock()
	r := h.clients[s][id]
	if r == nil {
		h.mu.Unlock()
		return false
	}
	link := r.link
	switch m := m.(type) {
	case *wire.Data:
		if m.Stream != wire.TunnelUp || m.Offset+uint64(len(m.Bytes)) > r.upLimit {
			out := h.violationLocked(r, "the client sent past the agent's credit")
			h.mu.Unlock()
			h.flush(out)
			return true
		}
		r.upSent = max(r.upSent, m.Offset+uint64(len(m.Bytes)))
		h.m.RelayedBytes.WithLabelValues("to_agent").Add(float64(len(m.Bytes)))
		if h.cfg.OnRelay != nil {
			h.cfg.OnRelay(true, m.Bytes)
		}
		m.Channel = r.agentCh
	case *wire.Ack:
		if m.Stream != wire.TunnelDown {
			h.mu.Unlock()
			return true
		}
		m.Limit = min(m.Limit, min(m.Offset, r.downSent)+r.downWin)
		r.downLimit = max(r.downLimit, m.Limit)
		m.Channel = r.agentCh
	case *wire.Fin:
		h.dropLocked(r)
		m.Channel = r.agentCh
	}
	h.mu.Unlock()
	h.b.reply(link.id, m)
	return true
}

// fleetOnlyAccount is the account of a fleet-only session: it runs
// nothing on the hub (hub.session refuses every such request; if it ever
// did, it would be as nobody), and its name, "fleet:" and the key's
// fingerprint, keeps such sessions in a session-limit bucket of their
// own per key, not in that of the user they named.
func fleetOnlyAccount(key []byte) *Account {
	return &Account{Name: "fleet:" + keyFingerprint(key), UID: 65534, GID: 65534, Home: "/nonexistent", Shell: "/usr/sbin/nologin"}
}
