package wire

import (
	"encoding/binary"
	"fmt"
)

// File transfer message ids (docs/PROTOCOL.md, section "Files").
const (
	IDSend     MsgID = 0x30
	IDSendOK   MsgID = 0x31
	IDFile     MsgID = 0x32
	IDFileOK   MsgID = 0x33
	IDChunk    MsgID = 0x34
	IDCommit   MsgID = 0x35
	IDFileDone MsgID = 0x36
	IDRecv     MsgID = 0x37
	IDEnd      MsgID = 0x38
)

func init() {
	for id, n := range map[MsgID]string{IDSend: "SEND", IDSendOK: "SEND_OK", IDFile: "FILE", IDFileOK: "FILE_OK",
		IDChunk: "CHUNK", IDCommit: "COMMIT", IDFileDone: "FILE_DONE", IDRecv: "RECV", IDEnd: "END"} {
		names[id] = n
	}
	registry[IDSend] = func() Message { return new(Send) }
	registry[IDSendOK] = func() Message { return new(SendOK) }
	registry[IDFile] = func() Message { return new(File) }
	registry[IDFileOK] = func() Message { return new(FileOK) }
	registry[IDChunk] = func() Message { return new(Chunk) }
	registry[IDCommit] = func() Message { return new(Commit) }
	registry[IDFileDone] = func() Message { return new(FileDone) }
	registry[IDRecv] = func() Message { return new(Recv) }
	registry[IDEnd] = func() Message { return new(End) }
}

// Transfer flags (SEND, RECV).
const (
	XferRecursive uint8 = 1 << 0 // directories are copied (else skipped)
	XferPreserve  uint8 = 1 << 1 // owner too, where the receiver may set it
	XferChecksum  uint8 = 1 << 2 // skip files whose digest matches, not size+mtime
	XferSingle    uint8 = 1 << 3 // one source that is a file: the target may be that file
	// XferChunks, in BCAST only (version 5): a BCAST_CHUNKS follows.
	XferChunks uint8 = 1 << 4
)

// Send starts an upload: the client will send entries for Dest.
type Send struct {
	Channel uint32
	Flags   uint8
	Window  uint32 // unused by SEND (the receiver grants credit); 0
	Dest    string // as typed by the user; relative to the user's home
}

func (*Send) ID() MsgID { return IDSend }
func (m *Send) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Flags)
	e.u32(m.Window)
	e.longstr(m.Dest)
}
func (m *Send) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Flags = d.u8("flags")
	m.Window = d.u32("window")
	m.Dest = d.longstr("dest")
}

// Target modes in SEND_OK.
const (
	TargetAs   uint8 = 1 // the single entry (path "") becomes Dest itself
	TargetInto uint8 = 2 // entries go under the directory Dest
)

// SendOK accepts an upload and grants credit for CHUNK data.
type SendOK struct {
	Channel uint32
	Mode    uint8
	Window  uint32
	Root    string // the resolved destination, for messages
}

func (*SendOK) ID() MsgID { return IDSendOK }
func (m *SendOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Mode)
	e.u32(m.Window)
	e.longstr(m.Root)
}
func (m *SendOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Mode = d.u8("mode")
	m.Window = d.u32("window")
	m.Root = d.longstr("root")
}
func (m *SendOK) validate() error {
	if m.Mode != TargetAs && m.Mode != TargetInto {
		return fmt.Errorf("%w: target mode %d", ErrInvalid, m.Mode)
	}
	return nil
}

// Recv starts a download: the server sends entries for Sources.
type Recv struct {
	Channel uint32
	Flags   uint8
	Window  uint32 // credit the client grants for CHUNK data
	Sources []string
}

func (*Recv) ID() MsgID { return IDRecv }
func (m *Recv) encode(e *encoder) {
	e.u32(m.Channel)
	e.u8(m.Flags)
	e.u32(m.Window)
	e.strs(m.Sources)
}
func (m *Recv) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Flags = d.u8("flags")
	m.Window = d.u32("window")
	m.Sources = d.strs("sources")
}

// Entry kinds.
const (
	KindFile    uint8 = 1
	KindDir     uint8 = 2
	KindSymlink uint8 = 3
)

// File announces an entry. Path is relative to the transfer's target,
// '/'-separated; "" is the target itself (TargetAs).
type File struct {
	Channel uint32
	FID     uint32 // the sender's number for this entry
	Path    string
	Kind    uint8
	Mode    uint32 // permission bits (and setuid/setgid/sticky)
	MTime   int64  // nanoseconds since the Unix epoch
	Size    uint64
	Target  string // symlink target
	Digest  []byte // SHA-256 of the content, with XferChecksum; else empty
	UID     uint32
	GID     uint32
}

func (*File) ID() MsgID { return IDFile }
func (m *File) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.FID)
	e.longstr(m.Path)
	e.u8(m.Kind)
	e.u32(m.Mode)
	e.u64(uint64(m.MTime))
	e.u64(m.Size)
	e.longstr(m.Target)
	e.long(m.Digest)
	e.u32(m.UID)
	e.u32(m.GID)
}
func (m *File) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.FID = d.u32("fid")
	m.Path = d.longstr("path")
	m.Kind = d.u8("kind")
	m.Mode = d.u32("mode")
	m.MTime = int64(d.u64("mtime"))
	m.Size = d.u64("size")
	m.Target = d.longstr("target")
	m.Digest = d.long("digest")
	m.UID = d.u32("uid")
	m.GID = d.u32("gid")
}

// validate accepts any kind: a receiver answers an entry of a kind it
// does not know with FILE_DONE 400 (docs/PROTOCOL.md §10), so that it
// can be told which entry failed and the rest of the transfer goes on.
func (m *File) validate() error {
	if len(m.Digest) != 0 && len(m.Digest) != 32 {
		return fmt.Errorf("%w: digest of %d octets", ErrInvalid, len(m.Digest))
	}
	if m.Size > 1<<62 {
		return fmt.Errorf("%w: size", ErrInvalid)
	}
	return nil
}

// FILE_OK actions.
const (
	ActionSend uint8 = 0 // send the content from Have on
	ActionSkip uint8 = 1 // the receiver already has this content
	ActionDone uint8 = 2 // a directory or symlink, created; nothing to send
)

// FileOK answers FILE: what the receiver needs. With ActionSend and Have >
// 0, Prefix is the SHA-256 of the receiver's first Have octets (a partial
// file from an interrupted transfer); the sender resumes only if its own
// content has the same prefix, else it sends from 0.
type FileOK struct {
	Channel uint32
	FID     uint32
	Action  uint8
	Have    uint64
	Prefix  []byte
}

func (*FileOK) ID() MsgID { return IDFileOK }
func (m *FileOK) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.FID)
	e.u8(m.Action)
	e.u64(m.Have)
	e.long(m.Prefix)
}
func (m *FileOK) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.FID = d.u32("fid")
	m.Action = d.u8("action")
	m.Have = d.u64("have")
	m.Prefix = d.long("prefix")
}
func (m *FileOK) validate() error {
	if m.Action > ActionDone {
		return fmt.Errorf("%w: action %d", ErrInvalid, m.Action)
	}
	if len(m.Prefix) != 0 && len(m.Prefix) != 32 {
		return fmt.Errorf("%w: prefix digest", ErrInvalid)
	}
	return nil
}

// Chunk carries file content in its data frame: octets from Offset of
// entry FID. Seq is the position of this data in the channel's byte
// stream (all chunks of the transfer, in order): credit and ACKs count it.
type Chunk struct {
	Channel uint32
	FID     uint32
	Offset  uint64
	Seq     uint64
	Bytes   []byte
}

func (*Chunk) ID() MsgID             { return IDChunk }
func (m *Chunk) Payload() []byte     { return m.Bytes }
func (m *Chunk) setPayload(b []byte) { m.Bytes = b }
func (m *Chunk) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.FID)
	e.u64(m.Offset)
	e.u64(m.Seq)
}
func (m *Chunk) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.FID = d.u32("fid")
	m.Offset = d.u64("offset")
	m.Seq = d.u64("seq")
}

// Commit ends an entry's content: its total size and SHA-256.
type Commit struct {
	Channel uint32
	FID     uint32
	Size    uint64
	Digest  []byte
}

func (*Commit) ID() MsgID { return IDCommit }
func (m *Commit) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.FID)
	e.u64(m.Size)
	e.long(m.Digest)
}
func (m *Commit) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.FID = d.u32("fid")
	m.Size = d.u64("size")
	m.Digest = d.long("digest")
}
func (m *Commit) validate() error {
	if len(m.Digest) != 32 {
		return fmt.Errorf("%w: digest of %d octets", ErrInvalid, len(m.Digest))
	}
	return nil
}

// FileDone reports an entry's outcome: Code 0 when it is in place (or
// skipped), else an error code (section 8) and a reason; the transfer goes
// on with the other entries.
type FileDone struct {
	Channel uint32
	FID     uint32
	Code    uint16
	Reason  string
}

func (*FileDone) ID() MsgID { return IDFileDone }
func (m *FileDone) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(m.FID)
	e.u16(m.Code)
	e.longstr(m.Reason)
}
func (m *FileDone) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.FID = d.u32("fid")
	m.Code = d.u16("code")
	m.Reason = d.longstr("reason")
}

// End: the sender has announced every entry (Count of them). The receiver
// answers END (same Count) after the last FILE_DONE, once directory
// attributes are set.
type End struct {
	Channel uint32
	Count   uint32
}

func (*End) ID() MsgID           { return IDEnd }
func (m *End) encode(e *encoder) { e.u32(m.Channel); e.u32(m.Count) }
func (m *End) decode(d *decoder) { m.Channel = d.u32("channel"); m.Count = d.u32("count") }

// IDBatch is BATCH (version 6): several messages of one transfer channel
// in one header frame.
const IDBatch MsgID = 0x39

// MaxBatch bounds the messages in one BATCH.
const MaxBatch = 1024

func init() {
	names[IDBatch] = "BATCH"
	registry[IDBatch] = func() Message { return new(Batch) }
}

// Batch carries messages of one transfer channel that have no data frame
// (FILE, FILE_OK, COMMIT, FILE_DONE, ACK), each as its whole header, in
// one ZeroMQ message: a tree of small files costs one message, one CURVE
// box and one wake-up per batch instead of per entry. The receiver
// handles them in order as if each had come alone (docs/PROTOCOL.md §10).
type Batch struct {
	Channel uint32
	Msgs    []Message
}

// Batchable reports whether m may travel in a BATCH of its channel.
func Batchable(m Message) bool {
	switch m.(type) {
	case *File, *FileOK, *Commit, *FileDone, *Ack:
		return true
	}
	return false
}

// Bundle is the one message that carries msgs (batchable, of channel):
// the message itself when there is one, a BATCH of more, nil for none.
func Bundle(channel uint32, msgs []Message) Message {
	switch len(msgs) {
	case 0:
		return nil
	case 1:
		return msgs[0]
	}
	return &Batch{Channel: channel, Msgs: msgs}
}

func (*Batch) ID() MsgID { return IDBatch }
func (m *Batch) encode(e *encoder) {
	e.u32(m.Channel)
	e.u32(uint32(len(m.Msgs)))
	for _, in := range m.Msgs {
		at := len(e.b)
		e.u32(0) // the size, once known
		e.b = Encode(e.b, in)
		binary.BigEndian.PutUint32(e.b[at:], uint32(len(e.b)-at-4))
	}
}
func (m *Batch) decode(d *decoder) {
	m.Channel = d.u32("channel")
	n := d.u32("count")
	// Each message needs its size and at least a 3-octet header.
	if uint64(n)*7 > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return
	}
	if n == 0 || n > MaxBatch {
		d.fail(fmt.Errorf("%w: %d messages in a batch (1 to %d)", ErrInvalid, n, MaxBatch))
		return
	}
	m.Msgs = make([]Message, 0, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		size := d.u32("messages")
		if uint64(size) > uint64(len(d.b)) {
			d.fail(ErrTruncated)
			return
		}
		h := d.take(int(size))
		if d.err != nil {
			return
		}
		if len(h) >= 3 && h[0] == Signature[0] && h[1] == Signature[1] && MsgID(h[2]) == IDBatch {
			d.fail(fmt.Errorf("%w: a batch inside a batch", ErrInvalid))
			return
		}
		in, err := Decode([][]byte{h})
		if err != nil {
			d.fail(fmt.Errorf("message %d: %w", i, err))
			return
		}
		if !Batchable(in) {
			d.fail(fmt.Errorf("%w: %s in a batch", ErrInvalid, in.ID()))
			return
		}
		if ch, _ := ChannelOf(in); ch != m.Channel {
			d.fail(fmt.Errorf("%w: %s of channel %d in a batch of channel %d", ErrInvalid, in.ID(), ch, m.Channel))
			return
		}
		m.Msgs = append(m.Msgs, in)
	}
}
