package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/internal/curve"
)

func TestReportedMetrics(t *testing.T) {
	for in, want := range map[string]string{"": "", "0.0.0.0:9750": ":9750", "[::]:9750": ":9750", "127.0.0.1:9100": "127.0.0.1:9100"} {
		if got := reportedMetrics(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestZPDFleetFlags(t *testing.T) {
	kp, _ := curve.GenerateKeyPair()
	keys := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(keys, nil, 0o600)
	for _, c := range []struct {
		o   zpdFleetOptions
		err string
	}{
		{zpdFleetOptions{name: "x"}, "--name goes with --join"},
		{zpdFleetOptions{join: "alice@hub"}, "no user@"},
		{zpdFleetOptions{join: "hub", name: "-bad"}, "--name"},
		{zpdFleetOptions{join: "hub", name: "ok", labels: []string{"role"}}, "want k=v"},
		{zpdFleetOptions{join: "hub", name: "ok", labels: []string{"Role=x"}}, "--label"},
		{zpdFleetOptions{join: "hub", name: "ok", hubKey: "short"}, "--hub-key"},
		{zpdFleetOptions{fleetKeys: "/no/such/file", maxTunnels: 1}, "no such file"},
		{zpdFleetOptions{fleetKeys: keys}, "--max-tunnels"},
	} {
		var cfg broker.Config
		if _, _, err := c.o.configure(&cfg, kp, ""); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%+v: %v, want %q", c.o, err, c.err)
		}
	}
	var cfg broker.Config
	o := zpdFleetOptions{join: "hub.example:6000", name: "web3", labels: []string{"role=web"}, fleetUsers: []string{"deploy"},
		fleetKeys: keys, maxTunnels: 5}
	if _, _, err := o.configure(&cfg, kp, "0.0.0.0:9750"); err != nil {
		t.Fatal(err)
	}
	if a := cfg.Agent; a == nil || a.Hub != "tcp://hub.example:6000" || a.Name != "web3" || a.Labels["role"] != "web" ||
		a.Metrics != ":9750" || a.Users[0] != "deploy" || cfg.Hub == nil || cfg.Hub.MaxTunnels != 5 || cfg.Hub.Metrics != ":9750" {
		t.Fatalf("%+v %+v", cfg.Agent, cfg.Hub)
	}
}
