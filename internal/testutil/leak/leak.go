// Package leak holds the goroutine-leak checks' shared exceptions.
package leak

import "go.uber.org/goleak"

// ZMQ4 are the goroutines go-zeromq/zmq4 leaves behind for a moment after
// a socket's Close returns: its reaper and readers end shortly after, and
// its publisher goroutine can miss Close's wake-up (pub.go). Pass them to
// goleak.VerifyNone or goleak.VerifyTestMain in tests with real sockets.
var ZMQ4 = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*qreader).listen"),
	goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*socket).connReaper"),
	goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen"),
	goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*pubQReader).listen"),
	goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
	goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
}
