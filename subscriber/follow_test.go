package subscriber

import (
	"bytes"
	"errors"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// followed collects what a Follower delivers per stream.
type followed struct{ out [3]bytes.Buffer }

func (c *followed) write(st wire.Stream, data []byte) error {
	c.out[st].Write(data)
	return nil
}

func newFollowed(start, size [3]uint64, info map[string]string) (*Follower, *followed) {
	c := &followed{}
	return NewFollower([]wire.Stream{wire.Stdout}, start, size, info, c.write), c
}

func output(off uint64, s string) *wire.JobOutput {
	return &wire.JobOutput{Job: "J", Stream: wire.Stdout, Offset: off, Bytes: []byte(s)}
}

// serve answers fetches from log as the broker does (DATA, then FETCH_OK
// with what it holds), with final once the job ended.
func serve(t *testing.T, f *Follower, fetches []Fetch, log string, final bool) {
	t.Helper()
	for _, q := range fetches {
		end := min(q.Offset+uint64(q.Length), uint64(len(log)))
		if q.Offset < end {
			if err := f.Data(&wire.Data{Stream: q.Stream, Offset: q.Offset, Bytes: []byte(log[q.Offset:end])}); err != nil {
				t.Fatal(err)
			}
		}
		f.FetchOK(&wire.FetchOK{Stream: q.Stream, Next: end, Size: uint64(len(log)), Final: final})
	}
}

func TestFollowHistoryThenLive(t *testing.T) {
	f, c := newFollowed([3]uint64{}, [3]uint64{wire.Stdout: 6}, map[string]string{})
	// Live publications that arrive before the history are kept.
	f.Live(output(6, "world "))
	fetches := f.Fetches()
	if len(fetches) != 1 || fetches[0] != (Fetch{Stream: wire.Stdout, Offset: 0, Length: 6}) {
		t.Fatalf("fetches %+v, want the history up to the first live publication", fetches)
	}
	if again := f.Fetches(); len(again) != 0 {
		t.Fatalf("a second FETCH while one is in flight: %+v", again)
	}
	serve(t, f, fetches, "hello world ", false)
	f.Live(output(6, "world ")) // a duplicate
	f.Live(output(12, "bye"))
	if got := c.out[wire.Stdout].String(); got != "hello world bye" {
		t.Fatalf("delivered %q", got)
	}
	if len(f.Fetches()) != 0 {
		t.Fatal("fetching what the live path delivered")
	}
	if h, m, l := f.Stats(); h != 6 || m != 0 || l != 9 {
		t.Fatalf("history %d missed %d live %d", h, m, l)
	}
	if f.Done() {
		t.Fatal("done before the job ended")
	}
	f.Live(&wire.JobEnd{Job: "J", Info: map[string]string{"done": "true", "exit_code": "0"}})
	fetches = f.Fetches()
	if len(fetches) != 1 || fetches[0].Offset != 15 {
		t.Fatalf("after the end: fetches %+v, want one to learn the final size", fetches)
	}
	serve(t, f, fetches, "hello world bye", true)
	if !f.Done() || f.Next()[wire.Stdout] != 15 || f.Info()["exit_code"] != "0" {
		t.Fatalf("done %v next %d info %v", f.Done(), f.Next()[wire.Stdout], f.Info())
	}
}

func TestFollowRepairsAGap(t *testing.T) {
	log := "0123456789abcdefghij"
	f, c := newFollowed([3]uint64{}, [3]uint64{}, map[string]string{})
	f.Live(output(0, log[:5]))
	f.Live(output(10, log[10:15])) // 5..10 was dropped on the XPUB
	fetches := f.Fetches()
	if len(fetches) != 1 || fetches[0].Offset != 5 || fetches[0].Length != 5 {
		t.Fatalf("fetches %+v, want the gap 5..10", fetches)
	}
	serve(t, f, fetches, log[:15], false)
	if got := c.out[wire.Stdout].String(); got != log[:15] {
		t.Fatalf("delivered %q", got)
	}
	if _, m, _ := f.Stats(); m != 5 {
		t.Fatalf("missed %d, want the 5 octets fetched", m)
	}
}

func TestFollowTickFetchesWhenQuiet(t *testing.T) {
	f, c := newFollowed([3]uint64{wire.Stdout: 3}, [3]uint64{wire.Stdout: 3}, map[string]string{})
	if fetches, ask := f.Tick(); len(fetches) != 0 || ask {
		t.Fatalf("first quiet tick: %+v %v", fetches, ask)
	}
	fetches, ask := f.Tick()
	if len(fetches) != 1 || fetches[0].Offset != 3 || fetches[0].Length != FetchLength || ask {
		t.Fatalf("second quiet tick: %+v %v", fetches, ask)
	}
	// The server holds more than was published to us: fetched, now that
	// publications stopped.
	serve(t, f, fetches, "abcdefgh", false)
	if got := c.out[wire.Stdout].String(); got != "defgh" {
		t.Fatalf("delivered %q", got)
	}
	// A live publication resets the count.
	f.Live(output(8, "i"))
	if fetches, _ := f.Tick(); len(fetches) != 0 {
		t.Fatalf("fetching right after a publication: %+v", fetches)
	}
}

func TestFollowNothingAsksStatus(t *testing.T) {
	f := NewFollower(nil, [3]uint64{}, [3]uint64{}, map[string]string{}, nil)
	f.Tick()
	if _, ask := f.Tick(); !ask || f.Done() {
		t.Fatalf("ask %v done %v", ask, f.Done())
	}
	f.End(map[string]string{"done": "true"})
	if !f.Done() {
		t.Fatal("not done after the end")
	}
	if !NewFollower(nil, [3]uint64{}, [3]uint64{}, map[string]string{"done": "true"}, nil).Done() {
		t.Fatal("a job that had ended is followed")
	}
}

func TestFollowBoundsReorder(t *testing.T) {
	f, c := newFollowed([3]uint64{}, [3]uint64{}, map[string]string{})
	big := string(make([]byte, maxReorder/2))
	f.Live(output(1, big))
	f.Live(output(1+uint64(len(big)), big))
	f.Live(output(1+2*uint64(len(big)), "x")) // over the bound: dropped
	if b := f.reorder[wire.Stdout].bytes; b > maxReorder {
		t.Fatalf("%d octets held", b)
	}
	f.Live(output(0, "a"))
	if n := c.out[wire.Stdout].Len(); n != 1+2*len(big) {
		t.Fatalf("delivered %d octets", n)
	}
}

func TestFollowWriteErrorStops(t *testing.T) {
	boom := errors.New("disk full")
	f := NewFollower([]wire.Stream{wire.Stderr}, [3]uint64{}, [3]uint64{}, map[string]string{},
		func(wire.Stream, []byte) error { return boom })
	err := f.Live(&wire.JobOutput{Stream: wire.Stderr, Bytes: []byte("x")})
	if !errors.Is(err, boom) || f.Next()[wire.Stderr] != 0 {
		t.Fatalf("%v, next %d", err, f.Next()[wire.Stderr])
	}
	// A stream not followed is ignored, whatever the server sends.
	if err := f.Data(&wire.Data{Stream: wire.Stdout, Bytes: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}

// A refused FETCH (ERROR 429 from an older zpd, following two streams)
// is asked again, and the follower completes.
func TestFollowRefusedFetch(t *testing.T) {
	const size = 3<<20 + 100
	log := bytes.Repeat([]byte("abcdefgh"), size/8+1)[:size]
	c := &followed{}
	f := NewFollower([]wire.Stream{wire.Stdout, wire.Stderr}, [3]uint64{}, [3]uint64{wire.Stdout: size, wire.Stderr: size}, map[string]string{"done": "true"}, c.write)
	fetches := f.Fetches()
	if len(fetches) != 2 || fetches[0].Stream != wire.Stdout || fetches[1].Stream != wire.Stderr {
		t.Fatalf("fetches %+v, want one per stream", fetches)
	}
	if again := f.Fetches(); len(again) != 0 {
		t.Fatalf("a second FETCH for a stream: %+v", again)
	}
	f.Refused() // the stderr one was refused; stdout's answer is on its way
	again := f.Fetches()
	if len(again) != 2 {
		t.Fatalf("after a refusal: fetches %+v, want both streams again", again)
	}
	serve(t, f, fetches[:1], string(log), true)
	serve(t, f, again, string(log), true)
	for range 10 {
		next := f.Fetches()
		if len(next) == 0 {
			break
		}
		serve(t, f, next, string(log), true)
	}
	if !bytes.Equal(c.out[wire.Stdout].Bytes(), log) || !bytes.Equal(c.out[wire.Stderr].Bytes(), log) || !f.Done() {
		t.Fatalf("delivered %d and %d octets (done %v), want %d each", c.out[wire.Stdout].Len(), c.out[wire.Stderr].Len(), f.Done(), size)
	}
}

// TestFollowReleasesLivePayloads: each live payload is handed to Release
// exactly once, and only when the Follower holds it no more: one kept for
// reordering not before it is written.
func TestFollowReleasesLivePayloads(t *testing.T) {
	f, c := newFollowed([3]uint64{}, [3]uint64{}, map[string]string{})
	released := map[*byte]int{}
	f.Release = func(b []byte) { released[&b[0]]++ }
	early := output(3, "def")
	f.Live(early) // ahead of next: kept
	if released[&early.Bytes[0]] != 0 {
		t.Fatal("released a payload still held for reordering")
	}
	first := output(0, "abc")
	f.Live(first) // written, then early drained
	dup := output(0, "abc")
	f.Live(dup)
	other := &wire.JobOutput{Job: "J", Stream: wire.Stderr, Offset: 0, Bytes: []byte("x")}
	f.Live(other) // not followed
	for _, m := range []*wire.JobOutput{early, first, dup, other} {
		if n := released[&m.Bytes[0]]; n != 1 {
			t.Errorf("payload at %d (%s) released %d times, want once", m.Offset, m.Stream, n)
		}
	}
	if got := c.out[wire.Stdout].String(); got != "abcdef" {
		t.Fatalf("delivered %q", got)
	}
	// Not kept (the reorder buffer is full): released at once.
	big := &wire.JobOutput{Job: "J", Stream: wire.Stdout, Offset: 100, Bytes: make([]byte, maxReorder+1)}
	f.Live(big)
	if released[&big.Bytes[0]] != 1 {
		t.Fatal("a payload the reorder buffer refused was not released")
	}
}
