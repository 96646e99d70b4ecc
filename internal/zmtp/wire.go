package zmtp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ZMTP 3.0 framing (RFC 23).
const (
	greetingLen = 64

	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
)

var (
	errGreeting = errors.New("zmtp: not a ZMTP 3.x greeting")
	errFrame    = errors.New("zmtp: malformed frame")
	errTooLarge = errors.New("zmtp: frame exceeds limit")
)

// greeting builds the 64-octet greeting for mechanism.
func greeting(mechanism string, asServer bool) [greetingLen]byte {
	var g [greetingLen]byte
	g[0] = 0xFF
	g[9] = 0x7F
	g[10] = 3 // version 3.0: we speak no 3.1 commands (PING, SUBSCRIBE)
	g[11] = 0
	copy(g[12:32], mechanism)
	if asServer {
		g[32] = 1
	}
	return g
}

// parseGreeting checks a peer greeting and returns its mechanism.
func parseGreeting(g []byte) (mechanism string, err error) {
	if len(g) != greetingLen || g[0] != 0xFF || g[9]&1 != 1 || g[10] < 3 {
		return "", errGreeting
	}
	m := g[12:32]
	n := 0
	for n < len(m) && m[n] != 0 {
		n++
	}
	for _, c := range m[n:] {
		if c != 0 {
			return "", errGreeting
		}
	}
	return string(m[:n]), nil
}

// appendFrameHeader appends a ZMTP frame header for a body of size n.
func appendFrameHeader(dst []byte, flags byte, n int) []byte {
	if n > 255 {
		dst = append(dst, flags|flagLong)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, flags, byte(n))
}

// readFrameHeader reads a frame header and returns flags (without LONG) and
// body size, refusing sizes above limit before anything is allocated.
func readFrameHeader(r *bufio.Reader, limit int) (flags byte, size int, err error) {
	f, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	if f&^(flagMore|flagLong|flagCommand) != 0 {
		return 0, 0, errFrame
	}
	var n uint64
	if f&flagLong != 0 {
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, 0, eofToUnexpected(err)
		}
		n = binary.BigEndian.Uint64(b[:])
	} else {
		c, err := r.ReadByte()
		if err != nil {
			return 0, 0, eofToUnexpected(err)
		}
		n = uint64(c)
	}
	if n > uint64(limit) {
		return 0, 0, fmt.Errorf("%w: %d octets, limit %d", errTooLarge, n, limit)
	}
	return f &^ flagLong, int(n), nil
}

func eofToUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// encodeCommand returns a command body: name-size, name, data.
func encodeCommand(name string, data []byte) []byte {
	b := make([]byte, 0, 1+len(name)+len(data))
	b = append(b, byte(len(name)))
	b = append(b, name...)
	return append(b, data...)
}

// splitCommand splits a command body into name and data.
func splitCommand(body []byte) (string, []byte, error) {
	if len(body) < 1 || int(body[0]) == 0 || len(body) < 1+int(body[0]) {
		return "", nil, errFrame
	}
	n := int(body[0])
	return string(body[1 : 1+n]), body[1+n:], nil
}

// rawCommandRW implements CommandRW on the raw connection.
type rawCommandRW struct {
	r *bufio.Reader
	w io.Writer
}

func (c *rawCommandRW) WriteCommand(name string, data []byte) error {
	body := encodeCommand(name, data)
	frame := appendFrameHeader(make([]byte, 0, 9+len(body)), flagCommand, len(body))
	_, err := c.w.Write(append(frame, body...))
	return err
}

func (c *rawCommandRW) ReadCommand() (string, []byte, error) {
	flags, size, err := readFrameHeader(c.r, MaxHandshakeCommand)
	if err != nil {
		return "", nil, err
	}
	if flags != flagCommand {
		return "", nil, fmt.Errorf("%w: data frame during handshake", errFrame)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return "", nil, eofToUnexpected(err)
	}
	return splitCommand(body)
}
