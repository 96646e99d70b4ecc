package broker

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/curve"
)

func TestSelects(t *testing.T) {
	labels := map[string]string{"role": "web", "dc": "par1"}
	for _, c := range []struct {
		hosts  []string
		labels map[string]string
		want   bool
	}{
		{nil, nil, true},
		{[]string{"web*"}, nil, true},
		{[]string{"db*", "web?"}, nil, true},
		{[]string{"db*"}, nil, false},
		{nil, map[string]string{"role": "web"}, true},
		{nil, map[string]string{"role": "web", "dc": "par1"}, true},
		{nil, map[string]string{"role": "db"}, false},
		{nil, map[string]string{"rack": ""}, false},
		{[]string{"web3"}, map[string]string{"dc": "ams1"}, false},
	} {
		if got := selects("web3", labels, c.hosts, c.labels); got != c.want {
			t.Errorf("%v %v: %v", c.hosts, c.labels, got)
		}
	}
}

func TestMetricsAddr(t *testing.T) {
	for _, c := range []struct{ m, remote, want string }{
		{"", "10.0.0.5:40000", ""},
		{":9750", "10.0.0.5:40000", "10.0.0.5:9750"},
		{":9750", "[fd00::5]:40000", "[fd00::5]:9750"},
		{"192.168.1.2:9100", "10.0.0.5:40000", "192.168.1.2:9100"},
		{":9750", "@", "127.0.0.1:9750"}, // an ipc link
		{"junk", "10.0.0.5:40000", ""},
	} {
		if got := metricsAddr(c.m, c.remote); got != c.want {
			t.Errorf("%q from %q: %q, want %q", c.m, c.remote, got, c.want)
		}
	}
}

// A key list is re-read when the file changes; a bad line lists nothing
// (fail closed); a missing file lists nothing.
func TestKeyList(t *testing.T) {
	a, _ := curve.GenerateKeyPair()
	b, _ := curve.GenerateKeyPair()
	p := filepath.Join(t.TempDir(), "fleet-keys")
	k := &KeyList{Path: p}
	if k.Contains(a.Public[:]) {
		t.Fatal("missing file lists a key")
	}
	os.WriteFile(p, []byte("# agents\n"+a.Public.String()+" web1\n"), 0o600)
	k.checked = time.Time{}
	if !k.Contains(a.Public[:]) || k.Contains(b.Public[:]) {
		t.Fatal("first load")
	}
	os.WriteFile(p, []byte(a.Public.String()+"\n"+b.Public.String()+"\n"), 0o600)
	k.checked = time.Time{}
	if !k.Contains(b.Public[:]) {
		t.Fatal("an added key is not seen")
	}
	os.WriteFile(p, []byte(a.Public.String()+"\nnot-a-key\n"), 0o600)
	k.checked = time.Time{}
	if k.Contains(a.Public[:]) {
		t.Fatal("a file with a bad line still admits keys")
	}
	var none *KeyList
	if none.Contains(a.Public[:]) || (&KeyList{}).Contains(a.Public[:]) {
		t.Fatal("no list admits a key")
	}
}
