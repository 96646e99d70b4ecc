package subscriber

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// transfer runs a Sender and a Receiver back to back in memory, copying
// src (a directory, rsync's "src/" form) into dst.
func transfer(t *testing.T, src, dst string) (publisher.SendStats, *Receiver) {
	t.Helper()
	root, err := chunkstore.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sender *publisher.Sender
	recv := NewReceiver(ReceiverConfig{
		Channel: 1, Root: root, Flags: wire.XferRecursive, Window: 1 << 20,
		Send: func(m wire.Message) error {
			if !sender.Deliver(m) {
				return fmt.Errorf("sender queue full")
			}
			return nil
		},
	})
	sender = publisher.NewSender(publisher.SenderConfig{
		Channel: 1, Window: 1 << 20, Chunk: 4096,
		Send: func(m wire.Message) error {
			if !recv.Deliver(m) {
				t.Errorf("receiver refused %s: queue full", m.ID())
			}
			return nil
		},
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
	return st, recv
}

// Entries of many directories are written by parallel writers: every file
// must arrive whole, and what the receiver remembers per entry must be
// gone once the transfer ends, also for files it skipped (a no-op sync of
// a huge tree must not grow the receiver's memory).
func TestReceiverTree(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	const dirs, per = 20, 30
	for d := range dirs {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range per {
			// Sizes from 0 to several chunks, so that some files take
			// many CHUNKs interleaved with other directories' files.
			data := bytes.Repeat([]byte{byte(d), byte(f)}, (d*per+f)*37%20000)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", f)), data, 0o640); err != nil {
				t.Fatal(err)
			}
		}
	}
	st, recv := transfer(t, src, dst)
	if st.Files != dirs*per || len(st.Failures) != 0 {
		t.Fatalf("first copy: %d files, failures %v", st.Files, st.Failures)
	}
	for d := range dirs {
		for f := range per {
			name := filepath.Join(fmt.Sprintf("d%02d", d), fmt.Sprintf("f%02d", f))
			want, _ := os.ReadFile(filepath.Join(src, name))
			got, err := os.ReadFile(filepath.Join(dst, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: %d octets, want %d (%v)", name, len(got), len(want), err)
			}
			if fi, err := os.Stat(filepath.Join(dst, name)); err != nil || fi.Mode().Perm() != 0o640 {
				t.Fatalf("%s: mode %v (%v)", name, fi.Mode(), err)
			}
		}
	}
	if n := len(recv.route) + len(recv.files); n != 0 {
		t.Errorf("after the copy the receiver still tracks %d entries", n)
	}

	st, recv = transfer(t, src, dst)
	if st.Skipped != dirs*per || st.Files != 0 {
		t.Fatalf("second copy: %d skipped, %d copied; want all skipped", st.Skipped, st.Files)
	}
	if n := len(recv.route) + len(recv.files); n != 0 {
		t.Errorf("after a no-op sync the receiver still tracks %d entries", n)
	}
}
