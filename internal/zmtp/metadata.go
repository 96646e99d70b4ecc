package zmtp

import (
	"encoding/binary"
	"errors"
	"strings"
)

// Property names defined by ZMTP 3.0.
const (
	PropSocketType = "Socket-Type"
	PropIdentity   = "Identity"
)

// Metadata is an ordered list of ZMTP properties (RFC 23 "metadata").
// Names compare case-insensitively.
type Metadata []Property

// Property is one name/value pair of Metadata.
type Property struct {
	Name  string
	Value []byte
}

// MaxMetadata bounds encoded metadata we accept.
const MaxMetadata = 16 << 10

var errMetadata = errors.New("zmtp: malformed metadata")

// Get returns the value of name, and whether it was present.
func (m Metadata) Get(name string) ([]byte, bool) {
	for _, p := range m {
		if strings.EqualFold(p.Name, name) {
			return p.Value, true
		}
	}
	return nil, false
}

// AppendEncode appends the wire form of m to dst.
func (m Metadata) AppendEncode(dst []byte) []byte {
	for _, p := range m {
		dst = append(dst, byte(len(p.Name)))
		dst = append(dst, p.Name...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.Value)))
		dst = append(dst, p.Value...)
	}
	return dst
}

// DecodeMetadata parses the wire form of metadata. Values alias b.
func DecodeMetadata(b []byte) (Metadata, error) {
	if len(b) > MaxMetadata {
		return nil, errMetadata
	}
	var m Metadata
	for len(b) > 0 {
		n := int(b[0])
		b = b[1:]
		if n == 0 || len(b) < n+4 {
			return nil, errMetadata
		}
		name := string(b[:n])
		if !validName(name) {
			return nil, errMetadata
		}
		b = b[n:]
		vlen := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(vlen) > uint64(len(b)) {
			return nil, errMetadata
		}
		m = append(m, Property{Name: name, Value: b[:vlen:vlen]})
		b = b[vlen:]
	}
	return m, nil
}

func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '_', c == '.', c == '+':
		default:
			return false
		}
	}
	return true
}
