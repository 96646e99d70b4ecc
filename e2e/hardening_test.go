package e2e

// Tests for issue 11's daemon findings: what a hostile local user or
// client could do to zpd, and what zpd now does instead.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// needRoot skips a test that needs root (CI runs as root and must run it).
func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI runs as root: %s must be tested there", why)
		}
		t.Skipf("needs root: %s", why)
	}
}

// A root zpd with --insecure on TCP would run every local user's
// commands as root: refused unless the operator says so in as many words.
func TestInsecureRootRefusedOnTCP(t *testing.T) {
	needRoot(t, "zpd --insecure as root")
	r := run(t, nil, nil, "zpd", "--insecure", "--listen", "127.0.0.1:0", "--state", t.TempDir())
	if r.Code != 2 || !strings.Contains(r.Stderr, "--insecure-anyone-is-root") || !strings.Contains(r.Stderr, "every local user") {
		t.Fatalf("root --insecure on tcp: %+v", r)
	}
	// Also with --insecure-allow-remote.
	r = run(t, nil, nil, "zpd", "--insecure", "--insecure-allow-remote", "--listen", "0.0.0.0:0", "--state", t.TempDir())
	if r.Code != 2 || !strings.Contains(r.Stderr, "--insecure-anyone-is-root") {
		t.Fatalf("root --insecure --insecure-allow-remote: %+v", r)
	}
	// The explicit flag starts it, with a loud warning.
	d := startZPDWith(t, "--insecure", "--insecure-anyone-is-root")
	if !strings.Contains(d.Log(), "level=WARN") || !strings.Contains(d.Log(), "as root") {
		t.Fatalf("no warning:\n%s", d.Log())
	}
	if r := run(t, nil, nil, "zp", "--insecure", d.Addr, "id", "-u"); r.Code != 0 || r.Stdout != "0\n" {
		t.Fatalf("%+v", r)
	}
	// ipc:// stays allowed: the socket file's mode decides who connects.
	sock := filepath.Join(t.TempDir(), "zpd.sock")
	ipc := startZPDWith(t, "--insecure", "--listen", "ipc://"+sock)
	if r := run(t, nil, nil, "zp", "--insecure", "ipc://"+sock, "id", "-u"); r.Code != 0 || r.Stdout != "0\n" {
		t.Fatalf("ipc: %+v\n%s", r, ipc.Log())
	}
}
