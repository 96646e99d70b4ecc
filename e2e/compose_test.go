package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The compose fleet: docker-compose.yml's hub, three agents, Prometheus and
// client (images built FROM scratch) on a private network, driven by
// scripts/compose-fleet-test.sh: direct zp/zpc/jobs on each agent, zp --fleet
// through the hub, an agent killed mid-command and restarted, an agent cut off
// the network and reconnected, Prometheus scraping every zpd, and a broadcast
// (zpc --fleet) of 200 MiB and 2,000 files that survives an agent killed and
// another cut off mid-way, then a rebroadcast of one changed file.
func TestCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if exec.Command("docker", "info").Run() != nil || exec.Command("docker-compose", "version").Run() != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker and docker-compose are expected on CI")
		}
		t.Skip("no docker engine or docker-compose")
	}
	runScript(t, 15*time.Minute, "../scripts/compose-fleet-test.sh")
}

// deploy/zpd.service (and the hub drop-in) pass systemd-analyze verify.
func TestSystemdUnit(t *testing.T) {
	out := runScript(t, 5*time.Minute, "../scripts/check-systemd.sh", "ZPD="+bin("zpd"))
	if strings.Contains(out, "skipped") {
		t.Skip(strings.TrimSpace(out))
	}
}

// runScript runs a bash script from e2e/, fails the test with its output if
// it fails, and returns its output. Past the deadline the script gets SIGTERM
// (its EXIT trap cleans up), then SIGKILL 30 s later.
func runScript(t *testing.T, limit time.Duration, script string, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	t.Logf("%s", out[max(0, len(out)-600):])
	return string(out)
}
