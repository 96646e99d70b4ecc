package broker

import "testing"

func TestGrants(t *testing.T) {
	g := newGrants("p/")
	alice, bob := []byte("alice-key"), []byte("bob-key")
	g.grant(bob, "j/AAAA")
	g.grant(bob, "j/BBBBBB")
	g.grant(alice, "j/CCCC")
	cases := []struct {
		key  []byte
		sub  string
		want bool
	}{
		{alice, "", false},
		{alice, "j/", false},
		{alice, "j/A", false},
		{alice, "j/AAAA", false}, // bob's job
		{alice, "j/AAAA1", false},
		{alice, "j/CCCC", true},
		{alice, "j/CCCCx", true},
		{bob, "j/AAAA1", true},
		{bob, "j/BBBBBB", true},
		{bob, "j/BBBB", false},
		{nil, "j/AAAA", false},
		{alice, "p", false},
		{alice, "p/", true},
		{nil, "p/weather", true},
		{alice, "\x00zp-barrier/", false},
	}
	for _, c := range cases {
		if got := g.permits(c.key, []byte(c.sub)); got != c.want {
			t.Errorf("permits(%s, %q) = %v, want %v", c.key, c.sub, got, c.want)
		}
	}
	g.revoke("j/AAAA")
	if g.permits(bob, []byte("j/AAAA1")) {
		t.Error("revoked topic still permitted")
	}
	if !g.permits(bob, []byte("j/BBBBBB2")) {
		t.Error("revoke took another topic")
	}
	g.revoke("j/BBBBBB")
	g.revoke("j/CCCC")
	if len(g.byKey) != 0 || len(g.byTop) != 0 || len(g.lens) != 0 {
		t.Errorf("grants not forgotten: %v %v %v", g.byKey, g.byTop, g.lens)
	}
}
