package subscriber

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// The batcher keeps the order of what was sent, puts runs of batchable
// messages in BATCH, sends the rest alone, and flushes on Close.
func TestBatcherOrder(t *testing.T) {
	var mu sync.Mutex
	var wireMsgs []wire.Message
	gate := make(chan struct{})
	b := newBatcher(3, func(m wire.Message) error {
		<-gate // hold the first send so that the rest queue up behind it
		mu.Lock()
		wireMsgs = append(wireMsgs, m)
		mu.Unlock()
		return nil
	})
	var want []wire.Message
	send := func(m wire.Message) {
		t.Helper()
		want = append(want, m)
		if err := b.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	send(&wire.FileOK{Channel: 3, FID: 1})
	time.Sleep(20 * time.Millisecond) // the batcher takes it and waits at the gate
	for i := uint32(2); i < 600; i++ {
		send(&wire.FileOK{Channel: 3, FID: i, Action: wire.ActionSkip})
		if i == 300 {
			send(wire.Errorf(3, wire.CodeBadRequest, "not batchable"))
		}
	}
	send(&wire.End{Channel: 3, Count: 600})
	close(gate)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	after := &wire.End{Channel: 3, Count: 1}
	send(after) // after Close: sent directly
	var got []wire.Message
	batches := 0
	for _, m := range wireMsgs {
		if bm, ok := m.(*wire.Batch); ok {
			batches++
			if len(bm.Msgs) > batchMessages {
				t.Errorf("a batch of %d messages", len(bm.Msgs))
			}
			// What goes out must decode: one channel, batchable only.
			if _, err := wire.Decode(wire.Frames(bm)); err != nil {
				t.Fatalf("batch does not decode: %v", err)
			}
			got = append(got, bm.Msgs...)
			continue
		}
		got = append(got, m)
	}
	if len(got) != len(want) {
		t.Fatalf("%d messages arrived, %d sent", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d: got %v, want %v", i, got[i], want[i])
		}
	}
	// 1 alone, 298 + 299 FILE_OKs in batches of at most 256, the ERROR,
	// END, and END after Close: far fewer wire messages than entries.
	if batches < 3 || len(wireMsgs) > 10 {
		t.Fatalf("%d wire messages (%d batches) for %d messages", len(wireMsgs), batches, len(want))
	}
}

// A send error sticks: later Sends report it.
func TestBatcherError(t *testing.T) {
	boom := errors.New("link lost")
	b := newBatcher(1, func(wire.Message) error { return boom })
	_ = b.Send(&wire.Ack{Channel: 1, Offset: 1, Limit: 2})
	if err := b.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Send(&wire.Ack{Channel: 1, Offset: 1, Limit: 2}); !errors.Is(err, boom) {
		t.Fatalf("Send after a failure: %v", err)
	}
}

// A transfer with Batch on both sides, every message through the codec
// as on the wire, copies a tree exactly and re-syncs it, with far fewer
// wire messages than entries each way.
func TestBatchedTransfer(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	const n = 600
	for i := range n {
		d := filepath.Join(src, fmt.Sprintf("d%d", i%3))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", i)), bytes.Repeat([]byte{byte(i)}, 100+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("d0/f000", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	entries := n + 3 + 1

	for _, run := range []string{"copy", "re-sync"} {
		st, toRecv, toSend := batchedTransfer(t, src, dst)
		if len(st.Failures) > 0 {
			t.Fatalf("%s: %v", run, st.Failures[0].Err)
		}
		switch run {
		case "copy":
			if st.Files != n || st.Links != 1 {
				t.Fatalf("copy: %+v", st)
			}
		case "re-sync":
			if st.Skipped != n {
				t.Fatalf("re-sync: %d skipped, want %d", st.Skipped, n)
			}
		}
		// Sender: one CHUNK per file copied, FILEs and COMMITs in
		// batches (unbatched: 2 per file copied and 1 per entry).
		// Receiver: its answers (FILE_OK, FILE_DONE: two per file copied,
		// one per file skipped) in batches, as many as timing makes.
		t.Logf("%s: sender %d, receiver %d wire messages", run, toRecv, toSend)
		if maxSender := st.Files + entries/2; toRecv > maxSender {
			t.Errorf("%s: sender sent %d wire messages for %d entries (want at most %d)", run, toRecv, entries, maxSender)
		}
		if answers := 2*st.Files + st.Skipped + st.Dirs + st.Links; toSend > answers/2 {
			t.Errorf("%s: receiver sent %d wire messages for %d answers", run, toSend, answers)
		}
	}
	for i := range n {
		p := filepath.Join(fmt.Sprintf("d%d", i%3), fmt.Sprintf("f%03d", i))
		a, _ := os.ReadFile(filepath.Join(src, p))
		b, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s: differs (%v)", p, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "d0/f000" {
		t.Fatalf("link: %q %v", l, err)
	}
}

// batchedTransfer runs a Sender and a Receiver with Batch set, passing
// every message through the codec and unpacking BATCH as zpd and the
// client do; it returns the sender's stats and the wire messages each
// side sent.
func batchedTransfer(t *testing.T, src, dst string) (publisher.SendStats, int, int) {
	t.Helper()
	root, err := chunkstore.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	toRecv, toSend := 0, 0
	// through encodes m as on the wire and hands what it carries to deliver.
	through := func(m wire.Message, count *int, deliver func(wire.Message) bool) error {
		mu.Lock()
		*count++
		mu.Unlock()
		got, err := wire.Decode(wire.Frames(m))
		if err != nil {
			return err
		}
		msgs := []wire.Message{got}
		if b, ok := got.(*wire.Batch); ok {
			msgs = b.Msgs
		}
		for _, m := range msgs {
			if !deliver(m) {
				return fmt.Errorf("%s refused: queue full", m.ID())
			}
		}
		return nil
	}
	var sender *publisher.Sender
	recv := NewReceiver(ReceiverConfig{
		Channel: 1, Root: root, Flags: wire.XferRecursive, Umask: 0o022, Window: 1 << 20, Batch: true,
		Send: func(m wire.Message) error { return through(m, &toSend, sender.Deliver) },
	})
	sender = publisher.NewSender(publisher.SenderConfig{
		Channel: 1, Window: 1 << 20, Chunk: 4096, Batch: true,
		Send: func(m wire.Message) error { return through(m, &toRecv, recv.Deliver) },
	})
	recvErr := make(chan error, 1)
	go func() { recvErr <- recv.Run(ctx) }()
	st, err := sender.Run(ctx, func(emit func(publisher.Entry) error) error {
		return publisher.Walk([]string{src + "/"}, true, false, func(string, bool) {}, emit)
	})
	if err != nil {
		t.Fatalf("sender: %v", err)
	}
	if err := <-recvErr; err != nil {
		t.Fatalf("receiver: %v", err)
	}
	return st, toRecv, toSend
}
