// Package publisher is the sending half of zp's file transfers,
// broadcasts and job output: it walks sources, announces entries, sends
// their content within the receiver's credit (package credit), builds
// broadcast manifests and content, and frames a job's publications and
// FETCH answers. No sockets: callers send what it returns.
package publisher

import "errors"

// ErrProtocol wraps what a Sender returns when its receiver broke the
// protocol: not a network fault, trying again would not help.
var ErrProtocol = errors.New("publisher: the receiver broke the protocol")

// violation is an error of the peer's that breaks the protocol: it reads
// as the error itself and matches ErrProtocol.
type violation struct{ err error }

func (v violation) Error() string        { return v.err.Error() }
func (v violation) Unwrap() error        { return v.err }
func (v violation) Is(target error) bool { return target == ErrProtocol }
