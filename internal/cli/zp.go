package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/client"
)

// connFlags are the flags every zp/zpc command shares to reach a zpd.
type connFlags struct {
	insecure       bool
	port           int
	login          string
	timeout        time.Duration
	connectTimeout time.Duration
	quiet          bool
	acceptNew      bool
	reconnect      time.Duration
}

// reconnectFor is how long a command that can continue after a lost
// connection keeps trying.
func (f *connFlags) reconnectFor() time.Duration { return f.reconnect }

// register adds the flags to c; portShort is the port's one-letter form
// ("p" for zp as ssh, "P" for zpc as scp, whose -p preserves).
func (f *connFlags) register(c *cobra.Command, portShort string) {
	fs := c.PersistentFlags()
	fs.BoolVar(&f.insecure, "insecure", false, "connect without CURVE encryption (only to a zpd started with --insecure)")
	fs.IntVarP(&f.port, "port", portShort, 0, "zpd port (default 5750)")
	fs.StringVarP(&f.login, "login", "l", "", "remote user (as user@host)")
	fs.DurationVar(&f.timeout, "timeout", 0, "give up when the server is silent this long (default: the server's, 5s)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 5*time.Second, "give up connecting after this long")
	fs.BoolVarP(&f.quiet, "quiet", "q", false, "print no diagnostics of zp's own")
	fs.DurationVar(&f.reconnect, "reconnect-for", time.Minute, "keep trying this long to reconnect after the connection is lost")
	fs.BoolVar(&f.acceptNew, "accept-new", false, "pin an unknown host's key without asking (scripts); a changed key is still refused")
}

// dial opens a session with the target.
func (f *connFlags) dial(ctx context.Context, io *IO, hostArg string, opts ...func(*client.Config)) (*client.Session, Target, error) {
	t, err := ParseTarget(hostArg, f.port)
	if err != nil {
		return nil, t, withCode(ExitFailure, err)
	}
	if f.login != "" {
		t.User = f.login
	}
	return f.dialTarget(ctx, io, t, opts...)
}

// dialTarget opens a session with a parsed target.
func (f *connFlags) dialTarget(ctx context.Context, io *IO, t Target, opts ...func(*client.Config)) (*client.Session, Target, error) {
	cfg := client.Config{
		Endpoint:       t.Endpoint,
		User:           t.remoteUser(),
		ConnectTimeout: f.connectTimeout,
		Timeout:        f.timeout,
		ClientName:     "zp/" + client.Version,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if f.insecure {
		cfg.Insecure = true
	} else if err := f.secure(io, t, &cfg); err != nil {
		return nil, t, withCode(ExitFailure, err)
	}
	s, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, t, withCode(ExitFailure, describeConnectError(t, err))
	}
	return s, t, nil
}

// describeConnectError turns a dial failure into a sentence for users.
func describeConnectError(t Target, err error) error {
	var hc *client.HostKeyChangedError
	if errors.As(err, &hc) {
		return hostKeyChanged(hc)
	}
	var uh *client.UnknownHostError
	if errors.As(err, &uh) && uh.Err != nil {
		return uh.Err // our own refusal (confirmHost)
	}
	if errors.Is(err, client.ErrServerInsecure) {
		return fmt.Errorf("%s runs without encryption (zpd --insecure): connect with --insecure", t.Host)
	}
	var we *client.Error
	if errors.As(err, &we) {
		switch we.Code {
		case client.CodeUnauthorised:
			return fmt.Errorf("%s refused: %s", t.Host, we.Reason)
		}
		return fmt.Errorf("%s: %s", t.Host, we.Reason)
	}
	var he *client.HandshakeError
	if errors.As(err, &he) {
		switch {
		case he.Reason == client.HandshakeMechanism && strings.Contains(he.Error(), "server-key="):
			return fmt.Errorf("cannot connect to %s: security mismatch: it requires CURVE encryption; drop --insecure", t.Host)
		case he.Refused != "" && t.fleetHub:
			return fmt.Errorf("%s refused our key (%s): add the output of 'zp keygen' (id_curve.pub) to the hub's --fleet-clients", t.Host, he.Refused)
		case he.Refused != "":
			return fmt.Errorf("%s refused our key (%s): add %s to ~%s/.config/zp/authorized_keys there", t.Host, he.Refused, "the output of 'zp keygen' (id_curve.pub)", t.remoteUser())
		case he.Reason == client.HandshakeMechanism:
			return fmt.Errorf("cannot connect to %s: security mismatch (%v); is zpd running with --insecure, or are you?", t.Host, he.Err)
		case he.Reason == client.HandshakeTimeout:
			return fmt.Errorf("cannot connect to %s: handshake timeout", t.Host)
		}
		return fmt.Errorf("cannot connect to %s: handshake failed (%s): %v", t.Host, he.Reason, he.Err)
	}
	return err
}

type zpOptions struct {
	conn      connFlags
	noStdin   bool
	env       []string
	async     bool
	stdinFile string
	fleet     fleetExecOptions
	io        *IO
}

// NewZPCmd builds the zp command tree.
func NewZPCmd(io *IO) *cobra.Command {
	opts := &zpOptions{io: io}
	root := newRoot("zp [flags] [user@]host[:port] command [args...]", "run commands on remote hosts through zpd")
	root.Long = `zp runs a command on a remote host through its zpd, like ssh: local stdin goes to
the command, its stdout and stderr come back separately, and zp exits with its exit code.

The host is [user@]host[:port] (default port 5750), or a ZeroMQ endpoint:
[user@]tcp://host:port, or ipc:///path for a zpd on this machine.
Arguments are passed to the command as given; no remote shell parses them
(run sh -c '...' for shell syntax).

Exit status: the remote command's exit code; 128+N when it died of signal N;
127 when the command was not found, 126 when it could not be executed;
255 when zp itself failed (connection, authentication, usage).

Ctrl-C, SIGTERM and SIGHUP are forwarded to the remote process group; a third
Ctrl-C gives up and hangs up the command.

Background jobs: zp --async host cmd prints a job id and exits; then
  zp jobs host | zp job status|follow|wait|kill|rm host ID
` + fleetHelp
	root.Args = cobra.ArbitraryArgs
	root.Flags().SetInterspersed(false)
	opts.conn.register(root, "p")
	root.Flags().BoolVarP(&opts.noStdin, "no-stdin", "n", false, "do not send stdin (the command reads /dev/null)")
	root.Flags().StringArrayVarP(&opts.env, "env", "e", nil, "set NAME=VALUE in the command's environment (repeatable)")
	root.Flags().BoolVar(&opts.async, "async", false, "start the command as a background job, print its id and exit")
	root.Flags().StringVar(&opts.stdinFile, "stdin-file", "", "with --async: upload FILE as the job's stdin (default /dev/null)")
	opts.fleet.register(root, &opts.conn)
	root.RunE = func(c *cobra.Command, args []string) error {
		if err := opts.fleet.check(c); err != nil {
			return err
		}
		if opts.fleet.hub != "" {
			return fleetExecRun(c.Context(), opts, args)
		}
		if len(args) < 2 {
			return withCode(ExitUsage, fmt.Errorf("usage: %s", c.Use))
		}
		return zpRun(c.Context(), opts, args[0], args[1:])
	}
	root.AddCommand(newKeygenCmd(io), newJobsCmd(io, &opts.conn), newJobCmd(io, &opts.conn), newFleetCmd(io, &opts.conn))
	root.AddCommand(&cobra.Command{
		Use: "version", Short: "print zp's version", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintln(io.Out, "zp", client.Version)
			return nil
		},
	})
	return root
}

// MainZP runs zp with args and returns the process exit code.
func MainZP(ctx context.Context, args []string, io *IO) int {
	defer startProfile(io, "zp")()
	root := NewZPCmd(io)
	if fleetFirst(root, args) {
		root.ResetCommands() // the first positional is the remote command
	}
	root.SetArgs(args)
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	err := root.ExecuteContext(ctx)
	return exitCode("zp", io.Err, err, ExitFailure)
}

// localEnv is what zp sends along by default, as ssh's SendEnv LANG LC_*.
func localEnv(getenv func(string) string, extra []string) (map[string]string, error) {
	env := map[string]string{}
	for _, k := range []string{"LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "TZ", "TERM"} {
		if v := getenv(k); v != "" {
			env[k] = v
		}
	}
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: want NAME=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

func zpRun(ctx context.Context, opts *zpOptions, hostArg string, argv []string) error {
	io := opts.io
	env, err := localEnv(io.Getenv, opts.env)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	if opts.async {
		return asyncRun(ctx, opts, hostArg, argv, env)
	}
	if opts.stdinFile != "" {
		return withCode(ExitUsage, errors.New("--stdin-file goes with --async (otherwise redirect stdin: zp host cmd < FILE)"))
	}
	// Forward signals; SIGPIPE is caught so that a closed stdout becomes an
	// error we handle (hang up the command) rather than sudden death.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	defer signal.Stop(sigc)

	host := hostArg
	if t, err := ParseTarget(hostArg, opts.conn.port); err == nil {
		host = t.Host
	}
	s, t, err := opts.conn.dial(ctx, io, hostArg, func(c *client.Config) {
		// Survive a broken link: reconnect and resume the session.
		c.Resume = true
		c.ReconnectFor = opts.conn.reconnectFor()
		if opts.conn.quiet {
			return
		}
		c.OnLinkLost = func(cause error) {
			fmt.Fprintf(io.Err, "zp: connection to %s lost (%v); reconnecting\n", host, cause)
		}
		c.OnLinkBack = func(after time.Duration) {
			fmt.Fprintf(io.Err, "zp: reconnected to %s after %v\n", host, after.Round(time.Millisecond))
		}
	})
	if err != nil {
		return err
	}
	defer s.Close()

	names := make(chan string, 8)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		ints := 0
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigc:
				if sig == syscall.SIGPIPE {
					continue
				}
				if sig == syscall.SIGINT {
					ints++
					if ints >= 3 {
						if !opts.conn.quiet {
							fmt.Fprintln(io.Err, "zp: interrupted three times; hanging up the remote command")
						}
						cancel()
						return
					}
				}
				select {
				case names <- strings.TrimPrefix(unixSignalName(sig), "SIG"):
				default:
				}
			}
		}
	}()

	req := client.ExecRequest{Argv: argv, Env: env, Stdout: io.Out, Stderr: io.Err, Signals: names}
	if !opts.noStdin {
		req.Stdin = io.In
		if io.InFile != nil {
			growPipe(io.InFile)
		}
	}
	st, err := s.Exec(ctx, req)
	if err != nil {
		var oe *client.OutputError
		var we *client.Error
		switch {
		case errors.As(err, &oe) && errors.Is(oe.Err, syscall.EPIPE):
			return withCode(128+int(syscall.SIGPIPE), nil)
		case errors.Is(err, context.Canceled):
			return withCode(128+int(syscall.SIGINT), nil)
		case errors.As(err, &we):
			return withCode(ExitFailure, fmt.Errorf("%s: %s", t.Host, we.Reason))
		case errors.Is(err, client.ErrSessionGone):
			return withCode(ExitFailure, fmt.Errorf("%s: %v; the remote command was hung up", t.Host, err))
		case errors.Is(err, client.ErrTimeout), strings.Contains(err.Error(), "gave up reconnecting"):
			return withCode(ExitFailure, fmt.Errorf("lost contact with %s: %v; the remote command gets SIGHUP when zpd's grace period ends", t.Host, err))
		}
		return withCode(ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
	}
	if st.Status == client.FailedToStart && st.Message != "" {
		fmt.Fprintf(io.Err, "zp: %s\n", st.Message)
	}
	return exitStatus(st)
}

// exitStatus turns a remote exit into zp's exit.
func exitStatus(st *client.ExitStatus) error {
	if code := st.ExitCode(); code != 0 {
		return withCode(code, nil)
	}
	return nil
}

func unixSignalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		switch s {
		case syscall.SIGINT:
			return "INT"
		case syscall.SIGTERM:
			return "TERM"
		case syscall.SIGHUP:
			return "HUP"
		case syscall.SIGQUIT:
			return "QUIT"
		case syscall.SIGUSR1:
			return "USR1"
		case syscall.SIGUSR2:
			return "USR2"
		}
	}
	return sig.String()
}

// growPipe enlarges a pipe we read from to 1 MiB (the unprivileged
// maximum), so that bulk stdin arrives in large reads and large frames.
// Anything that is not a pipe is left alone.
func growPipe(f *os.File) {
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20)
	})
}
