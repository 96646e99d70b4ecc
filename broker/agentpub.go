package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/secretbox"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// The agent's side of shared stdin (docs/PROTOCOL.md §13.5): a command
// whose EXEC has the shared-stdin flag reads a publication of the hub. The
// agent subscribes to its topic on the hub's XPUB (one SUB per link, for
// every reader) and takes what arrives in order; what it missed (a
// publication dropped because it was slow, or sent before it subscribed)
// it fetches with PUB_FETCH on its link. It holds at most one message and
// one record per command: a command that reads slowly makes its reader
// drop publications and fetch them later, and slows nobody else.

// pubIdle is how long a reader waits for a publication before it fetches.
const pubIdle = 250 * time.Millisecond

// pubLive is a reader's queue of live publications (dropped when full).
const pubLive = 32

// liveRoutes are the topics the agent's readers follow, across links.
type liveRoutes struct {
	mu     sync.Mutex
	topics map[string]map[chan *wire.PubData]struct{}
	// relayed are the topics taken from a relay, not the hub (relay.go),
	// fetchers the connections to those relays for repairs.
	relayed  map[string]bool
	fetchers map[string]*relayFetcher
}

func (a *agentRunner) addLive(topic string) chan *wire.PubData {
	c := make(chan *wire.PubData, pubLive)
	a.addLiveChan(topic, c)
	return c
}

// addLiveChan routes topic's live publications to c (without blocking)
// until the returned function is called.
func (a *agentRunner) addLiveChan(topic string, c chan *wire.PubData) func() {
	a.live.mu.Lock()
	if a.live.topics == nil {
		a.live.topics = make(map[string]map[chan *wire.PubData]struct{})
	}
	first := a.live.topics[topic] == nil
	if first {
		a.live.topics[topic] = make(map[chan *wire.PubData]struct{})
	}
	a.live.topics[topic][c] = struct{}{}
	first = first && !a.live.relayed[topic]
	a.live.mu.Unlock()
	if first {
		if l := a.cur.Load(); l != nil {
			l.subscribe(topic, true)
		}
	}
	return func() { a.dropLive(topic, c) }
}

func (a *agentRunner) dropLive(topic string, c chan *wire.PubData) {
	a.live.mu.Lock()
	m := a.live.topics[topic]
	delete(m, c)
	last := m != nil && len(m) == 0
	if last {
		delete(a.live.topics, topic)
	}
	last = last && !a.live.relayed[topic]
	a.live.mu.Unlock()
	if last {
		if l := a.cur.Load(); l != nil {
			l.subscribe(topic, false)
		}
	}
}

// follow subscribes the agent to topic until the returned function is
// called, without reading it: a reader that starts later then finds
// what was published meanwhile on the hub, not lost to a subscription
// that came too late.
func (a *agentRunner) follow(topic string) func() {
	// Unbuffered and never read: routeLive drops what it would hand it.
	return a.addLiveChan(topic, make(chan *wire.PubData))
}

// routeLive hands a publication to its readers without blocking.
func (a *agentRunner) routeLive(topic string, m *wire.PubData) {
	a.live.mu.Lock()
	defer a.live.mu.Unlock()
	for c := range a.live.topics[topic] {
		select {
		case c <- m:
		default: // the reader is behind: it fetches this later
		}
	}
}

func (a *agentRunner) liveTopics() []string {
	a.live.mu.Lock()
	defer a.live.mu.Unlock()
	out := make([]string, 0, len(a.live.topics))
	for t := range a.live.topics {
		if !a.live.relayed[t] {
			out = append(out, t)
		}
	}
	return out
}

// subscribe dials the hub's XPUB for a link (publish as JOIN_OK says),
// subscribes to every followed topic and routes what arrives until the
// link dies. Without it readers still work, by fetching.
func (l *agentLink) runSub(ctx context.Context, publish string, hubKey curve.PublicKey) {
	a := l.a
	ep := publish
	if strings.HasPrefix(publish, ":") {
		host, _, err := net.SplitHostPort(strings.TrimPrefix(a.ep, zmtp.SchemeTCP+"://"))
		if err != nil {
			a.b.log.Warn("hub's publish endpoint unusable; shared stdin will be fetched", "publish", publish, "err", err)
			return
		}
		ep = "tcp://" + net.JoinHostPort(host, publish[1:])
	}
	zep, err := zmtp.Endpoint(ep)
	if err != nil {
		a.b.log.Warn("hub's publish endpoint unusable; shared stdin will be fetched", "publish", publish, "err", err)
		return
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := a.dialSub(sctx, zep, hubKey)
	if err != nil {
		a.b.log.Warn("cannot subscribe to the hub's publications; shared stdin will be fetched", "publish", ep, "err", err)
		return
	}
	l.subMu.Lock()
	l.sub = sub
	l.subMu.Unlock()
	for _, t := range a.liveTopics() {
		l.subscribe(t, true)
	}
	go func() {
		select {
		case <-l.dead:
		case <-ctx.Done():
		}
		l.subMu.Lock()
		l.sub = nil
		l.subMu.Unlock()
		sub.Close()
	}()
	for {
		topic, pd, err := a.recvPub(sub)
		if err != nil {
			return
		}
		if pd != nil {
			a.routeLive(topic, pd)
		}
	}
}

// dialSub dials an XPUB (the hub's, or a relay's with the key key) with
// a SUB that authenticates with the agent's own key.
func (a *agentRunner) dialSub(ctx context.Context, zep string, key curve.PublicKey) (zmq4.Socket, error) {
	zcfg := &zmtp.Config{Mechanism: &curve.Client{Key: a.cfg.Key, ServerKey: key}, SocketType: string(zmq4.Sub),
		HandshakeTimeout: a.b.cfg.timeout(), OnFull: zmtp.Block,
		MaxFrame: wire.MaxHeader + 64, MaxMessage: wire.MaxHeader + wire.MaxData + 256, MaxFrames: 3}
	sub := zmq4.NewSub(zmtp.WithConfig(ctx, zcfg), zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(a.b.cfg.timeout()),
		zmq4.WithLogger(log.New(io.Discard, "", 0)))
	if err := sub.Dial(zep); err != nil {
		sub.Close()
		return nil, err
	}
	return sub, nil
}

// recvPub receives the next message of a SUB: a publication's topic and
// PUB_DATA, or a nil PUB_DATA for anything else (malformed, or dropped
// on purpose by ZP_FAULT_DROP_LIVE: fetched later, as a missed
// publication); an error once the socket is closed.
func (a *agentRunner) recvPub(sub zmq4.Socket) (string, *wire.PubData, error) {
	msg, err := sub.Recv()
	if err != nil {
		return "", nil, err
	}
	if len(msg.Frames) != 3 {
		return "", nil, nil
	}
	m, err := wire.Decode(msg.Frames[1:])
	if err != nil {
		return "", nil, nil
	}
	pd, ok := m.(*wire.PubData)
	if !ok {
		return "", nil, nil
	}
	// What arrives, whether a reader takes it or not: what following a
	// publication live costs this agent's link.
	a.b.m.Bytes.WithLabelValues("in", "live").Add(float64(len(pd.Bytes)))
	if a.faultDrop > 0 && rand.Float64() < a.faultDrop {
		return "", nil, nil
	}
	return string(msg.Frames[0]), pd, nil
}

// subscribe adds or removes a topic on the link's SUB, if it has one.
func (l *agentLink) subscribe(topic string, on bool) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if l.sub == nil {
		return
	}
	opt := zmq4.OptionSubscribe
	if !on {
		opt = zmq4.OptionUnsubscribe
	}
	_ = l.sub.SetOption(opt, topic)
}

// fetchAnswer is what the hub sent for one PUB_FETCH.
type fetchAnswer struct {
	data []byte
	ok   *wire.PubFetchOK
	err  error
}

// routeFetch hands a fetch its answer (receive loop: never blocks); false
// if the channel is not a fetch.
func (l *agentLink) routeFetch(id uint32, m wire.Message) bool {
	if id&pubChannelBit == 0 {
		return false
	}
	l.mu.Lock()
	f := l.fetches[id]
	l.mu.Unlock()
	if f == nil {
		return true // a fetch that gave up
	}
	f.take(m)
	return true
}

// take adds a message of the answer (DATA, then PUB_FETCH_OK or ERROR,
// which complete it). Never blocks.
func (f *pendingFetch) take(m wire.Message) {
	switch m := m.(type) {
	case *wire.Data:
		if f.data == nil {
			f.data = m.Bytes
		}
	case *wire.PubFetchOK:
		f.ok = m
		select {
		case f.done <- struct{}{}:
		default:
		}
	case *wire.Error:
		f.err = m
		select {
		case f.done <- struct{}{}:
		default:
		}
	}
}

// pendingFetch collects an answer; done is signalled once it is complete.
type pendingFetch struct {
	fetchAnswer
	done chan struct{}
}

// errNoLink: the agent has no link to its hub just now.
var errNoLink = errors.New("no link to the hub")

// fetch asks the hub for [off, off+n) of a publication over the current
// link and waits for the answer.
func (a *agentRunner) fetch(ctx context.Context, topic string, off uint64, n uint32) (fetchAnswer, error) {
	a.live.mu.Lock()
	rf := a.live.fetchers[topic]
	a.live.mu.Unlock()
	if rf != nil {
		// A relay's child asks its relay, and the hub only once the relay
		// fails (or is given up: relay.go). A relay that does not hold
		// the piece yet is behind: the child waits for its live stream
		// rather than overtake it with the hub's octets, which would leave
		// it fetching everything from the hub from then on.
		ans, err := rf.fetch(ctx, topic, off, n)
		if err == nil {
			return ans, nil
		}
	}
	l := a.cur.Load()
	if l == nil {
		return fetchAnswer{}, errNoLink
	}
	f := &pendingFetch{done: make(chan struct{}, 1)}
	l.mu.Lock()
	l.nextFetch++
	id := l.nextFetch | pubChannelBit
	l.fetches[id] = f
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.fetches, id)
		l.mu.Unlock()
	}()
	if err := l.send(&wire.PubFetch{Channel: id, Topic: topic, Offset: off, Length: n}); err != nil {
		return fetchAnswer{}, err
	}
	t := time.NewTimer(a.b.cfg.timeout())
	defer t.Stop()
	select {
	case <-f.done:
		l.mu.Lock() // the receive loop wrote f before signalling
		ans := f.fetchAnswer
		l.mu.Unlock()
		return ans, ans.err
	case <-l.dead:
		return fetchAnswer{}, errNoLink
	case <-t.C:
		return fetchAnswer{}, errors.New("the hub did not answer PUB_FETCH")
	case <-ctx.Done():
		return fetchAnswer{}, ctx.Err()
	}
}

// recordReader decrypts a shared stdin's records (docs/PROTOCOL.md §13.5)
// and writes the plaintext to w in order. It holds at most one record.
type recordReader struct {
	key   [32]byte
	max   int // plaintext octets per record, at most
	i     uint64
	buf   []byte
	plain []byte
	done  bool // the final record was read
	w     io.Writer
	werr  error // the command stopped reading: the rest is discarded
	// full: every record but the last data record holds max octets (a
	// broadcast's content in a version 4 session, docs/PROTOCOL.md
	// §14.6), so record i starts at i*(max+20) and may be jumped to.
	full  bool
	short bool // full, and a record of fewer octets came: only the final may follow
}

// errRecord is a record that does not decrypt, or a malformed stream.
type errRecord struct{ msg string }

func (e *errRecord) Error() string { return e.msg }

// recordNonce is "zp-stdin-record" ‖ final ‖ i (big-endian).
func recordNonce(final bool, i uint64) *[24]byte {
	var n [24]byte
	copy(n[:], "zp-stdin-record")
	if final {
		n[15] = 1
	}
	binary.BigEndian.PutUint64(n[16:], i)
	return &n
}

// feed takes the next octets of the publication.
func (r *recordReader) feed(p []byte) error {
	if r.done {
		if len(p) > 0 {
			return &errRecord{"octets after the final record"}
		}
		return nil
	}
	r.buf = append(r.buf, p...)
	for len(r.buf) >= 4 && !r.done {
		n := int(binary.BigEndian.Uint32(r.buf))
		if n < secretbox.Overhead || n > r.max+secretbox.Overhead {
			return &errRecord{fmt.Sprintf("record %d: length %d out of range", r.i, n)}
		}
		if len(r.buf) < 4+n {
			break
		}
		final := n == secretbox.Overhead
		out, ok := secretbox.Open(r.plain[:0], r.buf[4:4+n], recordNonce(final, r.i), &r.key)
		if !ok {
			return &errRecord{fmt.Sprintf("record %d does not decrypt: altered, or not for this key", r.i)}
		}
		r.plain = out
		if r.full && !final {
			if r.short {
				return &errRecord{fmt.Sprintf("record %d follows a short record in a publication of full records", r.i)}
			}
			r.short = len(out) < r.max
		}
		if len(out) > 0 && r.werr == nil {
			if _, err := r.w.Write(out); err != nil {
				r.werr = err
			}
		}
		r.i++
		r.done = final
		r.buf = r.buf[4+n:]
	}
	if r.done && len(r.buf) > 0 {
		return &errRecord{"octets after the final record"}
	}
	// Keep the partial record at the start of a buffer of bounded size.
	if cap(r.buf) > 2*(r.max+secretbox.Overhead+4)+wire.MaxData {
		r.buf = append([]byte(nil), r.buf...)
	}
	return nil
}

// pubOpts says how readPublication reads a publication.
type pubOpts struct {
	full      bool // cut in full records: a broadcast's content in a version 4 session
	fetchOnly bool // take nothing live: fetch what is wanted
}

// jump makes record i the next one, dropping the partial record held:
// the publication is then fed from record i's first octet, i*(max+20).
// Only for full records.
func (r *recordReader) jump(i uint64) {
	r.i = i
	r.buf = r.buf[:0]
}

// skipTo jumps to the record that holds the first octet sk wants, when
// whole records lie before it (full records only), and tells sk where the
// next octets written start. It returns the publication offset to feed
// from then, and whether it jumped.
func (r *recordReader) skipTo(sk skipWriter) (uint64, bool) {
	if sk == nil || !r.full || r.done {
		return 0, false
	}
	i := sk.Wanted() / uint64(r.max)
	if i <= r.i {
		return 0, false
	}
	r.jump(i)
	sk.Seek(i * uint64(r.max))
	return i * (uint64(r.max) + 4 + secretbox.Overhead), true
}

// skipWriter is a writer that may not want all of a publication's
// plaintext (skipPipe): Wanted is the offset of the next octet it wants
// (what lies before it was read or is not wanted), Seek says at which
// offset the next Write's octets start (never past Wanted), and Demand
// waits until the writer should fetch what it wants (false: it wants
// nothing more).
type skipWriter interface {
	io.Writer
	Wanted() uint64
	Seek(off uint64)
	Demand(ctx context.Context) bool
}

// feedShared feeds a command's stdin (w) from the publication named in
// its EXEC, and closes w at the end. A stream that does not decrypt, or
// ends without its final record, ends the channel with ERROR 422; a
// publication the hub does not know (or not for this agent), 404.
func (ch *execChan) feedShared(w io.WriteCloser, m *wire.Exec) {
	defer w.Close()
	var key [32]byte
	copy(key[:], m.Key)
	e := ch.s.b.agent.readPublication(ch.ctx, ch.id, "shared stdin", m.Topic, key, int(m.Record), pubOpts{}, w, func(n int, _ bool) {
		ch.s.b.m.Bytes.WithLabelValues("in", "exec").Add(float64(n))
	}, nil)
	if e != nil {
		ch.s.b.log.Warn("shared stdin failed", "session", ch.s.id, "channel", ch.id, "code", int(e.Code), "err", e.Reason)
		ch.send(e)
		ch.s.release(ch.id, ch)
	}
}

// readPublication writes the plaintext of a publication (records sealed
// with key, of at most record octets) to w in order, taking what arrives
// on the hub's XPUB and fetching what it missed, until the final record,
// ctx's end, or w failing (the rest is then not read). count reports the
// publication octets taken, live or fetched; what names the stream in
// errors. It returns an ERROR for the channel id: 422
// (wire.CodeFlowControl) for a stream that does not decrypt or ends
// without its final record, 404 for a publication the hub does not know
// or not for this agent; nil otherwise.
//
// Live publications that arrive past a gap (one dropped because this
// reader was slow, or published before it subscribed) wait in a bounded
// reorder buffer while the gap alone is fetched, so that a reader that
// fell behind once catches up with the live stream instead of fetching
// the rest of the publication piece by piece.
//
// relay, if set, is handed every piece of the publication in order
// (sealed, as published; eof on the publication's last) before it is
// decrypted: a relay republishes it (relay.go).
//
// opts.full says that the publication is cut in full records
// (recordReader). Then, without relay, a w that is a skipWriter may skip
// plaintext: the whole records before the first octet it wants are
// neither fetched nor decrypted (a broadcast agent skips the files it
// holds). opts.fetchOnly takes nothing live: everything is fetched (an
// agent that needs little of a broadcast's content).
func (a *agentRunner) readPublication(ctx context.Context, id uint32, what, topic string, key [32]byte, record int, opts pubOpts, w io.Writer, count func(n int, live bool), relay func(off uint64, p []byte, eof bool)) *wire.Error {
	r := &recordReader{max: record, w: w, key: key, full: opts.full}
	var live chan *wire.PubData // nil: never ready
	if !opts.fetchOnly {
		live = a.addLive(topic)
		defer a.dropLive(topic, live)
	}
	// What the last fetch said is stored (it only grows), and whether
	// that is all.
	var knownSize uint64
	var knownFinal bool
	var want uint64    // the next octet of the publication
	var liveEnd uint64 // the end of the newest live publication seen
	var ahead reorder
	sk, _ := w.(skipWriter)
	if !opts.full || relay != nil {
		sk = nil // records of any length; or a relay, which takes every record for its children
	}
	// skip goes on at the record that holds the first octet w wants.
	skip := func() {
		if off, ok := r.skipTo(sk); ok {
			want = off
		}
	}
	feed := func(p []byte, isLive, eof bool) *wire.Error {
		if relay != nil {
			relay(want, p, eof)
		}
		if err := r.feed(p); err != nil {
			return wire.Errorf(id, wire.CodeFlowControl, "%s: %v", what, err)
		}
		want += uint64(len(p))
		count(len(p), isLive)
		skip()
		return nil
	}
	// take feeds what of pd is new; then what waited for it.
	take := func(pd *wire.PubData) *wire.Error {
		for pd != nil && !r.done && r.werr == nil {
			if end := pd.Offset + uint64(len(pd.Bytes)); pd.Offset <= want && end > want {
				if e := feed(pd.Bytes[want-pd.Offset:], true, pd.EOF()); e != nil {
					return e
				}
			}
			pd = ahead.next(want)
		}
		return nil
	}
	ended := wire.Errorf(id, wire.CodeFlowControl, "%s: the publication ended without its final record", what)
	needFetch := true // first fetch what was published before we subscribed
	idle := time.NewTimer(pubIdle)
	defer idle.Stop()
	// drain moves what arrived live into ahead, without waiting: live
	// publications are not dropped while the reader fetches.
	drain := func() (got bool) {
		for {
			select {
			case pd := <-live:
				got = true
				liveEnd = max(liveEnd, pd.Offset+uint64(len(pd.Bytes)))
				if pd.Offset+uint64(len(pd.Bytes)) > want {
					ahead.add(pd)
				}
			default:
				return got
			}
		}
	}
	for !r.done && r.werr == nil {
		skip()
		if needFetch {
			if sk != nil {
				// Fetch once the reader wants more: it may be about to
				// skip what comes next.
				if !sk.Demand(ctx) {
					return nil
				}
				skip()
			}
			sawLive := drain() || !ahead.empty()
			if e := take(ahead.next(want)); e != nil {
				return e
			}
			off, n := want, uint64(maxPubFetch)
			if gap, ok := ahead.gap(want); ok {
				n = min(n, gap) // fetch only the gap: the rest waits in ahead
			}
			if want > max(knownSize, liveEnd) && !knownFinal {
				// Skipped past what is known to be published: ask how
				// much is (no octets) rather than for octets not there.
				off, n = knownSize, 0
			}
			ans, err := a.fetch(ctx, topic, off, uint32(n))
			var we *wire.Error
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.As(err, &we) && we.Code == wire.CodeNotFound:
				return wire.Errorf(id, wire.CodeNotFound, "%s: %s", what, we.Reason)
			case err != nil:
				// No link just now, or the hub is busy: try again soon.
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(pubIdle):
				}
				continue
			}
			knownSize, knownFinal = max(knownSize, ans.ok.Size), ans.ok.Final
			if off == want && len(ans.data) > 0 && ans.ok.Next == want+uint64(len(ans.data)) {
				if e := feed(ans.data, false, ans.ok.Final && ans.ok.Next >= ans.ok.Size); e != nil {
					return e
				}
				if e := take(ahead.next(want)); e != nil {
					return e
				}
			}
			if ans.ok.Final && want >= ans.ok.Size && !r.done {
				return ended
			}
			if off != want {
				needFetch = want < ans.ok.Size // asked the size: published now, fetch it; else wait for it
				continue
			}
			// Behind the live stream (a gap before what waits, live
			// octets past want that did not wait, or nothing seen live):
			// fetch on. Caught up with it: wait for it.
			_, gapped := ahead.gap(want)
			needFetch = want < ans.ok.Size && (gapped || !sawLive || want < liveEnd)
			continue
		}
		if !idle.Stop() {
			select {
			case <-idle.C:
			default:
			}
		}
		idle.Reset(pubIdle)
		select {
		case <-ctx.Done():
			return nil
		case pd := <-live:
			end := pd.Offset + uint64(len(pd.Bytes))
			liveEnd = max(liveEnd, end)
			switch {
			case pd.Offset > want:
				ahead.add(pd) // past a gap: keep it (if there is room) and fetch the gap
				needFetch = true
			case end > want:
				if e := take(pd); e != nil {
					return e
				}
			}
			if pd.EOF() && end <= want && !r.done {
				return ended
			}
			if want < liveEnd {
				needFetch = true // what was published there did not wait (skipped to, or dropped)
			}
		case <-idle.C:
			needFetch = true
		}
	}
	return nil
}

// reorderMax bounds the live publications a reader keeps past a gap.
const reorderMax = 8 << 20

// reorder holds live publications that arrived past a gap, by offset.
type reorder struct {
	q     []*wire.PubData // sorted by Offset
	bytes int
}

// add keeps pd if there is room; what is dropped is fetched later.
func (o *reorder) add(pd *wire.PubData) {
	if o.bytes+len(pd.Bytes) > reorderMax {
		return
	}
	i := sort.Search(len(o.q), func(i int) bool { return o.q[i].Offset >= pd.Offset })
	if i < len(o.q) && o.q[i].Offset == pd.Offset {
		return
	}
	o.q = append(o.q, nil)
	copy(o.q[i+1:], o.q[i:])
	o.q[i] = pd
	o.bytes += len(pd.Bytes)
}

// next drops what lies wholly before want and returns the publication
// that holds want, if one waits.
func (o *reorder) next(want uint64) *wire.PubData {
	for len(o.q) > 0 {
		pd := o.q[0]
		if pd.Offset > want {
			return nil
		}
		o.q[0] = nil
		o.q = o.q[1:]
		o.bytes -= len(pd.Bytes)
		if pd.Offset+uint64(len(pd.Bytes)) > want {
			return pd
		}
	}
	return nil
}

// gap returns the octets from want to the first publication waiting, if
// one waits past want.
func (o *reorder) gap(want uint64) (uint64, bool) {
	if len(o.q) == 0 || o.q[0].Offset <= want {
		return 0, false
	}
	return o.q[0].Offset - want, true
}

func (o *reorder) empty() bool { return len(o.q) == 0 }
