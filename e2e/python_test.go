package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The Python binding (python/zp, ctypes on libzp) against a real zpd over
// CURVE: python/tests with Debian's pytest.
func TestPython(t *testing.T) {
	if exec.Command("/usr/bin/python3", "-c", "import pytest").Run() != nil {
		t.Skip("no pytest for /usr/bin/python3 (make deps installs python3-pytest)")
	}
	t.Parallel()
	dir := t.TempDir()
	lib := filepath.Join(dir, "libzp.so")
	if out, err := exec.Command("go", "build", "-buildmode=c-shared", "-o", lib, "../libzp").CombinedOutput(); err != nil {
		t.Fatalf("building libzp: %v\n%s", err, out)
	}
	d := startZPD(t)
	cmd := exec.Command("/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
	cmd.Dir = "../python"
	cmd.Env = append(os.Environ(), append(d.env(), "ZP_TEST_TARGET="+d.Addr, "ZP_LIBZP="+lib, "PYTHONDONTWRITEBYTECODE=1")...)
	out, err := cmd.CombinedOutput()
	t.Logf("pytest:\n%s", out)
	if err != nil {
		t.Fatalf("pytest: %v", err)
	}
}
