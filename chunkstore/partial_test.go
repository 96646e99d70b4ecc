package chunkstore

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	zpdigest "github.com/zpipes/zp/internal/digest"
)

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// partials lists the partial files in dir.
func partials(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".zpc-") && strings.HasSuffix(e.Name(), ".part") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestPartialResume(t *testing.T) {
	f := newFixture(t)
	content := randomBytes(3<<20+123, 1)
	mtime := time.Date(2022, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano()
	size := uint64(len(content))

	p, err := f.root.OpenPartial("dir/file", size, mtime, sha256.New)
	if err == nil {
		t.Fatal("OpenPartial without its directory")
	}
	if err := f.root.MkdirAll("dir"); err != nil {
		t.Fatal(err)
	}
	p, err = f.root.OpenPartial("dir/file", size, mtime, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if p.Have() != 0 {
		t.Fatalf("fresh partial has %d", p.Have())
	}
	// Written in pieces, some larger than the writeback step.
	cut := 2<<20 + 1000 // an interruption mid-file
	for off := 0; off < cut; {
		n := min(700_001, cut-off)
		if err := p.Write(uint64(off), content[off:off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	// A write that is not at the end is refused.
	if err := p.Write(uint64(cut+1), content[cut+1:cut+2]); !errors.Is(err, ErrGap) {
		t.Fatalf("gap: %v", err)
	}
	if err := p.Write(0, content[:10]); !errors.Is(err, ErrGap) {
		t.Fatalf("rewrite: %v", err)
	}
	p.Close()
	parts := partials(t, filepath.Join(f.dir, "dir"))
	if len(parts) != 1 {
		t.Fatalf("partials: %v", parts)
	}
	st, _ := os.Stat(filepath.Join(f.dir, "dir", parts[0]))
	if st.Mode().Perm() != 0o600 || st.Size() != int64(cut) {
		t.Fatalf("partial %v %d", st.Mode(), st.Size())
	}
	if _, err := os.Lstat(filepath.Join(f.dir, "dir/file")); err == nil {
		t.Fatal("the final name exists before the commit")
	}

	// Reopened (the next transfer): it has the first cut octets and says so.
	p, err = f.root.OpenPartial("dir/file", size, mtime, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(content[:cut])
	if p.Have() != uint64(cut) || !bytes.Equal(p.Prefix(), want[:]) {
		t.Fatalf("resume: have %d prefix %x, want %d %x", p.Have(), p.Prefix(), cut, want)
	}
	// Another source (other size or time) does not see this partial.
	q, err := f.root.OpenPartial("dir/file", size, mtime+1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if q.Have() != 0 {
		t.Fatalf("another source's partial has %d", q.Have())
	}
	q.Discard()
	if err := p.Write(uint64(cut), content[cut:]); err != nil {
		t.Fatal(err)
	}
	a := Attrs{Mode: 0o640, MTime: mtime}
	if err := p.Commit(size, digestOf(content), a); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(f.dir, "dir/file"))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content differs (%d octets, %v)", len(got), err)
	}
	st, _ = os.Stat(filepath.Join(f.dir, "dir/file"))
	if st.Mode().Perm() != 0o640 || st.ModTime().UnixNano() != mtime {
		t.Fatalf("attrs: %v %v", st.Mode(), st.ModTime())
	}
	if ps := partials(t, filepath.Join(f.dir, "dir")); len(ps) != 0 {
		t.Fatalf("partials left: %v", ps)
	}
}

func digestOf(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func TestPartialRestart(t *testing.T) {
	f := newFixture(t)
	old := []byte("the old version of the file")
	content := []byte("a new version, not a prefix match")
	p, err := f.root.OpenPartial("f", uint64(len(content)), 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(0, old[:10])
	p.Close()
	p, err = f.root.OpenPartial("f", uint64(len(content)), 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if p.Have() != 10 {
		t.Fatalf("have %d", p.Have())
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	if p.Have() != 0 {
		t.Fatalf("have %d after Restart", p.Have())
	}
	empty := sha256.Sum256(nil)
	if !bytes.Equal(p.Prefix(), empty[:]) {
		t.Fatal("prefix after Restart")
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(uint64(len(content)), digestOf(content), Attrs{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, "f")); !bytes.Equal(b, content) {
		t.Fatalf("%q", b)
	}
}

// A commit that does not verify removes the partial (its content is
// wrong) and leaves the file already at the final name as it was.
func TestCommitMismatch(t *testing.T) {
	for _, c := range []struct {
		name string
		size func(n int) uint64
		dig  func(b []byte) []byte
		want error
	}{
		{"short", func(n int) uint64 { return uint64(n + 1) }, digestOf, ErrSize},
		{"long", func(n int) uint64 { return uint64(n - 1) }, digestOf, ErrSize},
		{"digest", func(n int) uint64 { return uint64(n) }, func(b []byte) []byte { d := digestOf(b); d[0] ^= 1; return d }, ErrMismatch},
		{"no digest", func(n int) uint64 { return uint64(n) }, func([]byte) []byte { return nil }, ErrMismatch},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			good := filepath.Join(f.dir, "f")
			os.WriteFile(good, []byte("good old content"), 0o644)
			mt := time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)
			os.Chtimes(good, mt, mt)
			content := randomBytes(100_000, 2)
			p, err := f.root.OpenPartial("f", uint64(len(content)), 5, sha256.New)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Write(0, content); err != nil {
				t.Fatal(err)
			}
			err = p.Commit(c.size(len(content)), c.dig(content), Attrs{Mode: 0o600, MTime: 5})
			if !errors.Is(err, c.want) {
				t.Fatalf("commit: %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), good) {
				t.Errorf("error %q does not name the file", err)
			}
			b, _ := os.ReadFile(good)
			st, _ := os.Stat(good)
			if string(b) != "good old content" || st.Mode().Perm() != 0o644 || !st.ModTime().Equal(mt) {
				t.Fatalf("the good file changed: %q %v %v", b, st.Mode(), st.ModTime())
			}
			if ps := partials(t, f.dir); len(ps) != 0 {
				t.Fatalf("partial kept after a mismatch: %v", ps)
			}
			// The next attempt starts from nothing.
			p, err = f.root.OpenPartial("f", uint64(len(content)), 5, sha256.New)
			if err != nil || p.Have() != 0 {
				t.Fatalf("reopen: %v have %d", err, p.Have())
			}
			p.Discard()
		})
	}
}

// planted is something another user (or a hostile peer) left at a
// partial's name.
type planted struct {
	name  string
	plant func(t *testing.T, f *fixture, path string)
	// removable: the receiver may remove it (else it writes elsewhere).
	removable bool
}

func plantedCases() []planted {
	file := func(mode os.FileMode, uid int) func(*testing.T, *fixture, string) {
		return func(t *testing.T, f *fixture, path string) {
			if err := os.WriteFile(path, []byte("theirs"), mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, mode)
			if err := os.Chown(path, uid, uid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []planted{
		{"another user's file", file(0o666, 4242), true},
		{"another user's private file", file(0o600, 4242), true},
		{"a group-writable file", file(0o660, os.Getuid()), true},
		{"a world-writable file", file(0o606, os.Getuid()), true},
		{"a hard link to a file outside", func(t *testing.T, f *fixture, path string) {
			if err := os.Link(filepath.Join(f.outside, "victim"), path); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a symlink to a file outside", func(t *testing.T, f *fixture, path string) {
			if err := os.Symlink(filepath.Join(f.outside, "victim"), path); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a FIFO", func(t *testing.T, f *fixture, path string) {
			if err := unix.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a directory", func(t *testing.T, f *fixture, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
}

// Whatever is planted at a partial's name is never written into, nor
// adopted: the receiver removes it (or, when it may not, writes to a fresh
// name), says why, and the copy arrives whole and its own.
func TestPartialPlanted(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to plant files of another owner")
	}
	content := randomBytes(100_000, 4)
	size, mtime := uint64(len(content)), int64(77)
	for _, c := range plantedCases() {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			path := filepath.Join(f.dir, partialName("f", size, mtime))
			c.plant(t, f, path)
			var before unix.Stat_t
			if err := unix.Lstat(path, &before); err != nil {
				t.Fatal(err)
			}
			// Held open, the planted inode cannot be reused for the copy.
			if hold, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
				defer unix.Close(hold)
			}
			done := make(chan error, 1)
			var p *Partial
			go func() {
				var err error
				p, err = f.root.OpenPartial("f", size, mtime, sha256.New)
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("OpenPartial: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("OpenPartial hangs")
			}
			if p.Have() != 0 {
				t.Fatalf("adopted %d octets of %s", p.Have(), c.name)
			}
			if p.Notice() == "" {
				t.Error("no notice says why the partial was not used")
			}
			t.Logf("notice: %s", p.Notice())
			if err := p.Write(0, content); err != nil {
				t.Fatal(err)
			}
			if err := p.Commit(size, digestOf(content), Attrs{Mode: 0o644}); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(f.dir, "f"), &st); err != nil {
				t.Fatal(err)
			}
			if st.Ino == before.Ino || st.Uid != uint32(os.Getuid()) || st.Nlink != 1 {
				t.Fatalf("the copy is the planted inode or not ours: ino %d (planted %d) uid %d nlink %d", st.Ino, before.Ino, st.Uid, st.Nlink)
			}
			if b, _ := os.ReadFile(filepath.Join(f.dir, "f")); !bytes.Equal(b, content) {
				t.Fatal("content differs")
			}
			var after unix.Stat_t
			err := unix.Lstat(path, &after)
			if c.removable && err == nil {
				t.Errorf("the planted %s is still there", c.name)
			}
			if !c.removable && (err != nil || after.Ino != before.Ino) {
				t.Errorf("the planted %s was replaced: %v", c.name, err)
			}
			f.untouched(t)
		})
	}
}

// In a sticky directory (like /tmp) another user's planted partial cannot
// be removed: the receiver writes to a fresh name and never into theirs.
func TestPartialPlantedSticky(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to act as two users")
	}
	base := t.TempDir()
	dir := filepath.Join(base, "shared")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	unix.Chmod(dir, 0o1777)
	content := randomBytes(5000, 9)
	size, mtime := uint64(len(content)), int64(5)
	path := filepath.Join(dir, partialName("f", size, mtime))
	if err := os.WriteFile(path, []byte("theirs"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666)
	os.Chown(path, 4242, 4242)
	r, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const me = 4343
	errc := make(chan error, 1)
	var notice string
	go func() {
		// This thread acts as user 4343 for file access (as zpd's
		// receiver threads do) and ends with the goroutine.
		runtime.LockOSThread()
		unix.RawSyscall(unix.SYS_SETFSGID, me, 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, me, 0, 0)
		p, err := r.OpenPartial("f", size, mtime, sha256.New)
		if err != nil {
			errc <- err
			return
		}
		notice = p.Notice()
		if p.Have() != 0 {
			p.Close()
			errc <- fmt.Errorf("adopted %d octets", p.Have())
			return
		}
		if err := p.Write(0, content); err != nil {
			errc <- err
			return
		}
		errc <- p.Commit(size, digestOf(content), Attrs{Mode: 0o644})
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("notice: %s", notice)
	if notice == "" {
		t.Error("no notice")
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "theirs" {
		t.Fatalf("the planted file changed: %q %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != me {
		t.Fatalf("the copy belongs to uid %d, not %d", st.Uid, me)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(b, content) {
		t.Fatal("content differs")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("left in the directory: %v", ents)
	}
}

// A partial of our own from an earlier attempt is resumed, and a new one
// is created exclusively: the name is ours alone while we write.
func TestPartialOwnIsResumed(t *testing.T) {
	f := newFixture(t)
	p, err := f.root.OpenPartial("f", 10, 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(0, []byte("01234"))
	p.Close()
	p, err = f.root.OpenPartial("f", 10, 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Have() != 5 || p.Notice() != "" {
		t.Fatalf("have %d, notice %q", p.Have(), p.Notice())
	}
}

func TestZeroLengthFile(t *testing.T) {
	f := newFixture(t)
	p, err := f.root.OpenPartial("empty", 0, 0, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(0, digestOf(nil), Attrs{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(f.dir, "empty"))
	if err != nil || st.Size() != 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", st, err)
	}
}

// A partial planted with someone else's bytes and the hash state of the
// genuine prefix (the ".sha" checkpoint of older versions) must not pass
// for the genuine prefix: a resume vouches only for the bytes it read.
func TestResumeHashesWhatItKeeps(t *testing.T) {
	f := newFixture(t)
	genuine := randomBytes(3<<20, 7)
	planted := randomBytes(2<<20, 8)
	size, mtime := uint64(len(genuine)), int64(1e18)
	tmp := partialName("f", size, mtime)
	if err := os.WriteFile(filepath.Join(f.dir, tmp), planted, 0o600); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(genuine[:len(planted)])
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	rec := binary.BigEndian.AppendUint64(nil, uint64(len(planted)))
	if err := os.WriteFile(filepath.Join(f.dir, tmp+".sha"), append(rec, state...), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := f.root.OpenPartial("f", size, mtime, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	want := sha256.Sum256(planted)
	if p.Have() != uint64(len(planted)) || !bytes.Equal(p.Prefix(), want[:]) {
		t.Fatalf("have %d prefix %x: want the digest of the %d octets on disk, %x", p.Have(), p.Prefix(), len(planted), want)
	}
	// The sender's prefix differs: it starts over, and the copy is whole.
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, genuine); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(size, digestOf(genuine), Attrs{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, "f")); !bytes.Equal(b, genuine) {
		t.Fatal("content differs")
	}
	if ents, _ := os.ReadDir(f.dir); len(ents) != 1 {
		t.Fatalf("left in the directory: %v", ents)
	}
}

// A partial whose name was pointed at another file while it was written
// (someone with write access to the directory) is not published: the
// rename would put their file in place.
func TestPublishChecksIdentity(t *testing.T) {
	f := newFixture(t)
	content := []byte("the real content")
	p, err := f.root.OpenPartial("f", uint64(len(content)), 3, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(f.dir, p.tmp)
	if err := os.WriteFile(tmp+".evil", []byte("planted content!"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp+".evil", tmp); err != nil {
		t.Fatal(err)
	}
	err = p.Commit(uint64(len(content)), digestOf(content), Attrs{})
	if !errors.Is(err, ErrReplaced) {
		t.Fatalf("commit: %v, want ErrReplaced", err)
	}
	if _, err := os.Lstat(filepath.Join(f.dir, "f")); err == nil {
		t.Fatal("published the replacement")
	}
}

// One partial has one writer: a second receiver of the same file (a new
// session while the one it replaces still writes) waits until the first
// lets go, for a bounded time, and then never writes into the file the
// first published.
func TestPartialExclusive(t *testing.T) {
	defer func(d time.Duration) { LockWait = d }(LockWait)
	LockWait = 2 * time.Second
	f := newFixture(t)
	content := []byte("0123456789")
	size := uint64(len(content))
	p1, err := f.root.OpenPartial("f", size, 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	p1.Write(0, content[:5])
	type opened struct {
		p   *Partial
		err error
	}
	second := func() chan opened {
		c := make(chan opened, 1)
		go func() {
			p, err := f.root.OpenPartial("f", size, 1, sha256.New)
			c <- opened{p, err}
		}()
		return c
	}
	// The first lets go: the second resumes what it wrote.
	c := second()
	select {
	case o := <-c:
		t.Fatalf("a second receiver opened the partial in use: %v", o.err)
	case <-time.After(300 * time.Millisecond):
	}
	p1.Close()
	o := <-c
	if o.err != nil || o.p.Have() != 5 || !o.p.Waited() || p1.Waited() {
		t.Fatalf("after the first closed: %v, have %d, waited %v", o.err, o.p.Have(), o.p.Waited())
	}
	p1 = o.p

	// The first holds on: the second gives up with ErrBusy.
	start := time.Now()
	o = <-second()
	if !errors.Is(o.err, ErrBusy) {
		t.Fatalf("while in use: %v, want ErrBusy", o.err)
	}
	if w := time.Since(start); w < LockWait || w > LockWait+time.Second {
		t.Errorf("waited %v, want about %v", w, LockWait)
	}

	// The first publishes while the second waits: the second starts a
	// new partial and never touches the published file.
	c = second()
	time.Sleep(100 * time.Millisecond)
	p1.Write(5, content[5:])
	if err := p1.Commit(size, digestOf(content), Attrs{}); err != nil {
		t.Fatal(err)
	}
	o = <-c
	if o.err != nil || o.p.Have() != 0 {
		t.Fatalf("after the first published: %v, have %d", o.err, o.p.Have())
	}
	o.p.Write(0, []byte("xx"))
	o.p.Discard()
	if b, _ := os.ReadFile(filepath.Join(f.dir, "f")); !bytes.Equal(b, content) {
		t.Fatalf("the published file changed: %q", b)
	}
}

// A partial written in a session of one protocol version resumes in a
// session of another (PROTOCOL §10.3): its prefix digest is computed from
// its octets with the hash it is opened with, and COMMIT is checked with
// that hash too.
func TestPartialResumeAcrossDigests(t *testing.T) {
	f := newFixture(t)
	content := randomBytes(1<<20+77, 3)
	size, cut := uint64(len(content)), 300_001
	p, err := f.root.OpenPartial("f", size, 9, zpdigest.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, content[:cut]); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p, err = f.root.OpenPartial("f", size, 9, zpdigest.BLAKE3)
	if err != nil {
		t.Fatal(err)
	}
	b3 := func(b []byte) []byte { h := zpdigest.BLAKE3(); h.Write(b); return h.Sum(nil) }
	if p.Have() != uint64(cut) || !bytes.Equal(p.Prefix(), b3(content[:cut])) {
		t.Fatalf("reopened with BLAKE3: have %d, prefix %x", p.Have(), p.Prefix())
	}
	if err := p.Write(uint64(cut), content[cut:]); err != nil {
		t.Fatal(err)
	}
	whole := sha256.Sum256(content)
	if err := p.Commit(size, whole[:], Attrs{Mode: 0o644, MTime: 9}); !errors.Is(err, ErrMismatch) {
		t.Fatalf("COMMIT with the SHA-256 in a BLAKE3 partial: %v", err)
	}
	// The mismatch removed the partial; the file is sent again from 0.
	p, err = f.root.OpenPartial("f", size, 9, zpdigest.BLAKE3)
	if err != nil {
		t.Fatal(err)
	}
	if p.Have() != 0 {
		t.Fatalf("after a mismatch the partial has %d", p.Have())
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(size, b3(content), Attrs{Mode: 0o644, MTime: 9}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(f.dir, "f")); !bytes.Equal(got, content) {
		t.Fatal("committed content differs")
	}
}

// A large file gets background fdatasyncs while it is written (one every
// flushEvery octets, never waited for by Write); Restart, Commit and Close
// wait for the one running, so a descriptor is never closed under it and
// its outcome is never lost. Run with -race.
func TestPartialBackgroundFlush(t *testing.T) {
	f := newFixture(t)
	piece := randomBytes(1<<20, 5)
	size := uint64(3*flushEvery + 3<<20)
	h := sha256.New()
	write := func(p *Partial, from, to uint64) {
		t.Helper()
		for off := from; off < to; off += uint64(len(piece)) {
			if err := p.Write(off, piece); err != nil {
				t.Fatal(err)
			}
		}
	}
	p, err := f.root.OpenPartial("big", size, 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	write(p, 0, flushEvery+2<<20)
	if p.flushing == nil {
		t.Fatal("no background flush after more than flushEvery octets")
	}
	if err := p.Restart(); err != nil { // waits for the flush in flight
		t.Fatal(err)
	}
	write(p, 0, flushEvery+1<<20)
	p.Close() // waits too; the partial stays for a resume
	p, err = f.root.OpenPartial("big", size, 1, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if p.Have() != flushEvery+1<<20 {
		t.Fatalf("resumed partial has %d octets", p.Have())
	}
	write(p, p.Have(), size)
	for range size / uint64(len(piece)) {
		h.Write(piece)
	}
	if err := p.Commit(size, h.Sum(nil), Attrs{Mode: 0o644, MTime: 1}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(f.dir, "big"))
	if err != nil || uint64(st.Size()) != size {
		t.Fatalf("committed file: %v, %v", st, err)
	}
}

// TestPartialOverDirectory: a partial for a name that is a directory is
// refused before anything is created, whether OpenPartial looks at the name
// itself or is told what its caller saw.
func TestPartialOverDirectory(t *testing.T) {
	f := newFixture(t)
	if err := os.MkdirAll(filepath.Join(f.dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := f.root.Lstat("d")
	if err != nil {
		t.Fatal(err)
	}
	_, err1 := f.root.OpenPartial("d", 3, 0, sha256.New)
	_, err2 := f.root.OpenPartialSeen("d", st, 3, 0, sha256.New)
	for _, err := range []error{err1, err2} {
		if !errors.Is(err, unix.EISDIR) {
			t.Errorf("got %v, want EISDIR", err)
		}
	}
	if ents, _ := os.ReadDir(f.dir); len(ents) != 1 {
		t.Errorf("the root holds %d entries, want 1: nothing created", len(ents))
	}
	p, err := f.root.OpenPartialSeen("new", nil, 3, 0, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	p.Discard()
}
