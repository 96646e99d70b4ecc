package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// partialNameOf is the name zpc's receiver gives the partial file of a
// source with this base name, size and mtime (chunkstore.partialName).
func partialNameOf(base string, size int64, mtime time.Time) string {
	h := sha256.Sum256([]byte(base + "\x00" + strconv.FormatInt(size, 10) + "\x00" + strconv.FormatInt(mtime.UnixNano(), 10)))
	return ".zpc-" + hex.EncodeToString(h[:8]) + ".part"
}

// plantForged puts, at the partial name of src's copy in dir, a partial
// of someone else's octets together with the saved hash state of src's
// genuine prefix of the same length (the ".sha" checkpoint that earlier
// versions trusted).
func plantForged(t *testing.T, src, dir, base string, n int) {
	t.Helper()
	genuine, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(src)
	tmp := filepath.Join(dir, partialNameOf(base, st.Size(), st.ModTime()))
	if err := os.WriteFile(tmp, bytes.Repeat([]byte("EVIL"), n/4), 0o600); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(genuine[:n])
	state, _ := h.(encoding.BinaryMarshaler).MarshalBinary()
	rec := append(binary.BigEndian.AppendUint64(nil, uint64(n)), state...)
	if err := os.WriteFile(tmp+".sha", rec, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A partial planted with foreign octets and the genuine prefix's hash
// state does not get its octets into the copy, in either direction: the
// receiver hashes what it keeps, the sender sees the difference and
// sends everything.
func TestZpcPlantedPartialForgedHash(t *testing.T) {
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "data")
	patternFile(t, src, 3<<20, 11)
	want := fileDigest(t, src)
	for _, direction := range []string{"upload", "download"} {
		t.Run(direction, func(t *testing.T) {
			dest := t.TempDir()
			plantForged(t, src, dest, "data", 2<<20)
			r := d.zpc(t, jsonCopyArgs(d, direction, src, filepath.Join(dest, "data"))...)
			if r.Code != 0 {
				t.Fatalf("exit %d: %s", r.Code, r.Stderr)
			}
			if got := fileDigest(t, filepath.Join(dest, "data")); got != want {
				t.Fatal("the copy holds the planted octets")
			}
			if s := stats(t, r); s.BytesResumed != 0 || s.BytesSent != 3<<20 {
				t.Errorf("resumed %d, sent %d: want nothing resumed", s.BytesResumed, s.BytesSent)
			}
			if p := partialNames(dest); len(p) != 0 {
				t.Errorf("left behind: %v", p)
			}
		})
	}
}

// In a shared sticky directory (like /tmp) another user pre-created the
// partial file of alice's upload, writable for all: alice's copy must
// not go into that file (which its creator could then change under
// alice's name) but into a file of her own, and she is told.
func TestZpcPlantedPartialOtherUser(t *testing.T) {
	d := startZPD(t)
	u := testUserKey(t, d, "zpcshared")
	base, err := os.MkdirTemp("", "zpc-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	shared := filepath.Join(base, "shared")
	mkdir(t, shared, 0o777)
	if err := unix.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "report")
	patternFile(t, src, 1<<20, 3)
	st, _ := os.Stat(src)
	planted := filepath.Join(shared, partialNameOf("report", st.Size(), st.ModTime()))
	if err := os.WriteFile(planted, []byte("mallory's"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(planted, 0o666)
	os.Chown(planted, 4242, 4242)

	r := d.zpc(t, src, u.name+"@"+d.at(shared+"/"))
	t.Logf("exit %d\n%s", r.Code, r.Stderr)
	if r.Code != 0 {
		t.Fatalf("exit %d", r.Code)
	}
	copied := filepath.Join(shared, "report")
	if uid, _ := owner(t, copied); uid != u.uid {
		t.Fatalf("the copy belongs to uid %d, not %s (%d)", uid, u.name, u.uid)
	}
	var cst unix.Stat_t
	unix.Lstat(copied, &cst)
	if cst.Nlink != 1 || cst.Mode&0o022 != 0 {
		t.Fatalf("the copy: nlink %d mode %o", cst.Nlink, cst.Mode)
	}
	if fileDigest(t, copied) != fileDigest(t, src) {
		t.Fatal("content differs")
	}
	if b, err := os.ReadFile(planted); err != nil || string(b) != "mallory's" {
		t.Fatalf("the planted file changed: %q %v", b, err)
	}
	if !strings.Contains(r.Stderr, "not resuming from") || !strings.Contains(r.Stderr, "belongs to uid 4242") {
		t.Error("zpc does not say why the partial was not used")
	}
	if !strings.Contains(d.Log(), "partial file not resumed") {
		t.Error("zpd does not log it")
	}
}

// zpc killed with SIGKILL mid-upload and run again at once: the new
// session takes the partial over from the old one, which zpd has not
// necessarily stopped yet: its data may still be queued for writing, and
// near the end the killed zpc may have sent everything and the COMMIT
// (the old receiver then renames the partial while the new one resumes
// from it: "rename …: no such file or directory"). Several times, at
// different points, most of them in the last window.
func TestZpcRerunRightAfterKill(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 96 << 20
	}
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "big")
	patternFile(t, src, size, 21)
	want := fileDigest(t, src)
	killed := 0
	for i := range 5 {
		dest := t.TempDir()
		target := filepath.Join(dest, "big.copy")
		args := []string{"--json", src, d.at(target)}
		cmd, _, _ := startZPC(t, d, args...)
		at := size - int64(1+4*i)<<20
		if i == 4 {
			at = size / 2
		}
		// The last MiBs go by in a few milliseconds: look every 200 µs.
		// Even so the copy may be committed between two looks; then this
		// run checks a rerun after a kill that came too late, and at
		// least three of the five must have killed a copy in flight.
		deadline := time.Now().Add(60 * time.Second)
		for partialSize(dest) < at && !exists(target) {
			if time.Now().After(deadline) {
				t.Fatalf("run %d: the partial did not reach %d octets in 60 s", i, at)
			}
			time.Sleep(200 * time.Microsecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
		if exists(target) && len(partialNames(dest)) == 0 {
			t.Logf("run %d: the copy was committed before the kill at %d MiB", i, at>>20)
		} else {
			killed++
		}
		r := d.zpc(t, args...)
		if r.Code != 0 {
			t.Fatalf("run %d, killed at %d MiB: rerun exit %d: %s", i, at>>20, r.Code, r.Stderr)
		}
		if fileDigest(t, target) != want {
			t.Fatalf("run %d: content differs", i)
		}
		// The old session's receiver may still be letting go: wait for
		// its partial to be gone rather than racing it.
		eventually(t, 15*time.Second, "no partial files left", func() bool { return len(partialNames(dest)) == 0 })
		t.Logf("run %d: killed at %d MiB, rerun: %+v", i, at>>20, stats(t, r))
	}
	if killed < 3 {
		t.Fatalf("only %d of 5 copies were killed in flight", killed)
	}
}

// exists reports whether path names anything (a symlink included).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
