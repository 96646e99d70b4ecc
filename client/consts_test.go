package client

import (
	"errors"
	"testing"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// The public constants repeat internal ones (so that go doc shows values,
// not internal names): they must not drift.
func TestPublicConstants(t *testing.T) {
	pairs := []struct{ pub, internal any }{
		{Version, wire.SoftwareVersion},
		{PortControl, wire.PortControl}, {PortPublish, wire.PortPublish},
		{HandshakeGreeting, zmtp.ReasonGreeting}, {HandshakeMechanism, zmtp.ReasonMechanism},
		{HandshakeProtocol, zmtp.ReasonProtocol}, {HandshakeCrypto, zmtp.ReasonCrypto},
		{HandshakeUnauthorised, zmtp.ReasonUnauthorised}, {HandshakeRejected, zmtp.ReasonRejected},
		{HandshakeTimeout, zmtp.ReasonTimeout}, {HandshakeIO, zmtp.ReasonIO},
		{int(CodeBadRequest), int(wire.CodeBadRequest)}, {int(CodeUnauthorised), int(wire.CodeUnauthorised)},
		{int(CodeForbidden), int(wire.CodeForbidden)}, {int(CodeNotFound), int(wire.CodeNotFound)},
		{int(CodeConflict), int(wire.CodeConflict)}, {int(CodeGone), int(wire.CodeGone)},
		{int(CodeTooLarge), int(wire.CodeTooLarge)}, {int(CodeFlowControl), int(wire.CodeFlowControl)},
		{int(CodeVersion), int(wire.CodeVersion)}, {int(CodeTooMany), int(wire.CodeTooMany)},
		{int(CodeInternal), int(wire.CodeInternal)}, {int(CodeUnavailable), int(wire.CodeUnavailable)},
		{int(CodeNoSpace), int(wire.CodeNoSpace)},
		{int(Exited), int(wire.Exited)}, {int(Signaled), int(wire.Signaled)},
		{int(FailedToStart), int(wire.FailedToStart)}, {int(Lost), int(wire.Lost)},
		{int(Stdin), int(wire.Stdin)}, {int(Stdout), int(wire.Stdout)}, {int(Stderr), int(wire.Stderr)},
	}
	for i, p := range pairs {
		if p.pub != p.internal {
			t.Errorf("%d: public %v, internal %v", i, p.pub, p.internal)
		}
	}
}

// An ERROR from the server reaches callers as *Error, with its code.
func TestPublicErrors(t *testing.T) {
	err := public(&wire.Error{Channel: 3, Code: wire.CodeNotFound, Reason: "no job x"})
	if !IsCode(err, CodeNotFound) {
		t.Fatalf("%T %v", err, err)
	}
	if e := err.(*Error); e.Session || e.Reason != "no job x" {
		t.Fatalf("%+v", e)
	}
	if !public(&wire.Error{Code: wire.CodeGone}).(*Error).Session {
		t.Fatal("channel 0 is the session")
	}
	var he *HandshakeError
	if err := public(&zmtp.HandshakeError{Reason: zmtp.ReasonRejected, Err: &zmtp.PeerError{Reason: "not authorised"}}); !errorsAs(err, &he) || he.Refused != "not authorised" {
		t.Fatalf("%T %v", err, err)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
