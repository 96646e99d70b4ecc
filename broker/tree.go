package broker

import (
	"net"
	"strings"
	"time"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
)

// Relay trees (docs/PROTOCOL.md §14.11). A ZeroMQ PUB over TCP sends one
// copy per subscriber, so a hub's egress grows with its agents. Asked
// with BCAST_TREE, the hub arranges the agents of a broadcast in a tree
// of the given fanout: it feeds at most K agents itself, and each agent
// that can relay (it joined with an XPUB on TCP and is up) feeds at most
// K more from its own XPUB. The hub only places agents; the client tells
// each one its parent and children in BCAST_GO, end to end, and the
// content stays sealed with a key the relays hold but the hub never sees.
// The hub remembers each agent's place for zp fleet --tree.

// relayAddr resolves JOIN's relay (":PORT" means the link's IP) to
// "tcp://HOST:PORT"; "" if the agent relays nothing.
func relayAddr(r, remote string) string {
	if r == "" || strings.Contains(r, "://") {
		return "" // ipc: not reachable from another host
	}
	if _, _, err := net.SplitHostPort(remote); err != nil {
		return "" // an ipc:// link: the agent is on this machine, its peers maybe not
	}
	a := metricsAddr(r, remote)
	if a == "" {
		return ""
	}
	// An XPUB bound to loopback serves only agents on its own machine.
	host, _, _ := net.SplitHostPort(a)
	rhost, _, _ := net.SplitHostPort(remote)
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		if rip := net.ParseIP(rhost); rip == nil || !rip.IsLoopback() {
			return ""
		}
	}
	return "tcp://" + a
}

// tree answers BCAST_TREE.
func (h *hub) tree(s *session, m *wire.BcastTree) {
	if s.version < 3 {
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "BCAST_TREE needs protocol version 3"))
		return
	}
	if len(m.Agents) == 0 {
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "BCAST_TREE names no agent"))
		return
	}
	h.mu.Lock()
	agents := make([]*hubAgent, 0, len(m.Agents))
	seen := make(map[string]bool, len(m.Agents))
	for _, name := range m.Agents {
		a := h.agents[name]
		if a == nil {
			h.mu.Unlock()
			s.sendErr(wire.Errorf(m.Channel, wire.CodeNotFound, "no agent %s", name))
			return
		}
		if seen[name] {
			h.mu.Unlock()
			s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "agent %s named twice", name))
			return
		}
		seen[name] = true
		agents = append(agents, a)
	}
	parents := placeTree(agents, int(m.Fanout), func(a *hubAgent) bool { return a.publish != "" && a.link != nil && !a.lost })
	now := time.Now()
	nodes := make([]map[string]string, len(agents))
	for i, a := range agents {
		p := ""
		if parents[i] != nil {
			p = parents[i].name
		}
		a.parent, a.treeAt = p, now
		var key curve.PublicKey
		copy(key[:], a.key)
		nodes[i] = map[string]string{"name": a.name, "key": key.String(), "parent": p, "relay": a.publish, "control": a.control}
	}
	h.mu.Unlock()
	h.b.log.Info("relay tree", "agents", len(agents), "fanout", m.Fanout)
	s.send(&wire.BcastTreeOK{Channel: m.Channel, Nodes: nodes})
}

// placeTree gives each agent its parent (nil: the hub) in a tree where no
// node feeds more than fanout children, breadth first: agents that can
// relay fill the upper levels, in the order given, and the others are
// leaves. With no relay left to take it, an agent hangs from the hub.
func placeTree[T comparable](agents []T, fanout int, canRelay func(T) bool) []T {
	var zero T
	order := make([]int, 0, len(agents))
	for i, a := range agents {
		if canRelay(a) {
			order = append(order, i)
		}
	}
	for i, a := range agents {
		if !canRelay(a) {
			order = append(order, i)
		}
	}
	type slot struct {
		node T
		free int
	}
	queue := []*slot{{zero, fanout}}
	parents := make([]T, len(agents))
	for _, i := range order {
		for len(queue) > 0 && queue[0].free == 0 {
			queue = queue[1:]
		}
		if len(queue) == 0 {
			parents[i] = zero
			continue
		}
		queue[0].free--
		parents[i] = queue[0].node
		if canRelay(agents[i]) {
			queue = append(queue, &slot{agents[i], fanout})
		}
	}
	return parents
}
