package broker

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/wire"
)

// A publication is one stream of octets a client sends once to the hub,
// which stores it and publishes it on its XPUB to the agents it names
// (docs/PROTOCOL.md §13.5): a fleet command's shared stdin. The hub stores
// it in an unlinked file in its state directory (so it is gone with the
// hub, whatever happens), grants credit as it writes, and answers the
// agents' PUB_FETCH from the file. It is deleted when its client sends FIN
// for the channel or its session ends or loses its connection.
type publication struct {
	h     *hub
	sess  *session
	ch    uint32
	topic string
	keys  map[string]bool // the agents' keys it was granted to
	in    *credit.Receiver
	q     chan stdinItem
	done  chan struct{} // closed by close

	mu     sync.RWMutex // guards the fields below; never held across file I/O
	f      *os.File
	size   uint64
	final  bool // the EOF arrived: size will not change
	closed bool
}

// Limits on publications (ERROR 429 beyond): per session and in all; and
// the credit a publication grants (what the hub holds for it in memory).
const (
	maxPubsPerSession = 16
	maxPubs           = 256
	pubWindow         = 1 << 20
	// maxPubFetch is the most a PUB_FETCH is answered with, and
	// maxPubFetches the fetches one agent may have answered at once.
	maxPubFetch   = 256 << 10
	maxPubFetches = 2
	// pubChannelBit marks the channels an agent chooses on its link (for
	// PUB_FETCH); the hub's TUNNEL channels never have it.
	pubChannelBit = 1 << 31
)

// pubDir is where a hub keeps its publications (unlinked files).
func (h *hub) pubDir() string { return filepath.Join(h.b.cfg.StateDir, "pub") }

// newPubTopic makes a publication's topic: "f/" and 18 random octets in
// base64url, 26 characters.
func newPubTopic() string {
	var r [18]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic("bug: crypto/rand failed: " + err.Error())
	}
	return "f/" + base64.RawURLEncoding.EncodeToString(r[:])
}

// publish starts a publication (PUBLISH). Called by the receive loop.
func (h *hub) publish(s *session, m *wire.Publish) {
	if m.Channel == 0 || s.channel(m.Channel) != nil || h.channelInUse(s, m.Channel) {
		s.sendErr(wire.Errorf(m.Channel, wire.CodeConflict, "channel %d is in use", m.Channel))
		return
	}
	if len(m.Agents) == 0 {
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "PUBLISH names no agent"))
		return
	}
	keys := make(map[string]bool, len(m.Agents))
	h.mu.Lock()
	for _, name := range m.Agents {
		a := h.agents[name]
		if a == nil {
			h.mu.Unlock()
			s.sendErr(wire.Errorf(m.Channel, wire.CodeNotFound, "no agent %s", name))
			return
		}
		keys[string(a.key)] = true
	}
	switch {
	case len(h.pubsOf[s]) >= maxPubsPerSession:
		h.mu.Unlock()
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d publications in a session", maxPubsPerSession))
		return
	case len(h.pubs) >= maxPubs:
		h.mu.Unlock()
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooMany, "the hub holds %d publications", maxPubs))
		return
	}
	p := &publication{h: h, sess: s, ch: m.Channel, topic: newPubTopic(), keys: keys,
		in: credit.NewReceiver(pubWindow), q: make(chan stdinItem, credit.MaxInflight+16), done: make(chan struct{})}
	h.pubs[p.topic] = p
	if h.pubsOf[s] == nil {
		h.pubsOf[s] = make(map[uint32]*publication)
	}
	h.pubsOf[s][m.Channel] = p
	h.mu.Unlock()
	// The file is created off the receive loop; DATA waits in p.q.
	h.b.spawn(func() { p.run() })
}

// channelInUse reports whether a session's channel is a tunnel or a
// publication.
func (h *hub) channelInUse(s *session, id uint32) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients[s][id] != nil || h.pubsOf[s][id] != nil
}

// run creates the publication's file, grants its topic, answers
// PUBLISH_OK, then stores and publishes what the client sends until the
// EOF or the end of the publication.
func (p *publication) run() {
	h := p.h
	dir := h.pubDir()
	err := os.MkdirAll(dir, 0o700)
	var f *os.File
	if err == nil {
		f, err = os.CreateTemp(dir, ".pub-")
	}
	if err == nil {
		os.Remove(f.Name()) // unlinked: gone with its last descriptor
	}
	if err != nil {
		h.dropPub(p)
		p.sess.sendErr(zpdFailure(p.ch, "store a publication", err))
		return
	}
	p.mu.Lock()
	if p.closed { // ended before it began
		p.mu.Unlock()
		f.Close()
		return
	}
	p.f = f
	// Granted under the lock (grants' is a leaf): close, which revokes,
	// cannot come in between and leave a grant behind.
	for k := range p.keys {
		h.b.grants.grant([]byte(k), p.topic)
	}
	h.m.Publications.Inc()
	p.mu.Unlock()
	h.b.log.Debug("publication", "topic_len", len(p.topic), "agents", len(p.keys), "key", keyFingerprint(p.sess.key))
	p.sess.send(&wire.PublishOK{Channel: p.ch, Topic: p.topic, Window: pubWindow})
	topic := []byte(p.topic)
	for {
		var it stdinItem
		select {
		case <-p.done:
			return
		case it = <-p.q:
		}
		// Only this goroutine writes and moves size; no lock is held
		// across the write (a close meanwhile makes it fail harmlessly).
		p.mu.RLock()
		f, off, closed := p.f, p.size, p.closed
		p.mu.RUnlock()
		if closed {
			return
		}
		_, err := f.WriteAt(it.data, int64(off))
		p.mu.Lock()
		closed = p.closed
		if err == nil && !closed {
			p.size += uint64(len(it.data))
			p.final = it.eof
		}
		p.mu.Unlock()
		if closed {
			return
		}
		if err != nil {
			h.dropPub(p)
			p.sess.sendErr(zpdFailure(p.ch, "store a publication", err))
			return
		}
		h.m.PublishedBytes.Add(float64(len(it.data)))
		var flags uint8
		if it.eof {
			flags = wire.DataEOF
		}
		hdr := wire.Encode(nil, &wire.PubData{Offset: off, Flags: flags})
		data := it.data
		if data == nil {
			data = []byte{}
		}
		_ = h.b.jobs.pub.Send(zmq4.NewMsgFrom(topic, hdr, data))
		if due, o, lim := p.in.Consumed(len(it.data)); due || it.eof {
			if !due {
				o, lim = p.in.Ack()
			}
			p.sess.send(&wire.Ack{Channel: p.ch, Stream: wire.Stdin, Offset: o, Limit: lim})
		}
		if it.eof {
			h.b.log.Debug("publication complete", "size", off+uint64(len(it.data)))
		}
	}
}

// fromClient takes a DATA of the publication (receive loop: never blocks).
func (p *publication) fromClient(m *wire.Data) *wire.Error {
	if m.Stream != wire.Stdin {
		return wire.Errorf(p.ch, wire.CodeBadRequest, "a publication has only stream 0")
	}
	fresh, err := p.in.Accept(m.Offset, m.Bytes, m.EOF())
	if err != nil {
		return wire.Errorf(p.ch, wire.CodeFlowControl, "publication: %v", err)
	}
	if len(fresh) == 0 && !m.EOF() {
		return nil
	}
	select {
	case p.q <- stdinItem{data: fresh, eof: m.EOF()}:
		return nil
	default:
		return wire.Errorf(p.ch, wire.CodeFlowControl, "publication: more than %d messages in flight", credit.MaxInflight)
	}
}

// close deletes the publication: the file goes, the grant is revoked.
func (p *publication) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	f := p.f
	p.f = nil
	p.mu.Unlock()
	close(p.done)
	if f != nil {
		f.Close()
		p.h.b.grants.revoke(p.topic)
		p.h.m.Publications.Dec()
	}
}

// dropPub forgets a publication and deletes it.
func (h *hub) dropPub(p *publication) {
	h.mu.Lock()
	if h.pubs[p.topic] == p {
		delete(h.pubs, p.topic)
	}
	if m := h.pubsOf[p.sess]; m != nil && m[p.ch] == p {
		delete(m, p.ch)
		if len(m) == 0 {
			delete(h.pubsOf, p.sess)
		}
	}
	h.mu.Unlock()
	p.close()
}

// pubFromClient routes a client's DATA, ACK or FIN for a publication;
// false if the channel is not one.
func (h *hub) pubFromClient(s *session, m wire.Message) bool {
	id, _ := wire.ChannelOf(m)
	h.mu.Lock()
	p := h.pubsOf[s][id]
	h.mu.Unlock()
	if p == nil {
		return false
	}
	switch m := m.(type) {
	case *wire.Data:
		if e := p.fromClient(m); e != nil {
			h.dropPub(p)
			s.sendErr(e)
		}
	case *wire.Fin:
		h.dropPub(p)
	case *wire.Ack: // nothing flows to the client
	}
	return true
}

// pubsGone deletes the publications of a session that ended or lost its
// connection.
func (h *hub) pubsGone(s *session) {
	h.mu.Lock()
	var ps []*publication
	for _, p := range h.pubsOf[s] {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	for _, p := range ps {
		h.dropPub(p)
	}
}

// pubFetch answers an agent's PUB_FETCH from the stored file, off the
// receive loop. The hub's lock is held by the caller; the answer is sent
// by the goroutine.
func (h *hub) pubFetchLocked(a *hubAgent, c *connInfo, m *wire.PubFetch) []outMsg {
	p := h.pubs[m.Topic]
	if p == nil || !p.keys[string(a.key)] {
		// The same answer for "no such publication" and "not yours".
		return []outMsg{{conn: c, m: wire.Errorf(m.Channel, wire.CodeNotFound, "no publication %s for agent %s", m.Topic, a.name)}}
	}
	if a.fetches >= maxPubFetches {
		return []outMsg{{conn: c, m: wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d fetches at once", maxPubFetches)}}
	}
	a.fetches++
	h.b.spawn(func() {
		out := p.fetch(m)
		h.mu.Lock()
		a.fetches--
		h.mu.Unlock()
		for _, o := range out {
			h.b.reply(c.id, o)
		}
	})
	return nil
}

// fetch reads [offset, min(offset+length, size)) of the publication. No
// lock is held across the read: a publication closed meanwhile fails it.
func (p *publication) fetch(m *wire.PubFetch) []wire.Message {
	p.mu.RLock()
	f, size, final, closed := p.f, p.size, p.final, p.closed
	p.mu.RUnlock()
	return answerFetch(m, f, size, final, closed, func() bool {
		p.mu.RLock()
		defer p.mu.RUnlock()
		return p.closed
	}, func(n int) { p.h.m.PubFetchBytes.Add(float64(n)) })
}

// answerFetch answers a PUB_FETCH from a stored publication, f holding
// its first size octets (final: all of it): DATA with at most
// maxPubFetch octets, then PUB_FETCH_OK. closedNow says whether the store
// was closed meanwhile (then a failed read is "ended", not an error).
func answerFetch(m *wire.PubFetch, f *os.File, size uint64, final, closed bool, closedNow func() bool, count func(int)) []wire.Message {
	ended := wire.Errorf(m.Channel, wire.CodeNotFound, "publication %s has ended", m.Topic)
	if closed || f == nil {
		return []wire.Message{ended}
	}
	if m.Offset > size {
		return []wire.Message{wire.Errorf(m.Channel, wire.CodeBadRequest, "offset %d beyond the %d octets stored", m.Offset, size)}
	}
	n := min(uint64(m.Length), maxPubFetch, size-m.Offset)
	var out []wire.Message
	if n > 0 {
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, int64(m.Offset)); err != nil && !errors.Is(err, io.EOF) {
			if closedNow() {
				return []wire.Message{ended}
			}
			return []wire.Message{wire.Errorf(m.Channel, wire.CodeInternal, "reading the publication: %v", err)}
		}
		out = append(out, &wire.Data{Channel: m.Channel, Stream: wire.Stdin, Offset: m.Offset, Bytes: buf})
		count(int(n))
	}
	return append(out, &wire.PubFetchOK{Channel: m.Channel, Next: m.Offset + n, Size: size, Final: final})
}

// String names a publication in errors.
func (p *publication) String() string { return fmt.Sprintf("publication on channel %d", p.ch) }
