package zmtp

import (
	"context"
	"fmt"
)

// Null is the NULL mechanism (RFC 23): metadata in READY commands, no
// authentication, frames in clear.
type Null struct{}

// Name implements Mechanism.
func (Null) Name() string { return "NULL" }

// Handshake implements Mechanism: each side sends READY and reads the peer's.
func (Null) Handshake(ctx context.Context, rw CommandRW, _ bool, local Metadata) (*Peer, error) {
	if err := rw.WriteCommand("READY", local.AppendEncode(nil)); err != nil {
		return nil, Fail(ReasonIO, err)
	}
	name, data, err := rw.ReadCommand()
	if err != nil {
		return nil, Fail(ReasonIO, err)
	}
	switch name {
	case "READY":
	case "ERROR":
		return nil, Fail(ReasonRejected, &PeerError{Reason: errorReason(data)})
	default:
		return nil, Fail(ReasonProtocol, fmt.Errorf("zmtp: NULL: unexpected command %q", name))
	}
	meta, err := DecodeMetadata(data)
	if err != nil {
		return nil, Fail(ReasonProtocol, err)
	}
	return &Peer{Meta: meta}, nil
}

// errorReason decodes the body of an ERROR command (reason-size, reason).
func errorReason(data []byte) string {
	if len(data) == 0 || len(data) < 1+int(data[0]) {
		return "(malformed ERROR)"
	}
	return string(data[1 : 1+int(data[0])])
}

// ErrorBody encodes an ERROR command body, truncating reason to 255 octets.
func ErrorBody(reason string) []byte {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	return append([]byte{byte(len(reason))}, reason...)
}
