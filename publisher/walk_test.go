package publisher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// The receiver's temporary files (a partial of an interrupted download in
// the tree being sent) are skipped with a notice: receivers refuse such
// names, so sending them would only fail.
func TestWalkSkipsPartials(t *testing.T) {
	src := t.TempDir()
	for _, p := range []string{"a", "d/b", "d/.zpc-0123456789abcdef.part", ".zpc-dir/c", ".zpcx"} {
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var names, notices []string
	err := Walk([]string{src + "/", filepath.Join(src, "d/.zpc-0123456789abcdef.part")}, true, false, func(msg string, failed bool) {
		if failed {
			t.Errorf("a failure: %s", msg)
		}
		notices = append(notices, msg)
	}, func(e Entry) error {
		names = append(names, e.Name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if want := []string{"", ".zpcx", "a", "d", "d/b"}; !slices.Equal(names, want) {
		t.Errorf("sent %q, want %q", names, want)
	}
	if len(notices) != 3 || !strings.Contains(strings.Join(notices, "\n"), ".zpc-dir") {
		t.Errorf("notices %q", notices)
	}
}

// TestWalkMatchesWalkDir: Walk's own walker emits what filepath.WalkDir
// and os.Lstat see, in the same order, with the same FILE messages.
func TestWalkMatchesWalkDir(t *testing.T) {
	src := t.TempDir()
	for _, p := range []string{"b/z", "b/a/x", "a", "c/d/e/f", "dir with space/ünï"} {
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte(p), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("../a", filepath.Join(src, "b/link")))
	must(os.Symlink("b", filepath.Join(src, "dirlink"))) // not followed
	must(os.Chmod(filepath.Join(src, "c/d"), 0o2750))
	must(os.Chmod(filepath.Join(src, "a"), 0o4755))
	must(syscall.Mkfifo(filepath.Join(src, "b/fifo"), 0o600)) // skipped with a notice
	must(os.Mkdir(filepath.Join(src, "empty"), 0o700))

	for _, source := range []string{src, src + "/"} {
		var got []string
		var notices []string
		err := Walk([]string{source}, true, false, func(msg string, _ bool) { notices = append(notices, msg) }, func(e Entry) error {
			m, err := fileMessage(1, 1, e)
			if err != nil {
				return err
			}
			got = append(got, fmt.Sprintf("%s %s %+v", e.Name, e.Path, *m))
			return nil
		})
		must(err)

		var want []string
		root := filepath.Clean(source)
		prefix := filepath.Base(root)
		if strings.HasSuffix(source, "/") {
			prefix = ""
		}
		must(filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := os.Lstat(p)
			if err != nil {
				return err
			}
			if info.Mode()&(fs.ModeNamedPipe|fs.ModeDevice|fs.ModeSocket) != 0 {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			name := prefix
			if rel != "." {
				name = strings.TrimPrefix(prefix+"/"+rel, "/")
			}
			m, err := fileMessage(1, 1, Entry{Name: name, Path: p, Info: info})
			if err != nil {
				return err
			}
			want = append(want, fmt.Sprintf("%s %s %+v", name, p, *m))
			return nil
		}))
		if !slices.Equal(got, want) {
			t.Errorf("%s: Walk sent\n%s\nfilepath.WalkDir sees\n%s", source, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if len(notices) != 1 || !strings.Contains(notices[0], "special file") {
			t.Errorf("%s: notices %q, want one about the FIFO", source, notices)
		}
	}
}

// TestWalkFollowsOnlyTheNamedRoot: "link/" walks the directory the link
// points to (as rsync does); a symlink inside is sent as a symlink.
func TestWalkFollowsOnlyTheNamedRoot(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "real/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "real/sub/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(dir, "real/sublink")); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := Walk([]string{filepath.Join(dir, "link") + "/"}, true, false, func(msg string, failed bool) {
		t.Errorf("notice: %s", msg)
	}, func(e Entry) error {
		got = append(got, fmt.Sprintf("%q %v", e.Name, e.Info.Mode().Type()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`"" d---------`, `"sub" d---------`, `"sub/f" ----------`, `"sublink" L---------`}
	if !slices.Equal(got, want) {
		t.Errorf("sent %q, want %q", got, want)
	}
}

// TestWalkStopsCleanly: an emit that fails ends the walk with its error,
// wherever it is, and no listing read ahead outlives it.
func TestWalkStopsCleanly(t *testing.T) {
	src := t.TempDir()
	for d := range 6 {
		for s := range 3 {
			if err := os.MkdirAll(filepath.Join(src, fmt.Sprintf("d%d/s%d", d, s)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop := errors.New("stop")
	for after := range 25 {
		n := 0
		err := Walk([]string{src + "/"}, true, false, func(string, bool) {}, func(Entry) error {
			if n++; n > after {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) {
			t.Fatalf("stopped after %d entries: %v", after, err)
		}
		goleak.VerifyNone(t)
	}
}
