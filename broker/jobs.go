package broker

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/nats-io/nuid"
	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/internal/shellquote"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/publisher"
)

// Job states, as users see them.
const (
	JobRunning       = "running"
	JobExited        = "exited"
	JobKilled        = "killed"
	JobFailedToStart = "failed-to-start"
)

// jobMeta is a job's record, saved as meta.json in its directory.
type jobMeta struct {
	ID        string    `json:"id"`
	Topic     string    `json:"topic"` // secret: the XPUB topic of its output
	User      string    `json:"user"`
	Key       string    `json:"key"` // owner's CURVE key, hex ("" under NULL)
	Argv      []string  `json:"argv"`
	Dir       string    `json:"dir"`
	State     string    `json:"state"`
	ShimPID   int       `json:"shim_pid"`
	ShimStart uint64    `json:"shim_start"` // /proc start time, to tell a reused pid
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Ended     time.Time `json:"ended,omitzero"`
	Done      bool      `json:"done"` // both output streams closed and drained
	ExitCode  *int      `json:"exit_code,omitempty"`
	Signal    int       `json:"signal,omitempty"`
	Message   string    `json:"message,omitempty"`
	OutEOF    [3]bool   `json:"out_eof"`
	Killed    string    `json:"killed,omitempty"` // last signal sent by JOB_KILL
}

// job is a background job known to the broker.
type job struct {
	m   *jobManager
	dir string

	mu    sync.Mutex
	meta  jobMeta
	sizes [3]uint64 // octets published (and readable) per stream
	ended chan struct{}
	slot  bool // holds one of its user's running commands until it ends (limits)
	// saveErr is why meta.json could not be saved last time ("" when it
	// was): job status shows it.
	saveErr string
}

// jobManager owns the jobs directory and the XPUB socket their output is
// published on.
type jobManager struct {
	b   *Broker
	dir string

	pub      zmq4.Socket
	pubConns atomic.Int64

	mu   sync.Mutex
	jobs map[string]*job

	barrierMu sync.Mutex
	barriers  map[uint64]chan struct{}
	barrierID atomic.Uint64

	wg sync.WaitGroup
}

// barrierTopic is the topic of publish barriers (see zmtp.Config.Barrier);
// job topics start with "j/", so no subscriber can ask for it.
var barrierTopic = []byte("\x00zp-barrier/")

func (jm *jobManager) onBarrier(payload []byte) {
	if len(payload) != 8 {
		return
	}
	id := binary.BigEndian.Uint64(payload)
	jm.barrierMu.Lock()
	ch := jm.barriers[id]
	delete(jm.barriers, id)
	jm.barrierMu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// barrier waits until zmq4's publisher has handed every message published
// so far to every subscriber connection (or a second passed).
func (jm *jobManager) barrier() {
	if jm.pubConns.Load() == 0 {
		return
	}
	id := jm.barrierID.Add(1)
	ch := make(chan struct{})
	jm.barrierMu.Lock()
	jm.barriers[id] = ch
	jm.barrierMu.Unlock()
	payload := binary.BigEndian.AppendUint64(append([]byte(nil), barrierTopic...), id)
	_ = jm.pub.Send(zmq4.NewMsg(payload))
	select {
	case <-ch:
	case <-time.After(time.Second):
		jm.barrierMu.Lock()
		delete(jm.barriers, id)
		jm.barrierMu.Unlock()
	}
}

func newJobManager(b *Broker) *jobManager {
	return &jobManager{
		b: b, dir: filepath.Join(b.cfg.StateDir, "jobs"),
		jobs: make(map[string]*job), barriers: make(map[uint64]chan struct{}),
	}
}

// load reads the jobs on disk after a start: finished jobs are listed
// again, running ones are re-adopted if their shim is still alive.
func (jm *jobManager) load(ctx context.Context) error {
	if err := os.MkdirAll(jm.dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(jm.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(jm.dir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "meta.json"))
		if err != nil {
			jm.b.log.Warn("skipping job directory without a record", "path", dir, "err", err)
			continue
		}
		j := &job{m: jm, dir: dir, ended: make(chan struct{})}
		if err := json.Unmarshal(b, &j.meta); err != nil || j.meta.ID != e.Name() {
			jm.b.log.Warn("skipping unreadable job record", "path", dir, "err", err)
			continue
		}
		for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
			if fi, err := os.Stat(j.logPath(st)); err == nil {
				j.sizes[st] = uint64(fi.Size())
			}
		}
		jm.jobs[j.meta.ID] = j
		if j.meta.Done {
			close(j.ended)
			continue
		}
		alive := processStart(j.meta.ShimPID) == j.meta.ShimStart && j.meta.ShimStart != 0
		jm.b.log.Info("job found after restart", "job_id", j.meta.ID, "state", j.meta.State, "shim_alive", alive)
		jm.b.limits.add(limCommands, j.meta.User) // counted, never refused: it runs already
		j.slot = true
		jm.watch(ctx, j, nil)
	}
	jm.updateGauge()
	return nil
}

func (j *job) logPath(st wire.Stream) string {
	return filepath.Join(j.dir, st.String()+".log")
}

// save writes meta.json atomically.
func (j *job) saveLocked() error {
	b, err := json.MarshalIndent(&j.meta, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(j.dir, ".meta.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(j.dir, "meta.json"))
}

func newTopic() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return "j/" + base64.RawURLEncoding.EncodeToString(b)
}

// statusReserve is the space reserved for a job's status file when it is
// created, so that the shim's few events are recorded even when the state
// directory fills up later.
const statusReserve = 64 << 10

// start runs a background job for a session. It returns the job, or an
// EXIT describing why the command could not start (the job is then
// recorded as failed-to-start), or an ERROR when zpd itself could not
// record or start it (its state directory full, out of descriptors): then
// no job exists. stdin is the spooled stdin or nil. With slot, the caller
// hands over one of the user's command slots: a job that starts keeps it
// until it ends (otherwise the caller keeps it).
func (jm *jobManager) start(ctx context.Context, s *session, m *wire.Exec, stdin *os.File, slot bool) (*job, *wire.Exit, *wire.Error) {
	acct := s.acct
	id := nuid.Next()
	j := &job{m: jm, dir: filepath.Join(jm.dir, id), ended: make(chan struct{})}
	j.meta = jobMeta{ID: id, Topic: newTopic(), User: acct.Name, Key: hex.EncodeToString(s.key),
		Argv: m.Argv, State: JobRunning, Started: time.Now().UTC()}
	fail := func(exit *wire.Exit) (*job, *wire.Exit, *wire.Error) {
		code := int(exit.Code)
		j.mu.Lock()
		j.meta.State, j.meta.ExitCode, j.meta.Message = JobFailedToStart, &code, exit.Message
		j.meta.Ended, j.meta.Done = time.Now().UTC(), true
		j.meta.OutEOF = [3]bool{true, true, true}
		_ = j.saveLocked()
		j.mu.Unlock()
		close(j.ended)
		jm.mu.Lock()
		jm.jobs[id] = j
		jm.mu.Unlock()
		jm.updateGauge()
		return j, exit, nil
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// zpd's own failure: nothing of the job is left behind.
	ours := func(what string, err error) (*job, *wire.Exit, *wire.Error) {
		for _, f := range files {
			f.Close()
		}
		files = nil
		_ = os.RemoveAll(j.dir)
		return nil, nil, zpdFailure(m.Channel, what, err)
	}
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return ours("create the job's directory", err)
	}
	env, dir, path, code, err := acct.resolve(m)
	j.meta.Dir = dir
	if err != nil {
		return fail(&wire.Exit{Channel: m.Channel, Status: wire.FailedToStart, Code: uint32(code), Message: err.Error()})
	}
	open := func(name string, flag int) (*os.File, error) {
		f, err := os.OpenFile(filepath.Join(j.dir, name), flag, 0o600)
		if err == nil {
			files = append(files, f)
		}
		return f, err
	}
	out, err1 := open("stdout.log", os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	errf, err2 := open("stderr.log", os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	status, err3 := open("status", os.O_WRONLY|os.O_CREATE|os.O_APPEND)
	if err := errors.Join(err1, err2, err3); err != nil {
		return ours("create the job's files", err)
	}
	if err := reserve(status, statusReserve); err != nil {
		return ours("reserve space for the job's status", err)
	}
	j.mu.Lock()
	err = j.saveLocked()
	j.mu.Unlock()
	if err != nil {
		return ours("save the job's record", err)
	}
	if stdin == nil {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return ours("open /dev/null", err)
		}
		stdin = devnull
	}
	files = append(files, stdin)
	self := jm.b.cfg.ShimPath
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return ours("find its own executable", err)
		}
	}
	cmd := &exec.Cmd{
		Path: self, Args: append([]string{"zpd", ShimArg, path}, m.Argv...),
		Env: env, Dir: dir, Stdin: stdin, Stdout: out, Stderr: errf, ExtraFiles: []*os.File{status},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Credential: acct.credential()},
	}
	if err := cmd.Start(); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Op == "chdir" {
			return fail(startFailure(m.Channel, err)) // the command's directory
		}
		return ours("start the job's supervisor", err)
	}
	// The shim's identity goes into its status file (whose space is
	// reserved) as well as meta.json (which a full disk may refuse): a
	// restarted zpd finds the shim either way.
	j.meta.ShimPID = cmd.Process.Pid
	j.meta.ShimStart = processStart(cmd.Process.Pid)
	ev, _ := json.Marshal(shimEvent{ShimPID: j.meta.ShimPID, ShimStart: j.meta.ShimStart, Time: time.Now().UTC()})
	if _, err := status.Write(append(ev, '\n')); err != nil {
		jm.b.log.Error("recording the job's supervisor", "job_id", id, "err", err)
	}
	j.mu.Lock()
	j.slot = slot
	j.saveOrNoteLocked()
	j.mu.Unlock()
	jm.mu.Lock()
	jm.jobs[id] = j
	jm.mu.Unlock()
	jm.b.m.ExecStarted.Inc()
	jm.updateGauge()
	jm.b.log.Info("job started", "job_id", id, "user", acct.Name, "shim_pid", cmd.Process.Pid)
	reaped := make(chan struct{})
	jm.wg.Add(1)
	go func() {
		defer jm.wg.Done()
		// Wait on a pidfd, not in wait4: no OS thread per running job,
		// and zpd can stop without waiting for its jobs (they outlive it
		// and are re-adopted; the shim is then reaped by init).
		if err := waitExited(ctx, cmd.Process.Pid); err != nil && ctx.Err() != nil {
			return // zpd stops: leave the job running
		}
		_ = cmd.Wait() // reap the shim (at once, or blocking if the pidfd failed)
		close(reaped)
	}()
	jm.watch(ctx, j, reaped)
	return j, nil, nil
}

// reserve allocates size octets for f beyond its end (its size does not
// change), so that appends up to that much cannot fail for lack of space.
// File systems that cannot (EOPNOTSUPP) are left as they are.
func reserve(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_KEEP_SIZE, 0, size)
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return nil
	}
	if ferr != nil {
		return &fs.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return nil
}

// saveOrNoteLocked saves meta.json; when it cannot (a full disk) the job
// goes on, its state kept in memory and in the status file, and job status
// says that the record is not saved (logged once).
func (j *job) saveOrNoteLocked() {
	err := j.saveLocked()
	switch {
	case err == nil:
		j.saveErr = ""
	case j.saveErr == "":
		j.saveErr = errText(err)
		j.m.b.log.Error("saving job record", "job_id", j.meta.ID, "err", err)
	}
}

// errText is an error without the path it concerns ("no space left on
// device"), for messages that users read.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// processStart returns a process's start time (/proc/PID/stat field 22),
// 0 if it does not exist: with the pid it identifies a process even after
// the pid is reused.
func processStart(pid int) uint64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// watch follows a running job: it applies its shim's status events, reads
// what the job appended to its logs and publishes it, and finishes the job
// when the shim is done and the logs are drained. reaped is closed when a
// shim started by this zpd exits; for a re-adopted shim it is nil and the
// pid is polled.
func (jm *jobManager) watch(ctx context.Context, j *job, reaped chan struct{}) {
	jm.wg.Add(1)
	go func() {
		defer jm.wg.Done()
		jm.follow(ctx, j, reaped)
	}()
}

func (jm *jobManager) follow(ctx context.Context, j *job, reaped chan struct{}) {
	var logs [3]*os.File
	for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
		f, err := os.Open(j.logPath(st))
		if err != nil {
			jm.b.log.Error("opening job log", "job_id", j.meta.ID, "err", err)
			return
		}
		defer f.Close()
		logs[st] = f
	}
	statusF, err := os.Open(filepath.Join(j.dir, "status"))
	if err != nil {
		jm.b.log.Error("opening job status", "job_id", j.meta.ID, "err", err)
		return
	}
	defer statusF.Close()
	status := bufio.NewReader(statusF)
	var partial []byte
	j.mu.Lock()
	// Publish from what exists now: history is fetched.
	out := publisher.NewJobOutput(j.meta.ID, j.meta.Topic, logs[wire.Stdout], logs[wire.Stderr], j.sizes)
	j.mu.Unlock()
	sinceBarrier := 0
	shimDone := false
	lastLook := false // the shim is gone: one more read of its events
	idle := 0
	for {
		progressed := false
		for _, st := range []wire.Stream{wire.Stdout, wire.Stderr} {
			frames, n, pos := out.Next(st)
			if n == 0 {
				continue
			}
			progressed = true
			j.mu.Lock()
			j.sizes[st] = pos
			j.mu.Unlock()
			_ = jm.pub.Send(zmq4.NewMsgFrom(frames...))
			jm.b.m.JobPublished.Add(float64(n))
			sinceBarrier += n
			if sinceBarrier >= 1<<20 {
				jm.barrier()
				sinceBarrier = 0
			}
		}
		// Status events from the shim.
		for {
			line, err := status.ReadBytes('\n')
			if err != nil {
				partial = append(partial, line...)
				break
			}
			line = append(partial, line...)
			partial = nil
			var ev shimEvent
			if json.Unmarshal(line, &ev) == nil {
				if jm.apply(j, ev) {
					shimDone = true
				}
				progressed = true
			}
		}
		if !shimDone && !jm.shimAlive(j, reaped) {
			// The shim is gone without saying it was done: killed (KILL),
			// or it crashed. Its last events may have been written after
			// the reading above: read once more (the loop's top), then
			// close the job. (Reading them here and dropping them turned a
			// job that exited 3 into one killed by SIGKILL, 137.)
			if !lastLook {
				lastLook = true
				continue
			}
			jm.apply(j, shimEvent{Done: true, Time: time.Now().UTC()})
			shimDone = true
		}
		if shimDone && !progressed {
			jm.finish(j)
			return
		}
		if progressed {
			idle = 0
			continue
		}
		idle++
		delay := 10 * time.Millisecond
		if idle > 20 {
			delay = 50 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return // zpd stops; the job keeps running and is re-adopted
		case <-reaped:
			reaped = nil
		case <-time.After(delay):
		}
	}
}

func (jm *jobManager) shimAlive(j *job, reaped chan struct{}) bool {
	if reaped != nil {
		select {
		case <-reaped:
			return false
		default:
			return true
		}
	}
	return processStart(j.meta.ShimPID) == j.meta.ShimStart && j.meta.ShimStart != 0
}

// apply records a shim event; it reports whether the shim is done.
func (jm *jobManager) apply(j *job, ev shimEvent) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	done := false
	switch {
	case ev.ShimPID != 0:
		j.meta.ShimPID, j.meta.ShimStart = ev.ShimPID, ev.ShimStart
	case ev.Lost != "":
		lost := fmt.Sprintf("%s: output after %d octets lost: %s", ev.Lost, ev.At, ev.Err)
		if !strings.Contains(j.meta.Message, lost) {
			j.meta.Message = strings.TrimPrefix(j.meta.Message+"; "+lost, "; ")
		}
		j.m.b.log.Warn("job output lost", "job_id", j.meta.ID, "stream", ev.Lost, "offset", ev.At, "err", ev.Err)
	case ev.PID != 0:
		j.meta.PID = ev.PID
	case ev.EOF == "stdout":
		j.meta.OutEOF[wire.Stdout] = true
	case ev.EOF == "stderr":
		j.meta.OutEOF[wire.Stderr] = true
	case ev.Exit != nil:
		code := *ev.Exit
		j.meta.ExitCode, j.meta.State, j.meta.Ended = &code, JobExited, ev.Time
	case ev.Signal != 0:
		j.meta.Signal, j.meta.State, j.meta.Ended = ev.Signal, JobKilled, ev.Time
	case ev.Failed != "":
		code := ev.Code
		j.meta.ExitCode, j.meta.State, j.meta.Message, j.meta.Ended = &code, JobFailedToStart, ev.Failed, ev.Time
	case ev.Done:
		done = true
		if j.meta.State == JobRunning { // no exit recorded: the shim was killed
			j.meta.State, j.meta.Ended = JobKilled, ev.Time
			if j.meta.Signal == 0 {
				j.meta.Signal = int(syscall.SIGKILL)
			}
		}
		j.meta.OutEOF = [3]bool{true, true, true}
	}
	j.saveOrNoteLocked()
	return done
}

// finish marks a job done and tells its followers.
func (jm *jobManager) finish(j *job) {
	j.mu.Lock()
	j.meta.Done = true
	if j.meta.Ended.IsZero() {
		j.meta.Ended = time.Now().UTC()
	}
	j.saveOrNoteLocked()
	info := j.infoLocked()
	topic := j.meta.Topic
	state := j.meta.State
	slot := j.slot
	j.slot = false
	j.mu.Unlock()
	close(j.ended)
	if slot {
		jm.b.limits.release(limCommands, j.meta.User)
	}
	result := "exited_zero"
	switch {
	case state == JobKilled:
		result = "signaled"
	case state == JobFailedToStart:
		result = "failed_to_start"
	case info["exit_code"] != "0":
		result = "exited_nonzero"
	}
	jm.b.m.ExecFinished.WithLabelValues(result).Inc()
	jm.updateGauge()
	jm.b.log.Info("job finished", "job_id", j.meta.ID, "state", state, "exit_code", info["exit_code"], "signal", info["signal"])
	_ = jm.pub.Send(zmq4.NewMsgFrom(publisher.JobEnd(j.meta.ID, topic, info)...))
}

// infoLocked describes the job for JOB_INFO, JOB_LIST and FOLLOW_OK.
func (j *job) infoLocked() map[string]string {
	m := j.meta
	conn := func(st wire.Stream) string {
		if m.OutEOF[st] || m.Done {
			return "disconnected"
		}
		return "connected"
	}
	info := map[string]string{
		"id": m.ID, "status": m.State, "command_line": shellquote.Join(m.Argv), "user": m.User,
		"started": m.Started.Format(time.RFC3339), "stdout": conn(wire.Stdout), "stderr": conn(wire.Stderr),
		"stdout_bytes": strconv.FormatUint(j.sizes[wire.Stdout], 10),
		"stderr_bytes": strconv.FormatUint(j.sizes[wire.Stderr], 10),
		"done":         strconv.FormatBool(m.Done),
	}
	if m.PID != 0 {
		info["pid"] = strconv.Itoa(m.PID)
	}
	if !m.Ended.IsZero() {
		info["ended"] = m.Ended.Format(time.RFC3339)
	}
	if m.ExitCode != nil {
		info["exit_code"] = strconv.Itoa(*m.ExitCode)
	}
	if m.Signal != 0 {
		info["signal"] = strings.TrimPrefix(unixSignalName(m.Signal), "SIG")
		info["exit_code"] = strconv.Itoa(128 + m.Signal)
	}
	msg := m.Message
	if j.saveErr != "" {
		msg = strings.TrimPrefix(msg+"; zpd could not save the job's record: "+j.saveErr, "; ")
	}
	if msg != "" {
		info["message"] = msg
	}
	return info
}

func (jm *jobManager) updateGauge() {
	counts := map[string]int{JobRunning: 0, JobExited: 0, JobKilled: 0, JobFailedToStart: 0}
	jm.mu.Lock()
	for _, j := range jm.jobs {
		j.mu.Lock()
		counts[j.meta.State]++
		j.mu.Unlock()
	}
	jm.mu.Unlock()
	for st, n := range counts {
		jm.b.m.JobsByState.WithLabelValues(st).Set(float64(n))
	}
}

// lookup returns the job if s may see it: jobs belong to their owner (user
// and key); everyone else gets "not found".
func (jm *jobManager) lookup(s *session, id string) *job {
	jm.mu.Lock()
	j := jm.jobs[id]
	jm.mu.Unlock()
	if j == nil || !j.ownedBy(s) {
		return nil
	}
	return j
}

func (j *job) ownedBy(s *session) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.meta.User == s.acct.Name && j.meta.Key == hex.EncodeToString(s.key)
}

func (jm *jobManager) list(s *session) []map[string]string {
	jm.mu.Lock()
	jobs := make([]*job, 0, len(jm.jobs))
	for _, j := range jm.jobs {
		jobs = append(jobs, j)
	}
	jm.mu.Unlock()
	var out []map[string]string
	for _, j := range jobs {
		if !j.ownedBy(s) {
			continue
		}
		j.mu.Lock()
		out = append(out, j.infoLocked())
		j.mu.Unlock()
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a]["started"] != out[b]["started"] {
			return out[a]["started"] < out[b]["started"]
		}
		return out[a]["id"] < out[b]["id"]
	})
	return out
}

func (j *job) info() map[string]string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.infoLocked()
}

// kill signals the job's process group (the shim leads it and stays to
// report, unless the signal is KILL).
func (j *job) kill(name string) *wire.Error {
	sig := signalNum(name)
	if sig == 0 {
		return wire.Errorf(0, wire.CodeBadRequest, "unknown signal %q", name)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.meta.Done || j.meta.State != JobRunning {
		return wire.Errorf(0, wire.CodeConflict, "job %s is not running (%s)", j.meta.ID, j.meta.State)
	}
	if processStart(j.meta.ShimPID) != j.meta.ShimStart {
		return wire.Errorf(0, wire.CodeConflict, "job %s is no longer running", j.meta.ID)
	}
	if err := syscall.Kill(-j.meta.ShimPID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return wire.Errorf(0, wire.CodeForbidden, "kill: %v", err)
	}
	j.meta.Killed = name
	return nil
}

// remove deletes a finished job.
func (jm *jobManager) remove(j *job) *wire.Error {
	j.mu.Lock()
	done := j.meta.Done
	id := j.meta.ID
	j.mu.Unlock()
	if !done {
		return wire.Errorf(0, wire.CodeConflict, "job %s is still running; kill it first", id)
	}
	jm.mu.Lock()
	delete(jm.jobs, id)
	jm.mu.Unlock()
	jm.b.grants.revoke(j.meta.Topic)
	if err := os.RemoveAll(j.dir); err != nil {
		return wire.Errorf(0, wire.CodeInternal, "removing job: %v", err)
	}
	jm.updateGauge()
	return nil
}

// expire removes jobs that ended longer than retention ago.
func (jm *jobManager) expire(retention time.Duration) {
	if retention <= 0 {
		return
	}
	cutoff := time.Now().Add(-retention)
	jm.mu.Lock()
	var old []*job
	for _, j := range jm.jobs {
		j.mu.Lock()
		if j.meta.Done && j.meta.Ended.Before(cutoff) {
			old = append(old, j)
		}
		j.mu.Unlock()
	}
	jm.mu.Unlock()
	for _, j := range old {
		if err := jm.remove(j); err == nil {
			jm.b.log.Info("job expired", "job_id", j.meta.ID, "retention", retention)
		}
	}
}

// fetch serves part of a job's log as DATA messages, then FETCH_OK. It
// calls release before the answer's last message: a client that sends its
// next FETCH on that answer finds the slot free (released after it, two
// FETCHes in flight got ERROR 429 when the next came quickly).
func (jm *jobManager) fetch(s *session, j *job, m *wire.Fetch, release func()) {
	j.mu.Lock()
	size := j.sizes[m.Stream]
	final := j.meta.Done
	j.mu.Unlock()
	f, err := os.Open(j.logPath(m.Stream))
	if err != nil {
		release()
		s.send(wire.Errorf(m.Channel, wire.CodeInternal, "reading log: %v", err))
		return
	}
	off := publisher.ServeFetch(f, m, size, uint64(s.b.cfg.chunk()), func(d *wire.Data) {
		s.send(d)
		s.b.m.Bytes.WithLabelValues("out", "job").Add(float64(len(d.Bytes)))
	})
	f.Close()
	release()
	s.send(&wire.FetchOK{Channel: m.Channel, Stream: m.Stream, Next: off, Size: size, Final: final})
}

// unixSignalName names a signal number ("SIGTERM").
func unixSignalName(n int) string {
	name := syscallSignalName(syscall.Signal(n))
	if name == "" {
		return fmt.Sprintf("SIG%d", n)
	}
	return name
}
