package zmtp

import (
	"context"
	"errors"
	"fmt"
)

// CommandRW reads and writes ZMTP commands on the raw connection while a
// mechanism's handshake runs. Bodies are the command body after the name.
type CommandRW interface {
	WriteCommand(name string, body []byte) error
	// ReadCommand returns the next command; a data frame at this point is an
	// error. Body size is bounded by MaxHandshakeCommand.
	ReadCommand() (name string, body []byte, err error)
}

// MaxHandshakeCommand bounds a command read during a handshake (INITIATE
// carries metadata; nothing legitimate comes near this).
const MaxHandshakeCommand = 64 << 10

// Mechanism is a ZMTP 3.0 security mechanism (RFC 23 section "Authentication
// and Confidentiality"). A Mechanism value is configuration: Handshake may be
// called from many goroutines at once, one per connection.
type Mechanism interface {
	// Name is the mechanism as written in the greeting ("NULL", "CURVE").
	Name() string
	// Handshake runs after both greetings. local is this side's metadata
	// (Socket-Type, Identity). It returns the authenticated peer.
	Handshake(ctx context.Context, rw CommandRW, asServer bool, local Metadata) (*Peer, error)
}

// Peer is the outcome of a successful handshake.
type Peer struct {
	Meta Metadata
	// Key is the peer's authenticated long-term public key (32 octets for
	// CURVE), nil for NULL.
	Key []byte
	// Cipher protects traffic frames; nil means frames travel in clear.
	Cipher Cipher
}

// Cipher turns traffic frames into MESSAGE command bodies and back. Seal is
// called by one goroutine (the writer) and Open by another (the reader); each
// direction keeps its own nonce, so the two may run concurrently.
type Cipher interface {
	// Overhead is len(Seal(nil, f, frame)) - len(frame).
	Overhead() int
	// Seal appends to dst the body of a MESSAGE command (starting with the
	// command name "\x07MESSAGE") that carries frame with the given flags
	// (FlagMore, FlagCommand).
	Seal(dst []byte, flags byte, frame []byte) []byte
	// Open authenticates and decrypts the body of a MESSAGE command (as
	// returned by Seal, name included) and appends the frame to dst.
	Open(dst []byte, body []byte) (flags byte, frame []byte, err error)
}

// Decrypter is a Cipher that can authenticate a MESSAGE first and decrypt
// its frame afterwards: the connection then decrypts each frame straight
// into the buffer zmq4 reads it into, instead of into its own and copying
// it over (curve's cipher is one).
type Decrypter interface {
	// Verify authenticates body as Open does and returns the flags and
	// the length of the frame it carries.
	Verify(body []byte) (flags byte, size int, err error)
	// Decrypt writes the frame octets off to off+len(dst) of the body
	// that Verify accepted last into dst.
	Decrypt(dst []byte, body []byte, off int)
}

// Flags carried inside a CURVE MESSAGE box (libzmq curve_mechanism_base).
const (
	FlagMore    = 0x01
	FlagCommand = 0x02
)

// HandshakeError is a failed handshake with a bounded reason, used as the
// metrics label zp_handshake_failures_total{reason}.
type HandshakeError struct {
	Reason string // one of the Reason* constants
	Err    error
}

// Reasons for a failed handshake.
const (
	ReasonGreeting     = "bad_greeting" // not ZMTP 3.x, malformed
	ReasonMechanism    = "mechanism"    // peer asked for another mechanism
	ReasonProtocol     = "protocol"     // malformed or unexpected command
	ReasonCrypto       = "crypto"       // a box did not open: wrong key or tampering
	ReasonUnauthorised = "unauthorised" // authenticated key not allowed
	ReasonRejected     = "rejected"     // the peer sent ERROR
	ReasonTimeout      = "timeout"      // the peer did not finish in time
	ReasonIO           = "io"           // connection closed or failed
	ReasonSocketType   = "socket_type"  // incompatible socket types
	ReasonServerKey    = "server_key"   // client: the server key is not the pinned one
	ReasonKeyQuery     = "key_query"    // a client greeted with NULL and was told the server key
	ReasonEvicted      = "evicted"      // dropped for a newer connection (too many handshakes)
)

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("zmtp: handshake failed (%s): %v", e.Reason, e.Err)
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// Fail wraps err as a HandshakeError with reason, unless it already is one.
func Fail(reason string, err error) error {
	var he *HandshakeError
	if errors.As(err, &he) {
		return err
	}
	return &HandshakeError{Reason: reason, Err: err}
}

// PeerError is the reason a peer gave in an ERROR command.
type PeerError struct{ Reason string }

func (e *PeerError) Error() string { return "peer refused: " + e.Reason }
