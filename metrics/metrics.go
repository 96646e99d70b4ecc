// Package metrics defines every zp_ metric that zpd exports. Metrics live
// in a registry the caller owns (never the global one), so that tests and
// embedders can run several brokers in one process.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds zpd's collectors. Their methods are safe for concurrent use.
type Metrics struct {
	Sessions          prometheus.Gauge
	SessionsDetached  prometheus.Gauge
	SessionsOpened    *prometheus.CounterVec // result: new, resumed
	SessionsReaped    prometheus.Counter
	Connections       prometheus.Gauge
	HandshakeFailures *prometheus.CounterVec // reason
	ExecStarted       prometheus.Counter
	ExecFinished      *prometheus.CounterVec // result: exited_zero, exited_nonzero, signaled, failed_to_start, lost
	ExecRunning       prometheus.Gauge
	ExecDuration      prometheus.Histogram
	Bytes             *prometheus.CounterVec // direction: in, out; kind: exec, file, job
	Errors            *prometheus.CounterVec // code
	Dropped           *prometheus.CounterVec // socket
	JobsByState       *prometheus.GaugeVec   // state
	JobFollowers      prometheus.Gauge
	JobPublished      prometheus.Counter
	TransferFiles     *prometheus.CounterVec // result: copied, skipped, failed
	TransferBytes     *prometheus.CounterVec // kind: sent, received, skipped, resumed
	Resent            prometheus.Counter
	SubsRefused       *prometheus.CounterVec // reason: unauthorised, limit, not_a_subscription
	LimitRefusals     *prometheus.CounterVec // limit: max-sessions-per-user, max-commands, …
	RelayBytes        *prometheus.CounterVec // kind: published, fetched (a broadcast relay's)
}

// New creates the collectors and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_sessions", Help: "Sessions held by the broker, attached or waiting for their client to resume.",
		}),
		SessionsDetached: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_sessions_detached", Help: "Sessions whose client connection is gone, within their grace period.",
		}),
		SessionsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_sessions_opened_total", Help: "OPEN requests accepted, by result (new, resumed).",
		}, []string{"result"}),
		SessionsReaped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_sessions_reaped_total", Help: "Sessions dropped because their client did not come back within the grace period.",
		}),
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_connections", Help: "Authenticated connections on the control socket.",
		}),
		HandshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_handshake_failures_total", Help: "ZMTP handshakes that failed, by reason.",
		}, []string{"reason"}),
		ExecStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_exec_started_total", Help: "Commands started.",
		}),
		ExecFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_exec_finished_total", Help: "Commands finished, by result.",
		}, []string{"result"}),
		ExecRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_exec_running", Help: "Commands running now.",
		}),
		ExecDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "zp_exec_duration_seconds", Help: "Run time of finished commands.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_bytes_total", Help: "Payload octets moved, by direction (in: from clients) and kind (live: an agent's publications from its hub's or relay's XPUB).",
		}, []string{"direction", "kind"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_errors_total", Help: "ERROR messages sent to clients, by code.",
		}, []string{"code"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_dropped_messages_total", Help: "Messages dropped for a slow peer, by socket.",
		}, []string{"socket"}),
		JobsByState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zp_jobs", Help: "Background jobs known to the broker, by state.",
		}, []string{"state"}),
		JobFollowers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zp_job_followers", Help: "Subscribers connected to the publish socket.",
		}),
		JobPublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_job_published_bytes_total", Help: "Job output octets published on the XPUB socket (once per message, not per subscriber).",
		}),
		TransferFiles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_transfer_files_total", Help: "Files handled by copies, by result.",
		}, []string{"result"}),
		TransferBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_transfer_bytes_total", Help: "File octets, by kind (received, sent, skipped, resumed).",
		}, []string{"kind"}),
		Resent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zp_resent_bytes_total", Help: "Stream octets sent again after a session was resumed.",
		}),
		SubsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_subscriptions_refused_total", Help: "Subscriptions the publish socket refused, by reason (unauthorised, limit, not_a_subscription).",
		}, []string{"reason"}),
		LimitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_limit_refusals_total", Help: "Requests refused with ERROR 429 because a limit was reached, by limit (the zpd flag that sets it).",
		}, []string{"limit"}),
		RelayBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zp_relay_bytes_total", Help: "Octets of broadcasts this agent relayed: republished once on its XPUB (published), or sent to its children's PUB_FETCH (fetched).",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.RelayBytes, m.Resent, m.Sessions, m.SessionsDetached, m.SessionsOpened, m.SessionsReaped, m.Connections,
		m.HandshakeFailures, m.ExecStarted, m.ExecFinished, m.ExecRunning, m.ExecDuration, m.Bytes, m.Errors,
		m.Dropped, m.JobsByState, m.JobFollowers, m.JobPublished, m.TransferFiles, m.TransferBytes, m.SubsRefused, m.LimitRefusals)
	return m
}
