package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// zpcUmask runs zpc against d with the given umask.
func (d *zpd) zpcUmask(t *testing.T, umask string, args ...string) result {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", "umask " + umask + " && exec \"$0\" \"$@\"", bin("zpc")}, append(d.clientArgs(), args...)...)...)
	cmd.Env = append(os.Environ(), d.env()...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// Modes follow rsync: without -p a new entry gets the source's permission
// bits less the receiver's umask (zpc's own for a download, 022 for an
// upload into zpd) and never setuid, setgid or sticky; with -p the whole
// mode.
func TestZpcModes(t *testing.T) {
	d := startZPD(t)
	src := filepath.Join(t.TempDir(), "m")
	modes := map[string]uint32{"suid": 0o4755, "sgid": 0o2711, "open": 0o666, "dir": 0o3777}
	mkdir(t, src, 0o755)
	for name, m := range modes {
		p := filepath.Join(src, name)
		if name == "dir" {
			mkdir(t, p, 0o755)
		} else {
			writeFile(t, p, []byte(name), 0o600, time.Unix(1e9, 0))
		}
		if err := unix.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T, root string, want func(m uint32) uint32) {
		t.Helper()
		for name, m := range modes {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, name), &st); err != nil {
				t.Fatal(err)
			}
			if got := st.Mode & 0o7777; got != want(m) {
				t.Errorf("%s (source %04o): %04o, want %04o", name, m, got, want(m))
			}
		}
	}
	for _, c := range []struct {
		name, umask string
		args        func(dest string) []string
		want        func(m uint32) uint32
	}{
		{"download", "027", func(dest string) []string { return []string{"-r", d.at(src), dest} },
			func(m uint32) uint32 { return m & 0o777 &^ 0o027 }},
		{"download -p", "077", func(dest string) []string { return []string{"-r", "-p", d.at(src), dest} },
			func(m uint32) uint32 { return m }},
		{"upload", "077", func(dest string) []string { return []string{"-r", src, d.at(dest)} },
			func(m uint32) uint32 { return m & 0o755 }},
		{"upload -p", "077", func(dest string) []string { return []string{"-r", "-p", src, d.at(dest)} },
			func(m uint32) uint32 { return m }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dest := t.TempDir()
			if r := d.zpcUmask(t, c.umask, c.args(dest)...); r.Code != 0 {
				t.Fatalf("exit %d: %s", r.Code, r.Stderr)
			}
			check(t, filepath.Join(dest, "m"), c.want)
		})
	}
}
