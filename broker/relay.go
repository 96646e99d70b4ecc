package broker

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// An agent's part in relay trees (docs/PROTOCOL.md §14.11).
//
// A relay republishes a broadcast's content publication on its own XPUB,
// in order, as it reads it (live from its parent, or fetched from the
// hub): the same topic, offsets and sealed octets as the hub's. Its
// children's keys, which BCAST_GO lists, are admitted on its XPUB for
// that topic alone while the broadcast lasts: the key is no user here
// and may do nothing else (the ROUTER does not admit it).
//
// A child takes the topic live from its parent's XPUB instead of the
// hub's; what it misses it fetches from the hub over its link, as any
// missed publication. A parent that falls silent (relayPatience) or
// cannot be reached is given up: the child subscribes on the hub's XPUB
// and finishes from there (re-parented).

// relayPatience is how long a child waits for its relay's next message
// (relayFirst for the first) before it takes the content from the hub.
const (
	relayPatience = 3 * time.Second
	relayFirst    = 6 * time.Second
)

// relayAdmits counts, per key, the relayed broadcasts that admit it on
// the XPUB.
type relayAdmits struct {
	mu   sync.Mutex
	keys map[string]int
	// stores are the relayed publications by topic (relayrepair.go);
	// fetching counts the PUB_FETCHes being answered per connection.
	stores   map[string]*relayStore
	fetching map[string]int
}

func (r *relayAdmits) has(k []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[string(k)] > 0
}

// admitChildren admits the children's keys (32 octets each) on the XPUB
// and the ROUTER (for PUB_FETCH alone), grants them topic, and keeps what
// is relayed for their repairs (st; nil if it cannot be kept: they ask
// the hub), until the returned function is called.
func (b *Broker) admitChildren(children []byte, topic string) (st *relayStore, end func()) {
	var keys [][]byte
	for i := 0; i+32 <= len(children); i += 32 {
		keys = append(keys, children[i:i+32])
	}
	st, err := b.openRelayStore(topic, keys)
	if err != nil {
		b.log.Warn("cannot keep what is relayed; the children repair from the hub", "err", err)
		st = nil
	}
	b.relayed.mu.Lock()
	if b.relayed.keys == nil {
		b.relayed.keys = make(map[string]int)
		b.relayed.stores = make(map[string]*relayStore)
	}
	for _, k := range keys {
		b.relayed.keys[string(k)]++
		b.grants.grant(k, topic)
	}
	if st != nil {
		b.relayed.stores[topic] = st
	}
	b.relayed.mu.Unlock()
	return st, func() {
		b.grants.revoke(topic)
		b.relayed.mu.Lock()
		for _, k := range keys {
			if b.relayed.keys[string(k)]--; b.relayed.keys[string(k)] <= 0 {
				delete(b.relayed.keys, string(k))
			}
		}
		if st != nil && b.relayed.stores[topic] == st {
			delete(b.relayed.stores, topic)
		}
		b.relayed.mu.Unlock()
		if st != nil {
			st.close()
		}
	}
}

// relayMechanism is an agent's XPUB's and ROUTER's: the broker's, and
// under CURVE it also admits the keys of the agents it relays a
// broadcast to (on the ROUTER they may only PUB_FETCH).
func (b *Broker) relayMechanism() zmtp.Mechanism {
	srv, ok := b.cfg.Mechanism.(*curve.Server)
	if !ok || srv == nil || b.agent == nil {
		return b.cfg.Mechanism
	}
	x := *srv
	inner := srv.Authorize
	x.Authorize = func(k curve.PublicKey) error {
		if b.relayed.has(k[:]) {
			return nil
		}
		if inner == nil {
			return errors.New("not authorised")
		}
		return inner(k)
	}
	return &x
}

// relayEndpoint is what JOIN advertises for relaying: ":PORT" of the
// XPUB on TCP ("HOST:PORT" when it is bound to one address), or "".
func (b *Broker) relayEndpoint() string {
	if b.jobs == nil || b.jobs.pub == nil {
		return ""
	}
	return advertised(b.jobs.pub.Addr())
}

// advertised is ":PORT" of a TCP address ("HOST:PORT" when it is bound to
// one address), or "".
func advertised(addr net.Addr) string {
	a, ok := addr.(*net.TCPAddr)
	if !ok || a == nil {
		return ""
	}
	if a.IP == nil || a.IP.IsUnspecified() {
		return net.JoinHostPort("", strconv.Itoa(a.Port))
	}
	return net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
}

// relay and relayControl are what this agent's JOIN offers for
// relaying: its XPUB and its ROUTER.
func (a *agentRunner) relay() string {
	if a.cfg.NoRelay {
		return ""
	}
	return a.b.relayEndpoint()
}

func (a *agentRunner) relayControl() string {
	if a.relay() == "" {
		return ""
	}
	return advertised(a.b.router.Addr())
}

// relayPublish republishes a piece of a publication on this zpd's XPUB.
func (b *Broker) relayPublish(topic string, off uint64, p []byte, eof bool) {
	var flags uint8
	if eof {
		flags = wire.DataEOF
	}
	hdr := wire.Encode(nil, &wire.PubData{Offset: off, Flags: flags})
	if p == nil {
		p = []byte{}
	}
	_ = b.jobs.pub.Send(zmq4.NewMsgFrom([]byte(topic), hdr, p))
	b.m.RelayBytes.WithLabelValues("published").Add(float64(len(p)))
}

// fromRelay takes topic's live publications from the XPUB at parent
// (CURVE server key parentKey) instead of the hub's until the returned
// function is called. got counts the octets the relay delivered;
// reparented is set when the agent gave the relay up for the hub.
func (a *agentRunner) fromRelay(ctx context.Context, topic, parent, control string, parentKey []byte, got *atomic.Uint64, reparented *atomic.Bool) func() {
	a.live.mu.Lock()
	if a.live.relayed == nil {
		a.live.relayed = make(map[string]bool)
	}
	a.live.relayed[topic] = true
	a.live.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	var once sync.Once
	giveUp := func(why string, err error) {
		once.Do(func() {
			if ctx.Err() != nil {
				return
			}
			reparented.Store(true)
			a.b.log.Warn("relay given up; the broadcast goes on from the hub", "relay", parent, "reason", why, "err", err)
			a.live.mu.Lock()
			if rf := a.live.fetchers[topic]; rf != nil {
				rf.die() // repairs from the hub too
			}
			a.live.mu.Unlock()
			a.unrelay(topic)
		})
	}
	var last atomic.Int64 // unix ns of the relay's last message
	var ended atomic.Bool // the relay sent the publication's end
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		var key curve.PublicKey
		copy(key[:], parentKey)
		zep, err := zmtp.Endpoint(parent)
		if err != nil {
			giveUp("bad endpoint", err)
			return
		}
		sub, err := a.dialSub(ctx, zep, key)
		if err != nil {
			giveUp("cannot reach it", err)
			return
		}
		defer sub.Close()
		// Repairs from the relay too, while it answers (relayrepair.go).
		if rf := a.dialRelayFetcher(ctx, control, key, got); rf != nil {
			a.live.mu.Lock()
			if a.live.fetchers == nil {
				a.live.fetchers = make(map[string]*relayFetcher)
			}
			a.live.fetchers[topic] = rf
			a.live.mu.Unlock()
			defer func() {
				a.live.mu.Lock()
				if a.live.fetchers[topic] == rf {
					delete(a.live.fetchers, topic)
				}
				a.live.mu.Unlock()
				rf.close()
			}()
		}
		_ = sub.SetOption(zmq4.OptionSubscribe, topic)
		go func() { <-ctx.Done(); sub.Close() }()
		for {
			t, pd, err := a.recvPub(sub)
			if err != nil {
				return
			}
			if pd == nil || t != topic {
				continue
			}
			last.Store(time.Now().UnixNano())
			if pd.EOF() {
				ended.Store(true)
			}
			got.Add(uint64(len(pd.Bytes)))
			a.routeLive(topic, pd)
		}
	}()
	go func() { // the watchdog
		defer wg.Done()
		t := time.NewTicker(relayPatience / 10)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if ended.Load() {
				return // what is missing now comes by repair, from the hub
			}
			if l := last.Load(); l == 0 && time.Since(start) > relayFirst {
				giveUp("silent from the start", nil)
				return
			} else if l != 0 && time.Since(time.Unix(0, l)) > relayPatience {
				giveUp("silent", nil)
				return
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
		a.live.mu.Lock()
		delete(a.live.relayed, topic)
		a.live.mu.Unlock()
	}
}

// unrelay takes topic from the hub's XPUB again.
func (a *agentRunner) unrelay(topic string) {
	a.live.mu.Lock()
	delete(a.live.relayed, topic)
	readers := len(a.live.topics[topic]) > 0
	a.live.mu.Unlock()
	if readers {
		if l := a.cur.Load(); l != nil {
			l.subscribe(topic, true)
		}
	}
}
