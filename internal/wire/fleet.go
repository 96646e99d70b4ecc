package wire

import "fmt"

// Fleet message ids (docs/PROTOCOL.md, section 13; protocol version 2).
const (
	IDJoin         MsgID = 0x50
	IDJoinOK       MsgID = 0x51
	IDFleet        MsgID = 0x52
	IDFleetList    MsgID = 0x53
	IDTunnel       MsgID = 0x54
	IDTunnelOK     MsgID = 0x55
	IDPublish      MsgID = 0x56
	IDPublishOK    MsgID = 0x57
	IDPubData      MsgID = 0x58
	IDPubFetch     MsgID = 0x59
	IDPubFetchOK   MsgID = 0x5A
	IDFleetJob     MsgID = 0x5B
	IDFleetJobOK   MsgID = 0x5C
	IDFleetJobs    MsgID = 0x5D
	IDFleetJobList MsgID = 0x5E
)

// Tunnel ports: which of the agent's sockets a tunnel reaches.
const (
	PortControl uint8 = 0 // the ROUTER (P)
	PortPublish uint8 = 1 // the XPUB (P+1)
)

// Tunnel streams: stream 0 carries octets from the opener (the client) to
// the agent, stream 1 from the agent back.
const (
	TunnelUp   Stream = 0
	TunnelDown Stream = 1
)

// ExecSharedStdin is EXEC flag bit 2: the command's stdin comes from a
// fleet publication (section 13.5); EXEC then carries Topic, Key, Record.
const ExecSharedStdin = 1 << 2

// MaxRecord bounds the plaintext of one shared-stdin record, so that a
// record with its 16-octet tag fits a data frame.
const MaxRecord = MaxData - 16

func init() {
	for id, n := range map[MsgID]string{IDJoin: "JOIN", IDJoinOK: "JOIN_OK", IDFleet: "FLEET",
		IDFleetList: "FLEET_LIST", IDTunnel: "TUNNEL", IDTunnelOK: "TUNNEL_OK", IDPublish: "PUBLISH",
		IDPublishOK: "PUBLISH_OK", IDPubData: "PUB_DATA", IDPubFetch: "PUB_FETCH", IDPubFetchOK: "PUB_FETCH_OK",
		IDFleetJob: "FLEET_JOB", IDFleetJobOK: "FLEET_JOB_OK", IDFleetJobs: "FLEET_JOBS",
		IDFleetJobList: "FLEET_JOB_LIST"} {
		names[id] = n
	}
	registry[IDJoin] = func() Message { return new(Join) }
	registry[IDJoinOK] = func() Message { return new(JoinOK) }
	registry[IDFleet] = func() Message { return new(Fleet) }
	registry[IDFleetList] = func() Message { return new(FleetList) }
	registry[IDTunnel] = func() Message { return new(Tunnel) }
	registry[IDTunnelOK] = func() Message { return new(TunnelOK) }
	registry[IDPublish] = func() Message { return new(Publish) }
	registry[IDPublishOK] = func() Message { return new(PublishOK) }
	registry[IDPubData] = func() Message { return new(PubData) }
	registry[IDPubFetch] = func() Message { return new(PubFetch) }
	registry[IDPubFetchOK] = func() Message { return new(PubFetchOK) }
	registry[IDFleetJob] = func() Message { return new(FleetJob) }
	registry[IDFleetJobOK] = func() Message { return new(FleetJobOK) }
	registry[IDFleetJobs] = func() Message { return new(FleetJobs) }
	registry[IDFleetJobList] = func() Message { return new(FleetJobList) }
}

// Join makes an agent link of a connection to a hub.
type Join struct {
	Version   uint16
	Name      string
	Labels    map[string]string
	Software  string
	Metrics   string // "HOST:PORT" or ":PORT" of the agent's /metrics, or ""
	Heartbeat uint32 // ms
	// Relay (JOIN version 3): "HOST:PORT" or ":PORT" of the agent's XPUB,
	// where it republishes broadcasts as a relay (§14.11), and of its
	// ROUTER (RelayControl), where it answers its children's PUB_FETCH;
	// "" for none.
	Relay, RelayControl string
}

func (*Join) ID() MsgID { return IDJoin }
func (m *Join) encode(e *encoder) {
	e.u16(m.Version)
	e.str(m.Name)
	e.dict(m.Labels)
	e.str(m.Software)
	e.str(m.Metrics)
	e.u32(m.Heartbeat)
	if m.Version >= 3 {
		e.str(m.Relay)
		e.str(m.RelayControl)
	}
}
func (m *Join) decode(d *decoder) {
	m.Version = d.u16("version")
	m.Name = d.str("name")
	m.Labels = d.dict("labels")
	m.Software = d.str("software")
	m.Metrics = d.str("metrics")
	m.Heartbeat = d.u32("heartbeat")
	if m.Version >= 3 {
		m.Relay = d.str("relay")
		m.RelayControl = d.str("relay-control")
	}
}
func (m *Join) validate() error {
	if err := ValidAgentName(m.Name); err != nil {
		return err
	}
	for k, v := range m.Labels {
		if err := validLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

// ValidAgentName checks an agent name: 1–63 of A–Z a–z 0–9 . _ -, not
// starting with "." or "-".
func ValidAgentName(name string) error {
	if name == "" || len(name) > 63 || name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w: agent name %q", ErrInvalid, name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: agent name %q", ErrInvalid, name)
		}
	}
	return nil
}

// validLabel checks a label: a key of 1–63 of a–z 0–9 _ . -, a value of at
// most 255 octets without "," or "=" (listings join them as k=v,k=v).
func validLabel(k, v string) error {
	if k == "" || len(k) > 63 || len(v) > 255 {
		return fmt.Errorf("%w: label %q", ErrInvalid, k)
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("%w: label %q", ErrInvalid, k)
		}
	}
	for _, c := range []byte(v) {
		if c == ',' || c == '=' || c < 0x20 {
			return fmt.Errorf("%w: value of label %q", ErrInvalid, k)
		}
	}
	return nil
}

// ValidLabel checks a label key and value as JOIN requires.
func ValidLabel(k, v string) error { return validLabel(k, v) }

// JoinOK accepts an agent.
type JoinOK struct {
	Hub       string
	Publish   string // ":PORT" of the hub's XPUB, or "ipc:///PATH"
	Heartbeat uint32 // ms
	Timeout   uint32 // ms
}

func (*JoinOK) ID() MsgID { return IDJoinOK }
func (m *JoinOK) encode(e *encoder) {
	e.str(m.Hub)
	e.str(m.Publish)
	e.u32(m.Heartbeat)
	e.u32(m.Timeout)
}
func (m *JoinOK) decode(d *decoder) {
	m.Hub = d.str("hub")
	m.Publish = d.str("publish")
	m.Heartbeat = d.u32("heartbeat")
	m.Timeout = d.u32("timeout")
}

// Fleet asks a hub for its agents, optionally selected.
type Fleet struct {
	Channel uint32
	Hosts   []string          // shell patterns on names; none: all
	Labels  map[string]string // every pair must match
}

func (*Fleet) ID() MsgID { return IDFleet }
func (m *Fleet) encode(e *encoder) {
	e.u32(m.Channel)
	e.strs(m.Hosts)
	e.dict(m.Labels)
}
func (m *Fleet) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Hosts = d.strs("hosts")
	m.Labels = d.dict("labels")
}

// FleetList answers FLEET: one dictionary per agent (keys in
// docs/PROTOCOL.md 13.3), sorted by name, and where the hub's own
// /metrics are.
type FleetList struct {
	Channel uint32
	Agents  []map[string]string
	Metrics string // "HOST:PORT" or ":PORT" of the hub's /metrics, or ""
}

func (*FleetList) ID() MsgID { return IDFleetList }
func (m *FleetList) encode(e *encoder) {
	e.u32(m.Channel)
	e.dicts(m.Agents)
	e.str(m.Metrics)
}
func (m *FleetList) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Agents = d.dicts("agents")
	m.Metrics = d.str("metrics")
}

// Tunnel opens a tunnel to an agent's socket (client → hub: Agent is its
// name; hub → agent: the client key's fingerprint, for logs).
type Tunnel struct {
	Channel uint32
	Agent   string
	Port    uint8  // PortControl or PortPublish
	Window  uint32 // credit for stream 1 (agent → client), octets
}

func (*Tunnel) ID() MsgID { return IDTunnel }
func (m *Tunnel) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Agent)
	e.u8(m.Port)
	e.u32(m.Window)
}
func (m *Tunnel) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Agent = d.str("agent")
	m.Port = d.u8("port")
	m.Window = d.u32("window")
}
func (m *Tunnel) validate() error {
	if m.Port > PortPublish {
		return fmt.Errorf("%w: port %d", ErrInvalid, m.Port)
	}
	return nil
}

// TunnelOK says the tunnel is open.
type TunnelOK struct {
	Channel uint32
	Window  uint32 // credit for stream 0 (client → agent), octets
}

func (*TunnelOK) ID() MsgID { return IDTunnelOK }
func (m *TunnelOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.Window)
}
func (m *TunnelOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Window = d.u32("window")
}

// Publish starts a publication the hub stores and publishes to agents.
type Publish struct {
	Channel uint32
	Window  uint32 // 0
	Agents  []string
}

func (*Publish) ID() MsgID { return IDPublish }
func (m *Publish) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.Window)
	e.strs(m.Agents)
}
func (m *Publish) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Window = d.u32("window")
	m.Agents = d.strs("agents")
}

// PublishOK names the publication's topic and grants credit for it.
type PublishOK struct {
	Channel uint32
	Topic   string
	Window  uint32
}

func (*PublishOK) ID() MsgID { return IDPublishOK }
func (m *PublishOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Topic)
	e.u32(m.Window)
}
func (m *PublishOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Topic = d.str("topic")
	m.Window = d.u32("window")
}

// PubData is the header of a publication's message on the XPUB (after
// the topic frame, before the data frame).
type PubData struct {
	Offset uint64
	Flags  uint8 // DataEOF
	Bytes  []byte
}

func (*PubData) ID() MsgID { return IDPubData }
func (m *PubData) encode(e *encoder) {
	e.u64(m.Offset)
	e.u8(m.Flags)
}
func (m *PubData) decode(d *decoder) {
	m.Offset = d.u64("offset")
	m.Flags = d.u8("flags")
}
func (m *PubData) Payload() []byte     { return m.Bytes }
func (m *PubData) setPayload(b []byte) { m.Bytes = b }
func (m *PubData) EOF() bool           { return m.Flags&DataEOF != 0 }
func (m *PubData) validate() error     { return validFlags(m.Flags) }
func validFlags(f uint8) error {
	if f&^DataEOF != 0 {
		return fmt.Errorf("%w: flags %#x", ErrInvalid, f)
	}
	return nil
}

// PubFetch asks the hub for stored octets of a publication (agent → hub).
type PubFetch struct {
	Channel uint32
	Topic   string
	Offset  uint64
	Length  uint32
}

func (*PubFetch) ID() MsgID { return IDPubFetch }
func (m *PubFetch) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Topic)
	e.u64(m.Offset)
	e.u32(m.Length)
}
func (m *PubFetch) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Topic = d.str("topic")
	m.Offset = d.u64("offset")
	m.Length = d.u32("length")
}

// PubFetchOK ends the answer to PUB_FETCH.
type PubFetchOK struct {
	Channel uint32
	Next    uint64 // offset after the last octet sent
	Size    uint64 // octets stored so far
	Final   bool   // the publication's EOF arrived: Size is final
}

func (*PubFetchOK) ID() MsgID { return IDPubFetchOK }
func (m *PubFetchOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.u64(m.Next)
	e.u64(m.Size)
	e.u8(b2u(m.Final))
}
func (m *PubFetchOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Next = d.u64("next")
	m.Size = d.u64("size")
	m.Final = d.bool("final")
}

// FleetJob records a job started on several agents as one fleet job.
type FleetJob struct {
	Channel uint32
	Command string
	Jobs    map[string]string // agent name → job id there
}

func (*FleetJob) ID() MsgID { return IDFleetJob }
func (m *FleetJob) encode(e *encoder) {
	e.u32(m.Channel)
	e.longstr(m.Command)
	e.dict(m.Jobs)
}
func (m *FleetJob) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Command = d.longstr("command")
	m.Jobs = d.dict("jobs")
}

// FleetJobOK names a recorded fleet job.
type FleetJobOK struct {
	Channel uint32
	Job     string
}

func (*FleetJobOK) ID() MsgID { return IDFleetJobOK }
func (m *FleetJobOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
}
func (m *FleetJobOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
}

// FleetJobs lists the caller's fleet jobs, or one ("" for all).
type FleetJobs struct {
	Channel uint32
	Job     string
}

func (*FleetJobs) ID() MsgID { return IDFleetJobs }
func (m *FleetJobs) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Job)
}
func (m *FleetJobs) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Job = d.str("job")
}

// FleetJobList answers FLEET_JOBS: one dictionary per fleet job.
type FleetJobList struct {
	Channel uint32
	Jobs    []map[string]string
}

func (*FleetJobList) ID() MsgID { return IDFleetJobList }
func (m *FleetJobList) encode(e *encoder) {
	e.u32(m.Channel)
	e.dicts(m.Jobs)
}
func (m *FleetJobList) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Jobs = d.dicts("jobs")
}
