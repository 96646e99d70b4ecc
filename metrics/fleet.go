package metrics

import "github.com/prometheus/client_golang/prometheus"

// Fleet holds a hub's collectors (docs/PROTOCOL.md §13). A zpd registers
// them only when it is a hub. Their methods are safe for concurrent use.
type Fleet struct {
	Agents         *prometheus.GaugeVec   // state: up, lost
	Tunnels        prometheus.Gauge       // open tunnels
	TunnelsOpened  *prometheus.CounterVec // result: ok, refused, unknown_agent, limit
	RelayedBytes   *prometheus.CounterVec // direction: to_agent, to_client
	Joins          *prometheus.CounterVec // result: ok, unauthorised, conflict
	AgentsReplaced prometheus.Counter
	Publications   prometheus.Gauge   // publications stored (shared stdin)
	PublishedBytes prometheus.Counter // octets clients published
	PubFetchBytes  prometheus.Counter // octets agents fetched back
	FleetJobs      prometheus.Gauge   // fleet job records kept
}

// NewFleet creates the hub's collectors and registers them with reg.
func NewFleet(reg prometheus.Registerer) *Fleet {
	m := &Fleet{
		Agents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zp_fleet_agents", Help: "Agents the hub lists, by state (up, lost).",
		}, []string{"state"}),
		Tunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_fleet_tunnels", Help: "Tunnels open between fleet clients and agents.",
		}),
		TunnelsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_fleet_tunnels_opened_total", Help: "TUNNEL requests, by result (ok, refused by the agent, unknown_agent, limit, lost).",
		}, []string{"result"}),
		RelayedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_fleet_relayed_bytes_total", Help: "Tunnel payload octets relayed, by direction (to_agent, to_client).",
		}, []string{"direction"}),
		Joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_fleet_joins_total", Help: "JOIN requests, by result (ok, unauthorised, conflict, bad_request).",
		}, []string{"result"}),
		AgentsReplaced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_fleet_links_replaced_total", Help: "Agent links closed because the same agent joined again.",
		}),
		Publications: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_fleet_publications", Help: "Publications (a fleet command's shared stdin) the hub stores.",
		}),
		PublishedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_fleet_published_bytes_total", Help: "Octets clients published to the fleet, each stored and published once.",
		}),
		PubFetchBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_fleet_publication_fetched_bytes_total", Help: "Octets of publications agents fetched to repair what they missed.",
		}),
		FleetJobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_fleet_jobs", Help: "Fleet job records the hub keeps.",
		}),
	}
	for _, s := range []string{"up", "lost"} {
		m.Agents.WithLabelValues(s)
	}
	reg.MustRegister(m.Agents, m.Tunnels, m.TunnelsOpened, m.RelayedBytes, m.Joins, m.AgentsReplaced,
		m.Publications, m.PublishedBytes, m.PubFetchBytes, m.FleetJobs)
	return m
}
