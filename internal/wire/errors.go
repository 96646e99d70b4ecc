package wire

import "fmt"

// Code is a stable error code: 4xx the requester's fault, 5xx the server's.
type Code uint16

// Error codes, as in docs/PROTOCOL.md.
const (
	CodeBadRequest   Code = 400 // malformed or out-of-sequence message
	CodeUnauthorised Code = 401 // the key may not act as that user
	CodeForbidden    Code = 403 // the user may not do that (permissions)
	CodeNotFound     Code = 404 // no such job, session or file
	CodeConflict     Code = 409 // channel already in use, file changed under us
	CodeGone         Code = 410 // session expired; it cannot be resumed
	CodeTooLarge     Code = 413 // frame or field over a limit
	CodeFlowControl  Code = 422 // data beyond the granted credit
	CodeVersion      Code = 426 // protocol version not supported
	CodeTooMany      Code = 429 // too many sessions or channels
	CodeInternal     Code = 500 // bug or unexpected failure on the server
	CodeUnavailable  Code = 503 // server shutting down
	CodeNoSpace      Code = 507 // disk full or quota exceeded
)

var codeText = map[Code]string{
	CodeBadRequest: "bad request", CodeUnauthorised: "unauthorised", CodeForbidden: "forbidden",
	CodeNotFound: "not found", CodeConflict: "conflict", CodeGone: "gone", CodeTooLarge: "too large",
	CodeFlowControl: "flow control violation", CodeVersion: "version not supported",
	CodeTooMany: "too many", CodeInternal: "internal error", CodeUnavailable: "unavailable",
	CodeNoSpace: "no space left",
}

func (c Code) String() string {
	if t, ok := codeText[c]; ok {
		return t
	}
	return fmt.Sprintf("error %d", uint16(c))
}

// Error is the ERROR message and the Go error for a failure a peer
// reported. Channel 0 concerns the whole session.
type Error struct {
	Channel uint32
	Code    Code
	Reason  string
}

func (*Error) ID() MsgID { return IDError }
func (m *Error) encode(e *encoder) {
	e.u32(m.Channel)
	e.u16(uint16(m.Code))
	e.longstr(m.Reason)
}
func (m *Error) decode(d *decoder) {
	m.Channel = d.u32("channel")
	m.Code = Code(d.u16("code"))
	m.Reason = d.longstr("reason")
}
func (m *Error) validate() error {
	if m.Code < 400 || m.Code > 599 {
		return fmt.Errorf("%w: error code %d", ErrInvalid, m.Code)
	}
	if len(m.Reason) > 4096 {
		return fmt.Errorf("%w: reason too long", ErrTooLarge)
	}
	return nil
}

func (m *Error) Error() string {
	if m.Reason == "" {
		return fmt.Sprintf("%s (%d)", m.Code, uint16(m.Code))
	}
	return fmt.Sprintf("%s (%d)", m.Reason, uint16(m.Code))
}

// Errorf builds an Error for channel.
func Errorf(channel uint32, code Code, format string, args ...any) *Error {
	return &Error{Channel: channel, Code: code, Reason: fmt.Sprintf(format, args...)}
}
