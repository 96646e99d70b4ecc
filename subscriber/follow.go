package subscriber

import "github.com/zpipes/zp/internal/wire"

// FetchLength is the most a Follower asks for in one FETCH.
const FetchLength = 1 << 20

// Fetch is a FETCH a Follower wants sent for one stream.
type Fetch struct {
	Stream wire.Stream
	Offset uint64
	Length uint32
}

// Follower is the state of following a job's output, zguide's Clone
// pattern: the caller subscribes to the job's topic first, then history up
// to the live position comes from FETCH, live publications are applied as
// they arrive and a gap is fetched again. A follower that falls behind
// never slows the job or other followers. It holds no socket: the caller
// passes it what arrives and sends the FETCHes it returns.
type Follower struct {
	followed []wire.Stream
	wanted   [3]bool
	write    func(st wire.Stream, data []byte) error

	next       [3]uint64 // offsets reached per stream
	historyEnd [3]uint64 // what existed when following started
	serverSize [3]uint64 // what the server held at the last FETCH_OK
	liveEnd    [3]uint64 // the end of the furthest live publication
	final      [3]uint64
	isFinal    [3]bool
	inflight   [3]bool
	reorder    [3]liveBuffer

	ended bool
	info  map[string]string
	quiet int  // polls without a live publication
	stale bool // live publications stopped coming

	history, missed, live uint64

	// Release, when set, is handed each live payload (JobOutput.Bytes)
	// once the Follower holds it no more: written, a duplicate, not
	// followed, or not kept because the reorder buffer was full. The
	// caller may recycle it (bufpool).
	Release func([]byte)
}

func (f *Follower) release(b []byte) {
	if f.Release != nil {
		f.Release(b)
	}
}

// NewFollower follows the streams from start; size is what the server held
// when following started (FOLLOW_OK), info its description. write delivers
// each new piece of a stream, in order, exactly once.
func NewFollower(followed []wire.Stream, start, size [3]uint64, info map[string]string, write func(st wire.Stream, data []byte) error) *Follower {
	f := &Follower{followed: followed, write: write, next: start, historyEnd: size, serverSize: size,
		ended: info["done"] == "true", info: info}
	for _, st := range followed {
		f.wanted[st] = true
	}
	return f
}

// deliver writes the part of [off, off+len(data)) that is new; it
// reports how many octets it wrote.
func (f *Follower) deliver(st wire.Stream, off uint64, data []byte) (uint64, error) {
	if off > f.next[st] || off+uint64(len(data)) <= f.next[st] {
		return 0, nil
	}
	data = data[f.next[st]-off:]
	if err := f.write(st, data); err != nil {
		return 0, err
	}
	f.next[st] += uint64(len(data))
	return uint64(len(data)), nil
}

// drain delivers buffered live messages that have become contiguous.
func (f *Follower) drain(st wire.Stream) error {
	for {
		off, data, ok := f.reorder[st].first()
		if !ok || off > f.next[st] {
			return nil
		}
		f.reorder[st].pop()
		n, err := f.deliver(st, off, data)
		f.release(data)
		if err != nil {
			return err
		}
		f.live += n
	}
}

// Done reports whether the job ended and every followed stream was
// delivered to its end.
func (f *Follower) Done() bool {
	if len(f.followed) == 0 {
		return f.ended
	}
	for _, st := range f.followed {
		if !f.isFinal[st] || f.next[st] < f.final[st] {
			return false
		}
	}
	return true
}

func (f *Follower) fetch(st wire.Stream, length uint64) Fetch {
	f.inflight[st] = true
	return Fetch{Stream: st, Offset: f.next[st], Length: uint32(min(length, FetchLength))}
}

// Refused applies an ERROR 429 that answered a FETCH: zpd had no slot for
// it (a zpd older than 2026-12-02 freed a FETCH's slot only after its
// FETCH_OK, so following two streams, a FETCH sent on that answer could
// find both taken). The answer does not say which FETCH it refused: every
// stream may be fetched again (what an answer still on its way brings
// twice is trimmed).
func (f *Follower) Refused() {
	for _, st := range f.followed {
		f.inflight[st] = false
	}
}

// Fetches returns the FETCHes to send now, at most one in flight per
// stream. They ask only for what live messages cannot fill: from the
// position to the first buffered publication (or to the end known). What
// the server held at the last FETCH_OK counts only once live publications
// stopped coming (stale) or the job ended: while they flow, the server is
// ahead of us by what is on its way live, and fetching that would fetch
// every octet twice (the fan-out bench's watchers fetched 85% of their
// output so).
func (f *Follower) Fetches() []Fetch {
	var out []Fetch
	for _, st := range f.followed {
		if f.inflight[st] {
			continue
		}
		target := max(f.historyEnd[st], f.liveEnd[st])
		if f.ended || f.stale {
			target = max(target, f.serverSize[st])
		}
		if off, _, ok := f.reorder[st].first(); ok {
			target = min(target, off)
		}
		switch {
		case f.next[st] < target:
			out = append(out, f.fetch(st, target-f.next[st]))
		case f.ended && !f.isFinal[st]:
			out = append(out, f.fetch(st, FetchLength)) // learn the final size
		}
	}
	return out
}

// Data applies the DATA of a FETCH.
func (f *Follower) Data(m *wire.Data) error {
	if !f.followedStream(m.Stream) {
		return nil
	}
	before := f.next[m.Stream]
	if _, err := f.deliver(m.Stream, m.Offset, m.Bytes); err != nil {
		return err
	}
	if h := f.historyEnd[m.Stream]; before < h {
		f.history += min(f.next[m.Stream], h) - before
		f.missed += f.next[m.Stream] - min(f.next[m.Stream], h)
	} else {
		f.missed += f.next[m.Stream] - before
	}
	return f.drain(m.Stream)
}

// FetchOK applies a FETCH's end: the stream may be fetched again.
func (f *Follower) FetchOK(m *wire.FetchOK) {
	if !f.followedStream(m.Stream) {
		return
	}
	f.inflight[m.Stream] = false
	f.serverSize[m.Stream] = m.Size
	if m.Final {
		f.isFinal[m.Stream], f.final[m.Stream] = true, m.Size
	}
}

// Live applies a publication (JOB_OUTPUT, JOB_END): what follows the
// position is delivered, what lies beyond it is kept until the gap is
// filled (up to 8 MiB per stream; beyond, fetching fills it).
func (f *Follower) Live(m wire.Message) error {
	f.quiet, f.stale = 0, false
	switch m := m.(type) {
	case *wire.JobOutput:
		st := m.Stream
		if !f.followedStream(st) {
			f.release(m.Bytes)
			return nil
		}
		f.liveEnd[st] = max(f.liveEnd[st], m.Offset+uint64(len(m.Bytes)))
		if m.Offset > f.next[st] {
			if !f.reorder[st].add(m.Offset, m.Bytes) {
				f.release(m.Bytes)
			}
			return nil
		}
		n, err := f.deliver(st, m.Offset, m.Bytes)
		f.release(m.Bytes)
		if err != nil {
			return err
		}
		f.live += n
		return f.drain(st)
	case *wire.JobEnd:
		f.End(m.Info)
	}
	return nil
}

// Tick is the backstop for publications dropped while we were slow and a
// lost JOB_END, called every second: from the second quiet one on it
// fetches every stream not in flight, and askStatus says the caller should
// ask the job's status (nothing is followed, so no FETCH_OK can say it
// ended) and pass it to End if it did.
func (f *Follower) Tick() (fetches []Fetch, askStatus bool) {
	f.quiet++
	if f.quiet < 2 {
		return nil, false
	}
	f.stale = true
	for _, st := range f.followed {
		if !f.inflight[st] {
			fetches = append(fetches, f.fetch(st, FetchLength))
		}
	}
	return fetches, len(f.followed) == 0
}

// End records that the job ended, with its final description.
func (f *Follower) End(info map[string]string) { f.ended, f.info = true, info }

// Next returns the offsets reached per stream.
func (f *Follower) Next() [3]uint64 { return f.next }

// Info returns the job's latest description.
func (f *Follower) Info() map[string]string { return f.info }

// Stats returns the octets delivered: fetched that existed when following
// started (history), published after and fetched because the live path
// did not deliver them (missed), and delivered from live publications.
func (f *Follower) Stats() (history, missed, live uint64) { return f.history, f.missed, f.live }

func (f *Follower) followedStream(st wire.Stream) bool {
	return int(st) < len(f.wanted) && f.wanted[st]
}

// liveBuffer holds live publications that arrived ahead of the stream
// position, in offset order, up to maxReorder octets (beyond that they are
// dropped: fetching fills the gap).
type liveBuffer struct {
	items []liveItem
	bytes int
}

type liveItem struct {
	off  uint64
	data []byte
}

const maxReorder = 8 << 20

// add keeps data at off and reports whether it did (not when full or a
// duplicate).
func (b *liveBuffer) add(off uint64, data []byte) bool {
	if b.bytes+len(data) > maxReorder {
		return false
	}
	i := len(b.items)
	for i > 0 && b.items[i-1].off > off {
		i--
	}
	if i > 0 && b.items[i-1].off == off {
		return false // a duplicate
	}
	b.items = append(b.items, liveItem{})
	copy(b.items[i+1:], b.items[i:])
	b.items[i] = liveItem{off, data}
	b.bytes += len(data)
	return true
}

func (b *liveBuffer) first() (uint64, []byte, bool) {
	if len(b.items) == 0 {
		return 0, nil, false
	}
	return b.items[0].off, b.items[0].data, true
}

func (b *liveBuffer) pop() {
	b.bytes -= len(b.items[0].data)
	b.items[0] = liveItem{}
	b.items = b.items[1:]
}
