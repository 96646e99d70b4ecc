package subscriber

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
	"golang.org/x/sys/unix"
)

// transfer runs a Sender and a Receiver back to back in memory, copying
// src (a directory, rsync's "src/" form) into dst.
func transfer(t testing.TB, src, dst string) (publisher.SendStats, *Receiver) {
	t.Helper()
	return transferWith(t, src, dst, wire.XferRecursive, 0o022)
}

// transferWith is transfer with the SEND flags and the receiver's umask.
func transferWith(t testing.TB, src, dst string, flags uint8, umask uint32) (publisher.SendStats, *Receiver) {
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
		Channel: 1, Root: root, Flags: flags, Umask: umask, Window: 1 << 20,
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
	// Both ways of making a batch durable (commit): one syncfs when
	// little else is dirty, else one fdatasync per file.
	for _, tc := range []struct {
		name  string
		dirty uint64
	}{{"syncfs", 0}, {"per-file", 1 << 40}} {
		t.Run(tc.name, func(t *testing.T) {
			dirtyProbe = func() (uint64, bool) { return tc.dirty, true }
			t.Cleanup(func() { dirtyProbe = systemDirty })
			testReceiverTree(t)
		})
	}
}

func testReceiverTree(t *testing.T) {
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

// Modes as rsync gives them: without preserve (-p), the source's
// permission bits masked by the receiver's umask, setuid, setgid and
// sticky dropped; with it, the whole mode.
func TestReceiverModes(t *testing.T) {
	src := t.TempDir()
	modes := map[string]uint32{
		"suid": 0o4755, "sgid": 0o2750, "open": 0o666, "none": 0o000, "other": 0o007,
		"dir": 0o2775 | 1<<31, "tmp": 0o1777 | 1<<31, // 1<<31: a directory
	}
	for name, m := range modes {
		p := filepath.Join(src, name)
		if m&(1<<31) != 0 {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, m&0o7777); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		flags uint8
		umask uint32
		want  func(m uint32) uint32
	}{
		{wire.XferRecursive, 0o027, func(m uint32) uint32 { return m & 0o777 &^ 0o027 }},
		{wire.XferRecursive, 0o022, func(m uint32) uint32 { return m & 0o777 &^ 0o022 }},
		{wire.XferRecursive | wire.XferPreserve, 0o077, func(m uint32) uint32 { return m & 0o7777 }},
	} {
		t.Run(fmt.Sprintf("flags %x umask %03o", c.flags, c.umask), func(t *testing.T) {
			dst := t.TempDir()
			transferWith(t, src, dst, c.flags, c.umask)
			for name, m := range modes {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(dst, name), &st); err != nil {
					t.Fatal(err)
				}
				if got, want := st.Mode&0o7777, c.want(m&0o7777); got != want {
					t.Errorf("%s (source %04o): mode %04o, want %04o", name, m&0o7777, got, want)
				}
			}
		})
	}
}

// A directory made inside a setgid directory keeps the setgid bit it
// inherits (as under rsync), also without preserve.
func TestReceiverInheritedSetgid(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(src, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(dst, 0o2775); err != nil {
		t.Fatal(err)
	}
	transferWith(t, src, dst, wire.XferRecursive, 0o022)
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dst, "d"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o2755 {
		t.Fatalf("mode %04o, want 2755", st.Mode&0o7777)
	}
}

// TestReceiverRefusesFileOverDirectory: a file whose name is a directory
// at the destination fails at once (with the checksum flag too, which
// looks at the name differently), and the directory keeps its content.
func TestReceiverRefusesFileOverDirectory(t *testing.T) {
	for _, flags := range []uint8{wire.XferRecursive, wire.XferRecursive | wire.XferChecksum} {
		src, dst := t.TempDir(), t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "name"), []byte("a file"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dst, "name"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, "name", "inside"), []byte("kept"), 0o644); err != nil {
			t.Fatal(err)
		}
		st, _ := transferWith(t, src, dst, flags, 0o022)
		if len(st.Failures) != 1 || !strings.Contains(st.Failures[0].Err.Error(), "is a directory") {
			t.Errorf("flags %#x: failures %v, want one: is a directory", flags, st.Failures)
		}
		if b, err := os.ReadFile(filepath.Join(dst, "name", "inside")); err != nil || string(b) != "kept" {
			t.Errorf("flags %#x: the directory's file: %q, %v", flags, b, err)
		}
		for _, d := range []string{dst, filepath.Join(dst, "name")} {
			if ents, _ := os.ReadDir(d); len(ents) != 1 {
				t.Errorf("flags %#x: %s holds %d entries, want 1 (no partial left)", flags, d, len(ents))
			}
		}
	}
}

// TestReceiverFlushesWhenSenderWaits: once no file awaits content, the
// last batch is made durable and answered at once, not after batchDelay
// (here an hour: the copies would never end).
func TestReceiverFlushesWhenSenderWaits(t *testing.T) {
	defer func(d time.Duration) { batchDelay = d }(batchDelay)
	batchDelay = time.Hour
	for _, n := range []int{1, 3, batchFiles + 5} {
		src, dst := t.TempDir(), t.TempDir()
		for i := range n {
			if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), []byte("small"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// transfer fails when its 30 s are up
		if st, _ := transfer(t, src, dst); st.Files != n || len(st.Failures) != 0 {
			t.Errorf("%d files: sent %d, failures %v", n, st.Files, st.Failures)
		}
	}
}
