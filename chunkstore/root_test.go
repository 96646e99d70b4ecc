package chunkstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fixture is a destination root with a directory next to it ("outside")
// that nothing may ever write into.
type fixture struct {
	root    *Root
	dir     string // the root's path
	outside string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	base := t.TempDir()
	f := &fixture{dir: filepath.Join(base, "root"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{f.dir, f.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(f.outside, "victim"), []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRoot(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	f.root = r
	return f
}

// untouched fails if anything but "victim" (with its content and mode)
// is in the outside directory.
func (f *fixture) untouched(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(f.outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "victim" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("outside directory holds %v", names)
	}
	b, err := os.ReadFile(filepath.Join(f.outside, "victim"))
	if err != nil || string(b) != "original" {
		t.Fatalf("outside file changed: %q %v", b, err)
	}
	if st, _ := os.Stat(filepath.Join(f.outside, "victim")); st.Mode().Perm() != 0o644 {
		t.Fatalf("outside file mode changed: %v", st.Mode())
	}
}

func (f *fixture) symlink(t *testing.T, target, name string) {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// write puts content into name through a partial file and commits it.
func (f *fixture) write(name string, content []byte, a Attrs) error {
	p, err := f.root.OpenPartial(name, uint64(len(content)), a.MTime, sha256.New)
	if err != nil {
		return err
	}
	if err := p.Write(0, content); err != nil {
		p.Close()
		return err
	}
	return p.Commit(uint64(len(content)), digestOf(content), a)
}

func TestRootRefusesSymlinksLeadingOut(t *testing.T) {
	cases := []struct {
		name   string
		link   string // where the link is, in the root
		target func(f *fixture) string
		// through is a name beneath the root that the link makes
		// resolve to the outside directory (or, for an absolute link
		// inside, to the root).
		through func(f *fixture) string
	}{
		{"absolute to a directory elsewhere", "esc",
			func(f *fixture) string { return f.outside }, func(*fixture) string { return "esc" }},
		{"relative to a directory elsewhere", "esc",
			func(*fixture) string { return "../outside" }, func(*fixture) string { return "esc" }},
		{"to the parent", "esc",
			func(*fixture) string { return ".." }, func(*fixture) string { return "esc/outside" }},
		{"deeper, climbing out", "sub/esc",
			func(*fixture) string { return "../../outside" }, func(*fixture) string { return "sub/esc" }},
		{"to /", "esc",
			func(*fixture) string { return "/" }, func(f *fixture) string { return "esc" + f.outside }},
		{"absolute even to the root itself", "esc",
			func(f *fixture) string { return f.dir }, func(*fixture) string { return "esc" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.symlink(t, c.target(f), c.link)
			through := c.through(f)
			checks := map[string]func() error{
				"MkdirAll": func() error { return f.root.MkdirAll(through + "/newdir") },
				"OpenPartial": func() error {
					p, err := f.root.OpenPartial(through+"/pwned", 5, 0, sha256.New)
					if err == nil {
						p.Discard()
					}
					return err
				},
				"write+Commit": func() error { return f.write(through+"/victim", []byte("evil!"), Attrs{Mode: 0o777}) },
				"Symlink":      func() error { return f.root.Symlink("x", through+"/newlink") },
				"SetAttrs":     func() error { return f.root.SetAttrs(through+"/victim", Attrs{Mode: 0o777}) },
				"Lstat":        func() error { _, err := f.root.Lstat(through + "/victim"); return err },
				"Digest":       func() error { _, err := f.root.Digest(through+"/victim", sha256.New); return err },
			}
			for what, fn := range checks {
				err := fn()
				if err == nil {
					t.Errorf("%s through %s -> %s: allowed", what, c.link, c.target(f))
				} else if !errors.Is(err, ErrEscape) && !errors.Is(err, ErrSymlink) {
					t.Errorf("%s: %v, want ErrEscape or ErrSymlink", what, err)
				}
			}
			if f.root.Same(through+"/victim", 8, 0) || f.root.SameDigest(through+"/victim", 8, digestOf([]byte("original")), sha256.New) {
				t.Error("Same/SameDigest looked through the link")
			}
			f.untouched(t)
		})
	}
}

// Names never go through a symlink below the root, even one that stays
// inside it: a second name for a directory ("self" -> ".") would let
// entries race past the order they were sent in.
func TestRootRefusesSymlinksInside(t *testing.T) {
	for _, walk := range []bool{false, true} {
		t.Run(fmt.Sprintf("without openat2 %v", walk), func(t *testing.T) {
			defer func() { noOpenat2 = false }()
			noOpenat2 = walk
			testRootRefusesSymlinksInside(t)
		})
	}
}

func testRootRefusesSymlinksInside(t *testing.T) {
	f := newFixture(t)
	if err := os.MkdirAll(filepath.Join(f.dir, "real/deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.dir, "real/f"), []byte("f"), 0o644)
	f.symlink(t, "real", "in")
	f.symlink(t, "../real/deeper", "sub/in2")
	f.symlink(t, ".", "self")
	for _, through := range []string{"in", "sub/in2", "self", "self/self"} {
		checks := map[string]func() error{
			"MkdirAll": func() error { return f.root.MkdirAll(through + "/made") },
			"write":    func() error { return f.write(through+"/g", []byte("g"), Attrs{}) },
			"Symlink":  func() error { return f.root.Symlink("x", through+"/l") },
			"SetAttrs": func() error { return f.root.SetAttrs(through+"/f", Attrs{Mode: 0o600}) },
			"Lstat":    func() error { _, err := f.root.Lstat(through + "/f"); return err },
			"Digest":   func() error { _, err := f.root.Digest(through+"/f", sha256.New); return err },
		}
		for what, fn := range checks {
			if err := fn(); !errors.Is(err, ErrSymlink) {
				t.Errorf("%s through %s: %v, want ErrSymlink", what, through, err)
			}
		}
		if f.root.Same(through+"/f", 1, mtimeOf(t, filepath.Join(f.dir, "real/f"))) {
			t.Errorf("Same through %s", through)
		}
	}
	for _, p := range []string{"real/made", "real/g", "made", "g"} {
		if _, err := os.Lstat(filepath.Join(f.dir, p)); err == nil {
			t.Errorf("%s was made through a symlink", p)
		}
	}
	// The links themselves are entries like others.
	if st, err := f.root.Lstat("self"); err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatalf("Lstat of the link: %v", err)
	}
	f.untouched(t)
}

func mtimeOf(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime().UnixNano()
}

// A symlink at the final name is replaced, never written through; so is
// one planted after the partial was opened.
func TestCommitReplacesFinalSymlink(t *testing.T) {
	f := newFixture(t)
	victim := filepath.Join(f.outside, "victim")
	f.symlink(t, victim, "link")
	if err := f.write("link", []byte("new content"), Attrs{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(filepath.Join(f.dir, "link"))
	if err != nil || !st.Mode().IsRegular() {
		t.Fatalf("link not replaced by a file: %v %v", st.Mode(), err)
	}
	f.untouched(t)

	// Planted between OpenPartial and Commit.
	content := []byte("late")
	p, err := f.root.OpenPartial("late", uint64(len(content)), 0, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	f.symlink(t, victim, "late")
	if err := p.Commit(uint64(len(content)), digestOf(content), Attrs{Mode: 0o777}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "late")); err != nil || string(b) != "late" {
		t.Fatalf("%q %v", b, err)
	}
	f.untouched(t)

	// SetAttrs on a symlink changes neither the link's target nor its mode.
	f.symlink(t, victim, "link2")
	if err := f.root.SetAttrs("link2", Attrs{Mode: 0o777, MTime: time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	f.untouched(t)
	if st, _ := os.Lstat(filepath.Join(f.dir, "link2")); st.ModTime().Year() != 2001 {
		t.Fatalf("symlink time not set: %v", st.ModTime())
	}
	// OpenFile does not follow a final symlink.
	if _, err := f.root.OpenFile("link2"); err == nil {
		t.Fatal("OpenFile followed a symlink")
	}
}

// A directory swapped for a symlink after the partial was opened: the
// commit stays in the directory the partial was opened in.
func TestCommitAfterParentSwapped(t *testing.T) {
	f := newFixture(t)
	if err := f.root.MkdirAll("d"); err != nil {
		t.Fatal(err)
	}
	content := []byte("payload")
	p, err := f.root.OpenPartial("d/f", uint64(len(content)), 0, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(f.dir, "d"), filepath.Join(f.dir, "d.old")); err != nil {
		t.Fatal(err)
	}
	f.symlink(t, f.outside, "d")
	if err := p.Commit(uint64(len(content)), digestOf(content), Attrs{}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "d.old/f")); err != nil || string(b) != "payload" {
		t.Fatalf("%q %v", b, err)
	}
	f.untouched(t)
}

func TestSymlinkAndMkdirConflicts(t *testing.T) {
	f := newFixture(t)
	if err := f.root.Symlink("/etc/passwd", "l"); err != nil {
		t.Fatal(err)
	}
	if tg, err := os.Readlink(filepath.Join(f.dir, "l")); err != nil || tg != "/etc/passwd" {
		t.Fatalf("%q %v", tg, err)
	}
	// Replacing a symlink and a file is allowed; a directory is not.
	if err := f.root.Symlink("other", "l"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.dir, "file"), nil, 0o644)
	if err := f.root.Symlink("x", "file"); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(f.dir, "dir"), 0o755)
	if err := f.root.Symlink("x", "dir"); err == nil {
		t.Fatal("a directory was replaced by a symlink")
	}
	if err := f.root.Symlink("x", ""); !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("symlink as the root: %v", err)
	}
	if _, err := f.root.OpenPartial("dir", 1, 0, sha256.New); err == nil {
		t.Fatal("OpenPartial over a directory")
	}
	if _, err := f.root.OpenPartial("", 1, 0, sha256.New); !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("OpenPartial of the root: %v", err)
	}
	// MkdirAll where a file is.
	if err := f.root.MkdirAll("file2/sub"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.dir, "plain"), nil, 0o644)
	if err := f.root.MkdirAll("plain/sub"); err == nil {
		t.Fatal("MkdirAll through a file")
	}
	// No temporary names are left behind.
	ents, _ := os.ReadDir(f.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".zpc-") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}
}

func TestSame(t *testing.T) {
	f := newFixture(t)
	p := filepath.Join(f.dir, "f")
	os.WriteFile(p, []byte("12345"), 0o644)
	mt := time.Date(2020, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	os.Chtimes(p, mt, mt)
	ns := mt.UnixNano()
	cases := []struct {
		name  string
		size  uint64
		mtime int64
		want  bool
	}{
		{"f", 5, ns, true},
		{"f", 5, ns - 600_000_000, true},    // same second
		{"f", 5, ns + 300_000_000, true},    // same second
		{"f", 5, ns + 1_000_000_000, false}, // a second later
		{"f", 5, ns - 1_000_000_000, false},
		{"f", 4, ns, false},
		{"f", 6, ns, false},
		{"missing", 5, ns, false},
	}
	for _, c := range cases {
		if got := f.root.Same(c.name, c.size, c.mtime); got != c.want {
			t.Errorf("Same(%s, %d, %d) = %v", c.name, c.size, c.mtime, got)
		}
	}
	// Not regular files.
	os.Symlink("f", filepath.Join(f.dir, "l"))
	os.Mkdir(filepath.Join(f.dir, "d"), 0o755)
	for _, n := range []string{"l", "d"} {
		st, _ := os.Lstat(filepath.Join(f.dir, n))
		if f.root.Same(n, uint64(st.Size()), st.ModTime().UnixNano()) {
			t.Errorf("Same(%s): not a regular file", n)
		}
	}
	if !f.root.SameDigest("f", 5, digestOf([]byte("12345")), sha256.New) {
		t.Error("SameDigest: same content")
	}
	for _, c := range []struct {
		name string
		size uint64
		d    []byte
	}{
		{"f", 5, digestOf([]byte("12346"))},
		{"f", 4, digestOf([]byte("12345"))},
		{"f", 5, nil},
		{"l", 5, digestOf([]byte("12345"))}, // a symlink to f
		{"missing", 5, digestOf([]byte("12345"))},
	} {
		if f.root.SameDigest(c.name, c.size, c.d, sha256.New) {
			t.Errorf("SameDigest(%s, %d, %x)", c.name, c.size, c.d)
		}
	}
}

// Partials opened in one directory survive the directory cache being
// emptied (more than maxCachedDirs directories touched meanwhile), also
// with many goroutines at it (run with -race).
func TestManyDirectories(t *testing.T) {
	f := newFixture(t)
	content := []byte("in d0")
	p, err := f.root.OpenPartial("d0/x", uint64(len(content)), 0, sha256.New)
	if err == nil {
		t.Fatal("OpenPartial in a missing directory")
	}
	if err := f.root.MkdirAll("d0"); err != nil {
		t.Fatal(err)
	}
	p, err = f.root.OpenPartial("d0/x", uint64(len(content)), 0, sha256.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(0, content); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxCachedDirs/2; i++ {
				name := fmt.Sprintf("g%d/sub%d", g, i)
				if err := f.root.MkdirAll(name); err != nil {
					errs <- err
					return
				}
				if err := f.write(name+"/f", []byte(name), Attrs{Mode: 0o640}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := p.Commit(uint64(len(content)), digestOf(content), Attrs{}); err != nil {
		t.Fatalf("commit after the directory cache was emptied: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "d0/x")); err != nil || !bytes.Equal(b, content) {
		t.Fatalf("%q %v", b, err)
	}
	for g := 0; g < 8; g++ {
		for i := 0; i < maxCachedDirs/2; i++ {
			name := fmt.Sprintf("g%d/sub%d", g, i)
			if b, err := os.ReadFile(filepath.Join(f.dir, name, "f")); err != nil || string(b) != name {
				t.Fatalf("%s: %q %v", name, b, err)
			}
		}
	}
}

func TestOpenRootErrors(t *testing.T) {
	if _, err := OpenRoot(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing root: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := OpenRoot(file); !errors.Is(err, unix.ENOTDIR) {
		t.Fatalf("file as root: %v", err)
	}
}

// Attributes are applied to what was checked, never through a symlink
// put in its place meanwhile (someone who may write the directory), with
// the system calls of new kernels and the fallbacks of old ones.
func TestSetAttrsNeverFollows(t *testing.T) {
	defer func() { noEmptyPath = false }()
	for _, fallback := range []bool{false, true} {
		noEmptyPath = fallback
		f := newFixture(t)
		victim := filepath.Join(f.outside, "victim")
		for _, name := range []string{"file", "dir"} {
			p := filepath.Join(f.dir, name)
			if name == "dir" {
				os.Mkdir(p, 0o755)
			} else {
				os.WriteFile(p, []byte("x"), 0o644)
			}
			testHookSetAttrs = func() {
				os.Rename(p, p+".moved")
				os.Symlink(victim, p)
			}
			err := f.root.SetAttrs(name, Attrs{Mode: 0o750, MTime: 12345})
			testHookSetAttrs = nil
			if err != nil {
				t.Fatalf("fallback %v, %s: %v", fallback, name, err)
			}
			f.untouched(t)
			if st, _ := os.Stat(victim); st.ModTime().UnixNano() == 12345 {
				t.Fatal("the outside file's time changed")
			}
			// The entry that was checked got them.
			if st, err := os.Lstat(p + ".moved"); err != nil || st.Mode().Perm() != 0o750 || st.ModTime().UnixNano() != 12345 {
				t.Fatalf("fallback %v, %s: %v %v %v", fallback, name, st.Mode(), st.ModTime().UnixNano(), err)
			}
		}
		// A symlink gets its own time; its target nothing.
		f.symlink(t, victim, "link")
		if err := f.root.SetAttrs("link", Attrs{Mode: 0o700, MTime: 54321}); err != nil {
			t.Fatal(err)
		}
		if st, _ := os.Lstat(filepath.Join(f.dir, "link")); st.ModTime().UnixNano() != 54321 {
			t.Errorf("fallback %v: the symlink's time %v", fallback, st.ModTime().UnixNano())
		}
		f.untouched(t)
	}
}

// Reading a name that turned out not to be a regular file (a FIFO put
// there, for a receiver comparing digests) fails at once, never blocks.
func TestOpenFileNeverBlocks(t *testing.T) {
	f := newFixture(t)
	if err := unix.Mkfifo(filepath.Join(f.dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := f.root.Digest("fifo", sha256.New); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a digest of a FIFO")
		}
	case <-time.After(5 * time.Second):
		os.WriteFile(filepath.Join(f.dir, "fifo"), nil, 0) // unblock the reader
		t.Fatal("Digest blocks on a FIFO")
	}
}

// Attrs.Held lets a receiver skip SetAttrs for an identical file: it must
// be true exactly when SetAttrs would change nothing, so that skipping the
// call never leaves a mode, time or owner that SetAttrs would have fixed.
func TestAttrsHeld(t *testing.T) {
	f := newFixture(t)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	mt := time.Date(2020, 1, 2, 3, 4, 5, 600_000_000, time.UTC).UnixNano()
	want := []Attrs{
		{Mode: 0o644, SetMode: true, MTime: mt},
		{Mode: 0o600, SetMode: true, MTime: mt + 1}, // a nanosecond later
		{Mode: 0o4755, SetMode: true, MTime: mt},
		{Mode: 0o644, SetMode: true, MTime: mt, Chown: true, UID: uid, GID: gid},
		{Mode: 0o644, MTime: 0},   // time left alone
		{Mode: 0, SetMode: false}, // mode left alone
		{Mode: 0o755, SetMode: true, KeepSetgid: true, MTime: mt},
	}
	for _, kind := range []string{"file", "dir"} {
		for i, a := range want {
			name := fmt.Sprintf("%s%d", kind, i)
			p := filepath.Join(f.dir, name)
			if kind == "dir" {
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o2700); err != nil { // a setgid bit inherited
					t.Fatal(err)
				}
			} else if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			before, err := f.root.Lstat(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.root.SetAttrs(name, a); err != nil {
				t.Fatal(err)
			}
			after, _ := f.root.Lstat(name)
			changed := after.Mode != before.Mode || after.Mtim != before.Mtim || after.Uid != before.Uid || after.Gid != before.Gid
			if a.Held(before) == changed {
				t.Errorf("%s: Held %v before SetAttrs(%+v), which changed mode %o→%o, mtime %d→%d", name, a.Held(before), a, before.Mode, after.Mode, before.Mtim.Nano(), after.Mtim.Nano())
			}
			if !a.Held(after) {
				t.Errorf("%s: not Held after SetAttrs(%+v): mode %o mtime %d", name, a, after.Mode, after.Mtim.Nano())
			}
			// Each attribute changed by one step is no longer held.
			for what, b := range map[string]Attrs{
				"mode":  {Mode: a.Mode ^ 0o001, SetMode: true, MTime: a.MTime, KeepSetgid: a.KeepSetgid},
				"mtime": {Mode: a.Mode, SetMode: a.SetMode, MTime: after.Mtim.Nano() + 1, KeepSetgid: a.KeepSetgid},
				"uid":   {Mode: a.Mode, SetMode: a.SetMode, MTime: a.MTime, Chown: true, UID: uid + 1, GID: gid},
				"gid":   {Mode: a.Mode, SetMode: a.SetMode, MTime: a.MTime, Chown: true, UID: uid, GID: gid + 1},
			} {
				if b.Held(after) {
					t.Errorf("%s: Held with another %s (%+v)", name, what, b)
				}
			}
		}
	}
	// A symlink is never held: SetAttrs treats it apart.
	if err := os.Symlink("file0", filepath.Join(f.dir, "l")); err != nil {
		t.Fatal(err)
	}
	st, _ := f.root.Lstat("l")
	if (&Attrs{}).Held(st) {
		t.Error("Held for a symlink")
	}
}
