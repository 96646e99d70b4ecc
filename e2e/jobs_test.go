package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// async starts a background job and returns its id.
func (d *zpd) async(t *testing.T, extra []string, argv ...string) string {
	t.Helper()
	args := append(append(append(d.clientArgs(), "--async"), extra...), d.Addr)
	r := run(t, nil, d.env(), "zp", append(args, argv...)...)
	id := strings.TrimSpace(r.Stdout)
	if r.Code != 0 || len(id) != 22 {
		t.Fatalf("zp --async: %+v", r)
	}
	return id
}

// zpSub runs a zp subcommand against d: zp [flags] SUB... ADDR rest...
func (d *zpd) zpSub(t *testing.T, sub []string, rest ...string) result {
	t.Helper()
	args := append(append(append([]string{}, sub...), d.clientArgs()...), d.Addr)
	return run(t, nil, d.env(), "zp", append(args, rest...)...)
}

func (d *zpd) status(t *testing.T, id string) map[string]any {
	t.Helper()
	r := d.zpSub(t, []string{"job", "status", "--json"}, id)
	if r.Code != 0 {
		t.Fatalf("job status: %+v", r)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &m); err != nil {
		t.Fatalf("%v: %s", err, r.Stdout)
	}
	return m
}

func TestJobLifecycle(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	// The job runs until the test creates flag (however slow the machine).
	flag := filepath.Join(t.TempDir(), "flag")
	script := "echo started; echo warn >&2; read x </dev/null; while [ ! -e " + flag + " ]; do sleep 0.05; done; echo finished; exit 4"
	id := d.async(t, nil, "sh", "-c", script)
	st := d.status(t, id)
	if st["status"] != "running" || st["stdout"] != "connected" || st["command_line"] != "sh -c '"+script+"'" {
		t.Fatalf("running status: %v", st)
	}
	// key = value form.
	r := d.zpSub(t, []string{"job", "status"}, id)
	for _, want := range []string{"id = " + id, "status = running", `command_line = "sh -c`, "stdout = connected", "pid = ", "user = ", "started = "} {
		if !strings.Contains(r.Stdout, want) {
			t.Fatalf("status lacks %q:\n%s", want, r.Stdout)
		}
	}
	// jobs lists it.
	r = d.zpSub(t, []string{"jobs"})
	if !strings.Contains(r.Stdout, "ID") || !strings.Contains(r.Stdout, id) || !strings.Contains(r.Stdout, "running") {
		t.Fatalf("jobs:\n%s", r.Stdout)
	}
	// follow from the start: history then live, exit code of the job.
	time.AfterFunc(300*time.Millisecond, func() { os.WriteFile(flag, nil, 0o644) })
	r = d.zpSub(t, []string{"job", "follow"}, id)
	if r.Stdout != "started\nfinished\n" || r.Stderr != "warn\n" || r.Code != 4 {
		t.Fatalf("follow: %+v", r)
	}
	st = d.status(t, id)
	if st["status"] != "exited" || st["exit_code"] != float64(4) || st["stdout"] != "disconnected" || st["stdout_bytes"] != float64(len("started\nfinished\n")) || st["ended"] == nil {
		t.Fatalf("finished status: %v", st)
	}
	// Following a finished job replays it; --stdout and --stderr select.
	if r := d.zpSub(t, []string{"job", "follow", "--stdout"}, id); r.Stdout != "started\nfinished\n" || r.Stderr != "" || r.Code != 4 {
		t.Fatalf("follow --stdout: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "follow", "--stderr"}, id); r.Stdout != "" || r.Stderr != "warn\n" {
		t.Fatalf("follow --stderr: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "follow", "--tail", "1", "--stdout"}, id); r.Stdout != "finished\n" {
		t.Fatalf("--tail 1: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "wait"}, id); r.Code != 4 || r.Stdout != "" {
		t.Fatalf("wait: %+v", r)
	}
	// Unknown ids: exit 2 with a clear message.
	for _, sub := range [][]string{{"job", "status"}, {"job", "follow"}, {"job", "wait"}, {"job", "kill"}, {"job", "rm"}} {
		if r := d.zpSub(t, sub, "NoSuchJob123"); r.Code != 2 || !strings.Contains(r.Stderr, "no job NoSuchJob123") {
			t.Fatalf("%v unknown: %+v", sub, r)
		}
	}
	// rm forgets it.
	if r := d.zpSub(t, []string{"job", "rm"}, id); r.Code != 0 {
		t.Fatalf("rm: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "status"}, id); r.Code != 2 {
		t.Fatalf("status after rm: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(d.State, "jobs", id)); !os.IsNotExist(err) {
		t.Fatalf("job directory left behind: %v", err)
	}
}

func TestJobKillAndFailures(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	id := d.async(t, nil, "sh", "-c", "trap 'echo got TERM; exit 9' TERM; echo ready; while :; do sleep 0.1; done")
	eventually(t, 5*time.Second, "job running", func() bool { return d.status(t, id)["stdout_bytes"] == float64(6) })
	if r := d.zpSub(t, []string{"job", "rm"}, id); r.Code != 1 || !strings.Contains(r.Stderr, "still running") {
		t.Fatalf("rm running: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "kill"}, id); r.Code != 0 {
		t.Fatalf("kill: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "wait"}, id); r.Code != 9 {
		t.Fatalf("wait after kill: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "follow", "--stdout"}, id); r.Stdout != "ready\ngot TERM\n" {
		t.Fatalf("%+v", r)
	}
	if r := d.zpSub(t, []string{"job", "kill"}, id); r.Code != 1 || !strings.Contains(r.Stderr, "not running") {
		t.Fatalf("kill finished job: %+v", r)
	}
	// KILL takes the whole process group, shim included.
	id2 := d.async(t, nil, "sleep", "60")
	if r := d.zpSub(t, []string{"job", "kill", "--signal", "KILL"}, id2); r.Code != 0 {
		t.Fatalf("kill -KILL: %+v", r)
	}
	if r := d.zpSub(t, []string{"job", "wait"}, id2); r.Code != 128+9 {
		t.Fatalf("wait after KILL: %+v", r)
	}
	if st := d.status(t, id2); st["status"] != "killed" || st["signal"] != "KILL" {
		t.Fatalf("%v", st)
	}
	// A command that does not exist: an id, a message, exit 127, and the
	// job recorded as failed-to-start.
	args := append(append(d.clientArgs(), "--async"), d.Addr, "no-such-cmd-zp")
	r := run(t, nil, d.env(), "zp", args...)
	id3 := strings.TrimSpace(r.Stdout)
	if r.Code != 127 || !strings.Contains(r.Stderr, "command not found") || len(id3) != 22 {
		t.Fatalf("async not found: %+v", r)
	}
	if st := d.status(t, id3); st["status"] != "failed-to-start" || st["exit_code"] != float64(127) {
		t.Fatalf("%v", st)
	}
}

func TestJobStdinFile(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	f := filepath.Join(t.TempDir(), "in")
	data := bytes.Repeat([]byte("line of input\n"), 200000) // 2.8 MB
	os.WriteFile(f, data, 0o644)
	id := d.async(t, []string{"--stdin-file", f}, "sha256sum")
	r := d.zpSub(t, []string{"job", "follow"}, id)
	want := fmt.Sprintf("%x  -\n", sha256.Sum256(data))
	if r.Stdout != want || r.Code != 0 {
		t.Fatalf("got %q want %q (%s)", r.Stdout, want, r.Stderr)
	}
	// Without --stdin-file the job reads /dev/null.
	id = d.async(t, nil, "wc", "-c")
	if r := d.zpSub(t, []string{"job", "follow"}, id); strings.TrimSpace(r.Stdout) != "0" {
		t.Fatalf("%+v", r)
	}
}

// Jobs belong to their owner (user and key): another key sees nothing.
func TestJobOwnership(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	id := d.async(t, nil, "sleep", "30")
	other := t.TempDir()
	pub := strings.TrimSpace(run(t, nil, []string{"ZP_CONFIG=" + other}, "zp", "keygen").Stdout)
	// Authorise the second key for the same user.
	f, _ := os.OpenFile(filepath.Join(d.Home, "authorized_for_zpd"), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintln(f, pub)
	f.Close()
	env := []string{"ZP_CONFIG=" + other}
	var r result
	eventually(t, 10*time.Second, "zpd to reread its key file", func() bool {
		r = run(t, nil, env, "zp", "--accept-new", "-q", "jobs", d.Addr)
		return r.Code != 255
	})
	if r.Code != 0 || strings.Contains(r.Stdout, id) {
		t.Fatalf("other key lists the job: %+v", r)
	}
	for _, sub := range [][]string{{"job", "status"}, {"job", "follow"}, {"job", "kill"}, {"job", "rm"}} {
		r := run(t, nil, env, "zp", append(sub, d.Addr, id)...)
		if r.Code != 2 {
			t.Fatalf("other key %v: %+v", sub, r)
		}
	}
	d.zpSub(t, []string{"job", "kill"}, id)
}

func TestJobRestartAndRetention(t *testing.T) {
	t.Parallel()
	d := startZPD(t, "--job-retention", "4s")
	done := d.async(t, nil, "sh", "-c", "echo old output")
	d.zpSub(t, []string{"job", "wait"}, done)
	flag := filepath.Join(t.TempDir(), "flag") // the job runs until it exists
	running := d.async(t, nil, "sh", "-c", "echo before; while [ ! -e "+flag+" ]; do sleep 0.05; done; echo after; exit 3")
	eventually(t, 5*time.Second, "first line", func() bool { return d.status(t, running)["stdout_bytes"] == float64(7) })

	// Restart zpd on the same address and state.
	addr := d.Addr
	d.Stop()
	d2 := startZPDWith(t, "--listen", addr, "--state", d.State, "--authorized-keys", filepath.Join(d.Home, "authorized_for_zpd"), "--job-retention", "4s")
	d2.Home, d2.secure = d.Home, true
	if r := d2.zpSub(t, []string{"job", "follow"}, done); r.Stdout != "old output\n" || r.Code != 0 {
		t.Fatalf("finished job after restart: %+v", r)
	}
	// The running job was re-adopted: it finishes with its output and code.
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := d2.zpSub(t, []string{"job", "follow"}, running); r.Stdout != "before\nafter\n" || r.Code != 3 {
		t.Fatalf("re-adopted job: %+v\n%s", r, d2.Log())
	}
	if !strings.Contains(d2.Log(), "job found after restart") {
		t.Fatalf("no re-adoption logged:\n%s", d2.Log())
	}
	// Retention: finished jobs disappear after 4s.
	eventually(t, 15*time.Second, "job expired", func() bool {
		r := d2.zpSub(t, []string{"job", "status"}, done)
		return r.Code == 2
	})
	if _, err := os.Stat(filepath.Join(d.State, "jobs", done)); !os.IsNotExist(err) {
		t.Fatal("expired job's directory remains")
	}
}

// Many followers of one job each get the byte-identical stream, even one
// that is stopped for longer than zpd's timeout.
func TestManyFollowers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d := startZPD(t, "--timeout", "3s")
	// About 24 MiB over ~4 seconds, in lines that number themselves.
	id := d.async(t, nil, "sh", "-c", `i=0; while [ $i -lt 40 ]; do seq -f "$i %.0f abcdefghijklmnopqrstuvwxyz0123456789" 1 60000; i=$((i+1)); sleep 0.1; done`)
	const n = 100
	type follower struct {
		cmd *exec.Cmd
		h   *syncHash
		err bytes.Buffer
	}
	fs := make([]*follower, n)
	var wg sync.WaitGroup
	for i := range fs {
		f := &follower{h: &syncHash{h: sha256.New()}}
		args := append(append([]string{"job", "follow", "--stdout"}, d.clientArgs()...), d.Addr, id)
		f.cmd = exec.Command(bin("zp"), args...)
		f.cmd.Env = append(os.Environ(), d.env()...)
		f.cmd.Stdout = f.h
		f.cmd.Stderr = &f.err
		if err := f.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		fs[i] = f
		if i%10 == 9 {
			time.Sleep(150 * time.Millisecond) // joining at different points
		}
	}
	// Stop one follower for longer than zpd's timeout, then let it go on.
	time.Sleep(500 * time.Millisecond)
	fs[0].cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(5 * time.Second)
	fs[0].cmd.Process.Signal(syscall.SIGCONT)
	for _, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.cmd.Wait()
		}()
	}
	wg.Wait()
	out, err := os.ReadFile(filepath.Join(d.State, "jobs", id, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(out)
	if len(out) < 20<<20 {
		t.Fatalf("job wrote only %d octets", len(out))
	}
	for i, f := range fs {
		if code := f.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("follower %d: exit %d: %s", i, code, f.err.String())
			continue
		}
		if got := f.h.Sum(); !bytes.Equal(got, want[:]) || f.h.n != int64(len(out)) {
			t.Errorf("follower %d: %d octets, digest differs from stdout.log (%d octets)", i, f.h.n, len(out))
		}
	}
	if !strings.Contains(fs[0].err.String(), "reconnecting") {
		t.Logf("stopped follower did not need to reconnect: %q", fs[0].err.String())
	}
}

type syncHash struct {
	mu sync.Mutex
	h  interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (s *syncHash) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n += int64(len(p))
	return s.h.Write(p)
}

func (s *syncHash) Sum() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.h.Sum(nil)
}

// Ctrl-C on follow detaches: the job goes on.
func TestFollowCtrlCDetaches(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	id := d.async(t, nil, "sh", "-c", "echo start; sleep 2; echo end")
	args := append(append([]string{"job", "follow"}, d.clientArgs()...), d.Addr, id)
	cmd := exec.Command(bin("zp"), args...)
	cmd.Env = append(os.Environ(), d.env()...)
	out, _ := cmd.StdoutPipe()
	cmd.Start()
	r := bufio.NewReader(out)
	expectLine(t, r, "start")
	cmd.Process.Signal(syscall.SIGINT)
	if code := waitExit(t, cmd, 5*time.Second); code != 130 {
		t.Fatalf("exit %d after Ctrl-C, want 130", code)
	}
	if st := d.status(t, id); st["status"] != "running" {
		t.Fatalf("the job was touched: %v", st)
	}
	if r := d.zpSub(t, []string{"job", "follow"}, id); r.Stdout != "start\nend\n" || r.Code != 0 {
		t.Fatalf("%+v", r)
	}
}

// A follower whose connection to zpd is cut several times while the job
// runs reconnects by itself and still writes the job's output byte for
// byte, with no loss and no duplicates.
func TestFollowRidesOutCuts(t *testing.T) {
	d := startZPD(t)
	pd, px := viaProxy(t, d)
	// About 6 MiB over ~3 seconds, in numbered lines.
	id := d.async(t, nil, "sh", "-c", `i=0; while [ $i -lt 30 ]; do seq -f "$i %.0f abcdefghijklmnopqrstuvwxyz" 1 6000; i=$((i+1)); sleep 0.1; done`)
	h := &syncHash{h: sha256.New()}
	var errb syncBuffer
	args := []string{"job", "follow", "--stdout"}
	for _, a := range pd.clientArgs() {
		if a != "-q" { // the follower must say that it reconnects
			args = append(args, a)
		}
	}
	cmd := exec.Command(bin("zp"), append(args, pd.Addr, id)...)
	cmd.Env = append(append(os.Environ(), pd.env()...), "ZP_FOLLOW_STATS=1")
	cmd.Stdout, cmd.Stderr = h, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		time.Sleep(700 * time.Millisecond)
		px.Cut()
	}
	if code := waitExit(t, cmd, 60*time.Second); code != 0 {
		t.Fatalf("follow: exit %d: %s", code, errb.String())
	}
	out, err := os.ReadFile(filepath.Join(d.State, "jobs", id, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(out)
	if got := h.Sum(); !bytes.Equal(got, want[:]) || h.n != int64(len(out)) {
		t.Fatalf("follower wrote %d octets, the job %d; digests equal: %v", h.n, len(out), bytes.Equal(got, want[:]))
	}
	if px.Accepted() < 2 || !strings.Contains(errb.String(), "reconnecting") || !strings.Contains(errb.String(), "reconnected to") {
		t.Fatalf("the follower did not reconnect (%d connections): %s", px.Accepted(), errb.String())
	}
	// ZP_FOLLOW_STATS counts every connection's octets, not the last one's.
	var hist, live, missed int
	stats := strings.Index(errb.String(), "zp: follow stats:")
	if stats < 0 {
		t.Fatalf("no follow stats: %s", errb.String())
	}
	if _, err := fmt.Sscanf(errb.String()[stats:], "zp: follow stats: history=%d live=%d missed=%d", &hist, &live, &missed); err != nil {
		t.Fatalf("follow stats: %v: %s", err, errb.String())
	}
	if hist+live+missed != len(out) {
		t.Errorf("follow stats: history %d + live %d + missed %d != %d octets", hist, live, missed, len(out))
	}
	t.Logf("%d octets through %d connections; stderr:\n%s", len(out), px.Accepted(), errb.String())
}
