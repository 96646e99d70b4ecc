package wire

import (
	"fmt"
)

// MsgID identifies a message type (the third octet of a header frame).
type MsgID uint8

// Message ids, as in docs/PROTOCOL.md.
const (
	IDOpen   MsgID = 0x01
	IDOpenOK MsgID = 0x02
	IDPing   MsgID = 0x03
	IDPong   MsgID = 0x04
	IDClose  MsgID = 0x05
	IDError  MsgID = 0x06
	IDOK     MsgID = 0x07

	IDExec   MsgID = 0x10
	IDExecOK MsgID = 0x11
	IDData   MsgID = 0x12
	IDAck    MsgID = 0x13
	IDSignal MsgID = 0x14
	IDExit   MsgID = 0x15
	IDFin    MsgID = 0x16
)

var names = map[MsgID]string{
	IDOpen: "OPEN", IDOpenOK: "OPEN_OK", IDPing: "PING", IDPong: "PONG", IDClose: "CLOSE",
	IDError: "ERROR", IDOK: "OK", IDExec: "EXEC", IDExecOK: "EXEC_OK", IDData: "DATA",
	IDAck: "ACK", IDSignal: "SIGNAL", IDExit: "EXIT", IDFin: "FIN",
}

func (id MsgID) String() string {
	if n, ok := names[id]; ok {
		return n
	}
	return fmt.Sprintf("MSG(0x%02x)", uint8(id))
}

var registry = map[MsgID]func() Message{
	IDOpen:   func() Message { return new(Open) },
	IDOpenOK: func() Message { return new(OpenOK) },
	IDPing:   func() Message { return new(Ping) },
	IDPong:   func() Message { return new(Pong) },
	IDClose:  func() Message { return new(Close) },
	IDError:  func() Message { return new(Error) },
	IDOK:     func() Message { return new(OK) },
	IDExec:   func() Message { return new(Exec) },
	IDExecOK: func() Message { return new(ExecOK) },
	IDData:   func() Message { return new(Data) },
	IDAck:    func() Message { return new(Ack) },
	IDSignal: func() Message { return new(Signal) },
	IDExit:   func() Message { return new(Exit) },
	IDFin:    func() Message { return new(Fin) },
}

// Open starts a session, or resumes one when Session is set.
type Open struct {
	Version   uint16
	User      string // the account to act as
	Session   string // session to resume; empty for a new session
	Token     []byte // the resume token from OPEN_OK; empty for a new session
	Heartbeat uint32 // client's heartbeat interval, milliseconds (0: server default)
	Client    string // free text, e.g. "zp/1.0"
}

func (*Open) ID() MsgID { return IDOpen }
func (m *Open) encode(e *encoder) {
	e.u16(m.Version)
	e.str(m.User)
	e.str(m.Session)
	e.long(m.Token)
	e.u32(m.Heartbeat)
	e.str(m.Client)
}
func (m *Open) decode(d *decoder) {
	m.Version = d.u16("version")
	m.User = d.str("user")
	m.Session = d.str("session")
	m.Token = d.long("token")
	m.Heartbeat = d.u32("heartbeat")
	m.Client = d.str("client")
}

// OpenOK accepts a session.
type OpenOK struct {
	Version   uint16
	Session   string
	Token     []byte // secret for resuming this session; 16+ random octets
	Heartbeat uint32 // interval both sides use, milliseconds
	Timeout   uint32 // silence after which a peer is presumed dead, ms
	Grace     uint32 // how long the server keeps a detached session, ms
	Resumed   bool
	Server    string // host name and software, free text
}

func (*OpenOK) ID() MsgID { return IDOpenOK }
func (m *OpenOK) encode(e *encoder) {
	e.u16(m.Version)
	e.str(m.Session)
	e.long(m.Token)
	e.u32(m.Heartbeat)
	e.u32(m.Timeout)
	e.u32(m.Grace)
	e.u8(b2u(m.Resumed))
	e.str(m.Server)
}
func (m *OpenOK) decode(d *decoder) {
	m.Version = d.u16("version")
	m.Session = d.str("session")
	m.Token = d.long("token")
	m.Heartbeat = d.u32("heartbeat")
	m.Timeout = d.u32("timeout")
	m.Grace = d.u32("grace")
	m.Resumed = d.bool("resumed")
	m.Server = d.str("server")
}

// Ping asks for a Pong; either side may send it.
type Ping struct{ Seq uint64 }

func (*Ping) ID() MsgID           { return IDPing }
func (m *Ping) encode(e *encoder) { e.u64(m.Seq) }
func (m *Ping) decode(d *decoder) { m.Seq = d.u64("seq") }

// Pong answers a Ping with its Seq.
type Pong struct{ Seq uint64 }

func (*Pong) ID() MsgID           { return IDPong }
func (m *Pong) encode(e *encoder) { e.u64(m.Seq) }
func (m *Pong) decode(d *decoder) { m.Seq = d.u64("seq") }

// Close ends the session; the server drops it and its synchronous channels.
type Close struct{}

func (*Close) ID() MsgID         { return IDClose }
func (*Close) encode(e *encoder) {}
func (*Close) decode(d *decoder) {}

// OK acknowledges a request on a channel that needs no other answer.
type OK struct{ Channel uint32 }

func (*OK) ID() MsgID           { return IDOK }
func (m *OK) encode(e *encoder) { e.u32(m.Channel) }
func (m *OK) decode(d *decoder) { m.Channel = d.u32("channel") }

// Stream names a byte stream of a channel.
type Stream uint8

// Streams of an exec channel.
const (
	Stdin  Stream = 0
	Stdout Stream = 1
	Stderr Stream = 2
)

func (s Stream) String() string {
	switch s {
	case Stdin:
		return "stdin"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream%d", uint8(s))
}

// Exec flags.
const (
	ExecAsync uint8 = 1 << 0 // start a background job; the reply carries its id
	ExecStdin uint8 = 1 << 1 // the client sends stdin; otherwise stdin is /dev/null
)

// Exec runs a command.
type Exec struct {
	Channel uint32
	Flags   uint8
	Window  uint32   // credit the client grants for each output stream, octets
	Argv    []string // argv[0] is looked up in the remote PATH
	Env     map[string]string
	Dir     string // working directory; empty: the user's home
	// With ExecSharedStdin (version 2): the publication that carries the
	// command's stdin, the key of its records and their plaintext size.
	Topic  string
	Key    []byte
	Record uint32
}

func (*Exec) ID() MsgID { return IDExec }
func (m *Exec) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Flags)
	e.u32(m.Window)
	e.strs(m.Argv)
	e.dict(m.Env)
	e.longstr(m.Dir)
	if m.Flags&ExecSharedStdin != 0 {
		e.str(m.Topic)
		e.long(m.Key)
		e.u32(m.Record)
	}
}
func (m *Exec) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Flags = d.u8("flags")
	m.Window = d.u32("window")
	m.Argv = d.strs("argv")
	m.Env = d.dict("env")
	m.Dir = d.longstr("dir")
	if m.Flags&ExecSharedStdin != 0 {
		m.Topic = d.str("topic")
		m.Key = d.long("key")
		m.Record = d.u32("record")
	}
}
func (m *Exec) validate() error {
	if len(m.Argv) == 0 || m.Argv[0] == "" {
		return fmt.Errorf("%w: empty argv", ErrInvalid)
	}
	if m.Flags&ExecSharedStdin != 0 {
		switch {
		case m.Flags&(ExecStdin|ExecAsync) != 0:
			return fmt.Errorf("%w: shared stdin with flags %#x", ErrInvalid, m.Flags)
		case len(m.Key) != 32:
			return fmt.Errorf("%w: shared stdin key of %d octets", ErrInvalid, len(m.Key))
		case m.Record == 0 || m.Record > MaxRecord:
			return fmt.Errorf("%w: shared stdin record of %d octets", ErrInvalid, m.Record)
		case m.Topic == "":
			return fmt.Errorf("%w: shared stdin without a topic", ErrInvalid)
		}
	}
	return nil
}

// ExecOK says the command started.
type ExecOK struct {
	Channel uint32
	Job     string // job id (a NUID)
	PID     uint32
	Window  uint32 // credit the server grants for stdin, octets
}

func (*ExecOK) ID() MsgID { return IDExecOK }
func (m *ExecOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
	e.u32(m.PID)
	e.u32(m.Window)
}
func (m *ExecOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
	m.PID = d.u32("pid")
	m.Window = d.u32("window")
}

// Data flags.
const DataEOF uint8 = 1 << 0

// Data carries the octets of a stream from Offset on; its payload travels
// in the second frame. EOF marks the end of the stream (the payload, if
// any, is its last part).
type Data struct {
	Channel uint32
	Stream  Stream
	Offset  uint64
	Flags   uint8
	Bytes   []byte
}

func (*Data) ID() MsgID             { return IDData }
func (m *Data) Payload() []byte     { return m.Bytes }
func (m *Data) setPayload(b []byte) { m.Bytes = b }
func (m *Data) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(uint8(m.Stream))
	e.u64(m.Offset)
	e.u8(m.Flags)
}
func (m *Data) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Stream = Stream(d.u8("stream"))
	m.Offset = d.u64("offset")
	m.Flags = d.u8("flags")
}
func (m *Data) validate() error {
	if m.Offset > 1<<62 {
		return fmt.Errorf("%w: offset", ErrInvalid)
	}
	return nil
}

// EOF reports whether m ends its stream.
func (m *Data) EOF() bool { return m.Flags&DataEOF != 0 }

// Ack acknowledges a stream up to Offset (every octet before it arrived and
// was consumed) and grants credit: the sender may send octets below Limit.
type Ack struct {
	Channel uint32
	Stream  Stream
	Offset  uint64
	Limit   uint64
}

func (*Ack) ID() MsgID { return IDAck }
func (m *Ack) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(uint8(m.Stream))
	e.u64(m.Offset)
	e.u64(m.Limit)
}
func (m *Ack) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Stream = Stream(d.u8("stream"))
	m.Offset = d.u64("offset")
	m.Limit = d.u64("limit")
}
func (m *Ack) validate() error {
	if m.Limit < m.Offset {
		return fmt.Errorf("%w: limit below offset", ErrInvalid)
	}
	return nil
}

// Signal delivers a signal to a channel's process group. Name is the
// signal's name without "SIG" ("INT", "TERM", "HUP", …), portable across
// systems.
type Signal struct {
	Channel uint32
	Name    string
}

func (*Signal) ID() MsgID { return IDSignal }
func (m *Signal) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Name)
}
func (m *Signal) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Name = d.str("name")
}

// ExitStatus says how a command ended.
type ExitStatus uint8

// Exit statuses.
const (
	Exited        ExitStatus = 0 // Code is the exit code
	Signaled      ExitStatus = 1 // Code is the signal number
	FailedToStart ExitStatus = 2 // Code is 127 (not found) or 126 (not executable)
	Lost          ExitStatus = 3 // the session expired; the command got SIGHUP
)

// Exit reports the end of a command, after the last DATA of its output
// streams.
type Exit struct {
	Channel uint32
	Status  ExitStatus
	Code    uint32
	Message string // human-readable detail, e.g. "sh: command not found"
}

func (*Exit) ID() MsgID { return IDExit }
func (m *Exit) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(uint8(m.Status))
	e.u32(m.Code)
	e.longstr(m.Message)
}
func (m *Exit) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Status = ExitStatus(d.u8("status"))
	m.Code = d.u32("code")
	m.Message = d.longstr("message")
}
func (m *Exit) validate() error {
	if m.Status > Lost {
		return fmt.Errorf("%w: exit status %d", ErrInvalid, m.Status)
	}
	return nil
}

// Fin closes a channel: the sender holds no more state for it. The client
// sends it after EXIT (or to abandon a channel); the server frees it.
type Fin struct{ Channel uint32 }

func (*Fin) ID() MsgID           { return IDFin }
func (m *Fin) encode(e *encoder) { e.u32(m.Channel) }
func (m *Fin) decode(d *decoder) { m.Channel = d.u32("channel") }

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func (d *decoder) bool(f string) bool {
	v := d.u8(f)
	if v > 1 {
		d.fail(ErrInvalid)
	}
	return v == 1
}

// SoftwareVersion is zp's release, reported in OPEN_OK and --version.
const SoftwareVersion = "0.1.0"

// ChannelOf returns the channel a message belongs to, and false for
// session-level messages (OPEN, PING, …) and publications.
func ChannelOf(m Message) (uint32, bool) {
	switch m := m.(type) {
	case *Error:
		return m.Channel, m.Channel != 0
	case *OK:
		return m.Channel, true
	case *Exec:
		return m.Channel, true
	case *ExecOK:
		return m.Channel, true
	case *Data:
		return m.Channel, true
	case *Ack:
		return m.Channel, true
	case *Signal:
		return m.Channel, true
	case *Exit:
		return m.Channel, true
	case *Fin:
		return m.Channel, true
	case *Jobs:
		return m.Channel, true
	case *JobList:
		return m.Channel, true
	case *JobStatus:
		return m.Channel, true
	case *JobInfo:
		return m.Channel, true
	case *JobKill:
		return m.Channel, true
	case *JobRm:
		return m.Channel, true
	case *Follow:
		return m.Channel, true
	case *FollowOK:
		return m.Channel, true
	case *Fetch:
		return m.Channel, true
	case *FetchOK:
		return m.Channel, true
	case *Send:
		return m.Channel, true
	case *SendOK:
		return m.Channel, true
	case *Recv:
		return m.Channel, true
	case *File:
		return m.Channel, true
	case *FileOK:
		return m.Channel, true
	case *Chunk:
		return m.Channel, true
	case *Commit:
		return m.Channel, true
	case *FileDone:
		return m.Channel, true
	case *End:
		return m.Channel, true
	case *Batch:
		return m.Channel, true
	case *Fleet:
		return m.Channel, true
	case *FleetList:
		return m.Channel, true
	case *Tunnel:
		return m.Channel, true
	case *TunnelOK:
		return m.Channel, true
	case *Publish:
		return m.Channel, true
	case *PublishOK:
		return m.Channel, true
	case *PubFetch:
		return m.Channel, true
	case *PubFetchOK:
		return m.Channel, true
	case *FleetJob:
		return m.Channel, true
	case *FleetJobOK:
		return m.Channel, true
	case *FleetJobs:
		return m.Channel, true
	case *FleetJobList:
		return m.Channel, true
	case *Bcast:
		return m.Channel, true
	case *BcastNeed:
		return m.Channel, true
	case *BcastGo:
		return m.Channel, true
	case *BcastChunks:
		return m.Channel, true
	case *BcastNeedChunks:
		return m.Channel, true
	case *BcastGoChunks:
		return m.Channel, true
	case *BcastProgress:
		return m.Channel, true
	case *BcastDone:
		return m.Channel, true
	case *BcastTree:
		return m.Channel, true
	case *BcastTreeOK:
		return m.Channel, true
	}
	return 0, false
}
