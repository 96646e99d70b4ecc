package broker

import (
	"context"
	"errors"
	"io"
	"log"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// Repairs in a relay tree (docs/PROTOCOL.md §14.11). A relay keeps what
// it republished (sealed, as published) in an unlinked file of its state
// directory while its broadcast lasts, and answers its children's
// PUB_FETCH from it on its ROUTER, as a hub does on an agent's link: a
// child's key is admitted there for nothing else (OPEN gets the keyring's
// answer: refused). A child asks its relay first; what the relay does not
// hold yet (it is behind), or a relay that does not answer, it asks the
// hub.

// relayFetchWait is how long a child waits for its relay's answer before
// it asks the hub for that piece.
const relayFetchWait = 2 * time.Second

// relayStore is what a relay republished of one publication.
type relayStore struct {
	topic    string
	children map[string]bool

	mu     sync.RWMutex
	f      *os.File
	size   uint64
	final  bool
	failed bool // a write failed: children ask the hub
	closed bool
	more   chan struct{} // closed and replaced when size, failed or closed changes (read)
}

// openRelayStore makes the store of a relayed publication, an unlinked
// file under STATE/relay (the system's temporary directory without one).
func (b *Broker) openRelayStore(topic string, children [][]byte) (*relayStore, error) {
	dir := os.TempDir()
	if b.cfg.StateDir != "" {
		dir = filepath.Join(b.cfg.StateDir, "relay")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	f, err := os.CreateTemp(dir, "relay-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	st := &relayStore{topic: topic, children: make(map[string]bool, len(children)), f: f, more: make(chan struct{})}
	for _, k := range children {
		st.children[string(k)] = true
	}
	return st, nil
}

// write stores the piece at off (pieces come in order, without gaps).
func (st *relayStore) write(off uint64, p []byte, eof bool) {
	st.mu.RLock()
	f, skip := st.f, st.failed || st.closed || off != st.size
	st.mu.RUnlock()
	if skip {
		return
	}
	_, err := f.WriteAt(p, int64(off))
	st.mu.Lock()
	if err != nil {
		st.failed = true
	} else {
		st.size = off + uint64(len(p))
		st.final = eof
	}
	st.moved()
	st.mu.Unlock()
}

// moved wakes read; st.mu held.
func (st *relayStore) moved() {
	close(st.more)
	st.more = make(chan struct{})
}

func (st *relayStore) close() {
	st.mu.Lock()
	f := st.f
	st.closed, st.f = true, nil
	st.moved()
	st.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// errStoreFailed: the relay could not keep what it relays (a write to its
// state directory failed), so its own copy cannot be read from there.
var errStoreFailed = errors.New("the relay could not keep the content it relays (writing to its state directory failed)")

// read feeds r the publication from the store, from its start, as the
// relay stores it: it waits for what is not stored yet, until the final
// record, ctx's end or r's writer failing. So a relay writes its own copy
// at its own pace, and its children, whom it republishes to as the
// content arrives, never wait for its disk. With full records, the
// records before the first octet sk wants are not read.
func (st *relayStore) read(ctx context.Context, r *recordReader, sk skipWriter) error {
	buf := make([]byte, maxPubFetch)
	var pos uint64
	for !r.done && r.werr == nil {
		if off, ok := r.skipTo(sk); ok {
			pos = off
		}
		st.mu.RLock()
		f, size, final, failed, closed, more := st.f, st.size, st.final, st.failed, st.closed, st.more
		st.mu.RUnlock()
		switch {
		case failed:
			return errStoreFailed
		case closed:
			return errors.New("the relay's store closed")
		case pos < size:
			n, err := f.ReadAt(buf[:min(uint64(len(buf)), size-pos)], int64(pos))
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if err := r.feed(buf[:n]); err != nil {
				return err
			}
			pos += uint64(n)
			continue
		case final:
			return errors.New("the publication ended without its final record")
		}
		select {
		case <-more:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// fetch answers a child's PUB_FETCH from the store.
func (st *relayStore) fetch(m *wire.PubFetch, count func(int)) []wire.Message {
	st.mu.RLock()
	f, size, final, closed := st.f, st.size, st.final, st.closed || st.failed
	st.mu.RUnlock()
	return answerFetch(m, f, size, final, closed, func() bool {
		st.mu.RLock()
		defer st.mu.RUnlock()
		return st.closed
	}, count)
}

// relayFetch answers a PUB_FETCH on a connection without a session: a
// relay's child asking for what it missed. Called by the receive loop.
func (b *Broker) relayFetch(c *connInfo, m *wire.PubFetch) {
	b.relayed.mu.Lock()
	st := b.relayed.stores[m.Topic]
	if st == nil || !st.children[string(c.key)] {
		b.relayed.mu.Unlock()
		// The same answer for "no such publication" and "not yours".
		b.reply(c.id, wire.Errorf(m.Channel, wire.CodeNotFound, "no relayed publication %s for key %s", m.Topic, keyFingerprint(c.key)))
		return
	}
	if b.relayed.fetching[string(c.id)] >= maxPubFetches {
		b.relayed.mu.Unlock()
		b.reply(c.id, wire.Errorf(m.Channel, wire.CodeTooMany, "more than %d fetches at once", maxPubFetches))
		return
	}
	if b.relayed.fetching == nil {
		b.relayed.fetching = make(map[string]int)
	}
	b.relayed.fetching[string(c.id)]++
	b.relayed.mu.Unlock()
	b.mu.Lock()
	c.fetcher = true // not reaped for having no session
	b.mu.Unlock()
	b.spawn(func() {
		out := st.fetch(m, func(n int) { b.m.RelayBytes.WithLabelValues("fetched").Add(float64(n)) })
		b.relayed.mu.Lock()
		if b.relayed.fetching[string(c.id)]--; b.relayed.fetching[string(c.id)] <= 0 {
			delete(b.relayed.fetching, string(c.id))
		}
		b.relayed.mu.Unlock()
		for _, o := range out {
			b.reply(c.id, o)
		}
	})
}

// relayFetcher is a child's connection to its relay's ROUTER, for
// PUB_FETCH.
type relayFetcher struct {
	dealer  zmq4.Socket
	dead    chan struct{}
	dieOnce sync.Once
	got     *atomic.Uint64 // octets the relay delivered (FromRelay)

	sendMu  sync.Mutex
	mu      sync.Mutex
	pending map[uint32]*pendingFetch
	next    uint32
}

func (r *relayFetcher) die() { r.dieOnce.Do(func() { close(r.dead) }) }

// dialRelayFetcher connects to the relay's ROUTER (ep); nil if it
// cannot.
func (a *agentRunner) dialRelayFetcher(ctx context.Context, ep string, key curve.PublicKey, got *atomic.Uint64) *relayFetcher {
	if ep == "" {
		return nil
	}
	r := &relayFetcher{dead: make(chan struct{}), got: got, pending: make(map[uint32]*pendingFetch)}
	zcfg := &zmtp.Config{
		Mechanism: &curve.Client{Key: a.cfg.Key, ServerKey: key}, SocketType: string(zmq4.Dealer),
		HandshakeTimeout: a.b.cfg.timeout(), OnFull: zmtp.Block,
		MaxFrame: wire.MaxHeader + 64, MaxMessage: wire.MaxHeader + maxPubFetch + 128, MaxFrames: 2,
		OnClose: func([]byte, *zmtp.Peer, error) { r.die() },
	}
	r.dealer = zmq4.NewDealer(zmtp.WithConfig(ctx, zcfg), zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(a.b.cfg.timeout()),
		zmq4.WithLogger(log.New(io.Discard, "", 0)), zmq4.WithTimeout(relayFetchWait))
	zep, err := zmtp.Endpoint(ep)
	if err == nil {
		err = r.dealer.Dial(zep)
	}
	if err != nil {
		r.dealer.Close()
		return nil
	}
	go r.receive()
	return r
}

func (r *relayFetcher) close() {
	r.die()
	r.dealer.Close()
}

// receive routes the relay's answers to their fetches.
func (r *relayFetcher) receive() {
	for {
		msg, err := r.dealer.Recv()
		if err != nil {
			r.die()
			return
		}
		m, err := wire.Decode(msg.Frames)
		if err != nil {
			continue
		}
		id, _ := wire.ChannelOf(m)
		r.mu.Lock()
		if f := r.pending[id]; f != nil {
			f.take(m)
		}
		r.mu.Unlock()
	}
}

// fetch asks the relay for [off, off+n) of topic.
func (r *relayFetcher) fetch(ctx context.Context, topic string, off uint64, n uint32) (fetchAnswer, error) {
	select {
	case <-r.dead:
		return fetchAnswer{}, errNoLink
	default:
	}
	f := &pendingFetch{done: make(chan struct{}, 1)}
	r.mu.Lock()
	r.next++
	id := r.next
	r.pending[id] = f
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, id)
		r.mu.Unlock()
	}()
	sent := make(chan error, 1)
	go func() {
		r.sendMu.Lock()
		defer r.sendMu.Unlock()
		sent <- r.dealer.Send(zmq4.NewMsgFrom(wire.Frames(&wire.PubFetch{Channel: id, Topic: topic, Offset: off, Length: n})...))
	}()
	t := time.NewTimer(relayFetchWait)
	defer t.Stop()
	for {
		select {
		case err := <-sent:
			if err != nil {
				r.die()
				return fetchAnswer{}, err
			}
			sent = nil
		case <-f.done:
			r.mu.Lock()
			ans := f.fetchAnswer
			r.mu.Unlock()
			if ans.err == nil {
				r.got.Add(uint64(len(ans.data)))
			}
			return ans, ans.err
		case <-r.dead:
			return fetchAnswer{}, errNoLink
		case <-t.C:
			// This piece comes from the hub; the relay, busy but not gone
			// (its connection stands; a silent one is given up by the
			// watchdog in relay.go), is asked again for the next.
			return fetchAnswer{}, errors.New("the relay did not answer PUB_FETCH in time")
		case <-ctx.Done():
			return fetchAnswer{}, ctx.Err()
		}
	}
}
