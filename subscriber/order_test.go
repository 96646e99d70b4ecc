package subscriber

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
)

// feed plays a sender that announces entries in order, sends the content
// of each file the receiver asks for (bodies) and ends; it returns each
// entry's outcome (0 made, else the FILE_DONE code).
func feed(t *testing.T, dst string, entries []wire.File, bodies map[uint32][]byte) map[uint32]uint16 {
	t.Helper()
	root, err := chunkstore.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	out := make(chan wire.Message, 4096)
	recv := NewReceiver(ReceiverConfig{
		Channel: 1, Root: root, Flags: wire.XferRecursive, Window: 1 << 20,
		Send: func(m wire.Message) error { out <- m; return nil },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- recv.Run(ctx) }()
	for i := range entries {
		e := entries[i]
		e.Channel = 1
		recv.Deliver(&e)
	}
	var seq uint64
	got := map[uint32]uint16{}
	ended := false
	for {
		var m wire.Message
		select {
		case m = <-out:
		case err := <-errc:
			// Run returns right after it sends END: that END is then
			// already in out, and the select may have picked this first.
			if err == nil && ended {
				for len(out) > 0 {
					if _, ok := (<-out).(*wire.End); ok {
						return got
					}
				}
			}
			t.Fatalf("receiver ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("no answer for every entry: %v", got)
		}
		switch m := m.(type) {
		case *wire.FileOK:
			if m.Action != wire.ActionSend {
				got[m.FID] = 0
				break
			}
			b := bodies[m.FID]
			recv.Deliver(&wire.Chunk{Channel: 1, FID: m.FID, Offset: 0, Seq: seq, Bytes: b})
			seq += uint64(len(b))
			d := sha256.Sum256(b)
			recv.Deliver(&wire.Commit{Channel: 1, FID: m.FID, Size: uint64(len(b)), Digest: d[:]})
		case *wire.FileDone:
			got[m.FID] = m.Code
		case *wire.End:
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			return got
		}
		if len(got) == len(entries) && !ended {
			ended = true
			recv.Deliver(&wire.End{Channel: 1, Count: uint32(len(entries))})
		}
	}
}

// The outcome is that of applying entries in the order sent, whatever a
// hostile sender sends and however the receiver's writers interleave: an
// alias of a directory ("L" -> ".") gives no second name to write a file
// on another writer than its directory's, and a later entry waits for
// earlier entries beneath its name.
func TestReceiverAppliesInOrder(t *testing.T) {
	r := NewReceiver(ReceiverConfig{})
	if r.writerFor("") == r.writerFor("L") || r.writerFor("") == r.writerFor("a") {
		t.Fatal("bug in the test: the names share a writer")
	}
	file := func(fid uint32, path string) wire.File {
		return wire.File{FID: fid, Path: path, Kind: wire.KindFile, Mode: 0o644, MTime: 1e18, Size: 4}
	}
	link := func(fid uint32, path, target string) wire.File {
		return wire.File{FID: fid, Path: path, Kind: wire.KindSymlink, Target: target}
	}
	dir := func(fid uint32, path string) wire.File {
		return wire.File{FID: fid, Path: path, Kind: wire.KindDir, Mode: 0o755}
	}
	cases := []struct {
		name    string
		entries []wire.File
		check   func(t *testing.T, dst string, got map[uint32]uint16)
	}{
		{"a file through an alias, then a symlink of its name", []wire.File{link(1, "L", "."), file(2, "L/f"), link(3, "f", "target")},
			func(t *testing.T, dst string, got map[uint32]uint16) {
				if st, err := os.Lstat(filepath.Join(dst, "f")); err != nil || st.Mode()&os.ModeSymlink == 0 {
					t.Fatalf("f is not the symlink sent last: %v %v", st.Mode(), err)
				}
				if got[2] != uint16(wire.CodeBadRequest) {
					t.Errorf("L/f: code %d, want 400 (through a symlink)", got[2])
				}
			}},
		{"a directory beneath, then a symlink of its parent", []wire.File{dir(1, "a/b"), link(2, "a", "x")},
			func(t *testing.T, dst string, got map[uint32]uint16) {
				if st, err := os.Lstat(filepath.Join(dst, "a/b")); err != nil || !st.IsDir() {
					t.Fatalf("a/b: %v", err)
				}
				if got[1] != 0 || got[2] == 0 {
					t.Errorf("codes %v: want a/b made and the symlink a refused", got)
				}
			}},
		{"a file beneath, then a file of its parent's name", []wire.File{file(1, "a/f"), file(2, "a")},
			func(t *testing.T, dst string, got map[uint32]uint16) {
				if b, err := os.ReadFile(filepath.Join(dst, "a/f")); err != nil || string(b) != "body" {
					t.Fatalf("a/f: %q %v", b, err)
				}
				if got[1] != 0 || got[2] == 0 {
					t.Errorf("codes %v: want a/f made and the file a refused", got)
				}
			}},
	}
	bodies := map[uint32][]byte{1: []byte("body"), 2: []byte("body"), 3: []byte("body")}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for range 20 {
				dst := t.TempDir()
				c.check(t, dst, feed(t, dst, c.entries, bodies))
				if t.Failed() {
					return
				}
			}
		})
	}
}

// Every entry gets an answer: one of a kind the receiver does not know
// (a newer sender's) a FILE_DONE 400, and the transfer goes on.
func TestReceiverUnknownKind(t *testing.T) {
	dst := t.TempDir()
	got := feed(t, dst, []wire.File{
		{FID: 1, Path: "dev", Kind: 9, Mode: 0o644},
		{FID: 2, Path: "f", Kind: wire.KindFile, Mode: 0o644, MTime: 1e18, Size: 4},
	}, map[uint32][]byte{2: []byte("body")})
	if got[1] != uint16(wire.CodeBadRequest) || got[2] != 0 {
		t.Fatalf("answers %v", got)
	}
}

// A sender that reuses the number of an entry still in progress breaks
// the protocol: the receiver says so and stops.
func TestReceiverDuplicateEntry(t *testing.T) {
	root, err := chunkstore.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	out := make(chan wire.Message, 64)
	recv := NewReceiver(ReceiverConfig{Channel: 1, Root: root, Window: 1 << 20, Send: func(m wire.Message) error { out <- m; return nil }})
	f := &wire.File{Channel: 1, FID: 1, Path: "f", Kind: wire.KindFile, Mode: 0o644, Size: 4}
	recv.Deliver(f)
	recv.Deliver(f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := recv.Run(ctx); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Run: %v, want ErrProtocol", err)
	}
	for {
		select {
		case m := <-out:
			if e, ok := m.(*wire.Error); ok && e.Code == wire.CodeBadRequest {
				return
			}
		default:
			t.Fatal("no ERROR 400 sent")
		}
	}
}
