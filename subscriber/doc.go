// Package subscriber is the receiving half of zp's file transfers,
// broadcasts and job output: it writes entries through chunkstore, checks
// digests, grants credit (package credit), works out what a broadcast must
// send and applies it, and follows a job's output (Follower). No sockets:
// callers pass it what arrives and send what it returns.
package subscriber

import "errors"

// ErrProtocol wraps what a Receiver returns when its sender broke the
// protocol (credit, order, entry numbers): not a network fault, so
// trying again would meet the same sender.
var ErrProtocol = errors.New("subscriber: the sender broke the protocol")

// ErrKind is an entry of a kind the Receiver does not know (a newer
// sender's): answered with FILE_DONE 400, the transfer goes on.
var ErrKind = errors.New("subscriber: entry of unknown kind")

// violation is an error of the peer's that breaks the protocol: it reads
// as the error itself and matches ErrProtocol.
type violation struct{ err error }

func (v violation) Error() string        { return v.err.Error() }
func (v violation) Unwrap() error        { return v.err }
func (v violation) Is(target error) bool { return target == ErrProtocol }
