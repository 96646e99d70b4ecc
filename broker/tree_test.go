package broker

import (
	"errors"
	"fmt"
	"testing"

	"github.com/zpipes/zp/internal/curve"
)

func TestPlaceTree(t *testing.T) {
	names := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("a%02d", i)
		}
		return out
	}
	all := func(string) bool { return true }
	// Fanout 2 over 7 relays: a binary heap under the hub.
	got := placeTree(names(7), 2, all)
	want := []string{"", "", "a00", "a00", "a01", "a01", "a02"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fanout 2: %q, want %q", got, want)
	}
	// No node feeds more than the fanout; every agent has a parent that
	// is placed before it (no cycle).
	for _, n := range []int{1, 2, 3, 20, 50} {
		for _, k := range []int{1, 2, 3, 8} {
			agents := names(n)
			p := placeTree(agents, k, all)
			kids := map[string]int{}
			pos := map[string]int{}
			for i, a := range agents {
				pos[a] = i
			}
			for i, q := range p {
				kids[q]++
				if q != "" && pos[q] >= i {
					t.Fatalf("n=%d k=%d: %s hangs from %s, placed after it", n, k, agents[i], q)
				}
			}
			for q, c := range kids {
				if c > k {
					t.Fatalf("n=%d k=%d: %q feeds %d", n, k, q, c)
				}
			}
		}
	}
	// Agents that cannot relay are leaves; with no relay left they hang
	// from the hub.
	agents := []string{"x0", "r1", "x2", "x3", "x4"}
	p := placeTree(agents, 2, func(a string) bool { return a[0] == 'r' })
	want = []string{"", "", "r1", "r1", ""}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Fatalf("non-relays: %q, want %q", p, want)
	}
	for i, q := range p {
		if q != "" && q[0] != 'r' {
			t.Fatalf("%s hangs from %s, which cannot relay", agents[i], q)
		}
	}
}

func TestRelayAddr(t *testing.T) {
	for _, c := range []struct{ relay, remote, want string }{
		{":5751", "10.0.0.7:40000", "tcp://10.0.0.7:5751"},
		{"10.0.0.8:5751", "10.0.0.7:40000", "tcp://10.0.0.8:5751"},
		{"127.0.0.1:5751", "127.0.0.1:40000", "tcp://127.0.0.1:5751"},
		{"127.0.0.1:5751", "10.0.0.7:40000", ""}, // bound to loopback, on another machine
		{"", "10.0.0.7:40000", ""},
		{"ipc:///run/zpd.pub", "10.0.0.7:40000", ""},
		{":5751", "@", ""}, // an ipc link
		{"nonsense", "10.0.0.7:40000", ""},
	} {
		if got := relayAddr(c.relay, c.remote); got != c.want {
			t.Errorf("relayAddr(%q, %q) = %q, want %q", c.relay, c.remote, got, c.want)
		}
	}
}

// TestRelayAdmission: a relay admits its children's keys on the XPUB, for
// the broadcast's topic alone and while it lasts; other keys, and other
// topics, stay refused.
func TestRelayAdmission(t *testing.T) {
	refuse := func(curve.PublicKey) error { return errors.New("not authorised") }
	b := &Broker{grants: newGrants(publicTopicPrefix), cfg: Config{Mechanism: &curve.Server{Authorize: refuse}, StateDir: t.TempDir()}, agent: &agentRunner{}}
	mech := b.relayMechanism().(*curve.Server)
	var child, other curve.PublicKey
	child[0], other[0] = 1, 2
	topic := "f/AAAAAAAAAAAAAAAAAAAAAAAA"
	if mech.Authorize(child) == nil {
		t.Fatal("a child's key admitted before any relay")
	}
	st, end := b.admitChildren(child[:], topic)
	if st == nil || !st.children[string(child[:])] || st.children[string(other[:])] {
		t.Fatal("the relay's store does not hold the child's key alone")
	}
	if err := mech.Authorize(child); err != nil {
		t.Fatalf("the child's key refused while relaying: %v", err)
	}
	if mech.Authorize(other) == nil {
		t.Fatal("another key admitted")
	}
	if !b.grants.permits(child[:], []byte(topic)) {
		t.Fatal("the child may not subscribe to the topic")
	}
	for _, sub := range []string{"", "f/", "f/AAAA", "j/", "f/BBBBBBBBBBBBBBBBBBBBBBBB"} {
		if b.grants.permits(child[:], []byte(sub)) {
			t.Errorf("the child may subscribe to %q", sub)
		}
	}
	if b.grants.permits(other[:], []byte(topic)) {
		t.Error("another key may subscribe to the topic")
	}
	end()
	if mech.Authorize(child) == nil || b.grants.permits(child[:], []byte(topic)) {
		t.Fatal("the child's key still admitted after the broadcast")
	}
	if (&curve.Server{Authorize: refuse}).Authorize(child) == nil {
		t.Fatal("the broker's own mechanism changed")
	}
}
