package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readmeExample returns the code block after "<!-- example: NAME -->" in
// README.md.
func readmeExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- example: " + name + " -->\n```[a-z]*\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatalf("README.md has no %s example", name)
	}
	return string(m[1])
}

// The C and Python examples of README.md, compiled and run as shown
// against a zpd over CURVE.
func TestReadmeExamples(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	t.Parallel()
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib")
	if out, err := exec.Command("go", "build", "-buildmode=c-shared", "-o", filepath.Join(lib, "libzp.so"), "../libzp").CombinedOutput(); err != nil {
		t.Fatalf("building libzp: %v\n%s", err, out)
	}
	d := startZPD(t)
	env := append(os.Environ(), d.env()...)

	t.Run("c", func(t *testing.T) {
		src := filepath.Join(dir, "hello.c")
		os.WriteFile(src, []byte(readmeExample(t, "c")), 0o644)
		inc, _ := filepath.Abs("../include")
		if out, err := exec.Command("gcc", src, "-I"+inc, "-L"+lib, "-lzp", "-Wl,-rpath,"+lib, "-o", filepath.Join(dir, "hello")).CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		cmd := exec.Command(filepath.Join(dir, "hello"), d.Addr)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "HELLO FROM C\nexit code 0\n" {
			t.Fatalf("hello: %v\n%s", err, out)
		}
	})
	t.Run("python", func(t *testing.T) {
		src := filepath.Join(dir, "hello.py")
		os.WriteFile(src, []byte(readmeExample(t, "python")), 0o644)
		py, _ := filepath.Abs("../python")
		cmd := exec.Command("/usr/bin/python3", src, d.Addr)
		cmd.Env = append(env, "PYTHONPATH="+py, "ZP_LIBZP="+filepath.Join(lib, "libzp.so"), "PYTHONDONTWRITEBYTECODE=1")
		out, err := cmd.CombinedOutput()
		want := "0 HELLO FROM PYTHON\njob done\njob 3\nin place: 1 file\ngone: 404\n"
		if err != nil || string(out) != want {
			t.Fatalf("hello.py: %v\n%s\nwant:\n%s", err, out, want)
		}
		if b, err := os.ReadFile("/tmp/hostname.copy"); err != nil || !strings.HasSuffix(string(b), "\n") {
			t.Fatalf("the copy: %q %v", b, err)
		}
	})
}
