package shellquote

import "testing"

func TestJoin(t *testing.T) {
	for _, c := range []struct {
		argv []string
		want string
	}{
		{[]string{"ls", "-l"}, "ls -l"},
		{[]string{"echo", "a b"}, "echo 'a b'"},
		{[]string{"sh", "-c", "it's"}, `sh -c 'it'\''s'`},
		{[]string{"printf", ""}, "printf ''"},
		{[]string{"x=1", "y/z:2,@%+."}, "x=1 y/z:2,@%+."},
		{[]string{"a;b", "$HOME"}, "'a;b' '$HOME'"},
	} {
		if got := Join(c.argv); got != c.want {
			t.Errorf("%q: %s, want %s", c.argv, got, c.want)
		}
	}
	if got := Join([]string{"sh", "-c", "echo 'a b'", ""}); got != `sh -c 'echo '\''a b'\''' ''` {
		t.Errorf("Join: %s", got)
	}
}
