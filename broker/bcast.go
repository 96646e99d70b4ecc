package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/subscriber"
)

// bcastChan is a broadcast on an agent (docs/PROTOCOL.md §14): a session
// of a client that reached this agent through its hub asks it to apply a
// tree the client published once to the hub. The agent reads the
// manifest, says which files it lacks (BCAST_NEED), and once the client
// names the content's publication (BCAST_GO) writes the tree through a
// Receiver, as an upload, and reports the tree digest (BCAST_DONE).
type bcastChan struct {
	s      *session
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	gos    chan *wire.BcastGo
	gone   atomic.Bool // a BCAST_GO came
	// chunks gets the BCAST_CHUNKS that follows a BCAST with XferChunks
	// (nil without); chunked says it came.
	chunks  chan *wire.BcastChunks
	chunked atomic.Bool
	// goChunks gets the BCAST_GO_CHUNKS that may come before BCAST_GO on
	// such a channel (nil without the flag).
	goChunks  chan *wire.BcastGoChunks
	goChunked atomic.Bool
	store     *relayStore // a relay's: what it republished, for its children's repairs
	// fetchOnly: this agent needs little of the content (a quarter or
	// less), so it fetches that instead of taking all of it live.
	fetchOnly bool
	// copies: entries written from another file of the tree this agent
	// holds (the same SHA-256), by fid (subscriber.Needs).
	copies map[uint32]string
	// bases: entries this agent holds an older version of, with some of
	// the new content's chunks (subscriber.Needs), by fid.
	bases map[uint32]*subscriber.Basis
}

// fetchOnlyShare: an agent that needs at most 1/fetchOnlyShare of a
// broadcast's content (full records) fetches what it needs instead of
// following the content live: the hub then sends it its need, not the
// whole union.
const fetchOnlyShare = 4

// bcastProgress is how often an agent reports a broadcast's progress.
const bcastProgress = 250 * time.Millisecond

func (c *bcastChan) deliver(m wire.Message) *wire.Error {
	if ch, ok := m.(*wire.BcastChunks); ok {
		if c.chunks == nil || c.chunked.Swap(true) {
			return wire.Errorf(c.id, wire.CodeBadRequest, "BCAST_CHUNKS without a BCAST that announced it")
		}
		c.chunks <- ch // buffered for one: never blocks
		return nil
	}
	if ch, ok := m.(*wire.BcastGoChunks); ok {
		if c.goChunks == nil || c.gone.Load() || c.goChunked.Swap(true) {
			return wire.Errorf(c.id, wire.CodeBadRequest, "BCAST_GO_CHUNKS but once before BCAST_GO on a channel whose BCAST announced chunk lists")
		}
		c.goChunks <- ch // buffered for one: never blocks
		return nil
	}
	g, ok := m.(*wire.BcastGo)
	if !ok {
		return wire.Errorf(c.id, wire.CodeBadRequest, "%s on a broadcast channel", m.ID())
	}
	if c.gone.Swap(true) {
		return wire.Errorf(c.id, wire.CodeBadRequest, "a second BCAST_GO")
	}
	c.gos <- g // buffered for one: never blocks
	return nil
}

func (c *bcastChan) stop()   { c.cancel() }
func (c *bcastChan) resend() {}

// detached ends the broadcast when its session loses its connection, as
// for transfers: the client starts it again, and files already in place
// are not sent again.
func (c *bcastChan) detached() { c.s.release(c.id, c) }

// bcast starts a broadcast channel. Called by the receive loop.
func (s *session) bcast(m *wire.Bcast) {
	switch {
	case s.version < 3:
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "BCAST needs protocol version 3"))
		return
	case m.Flags&wire.XferChunks != 0 && s.version < 5:
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "BCAST with chunk lists needs protocol version 5"))
		return
	case s.b.agent == nil:
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "this zpd is not a fleet agent (zpd --join)"))
		return
	}
	ctx, cancel := context.WithCancel(s.b.ctx)
	c := &bcastChan{s: s, id: m.Channel, ctx: ctx, cancel: cancel, gos: make(chan *wire.BcastGo, 1)}
	if m.Flags&wire.XferChunks != 0 {
		c.chunks = make(chan *wire.BcastChunks, 1)
		c.goChunks = make(chan *wire.BcastGoChunks, 1)
	}
	if !s.addChannel(m.Channel, c) {
		cancel()
		return
	}
	s.b.spawn(func() { c.run(m) })
}

// run applies the broadcast and ends the channel with BCAST_DONE or ERROR.
func (c *bcastChan) run(m *wire.Bcast) {
	defer c.cancel()
	s := c.s
	fail := func(e *wire.Error) {
		if c.ctx.Err() == nil {
			s.b.log.Warn("broadcast failed", "session", s.id, "channel", c.id, "code", int(e.Code), "err", e.Reason)
			s.send(e)
		}
		s.release(c.id, c)
	}
	entries, e := c.manifest(m)
	if e != nil {
		fail(e)
		return
	}
	single := m.Flags&wire.XferSingle != 0
	if single && (len(entries) != 1 || entries[0].Kind != wire.KindFile) {
		fail(wire.Errorf(c.id, wire.CodeBadRequest, "the single flag with a manifest of %d entries, not one file", len(entries)))
		return
	}
	root, mode, asName, err := s.openDest(m.Dest, m.Flags)
	if err != nil {
		fail(wire.Errorf(c.id, transferCode(err), "%s: %v", m.Dest, unwrapPath(err)))
		return
	}
	defer root.Close()
	if single && mode == wire.TargetAs {
		entries[0].Path = "" // the one file becomes DEST itself; else it goes into DEST by its name
	}
	var idx *subscriber.Index
	if c.chunks != nil {
		lists, chunk, e := c.chunkIndex(entries)
		if e != nil {
			fail(e)
			return
		}
		idx = &subscriber.Index{Lists: lists, Chunk: chunk}
	}
	n, err := subscriber.Needs(c.ctx, root, asName, entries, idx, s.acct.fsThread())
	if err != nil {
		s.release(c.id, c)
		return
	}
	need, have, held := n.Need, n.Have, n.Held
	c.copies, c.bases = n.Copies, n.Bases
	if idx != nil {
		s.send(&wire.BcastNeedChunks{Channel: c.id, Chunks: n.ChunkMap(entries, idx.Chunk)})
	}
	s.send(&wire.BcastNeed{Channel: c.id, Need: need, Have: have})
	var g *wire.BcastGo
	select {
	case g = <-c.gos:
	case <-c.ctx.Done():
		return
	}
	// The stream holds whole files, or of those that list chunks the
	// chunks BCAST_GO_CHUNKS sets, if one came first.
	var slices [][]byte
	var chunk uint64
	if idx != nil {
		chunk = uint64(idx.Chunk)
		select {
		case gc := <-c.goChunks:
			if slices, err = wire.SplitChunkMap(gc.Chunks, entries, idx.Chunk); err != nil {
				fail(wire.Errorf(c.id, wire.CodeBadRequest, "BCAST_GO_CHUNKS: %v", err))
				return
			}
		default:
		}
	}
	var st bcastStats
	st.deduped.Store(have)
	var failures []string
	var fmu sync.Mutex
	rcfg := subscriber.ReceiverConfig{
		Root: root, AsName: asName, Flags: m.Flags,
		Chown:  m.Flags&wire.XferPreserve != 0 && (s.acct.UID == 0 && os.Geteuid() == 0),
		Umask:  uploadUmask,
		Thread: s.acct.fsThread(),
		OnChunk: func(n int) {
			st.written.Add(uint64(n))
			s.b.m.TransferBytes.WithLabelValues("received").Add(float64(n))
		},
		OnFile: func(_ string, kind uint8, err error, _ bool) {
			if err != nil {
				st.failed.Add(1)
			} else {
				st.files.Add(1)
			}
		},
		OnNotice: func(name, notice string) {
			s.b.log.Warn("partial file not resumed", "session", s.id, "user", s.acct.Name, "dest", m.Dest, "path", name, "reason", notice)
		},
	}
	c.fetchOnly = s.version >= 4 && g.Parent == "" && len(g.Children) == 0 &&
		fetchOnlyShare*(wire.BitmapBytes(entries, need)-held) <= wire.StreamBytes(entries, g.Content, slices, chunk)
	if g.Topic != "" && !c.fetchOnly {
		if g.Parent != "" {
			// A relay tree: live from the parent's XPUB, not the hub's.
			defer c.s.b.agent.fromRelay(c.ctx, g.Topic, g.Parent, g.ParentControl, g.ParentKey, &st.fromRelay, &st.reparented)()
		}
		// Subscribed before the client publishes the content (it waits
		// for this first BCAST_PROGRESS): it arrives live, not by repair.
		defer c.s.b.agent.follow(g.Topic)()
		if len(g.Children) > 0 {
			// Admitted before that BCAST_PROGRESS too: the client tells
			// the children where to subscribe once it came.
			st, end := c.s.b.admitChildren(g.Children, g.Topic)
			defer end()
			c.store = st
		}
	}
	s.send(&wire.BcastProgress{Channel: c.id, Stats: st.wire()})
	stopProgress := c.progress(&st)
	stats, err := c.apply(g, entries, slices, chunk, rcfg, &st, func(path string, err error) {
		fmu.Lock()
		if len(failures) < wire.MaxBcastFailures {
			failures = append(failures, fmt.Sprintf("%s: %v", path, err))
		}
		fmu.Unlock()
	})
	stopProgress()
	if c.ctx.Err() != nil {
		return // the client went away, or the session ended
	}
	done := &wire.BcastDone{Channel: c.id, Stats: st.wire()}
	var we *wire.Error
	switch {
	case errors.As(err, &we):
		done.Code, done.Reason = uint16(we.Code), we.Reason
	case err != nil:
		done.Code, done.Reason = uint16(wire.CodeConflict), err.Error()
	case stats.Failed > 0:
		done.Code, done.Reason = uint16(wire.CodeConflict), fmt.Sprintf("%d of %d entries failed", stats.Failed, len(entries))
	default:
		done.Digest = m.Digest // every entry is in place, as the manifest says
	}
	fmu.Lock()
	done.Failures = failures
	fmu.Unlock()
	s.b.log.Info("broadcast applied", "session", s.id, "user", s.acct.Name, "dest", m.Dest,
		"entries", len(entries), "written", stats.Bytes, "failed", stats.Failed, "code", done.Code)
	s.send(done)
	s.release(c.id, c)
}

// manifest reads and checks the broadcast's manifest.
func (c *bcastChan) manifest(m *wire.Bcast) ([]*wire.File, *wire.Error) {
	b, e := c.readWhole("manifest", m.Topic, m.Key, m.Record, m.Size, m.Digest, "the tree digest announced")
	if e != nil {
		return nil, e
	}
	entries, err := wire.DecodeManifest(b, m.Count)
	if err != nil {
		return nil, wire.Errorf(c.id, wire.CodeBadRequest, "manifest: %v", err)
	}
	return entries, nil
}

// chunkIndex waits for the BCAST_CHUNKS its BCAST announced, then reads
// and checks the chunk index it names: each entry's chunk digests, by
// position (wire.DecodeChunkIndex), and the chunk size.
func (c *bcastChan) chunkIndex(entries []*wire.File) ([][]byte, uint32, *wire.Error) {
	var m *wire.BcastChunks
	select {
	case m = <-c.chunks:
	case <-c.ctx.Done():
		return nil, 0, wire.Errorf(c.id, wire.CodeGone, "the broadcast ended") // not sent: the channel is gone
	}
	b, e := c.readWhole("chunk index", m.Topic, m.Key, m.Record, m.Size, m.Digest, "the digest announced")
	if e != nil {
		return nil, 0, e
	}
	lists, err := wire.DecodeChunkIndex(b, entries, m.Chunk)
	if err != nil {
		return nil, 0, wire.Errorf(c.id, wire.CodeBadRequest, "chunk index: %v", err)
	}
	return lists, m.Chunk, nil
}

// readWhole reads a publication of size octets (the manifest, the chunk
// index) and checks it against its SHA-256, digest (named as which).
func (c *bcastChan) readWhole(what, topic string, k []byte, record uint32, size uint64, digest []byte, which string) ([]byte, *wire.Error) {
	var key [32]byte
	copy(key[:], k)
	buf := &limitBuffer{max: int(size)}
	if e := c.s.b.agent.readPublication(c.ctx, c.id, what, topic, key, int(record), pubOpts{}, buf, func(int, bool) {}, nil); e != nil {
		return nil, e
	}
	if c.ctx.Err() != nil {
		return nil, wire.Errorf(c.id, wire.CodeGone, "the broadcast ended") // not sent: the channel is gone
	}
	if buf.over || buf.b.Len() != int(size) {
		return nil, wire.Errorf(c.id, wire.CodeBadRequest, "%s: %d octets, not the %d announced", what, buf.n, size)
	}
	if d := sha256.Sum256(buf.b.Bytes()); !bytes.Equal(d[:], digest) {
		return nil, wire.Errorf(c.id, wire.CodeConflict, "%s: its SHA-256 is not %s", what, which)
	}
	return buf.b.Bytes(), nil
}

// apply writes the tree with the content of g's publication.
func (c *bcastChan) apply(g *wire.BcastGo, entries []*wire.File, slices [][]byte, chunk uint64, rcfg subscriber.ReceiverConfig, st *bcastStats, failure func(string, error)) (subscriber.ApplyStats, error) {
	var key [32]byte
	copy(key[:], g.Key)
	// Apply skips the files this agent does not need (subscriber.Skipper);
	// in a version 4 session the content comes in full records and the
	// reader then skips their records too (docs/PROTOCOL.md §14.6).
	pipe := newSkipPipe()
	full := c.s.version >= 4
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	read := make(chan *wire.Error, 1)
	wanted := false
	for i := range entries {
		if wire.BitmapHas(g.Content, i) {
			wanted = true
			break
		}
	}
	// A relay reads the whole content, whatever it lacks itself, and
	// republishes it for its children as it goes.
	relaying := len(g.Children) > 0
	var relay func(uint64, []byte, bool)
	if relaying {
		relay = func(off uint64, p []byte, eof bool) {
			if c.store != nil {
				c.store.write(off, p, eof) // first: a child that misses this asks for it
			}
			c.s.b.relayPublish(g.Topic, off, p, eof)
			st.relayed.Add(uint64(len(p)))
		}
	}
	count := func(n int, isLive bool) {
		if isLive {
			st.live.Add(uint64(n))
		} else {
			st.repaired.Add(uint64(n))
		}
	}
	closeWrite := func(e *wire.Error) {
		var err error // nil, not a nil *wire.Error
		if e != nil {
			err = e
		}
		pipe.CloseWrite(err)
		read <- e
	}
	// relayed is closed when a relay that keeps what it relays has taken
	// the whole content (or failed): nil otherwise.
	var relayed chan struct{}
	switch {
	case g.Topic == "" || !wanted && !relaying:
		closeWrite(nil)
	case relaying && c.store != nil:
		// Two readers: one takes the content as it comes, republishes it
		// and keeps it in the store; the other reads the store for this
		// agent's own copy, at its disk's pace. So the children never
		// wait for this agent's writes.
		relayed = make(chan struct{})
		var relayErr *wire.Error
		sctx, stopStore := context.WithCancel(ctx)
		go func() {
			defer close(relayed)
			relayErr = c.s.b.agent.readPublication(ctx, c.id, "content", g.Topic, key, int(g.Record), pubOpts{}, io.Discard, count, relay)
			if relayErr != nil {
				stopStore() // the store will not be whole
			}
		}()
		if !wanted {
			closeWrite(nil)
			break
		}
		go func() {
			defer stopStore()
			r := &recordReader{max: int(g.Record), w: pipe, key: key, full: full}
			err := c.store.read(sctx, r, pipe)
			var e *wire.Error
			switch {
			case errors.Is(err, errStoreFailed):
				// Read it again from upstream, for this agent only: the
				// pipe drops what was read already.
				c.s.b.log.Warn("relay: reading the content from upstream", "session", c.s.id, "err", err)
				pipe.Seek(0)
				e = c.s.b.agent.readPublication(ctx, c.id, "content", g.Topic, key, int(g.Record), pubOpts{full: full}, pipe, func(n int, isLive bool) {
					if !isLive { // what it takes live, the other reader counted
						st.repaired.Add(uint64(n))
					}
				}, nil)
			case err != nil:
				e = wire.Errorf(c.id, wire.CodeFlowControl, "content: %v", err)
			case sctx.Err() != nil && ctx.Err() == nil:
				<-relayed
				e = relayErr // the reader of the content failed
			}
			closeWrite(e)
		}()
	default:
		go func() {
			closeWrite(c.s.b.agent.readPublication(ctx, c.id, "content", g.Topic, key, int(g.Record), pubOpts{full: full, fetchOnly: c.fetchOnly}, pipe, count, relay))
		}()
	}
	var content io.Reader = pipe
	if d := c.s.b.agent.faultSlow; d > 0 {
		content = &slowReader{skipPipe: pipe, perMiB: d}
	}
	stats, err := subscriber.Apply(ctx, subscriber.ApplyConfig{Receiver: rcfg, Entries: entries, Content: g.Content, Failure: failure, Copies: c.copies, Bases: c.bases,
		Slices: slices, Chunk: chunk}, content)
	switch {
	case relayed != nil:
		select {
		case <-relayed: // the children got it all
		case <-ctx.Done():
		}
	case relaying && ctx.Err() == nil:
		_, _ = io.Copy(io.Discard, pipe) // the rest is for the children
	}
	pipe.CloseRead() // the rest of the content is for other agents
	cancel()
	if e := <-read; e != nil && err == nil && e.Code == wire.CodeNotFound {
		err = e
	}
	return stats, err
}

// slowReader reads a content stream slowly, sleeping perMiB for every MiB
// read (ZP_FAULT_SLOW_APPLY, for fault tests: an agent whose disk is slow).
type slowReader struct {
	*skipPipe
	perMiB time.Duration
	n      int
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.skipPipe.Read(p)
	for s.n += n; s.n >= 1<<20; s.n -= 1 << 20 {
		time.Sleep(s.perMiB)
	}
	return n, err
}

// progress sends BCAST_PROGRESS until the returned function is called.
func (c *bcastChan) progress(st *bcastStats) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(bcastProgress)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-c.ctx.Done():
				return
			case <-t.C:
				c.s.send(&wire.BcastProgress{Channel: c.id, Stats: st.wire()})
			}
		}
	}()
	return func() { close(stop); <-done }
}

// bcastStats are a broadcast's counts, updated as it goes.
type bcastStats struct {
	written, live, repaired, deduped atomic.Uint64
	fromRelay, relayed               atomic.Uint64
	files, failed                    atomic.Uint32
	reparented                       atomic.Bool
}

func (s *bcastStats) wire() wire.BcastStats {
	w := wire.BcastStats{Written: s.written.Load(), Live: s.live.Load(), Repaired: s.repaired.Load(),
		Deduped: s.deduped.Load(), Files: s.files.Load(), Failed: s.failed.Load(),
		FromRelay: s.fromRelay.Load(), Relayed: s.relayed.Load()}
	if s.reparented.Load() {
		w.Reparented = 1
	}
	return w
}

// limitBuffer keeps at most max octets and fails beyond.
type limitBuffer struct {
	b    bytes.Buffer
	max  int
	n    int
	over bool
}

func (l *limitBuffer) Write(p []byte) (int, error) {
	l.n += len(p)
	if l.b.Len()+len(p) > l.max {
		l.over = true
		return 0, errors.New("more octets than announced")
	}
	return l.b.Write(p)
}
