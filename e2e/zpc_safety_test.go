package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"hash"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// arena is a directory holding the destination and, next to it, an
// "outside" directory with one file that no transfer may touch.
type arena struct {
	base, dest, outside, victim string
	abs                         string // an absolute path a malicious peer names
}

func newArena(t *testing.T) *arena {
	t.Helper()
	base := t.TempDir()
	a := &arena{base: base, dest: filepath.Join(base, "dest"), outside: filepath.Join(base, "outside")}
	a.victim = filepath.Join(a.outside, "victim")
	mkdir(t, a.dest, 0o755)
	mkdir(t, a.outside, 0o755)
	writeFile(t, a.victim, []byte("original"), 0o644, time.Unix(1e9, 0))
	// Pre-existing symlinks inside the destination that lead outside.
	symlink(t, a.victim, filepath.Join(a.dest, "plink"))
	symlink(t, a.outside, filepath.Join(a.dest, "pdir"))
	symlink(t, "../outside", filepath.Join(a.dest, "prel"))
	// Good files that content failing its digest must not replace.
	writeFile(t, filepath.Join(a.dest, "corrupt"), []byte("precious"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(a.dest, "short"), []byte("precious too"), 0o644, time.Unix(1e9, 0))
	var rnd [8]byte
	rand.Read(rnd[:])
	a.abs = filepath.Join(os.TempDir(), "zpc-abs-"+hex.EncodeToString(rnd[:]))
	t.Cleanup(func() { os.RemoveAll(a.abs) })
	return a
}

// check fails if anything was written outside the destination.
func (a *arena) check(t *testing.T) {
	t.Helper()
	sameListing(t, a.outside, map[string]string{"victim": "original"})
	if st, _ := os.Stat(a.victim); st.Mode().Perm() != 0o644 || st.ModTime().Unix() != 1e9 {
		t.Fatalf("outside file's attributes changed: %v %v", st.Mode(), st.ModTime())
	}
	ents, _ := os.ReadDir(a.base)
	if len(ents) != 2 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("next to the destination: %v", names)
	}
	if _, err := os.Lstat(a.abs); err == nil {
		t.Fatalf("%s was written", a.abs)
	}
	for _, p := range []string{"/evil", "/pwned", "/evildir"} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists", p)
		}
	}
}

// hostile lists entries a malicious peer sends, by FID, and whether the
// receiver must refuse them (a 4xx FILE_DONE).
type hostileEntry struct {
	f      wire.File
	refuse bool
	body   []byte // content actually sent; nil: hello (COMMIT always says hello)
}

// bodies maps FIDs to the content a hostile peer sends for them.
func bodies(entries []hostileEntry) map[uint32][]byte {
	m := map[uint32][]byte{1: hello, 6: hello}
	for _, e := range entries {
		m[e.f.FID] = hello
		if e.body != nil {
			m[e.f.FID] = e.body
		}
	}
	return m
}

func hostileEntries(a *arena) []hostileEntry {
	file := func(fid uint32, path string) wire.File {
		return wire.File{FID: fid, Path: path, Kind: wire.KindFile, Mode: 0o644, MTime: 1e18, Size: 5}
	}
	return []hostileEntry{
		{file(1, "../evil"), true, nil},
		{file(2, a.abs), true, nil},
		{file(3, "a\x00b"), true, nil},
		{file(4, "x/../../evil"), true, nil},
		{wire.File{FID: 5, Path: "esc", Kind: wire.KindSymlink, Target: a.outside}, false, nil},
		{file(6, "esc/pwned"), true, nil},
		{file(7, "pdir/pwned"), true, nil},
		{file(8, "prel/pwned"), true, nil},
		{wire.File{FID: 9, Path: "../evildir", Kind: wire.KindDir, Mode: 0o755}, true, nil},
		{wire.File{FID: 10, Path: "esc/sub", Kind: wire.KindDir, Mode: 0o755}, true, nil},
		{wire.File{FID: 11, Path: "../evillink", Kind: wire.KindSymlink, Target: "x"}, true, nil},
		{wire.File{FID: 12, Path: "pdir/link", Kind: wire.KindSymlink, Target: "x"}, true, nil},
		{file(13, "/pwned"), true, nil},
		{file(14, "./x"), true, nil},
		{file(15, "a//b"), true, nil},
		{file(16, "."), true, nil},
		{file(17, "\x1b]0;owned\x07\x1b[2J/../x"), true, nil}, // must not reach the terminal raw
		{file(18, "\x9b2J/../y"), true, nil},                  // a C1 control in invalid UTF-8
		{file(19, "plink"), false, nil},                       // replaces the link, not its target
		{file(20, "good"), false, nil},
		{file(23, "corrupt"), true, []byte("hellx")}, // fails its digest
		{file(24, "short"), true, []byte("hell")},    // fewer octets than announced
		// The receiver's own temporary names (a partial and the hash
		// state older versions kept beside it, planted for a later
		// download of the same file to resume from).
		{file(25, ".zpc-0123456789abcdef.part"), true, nil},
		{file(26, ".zpc-0123456789abcdef.part.sha"), true, nil},
		{wire.File{FID: 27, Path: ".zpc-link-1", Kind: wire.KindSymlink, Target: "good"}, true, nil},
		{file(28, "sub/.zpc-x/f"), true, nil},
		// A second name for the destination: names never go through a
		// symlink below it, even one that stays inside.
		{wire.File{FID: 29, Path: "alias", Kind: wire.KindSymlink, Target: "."}, false, nil},
		{file(30, "alias/good"), true, nil},
		// A kind the receiver does not know still gets an answer.
		{wire.File{FID: 31, Path: "dev", Kind: 9, Mode: 0o644}, true, nil},
	}
}

// checkDest: the acceptable entries arrived, the refused ones did not.
func (a *arena) checkDest(t *testing.T) {
	t.Helper()
	sameListing(t, a.dest, map[string]string{
		"esc":     "-> " + a.outside,
		"alias":   "-> .",
		"plink":   "hello",
		"good":    "hello",
		"pdir":    "-> " + a.outside,
		"prel":    "-> ../outside",
		"corrupt": "precious",
		"short":   "precious too",
	})
	a.check(t)
}

var hello = []byte("hello")

// helloDigest is hello's content digest in a session of wire.Version
// (BLAKE3: PROTOCOL §10.3).
func helloDigest() []byte { return sum(digest.For(wire.Version), hello) }

// sum is data's digest by newHash.
func sum(newHash func() hash.Hash, data []byte) []byte {
	h := newHash()
	h.Write(data)
	return h.Sum(nil)
}

// Upload from a crafted client: every unsafe name gets a 4xx FILE_DONE
// and nothing appears outside the destination.
func TestZpcUploadHostileNames(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t) // the raw DEALER speaks NULL
	a := newArena(t)
	s := rawDealer(t, d)
	send := func(m wire.Message) {
		t.Helper()
		if err := s.Send(zmq4.NewMsgFrom(wire.Frames(m)...)); err != nil {
			t.Fatal(err)
		}
	}
	var queued []wire.Message // the rest of a BATCH from zpd
	recv := func() wire.Message {
		t.Helper()
		if len(queued) == 0 {
			m, err := recvMsg(t, s)
			if err != nil {
				t.Fatal(err)
			}
			queued = unbatch(m)
		}
		m := queued[0]
		queued = queued[1:]
		return m
	}
	send(&wire.Open{Version: wire.Version})
	if m := recv(); m.ID() != wire.IDOpenOK {
		t.Fatalf("OPEN: %#v", m)
	}
	const ch = 1
	send(&wire.Send{Channel: ch, Flags: wire.XferRecursive, Dest: a.dest})
	if ok, isOK := recv().(*wire.SendOK); !isOK || ok.Mode != wire.TargetInto {
		t.Fatalf("SEND: %#v", ok)
	}
	entries := hostileEntries(a)
	for _, e := range entries {
		f := e.f
		f.Channel = ch
		send(&f)
	}
	var seq uint64
	body := bodies(entries)
	data := func(fid uint32) {
		b := body[fid]
		send(&wire.Chunk{Channel: ch, FID: fid, Offset: 0, Seq: seq, Bytes: b})
		seq += uint64(len(b))
		send(&wire.Commit{Channel: ch, FID: fid, Size: uint64(len(hello)), Digest: helloDigest()})
	}
	// A hostile client sends content for a refused entry anyway.
	data(1)
	data(6)
	done := map[uint32]uint16{}
	for len(done) < len(entries) {
		switch m := recv().(type) {
		case *wire.FileOK:
			switch m.Action {
			case wire.ActionSend:
				data(m.FID)
			case wire.ActionDone:
				done[m.FID] = 0
			default:
				t.Fatalf("FILE_OK %+v", m)
			}
		case *wire.FileDone:
			done[m.FID] = m.Code
			if m.Code != 0 {
				t.Logf("FILE_DONE %d %d %s", m.FID, m.Code, m.Reason)
			}
		case *wire.Ack, *wire.Ping, *wire.Pong:
		default:
			t.Fatalf("unexpected %#v", m)
		}
	}
	send(&wire.End{Channel: ch, Count: uint32(len(entries))})
	for {
		if _, ok := recv().(*wire.End); ok {
			break
		}
	}
	for _, e := range entries {
		code := done[e.f.FID]
		if e.refuse && (code < 400 || code >= 500) {
			t.Errorf("%q (%d): code %d, want 4xx", e.f.Path, e.f.FID, code)
		}
		if !e.refuse && code != 0 {
			t.Errorf("%q (%d): code %d, want 0", e.f.Path, e.f.FID, code)
		}
	}
	a.checkDest(t)
}

// fakeServer is a malicious zpd: it answers OPEN and then, for RECV,
// sends the entries it is given, content for every entry the client asks
// for (and some it did not), COMMIT and END.
type fakeServer struct {
	Addr    string
	mu      sync.Mutex
	results map[uint32]uint16 // FILE_DONE codes from the client
}

// startFakeServer serves entries. It sends END once the client answered
// every entry, or, with earlyEnd, right after the entries (a broken
// sender: the client must not count what never came as copied).
func startFakeServer(t *testing.T, entries []hostileEntry, earlyEnd bool) *fakeServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "ROUTER"}))
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{Addr: router.Addr().String(), results: map[uint32]uint16{}}
	done := make(chan struct{})
	t.Cleanup(func() { router.Close(); cancel(); <-done })
	go func() {
		defer close(done)
		var seq uint64
		answered := map[uint32]bool{}
		body := bodies(entries)
		for {
			msg, err := router.Recv()
			if err != nil {
				return
			}
			id := msg.Frames[0]
			send := func(m wire.Message) {
				router.Send(zmq4.NewMsgFrom(append([][]byte{id}, wire.Frames(m)...)...))
			}
			m, err := wire.Decode(msg.Frames[1:])
			if err != nil {
				continue
			}
			content := func(ch, fid uint32) {
				b := body[fid]
				send(&wire.Chunk{Channel: ch, FID: fid, Offset: 0, Seq: seq, Bytes: b})
				seq += uint64(len(b))
				send(&wire.Commit{Channel: ch, FID: fid, Size: uint64(len(hello)), Digest: helloDigest()})
			}
			for _, m := range unbatch(m) {
				switch m := m.(type) {
				case *wire.Open:
					send(&wire.OpenOK{Version: wire.Version, Session: "fake", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 1000, Server: "fake"})
				case *wire.Ping:
					send(&wire.Pong{Seq: m.Seq})
				case *wire.Recv:
					for _, e := range entries {
						f := e.f
						f.Channel = m.Channel
						send(&f)
					}
					// Content for refused entries, unasked.
					content(m.Channel, 1)
					content(m.Channel, 6)
					if earlyEnd {
						send(&wire.End{Channel: m.Channel, Count: uint32(len(entries))})
					}
				case *wire.FileOK:
					switch m.Action {
					case wire.ActionSend:
						if !earlyEnd {
							content(m.Channel, m.FID)
						}
					default:
						answered[m.FID] = true
					}
				case *wire.FileDone:
					fs.mu.Lock()
					fs.results[m.FID] = m.Code
					fs.mu.Unlock()
					answered[m.FID] = true
				}
			}
			if !earlyEnd && len(answered) == len(entries) {
				answered[0] = true // once
				send(&wire.End{Channel: 1, Count: uint32(len(entries))})
			}
		}
	}()
	return fs
}

// Download from a malicious server: zpc refuses the unsafe names (exit 1,
// each named on stderr) and writes nothing outside the destination.
func TestZpcDownloadHostileNames(t *testing.T) {
	t.Parallel()
	a := newArena(t)
	entries := hostileEntries(a)
	fs := startFakeServer(t, entries, false)
	r := run(t, nil, []string{"ZP_CONFIG=" + t.TempDir()}, "zpc", "--insecure", "-r", "-v", "--json", fs.Addr+":anything", a.dest)
	t.Logf("exit %d\n%s", r.Code, r.Stderr)
	if r.Code != 1 {
		t.Fatalf("exit %d, want 1", r.Code)
	}
	s := stats(t, r)
	refused := 0
	for _, e := range entries {
		if !e.refuse {
			continue
		}
		refused++
		// Names with control characters are shown quoted.
		name := strings.Trim(strconv.Quote(e.f.Path), `"`)
		if !strings.Contains(r.Stderr, e.f.Path) && !strings.Contains(r.Stderr, name) {
			t.Errorf("stderr does not name %q", e.f.Path)
		}
	}
	if strings.ContainsAny(r.Stderr, "\x00\x1b\x07\x9b") {
		t.Errorf("control characters from the network reached the terminal: %q", r.Stderr)
	}
	if len(s.Failures) != refused || s.Files != 2 {
		t.Errorf("summary %+v: want %d failures and 2 files", s, refused)
	}
	a.checkDest(t)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, e := range entries {
		if code, ok := fs.results[e.f.FID]; e.refuse && (!ok || code < 400 || code >= 500) {
			t.Errorf("%q: the server got code %d (%v), want 4xx", e.f.Path, code, ok)
		}
	}
}

// A destination the user may not write into: every file fails with a
// permission error, exit 1, nothing is written.
func TestZpcReadOnlyDestination(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	u := testUserKey(t, d, "zpcro")
	base, err := os.MkdirTemp("", "zpc-ro-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	ro := filepath.Join(base, "ro") // root's, 0755
	mkdir(t, ro, 0o755)
	writeFile(t, filepath.Join(ro, "existing"), []byte("keep"), 0o644, time.Unix(1e9, 0))
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "one"), []byte("1"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "two"), []byte("22"), 0o644, time.Unix(1e9, 0))
	writeFile(t, filepath.Join(src, "existing"), []byte("new"), 0o644, time.Unix(2e9, 0))
	writeFile(t, filepath.Join(src, "dir/three"), []byte("333"), 0o644, time.Unix(1e9, 0))
	host := u.name + "@" + d.Addr + ":"
	want := map[string]string{"existing": "keep"}

	r := d.zpc(t, "--json", filepath.Join(src, "one"), filepath.Join(src, "two"), filepath.Join(src, "existing"), host+ro)
	t.Logf("exit %d\n%s", r.Code, r.Stderr)
	s := stats(t, r)
	if r.Code != 1 || s.Files != 0 || len(s.Failures) != 3 {
		t.Fatalf("exit %d %+v", r.Code, s)
	}
	for _, f := range []string{"one", "two", "existing"} {
		if !strings.Contains(r.Stderr, f+": ") {
			t.Errorf("stderr does not name %s", f)
		}
	}
	if n := strings.Count(r.Stderr, "permission denied"); n != 3 {
		t.Errorf("%d permission errors, want 3", n)
	}
	sameListing(t, ro, want)

	r = d.zpc(t, "-r", filepath.Join(src, "dir"), host+ro)
	if r.Code != 1 || !strings.Contains(r.Stderr, "permission denied") || !strings.Contains(r.Stderr, "three") {
		t.Fatalf("-r: exit %d\n%s", r.Code, r.Stderr)
	}
	sameListing(t, ro, want)

	// A destination that cannot even be created is refused as a whole,
	// with the reason.
	r = d.zpc(t, filepath.Join(src, "one"), host+filepath.Join(ro, "sub")+"/")
	if r.Code != 1 || !strings.Contains(r.Stderr, "permission denied") {
		t.Fatalf("new dir: exit %d\n%s", r.Code, r.Stderr)
	}
	sameListing(t, ro, want)

	// Downloads into a directory the local user may not write: zpc runs
	// as the user, with a copy of the client key.
	cfg := filepath.Join(u.home, "zpcfg")
	mkdir(t, cfg, 0o700)
	for _, f := range []string{"id_curve", "id_curve.pub"} {
		b, err := os.ReadFile(filepath.Join(d.Home, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(cfg, f), b, 0o600)
		os.Chown(filepath.Join(cfg, f), u.uid, u.gid)
	}
	os.Chown(cfg, u.uid, u.gid)
	cmd := exec.Command(bin("zpc"), "--accept-new", "-q", "--json", d.at(filepath.Join(src, "one")), d.at(filepath.Join(src, "existing")), ro)
	cmd.Env = []string{"ZP_CONFIG=" + cfg, "HOME=" + u.home, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("download as %s: exit %d\n%s", u.name, code, errb.String())
	ds := stats(t, result{Stdout: out.String()})
	if code != 1 || ds.Files != 0 || len(ds.Failures) != 2 || strings.Count(errb.String(), "permission denied") != 2 {
		t.Fatalf("download into a read-only directory: exit %d %+v", code, ds)
	}
	sameListing(t, ro, want)

	// The same user may write into its own directory (the test is sound).
	mine := filepath.Join(base, "mine")
	mkdir(t, mine, 0o755)
	os.Chown(mine, u.uid, u.gid)
	if r := d.zpc(t, filepath.Join(src, "one"), host+mine); r.Code != 0 {
		t.Fatalf("own directory: exit %d %s", r.Code, r.Stderr)
	}
}

// mountTmpfs mounts a small tmpfs at dir for the test.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here (%v: %s); CI must", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

// A full file system: a clear per-file error, exit 1, the good file
// already there is not replaced, the partial is kept, and a rerun after
// space was freed resumes from it.
func TestZpcDiskFull(t *testing.T) {
	d := startZPD(t)
	src := t.TempDir()
	patternFile(t, filepath.Join(src, "big"), 3<<20, 9)
	writeFile(t, filepath.Join(src, "a-small"), []byte("small"), 0o644, time.Unix(1e9, 0))
	good := randomBytes(512<<10, 5)

	for _, direction := range []string{"upload", "download"} {
		t.Run(direction, func(t *testing.T) {
			mnt := t.TempDir()
			mountTmpfs(t, mnt, "2m")
			writeFile(t, filepath.Join(mnt, "big"), good, 0o644, time.Unix(1e9, 0))
			args := []string{"--json", filepath.Join(src, "a-small"), filepath.Join(src, "big"), d.at(mnt)}
			if direction == "download" {
				args = []string{"--json", d.at(filepath.Join(src, "a-small")), d.at(filepath.Join(src, "big")), mnt}
			}
			r := d.zpc(t, args...)
			t.Logf("exit %d\n%s", r.Code, r.Stderr)
			s := stats(t, r)
			if r.Code != 1 || s.Files != 1 || len(s.Failures) != 1 {
				t.Fatalf("exit %d %+v", r.Code, s)
			}
			if !strings.Contains(r.Stderr, "big") || !strings.Contains(r.Stderr, "no space left on device") {
				t.Fatal("no clear 'no space' error naming the file")
			}
			if b, _ := os.ReadFile(filepath.Join(mnt, "big")); string(b) != string(good) {
				t.Fatal("the good file was replaced")
			}
			if b, _ := os.ReadFile(filepath.Join(mnt, "a-small")); string(b) != "small" {
				t.Fatalf("the file that fits: %q", b)
			}
			have := partialSize(mnt)
			if have == 0 {
				t.Fatalf("no partial kept: %v", partialNames(mnt))
			}
			// Free space and run again: it resumes.
			if out, err := exec.Command("mount", "-o", "remount,size=16m", mnt).CombinedOutput(); err != nil {
				t.Fatalf("remount: %v %s", err, out)
			}
			r = d.zpc(t, args...)
			s = stats(t, r)
			if r.Code != 0 || s.Files != 1 || s.Skipped != 1 || s.BytesResumed != uint64(have) {
				t.Fatalf("rerun: exit %d %+v (partial had %d)\n%s", r.Code, s, have, r.Stderr)
			}
			if fileDigest(t, filepath.Join(src, "big")) != fileDigest(t, filepath.Join(mnt, "big")) {
				t.Fatal("content differs")
			}
			if p := partialNames(mnt); len(p) != 0 {
				t.Fatalf("partials left: %v", p)
			}
		})
	}
}

// A server that ends the transfer without sending the content it
// announced: those files are failures (exit 1), not silently missing.
func TestZpcDownloadEarlyEnd(t *testing.T) {
	t.Parallel()
	a := newArena(t)
	entries := []hostileEntry{
		// Not FIDs 1 and 6, for which the server sends content unasked.
		{wire.File{FID: 21, Path: "one", Kind: wire.KindFile, Mode: 0o644, Size: 5}, true, nil},
		{wire.File{FID: 22, Path: "two", Kind: wire.KindFile, Mode: 0o644, Size: 5}, true, nil},
	}
	fs := startFakeServer(t, entries, true)
	r := run(t, nil, []string{"ZP_CONFIG=" + t.TempDir()}, "zpc", "--insecure", "-r", "--json", fs.Addr+":anything", a.dest)
	t.Logf("exit %d\n%s", r.Code, r.Stderr)
	s := stats(t, r)
	if r.Code != 1 || s.Files != 0 || len(s.Failures) != 2 || !strings.Contains(r.Stderr, "one") || !strings.Contains(r.Stderr, "two") {
		t.Fatalf("exit %d %+v", r.Code, s)
	}
	if _, err := os.Lstat(filepath.Join(a.dest, "one")); err == nil {
		t.Fatal("a file that never came exists")
	}
	a.check(t)
}
