package wire

import "fmt"

// Broadcast message ids (docs/PROTOCOL.md, section 14; protocol version 3).
const (
	IDBcast           MsgID = 0x60
	IDBcastNeed       MsgID = 0x61
	IDBcastGo         MsgID = 0x62
	IDBcastProgress   MsgID = 0x63
	IDBcastDone       MsgID = 0x64
	IDBcastTree       MsgID = 0x65
	IDBcastTreeOK     MsgID = 0x66
	IDBcastChunks     MsgID = 0x67 // version 5
	IDBcastNeedChunks MsgID = 0x68 // version 5
	IDBcastGoChunks   MsgID = 0x69 // version 5
)

// MaxFanout bounds a relay tree's fanout: the children one node feeds.
const MaxFanout = 64

// Limits on a broadcast's manifest (docs/PROTOCOL.md §14.2): what an agent
// holds in memory for one broadcast.
const (
	MaxManifest        = 64 << 20
	MaxManifestEntries = 1 << 20
	// MaxBcastFailures bounds the failures BCAST_DONE lists by name.
	MaxBcastFailures = 100
)

func init() {
	for id, n := range map[MsgID]string{IDBcast: "BCAST", IDBcastNeed: "BCAST_NEED", IDBcastGo: "BCAST_GO",
		IDBcastProgress: "BCAST_PROGRESS", IDBcastDone: "BCAST_DONE", IDBcastTree: "BCAST_TREE", IDBcastTreeOK: "BCAST_TREE_OK",
		IDBcastChunks: "BCAST_CHUNKS", IDBcastNeedChunks: "BCAST_NEED_CHUNKS", IDBcastGoChunks: "BCAST_GO_CHUNKS"} {
		names[id] = n
	}
	registry[IDBcast] = func() Message { return new(Bcast) }
	registry[IDBcastNeed] = func() Message { return new(BcastNeed) }
	registry[IDBcastGo] = func() Message { return new(BcastGo) }
	registry[IDBcastProgress] = func() Message { return new(BcastProgress) }
	registry[IDBcastDone] = func() Message { return new(BcastDone) }
	registry[IDBcastTree] = func() Message { return new(BcastTree) }
	registry[IDBcastTreeOK] = func() Message { return new(BcastTreeOK) }
	registry[IDBcastChunks] = func() Message { return new(BcastChunks) }
	registry[IDBcastNeedChunks] = func() Message { return new(BcastNeedChunks) }
	registry[IDBcastGoChunks] = func() Message { return new(BcastGoChunks) }
}

// Bcast asks an agent to apply a broadcast (client → agent, through a
// tunnel): its manifest is the publication Topic, Size octets of
// plaintext in records of at most Record octets sealed with Key, whose
// SHA-256 is Digest (the tree digest).
type Bcast struct {
	Channel uint32
	Flags   uint8  // Xfer*: recursive, preserve, single
	Dest    string // as typed; relative to the user's home
	Topic   string
	Key     []byte
	Record  uint32
	Size    uint64
	Count   uint32 // entries in the manifest
	Digest  []byte
}

func (*Bcast) ID() MsgID { return IDBcast }
func (m *Bcast) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Flags)
	e.longstr(m.Dest)
	e.str(m.Topic)
	e.long(m.Key)
	e.u32(m.Record)
	e.u64(m.Size)
	e.u32(m.Count)
	e.long(m.Digest)
}
func (m *Bcast) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Flags = d.u8("flags")
	m.Dest = d.longstr("dest")
	m.Topic = d.str("topic")
	m.Key = d.long("key")
	m.Record = d.u32("record")
	m.Size = d.u64("size")
	m.Count = d.u32("count")
	m.Digest = d.long("digest")
}
func (m *Bcast) validate() error {
	switch {
	case m.Flags&^(XferRecursive|XferPreserve|XferSingle|XferChunks) != 0:
		return fmt.Errorf("%w: BCAST flags %#x", ErrInvalid, m.Flags)
	case m.Topic == "":
		return fmt.Errorf("%w: empty manifest topic", ErrInvalid)
	case len(m.Key) != 32:
		return fmt.Errorf("%w: manifest key of %d octets", ErrInvalid, len(m.Key))
	case m.Record == 0 || m.Record > MaxRecord:
		return fmt.Errorf("%w: manifest record of %d octets", ErrInvalid, m.Record)
	case m.Size > MaxManifest:
		return fmt.Errorf("%w: manifest of %d octets (at most %d)", ErrInvalid, m.Size, MaxManifest)
	case m.Count > MaxManifestEntries:
		return fmt.Errorf("%w: manifest of %d entries (at most %d)", ErrInvalid, m.Count, MaxManifestEntries)
	case len(m.Digest) != 32:
		return fmt.Errorf("%w: tree digest of %d octets", ErrInvalid, len(m.Digest))
	}
	return nil
}

// BcastChunks names the publication of a broadcast's chunk lists (client
// → agent, version 5, right after a BCAST with XferChunks): Size octets
// of plaintext (the chunk index, §14.12) in records of at most Record
// octets sealed with Key, whose SHA-256 is Digest; Chunk is the chunk
// size.
type BcastChunks struct {
	Channel uint32
	Topic   string
	Key     []byte
	Record  uint32
	Size    uint64
	Chunk   uint32
	Digest  []byte
}

func (*BcastChunks) ID() MsgID { return IDBcastChunks }
func (m *BcastChunks) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Topic)
	e.long(m.Key)
	e.u32(m.Record)
	e.u64(m.Size)
	e.u32(m.Chunk)
	e.long(m.Digest)
}
func (m *BcastChunks) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Topic = d.str("topic")
	m.Key = d.long("key")
	m.Record = d.u32("record")
	m.Size = d.u64("size")
	m.Chunk = d.u32("chunk")
	m.Digest = d.long("digest")
}
func (m *BcastChunks) validate() error {
	switch {
	case m.Topic == "":
		return fmt.Errorf("%w: empty chunk index topic", ErrInvalid)
	case len(m.Key) != 32:
		return fmt.Errorf("%w: chunk index key of %d octets", ErrInvalid, len(m.Key))
	case m.Record == 0 || m.Record > MaxRecord:
		return fmt.Errorf("%w: chunk index record of %d octets", ErrInvalid, m.Record)
	case m.Size > MaxChunkIndex || m.Size%32 != 0:
		return fmt.Errorf("%w: chunk index of %d octets", ErrInvalid, m.Size)
	case !ValidChunk(m.Chunk):
		return fmt.Errorf("%w: chunk size %d (a power of two, %d to %d)", ErrInvalid, m.Chunk, MinChunk, MaxChunk)
	case len(m.Digest) != 32:
		return fmt.Errorf("%w: chunk index digest of %d octets", ErrInvalid, len(m.Digest))
	}
	return nil
}

// BcastNeedChunks says which chunks an agent lacks (agent → client, version 5,
// right before BCAST_NEED on a channel whose BCAST had XferChunks): a
// chunk map (§14.12) whose bit k of a file is set when the agent needs
// chunk k of it (a file it does not need has none set).
type BcastNeedChunks struct {
	Channel uint32
	Chunks  []byte
}

func (*BcastNeedChunks) ID() MsgID { return IDBcastNeedChunks }
func (m *BcastNeedChunks) encode(e *encoder) {
	e.u32(m.Channel)
	e.long(m.Chunks)
}
func (m *BcastNeedChunks) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Chunks = d.long("chunks")
}
func (m *BcastNeedChunks) validate() error {
	if len(m.Chunks) > MaxChunkMap {
		return fmt.Errorf("%w: chunk map of %d octets", ErrInvalid, len(m.Chunks))
	}
	return nil
}

// BcastGoChunks says which chunks of the files that list chunks the content
// publication holds (client → agent, version 5, right before BCAST_GO): a
// chunk map (§14.12) whose bit k of a file is set when the content stream
// holds chunk k of it. Without it, the stream holds whole files.
type BcastGoChunks struct {
	Channel uint32
	Chunks  []byte
}

func (*BcastGoChunks) ID() MsgID { return IDBcastGoChunks }
func (m *BcastGoChunks) encode(e *encoder) {
	e.u32(m.Channel)
	e.long(m.Chunks)
}
func (m *BcastGoChunks) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Chunks = d.long("chunks")
}
func (m *BcastGoChunks) validate() error {
	if len(m.Chunks) > MaxChunkMap {
		return fmt.Errorf("%w: chunk map of %d octets", ErrInvalid, len(m.Chunks))
	}
	return nil
}

// BcastNeed says which regular files of the manifest an agent lacks (agent
// → client): bit i of Need (entry i, most significant bit of octet 0
// first) set means the agent needs entry i's content. Have counts the
// octets of files it already holds with the manifest's digest.
type BcastNeed struct {
	Channel uint32
	Need    []byte
	Have    uint64
}

func (*BcastNeed) ID() MsgID { return IDBcastNeed }
func (m *BcastNeed) encode(e *encoder) {
	e.u32(m.Channel)
	e.long(m.Need)
	e.u64(m.Have)
}
func (m *BcastNeed) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Need = d.long("need")
	m.Have = d.u64("have")
}
func (m *BcastNeed) validate() error {
	if len(m.Need) > MaxManifestEntries/8 {
		return fmt.Errorf("%w: need bitmap of %d octets", ErrInvalid, len(m.Need))
	}
	return nil
}

// BcastGo names the publication with the content (client → agent): the
// content of every entry whose bit is set in Content, in manifest order,
// each entry's Size octets, sealed as the manifest is but with its own Key.
type BcastGo struct {
	Channel uint32
	Topic   string
	Key     []byte
	Record  uint32
	Content []byte
	// Relay tree (§14.11): Parent ("tcp://HOST:PORT", or "" for the hub)
	// is the XPUB the agent takes the content from live, ParentKey its
	// CURVE server key (32 octets, or none); Children are the CURVE keys
	// (32 octets each) of the agents this one republishes the content to.
	Parent    string
	ParentKey []byte
	// ParentControl is the parent's ROUTER ("tcp://HOST:PORT"), where it
	// answers PUB_FETCH; "" when it does not.
	ParentControl string
	Children      []byte
}

func (*BcastGo) ID() MsgID { return IDBcastGo }
func (m *BcastGo) encode(e *encoder) {
	e.u32(m.Channel)
	e.str(m.Topic)
	e.long(m.Key)
	e.u32(m.Record)
	e.long(m.Content)
	e.str(m.Parent)
	e.long(m.ParentKey)
	e.str(m.ParentControl)
	e.long(m.Children)
}
func (m *BcastGo) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Topic = d.str("topic")
	m.Key = d.long("key")
	m.Record = d.u32("record")
	m.Content = d.long("content")
	m.Parent = d.str("parent")
	m.ParentKey = d.long("parent-key")
	m.ParentControl = d.str("parent-control")
	m.Children = d.long("children")
}
func (m *BcastGo) validate() error {
	switch {
	case len(m.Key) != 32:
		return fmt.Errorf("%w: content key of %d octets", ErrInvalid, len(m.Key))
	case m.Record == 0 || m.Record > MaxRecord:
		return fmt.Errorf("%w: content record of %d octets", ErrInvalid, m.Record)
	case len(m.Content) > MaxManifestEntries/8:
		return fmt.Errorf("%w: content bitmap of %d octets", ErrInvalid, len(m.Content))
	case (m.Parent == "") != (len(m.ParentKey) == 0) || len(m.ParentKey) != 0 && len(m.ParentKey) != 32:
		return fmt.Errorf("%w: parent %q with a key of %d octets", ErrInvalid, m.Parent, len(m.ParentKey))
	case len(m.Children)%32 != 0 || len(m.Children)/32 > MaxFanout:
		return fmt.Errorf("%w: children of %d octets", ErrInvalid, len(m.Children))
	}
	return nil
}

// BcastTree asks a hub to arrange agents in a relay tree of the given
// fanout (client → hub, §14.11).
type BcastTree struct {
	Channel uint32
	Fanout  uint8
	Agents  []string
}

func (*BcastTree) ID() MsgID { return IDBcastTree }
func (m *BcastTree) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Fanout)
	e.strs(m.Agents)
}
func (m *BcastTree) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Fanout = d.u8("fanout")
	m.Agents = d.strs("agents")
}
func (m *BcastTree) validate() error {
	if m.Fanout == 0 || m.Fanout > MaxFanout {
		return fmt.Errorf("%w: fanout %d (1-%d)", ErrInvalid, m.Fanout, MaxFanout)
	}
	return nil
}

// BcastTreeOK is the hub's tree: one dictionary per agent asked for, in
// the order asked (keys in docs/PROTOCOL.md §14.11).
type BcastTreeOK struct {
	Channel uint32
	Nodes   []map[string]string
}

func (*BcastTreeOK) ID() MsgID { return IDBcastTreeOK }
func (m *BcastTreeOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.dicts(m.Nodes)
}
func (m *BcastTreeOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Nodes = d.dicts("nodes")
}

// BcastStats are an agent's counts for one broadcast.
type BcastStats struct {
	Written  uint64 // content octets written to files
	Live     uint64 // publication octets taken live (the hub's XPUB or the parent's)
	Repaired uint64 // publication octets fetched from the hub (PUB_FETCH)
	Deduped  uint64 // octets of files already held with the manifest's digest
	Files    uint32 // entries in place (written, identical, made)
	Failed   uint32 // entries that failed
	// Relay trees (§14.11): FromRelay is the part of Live that came from
	// the parent relay, Relayed what this agent republished to its
	// children (once, however many), Reparented whether it lost its
	// relay and went on from the hub.
	FromRelay  uint64
	Relayed    uint64
	Reparented uint8
}

func (s *BcastStats) encode(e *encoder) {
	e.u64(s.Written)
	e.u64(s.Live)
	e.u64(s.Repaired)
	e.u64(s.Deduped)
	e.u32(s.Files)
	e.u32(s.Failed)
	e.u64(s.FromRelay)
	e.u64(s.Relayed)
	e.u8(s.Reparented)
}
func (s *BcastStats) decode(d *decoder) {
	s.Written = d.u64("written")
	s.Live = d.u64("live")
	s.Repaired = d.u64("repaired")
	s.Deduped = d.u64("deduped")
	s.Files = d.u32("files")
	s.Failed = d.u32("failed")
	s.FromRelay = d.u64("from-relay")
	s.Relayed = d.u64("relayed")
	s.Reparented = d.u8("reparented")
}

// BcastProgress reports an agent's counts so far (agent → client).
type BcastProgress struct {
	Channel uint32
	Stats   BcastStats
}

func (*BcastProgress) ID() MsgID { return IDBcastProgress }
func (m *BcastProgress) encode(e *encoder) {
	e.u32(m.Channel)
	m.Stats.encode(e)
}
func (m *BcastProgress) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Stats.decode(d)
}

// BcastDone ends a broadcast on an agent: Code 0 and the tree digest it
// applied, or an error code and reason; Failures names failed entries
// ("path: reason"), at most MaxBcastFailures.
type BcastDone struct {
	Channel  uint32
	Code     uint16
	Reason   string
	Digest   []byte
	Stats    BcastStats
	Failures []string
}

func (*BcastDone) ID() MsgID { return IDBcastDone }
func (m *BcastDone) encode(e *encoder) {
	e.u32(m.Channel)
	e.u16(m.Code)
	e.longstr(m.Reason)
	e.long(m.Digest)
	m.Stats.encode(e)
	e.strs(m.Failures)
}
func (m *BcastDone) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Code = d.u16("code")
	m.Reason = d.longstr("reason")
	m.Digest = d.long("digest")
	m.Stats.decode(d)
	m.Failures = d.strs("failures")
}
func (m *BcastDone) validate() error {
	switch {
	case m.Code == 0 && len(m.Digest) != 32:
		return fmt.Errorf("%w: BCAST_DONE 0 with a digest of %d octets", ErrInvalid, len(m.Digest))
	case m.Code != 0 && len(m.Digest) != 0:
		return fmt.Errorf("%w: BCAST_DONE %d with a digest", ErrInvalid, m.Code)
	case len(m.Failures) > MaxBcastFailures:
		return fmt.Errorf("%w: %d failures listed", ErrInvalid, len(m.Failures))
	}
	return nil
}
