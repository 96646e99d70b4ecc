package e2e

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/testutil/faultproxy"
)

// window is the credit a zpd receiver grants (broker.Config.xferWindow);
// the client grants the same for downloads.
const window = 16 << 20

// patternFile writes size octets in which every 8-octet word differs (a
// function of its offset and seed), so that misplaced data cannot go
// unnoticed; it is cheap to make.
func patternFile(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var word [8]byte
	for off := int64(0); off < size; off += 8 {
		binary.LittleEndian.PutUint64(word[:], (uint64(off)+seed)*0x9E3779B97F4A7C15)
		n := min(8, size-off)
		w.Write(word[:n])
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	os.Chtimes(path, mt, mt)
}

// viaProxy is d as reached through a fault proxy: same keys, another
// address.
func viaProxy(t *testing.T, d *zpd) (*zpd, *faultproxy.Proxy) {
	t.Helper()
	px, err := faultproxy.New(d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	v := *d
	v.Addr = px.Addr()
	return &v, px
}

// jsonCopyArgs are zpc's arguments for copying the local src to target on
// d (upload) or d's src to the local target (download), with --json.
func jsonCopyArgs(d *zpd, direction, src, target string) []string {
	if direction == "download" {
		return []string{"--json", d.at(src), target}
	}
	return []string{"--json", src, d.at(target)}
}

// throttle caps the proxy's throughput (about 80 MiB/s, 40 with -short,
// whose files are smaller) until the returned function lifts the cap, so
// that a fault aimed at the middle of a transfer cannot miss it on a
// loaded machine (the poller may sleep for a while; the copy must not
// finish meanwhile).
func throttle(px *faultproxy.Proxy) (lift func()) {
	d := 25 * time.Millisecond // MaxBuffered (2 MiB) per d
	if testing.Short() {
		d = 50 * time.Millisecond
	}
	px.SetDelay(d)
	return func() { px.SetDelay(0) }
}

// partialSize returns the size of the one partial file in dir (0 if none).
func partialSize(dir string) int64 {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".zpc-") && strings.HasSuffix(e.Name(), ".part") {
			if info, err := e.Info(); err == nil {
				return info.Size()
			}
		}
	}
	return 0
}

func partialNames(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".zpc-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// settle waits until the proxy has forwarded nothing for a while and
// returns the bytes it forwarded upstream.
func settle(px *faultproxy.Proxy) int64 {
	last, _ := px.Bytes()
	quiet := time.Now()
	for time.Since(quiet) < 300*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
		if up, _ := px.Bytes(); up != last {
			last, quiet = up, time.Now()
		}
	}
	return last
}

// Killing zpc mid-file and running it again resumes from the partial:
// what the first run moved and the rerun did not need again is at most
// one window (upload: zpd's receiver grants 16 MiB; download: zpc grants
// as much).
func TestZpcResumeAfterKill(t *testing.T) {
	size := int64(512 << 20)
	if testing.Short() {
		size = 64 << 20
	}
	d := startZPD(t)
	pd, px := viaProxy(t, d)
	src := filepath.Join(t.TempDir(), "big")
	patternFile(t, src, size, 1)
	want := fileDigest(t, src)

	for _, direction := range []string{"upload", "download"} {
		t.Run(direction, func(t *testing.T) {
			dest := t.TempDir()
			target := filepath.Join(dest, "big")
			args := jsonCopyArgs(pd, direction, src, target)
			// The content octets go up for an upload, down for a download.
			flow := func() int64 {
				up, down := px.Bytes()
				if direction == "download" {
					return down
				}
				return up
			}
			before := flow()
			lift := throttle(px)
			cmd, _, _ := startZPC(t, pd, args...)
			eventually(t, 60*time.Second, "half the file through the proxy", func() bool { return flow()-before >= size/2 })
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			settle(px)
			lift()
			first := flow() - before
			t.Logf("the first run moved %d octets (%.1f%%) before SIGKILL", first, 100*float64(first)/float64(size))
			if first >= size {
				t.Fatal("the transfer finished before zpc was killed")
			}
			// No half file under the final name; the partial is there.
			if _, err := os.Lstat(target); err == nil {
				t.Fatal("the final name exists after an interrupted copy")
			}
			have := partialSize(dest)
			if have == 0 {
				t.Fatalf("no partial file in %s: %v", dest, partialNames(dest))
			}

			r := pd.zpc(t, args...)
			if r.Code != 0 {
				t.Fatalf("rerun: exit %d: %s", r.Code, r.Stderr)
			}
			s := stats(t, r)
			t.Logf("rerun: %+v; partial had %d", s, have)
			if s.BytesResumed == 0 {
				t.Fatal("the rerun started over")
			}
			if s.BytesResumed+s.BytesSent != uint64(size) || s.Files != 1 {
				t.Fatalf("rerun: resumed %d + sent %d != %d", s.BytesResumed, s.BytesSent, size)
			}
			// The first run's octets that the rerun had to move again: at
			// most one window (plus protocol overhead).
			if lost := first - int64(s.BytesResumed); lost >= window*105/100 {
				t.Fatalf("%d octets moved by the first run were not kept (more than a window of %d)", lost, window)
			} else {
				t.Logf("%d octets of the first run were lost", lost)
			}
			if fileDigest(t, target) != want {
				t.Fatal("content differs after resume")
			}
			if p := partialNames(dest); len(p) != 0 {
				t.Fatalf("partial files left: %v", p)
			}
		})
	}
}

// A cut connection: zpc reconnects by itself and finishes, resuming.
func TestZpcRidesOutCut(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 64 << 20
	}
	d := startZPD(t)
	pd, px := viaProxy(t, d)
	dir := t.TempDir()
	src := filepath.Join(dir, "big")
	patternFile(t, src, size, 2)
	want := fileDigest(t, src)

	for _, direction := range []string{"upload", "download"} {
		t.Run(direction, func(t *testing.T) {
			dest := t.TempDir()
			target := filepath.Join(dest, "copy")
			args := jsonCopyArgs(pd, direction, src, target)
			upBefore, downBefore := px.Bytes()
			moved := func() int64 {
				up, down := px.Bytes()
				return up - upBefore + down - downBefore
			}
			start := time.Now()
			lift := throttle(px)
			cmd, stdout, stderr := startZPC(t, pd, args...)
			for i, frac := range []int64{3, 2} { // cut at 1/3 and at 1/2
				eventually(t, 60*time.Second, fmt.Sprintf("cut %d", i), func() bool { return moved() >= size/frac })
				px.Cut()
			}
			lift()
			code := waitExit(t, cmd, 90*time.Second)
			t.Logf("%s with two cuts: %v; stderr:\n%s", direction, time.Since(start).Round(time.Millisecond), stderr)
			if code != 0 {
				t.Fatalf("exit %d", code)
			}
			if px.Accepted() < 3 {
				t.Fatalf("%d connections: zpc did not reconnect", px.Accepted())
			}
			if !strings.Contains(stderr.String(), "reconnecting") {
				t.Errorf("no word of the reconnection on stderr")
			}
			s := stats(t, result{Stdout: stdout.String()})
			if s.Files != 1 || s.BytesResumed == 0 {
				t.Errorf("summary %+v: not resumed", s)
			}
			if got := fileDigest(t, target); got != want {
				t.Fatal("content differs")
			}
			if p := partialNames(dest); len(p) != 0 {
				t.Fatalf("partial files left: %v", p)
			}
		})
	}
}

// restartZPD starts a zpd like d (same address, state and keys) after d
// is gone.
func restartZPD(t *testing.T, d *zpd) *zpd {
	t.Helper()
	n := startZPDWith(t, "--authorized-keys", filepath.Join(d.Home, "authorized_for_zpd"), "--listen", d.Addr, "--state", d.State)
	n.State, n.Home, n.secure = d.State, d.Home, d.secure
	if n.Addr != d.Addr {
		t.Fatalf("restarted on %s, not %s", n.Addr, d.Addr)
	}
	return n
}

// zpd killed and restarted mid-copy (same address and state): zpc
// reconnects to the new one and finishes, resuming from the partial left
// behind. zpc reaches zpd through a proxy only to throttle the copy.
func TestZpcRidesOutZpdRestart(t *testing.T) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 64 << 20
	}
	d := startZPD(t, "--listen", fmt.Sprintf("127.0.0.1:%d", freePorts(t)))
	src := filepath.Join(t.TempDir(), "big")
	patternFile(t, src, size, 3)
	want := fileDigest(t, src)
	parent := t // the restarted zpd serves the next subtest too
	pd, px := viaProxy(t, d)

	for _, direction := range []string{"upload", "download"} {
		t.Run(direction, func(t *testing.T) {
			dest := t.TempDir()
			target := filepath.Join(dest, "big")
			args := jsonCopyArgs(pd, direction, src, target)
			start := time.Now()
			lift := throttle(px)
			cmd, stdout, stderr := startZPC(t, pd, args...)
			eventually(t, 60*time.Second, "a third of the file written", func() bool { return partialSize(dest) >= size/3 })
			d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
			lift()
			killedAt := partialSize(dest)
			time.Sleep(500 * time.Millisecond) // zpc finds the port closed meanwhile
			d = restartZPD(parent, d)
			code := waitExit(t, cmd, 90*time.Second)
			t.Logf("zpd killed at %d octets; done in %v; stderr:\n%s", killedAt, time.Since(start).Round(time.Millisecond), stderr)
			if code != 0 {
				// Tell a zpd that does not serve from a path that fails.
				direct := d.zpc(t, src, d.at(filepath.Join(dest, "probe")))
				t.Fatalf("exit %d; the proxy accepted %d connections; a direct copy now: exit %d %s", code, px.Accepted(), direct.Code, direct.Stderr)
			}
			s := stats(t, result{Stdout: stdout.String()})
			if s.Files != 1 || s.BytesResumed == 0 || s.BytesResumed+window < uint64(killedAt) {
				t.Errorf("summary %+v: not resumed from the %d octets there", s, killedAt)
			}
			if fileDigest(t, target) != want {
				t.Fatal("content differs")
			}
		})
	}
}

// When the connection stays down longer than --reconnect-for, zpc exits
// 255 saying that a rerun resumes; and the rerun does.
func TestZpcGivesUpThenResumes(t *testing.T) {
	size := int64(128 << 20)
	if testing.Short() {
		size = 32 << 20
	}
	d := startZPD(t)
	pd, px := viaProxy(t, d)
	src := filepath.Join(t.TempDir(), "big")
	patternFile(t, src, size, 4)
	dest := t.TempDir()
	target := filepath.Join(dest, "big")

	lift := throttle(px)
	cmd, _, stderr := startZPC(t, pd, "--reconnect-for", "2s", "--json", src, pd.at(target))
	eventually(t, 60*time.Second, "a third through the proxy", func() bool {
		up, _ := px.Bytes()
		return up >= size/3
	})
	px.Refuse(true)
	px.Cut()
	lift()
	start := time.Now()
	code := waitExit(t, cmd, 30*time.Second)
	t.Logf("gave up after %v: %s", time.Since(start).Round(time.Millisecond), stderr)
	if code != 255 || !strings.Contains(stderr.String(), "run the same command again to resume") {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Lstat(target); err == nil {
		t.Fatal("a half file under the final name")
	}
	px.Refuse(false)
	r := pd.zpc(t, "--json", src, pd.at(target))
	s := stats(t, r)
	if r.Code != 0 || s.BytesResumed == 0 {
		t.Fatalf("rerun: exit %d %+v %s", r.Code, s, r.Stderr)
	}
	if fileDigest(t, src) != fileDigest(t, target) {
		t.Fatal("content differs")
	}
}

// --reconnect-for bounds each outage, not the whole copy: a copy that made
// progress after one outage gets the whole time again for the next.
func TestZpcReconnectBudgetPerOutage(t *testing.T) {
	size := int64(128 << 20)
	d := startZPD(t)
	pd, px := viaProxy(t, d)
	src := filepath.Join(t.TempDir(), "big")
	patternFile(t, src, size, 5)
	target := filepath.Join(t.TempDir(), "big")

	px.SetDelay(100 * time.Millisecond) // about 20 MiB/s: the copy outlasts both outages
	cmd, _, stderr := startZPC(t, pd, "--reconnect-for", "2s", "--json", src, pd.at(target))
	outage := func() {
		px.Refuse(true)
		px.Cut()
		time.Sleep(time.Second)
		px.Refuse(false)
	}
	eventually(t, 60*time.Second, "a fifth through the proxy", func() bool {
		up, _ := px.Bytes()
		return up >= size/5
	})
	outage()
	after := time.Now()
	up0, _ := px.Bytes()
	eventually(t, 60*time.Second, "progress after the first outage", func() bool {
		up, _ := px.Bytes()
		return up >= up0+size/8 && time.Since(after) > 2500*time.Millisecond
	})
	outage() // more than 2s after the first: the copy must still resume
	px.SetDelay(0)
	code := waitExit(t, cmd, 90*time.Second)
	if code != 0 {
		t.Fatalf("exit %d after two outages 3s apart with --reconnect-for 2s:\n%s", code, stderr)
	}
	if got, want := fileDigest(t, target), fileDigest(t, src); got != want {
		t.Fatal("content differs")
	}
	if n := strings.Count(stderr.String(), "reconnected to"); n != 2 {
		t.Errorf("%d reconnections reported, want 2:\n%s", n, stderr)
	}
}
