package e2e

import (
	"os"
	"os/exec"
	"testing"
)

// Several hosts: docker-compose.yml's three zpd containers (images built
// FROM scratch) and a client on a private network.
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
	cmd := exec.Command("bash", "../scripts/compose-test.sh")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out[max(0, len(out)-300):])
}
