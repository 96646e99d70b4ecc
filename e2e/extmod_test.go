package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The public Go API works from another module: testdata/extmod imports
// github.com/zpipes/zp/client (through a replace directive), is built with
// the go command, and runs against a real zpd with CURVE: first contact
// refused, then pinned; exec with streams; a job; a copy with progress.
func TestExternalModule(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	exe := filepath.Join(t.TempDir(), "zpuser")
	build := exec.Command("go", "build", "-o", exe, ".")
	build.Dir = "testdata/extmod"
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the external module: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(exe, d.Addr, dir)
	cmd.Env = append(os.Environ(), d.env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("zpuser: %v\n%s", err, out)
	}
	want := `unknown host refused: true
protocol: true
exec: "PIPED\n" "to-stderr\n" exited 7
job: "job-output\n" exited 3 listed=true
unknown job: true
upload: files=1 bytes=2097152 progress=2097152
`
	if string(out) != want {
		t.Fatalf("zpuser printed:\n%s\nwant:\n%s", out, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "up.bin")); err != nil || len(b) != 2<<20 || strings.Trim(string(b), "z") != "" {
		t.Fatalf("uploaded file: %d octets, %v", len(b), err)
	}
	// The host key was pinned in known_hosts by the library.
	if kh, err := os.ReadFile(filepath.Join(d.Home, "known_hosts")); err != nil || !strings.HasPrefix(string(kh), d.Addr+" ") {
		t.Fatalf("known_hosts: %q %v", kh, err)
	}
}
