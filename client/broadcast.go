package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// A broadcast (docs/PROTOCOL.md §14) sends a tree to many agents of a hub
// once: the client publishes the tree's manifest to the hub, asks each
// agent (through its tunnel) which files it lacks, publishes the content
// of the files any agent lacks, and each agent writes the tree and proves
// it with the tree digest.

// Tree is a broadcast's manifest, built from local sources.
type Tree struct {
	m *publisher.Manifest
}

// TreeOptions says how to build a Tree.
type TreeOptions struct {
	Recursive bool // include directories (else skipped, with a warning)
	// Warn reports a source that was skipped (a notice) or could not be
	// read (failed): it is left out of the tree.
	Warn func(msg string, failed bool)
}

// BuildTree walks sources (rsync's naming: "dir" is sent as dir/…, "dir/"
// as its contents) and reads every file once for its SHA-256.
func BuildTree(sources []string, opts TreeOptions) (*Tree, error) {
	warn := opts.Warn
	if warn == nil {
		warn = func(string, bool) {}
	}
	// A file is named by its base name, even alone: each agent decides
	// whether it becomes DEST itself (BroadcastRequest.Single).
	m, err := publisher.BuildManifest(sources, opts.Recursive, false, warn)
	if err != nil {
		return nil, err
	}
	return &Tree{m: m}, nil
}

// Digest is the tree digest, in hex: what every agent proves it wrote.
func (t *Tree) Digest() string { return hex.EncodeToString(t.m.Digest[:]) }

// Entries is the number of entries (files, directories, symlinks).
func (t *Tree) Entries() int { return len(t.m.Entries) }

// Bytes is the content octets of the tree's files.
func (t *Tree) Bytes() uint64 { return t.m.Bytes }

// ManifestBytes is the size of the encoded manifest.
func (t *Tree) ManifestBytes() int { return len(t.m.Encoded) }

// Need is the set of the tree's files one or more agents lack and, when
// every one of those agents said which chunks it lacks (protocol 5), of
// the chunks of the files that list chunks.
type Need struct {
	bits   []byte
	n      int
	chunks []byte // a chunk map (docs/PROTOCOL.md §14.12); nil: whole files
}

// NewNeed returns an empty set for t.
func (t *Tree) NewNeed() *Need {
	n := &Need{bits: make([]byte, wire.BitmapLen(len(t.m.Entries))), n: len(t.m.Entries)}
	if len(t.m.Chunks) > 0 {
		n.chunks = make([]byte, wire.ChunkMapLen(t.m.Entries, wire.BcastChunk))
	}
	return n
}

// Add adds another set to n. A set of whole files makes n one.
func (n *Need) Add(o *Need) {
	for i := range n.bits {
		if i < len(o.bits) {
			n.bits[i] |= o.bits[i]
		}
	}
	if o.chunks == nil || len(o.chunks) != len(n.chunks) {
		n.chunks = nil
		return
	}
	for i := range n.chunks {
		n.chunks[i] |= o.chunks[i]
	}
}

// Covers reports whether n holds every file (and chunk) of o.
func (n *Need) Covers(o *Need) bool {
	for i := range o.bits {
		if i >= len(n.bits) || o.bits[i]&^n.bits[i] != 0 {
			return false
		}
	}
	if n.chunks == nil {
		return true
	}
	if len(o.chunks) != len(n.chunks) {
		return false
	}
	for i := range o.chunks {
		if o.chunks[i]&^n.chunks[i] != 0 {
			return false
		}
	}
	return true
}

// NeedBytes is the content octets of the files in n: what its agents
// write.
func (t *Tree) NeedBytes(n *Need) uint64 { return wire.BitmapBytes(t.m.Entries, n.bits) }

// ContentBytes is the octets of the content stream of n: its files, or
// of those that list chunks the chunks in n.
func (t *Tree) ContentBytes(n *Need) uint64 {
	return wire.StreamBytes(t.m.Entries, n.bits, t.slices(n), wire.BcastChunk)
}

// slices splits n's chunk map by entry (nil: whole files).
func (t *Tree) slices(n *Need) [][]byte {
	if n.chunks == nil {
		return nil
	}
	s, err := wire.SplitChunkMap(n.chunks, t.m.Entries, wire.BcastChunk)
	if err != nil {
		panic("bug: a chunk map checked on arrival does not split: " + err.Error())
	}
	return s
}

// PublishManifest publishes t's manifest to the hub for the agents named.
func (f *Fleet) PublishManifest(ctx context.Context, agents []string, t *Tree) (*Publication, error) {
	return f.Publish(ctx, agents, bytes.NewReader(t.m.Encoded))
}

// PublishChunks publishes t's chunk index (docs/PROTOCOL.md §14.12) to
// the hub for the agents named: agents in a version 5 session then take
// the chunks of a changed file they already hold from their old copy.
// It returns nil, nil when no file of t is more than one chunk.
func (f *Fleet) PublishChunks(ctx context.Context, agents []string, t *Tree) (*Publication, error) {
	if len(t.m.Chunks) == 0 {
		return nil, nil
	}
	return f.Publish(ctx, agents, bytes.NewReader(t.m.Chunks))
}

// PublishContent publishes the content of the files in n for the agents
// named, in full records: agents in a version 4 session skip the records
// of files they hold. changed, if set, reports a file that changed since the tree was
// built (the agents refuse it; the rest of the tree is unaffected). The
// content is sent once start is closed (nil: at once): the agents, told
// the publication's topic, subscribe to it first, so that it reaches
// them live and not by repair.
func (f *Fleet) PublishContent(ctx context.Context, agents []string, t *Tree, n *Need, changed func(path string), start <-chan struct{}) (*Publication, error) {
	return f.publish(ctx, agents, &gatedReader{r: t.m.Content(n.bits, t.slices(n), changed), start: start}, true)
}

// gatedReader reads nothing until start is closed.
type gatedReader struct {
	r     io.Reader
	start <-chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.start != nil {
		<-g.start
		g.start = nil
	}
	return g.r.Read(p)
}

// BroadcastRequest is what one agent is asked to apply.
type BroadcastRequest struct {
	Tree     *Tree
	Manifest *Publication // from PublishManifest
	// Chunks, if set, is the chunk index (from PublishChunks): an agent
	// in a version 5 session is told of it.
	Chunks    *Publication
	Dest      string // on the agent, relative to the user's home
	Recursive bool
	Preserve  bool // whole modes, and owners where the agent may set them
	// Single: the tree is one file, which becomes Dest itself unless Dest
	// is a directory or ends in "/" on the agent (as zpc's single-file
	// upload).
	Single bool
}

// BroadcastStats are an agent's counts.
type BroadcastStats struct {
	Written  uint64 // content octets written to files
	Live     uint64 // octets taken from the hub's publications as they were published
	Repaired uint64 // octets the agent fetched from the hub because it missed them
	Deduped  uint64 // octets of files it already held
	Files    int    // entries in place
	Failed   int    // entries that failed
	// Relay trees: octets received from the parent relay, octets
	// republished to the children, and whether the agent gave its relay
	// up and went on from the hub.
	FromRelay  uint64
	Relayed    uint64
	Reparented bool
}

func statsFrom(s wire.BcastStats) BroadcastStats {
	return BroadcastStats{Written: s.Written, Live: s.Live, Repaired: s.Repaired, Deduped: s.Deduped, Files: int(s.Files), Failed: int(s.Failed),
		FromRelay: s.FromRelay, Relayed: s.Relayed, Reparented: s.Reparented != 0}
}

// TreeNode is an agent's place in a relay tree (docs/PROTOCOL.md §14.11).
type TreeNode struct {
	Name   string
	Key    string // the agent's public key, Z85
	Parent string // "" for the hub
	Relay  string // where the agent relays ("tcp://HOST:PORT"), or ""
	// Control is where the agent answers its children's PUB_FETCH as a
	// relay ("tcp://HOST:PORT"), or "".
	Control string
}

// Tree asks the hub to arrange agents in a relay tree in which no node
// (the hub included) feeds more than fanout others; the nodes come in the
// order of agents.
func (f *Fleet) Tree(ctx context.Context, fanout int, agents []string) ([]TreeNode, error) {
	if fanout < 1 || fanout > wire.MaxFanout {
		return nil, fmt.Errorf("fanout %d: 1 to %d", fanout, wire.MaxFanout)
	}
	m, err := f.s.request(ctx, func(ch uint32) wire.Message {
		return &wire.BcastTree{Channel: ch, Fanout: uint8(fanout), Agents: agents}
	})
	if err != nil {
		return nil, public(err)
	}
	t, ok := m.(*wire.BcastTreeOK)
	if !ok {
		return nil, fmt.Errorf("unexpected %s", m.ID())
	}
	if len(t.Nodes) != len(agents) {
		return nil, &ProtocolError{fmt.Errorf("BCAST_TREE_OK of %d nodes for %d agents", len(t.Nodes), len(agents))}
	}
	out := make([]TreeNode, len(t.Nodes))
	for i, d := range t.Nodes {
		out[i] = TreeNode{Name: d["name"], Key: d["key"], Parent: d["parent"], Relay: d["relay"], Control: d["control"]}
		if out[i].Name != agents[i] {
			return nil, &ProtocolError{fmt.Errorf("BCAST_TREE_OK names %q where %q was asked", out[i].Name, agents[i])}
		}
	}
	return out, nil
}

// Relaying is an agent's part in a relay tree: it takes the content live
// from Parent's XPUB ("tcp://HOST:PORT", with the CURVE key ParentKey, in
// Z85) instead of the hub's, and republishes it to the agents whose keys
// (Z85) are Children.
type Relaying struct {
	Parent, ParentKey string
	ParentControl     string // the parent's ROUTER, for repairs; "": the hub's
	Children          []string
}

// AgentBroadcast is a broadcast on one agent's session.
type AgentBroadcast struct {
	s     *Session
	id    uint32
	inbox chan wire.Message
	// Relaying, if set before Go, gives the agent its place in a relay
	// tree.
	Relaying *Relaying
	// Need is what the agent lacks; Have the octets of files it holds.
	Need *Need
	Have uint64
	// chunked: the agent reads chunk lists (BCAST with flag chunks).
	chunked bool
}

// ErrNoChunks: the broadcast's content holds chunks of files, which the
// agent's session cannot read (it reconnected to an older zpd).
var ErrNoChunks = errors.New("the agent's zpd does not speak protocol version 5 (chunk lists), which this broadcast's content needs: broadcast again")

// ErrNoBroadcast: the agent's zpd predates broadcasts (protocol 3).
var ErrNoBroadcast = errors.New("the agent's zpd does not speak protocol version 3 (no broadcast): upgrade it")

// StartBroadcast asks the session's agent to read the tree's manifest and
// returns once it said what it lacks. Close the AgentBroadcast (or call
// Go) afterwards.
func (s *Session) StartBroadcast(ctx context.Context, req BroadcastRequest) (_ *AgentBroadcast, err error) {
	defer func() { err = public(err) }()
	if s.info.Version < 3 {
		return nil, ErrNoBroadcast
	}
	var flags uint8
	if req.Recursive {
		flags |= wire.XferRecursive
	}
	if req.Preserve {
		flags |= wire.XferPreserve
	}
	if req.Single {
		flags |= wire.XferSingle
	}
	chunks := req.Chunks != nil && s.info.Version >= 5
	if chunks {
		flags |= wire.XferChunks
	}
	sh := req.Manifest.Shared
	id, inbox := s.openChannel()
	b := &AgentBroadcast{s: s, id: id, inbox: inbox, chunked: chunks}
	m := &wire.Bcast{Channel: id, Flags: flags, Dest: req.Dest, Topic: sh.Topic, Key: append([]byte(nil), sh.Key[:]...),
		Record: uint32(sh.Record), Size: uint64(len(req.Tree.m.Encoded)), Count: uint32(len(req.Tree.m.Entries)),
		Digest: append([]byte(nil), req.Tree.m.Digest[:]...)}
	if err := s.send(m); err != nil {
		s.closeChannel(id)
		return nil, err
	}
	if chunks {
		ch := req.Chunks.Shared
		d := sha256.Sum256(req.Tree.m.Chunks)
		if err := s.send(&wire.BcastChunks{Channel: id, Topic: ch.Topic, Key: append([]byte(nil), ch.Key[:]...),
			Record: uint32(ch.Record), Size: uint64(len(req.Tree.m.Chunks)), Chunk: wire.BcastChunk, Digest: d[:]}); err != nil {
			b.Close()
			return nil, err
		}
	}
	var held []byte // BCAST_NEED_CHUNKS, if it came
	for {
		select {
		case m := <-inbox:
			switch m := m.(type) {
			case *wire.BcastNeedChunks:
				if want := wire.ChunkMapLen(req.Tree.m.Entries, wire.BcastChunk); !chunks || held != nil || len(m.Chunks) != want {
					b.Close()
					return nil, &ProtocolError{fmt.Errorf("unexpected BCAST_NEED_CHUNKS (%d octets)", len(m.Chunks))}
				}
				if _, err := wire.SplitChunkMap(m.Chunks, req.Tree.m.Entries, wire.BcastChunk); err != nil {
					b.Close()
					return nil, &ProtocolError{fmt.Errorf("BCAST_NEED_CHUNKS: %w", err)}
				}
				held = m.Chunks
			case *wire.BcastNeed:
				if len(m.Need) != wire.BitmapLen(len(req.Tree.m.Entries)) {
					b.Close()
					return nil, &ProtocolError{fmt.Errorf("BCAST_NEED of %d octets for %d entries", len(m.Need), len(req.Tree.m.Entries))}
				}
				b.Need, b.Have = &Need{bits: m.Need, n: len(req.Tree.m.Entries), chunks: held}, m.Have
				return b, nil
			case *wire.Error:
				s.closeChannel(id)
				return nil, m
			default:
				b.Close()
				return nil, &ProtocolError{fmt.Errorf("agent answered BCAST with %s", m.ID())}
			}
		case <-s.done:
			s.closeChannel(id)
			return nil, s.err
		case <-ctx.Done():
			b.Close()
			return nil, ctx.Err()
		}
	}
}

// BroadcastResult is how a broadcast ended on one agent: Digest (hex) is
// the tree digest the agent proved it wrote, "" when it failed; Failures
// names entries that failed (at most 100).
type BroadcastResult struct {
	Digest   string
	Stats    BroadcastStats
	Failures []string
}

// Go names the content publication (holding the files in content, n) and
// waits until the agent applied the tree. progress, if set, gets the
// agent's counts as they come. A failed broadcast returns the result with
// an *Error.
func (b *AgentBroadcast) Go(ctx context.Context, content *Publication, n *Need, progress func(BroadcastStats)) (_ *BroadcastResult, err error) {
	defer func() { err = public(err) }()
	defer b.Close()
	g := &wire.BcastGo{Channel: b.id, Content: n.bits, Record: 1, Key: make([]byte, 32)}
	if content != nil {
		sh := content.Shared
		g.Topic, g.Key, g.Record = sh.Topic, append([]byte(nil), sh.Key[:]...), uint32(sh.Record)
		if r := b.Relaying; r != nil {
			if r.Parent != "" {
				k, err := curve.ParsePublicKey(r.ParentKey)
				if err != nil {
					return nil, fmt.Errorf("relay tree: the parent's key: %w", err)
				}
				g.Parent, g.ParentKey, g.ParentControl = r.Parent, k[:], r.ParentControl
			}
			for _, c := range r.Children {
				k, err := curve.ParsePublicKey(c)
				if err != nil {
					return nil, fmt.Errorf("relay tree: a child's key: %w", err)
				}
				g.Children = append(g.Children, k[:]...)
			}
		}
	}
	if n.chunks != nil {
		// The stream holds some chunks only: an agent that cannot be told
		// which could not read it.
		if !b.chunked {
			return nil, ErrNoChunks
		}
		if err := b.s.send(&wire.BcastGoChunks{Channel: b.id, Chunks: n.chunks}); err != nil {
			return nil, err
		}
	}
	if err := b.s.send(g); err != nil {
		return nil, err
	}
	for {
		select {
		case m := <-b.inbox:
			switch m := m.(type) {
			case *wire.BcastProgress:
				if progress != nil {
					progress(statsFrom(m.Stats))
				}
			case *wire.BcastDone:
				r := &BroadcastResult{Stats: statsFrom(m.Stats), Failures: m.Failures}
				if m.Code != 0 {
					return r, &wire.Error{Channel: b.id, Code: wire.Code(m.Code), Reason: m.Reason}
				}
				r.Digest = hex.EncodeToString(m.Digest)
				return r, nil
			case *wire.Error:
				return nil, m
			}
		case <-b.s.done:
			return nil, b.s.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close abandons the broadcast on the agent (FIN) if it has not ended.
func (b *AgentBroadcast) Close() {
	if b.inbox == nil {
		return
	}
	_ = b.s.send(&wire.Fin{Channel: b.id})
	b.s.closeChannel(b.id)
	b.inbox = nil
}
