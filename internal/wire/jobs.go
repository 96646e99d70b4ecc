package wire

import "fmt"

// Job message ids (docs/PROTOCOL.md, section "Jobs").
const (
	IDJobs      MsgID = 0x20
	IDJobList   MsgID = 0x21
	IDJobStatus MsgID = 0x22
	IDJobInfo   MsgID = 0x23
	IDJobKill   MsgID = 0x24
	IDJobRm     MsgID = 0x25
	IDFollow    MsgID = 0x26
	IDFollowOK  MsgID = 0x27
	IDFetch     MsgID = 0x28
	IDFetchOK   MsgID = 0x29
	IDJobOutput MsgID = 0x2A
	IDJobEnd    MsgID = 0x2B
)

func init() {
	for id, n := range map[MsgID]string{IDJobs: "JOBS", IDJobList: "JOB_LIST", IDJobStatus: "JOB_STATUS",
		IDJobInfo: "JOB_INFO", IDJobKill: "JOB_KILL", IDJobRm: "JOB_RM", IDFollow: "FOLLOW",
		IDFollowOK: "FOLLOW_OK", IDFetch: "FETCH", IDFetchOK: "FETCH_OK", IDJobOutput: "JOB_OUTPUT",
		IDJobEnd: "JOB_END"} {
		names[id] = n
	}
	registry[IDJobs] = func() Message { return new(Jobs) }
	registry[IDJobList] = func() Message { return new(JobList) }
	registry[IDJobStatus] = func() Message { return new(JobStatus) }
	registry[IDJobInfo] = func() Message { return new(JobInfo) }
	registry[IDJobKill] = func() Message { return new(JobKill) }
	registry[IDJobRm] = func() Message { return new(JobRm) }
	registry[IDFollow] = func() Message { return new(Follow) }
	registry[IDFollowOK] = func() Message { return new(FollowOK) }
	registry[IDFetch] = func() Message { return new(Fetch) }
	registry[IDFetchOK] = func() Message { return new(FetchOK) }
	registry[IDJobOutput] = func() Message { return new(JobOutput) }
	registry[IDJobEnd] = func() Message { return new(JobEnd) }
}

// Jobs lists the caller's jobs.
type Jobs struct{ Channel uint32 }

func (*Jobs) ID() MsgID           { return IDJobs }
func (m *Jobs) encode(e *encoder) { e.u32(m.Channel) }
func (m *Jobs) decode(d *decoder) { m.Channel = d.u32("channel") }

// JobList answers JOBS: one dictionary per job, oldest first.
type JobList struct {
	Channel uint32
	Jobs    []map[string]string
}

func (*JobList) ID() MsgID { return IDJobList }
func (m *JobList) encode(e *encoder) {
	e.u32(m.Channel)
	e.dicts(m.Jobs)
}
func (m *JobList) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Jobs = d.dicts("jobs")
}

// JobStatus asks for one job's details.
type JobStatus struct {
	Channel uint32
	Job     string
}

func (*JobStatus) ID() MsgID { return IDJobStatus }
func (m *JobStatus) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
}
func (m *JobStatus) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
}

// JobInfo describes a job (keys in docs/PROTOCOL.md).
type JobInfo struct {
	Channel uint32
	Info    map[string]string
}

func (*JobInfo) ID() MsgID { return IDJobInfo }
func (m *JobInfo) encode(e *encoder) {
	e.u32(m.Channel)
	e.dict(m.Info)
}
func (m *JobInfo) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Info = d.dict("info")
}

// JobKill sends a signal to a job's process group.
type JobKill struct {
	Channel uint32
	Job     string
	Signal  string
}

func (*JobKill) ID() MsgID { return IDJobKill }
func (m *JobKill) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
	e.str(m.Signal)
}
func (m *JobKill) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
	m.Signal = d.str("signal")
}

// JobRm forgets a finished job and deletes its output.
type JobRm struct {
	Channel uint32
	Job     string
}

func (*JobRm) ID() MsgID { return IDJobRm }
func (m *JobRm) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
}
func (m *JobRm) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
}

// Follow streams, as a bit set.
const (
	FollowStdout uint8 = 1 << 0
	FollowStderr uint8 = 1 << 1
)

// Follow asks for the topic on which a job's output is published.
type Follow struct {
	Channel uint32
	Job     string
	Streams uint8
}

func (*Follow) ID() MsgID { return IDFollow }
func (m *Follow) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
	e.u8(m.Streams)
}
func (m *Follow) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
	m.Streams = d.u8("streams")
}

// FollowOK hands out the job's topic (a secret) and where it is published.
type FollowOK struct {
	Channel uint32
	Topic   string // subscribe to Topic, or Topic+"1"/"2"/"x" for one stream
	Publish string // ":PORT" on the same host, or "ipc:///PATH"
	Info    map[string]string
}

func (*FollowOK) ID() MsgID { return IDFollowOK }
func (m *FollowOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Topic)
	e.str(m.Publish)
	e.dict(m.Info)
}
func (m *FollowOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Topic = d.str("topic")
	m.Publish = d.str("publish")
	m.Info = d.dict("info")
}

// Fetch asks for up to Length octets of a job's stream from Offset; they
// come as DATA messages on the channel, then FETCH_OK.
type Fetch struct {
	Channel uint32
	Job     string
	Stream  Stream
	Offset  uint64
	Length  uint32
}

func (*Fetch) ID() MsgID { return IDFetch }
func (m *Fetch) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
	e.u8(uint8(m.Stream))
	e.u64(m.Offset)
	e.u32(m.Length)
}
func (m *Fetch) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
	m.Stream = Stream(d.u8("stream"))
	m.Offset = d.u64("offset")
	m.Length = d.u32("length")
}
func (m *Fetch) validate() error {
	if m.Stream != Stdout && m.Stream != Stderr {
		return fmt.Errorf("%w: stream %d", ErrInvalid, m.Stream)
	}
	return nil
}

// FetchOK ends the DATA of a FETCH: Next is the offset after the last octet
// sent, Size the stream's current size, Final whether Size will not grow
// (the job ended).
type FetchOK struct {
	Channel uint32
	Stream  Stream
	Next    uint64
	Size    uint64
	Final   bool
}

func (*FetchOK) ID() MsgID { return IDFetchOK }
func (m *FetchOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(uint8(m.Stream))
	e.u64(m.Next)
	e.u64(m.Size)
	e.u8(b2u(m.Final))
}
func (m *FetchOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Stream = Stream(d.u8("stream"))
	m.Next = d.u64("next")
	m.Size = d.u64("size")
	m.Final = d.bool("final")
}

// JobOutput is published on the XPUB socket: octets of a job's stream from
// Offset, in the data frame. It is preceded by the topic frame.
type JobOutput struct {
	Job    string
	Stream Stream
	Offset uint64
	Bytes  []byte
}

func (*JobOutput) ID() MsgID             { return IDJobOutput }
func (m *JobOutput) Payload() []byte     { return m.Bytes }
func (m *JobOutput) setPayload(b []byte) { m.Bytes = b }
func (m *JobOutput) encode(e *encoder) {
	e.str(m.Job)
	e.u8(uint8(m.Stream))
	e.u64(m.Offset)
}
func (m *JobOutput) decode(d *decoder) {
	m.Job = d.str("job")
	m.Stream = Stream(d.u8("stream"))
	m.Offset = d.u64("offset")
}

// JobEnd is published when a job ends: its final description.
type JobEnd struct {
	Job  string
	Info map[string]string
}

func (*JobEnd) ID() MsgID { return IDJobEnd }
func (m *JobEnd) encode(e *encoder) {
	e.str(m.Job)
	e.dict(m.Info)
}
func (m *JobEnd) decode(d *decoder) {
	m.Job = d.str("job")
	m.Info = d.dict("info")
}
