package publisher

import (
	"io"
	"strconv"

	"github.com/zpipes/zp/internal/wire"
)

// A background job's output reaches followers two ways (docs/PROTOCOL.md,
// "Background jobs"): live, as JOB_OUTPUT publications on the broker's
// XPUB under the job's secret topic, and on request, as the DATA of a
// FETCH over the ROUTER. This file frames both from the job's log files;
// the broker owns the sockets and sends what it returns.

// jobChunk is the most one JOB_OUTPUT publication carries.
const jobChunk = 128 << 10

// MaxFetch bounds what one FETCH returns: with two fetches per session
// in flight, what a follower can make zpd queue stays small.
const MaxFetch = 256 << 10

// JobOutput publishes a job's output logs from where publishing stands:
// each call to Next frames what one log gained since.
type JobOutput struct {
	job   string
	topic string
	logs  [3]io.ReaderAt // [wire.Stdout], [wire.Stderr]
	pos   [3]uint64
	buf   []byte
}

// NewJobOutput publishes job's logs under topic from the offsets pos
// (what exists before is history, fetched rather than published).
func NewJobOutput(job, topic string, stdout, stderr io.ReaderAt, pos [3]uint64) *JobOutput {
	return &JobOutput{job: job, topic: topic, logs: [3]io.ReaderAt{wire.Stdout: stdout, wire.Stderr: stderr},
		pos: pos, buf: make([]byte, jobChunk)}
}

// Next reads what stream st's log holds past the position, up to one
// publication, and returns its frames (topic, JOB_OUTPUT, data), the
// octets it carries and the new position; n is 0 when nothing is new.
// The frames are the caller's: the publisher may queue them.
func (p *JobOutput) Next(st wire.Stream) (frames [][]byte, n int, pos uint64) {
	n, _ = p.logs[st].ReadAt(p.buf, int64(p.pos[st]))
	if n == 0 {
		return nil, 0, p.pos[st]
	}
	data := append([]byte(nil), p.buf[:n]...)
	hdr := wire.Encode(nil, &wire.JobOutput{Job: p.job, Stream: st, Offset: p.pos[st]})
	p.pos[st] += uint64(n)
	return [][]byte{JobTopic(p.topic, st), hdr, data}, n, p.pos[st]
}

// JobTopic is the topic of a job's stream st: a follower subscribes to
// the streams it wants.
func JobTopic(topic string, st wire.Stream) []byte {
	return []byte(topic + strconv.Itoa(int(st)))
}

// JobEnd returns the frames of the publication that says the job ended,
// with its final description.
func JobEnd(job, topic string, info map[string]string) [][]byte {
	return [][]byte{[]byte(topic + "x"), wire.Encode(nil, &wire.JobEnd{Job: job, Info: info})}
}

// ServeFetch answers a FETCH from log, which holds size octets readable
// now: DATA messages of at most chunk octets each, from m.Offset (capped
// at size) for at most MaxFetch octets. It returns the offset reached,
// for the FETCH_OK, and stops early when log cannot be read.
func ServeFetch(log io.ReaderAt, m *wire.Fetch, size, chunk uint64, send func(*wire.Data)) (next uint64) {
	off := min(m.Offset, size)
	end := min(off+uint64(min(m.Length, MaxFetch)), size)
	for off < end {
		buf := make([]byte, min(chunk, end-off))
		k, err := log.ReadAt(buf, int64(off))
		if k > 0 {
			send(&wire.Data{Channel: m.Channel, Stream: m.Stream, Offset: off, Bytes: buf[:k]})
			off += uint64(k)
		}
		if err != nil {
			break
		}
	}
	return off
}
