package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// buildLibzp builds libzp.so and libzp.a into dir (as make libzp does), and
// a libzp.so with the Go runtime's valgrind annotations into dir/vg.
func buildLibzp(t *testing.T, dir string) {
	t.Helper()
	for _, b := range [][]string{
		{"-buildmode=c-shared", "-o", filepath.Join(dir, "libzp.so")},
		{"-buildmode=c-archive", "-o", filepath.Join(dir, "libzp.a")},
		{"-buildmode=c-shared", "-tags", "valgrind", "-o", filepath.Join(dir, "vg", "libzp.so")},
	} {
		cmd := exec.Command("go", append(append([]string{"build"}, b...), "../libzp")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", b, err, out)
		}
	}
}

// gcc compiles libzp/test/zp_test.c with args.
func gcc(t *testing.T, out string, args ...string) string {
	t.Helper()
	all := append([]string{"-Wall", "-Wextra", "-Werror", "-O1", "-g", "-I../include", "-o", out, "../libzp/test/zp_test.c"}, args...)
	if b, err := exec.Command("gcc", append(all, "-lpthread")...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %v: %v\n%s", args, err, b)
	}
	return out
}

var peakRE = regexp.MustCompile(`peak_rss_kib (\d+)`)

// libzp from C, against a real zpd over CURVE: libzp/test/zp_test.c
// (exec with stdin, exit codes, signals, a big pipe through cat, jobs,
// copies, error codes) built with gcc against libzp.so and libzp.a; once
// with AddressSanitizer; once under valgrind, where a definite leak or an
// invalid access fails (libzp/test/go-runtime.supp documents the only
// suppressions: the Go runtime's own heap), and a deliberate leak must be
// caught.
func TestLibzpC(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc (make deps installs it)")
	}
	t.Parallel()
	dir := t.TempDir()
	buildLibzp(t, dir)
	d := startZPD(t)
	run := func(t *testing.T, mib int, env []string, argv ...string) string {
		t.Helper()
		tmp := t.TempDir()
		args := append(argv[1:], d.Addr, tmp, strconv.Itoa(mib))
		cmd := exec.Command(argv[0], args...)
		cmd.Env = append(append(os.Environ(), d.env()...), env...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS: 0 failed") {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		return string(out)
	}

	shared := gcc(t, filepath.Join(dir, "zp_test_so"), "-L"+dir, "-lzp", "-Wl,-rpath,"+dir)
	static := gcc(t, filepath.Join(dir, "zp_test_a"), filepath.Join(dir, "libzp.a"))
	t.Run("shared", func(t *testing.T) { run(t, 16, nil, shared) })
	t.Run("static, 1 GiB through cat", func(t *testing.T) {
		out := run(t, 1024, nil, static)
		m := peakRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no peak RSS in:\n%s", out)
		}
		kib, _ := strconv.Atoi(m[1])
		zpdKiB, err := rssKB(d.PID())
		t.Logf("1 GiB through cat: peak RSS %d KiB in the C program, %d KiB in zpd", kib, zpdKiB)
		if kib > 200<<10 || err != nil || zpdKiB > 200<<10 {
			t.Fatalf("memory not bounded: %d KiB in the C program, %d KiB in zpd (%v)", kib, zpdKiB, err)
		}
	})
	t.Run("asan", func(t *testing.T) {
		asan := gcc(t, filepath.Join(dir, "zp_test_asan"), "-fsanitize=address", "-fno-omit-frame-pointer", "-L"+dir, "-lzp", "-Wl,-rpath,"+dir)
		run(t, 64, []string{"ASAN_OPTIONS=detect_leaks=1:abort_on_error=0"}, asan)
	})
	t.Run("valgrind", func(t *testing.T) {
		if _, err := exec.LookPath("valgrind"); err != nil {
			t.Skip("no valgrind (make deps installs it)")
		}
		vgdir := filepath.Join(dir, "vg")
		prog := gcc(t, filepath.Join(vgdir, "zp_test"), "-L"+vgdir, "-lzp", "-Wl,-rpath,"+vgdir)
		supp, _ := filepath.Abs("../libzp/test/go-runtime.supp")
		vg := []string{"valgrind", "--suppressions=" + supp, "--error-limit=no", "--leak-check=full",
			"--errors-for-leak-kinds=definite", "--error-exitcode=1"}
		// See go-runtime.supp for why the collector and async preemption are off.
		// cpu.rdtscp=off: the runtime's cputicks uses RDTSCP where CPUID offers it,
		// and Valgrind 3.19 cannot decode it on every host (SIGILL in CI).
		env := []string{"GOGC=off", "GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off"}
		out := run(t, 4, env, append(vg, prog)...)
		if !strings.Contains(out, "ERROR SUMMARY: 0 errors") {
			t.Fatalf("valgrind:\n%s", out)
		}
		// The suppressions do not hide a leak of the C program's own.
		cmd := exec.Command(vg[0], append(vg[1:], prog, "--leak-canary")...)
		cmd.Env = append(os.Environ(), env...)
		b, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(b), "100 bytes in 1 blocks are definitely lost") {
			t.Fatalf("the leak canary was not caught (%v):\n%s", err, b)
		}
	})
}
