package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// zpc runs zpc against d with d's security flags and environment.
func (d *zpd) zpc(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, nil, d.env(), "zpc", append(d.clientArgs(), args...)...)
}

// at is the remote argument for path on d: ADDR:PATH.
func (d *zpd) at(path string) string { return d.Addr + ":" + path }

// zpcStats is zpc's --json summary.
type zpcStats struct {
	Files        int     `json:"files"`
	Skipped      int     `json:"skipped"`
	Dirs         int     `json:"dirs"`
	Links        int     `json:"links"`
	BytesSent    uint64  `json:"bytes_sent"`
	BytesSkipped uint64  `json:"bytes_skipped"`
	BytesResumed uint64  `json:"bytes_resumed"`
	Seconds      float64 `json:"seconds"`
	Failures     []struct {
		Path  string `json:"path"`
		Error string `json:"error"`
	} `json:"failures"`
}

// stats parses the --json summary of r, checking every documented field
// is there.
func stats(t *testing.T, r result) zpcStats {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.Stdout), &raw); err != nil {
		t.Fatalf("--json output: %v\nstdout: %q\nstderr: %s", err, r.Stdout, r.Stderr)
	}
	for _, k := range []string{"files", "skipped", "bytes_sent", "bytes_skipped", "bytes_resumed", "seconds", "failures"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("--json output lacks %q: %s", k, r.Stdout)
		}
	}
	if string(raw["failures"]) == "null" {
		t.Fatalf("failures is null, want a list: %s", r.Stdout)
	}
	var s zpcStats
	if err := json.Unmarshal([]byte(r.Stdout), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// writeFile creates path (and its parents) with content, mode and mtime.
func writeFile(t *testing.T, path string, content []byte, mode fs.FileMode, mtime time.Time) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// setTime sets the modification time of path, not following a symlink.
func setTime(t *testing.T, path string, mtime time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	c := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), 1})
	c.Read(b)
	return b
}

// entry describes one thing in a tree, for comparisons.
type entry struct {
	Kind   string // file, dir, link
	Mode   fs.FileMode
	MTime  int64 // seconds
	Size   int64
	Digest string // files
	Target string // links
}

func (e entry) String() string {
	switch e.Kind {
	case "link":
		return fmt.Sprintf("link -> %q (mtime %d)", e.Target, e.MTime)
	case "dir":
		return fmt.Sprintf("dir %v mtime %d", e.Mode, e.MTime)
	}
	return fmt.Sprintf("file %v mtime %d size %d sha256 %.16s", e.Mode, e.MTime, e.Size, e.Digest)
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// snapshot describes every entry beneath dir ("." is dir itself), not
// following symlinks.
func snapshot(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{Mode: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), MTime: info.ModTime().Unix()}
		switch {
		case info.IsDir():
			e.Kind = "dir"
		case info.Mode()&fs.ModeSymlink != 0:
			e.Kind = "link"
			e.Mode = 0
			e.Target, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case info.Mode().IsRegular():
			e.Kind, e.Size, e.Digest = "file", info.Size(), fileDigest(t, p)
		default:
			e.Kind = "special"
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTree fails unless got describes the same entries as want.
func sameTree(t *testing.T, what string, want, got map[string]entry) {
	t.Helper()
	var diffs []string
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %v)", name, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", name, g, w))
		}
	}
	for name, g := range got {
		if _, ok := want[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %v", name, g))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("… and %d more", len(diffs)-20))
		}
		t.Fatalf("%s: %d differences:\n  %s", what, len(diffs), strings.Join(diffs, "\n  "))
	}
}

// listing maps each name beneath dir to its content ("/" for a directory,
// "-> target" for a symlink), for naming-rule checks.
func listing(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	if _, err := os.Lstat(dir); err != nil {
		return out
	}
	filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case de.IsDir():
			out[rel] = "/"
		case de.Type()&fs.ModeSymlink != 0:
			tg, _ := os.Readlink(p)
			out[rel] = "-> " + tg
		default:
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		}
		return nil
	})
	return out
}

func sameListing(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	got := listing(t, dir)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s holds\n  %v\nwant\n  %v", dir, got, want)
	}
}

// smallTree makes a tree with nested directories, an empty directory,
// symlinks (relative, absolute, dangling, to a directory), files of
// several modes and times, a 0-byte file, odd names and a file of a few
// chunks.
func smallTree(t *testing.T, root string) {
	t.Helper()
	old := time.Date(2001, 9, 9, 1, 46, 40, 0, time.UTC)
	future := time.Date(2033, 5, 18, 3, 33, 20, 500_000_000, time.UTC)
	mid := time.Date(2019, 6, 1, 12, 0, 0, 123_456_789, time.UTC)
	mkdir(t, root, 0o755)
	writeFile(t, filepath.Join(root, "a/b/c/deep.txt"), []byte("deep\n"), 0o640, old)
	writeFile(t, filepath.Join(root, "a/run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755, mid)
	writeFile(t, filepath.Join(root, "secret"), []byte("s3cr3t"), 0o600, future)
	writeFile(t, filepath.Join(root, "zero"), nil, 0o644, mid)
	writeFile(t, filepath.Join(root, "name with spaces & ünïcödé"), []byte("odd name"), 0o644, old)
	writeFile(t, filepath.Join(root, "chunks.bin"), randomBytes(1<<20+4097, 7), 0o644, mid)
	writeFile(t, filepath.Join(root, "a/b/readonly"), []byte("ro"), 0o444, mid)
	mkdir(t, filepath.Join(root, "empty"), 0o750)
	mkdir(t, filepath.Join(root, "a/b/empty2"), 0o700)
	symlink(t, "b/c/deep.txt", filepath.Join(root, "a/link"))
	symlink(t, "/etc/hostname", filepath.Join(root, "abslink"))
	symlink(t, "no/such/target", filepath.Join(root, "dangling"))
	symlink(t, "a", filepath.Join(root, "dirlink"))
	for _, l := range []string{"a/link", "abslink", "dangling", "dirlink"} {
		setTime(t, filepath.Join(root, l), old)
	}
	// Directories last: writing into a directory changes its time.
	for d, mt := range map[string]time.Time{"a/b/c": old, "a/b/empty2": future, "a/b": mid, "a": old, "empty": mid} {
		os.Chtimes(filepath.Join(root, d), mt, mt)
	}
	os.Chmod(filepath.Join(root, "a"), 0o700)
	os.Chtimes(root, mid, mid)
}

// roundTrip copies src (a directory) to d and back into a fresh local
// directory and checks that both copies are identical to src. It returns
// the summaries of both runs.
func roundTrip(t *testing.T, d *zpd, src string) (up, down zpcStats) {
	t.Helper()
	want := snapshot(t, src)
	remote := filepath.Join(t.TempDir(), "remote")
	start := time.Now()
	r := d.zpc(t, "-r", "--json", src, d.at(remote))
	if r.Code != 0 {
		t.Fatalf("upload: exit %d\n%s", r.Code, r.Stderr)
	}
	t.Logf("upload: %v", time.Since(start).Round(time.Millisecond))
	up = stats(t, r)
	sameTree(t, "uploaded tree", want, snapshot(t, filepath.Join(remote, filepath.Base(src))))

	local := filepath.Join(t.TempDir(), "fresh")
	start = time.Now()
	r = d.zpc(t, "-r", "--json", d.at(filepath.Join(remote, filepath.Base(src))), local)
	if r.Code != 0 {
		t.Fatalf("download: exit %d\n%s", r.Code, r.Stderr)
	}
	t.Logf("download: %v", time.Since(start).Round(time.Millisecond))
	down = stats(t, r)
	sameTree(t, "downloaded tree", want, snapshot(t, filepath.Join(local, filepath.Base(src))))
	return up, down
}

func TestZpcTree(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "tree")
	smallTree(t, src)
	up, down := roundTrip(t, d, src)
	for _, s := range []zpcStats{up, down} {
		// 7 regular files, 4 symlinks, 6 directories (tree included).
		if s.Files != 7 || s.Links != 4 || s.Dirs != 6 || s.Skipped != 0 || len(s.Failures) != 0 {
			t.Errorf("summary %+v", s)
		}
		if want := uint64(5 + 18 + 6 + 8 + 1<<20 + 4097 + 2); s.BytesSent != want {
			t.Errorf("bytes_sent %d, want %d", s.BytesSent, want)
		}
	}
}

// A zpd that speaks protocol version 5 (no BATCH) still gets and sends
// trees: zpc falls back to version 5 and sends each message alone.
func TestZpcTreeVersion5(t *testing.T) {
	t.Parallel()
	flags := []string{"--insecure"}
	if os.Geteuid() == 0 {
		flags = append(flags, "--insecure-anyone-is-root")
	}
	d := startZPDEnv(t, []string{"ZP_FAULT_MAX_VERSION=5"}, flags...)
	src := filepath.Join(t.TempDir(), "tree")
	smallTree(t, src)
	for i := range 300 {
		writeFile(t, filepath.Join(src, fmt.Sprintf("many/f%03d", i)), randomBytes(100+i, uint64(i)), 0o644, time.Unix(1e9, 0))
	}
	up, down := roundTrip(t, d, src)
	for _, s := range []zpcStats{up, down} {
		if s.Files != 307 || s.Links != 4 || s.Dirs != 7 || len(s.Failures) != 0 {
			t.Errorf("summary %+v", s)
		}
	}
	r := d.zpc(t, "-r", "--json", src, d.at(t.TempDir()))
	if r.Code != 0 {
		t.Fatalf("exit %d\n%s", r.Code, r.Stderr)
	}
}

// bigSparseish makes a file of size octets that is mostly zeros (a hole)
// with random blocks here and there, first and last octets included.
func bigSparseish(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	const block = 64 << 10
	offs := []int64{0, size - block, size/2 - 3}
	for i := 0; i < 40; i++ {
		offs = append(offs, r.Int64N(size-block))
	}
	for i, off := range offs {
		if _, err := f.WriteAt(randomBytes(block, seed+uint64(i)), off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt([]byte("END"), size-3); err != nil {
		t.Fatal(err)
	}
}

func TestZpcBigFile(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB round trip: not with -short")
	}
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "big")
	mkdir(t, src, 0o755)
	bigSparseish(t, filepath.Join(src, "1GiB.img"), 1<<30, 42)
	writeFile(t, filepath.Join(src, "small"), []byte("next to it"), 0o600, time.Unix(1e9, 0))
	up, down := roundTrip(t, d, src)
	for _, s := range []zpcStats{up, down} {
		if s.Files != 2 || s.BytesSent != 1<<30+10 {
			t.Errorf("summary %+v", s)
		}
	}
}

func TestZpcManyFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 files: not with -short")
	}
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "many")
	mt := time.Date(2015, 3, 4, 5, 6, 7, 0, time.UTC)
	for i := 0; i < 5000; i++ {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%02d/f%04d", i%50, i)), randomBytes(4096, uint64(i)), 0o644, mt)
	}
	for i := 0; i < 50; i++ {
		os.Chtimes(filepath.Join(src, fmt.Sprintf("d%02d", i)), mt, mt)
	}
	up, down := roundTrip(t, d, src)
	for _, s := range []zpcStats{up, down} {
		if s.Files != 5000 || s.Dirs != 51 || s.BytesSent != 5000*4096 {
			t.Errorf("summary %+v", s)
		}
	}
}

// testUserKey creates a user and authorises d's client key for it too.
func testUserKey(t *testing.T, d *zpd, name string) testUser {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: user tests must run there")
		}
		t.Skip("needs root to create a user")
	}
	u := makeUser(t, name)
	b, err := os.ReadFile(filepath.Join(d.Home, "authorized_for_zpd"))
	if err != nil {
		t.Fatal(err)
	}
	authorize(t, u, strings.Fields(string(b))[0])
	eventually(t, 10*time.Second, "zpd to reread "+u.name+"'s authorized_keys", func() bool {
		return run(t, nil, d.env(), "zp", append(d.clientArgs(), u.name+"@"+d.Addr, "true")...).Code == 0
	})
	return u
}

// TestZpcNaming checks rsync's naming rules both ways.
func TestZpcNaming(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	src := t.TempDir()
	os.Chmod(src, 0o755)
	mt := time.Unix(1.6e9, 0)
	writeFile(t, filepath.Join(src, "dir/a"), []byte("A"), 0o644, mt)
	writeFile(t, filepath.Join(src, "dir/sub/b"), []byte("B"), 0o644, mt)
	writeFile(t, filepath.Join(src, "file"), []byte("F"), 0o644, mt)
	writeFile(t, filepath.Join(src, "other"), []byte("O"), 0o644, mt)
	dirTree := map[string]string{"dir": "/", "dir/a": "A", "dir/sub": "/", "dir/sub/b": "B"}
	contents := map[string]string{"a": "A", "sub": "/", "sub/b": "B"}
	p := func(name string) string { return filepath.Join(src, name) }
	ok := func(t *testing.T, r result) {
		t.Helper()
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
	}

	type tc struct {
		name string
		// args builds zpc's arguments from the destination to use (a
		// local or remote path) and a function that makes a source
		// argument (remote for downloads).
		args  func(dest string, s func(string) string) []string
		fresh bool // destination does not exist yet
		want  map[string]string
	}
	cases := []tc{
		{"dir into existing dir", func(dst string, s func(string) string) []string { return []string{"-r", s("dir"), dst} }, false, dirTree},
		{"dir into new dir", func(dst string, s func(string) string) []string { return []string{"-r", s("dir"), dst} }, true, dirTree},
		{"dir/ copies contents", func(dst string, s func(string) string) []string { return []string{"-r", s("dir") + "/", dst} }, false, contents},
		{"dir/ into new dir", func(dst string, s func(string) string) []string { return []string{"-r", s("dir") + "/", dst} }, true, contents},
		{"file into existing dir", func(dst string, s func(string) string) []string { return []string{s("file"), dst} }, false, map[string]string{"file": "F"}},
		{"file into new dir/", func(dst string, s func(string) string) []string { return []string{s("file"), dst + "/"} }, true, map[string]string{"file": "F"}},
		{"two files into new dir", func(dst string, s func(string) string) []string { return []string{s("file"), s("other"), dst} }, true, map[string]string{"file": "F", "other": "O"}},
		{"file and dir", func(dst string, s func(string) string) []string { return []string{"-r", s("file"), s("dir"), dst} }, false, map[string]string{"file": "F", "dir": "/", "dir/a": "A", "dir/sub": "/", "dir/sub/b": "B"}},
	}
	for _, dir := range []string{"upload", "download"} {
		for _, c := range cases {
			t.Run(dir+"/"+c.name, func(t *testing.T) {
				dest := t.TempDir()
				if c.fresh {
					dest = filepath.Join(dest, "new")
				}
				var args []string
				if dir == "upload" {
					args = c.args(d.at(dest), p)
				} else {
					args = c.args(dest, func(n string) string { return d.at(p(n)) })
				}
				ok(t, d.zpc(t, args...))
				sameListing(t, dest, c.want)
			})
		}
		// A single file to a name that does not exist becomes that name.
		t.Run(dir+"/file as a new name", func(t *testing.T) {
			dest := t.TempDir()
			target := filepath.Join(dest, "renamed")
			if dir == "upload" {
				ok(t, d.zpc(t, p("file"), d.at(target)))
			} else {
				ok(t, d.zpc(t, d.at(p("file")), target))
			}
			sameListing(t, dest, map[string]string{"renamed": "F"})
		})
		t.Run(dir+"/file over an existing file", func(t *testing.T) {
			dest := t.TempDir()
			target := filepath.Join(dest, "existing")
			writeFile(t, target, []byte("old content"), 0o600, time.Unix(1e9, 0))
			if dir == "upload" {
				ok(t, d.zpc(t, p("file"), d.at(target)))
			} else {
				ok(t, d.zpc(t, d.at(p("file")), target))
			}
			sameListing(t, dest, map[string]string{"existing": "F"})
		})
		// Without -r a directory is skipped with a notice, exit 0; the
		// rest is copied.
		t.Run(dir+"/directory without -r", func(t *testing.T) {
			dest := t.TempDir()
			var r result
			if dir == "upload" {
				r = d.zpc(t, p("dir"), p("file"), d.at(dest))
			} else {
				r = d.zpc(t, d.at(p("dir")), d.at(p("file")), dest)
			}
			// A notice, as rsync: the rest is copied and zpc exits 0.
			if r.Code != 0 || !strings.Contains(r.Stderr, "skipping directory") || !strings.Contains(r.Stderr, "dir") {
				t.Fatalf("exit %d, stderr %q", r.Code, r.Stderr)
			}
			sameListing(t, dest, map[string]string{"file": "F"})
		})
	}

	// Special files are skipped with a warning, the rest is copied.
	special := t.TempDir()
	os.Chmod(special, 0o755)
	writeFile(t, filepath.Join(special, "t/regular"), []byte("R"), 0o644, mt)
	if err := syscall.Mkfifo(filepath.Join(special, "t/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(special, "t/sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, dir := range []string{"upload", "download"} {
		t.Run(dir+"/special files", func(t *testing.T) {
			dest := t.TempDir()
			var r result
			if dir == "upload" {
				r = d.zpc(t, "-r", filepath.Join(special, "t"), d.at(dest))
			} else {
				r = d.zpc(t, "-r", d.at(filepath.Join(special, "t")), dest)
			}
			for _, w := range []string{"skipping special file", "fifo", "sock"} {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("stderr lacks %q: %s", w, r.Stderr)
				}
			}
			// Skipped with a notice (as rsync), not a failure.
			if r.Code != 0 {
				t.Errorf("exit %d", r.Code)
			}
			sameListing(t, dest, map[string]string{"t": "/", "t/regular": "R"})
		})
	}

	// host: alone is the remote user's home; relative paths are in it.
	t.Run("home", func(t *testing.T) {
		u := testUserKey(t, d, "zpcuser")
		host := u.name + "@" + d.Addr
		ok(t, d.zpc(t, p("file"), host+":"))
		ok(t, d.zpc(t, "-r", p("dir"), host+":rel/"))
		st, err := os.Stat(filepath.Join(u.home, "file"))
		if err != nil {
			t.Fatalf("host: alone did not write into %s: %v", u.home, err)
		}
		if sys := st.Sys().(*syscall.Stat_t); int(sys.Uid) != u.uid {
			t.Errorf("file owned by %d, want the user %d", sys.Uid, u.uid)
		}
		sameListing(t, filepath.Join(u.home, "rel"), dirTree)
		local := t.TempDir()
		ok(t, d.zpc(t, host+":file", host+":rel/dir", "-r", local))
		sameListing(t, local, map[string]string{"file": "F", "dir": "/", "dir/a": "A", "dir/sub": "/", "dir/sub/b": "B"})
		// ~ and ~/ mean the home too.
		local2 := t.TempDir()
		ok(t, d.zpc(t, host+":~/file", local2))
		sameListing(t, local2, map[string]string{"file": "F"})
	})
}

// TestZpcSkip: a rerun copies nothing; a newer time copies again;
// --checksum compares content.
func TestZpcSkip(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "s")
	mt := time.Date(2020, 2, 2, 2, 2, 2, 0, time.UTC)
	var total uint64
	for i := 0; i < 20; i++ {
		n := 1000 + i*3000
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%d/f%02d", i%3, i)), randomBytes(n, uint64(i)), 0o644, mt)
		total += uint64(n)
	}
	dest := t.TempDir()
	remote := filepath.Join(dest, "s")
	up := func(extra ...string) zpcStats {
		t.Helper()
		r := d.zpc(t, append(append([]string{"-r", "--json"}, extra...), src, d.at(dest))...)
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
		return stats(t, r)
	}
	if s := up(); s.Files != 20 || s.Skipped != 0 || s.BytesSent != total {
		t.Fatalf("first copy: %+v", s)
	}
	check := func(what string, s zpcStats, files, skipped int, sent uint64) {
		t.Helper()
		if s.Files != files || s.Skipped != skipped || s.BytesSent != sent || s.BytesSkipped != total-sent || len(s.Failures) != 0 {
			t.Fatalf("%s: %+v; want files %d, skipped %d, bytes_sent %d", what, s, files, skipped, sent)
		}
	}
	check("identical rerun", up(), 0, 20, 0)
	check("identical rerun --checksum", up("--checksum"), 0, 20, 0)

	// A newer modification time: copied again.
	f5 := filepath.Join(src, "d2/f05")
	st, _ := os.Stat(f5)
	os.Chtimes(f5, mt.Add(time.Hour), mt.Add(time.Hour))
	check("touched", up(), 1, 19, uint64(st.Size()))
	sameTree(t, "after touch", snapshot(t, src), snapshot(t, remote))

	// --checksum: a new time but the same content is skipped (and the
	// time is brought over)…
	f7 := filepath.Join(src, "d1/f07")
	os.Chtimes(f7, mt.Add(2*time.Hour), mt.Add(2*time.Hour))
	check("touched, --checksum", up("-c"), 0, 20, 0)
	sameTree(t, "after --checksum", snapshot(t, src), snapshot(t, remote))

	// …while content changed behind an unchanged size and time is missed
	// by the default comparison and caught by --checksum.
	f9 := filepath.Join(src, "d0/f09")
	st, _ = os.Stat(f9)
	os.WriteFile(f9, randomBytes(int(st.Size()), 999), 0o644)
	os.Chtimes(f9, st.ModTime(), st.ModTime()) // as touch -r
	check("same size and time", up(), 0, 20, 0)
	if fileDigest(t, f9) == fileDigest(t, filepath.Join(remote, "d0/f09")) {
		t.Fatal("test broken: the content did not change")
	}
	check("same size and time, --checksum", up("--checksum"), 1, 19, uint64(st.Size()))
	sameTree(t, "after content change", snapshot(t, src), snapshot(t, remote))

	// Downloads skip the same way.
	local := t.TempDir()
	down := func(extra ...string) zpcStats {
		t.Helper()
		r := d.zpc(t, append(append([]string{"-r", "--json"}, extra...), d.at(remote), local)...)
		if r.Code != 0 {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
		return stats(t, r)
	}
	check("download", down(), 20, 0, total)
	check("download rerun", down(), 0, 20, 0)
	os.Chtimes(filepath.Join(remote, "d2/f05"), mt, mt)
	st, _ = os.Stat(filepath.Join(remote, "d2/f05"))
	check("download touched", down(), 1, 19, uint64(st.Size()))
	check("download rerun --checksum", down("-c"), 0, 20, 0)
	sameTree(t, "downloaded", snapshot(t, remote), snapshot(t, filepath.Join(local, "s")))
}

// TestZpcExitCodes: 0 all copied, 1 some failed (named, the rest copied),
// 255 connection or authentication failure.
func TestZpcExitCodes(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "good"), []byte("good"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "clash"), []byte("clash"), 0o644, time.Unix(1e9, 0))

	t.Run("0", func(t *testing.T) {
		dest := t.TempDir()
		r := d.zpc(t, "--json", filepath.Join(src, "good"), d.at(dest))
		s := stats(t, r)
		if r.Code != 0 || r.Stderr != "" || s.Files != 1 || s.BytesSent != 4 || s.Seconds <= 0 || len(s.Failures) != 0 {
			t.Fatalf("exit %d %q %+v", r.Code, r.Stderr, s)
		}
	})
	t.Run("1 upload", func(t *testing.T) {
		dest := t.TempDir()
		mkdir(t, filepath.Join(dest, "clash"), 0o755) // a file cannot replace it
		missing := filepath.Join(src, "missing")
		r := d.zpc(t, "--json", filepath.Join(src, "good"), missing, filepath.Join(src, "clash"), d.at(dest))
		s := stats(t, r)
		if r.Code != 1 || s.Files != 1 || len(s.Failures) != 2 {
			t.Fatalf("exit %d %+v\n%s", r.Code, s, r.Stderr)
		}
		for _, w := range []string{missing, "clash"} {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("stderr does not name %s: %s", w, r.Stderr)
			}
		}
		sameListing(t, dest, map[string]string{"good": "good", "clash": "/"})
	})
	t.Run("1 download", func(t *testing.T) {
		dest := t.TempDir()
		mkdir(t, filepath.Join(dest, "clash"), 0o755)
		missing := filepath.Join(src, "missing")
		r := d.zpc(t, "--json", d.at(filepath.Join(src, "good")), d.at(missing), d.at(filepath.Join(src, "clash")), dest)
		s := stats(t, r)
		if r.Code != 1 || s.Files != 1 || len(s.Failures) != 2 {
			t.Fatalf("exit %d %+v\n%s", r.Code, s, r.Stderr)
		}
		for _, w := range []string{missing, "clash"} {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("stderr does not name %s: %s", w, r.Stderr)
			}
		}
		sameListing(t, dest, map[string]string{"good": "good", "clash": "/"})
	})
	// A destination that cannot be created fails the copy (exit 1, at
	// once, with the reason), on either side; it is no connection
	// problem to retry.
	t.Run("1 destination cannot be created", func(t *testing.T) {
		dir := t.TempDir()
		plain := filepath.Join(dir, "plain")
		writeFile(t, plain, []byte("a file"), 0o644, time.Unix(1e9, 0))
		for _, args := range [][]string{
			{filepath.Join(src, "good"), d.at(plain + "/sub/")},
			{filepath.Join(src, "good"), d.at(filepath.Join(dir, "missing/renamed"))},
			{d.at(filepath.Join(src, "good")), plain + "/sub/"},
			{d.at(filepath.Join(src, "good")), filepath.Join(dir, "missing/renamed")},
		} {
			start := time.Now()
			r := d.zpc(t, append([]string{"--json"}, args...)...)
			t.Logf("%v: exit %d in %v: %s", args, r.Code, time.Since(start).Round(time.Millisecond), r.Stderr)
			if r.Code != 1 || strings.Contains(r.Stderr, "reconnect") || time.Since(start) > 5*time.Second {
				t.Errorf("%v: exit %d after %v: %s", args, r.Code, time.Since(start), r.Stderr)
			}
			if !strings.Contains(r.Stderr, "not a directory") && !strings.Contains(r.Stderr, "no such") {
				t.Errorf("no reason given: %s", r.Stderr)
			}
		}
		sameListing(t, dir, map[string]string{"plain": "a file"})
	})
	t.Run("255 unreachable", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		for _, args := range [][]string{
			{filepath.Join(src, "good"), addr + ":" + t.TempDir()},
			{addr + ":" + filepath.Join(src, "good"), t.TempDir()},
		} {
			start := time.Now()
			r := run(t, nil, d.env(), "zpc", append([]string{"--accept-new", "--json"}, args...)...)
			if r.Code != 255 || !strings.Contains(r.Stderr, "refused") || time.Since(start) > 10*time.Second {
				t.Fatalf("exit %d after %v: %s", r.Code, time.Since(start), r.Stderr)
			}
		}
	})
	t.Run("255 unknown key", func(t *testing.T) {
		stranger := t.TempDir()
		run(t, nil, []string{"ZP_CONFIG=" + stranger}, "zp", "keygen")
		dest := t.TempDir()
		r := run(t, nil, []string{"ZP_CONFIG=" + stranger}, "zpc", "--accept-new", filepath.Join(src, "good"), d.at(dest))
		if r.Code != 255 || !strings.Contains(r.Stderr, "refused our key") {
			t.Fatalf("exit %d: %s", r.Code, r.Stderr)
		}
		sameListing(t, dest, map[string]string{})
	})
	t.Run("255 usage", func(t *testing.T) {
		for _, args := range [][]string{
			{filepath.Join(src, "good"), t.TempDir()},                         // no remote side
			{d.at(filepath.Join(src, "good")), d.at(t.TempDir())},             // both remote
			{filepath.Join(src, "good")},                                      // one argument
			{"--no-such-flag", filepath.Join(src, "good"), d.at(t.TempDir())}, // bad flag
		} {
			if r := d.zpc(t, args...); r.Code != 255 || r.Stderr == "" {
				t.Errorf("%v: exit %d %q", args, r.Code, r.Stderr)
			}
		}
	})
}

// startZPC starts zpc against d in the background.
func startZPC(t *testing.T, d *zpd, args ...string) (*exec.Cmd, *syncBuffer, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(bin("zpc"), append(d.clientArgs(), args...)...)
	cmd.Env = append(os.Environ(), d.env()...)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("zpc %v:\nstdout: %s\nstderr: %s", args, stdout, stderr)
		}
	})
	return cmd, stdout, stderr
}

// owner returns the uid and gid of path (not following a symlink).
func owner(t *testing.T, path string) (int, int) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return int(sys.Uid), int(sys.Gid)
}

// -p keeps owners when the receiving side runs as root; without it the
// receiver's user owns everything.
func TestZpcPreserveOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: -p must be tested there")
		}
		t.Skip("needs root to set owners")
	}
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "own")
	writeFile(t, filepath.Join(src, "sub/f"), []byte("f"), 0o640, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "g"), []byte("g"), 0o644, time.Unix(1e9, 0))
	symlink(t, "g", filepath.Join(src, "l"))
	for _, p := range []string{"sub/f", "sub", "l", ""} {
		if err := os.Lchown(filepath.Join(src, p), 12345, 12346); err != nil {
			t.Fatal(err)
		}
	}
	check := func(root string, want map[string][2]int) {
		t.Helper()
		for p, w := range want {
			if u, g := owner(t, filepath.Join(root, p)); u != w[0] || g != w[1] {
				t.Errorf("%s: owner %d:%d, want %d:%d", p, u, g, w[0], w[1])
			}
		}
	}
	kept := map[string][2]int{"": {12345, 12346}, "sub": {12345, 12346}, "sub/f": {12345, 12346}, "l": {12345, 12346}, "g": {0, 0}}
	mine := map[string][2]int{"": {0, 0}, "sub": {0, 0}, "sub/f": {0, 0}, "l": {0, 0}, "g": {0, 0}}

	plain := t.TempDir()
	if r := d.zpc(t, "-r", src, d.at(plain)); r.Code != 0 {
		t.Fatalf("exit %d %s", r.Code, r.Stderr)
	}
	check(filepath.Join(plain, "own"), mine)
	up := t.TempDir()
	if r := d.zpc(t, "-r", "-p", src, d.at(up)); r.Code != 0 {
		t.Fatalf("exit %d %s", r.Code, r.Stderr)
	}
	check(filepath.Join(up, "own"), kept)
	down := t.TempDir()
	if r := d.zpc(t, "-r", "-p", d.at(filepath.Join(up, "own")), down); r.Code != 0 {
		t.Fatalf("exit %d %s", r.Code, r.Stderr)
	}
	check(filepath.Join(down, "own"), kept)
	down2 := t.TempDir()
	if r := d.zpc(t, "-r", d.at(filepath.Join(up, "own")), down2); r.Code != 0 {
		t.Fatalf("exit %d %s", r.Code, r.Stderr)
	}
	check(filepath.Join(down2, "own"), mine)
}
