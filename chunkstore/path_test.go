package chunkstore

import (
	"errors"
	"path"
	"strings"
	"testing"
)

func TestCleanName(t *testing.T) {
	long255 := strings.Repeat("a", 255)
	long256 := strings.Repeat("a", 256)
	// 16 components of 255 octets and 15 slashes: 4095 octets.
	deep4095 := strings.TrimSuffix(strings.Repeat(long255+"/", 16), "/")
	cases := []struct {
		in, want string
		ok       bool
	}{
		// Accepted, as given or with one trailing slash removed.
		{"", "", true},
		{"a", "a", true},
		{"a/b/c", "a/b/c", true},
		{"a/b/", "a/b", true},
		{"dir/", "dir", true},
		{"...", "...", true},
		{"..a", "..a", true},
		{"a..", "a..", true},
		{".hidden", ".hidden", true},
		{"a/.../b", "a/.../b", true},
		{`a\..\b`, `a\..\b`, true}, // a backslash is an ordinary octet here
		{"sp ace/t\tab", "sp ace/t\tab", true},
		{"ünï/cödé", "ünï/cödé", true},
		{long255, long255, true},
		{deep4095, deep4095, true},
		{deep4095 + "/", deep4095, true}, // 4096 octets with the slash

		// "..": anywhere.
		{"..", "", false},
		{"../", "", false},
		{"../evil", "", false},
		{"a/..", "", false},
		{"a/../b", "", false},
		{"x/../../evil", "", false},
		{"a/b/../../..", "", false},
		// Absolute.
		{"/", "", false},
		{"/abs", "", false},
		{"/etc/passwd", "", false},
		{"//double", "", false},
		// NUL.
		{"a\x00b", "", false},
		{"\x00", "", false},
		{"a/\x00/b", "", false},
		{"ok/..\x00", "", false},
		// "." and empty components.
		{".", "", false},
		{"./", "", false},
		{"./a", "", false},
		{"a/.", "", false},
		{"a/./b", "", false},
		{"a//b", "", false},
		{"a/b//", "", false}, // only one trailing slash is forgiven
		// Too long.
		{long256, "", false},
		{"a/" + long256 + "/b", "", false},
		{deep4095 + "/b", "", false}, // 4097 octets
		{strings.Repeat("a/", 3000), "", false},
		// The receiver's own temporary names: a peer that sends them
		// could plant or clobber partial files.
		{".zpc-0123456789abcdef.part", "", false},
		{".zpc-0123456789abcdef.part.sha", "", false},
		{"d/.zpc-0123456789abcdef.part", "", false},
		{".zpc-link-xyz", "", false},
		{".zpc-/x", "", false},
		{".zpc", ".zpc", true},
		{"a.zpc-b", "a.zpc-b", true},
		{"zpc-x", "zpc-x", true},
	}
	for _, c := range cases {
		got, err := CleanName(c.in)
		show := c.in
		if len(show) > 40 {
			show = show[:20] + "…" + show[len(show)-10:]
		}
		if c.ok {
			if err != nil || got != c.want {
				t.Errorf("CleanName(%q) = %q, %v; want %q", show, got, err, c.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("CleanName(%q) = %q, want an error", show, got)
		} else if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("CleanName(%q): %v is not ErrUnsafePath", show, err)
		}
	}
}

// checkCleanName holds for every accepted name: it stays beneath the
// root lexically and cleaning it again changes nothing.
func checkCleanName(t *testing.T, in string) {
	out, err := CleanName(in)
	if err != nil {
		if !errors.Is(err, ErrUnsafePath) {
			t.Fatalf("CleanName(%q): error %v is not ErrUnsafePath", in, err)
		}
		if out != "" {
			t.Fatalf("CleanName(%q) returned %q with an error", in, out)
		}
		return
	}
	if strings.HasPrefix(out, "/") {
		t.Fatalf("CleanName(%q) = %q: absolute", in, out)
	}
	if strings.ContainsRune(out, 0) {
		t.Fatalf("CleanName(%q) = %q: NUL", in, out)
	}
	if len(out) > 4096 {
		t.Fatalf("CleanName(%q): %d octets", in, len(out))
	}
	if out != "" {
		for _, c := range strings.Split(out, "/") {
			if c == ".." || c == "." || c == "" || len(c) > 255 || strings.HasPrefix(c, ReservedPrefix) {
				t.Fatalf("CleanName(%q) = %q: component %q", in, out, c)
			}
		}
		if path.Clean(out) != out {
			t.Fatalf("CleanName(%q) = %q, which path.Clean changes to %q", in, out, path.Clean(out))
		}
		if j := path.Join("/root", out); j != "/root/"+out {
			t.Fatalf("CleanName(%q) = %q leaves the root: %q", in, out, j)
		}
	}
	again, err := CleanName(out)
	if err != nil || again != out {
		t.Fatalf("CleanName(CleanName(%q)) = %q, %v; want %q", in, again, err, out)
	}
	if out != in && out+"/" != in {
		t.Fatalf("CleanName(%q) = %q: more than a trailing slash changed", in, out)
	}
}

func FuzzCleanName(f *testing.F) {
	// More seeds are in testdata/fuzz/FuzzCleanName.
	for _, s := range []string{"", "a/b", "a/b/", "../x", "/abs", "a\x00b", "x/../../evil", ".", "a//b"} {
		f.Add(s)
	}
	f.Fuzz(checkCleanName)
}
