package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Broadcast tests give each agent a disk of its own: the agent runs in a
// mount namespace (unshare -m) where its disk is bound over the same
// path, so that every agent writes the same DEST on its own disk, as
// hosts of a fleet do.

// startAgentOnDisk starts agent name in a mount namespace where disk is
// mounted at f.mnt(); with disk "", a tmpfs of its own (seen only by the
// agent: check it through zp).
func (f *testFleet) startAgentOnDisk(name, disk string, args ...string) *zpd {
	return f.startAgentOnDiskEnv(name, disk, nil, args...)
}

func (f *testFleet) startAgentOnDiskEnv(name, disk string, env []string, args ...string) *zpd {
	f.t.Helper()
	st := f.agentState[name]
	if st == "" {
		st = filepath.Join(f.dir, "state-"+name)
		f.agentState[name] = st
	}
	all := append([]string{"--listen", "127.0.0.1:0", "--state", st, "--join", f.hub.Addr, "--name", name,
		"--authorized-keys", f.agentAK}, args...)
	d := &zpd{t: f.t, State: st, Home: f.t.TempDir(), log: &syncBuffer{}, done: make(chan struct{})}
	mount := `mount --bind "$1" "$2"`
	if disk == "" {
		mount = `mount -t tmpfs -o size=1g zp-agent "$2"`
	}
	d.cmd = exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c",
		mount + ` && shift 2 && exec "$@"`, "sh", disk, f.mnt(), bin("zpd")}, all...)...)
	d.cmd.Env = append(os.Environ(), env...)
	f.t.Cleanup(func() {
		if strings.Contains(d.Log(), "WARNING: DATA RACE") || strings.Contains(d.Log(), "panic:") {
			f.t.Errorf("agent %s:\n%s", name, d.Log())
		}
	})
	startAndWait(f.t, d)
	f.agents[name] = d
	return d
}

// mnt is where every agent sees its own disk.
func (f *testFleet) mnt() string {
	p := filepath.Join(f.dir, "mnt")
	os.MkdirAll(p, 0o755)
	return p
}

func needUnshare(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: agents run in mount namespaces")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
}

// zpc runs zpc as the fleet client.
func (f *testFleet) zpc(args ...string) result {
	f.t.Helper()
	return run(f.t, nil, []string{"ZP_CONFIG=" + f.home}, "zpc", append([]string{"--accept-new"}, args...)...)
}

type bcastHost struct {
	Host     string   `json:"host"`
	State    string   `json:"state"`
	Digest   string   `json:"digest"`
	Received uint64   `json:"bytes_received"`
	Repaired uint64   `json:"bytes_repaired"`
	Written  uint64   `json:"bytes_written"`
	Deduped  uint64   `json:"bytes_deduplicated"`
	Failures []string `json:"failures"`
	Error    string   `json:"error"`
	Retries  int      `json:"reconnects"`
	Seconds  float64  `json:"seconds"`

	Parent     string `json:"parent"`
	FromRelay  uint64 `json:"bytes_from_relay"`
	Relayed    uint64 `json:"bytes_relayed"`
	Reparented bool   `json:"reparented"`
}

type bcastReport struct {
	Digest  string      `json:"digest"`
	Entries int         `json:"entries"`
	Bytes   uint64      `json:"bytes"`
	Hosts   []bcastHost `json:"hosts"`
}

func parseBcast(t *testing.T, r result) (bcastReport, map[string]bcastHost) {
	t.Helper()
	var rep bcastReport
	if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
		t.Fatalf("zpc --fleet --json: %v\nstdout %s\nstderr %s", err, r.Stdout, r.Stderr)
	}
	m := map[string]bcastHost{}
	for _, h := range rep.Hosts {
		m[h.Host] = h
	}
	return rep, m
}

// writeTree makes a source tree: one big file, n small files in
// directories, an empty file and a symlink.
func writeTree(t *testing.T, dir string, big, n int) {
	t.Helper()
	rnd := func(k int) []byte {
		b := make([]byte, k)
		rand.Read(b)
		return b
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o755))
	must(os.WriteFile(filepath.Join(dir, "big.bin"), rnd(big), 0o644))
	for i := range n {
		sub := filepath.Join(dir, "small", fmt.Sprintf("d%02d", i%20))
		must(os.MkdirAll(sub, 0o755))
		must(os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d", i)), rnd(1+i%4096), 0o644))
	}
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600))
	must(os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.Symlink("big.bin", filepath.Join(dir, "link")))
}

// TestBroadcast: zpc --fleet sends a tree once to the hub, and every agent
// writes it on its own disk and proves the tree digest; an agent that
// already holds a file does not get it again; after one small file
// changes, broadcasting again moves about that file only; a source that
// cannot be read is named and the exit status says so.
func TestBroadcast(t *testing.T) {
	needUnshare(t)
	names := []string{"a1", "a2", "a3"}
	f := newTestFleet(t, names, "--metrics", "127.0.0.1:0")
	disks := map[string]string{}
	for _, n := range names {
		disks[n] = filepath.Join(f.dir, "disk-"+n)
		os.MkdirAll(disks[n], 0o755)
	}
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 8<<20, 300)
	// a2 already holds big.bin where the tree goes.
	os.MkdirAll(filepath.Join(disks["a2"], "dest"), 0o755)
	b, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	os.WriteFile(filepath.Join(disks["a2"], "dest", "big.bin"), b, 0o644)
	for _, n := range names {
		f.startAgentOnDisk(n, disks[n], "--metrics", "127.0.0.1:0")
	}
	f.waitStates(30*time.Second, "up", names...)
	dest := ":" + filepath.Join(f.mnt(), "dest")
	liveIn := func(n string) float64 {
		m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(f.agents[n].Log())
		if m == nil {
			t.Fatalf("no metrics address in %s's log", n)
		}
		return metric(t, m[1], `zp_bytes_total{direction="in",kind="live"}`)
	}

	r := f.zpc("--fleet", f.hub.Addr, "-r", "--json", src+"/", dest)
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != 3 || len(rep.Digest) != 64 {
		t.Fatalf("broadcast: exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	for _, n := range names {
		h := hosts[n]
		if h.State != "ok" || h.Digest != rep.Digest || len(h.Failures) != 0 {
			t.Errorf("%s: %+v", n, h)
		}
		sameTree(t, n, snapshot(t, src), snapshot(t, filepath.Join(disks[n], "dest")))
	}
	if h := hosts["a2"]; h.Deduped < 8<<20 || h.Written > rep.Bytes-8<<20 {
		t.Errorf("a2 held big.bin: %d octets deduplicated, %d written", h.Deduped, h.Written)
	}
	// Needing a small part of the content, a2 fetched that part rather
	// than take all of it live; a1 took the content live.
	a1, a2 := liveIn("a1"), liveIn("a2")
	t.Logf("octets that arrived live: a1 %.0f, a2 %.0f; a2 fetched %d", a1, a2, hosts["a2"].Repaired)
	if a2 > 1<<20 || a1 < float64(rep.Bytes) {
		t.Errorf("octets that arrived live: a1 %.0f, a2 %.0f (it needed %d of %d)", a1, a2, rep.Bytes-8<<20, rep.Bytes)
	}
	if h := hosts["a1"]; h.Written != rep.Bytes || h.Deduped != 0 {
		t.Errorf("a1 had nothing: %d of %d octets written, %d deduplicated", h.Written, rep.Bytes, h.Deduped)
	}
	t.Logf("3 agents, %d entries, %d octets: %v; %s", rep.Entries, rep.Bytes, r.Elapsed.Round(time.Millisecond), strings.TrimSpace(r.Stderr))
	// Sent once: the hub stored (and published) about the tree, not 3 trees.
	published := f.hubMetric(t, "zp_fleet_published_bytes_total")
	if published < float64(rep.Bytes) || published > 1.1*float64(rep.Bytes)+(1<<20) {
		t.Errorf("the hub stored %.0f octets for a tree of %d", published, rep.Bytes)
	}

	// One small file changes: about that file moves, to every agent.
	changed := filepath.Join(src, "small", "d07", "f0007")
	os.WriteFile(changed, []byte("changed\n"), 0o644)
	r = f.zpc("--fleet", f.hub.Addr, "-r", "--json", src+"/", dest)
	rep2, hosts := parseBcast(t, r)
	if r.Code != 0 || rep2.Digest == rep.Digest {
		t.Fatalf("rebroadcast: exit %d, digest %s\n%s", r.Code, rep2.Digest, r.Stderr)
	}
	for _, n := range names {
		h := hosts[n]
		if h.State != "ok" || h.Digest != rep2.Digest || h.Written != 8 || h.Received > 1<<20 {
			t.Errorf("rebroadcast on %s: %+v", n, h)
		}
		sameTree(t, n, snapshot(t, src), snapshot(t, filepath.Join(disks[n], "dest")))
	}
	if p := f.hubMetric(t, "zp_fleet_published_bytes_total") - published; p > 1<<20 {
		t.Errorf("the rebroadcast published %.0f octets", p)
	}

	// One file: into DEST when it is a directory, else as DEST itself.
	for _, c := range []struct{ dest, want string }{
		{"dest/", "dest/run.sh"}, {"dest/small", "dest/small/run.sh"}, {"single.sh", "single.sh"},
	} {
		r = f.zpc("--fleet", f.hub.Addr, filepath.Join(src, "run.sh"), ":"+filepath.Join(f.mnt(), c.dest))
		if r.Code != 0 {
			t.Fatalf("one file to %s: exit %d\n%s", c.dest, r.Code, r.Stderr)
		}
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(disks[n], c.want)); err != nil || !strings.HasPrefix(string(b), "#!/bin/sh") {
				t.Errorf("%s: one file to %s: %s is %q, %v", n, c.dest, c.want, b, err)
			}
		}
	}

	// A source that cannot be read is named, the rest lands, exit 1.
	r = f.zpc("--fleet", f.hub.Addr, "-r", src+"/", filepath.Join(f.dir, "missing"), dest)
	if r.Code != 1 || !strings.Contains(r.Stderr, "missing") || !strings.Contains(r.Stderr, "3 of 3 hosts proved") {
		t.Errorf("missing source: exit %d\n%s", r.Code, r.Stderr)
	}
	// A user the agents do not authorise the key for: refused at once.
	r = f.zpc("--fleet", f.hub.Addr, "-r", src+"/", "daemon@"+dest)
	if r.Code != 255 || !strings.Contains(r.Stderr, "not authorised") || r.Elapsed > 20*time.Second {
		t.Errorf("an unauthorised user: exit %d after %v\n%s", r.Code, r.Elapsed, r.Stderr)
	}
	// Usage: the destination is [user@]:DEST.
	if r = f.zpc("--fleet", f.hub.Addr, "-r", src, "host:dest"); r.Code != 255 || !strings.Contains(r.Stderr, "[user@]:DEST") {
		t.Errorf("host:DEST with --fleet: exit %d %s", r.Code, r.Stderr)
	}
}

// TestBroadcastSkipsHeldFiles: an agent that holds the big file (which
// the tree holds twice: it copies the second from its own) and takes
// nothing live (it drops every live publication, so all it gets it
// fetches from the hub) fetches about the small files it lacks, not the
// whole content publication, which also holds the big file for the other
// agent: it skips the records of files it holds (protocol 4, full
// records).
func TestBroadcastSkipsHeldFiles(t *testing.T) {
	needUnshare(t)
	names := []string{"s1", "s2"}
	f := newTestFleet(t, names)
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 8<<20, 300)
	// The tree holds big.bin's content twice: s2 copies it from its own.
	b, _ := os.ReadFile(filepath.Join(src, "big.bin"))
	os.WriteFile(filepath.Join(src, "big-copy.bin"), b, 0o644)
	disks := f.agentDisks(names)
	os.WriteFile(filepath.Join(disks["s2"], "dest", "big.bin"), b, 0o644)
	f.startAgentOnDisk("s1", disks["s1"])
	f.startAgentOnDiskEnv("s2", disks["s2"], []string{"ZP_FAULT_DROP_LIVE=1"})
	f.waitStates(30*time.Second, "up", names...)

	r := f.zpc("--fleet", f.hub.Addr, "-r", "--json", src+"/", ":"+filepath.Join(f.mnt(), "dest"))
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != 2 {
		t.Fatalf("broadcast: exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	for _, n := range names {
		if h := hosts[n]; h.State != "ok" || h.Digest != rep.Digest {
			t.Errorf("%s: %+v", n, h)
		}
		sameTree(t, n, snapshot(t, src), snapshot(t, filepath.Join(disks[n], "dest")))
	}
	small := rep.Bytes - 16<<20 // what s2 lacks
	h := hosts["s2"]
	t.Logf("content %d octets; s2 lacked %d, wrote %d, took %d live and fetched %d", rep.Bytes, small, h.Written, h.Received-h.Repaired, h.Repaired)
	if h.Written != small+8<<20 || h.Deduped != 16<<20 {
		t.Errorf("s2 held big.bin (and so big-copy.bin): wrote %d, deduplicated %d", h.Written, h.Deduped)
	}
	// Whole records of 256 KiB: at most one record more on each side of
	// what it lacks, and the records' lengths and tags.
	if h.Repaired > small+small/50+2*256<<10 {
		t.Errorf("s2 fetched %d octets for %d it lacked", h.Repaired, small)
	}
}

// TestBroadcastResumeSkips: an agent killed mid-way and started again
// fetches, on resume, what it still lacks: not the content publication
// from its start again. With 24 files, it is killed once half are in
// place; with one file, once its partial holds 40 MiB, which the agent
// keeps (the file's digest is checked at the end, as always). It takes
// nothing live (ZP_FAULT_DROP_LIVE=1): all it gets it fetches, and the
// hub counts it. It writes 1 MiB per 20 ms (ZP_FAULT_SLOW_APPLY), so that
// it is killed mid-way.
func TestBroadcastResumeSkips(t *testing.T) {
	needUnshare(t)
	for _, c := range []struct {
		name        string
		files, size int
	}{{"files", 24, 4 << 20}, {"one file", 1, 96 << 20}} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFleet(t, []string{"k0"}, "--metrics", "127.0.0.1:0")
			fetched := func() float64 { return f.hubMetric(t, "zp_fleet_publication_fetched_bytes_total") }
			disk := filepath.Join(f.dir, "disk-k0") // kept across the restart
			os.MkdirAll(disk, 0o755)
			env := []string{"ZP_FAULT_DROP_LIVE=1", "ZP_FAULT_SLOW_APPLY=20ms"}
			f.startAgentOnDiskEnv("k0", disk, env)
			f.waitStates(30*time.Second, "up", "k0")
			src := filepath.Join(f.dir, "src")
			os.MkdirAll(src, 0o755)
			for i := range c.files {
				b := make([]byte, c.size)
				rand.Read(b)
				os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", i)), b, 0o644)
			}
			want := localTreeSum(t, src)
			dest := filepath.Join(f.mnt(), "dest")
			// What k0 holds: files in place, and the partial's octets.
			held := func() (files int, partial int64) {
				l, _ := filepath.Glob(filepath.Join(disk, "dest", "f[0-9][0-9]"))
				p, _ := filepath.Glob(filepath.Join(disk, "dest", ".zpc-*"))
				for _, n := range p {
					if st, err := os.Stat(n); err == nil {
						partial = max(partial, st.Size())
					}
				}
				return len(l), partial
			}
			finished := make(chan result, 1)
			go func() { finished <- f.zpc("--fleet", f.hub.Addr, "-r", "--json", src+"/", ":"+dest) }()
			eventually(t, 60*time.Second, "k0 half-way", func() bool {
				n, p := held()
				return c.files > 1 && n >= c.files/2 || c.files == 1 && p >= 40<<20
			})
			f.agents["k0"].cmd.Process.Kill()
			<-f.agents["k0"].done
			before := fetched()
			done, partial := held()
			time.Sleep(time.Second)
			f.startAgentOnDiskEnv("k0", disk, env)
			r := awaitResult(t, finished, 2*time.Minute, "zpc --fleet")
			rep, hosts := parseBcast(t, r)
			h := hosts["k0"]
			if r.Code != 0 || h.State != "ok" || h.Digest != rep.Digest || h.Retries == 0 {
				t.Fatalf("exit %d: %+v\n%s", r.Code, h, r.Stderr)
			}
			f.sameTreeSums(dest, want, 1)
			after := fetched() - before
			lacked := int64(c.files-done) * int64(c.size)
			if c.files == 1 {
				lacked -= partial
			}
			t.Logf("%d octets; killed with %d files of %d in place and a partial of %d, having fetched %.0f; then fetched %.0f for the %d octets it lacked",
				rep.Bytes, done, c.files, partial, before, after, lacked)
			// The records that hold what it lacked (one more at the
			// start, where a record holds the end of what it has), the
			// manifest, and for files, the partial it was writing.
			slack := int64(1 << 20)
			if c.files > 1 {
				slack += int64(c.size)
			}
			if after > float64(lacked+slack) {
				t.Errorf("k0 fetched %.0f octets on resume for the %d it lacked", after, lacked)
			}
		})
	}
}

// TestBroadcastSlowRelay: a relay whose own disk is slow (it writes 1 MiB
// per 100 ms: ZP_FAULT_SLOW_APPLY) still republishes the content as it
// comes: its child, and that child's child, finish long before it, and
// take the content from their relays, not from the hub.
func TestBroadcastSlowRelay(t *testing.T) {
	f, names := tmpfsFleet(t, "s%d", 3, map[string][]string{"s0": {"ZP_FAULT_SLOW_APPLY=100ms"}})
	want, dest, rep, hosts := f.chainBroadcast(3)
	parents := map[string]string{"s0": "", "s1": "s0", "s2": "s1"}
	var per []string
	for _, n := range names {
		h := hosts[n]
		if h.State != "ok" || h.Digest != rep.Digest || h.Parent != parents[n] {
			t.Errorf("%s: %+v", n, h)
		}
		per = append(per, fmt.Sprintf("%s<-%q %.2fs received %d (from relay %d, repaired %d) relayed %d reparented %v",
			n, h.Parent, h.Seconds, h.Received, h.FromRelay, h.Repaired, h.Relayed, h.Reparented))
	}
	t.Logf("per host:\n%s", strings.Join(per, "\n"))
	slow := hosts["s0"].Seconds
	if slow < 3 {
		t.Fatalf("s0 wrote 32 MiB at 1 MiB per 100 ms in %.2f s: the fault did not apply", slow)
	}
	for _, n := range []string{"s1", "s2"} {
		if h := hosts[n]; h.Seconds > slow/2 || h.FromRelay < rep.Bytes/2 || h.Reparented {
			t.Errorf("%s waited for its slow relay: %.2f s against s0's %.2f s; %d octets from its relay, reparented %v", n, h.Seconds, slow, h.FromRelay, h.Reparented)
		}
	}
	f.sameTreeSums(dest, want, 3)
}

// TestBroadcastRelayStoreFull: a relay whose state directory fills up
// cannot keep what it relays (its store is a 4 MiB tmpfs here): it reads
// its own copy from upstream again, its children repair from the hub,
// and all three prove the tree.
func TestBroadcastRelayStoreFull(t *testing.T) {
	needUnshare(t)
	names := []string{"s0", "s1", "s2"}
	f := newTestFleet(t, names)
	// s0's state directory, with its relay store on a small tmpfs: the
	// agent's mount namespace copies the mount when it starts.
	st := filepath.Join(f.dir, "state-s0")
	f.agentState["s0"] = st
	store := filepath.Join(st, "relay")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "zp-relay-full", store).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", store).Run() })
	for _, n := range names {
		f.startAgentOnDisk(n, "")
	}
	f.waitStates(30*time.Second, "up", names...)
	want, dest, rep, hosts := f.chainBroadcast(3)
	for _, n := range names {
		if h := hosts[n]; h.State != "ok" || h.Digest != rep.Digest {
			t.Errorf("%s: %+v", n, h)
		}
	}
	if hosts["s1"].Parent != "s0" {
		t.Fatalf("s1's parent is %q, not s0", hosts["s1"].Parent)
	}
	if !strings.Contains(f.agents["s0"].Log(), "relay: reading the content from upstream") {
		t.Errorf("s0's store filled up, yet it did not read its copy from upstream:\n%s", f.agents["s0"].Log())
	}
	f.sameTreeSums(dest, want, 3)
}

// treeSum is a shell pipeline that prints one digest of every file's
// name and content beneath the current directory.
const treeSum = `find . -type f | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`

// TestBroadcastFaults: 20 agents, each writing to a tmpfs of its own, take
// a 96 MiB file and 500 small ones while one is stopped for 5 s, one
// drops 10% of the live publications (ZP_FAULT_DROP_LIVE), and one is
// killed mid-way and started again: all 20 prove the tree digest and hold
// the tree (checked with sha256sum on each agent), the dropping agent
// repaired what it dropped, the killed one reconnected, and the hub's
// memory stays bounded.
func TestBroadcastFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("20 agents")
	}
	f, names := tmpfsFleet(t, "b%02d", 20, map[string][]string{"b07": {"ZP_FAULT_DROP_LIVE=0.1"}}, "--metrics", "127.0.0.1:0")
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 96<<20, 500)
	want := localTreeSum(t, src)
	dest := filepath.Join(f.mnt(), "dest")

	finished := make(chan result, 1)
	// A relay tree of fanout 2, placed by name: b03 (stopped) relays to
	// b08 and b09, b05 (killed) to b12 and b13; b07 (dropping) hangs
	// from b02.
	go func() { finished <- f.zpc("--fleet", f.hub.Addr, "--fanout", "2", "-r", "--json", src+"/", ":"+dest) }()
	// Mid-way: once the stopped and killed agents have written some of
	// the big file (wchar counts their writes to the tmpfs).
	wrote := func(n string) int64 { return procWrote(f.agents[n].PID()) }
	eventually(t, 60*time.Second, "b03 and b05 writing", func() bool { return wrote("b03") > 16<<20 && wrote("b05") > 16<<20 })
	stopped := f.agents["b03"].cmd.Process
	stopped.Signal(syscall.SIGSTOP)
	f.agents["b05"].cmd.Process.Kill()
	t.Logf("b03 stopped, b05 killed after %d and %d octets written", wrote("b03"), wrote("b05"))
	time.Sleep(time.Second)
	f.startAgentOnDiskEnv("b05", "", nil)
	time.Sleep(4 * time.Second)
	stopped.Signal(syscall.SIGCONT)
	r := awaitResult(t, finished, 3*time.Minute, "zpc --fleet")
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != 20 {
		t.Fatalf("exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	var per []string
	for _, n := range names {
		h := hosts[n]
		if h.State != "ok" || h.Digest != rep.Digest {
			t.Errorf("%s: %+v", n, h)
		}
		per = append(per, fmt.Sprintf("%s<-%q %.1fs %dMiB repaired %dMiB from relay%s", n, h.Parent, h.Seconds, h.Repaired>>20, h.FromRelay>>20,
			map[bool]string{true: " reparented"}[h.Reparented]))
	}
	t.Logf("per host: %s", strings.Join(per, ", "))
	t.Logf("20 agents, %d octets: %v; b07 repaired %d octets, b03 %d, b05 reconnected %d times and repaired %d",
		rep.Bytes, r.Elapsed.Round(time.Millisecond), hosts["b07"].Repaired, hosts["b03"].Repaired, hosts["b05"].Retries, hosts["b05"].Repaired)
	if hosts["b07"].Repaired == 0 {
		t.Errorf("b07 dropped 10%% of the live publications but repaired nothing")
	}
	if hosts["b05"].Retries == 0 {
		t.Errorf("b05 was killed but zpc did not reconnect to it")
	}
	// The tree: no node fed more than 2 (the hub included).
	fed := map[string]int{}
	for _, n := range names {
		fed[hosts[n].Parent]++
	}
	for p, k := range fed {
		if k > 2 && p != "" || p == "" && k > 2+4 { // the hub also feeds those whose relay was lost
			t.Errorf("%q fed %d agents", p, k)
		}
	}
	if hosts["b19"].Parent == "" || hosts["b19"].FromRelay == 0 {
		t.Errorf("b19 took nothing from a relay: %+v", hosts["b19"])
	}
	// Every agent holds the tree: checked on each, apart from the proof.
	f.sameTreeSums(dest, want, 20)
	kb, err := rssKB(f.hub.PID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hub peak RSS %d MiB", kb>>10)
	if kb > 200<<10 && os.Getenv("ZP_E2E_RACE") == "" {
		t.Errorf("hub peak RSS %d KiB, want < 200 MiB", kb)
	}
}

// TestBroadcastRetry: a broadcast with an agent down names it and exits
// 255 with the broadcast's id; once the agent is back, --retry-failed ID
// sends to it alone; --async prints an id at once and --status ID shows
// the hosts as they prove the digest.
func TestBroadcastRetry(t *testing.T) {
	needUnshare(t)
	names := []string{"r1", "r2", "r3"}
	f := newTestFleet(t, names)
	disks := map[string]string{}
	for _, n := range names {
		disks[n] = filepath.Join(f.dir, "disk-"+n)
		os.MkdirAll(disks[n], 0o755)
		f.startAgentOnDisk(n, disks[n])
	}
	f.waitStates(30*time.Second, "up", names...)
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 1<<20, 50)
	dest := ":" + filepath.Join(f.mnt(), "dest")
	f.agents["r2"].Stop()
	f.waitStates(30*time.Second, "lost", "r2")

	r := f.zpc("--fleet", f.hub.Addr, "-r", "--reconnect-for", "2s", src+"/", dest)
	m := regexp.MustCompile(`broadcast (B\w+): 2 of 3 hosts proved`).FindStringSubmatch(r.Stderr)
	if r.Code != 255 || m == nil || !strings.Contains(r.Stderr, "--retry-failed "+m[1]) {
		t.Fatalf("with r2 down: exit %d\n%s", r.Code, r.Stderr)
	}
	id := m[1]
	if r = f.zpc("--fleet", f.hub.Addr, "--status", id); r.Code != 1 || !strings.Contains(r.Stdout, "r2") {
		t.Errorf("--status with r2 failed: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}

	f.startAgentOnDisk("r2", disks["r2"])
	f.waitStates(30*time.Second, "up", "r2")
	r = f.zpc("--fleet", f.hub.Addr, "--json", "--retry-failed", id)
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != 1 || hosts["r2"].State != "ok" || hosts["r2"].Digest != rep.Digest {
		t.Fatalf("--retry-failed: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	for _, n := range names {
		sameTree(t, n, snapshot(t, src), snapshot(t, filepath.Join(disks[n], "dest")))
	}
	if r = f.zpc("--fleet", f.hub.Addr, "--status", id); r.Code != 0 || strings.Count(r.Stdout, " ok ") != 3 {
		t.Errorf("--status after the retry: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r = f.zpc("--fleet", f.hub.Addr, "--retry-failed", id); r.Code != 0 || !strings.Contains(r.Stderr, "nothing to retry") {
		t.Errorf("second --retry-failed: exit %d %s", r.Code, r.Stderr)
	}
	if r = f.zpc("--fleet", f.hub.Addr, "--status", "../../etc/passwd"); r.Code != 255 {
		t.Errorf("--status with a path: exit %d %s", r.Code, r.Stderr)
	}

	// --async: the id at once, the outcome in --status.
	os.WriteFile(filepath.Join(src, "new"), []byte("new\n"), 0o644)
	r = f.zpc("--fleet", f.hub.Addr, "-r", "--async", src+"/", dest)
	id = strings.TrimSpace(r.Stdout)
	if r.Code != 0 || !strings.HasPrefix(id, "B") {
		t.Fatalf("--async: exit %d %q %s", r.Code, r.Stdout, r.Stderr)
	}
	eventually(t, 60*time.Second, "the async broadcast done", func() bool {
		return f.zpc("--fleet", f.hub.Addr, "--status", id).Code == 0
	})
	for _, n := range names {
		if b, err := os.ReadFile(filepath.Join(disks[n], "dest", "new")); err != nil || string(b) != "new\n" {
			t.Errorf("%s: new is %q, %v", n, b, err)
		}
	}
}

// chainBroadcast broadcasts a tree of a 32 MiB file and 20 small ones to
// the n agents with fanout 1 (placed by name: the hub feeds the first,
// each feeds the next) and checks that zpc succeeded for all. It returns
// the tree's treeSum, where it went, and zpc's report.
func (f *testFleet) chainBroadcast(n int) (want, dest string, rep bcastReport, hosts map[string]bcastHost) {
	f.t.Helper()
	src := filepath.Join(f.dir, "src")
	writeTree(f.t, src, 32<<20, 20)
	want = localTreeSum(f.t, src)
	dest = filepath.Join(f.mnt(), "dest")
	r := f.zpc("--fleet", f.hub.Addr, "--fanout", "1", "-r", "--json", src+"/", ":"+dest)
	rep, hosts = parseBcast(f.t, r)
	if r.Code != 0 || len(hosts) != n {
		f.t.Fatalf("exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	return want, dest, rep, hosts
}

// awaitResult is what a command started in the background (finished)
// returned; the test fails if it takes longer than d.
func awaitResult(t *testing.T, finished <-chan result, d time.Duration, what string) result {
	t.Helper()
	select {
	case r := <-finished:
		return r
	case <-time.After(d):
		t.Fatalf("%s did not finish in %v", what, d)
		return result{}
	}
}

// tmpfsFleet starts a hub (hubArgs) and n agents named by format (one %d),
// each on a tmpfs of its own with its env, and waits until all are up.
func tmpfsFleet(t *testing.T, format string, n int, env map[string][]string, hubArgs ...string) (*testFleet, []string) {
	t.Helper()
	needUnshare(t)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf(format, i)
	}
	f := newTestFleet(t, names, hubArgs...)
	for _, name := range names {
		f.startAgentOnDiskEnv(name, "", env[name])
	}
	f.waitStates(60*time.Second, "up", names...)
	return f, names
}

// localTreeSum is treeSum of a local directory.
func localTreeSum(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", "cd "+dir+" && "+treeSum).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// sameTreeSums checks, on each of the n agents (zp --fleet), that the tree
// under dest has the treeSum want.
func (f *testFleet) sameTreeSums(dest, want string, n int) {
	f.t.Helper()
	r := f.zp("--fleet", f.hub.Addr, "--json", "sh", "-c", "cd "+dest+" && "+treeSum)
	var sums []struct{ Host, Stdout string }
	if err := json.Unmarshal([]byte(r.Stdout), &sums); err != nil || len(sums) != n {
		f.t.Fatalf("zp --fleet sha256sum: %v\n%s", err, r.Stderr)
	}
	for _, s := range sums {
		if strings.TrimSpace(s.Stdout) != want {
			f.t.Errorf("%s holds %q, want %q", s.Host, s.Stdout, want)
		}
	}
}

// procWrote is what a process wrote so far (wchar: its writes to the
// tmpfs it holds the tree on).
func procWrote(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	var v int64
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "wchar: ") {
			fmt.Sscan(strings.TrimPrefix(l, "wchar: "), &v)
		}
	}
	return v
}

// TestBroadcastRelay: a relay tree of fanout 2 over 7 agents. The hub
// feeds two; the others take the content from their parent's XPUB. A
// relay killed mid-way leaves its children to go on from the hub, and is
// started again by zpc: all 7 prove the digest and hold the tree, and the
// hub sent the subtree it still fed about one copy, not one per agent.
func TestBroadcastRelay(t *testing.T) {
	// t3 drops a fifth of what its relay t0 sends live: it asks t0 for
	// it, not the hub.
	f, names := tmpfsFleet(t, "t%d", 7, map[string][]string{"t3": {"ZP_FAULT_DROP_LIVE=0.2"}})
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 48<<20, 200)
	want := localTreeSum(t, src)
	dest := filepath.Join(f.mnt(), "dest")

	finished := make(chan result, 1)
	go func() {
		finished <- f.zpc("--fleet", f.hub.Addr, "--fanout", "2", "-r", "--json", src+"/", ":"+dest)
	}()
	// Placed by name: t0 and t1 under the hub, t2 t3 under t0, t4 t5
	// under t1, t6 under t2. t1 dies once its child t4 is under way.
	eventually(t, 60*time.Second, "t4 writing", func() bool { return procWrote(f.agents["t4"].PID()) > 8<<20 })
	f.agents["t1"].cmd.Process.Kill()
	t.Logf("t1 killed after t4 wrote %d octets", procWrote(f.agents["t4"].PID()))
	time.Sleep(time.Second)
	f.startAgentOnDisk("t1", "")
	r := awaitResult(t, finished, 3*time.Minute, "zpc --fleet --fanout 2")
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != 7 {
		t.Fatalf("exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	parents := map[string]string{"t0": "", "t1": "", "t2": "t0", "t3": "t0", "t4": "t1", "t5": "t1", "t6": "t2"}
	var per []string
	for _, n := range names {
		h := hosts[n]
		if h.State != "ok" || h.Digest != rep.Digest {
			t.Errorf("%s: %+v", n, h)
		}
		if h.Parent != parents[n] && !(n == "t4" || n == "t5") {
			t.Errorf("%s: parent %q, want %q", n, h.Parent, parents[n])
		}
		per = append(per, fmt.Sprintf("%s<-%q received %d (from relay %d, repaired %d) relayed %d reparented %v",
			n, h.Parent, h.Received, h.FromRelay, h.Repaired, h.Relayed, h.Reparented))
	}
	t.Logf("%v, %s\nper host:\n%s", r.Elapsed.Round(time.Millisecond), strings.TrimSpace(r.Stderr), strings.Join(per, "\n"))
	// The subtree that kept its relays: t0 fed by the hub, t2 t3 t6 by
	// relays. What they took from the hub is about one copy.
	var fromHub uint64
	for _, n := range []string{"t0", "t2", "t3", "t6"} {
		h := hosts[n]
		fromHub += h.Received - min(h.Received, h.FromRelay)
	}
	if fromHub > rep.Bytes+rep.Bytes/2 {
		t.Errorf("t0 t2 t3 t6 took %d octets from the hub for a tree of %d: the relays did not relay", fromHub, rep.Bytes)
	}
	for _, n := range []string{"t2", "t3", "t6"} {
		if hosts[n].FromRelay < rep.Bytes/2 {
			t.Errorf("%s took %d octets from its relay, of %d", n, hosts[n].FromRelay, rep.Bytes)
		}
	}
	if h := hosts["t3"]; h.Repaired < rep.Bytes/20 || h.Received-min(h.Received, h.FromRelay) > rep.Bytes/20 {
		t.Errorf("t3 dropped a fifth of its live feed: it repaired %d octets, %d of them not from its relay", h.Repaired, h.Received-min(h.Received, h.FromRelay))
	}
	if hosts["t0"].Relayed < rep.Bytes || hosts["t2"].Relayed < rep.Bytes {
		t.Errorf("t0 relayed %d, t2 %d octets of %d", hosts["t0"].Relayed, hosts["t2"].Relayed, rep.Bytes)
	}
	// t1's children went on from the hub: they fetched what t1 did not
	// relay (and subscribed on the hub's XPUB if t1 stayed silent long).
	for _, n := range []string{"t4", "t5"} {
		if h := hosts[n]; h.FromRelay >= rep.Bytes || h.Repaired == 0 && !h.Reparented {
			t.Errorf("%s: its relay died mid-way, yet it took %d octets from it and %d from the hub", n, h.FromRelay, h.Repaired)
		}
	}
	// Every agent holds the tree.
	f.sameTreeSums(dest, want, 7)
	// The record keeps the fanout, for --retry-failed.
	if m := regexp.MustCompile(`broadcast (B\w+):`).FindStringSubmatch(r.Stderr); m == nil {
		t.Errorf("no broadcast id in zpc's stderr: %s", r.Stderr)
	} else if b, err := os.ReadFile(filepath.Join(f.home, "broadcasts", m[1]+".json")); err != nil || !strings.Contains(string(b), `"fanout": 2`) {
		t.Errorf("the record of %s has no fanout 2 (%v): %.300s", m[1], err, b)
	}
	// The hub shows the tree it placed.
	r = f.zp("fleet", f.hub.Addr, "--tree")
	t.Logf("zp fleet --tree:\n%s", r.Stdout)
	for _, line := range []string{"├── t0  relay to 2", "│   ├── t2  relay to 1", "│   │   └── t6", "└── t1  relay to 2", "    ├── t4"} {
		if !strings.Contains(r.Stdout, line+"\n") && !strings.Contains(r.Stdout, line) {
			t.Errorf("zp fleet --tree lacks %q:\n%s", line, r.Stdout)
		}
	}
}

// TestBroadcastChunks: a rebroadcast after a large file changed in place
// and grew moves about the chunks that changed, not the file, from the
// client to the hub and from the hub to each agent: each takes the other
// chunks from its old copy (protocol 5, chunk lists). Through a relay tree
// too.
func TestBroadcastChunks(t *testing.T) {
	needUnshare(t)
	names := []string{"s1", "s2", "s3"}
	f := newTestFleet(t, names, "--metrics", "127.0.0.1:0")
	published := func() float64 { return f.hubMetric(t, "zp_fleet_published_bytes_total") }
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 32<<20, 50)
	disks := f.agentDisks(names)
	for _, n := range names {
		f.startAgentOnDisk(n, disks[n])
	}
	f.waitStates(30*time.Second, "up", names...)
	broadcast := func(args ...string) map[string]bcastHost { return f.broadcastAll(t, src, disks, names, args...) }
	broadcast()

	big := filepath.Join(src, "big.bin")
	change := func(at int64, grow int) {
		t.Helper()
		fh, err := os.OpenFile(big, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		st, _ := fh.Stat()
		b := make([]byte, 1)
		more := make([]byte, grow)
		rand.Read(more)
		if _, err := fh.ReadAt(b, at); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xFF
		if _, err := fh.WriteAt(b, at); err != nil {
			t.Fatal(err)
		}
		if _, err := fh.WriteAt(more, st.Size()); err != nil {
			t.Fatal(err)
		}
	}
	// One octet in chunk 10, and 100 KiB more: chunk 32 is new.
	change(10<<20+5, 100<<10)
	lacked := uint64(1<<20 + 100<<10)
	before := published()
	hosts := broadcast()
	// The client published the manifest, the chunk index and, of the
	// content, the two chunks the agents lack: not the file.
	if p := published() - before; p > float64(lacked)+1<<20 {
		t.Errorf("the client published %.0f octets to the hub for %d octets of changed chunks", p, lacked)
	} else {
		t.Logf("the client published %.0f octets to the hub", p)
	}
	for _, n := range names {
		h := hosts[n]
		t.Logf("%s: took %d live, fetched %d, deduplicated %d, wrote %d", n, h.Received-h.Repaired, h.Repaired, h.Deduped, h.Written)
		// Whole records of 256 KiB: at most one more on each side of
		// each of the two runs it lacks, and the records' lengths and tags.
		if h.Received > lacked+lacked/50+4*256<<10 {
			t.Errorf("%s received %d octets for the %d it lacked", n, h.Received, lacked)
		}
		if h.Deduped < 31<<20 {
			t.Errorf("%s deduplicated %d octets: not the 31 chunks it held", n, h.Deduped)
		}
	}

	// Again in a chain of relays: hub → one → two → three.
	change(20<<20, 0)
	broadcast("--fanout", "1")
}

// TestBroadcastChunksMixed: with one agent of version 4 (no chunk lists)
// in the broadcast, the content holds whole files, which that agent
// takes; the version 5 agent still takes from its old copy the chunks it
// holds, and fetches only the one it lacks.
func TestBroadcastChunksMixed(t *testing.T) {
	needUnshare(t)
	names := []string{"new", "old"}
	f := newTestFleet(t, names, "--metrics", "127.0.0.1:0")
	published := func() float64 { return f.hubMetric(t, "zp_fleet_published_bytes_total") }
	src := filepath.Join(f.dir, "src")
	writeTree(t, src, 16<<20, 10)
	disks := f.agentDisks(names)
	f.startAgentOnDisk("new", disks["new"])
	f.startAgentOnDiskEnv("old", disks["old"], []string{"ZP_FAULT_MAX_VERSION=4"})
	f.waitStates(30*time.Second, "up", names...)
	broadcast := func() map[string]bcastHost { return f.broadcastAll(t, src, disks, names) }
	broadcast()
	fh, err := os.OpenFile(filepath.Join(src, "big.bin"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("changed"), 5<<20)
	fh.Close()
	before := published()
	hosts := broadcast()
	p := published() - before
	t.Logf("published %.0f; new received %d, old received %d", p, hosts["new"].Received, hosts["old"].Received)
	if p < 16<<20 || hosts["old"].Received < 16<<20 {
		t.Errorf("the content was not whole files: published %.0f, the version 4 agent received %d", p, hosts["old"].Received)
	}
	if h := hosts["new"]; h.Received > 1<<20+4*256<<10 || h.Deduped < 15<<20 {
		t.Errorf("the version 5 agent received %d, deduplicated %d", h.Received, h.Deduped)
	}
}

// hubMetric reads one of the hub's metrics (the hub started with
// --metrics 127.0.0.1:0).
func (f *testFleet) hubMetric(t *testing.T, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(f.hub.Log())
	if m == nil {
		t.Fatalf("no metrics address in the hub's log")
	}
	return metric(t, m[1], name)
}

// broadcastAll broadcasts src/ to DEST on every agent of names (zpc
// --fleet -r --json, and args) and checks that each proved the tree
// digest and holds src in disks[name]/dest.
func (f *testFleet) broadcastAll(t *testing.T, src string, disks map[string]string, names []string, args ...string) map[string]bcastHost {
	t.Helper()
	r := f.zpc(append(append([]string{"--fleet", f.hub.Addr, "-r", "--json"}, args...), src+"/", ":"+filepath.Join(f.mnt(), "dest"))...)
	rep, hosts := parseBcast(t, r)
	if r.Code != 0 || len(hosts) != len(names) {
		t.Fatalf("broadcast: exit %d, %d hosts\n%s\n%s", r.Code, len(hosts), r.Stdout, r.Stderr)
	}
	for _, n := range names {
		if h := hosts[n]; h.State != "ok" || h.Digest != rep.Digest {
			t.Errorf("%s: %+v", n, h)
		}
		sameTree(t, n, snapshot(t, src), snapshot(t, filepath.Join(disks[n], "dest")))
	}
	return hosts
}

// agentDisks makes a disk for each agent of names, holding an empty
// dest directory, and returns their paths by name.
func (f *testFleet) agentDisks(names []string) map[string]string {
	disks := make(map[string]string, len(names))
	for _, n := range names {
		disks[n] = filepath.Join(f.dir, "disk-"+n)
		os.MkdirAll(filepath.Join(disks[n], "dest"), 0o755)
	}
	return disks
}
