package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests leave no process behind, pass or fail. A zpd's commands run in
// sessions of their own and its background jobs are meant to outlive it,
// so stopping zpd is not enough: each zpd is put in a cgroup of its own
// right after it starts (everything it starts stays there, setsid or not),
// and the test's cleanup kills whatever the cgroup still holds. Without a
// writable cgroup hierarchy (not root), the jobs zpd recorded are killed
// by their process groups instead.

var cgroupSeq atomic.Int64

// cgroupRoot is the cgroup this test process is in, in a hierarchy where
// we can create groups: the unified (v2) one, or v1's pids controller.
// zpds get groups nested in it, so that a wrapper that runs the tests in a
// group of its own (scripts/no-leftovers.sh) still sees everything.
func cgroupRoot() string {
	self, _ := os.ReadFile("/proc/self/cgroup")
	for _, h := range []struct{ dir, ctl string }{{"/sys/fs/cgroup/unified", ""}, {"/sys/fs/cgroup/pids", "pids"}, {"/sys/fs/cgroup", ""}} {
		if _, err := os.Stat(filepath.Join(h.dir, "cgroup.procs")); err != nil {
			continue
		}
		for _, line := range strings.Split(string(self), "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 || !(h.ctl == "" && f[0] == "0" && f[1] == "" || h.ctl != "" && strings.Contains(","+f[1]+",", ","+h.ctl+",")) {
				continue
			}
			dir := filepath.Join(h.dir, f[2])
			if syscall.Access(dir, 2) == nil {
				return dir
			}
		}
	}
	return ""
}

// contain puts the running zpd d in a new cgroup and registers the cleanup
// that empties it at the end of the test.
func (d *zpd) contain(t *testing.T) {
	root := cgroupRoot()
	pid := d.cmd.Process.Pid
	if root != "" {
		dir := filepath.Join(root, fmt.Sprintf("zp-e2e-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
		if err := os.Mkdir(dir, 0o755); err == nil {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err == nil {
				t.Cleanup(func() { killCgroup(t, dir) })
				return
			}
			os.Remove(dir)
		}
	}
	state := d.State
	t.Cleanup(func() { killJobs(state) })
}

// killCgroup kills every process in dir until it is empty, then removes it.
func killCgroup(t *testing.T, dir string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left in %s: %v", dir, pids)
			return
		}
		for _, p := range pids {
			if n, err := strconv.Atoi(p); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.Remove(dir)
}

// killJobs kills the process groups of the jobs recorded under state.
func killJobs(state string) {
	metas, _ := filepath.Glob(filepath.Join(state, "jobs", "*", "meta.json"))
	for _, m := range metas {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var meta struct {
			ShimPID int `json:"shim_pid"`
		}
		if json.Unmarshal(b, &meta) == nil && meta.ShimPID > 0 {
			syscall.Kill(-meta.ShimPID, syscall.SIGKILL)
		}
	}
}
