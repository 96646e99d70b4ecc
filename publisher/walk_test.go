package publisher

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
