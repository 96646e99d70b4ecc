package subscriber

import (
	"sync"

	"github.com/zpipes/zp/internal/wire"
)

// batcher sends a Receiver's answers (FILE_OK, FILE_DONE, ACK) in BATCH
// messages (protocol version 6): whatever the writers and commit workers
// queued while the previous send was under way leaves as one message, so
// that a tree of small files costs the transport (a ZeroMQ message, a
// CURVE box, a wake-up of the peer's reader) per batch, not per entry.
// Nothing waits for a batch to fill: the first answer after an idle
// moment leaves at once, alone.
//
// Messages leave in the order Send was called. Send never blocks on the
// network; the queue it appends to is bounded by what the protocol lets
// a sender have in flight (an answer or two per announced entry, an ACK
// per credit step).
type batcher struct {
	channel uint32
	send    func(wire.Message) error

	mu     sync.Mutex
	queue  []wire.Message
	err    error // the first send error: later Sends return it
	closed bool  // Close was called: Send sends directly
	wake   chan struct{}
	quit   chan struct{}
	done   chan struct{}
}

// Limits of one BATCH this side sends (a receiver accepts up to
// wire.MaxBatch messages and wire.MaxHeader octets).
const (
	batchMessages = 256
	batchOctets   = 64 << 10
)

func newBatcher(channel uint32, send func(wire.Message) error) *batcher {
	b := &batcher{channel: channel, send: send, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	return b
}

// Send queues m.
func (b *batcher) Send(m wire.Message) error {
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return err
	}
	if b.closed {
		b.mu.Unlock()
		return b.send(m)
	}
	b.queue = append(b.queue, m)
	first := len(b.queue) == 1
	b.mu.Unlock()
	if first {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Close sends what is queued and stops; later Sends go out directly.
// Call it once.
func (b *batcher) Close() error {
	close(b.quit)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *batcher) run() {
	defer close(b.done)
	for {
		select {
		case <-b.wake:
			b.flush()
		case <-b.quit:
			for {
				b.flush()
				b.mu.Lock()
				if len(b.queue) == 0 {
					b.closed = true // under the lock: nothing queued is overtaken
					b.mu.Unlock()
					return
				}
				b.mu.Unlock()
			}
		}
	}
}

// flush sends everything queued, batching runs of batchable messages.
func (b *batcher) flush() {
	for {
		b.mu.Lock()
		q := b.queue
		b.queue = nil
		b.mu.Unlock()
		if len(q) == 0 {
			return
		}
		if err := b.sendAll(q); err != nil {
			b.mu.Lock()
			if b.err == nil {
				b.err = err
			}
			b.mu.Unlock()
		}
	}
}

func (b *batcher) sendAll(q []wire.Message) error {
	var run []wire.Message
	octets := 0
	out := func() error {
		m := wire.Bundle(b.channel, run)
		run, octets = nil, 0
		if m == nil {
			return nil
		}
		return b.send(m)
	}
	for _, m := range q {
		if !wire.Batchable(m) {
			if err := out(); err != nil {
				return err
			}
			if err := b.send(m); err != nil {
				return err
			}
			continue
		}
		size := encodedSize(m)
		if len(run) == batchMessages || (len(run) > 0 && octets+size > batchOctets) {
			if err := out(); err != nil {
				return err
			}
		}
		run = append(run, m)
		octets += size
	}
	return out()
}

// encodedSize estimates a message's header size (its variable parts).
func encodedSize(m wire.Message) int {
	switch m := m.(type) {
	case *wire.FileDone:
		return 32 + len(m.Reason)
	case *wire.FileOK:
		return 48 + len(m.Prefix)
	}
	return 64
}
