package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.ExecFinished.WithLabelValues("exited_zero").Inc()
	m.HandshakeFailures.WithLabelValues("unauthorised").Inc()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP zp_handshake_failures_total ZMTP handshakes that failed, by reason.
# TYPE zp_handshake_failures_total counter
zp_handshake_failures_total{reason="unauthorised"} 1
`), "zp_handshake_failures_total"); err != nil {
		t.Fatal(err)
	}
}

// Two brokers in one process: each has its own registry.
func TestOwnRegistry(t *testing.T) {
	New(prometheus.NewRegistry())
	New(prometheus.NewRegistry())
}

func TestFleetLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewFleet(reg)
	m.Agents.WithLabelValues("up").Set(3)
	m.TunnelsOpened.WithLabelValues("ok").Inc()
	m.RelayedBytes.WithLabelValues("to_agent").Add(10)
	m.Joins.WithLabelValues("ok").Inc()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP zp_fleet_agents Agents the hub lists, by state (up, lost).
# TYPE zp_fleet_agents gauge
zp_fleet_agents{state="lost"} 0
zp_fleet_agents{state="up"} 3
`), "zp_fleet_agents"); err != nil {
		t.Fatal(err)
	}
}
