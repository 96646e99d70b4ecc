package publisher

import (
	"bytes"
	"strings"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// growing is a log a job is still writing: ReadAt sees what was written.
type growing struct{ bytes.Buffer }

func (g *growing) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(g.Bytes()).ReadAt(p, off)
}

func TestJobOutputPublishesWhatTheLogsGain(t *testing.T) {
	var out, errs growing
	out.WriteString("history\n")
	p := NewJobOutput("J1", "j/secret/", &out, &errs, [3]uint64{wire.Stdout: 8})
	if frames, n, _ := p.Next(wire.Stdout); frames != nil || n != 0 {
		t.Fatalf("history published: %d octets", n)
	}
	out.WriteString(strings.Repeat("a", jobChunk+5))
	errs.WriteString("oops")
	var got []byte
	for _, want := range []struct{ off, n int }{{8, jobChunk}, {8 + jobChunk, 5}} {
		frames, n, pos := p.Next(wire.Stdout)
		if n != want.n || pos != uint64(want.off+want.n) || len(frames) != 3 || string(frames[0]) != "j/secret/1" {
			t.Fatalf("publication of %d octets to %d, %d frames, topic %q; want %d at %d", n, pos, len(frames), frames[0], want.n, want.off)
		}
		m, err := wire.Decode(frames[1:])
		if err != nil {
			t.Fatal(err)
		}
		jo := m.(*wire.JobOutput)
		if jo.Job != "J1" || jo.Stream != wire.Stdout || jo.Offset != uint64(want.off) {
			t.Fatalf("JOB_OUTPUT %+v, want offset %d", jo, want.off)
		}
		got = append(got, jo.Bytes...)
	}
	if string(got) != strings.Repeat("a", jobChunk+5) {
		t.Fatal("the publications do not carry what the log gained")
	}
	if _, n, _ := p.Next(wire.Stdout); n != 0 {
		t.Fatalf("%d octets published twice", n)
	}
	frames, n, _ := p.Next(wire.Stderr)
	if n != 4 || string(frames[0]) != "j/secret/2" || string(frames[2]) != "oops" {
		t.Fatalf("stderr: %d octets %q", n, frames)
	}
	// The publication keeps its data when the reader's buffer is reused.
	out.WriteString("zz")
	p.Next(wire.Stdout)
	if string(frames[2]) != "oops" {
		t.Fatal("a publication's data changed after the next read")
	}
}

func TestJobEndTopic(t *testing.T) {
	frames := JobEnd("J1", "j/secret/", map[string]string{"exit_code": "3"})
	m, err := wire.Decode(frames[1:])
	if string(frames[0]) != "j/secret/x" || err != nil || m.(*wire.JobEnd).Info["exit_code"] != "3" {
		t.Fatalf("%q %v %v", frames[0], m, err)
	}
}

func TestServeFetch(t *testing.T) {
	log := bytes.NewReader(bytes.Repeat([]byte("0123456789"), 100<<10)) // 1000 KiB
	cases := []struct {
		off, length, size uint64
		next              uint64
	}{
		{0, 100, 1000, 100},
		{990, 100, 1000, 1000},                     // capped at what is readable
		{2000, 100, 1000, 1000},                    // beyond: nothing, the size
		{0, 1 << 20, 1 << 20, MaxFetch},            // one FETCH returns at most MaxFetch
		{1000<<10 - 10, 100, 10 << 20, 1000 << 10}, // the log holds less than size says: what it holds
	}
	for _, c := range cases {
		var next uint64 = c.off
		if c.off > c.size {
			next = c.size
		}
		got := ServeFetch(log, &wire.Fetch{Channel: 7, Stream: wire.Stderr, Offset: c.off, Length: uint32(c.length)}, c.size, 64<<10,
			func(d *wire.Data) {
				if d.Channel != 7 || d.Stream != wire.Stderr || d.Offset != next || len(d.Bytes) > 64<<10 {
					t.Fatalf("%+v: DATA channel %d stream %d offset %d len %d", c, d.Channel, d.Stream, d.Offset, len(d.Bytes))
				}
				want := make([]byte, len(d.Bytes))
				log.ReadAt(want, int64(d.Offset))
				if !bytes.Equal(d.Bytes, want) {
					t.Fatalf("%+v: DATA at %d is not the log's", c, d.Offset)
				}
				next += uint64(len(d.Bytes))
			})
		if got != c.next || next != c.next {
			t.Errorf("%+v: next %d (DATA up to %d), want %d", c, got, next, c.next)
		}
	}
}
