package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Signature opens every header frame: "ZP".
var Signature = [2]byte{0x5A, 0x50}

// Version is the newest protocol version this package speaks, and
// MinVersion the oldest: version 2 adds the fleet, 3 broadcasts, 4
// broadcast content in full records, 5 chunk lists, 6 BATCH for transfers,
// 7 BLAKE3 as the transfers' content digest (internal/digest;
// docs/PROTOCOL.md §12).
const (
	Version    = 7
	MinVersion = 1
	// JoinVersion is the version of an agent's link to its hub (JOIN),
	// which versions 4 and 5 left unchanged.
	JoinVersion = 3
)

// Limits on what a peer may send. A decoder checks each length against the
// bytes that remain (and these limits) before it allocates.
const (
	MaxHeader = 1 << 20 // octets in a header frame
	MaxData   = 1 << 20 // octets in a data frame
)

// Errors returned by Decode. Each is wrapped with the message and field.
var (
	ErrSignature = errors.New("wire: bad signature")
	ErrUnknown   = errors.New("wire: unknown message id")
	ErrTruncated = errors.New("wire: truncated message")
	ErrTrailing  = errors.New("wire: trailing octets")
	ErrFrames    = errors.New("wire: wrong number of frames")
	ErrTooLarge  = errors.New("wire: frame too large")
	ErrInvalid   = errors.New("wire: invalid field")
)

// encoder appends fields in network byte order.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

// str encodes a short string (at most 255 octets; longer is a caller bug
// caught by Validate, truncated here so encoding never panics).
func (e *encoder) str(s string) {
	if len(s) > 255 {
		s = s[:255]
	}
	e.u8(uint8(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) long(s []byte) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) longstr(s string) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) strs(l []string) {
	e.u32(uint32(len(l)))
	for _, s := range l {
		e.longstr(s)
	}
}

func (e *encoder) dict(m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // canonical: a decoded dict re-encodes identically
	e.u32(uint32(len(keys)))
	for _, k := range keys {
		e.str(k)
		e.longstr(m[k])
	}
}

// dicts encodes a count and that many dictionaries.
func (e *encoder) dicts(l []map[string]string) {
	e.u32(uint32(len(l)))
	for _, m := range l {
		e.dict(m)
	}
}

// decoder reads fields; the first error sticks and later reads return zero.
type decoder struct {
	b     []byte
	err   error
	field string
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = fmt.Errorf("%w (field %s)", err, d.field)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail(ErrTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8(f string) uint8 {
	d.field = f
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16(f string) uint16 {
	d.field = f
	if b := d.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32(f string) uint32 {
	d.field = f
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64(f string) uint64 {
	d.field = f
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) str(f string) string {
	n := d.u8(f)
	return string(d.take(int(n)))
}

func (d *decoder) long(f string) []byte {
	n := d.u32(f)
	if uint64(n) > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return nil
	}
	b := d.take(int(n))
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

func (d *decoder) longstr(f string) string {
	n := d.u32(f)
	if uint64(n) > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return ""
	}
	return string(d.take(int(n)))
}

func (d *decoder) strs(f string) []string {
	n := d.u32(f)
	// Each entry needs at least its 4-octet size: check before allocating.
	if uint64(n)*4 > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return nil
	}
	if n == 0 {
		return nil
	}
	l := make([]string, 0, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		l = append(l, d.longstr(f))
	}
	return l
}

func (d *decoder) dict(f string) map[string]string {
	n := d.u32(f)
	if uint64(n)*5 > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return nil
	}
	if n == 0 {
		return nil
	}
	m := make(map[string]string, n)
	prev := ""
	for i := uint32(0); i < n && d.err == nil; i++ {
		k := d.str(f)
		v := d.longstr(f)
		if i > 0 && k <= prev {
			d.fail(fmt.Errorf("%w: dictionary keys must be unique and sorted", ErrInvalid))
		}
		prev = k
		m[k] = v
	}
	return m
}

// dicts decodes a count and that many dictionaries (an empty one decodes
// as an empty map, not nil).
func (d *decoder) dicts(f string) []map[string]string {
	n := d.u32(f)
	// Each dictionary needs at least its 4-octet count: check before allocating.
	if uint64(n)*4 > uint64(len(d.b)) {
		d.fail(ErrTruncated)
		return nil
	}
	var l []map[string]string
	for i := uint32(0); i < n && d.err == nil; i++ {
		m := d.dict(f)
		if m == nil {
			m = map[string]string{}
		}
		l = append(l, m)
	}
	return l
}

// Message is one protocol message. Encode writes the header frame; the data
// frame, for messages that have one, is Payload().
type Message interface {
	ID() MsgID
	encode(e *encoder)
	decode(d *decoder)
}

// Payloader is a Message that carries bulk data in a second frame.
type Payloader interface {
	Message
	Payload() []byte
	setPayload([]byte)
}

// Encode appends the header frame of m to dst.
func Encode(dst []byte, m Message) []byte {
	e := encoder{b: append(dst, Signature[0], Signature[1], byte(m.ID()))}
	m.encode(&e)
	return e.b
}

// Frames returns the frames that carry m: the header and, for messages with
// bulk data, the data frame (never copied).
func Frames(m Message) [][]byte {
	h := Encode(nil, m)
	if p, ok := m.(Payloader); ok {
		return [][]byte{h, p.Payload()}
	}
	return [][]byte{h}
}

// Decode parses a message from its frames. It never panics, whatever the
// input, and data frames are referenced, not copied.
func Decode(frames [][]byte) (Message, error) {
	if len(frames) == 0 || len(frames) > 2 {
		return nil, ErrFrames
	}
	h := frames[0]
	if len(h) > MaxHeader {
		return nil, ErrTooLarge
	}
	if len(h) < 3 {
		return nil, ErrTruncated
	}
	if h[0] != Signature[0] || h[1] != Signature[1] {
		return nil, ErrSignature
	}
	id := MsgID(h[2])
	mk, ok := registry[id]
	if !ok {
		return nil, fmt.Errorf("%w 0x%02x", ErrUnknown, uint8(id))
	}
	m := mk()
	d := decoder{b: h[3:]}
	m.decode(&d)
	if d.err != nil {
		return nil, fmt.Errorf("%s: %w", id, d.err)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%s: %w", id, ErrTrailing)
	}
	p, hasData := m.(Payloader)
	switch {
	case hasData && len(frames) == 2:
		if len(frames[1]) > MaxData {
			return nil, fmt.Errorf("%s: %w", id, ErrTooLarge)
		}
		p.setPayload(frames[1])
	case hasData != (len(frames) == 2):
		return nil, fmt.Errorf("%s: %w", id, ErrFrames)
	}
	if v, ok := m.(interface{ validate() error }); ok {
		if err := v.validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", id, err)
		}
	}
	return m, nil
}

func clampU32(n int) uint32 {
	if n < 0 {
		return 0
	}
	if n > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}
