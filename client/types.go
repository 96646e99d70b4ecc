package client

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// Version is zp's software release, as zp version prints it and as the
// client names itself in OPEN.
const Version = "0.1.0"

// Code is a stable error code of the protocol (docs/PROTOCOL.md §4): 4xx
// the requester's fault, 5xx the server's.
type Code int

// Error codes a server reports.
const (
	CodeBadRequest   Code = 400 // malformed or out-of-sequence message
	CodeUnauthorised Code = 401 // the key may not act as that user
	CodeForbidden    Code = 403 // the user may not do that (permissions)
	CodeNotFound     Code = 404 // no such job, session or file
	CodeConflict     Code = 409 // channel already in use, file changed under us, job still running
	CodeGone         Code = 410 // session expired; it cannot be resumed
	CodeTooLarge     Code = 413 // frame or field over a limit
	CodeFlowControl  Code = 422 // data beyond the granted credit
	CodeVersion      Code = 426 // protocol version not supported
	CodeTooMany      Code = 429 // too many sessions or channels
	CodeInternal     Code = 500 // bug or unexpected failure on the server
	CodeUnavailable  Code = 503 // server shutting down
	CodeNoSpace      Code = 507 // disk full or quota exceeded
)

// String is the code's short description ("not found").
func (c Code) String() string { return wire.Code(c).String() }

// Error is a failure the server reported with one of the protocol's
// codes: test for it with errors.As.
type Error struct {
	Code   Code
	Reason string
	// Session: the error concerns the whole session (the server ended
	// it), not one request.
	Session bool
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%d %s", int(e.Code), e.Code)
	}
	return fmt.Sprintf("%d %s: %s", int(e.Code), e.Code, e.Reason)
}

// IsCode reports whether err is (or wraps) a server *Error with code c.
func IsCode(err error, c Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == c
}

// public converts the internal error types that cross this package's
// boundary into exported ones: a *wire.Error becomes an *Error, a
// zmtp.HandshakeError a *HandshakeError. Other errors pass unchanged.
func public(err error) error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		pe := &Error{Code: Code(we.Code), Reason: we.Reason, Session: we.Channel == 0}
		if error(we) == err {
			return pe
		}
		return &wrapped{msg: err.Error(), err: pe}
	}
	var he *zmtp.HandshakeError
	if errors.As(err, &he) {
		h := &HandshakeError{Reason: he.Reason, Err: he.Err}
		var pe *zmtp.PeerError
		if errors.As(err, &pe) {
			h.Refused = pe.Reason
		}
		if error(he) == err {
			return h
		}
		return &wrapped{msg: err.Error(), err: h}
	}
	return err
}

// wrapped keeps the text of an error whose cause was converted.
type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// HandshakeError is a failed security handshake (ZMTP with CURVE or NULL).
type HandshakeError struct {
	// Reason is one of the Handshake* constants.
	Reason string
	// Refused is the reason the server gave when it refused our key (its
	// ZMTP ERROR); empty otherwise.
	Refused string
	Err     error
}

// Reasons of a HandshakeError (bounded: zpd uses them as metric labels).
const (
	HandshakeGreeting     = "bad_greeting" // not ZMTP 3.x, malformed
	HandshakeMechanism    = "mechanism"    // one side runs CURVE, the other NULL (--insecure)
	HandshakeProtocol     = "protocol"     // malformed or unexpected command
	HandshakeCrypto       = "crypto"       // a box did not open: wrong key or tampering
	HandshakeUnauthorised = "unauthorised" // authenticated key not allowed
	HandshakeRejected     = "rejected"     // the server sent ERROR (see Refused)
	HandshakeTimeout      = "timeout"      // the server did not finish in time
	HandshakeIO           = "io"           // connection closed or failed
)

func (e *HandshakeError) Error() string {
	if e.Refused != "" {
		return "handshake failed: the server refused our key: " + e.Refused
	}
	return fmt.Sprintf("handshake failed (%s): %v", e.Reason, e.Err)
}
func (e *HandshakeError) Unwrap() error { return e.Err }

// Stream names a command's standard stream.
type Stream int

// The standard streams (indices of FollowOptions.Start and FollowResult.Next).
const (
	Stdin  Stream = 0
	Stdout Stream = 1
	Stderr Stream = 2
)

func (s Stream) String() string { return wire.Stream(s).String() }

// Status is how a remote command ended.
type Status int

// Statuses of an ExitStatus.
const (
	Exited        Status = 0 // Code is the exit code
	Signaled      Status = 1 // Code is the signal number
	FailedToStart Status = 2 // Code is 127 (not found) or 126 (not executable)
	Lost          Status = 3 // the session expired on the server; the command got SIGHUP
)

func (s Status) String() string {
	switch s {
	case Exited:
		return "exited"
	case Signaled:
		return "signaled"
	case FailedToStart:
		return "failed-to-start"
	case Lost:
		return "lost"
	}
	return "status " + strconv.Itoa(int(s))
}

// ExitStatus is how a remote command ended.
type ExitStatus struct {
	Status  Status
	Code    int    // exit code, or signal number when Status is Signaled
	Message string // detail from the server (e.g. command not found)
}

// ExitCode maps the status to a shell-style exit code: the command's own
// code, 128+N for signal N, 127/126 when it could not start, 255 when lost.
func (e *ExitStatus) ExitCode() int {
	switch e.Status {
	case Signaled:
		return 128 + e.Code
	case Lost:
		return 255
	}
	return e.Code
}

func exitFrom(m *wire.Exit) *ExitStatus {
	return &ExitStatus{Status: Status(m.Status), Code: int(m.Code), Message: m.Message}
}

// ServerInfo is what the server said when the session opened.
type ServerInfo struct {
	Protocol  int    // protocol version in use (1 or 2)
	Session   string // the session's id on the server
	Server    string // host name and software, free text
	Heartbeat time.Duration
	Timeout   time.Duration // silence after which either side presumes the other dead
	Grace     time.Duration // how long the server keeps a detached session
}

// JobInfo describes a background job (docs/PROTOCOL.md §9.2).
type JobInfo struct {
	ID          string
	Status      string // JobRunning, JobExited, JobKilled or JobFailedToStart
	CommandLine string // argv, shell-quoted
	User        string
	PID         int
	Started     time.Time
	Ended       time.Time // zero while running
	// ExitCode is the exit code; 128+N when killed by signal N; 127/126
	// when the command could not start. Meaningful once the job ended.
	ExitCode    int
	Signal      string // the signal's name when killed
	Message     string // why it could not start, or what went wrong while it ran
	StdoutBytes uint64
	StderrBytes uint64
	// StdoutOpen and StderrOpen: the job's stream is still connected.
	StdoutOpen, StderrOpen bool
	// Done: the job ended and its output is complete.
	Done bool

	fields map[string]string
}

// Job statuses.
const (
	JobRunning       = "running"
	JobExited        = "exited"
	JobKilled        = "killed"
	JobFailedToStart = "failed-to-start"
)

// Fields returns the job's description as the protocol's key/value pairs
// (keys as in docs/PROTOCOL.md §9.2, values as strings), including keys
// this version does not know. The map is a copy.
func (j *JobInfo) Fields() map[string]string {
	out := make(map[string]string, len(j.fields))
	for k, v := range j.fields {
		out[k] = v
	}
	return out
}

func jobFrom(m map[string]string) *JobInfo {
	j := &JobInfo{fields: m,
		ID: m["id"], Status: m["status"], CommandLine: m["command_line"], User: m["user"],
		Signal: m["signal"], Message: m["message"],
		StdoutBytes: parseUint(m["stdout_bytes"]), StderrBytes: parseUint(m["stderr_bytes"]),
		StdoutOpen: m["stdout"] == "connected", StderrOpen: m["stderr"] == "connected",
		Done: m["done"] == "true",
	}
	j.PID, _ = strconv.Atoi(m["pid"])
	j.ExitCode, _ = strconv.Atoi(m["exit_code"])
	j.Started, _ = time.Parse(time.RFC3339Nano, m["started"])
	j.Ended, _ = time.Parse(time.RFC3339Nano, m["ended"])
	return j
}
