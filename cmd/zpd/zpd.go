package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/curve"
)

type zpdOptions struct {
	listen              string
	state               string
	insecure            bool
	insecureAllowRemote bool
	insecureAnyoneRoot  bool
	metrics             string
	logFormat           string
	logLevel            string
	heartbeat           time.Duration
	timeout             time.Duration
	grace               time.Duration
	authorizedKeys      string
	handshakeTimeout    time.Duration
	jobRetention        time.Duration
	maxSubscriptions    int
	memoryLimit         int64
	maxSessions         int
	maxSessionsPerUser  int
	maxCommands         int
	maxCommandsPerUser  int
	maxTransfers        int
	maxTransfersPerUser int
	printKey            bool
	fleet               zpdFleetOptions
	io                  *cli.IO
}

// NewZPDCmd builds the zpd command.
func NewZPDCmd(io *cli.IO) *cobra.Command {
	opts := &zpdOptions{io: io}
	root := cli.NewRoot("zpd [flags]", "the zp daemon: runs commands, jobs and copies for authorised clients")
	root.Args = cobra.NoArgs
	fs := root.Flags()
	fs.StringVar(&opts.listen, "listen", "0.0.0.0:5750", "HOST:PORT (or tcp://HOST:PORT, ipc:///PATH) of the control socket")
	fs.StringVar(&opts.state, "state", defaultStateDir(), "state directory: keys, jobs, partial files")
	fs.BoolVar(&opts.insecure, "insecure", false, "no encryption or authentication (NULL mechanism); loopback only")
	fs.BoolVar(&opts.insecureAllowRemote, "insecure-allow-remote", false, "allow --insecure on a non-loopback address")
	fs.BoolVar(&opts.insecureAnyoneRoot, "insecure-anyone-is-root", false, "allow --insecure on tcp when zpd runs as root: every local user (and anyone who reaches the port) then runs commands as root")
	fs.StringVar(&opts.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics")
	fs.StringVar(&opts.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&opts.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&opts.heartbeat, "heartbeat", time.Second, "heartbeat interval clients are told to use")
	fs.DurationVar(&opts.timeout, "timeout", 5*time.Second, "silence after which a client connection is presumed dead")
	fs.DurationVar(&opts.grace, "grace", time.Minute, "how long a session survives its client's disconnection")
	fs.DurationVar(&opts.handshakeTimeout, "handshake-timeout", 10*time.Second, "drop connections that have not finished the ZMTP handshake in this time")
	opts.jobRetention = 7 * 24 * time.Hour
	fs.Var(dayDuration{&opts.jobRetention}, "job-retention", "keep finished jobs (and their output) this long, e.g. 7d, 12h; 0 keeps them until 'zp job rm'")
	fs.IntVar(&opts.maxSubscriptions, "max-subscriptions", 64, "subscriptions one connection to the publish socket may hold")
	fs.Int64Var(&opts.memoryLimit, "memory-limit", 256<<20, "soft memory limit in octets for the Go runtime (GOMEMLIMIT); 0 for none")
	fs.IntVar(&opts.maxSessions, "max-sessions", 10000, "sessions open at once, all users together")
	fs.IntVar(&opts.maxSessionsPerUser, "max-sessions-per-user", 256, "sessions one user may have open at once")
	fs.IntVar(&opts.maxCommands, "max-commands", 4096, "commands and background jobs running at once, all users together")
	fs.IntVar(&opts.maxCommandsPerUser, "max-commands-per-user", 1024, "commands and background jobs one user may run at once")
	fs.IntVar(&opts.maxTransfers, "max-transfers", 256, "file transfers (zpc runs) in progress at once, all users together")
	fs.IntVar(&opts.maxTransfersPerUser, "max-transfers-per-user", 32, "file transfers one user may have in progress at once")
	fs.StringVar(&opts.authorizedKeys, "authorized-keys", "", "file of client keys (Z85, one per line) that may act as zpd's own user")
	fs.BoolVar(&opts.printKey, "print-key", false, "print the server's public key and fingerprint (creating the key pair if needed) and exit")
	opts.fleet.register(fs)
	root.RunE = func(c *cobra.Command, _ []string) error {
		if opts.printKey {
			return printKeyRun(opts)
		}
		return zpdRun(c.Context(), opts)
	}
	return root
}

// MainZPD runs zpd and returns the process exit code.
func MainZPD(ctx context.Context, args []string, io *cli.IO) int {
	if len(args) > 0 && args[0] == broker.ShimArg {
		return broker.RunShim(args[1:])
	}
	cleanInheritedSignals()
	defer cli.StartProfile(io, "zpd")()
	root := NewZPDCmd(io)
	root.SetArgs(args)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	return cli.ExitCode("zpd", io.Err, root.ExecuteContext(ctx), 1)
}

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/zpd"
	}
	if d, err := os.UserHomeDir(); err == nil {
		return filepath.Join(d, ".local", "state", "zpd")
	}
	return "zpd-state"
}

// listenEndpoint turns --listen into a ZeroMQ endpoint.
func listenEndpoint(s string) (string, error) {
	if strings.Contains(s, "://") {
		if strings.HasPrefix(s, "tcp://") || strings.HasPrefix(s, "ipc://") {
			return s, nil
		}
		return "", fmt.Errorf("--listen %q: want HOST:PORT, tcp://HOST:PORT or ipc:///PATH", s)
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", fmt.Errorf("--listen %q: %v", s, err)
	}
	return "tcp://" + s, nil
}

// isLoopback reports whether a tcp:// endpoint only listens on loopback
// (ipc is local by nature).
func isLoopback(ep string) bool {
	if strings.HasPrefix(ep, "ipc://") {
		return true
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(ep, "tcp://"))
	if err != nil || host == "" || host == "*" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func zpdRun(ctx context.Context, opts *zpdOptions) error {
	io := opts.io
	log, err := cli.NewLogger(io.Err, opts.logFormat, opts.logLevel)
	if err != nil {
		return cli.WithCode(2, err)
	}
	ep, err := listenEndpoint(opts.listen)
	if err != nil {
		return cli.WithCode(2, err)
	}
	if err := os.MkdirAll(opts.state, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	cli.TuneGC(opts.memoryLimit) // GOMEMLIMIT, if set, wins
	cfg := broker.Config{
		Endpoint:  ep,
		StateDir:  opts.state,
		Logger:    log,
		Heartbeat: opts.heartbeat,
		Timeout:   opts.timeout,
		Grace:     opts.grace,

		HandshakeTimeout: opts.handshakeTimeout,
		JobRetention:     opts.jobRetention,
		MaxSubscriptions: opts.maxSubscriptions,

		MaxSessions:         opts.maxSessions,
		MaxSessionsPerUser:  opts.maxSessionsPerUser,
		MaxCommands:         opts.maxCommands,
		MaxCommandsPerUser:  opts.maxCommandsPerUser,
		MaxTransfers:        opts.maxTransfers,
		MaxTransfersPerUser: opts.maxTransfersPerUser,
	}
	for name, v := range map[string]int{"max-sessions": opts.maxSessions, "max-sessions-per-user": opts.maxSessionsPerUser,
		"max-commands": opts.maxCommands, "max-commands-per-user": opts.maxCommandsPerUser,
		"max-transfers": opts.maxTransfers, "max-transfers-per-user": opts.maxTransfersPerUser} {
		if v < 1 {
			return cli.WithCode(2, fmt.Errorf("--%s %d: want at least 1", name, v))
		}
	}
	if opts.jobRetention == 0 {
		cfg.JobRetention = -1
	}
	if opts.insecure && (opts.fleet.hub() || opts.fleet.agent()) {
		return cli.WithCode(2, errors.New("a fleet hub or agent needs CURVE: drop --insecure"))
	}
	// Bound before the broker so that a hub or an agent can tell others
	// where its /metrics are.
	var metricsLn net.Listener
	if opts.metrics != "" {
		if metricsLn, err = net.Listen("tcp", opts.metrics); err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		defer metricsLn.Close()
	}
	if opts.insecure {
		if !isLoopback(ep) && !opts.insecureAllowRemote {
			return cli.WithCode(2, fmt.Errorf("--insecure on %s would let anyone on the network run commands as %s; listen on 127.0.0.1 or add --insecure-allow-remote", opts.listen, currentUserName()))
		}
		// Without CURVE nobody is authenticated: every client acts as
		// zpd's own user. On tcp, that is every local user at least.
		if os.Geteuid() == 0 && !strings.HasPrefix(ep, "ipc://") {
			if !opts.insecureAnyoneRoot {
				return cli.WithCode(2, fmt.Errorf("--insecure as root on %s would let every local user (and anyone who can reach the port) run commands as root; use CURVE (drop --insecure), listen on ipc:///PATH (its file mode decides who may connect), or add --insecure-anyone-is-root", opts.listen))
			}
			log.Warn("--insecure-anyone-is-root: every client of this port runs commands as root, unauthenticated", "listen", ep)
		}
		log.Warn("running without encryption or authentication (--insecure): every client acts as zpd's user", "listen", ep, "user", currentUserName())
	} else {
		kp, created, err := serverKey(opts.state)
		if err != nil {
			return err
		}
		if created {
			log.Info("created server key pair", "state", opts.state, "fingerprint", kp.Public.Fingerprint())
		}
		self, err := broker.CurrentAccount()
		if err != nil {
			return err
		}
		if opts.authorizedKeys != "" {
			if _, err := os.Stat(opts.authorizedKeys); err != nil {
				return cli.WithCode(2, fmt.Errorf("--authorized-keys: %w", err))
			}
		}
		ring := &broker.Keyring{Global: opts.authorizedKeys, Self: self, Log: log}
		metricsAddr := ""
		if metricsLn != nil {
			metricsAddr = metricsLn.Addr().String()
		}
		fleetAgents, fleetClients, err := opts.fleet.configure(&cfg, kp, metricsAddr)
		if err != nil {
			return cli.WithCode(2, err)
		}
		cfg.Mechanism = &curve.Server{Key: kp, Authorize: func(k curve.PublicKey) error {
			// A hub also admits its agents and fleet clients (nil lists
			// admit nobody); what each may do is decided after.
			if !ring.Known(k) && !fleetAgents.Contains(k[:]) && !fleetClients.Contains(k[:]) {
				return errors.New("not authorised")
			}
			return nil
		}}
		cfg.AnnounceKey = kp.Public.String()
		cfg.Authorize = ring.Authorize
		log.Info("CURVE", "fingerprint", kp.Public.Fingerprint())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer = reg
	b, err := broker.New(cfg)
	if err != nil {
		return err
	}
	if metricsLn != nil {
		ln := metricsLn
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	}
	log.Info("zpd listening", "endpoint", ep, "addr", b.Addr().String(), "xpub", b.PublishAddr().String(),
		"xsub", b.SubscribeAddr().String(), "state", opts.state)
	return b.Run(ctx)
}

func currentUserName() string {
	if a, err := broker.CurrentAccount(); err == nil {
		return a.Name
	}
	return "this user"
}

func serverKeyPaths(state string) (secret, public string) {
	return filepath.Join(state, "server_curve"), filepath.Join(state, "server_curve.pub")
}

// serverKey loads the server key pair from the state directory, creating
// it on first start.
func serverKey(state string) (curve.KeyPair, bool, error) {
	secret, public := serverKeyPaths(state)
	kp, err := curve.LoadKeyPair(secret)
	if err == nil {
		return kp, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return kp, false, fmt.Errorf("server key: %w", err)
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return kp, false, err
	}
	kp, err = curve.GenerateKeyPair()
	if err != nil {
		return kp, false, err
	}
	if err := curve.WriteKeyFiles(secret, public, kp, false); err != nil {
		return kp, false, fmt.Errorf("server key: %w", err)
	}
	return kp, true, nil
}

func printKeyRun(opts *zpdOptions) error {
	kp, _, err := serverKey(opts.state)
	if err != nil {
		return err
	}
	fmt.Fprintln(opts.io.Out, kp.Public.String())
	fmt.Fprintln(opts.io.Out, kp.Public.Fingerprint())
	return nil
}
