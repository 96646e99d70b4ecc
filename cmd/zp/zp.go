package main

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
	"github.com/zpipes/zp/internal/cli"
)

type zpOptions struct {
	conn      cli.ConnFlags
	noStdin   bool
	env       []string
	async     bool
	stdinFile string
	fleet     fleetExecOptions
	io        *cli.IO
}

// NewZPCmd builds the zp command tree.
func NewZPCmd(io *cli.IO) *cobra.Command {
	opts := &zpOptions{io: io}
	root := cli.NewRoot("zp [flags] [user@]host[:port] command [args...]", "run commands on remote hosts through zpd")
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
	opts.conn.Register(root, "p")
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
			return cli.WithCode(cli.ExitUsage, fmt.Errorf("usage: %s", c.Use))
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
func MainZP(ctx context.Context, args []string, io *cli.IO) int {
	defer cli.StartProfile(io, "zp")()
	root := NewZPCmd(io)
	if fleetFirst(root, args) {
		root.ResetCommands() // the first positional is the remote command
	}
	root.SetArgs(args)
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	err := root.ExecuteContext(ctx)
	return cli.ExitCode("zp", io.Err, err, cli.ExitFailure)
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
		return cli.WithCode(cli.ExitUsage, err)
	}
	if opts.async {
		return asyncRun(ctx, opts, hostArg, argv, env)
	}
	if opts.stdinFile != "" {
		return cli.WithCode(cli.ExitUsage, errors.New("--stdin-file goes with --async (otherwise redirect stdin: zp host cmd < FILE)"))
	}
	// Forward signals; SIGPIPE is caught so that a closed stdout becomes an
	// error we handle (hang up the command) rather than sudden death.
	// Notify and Stop each take a round trip to the runtime's signal
	// thread per signal, 0.3 ms apiece on a 2-CPU VM (as much as the CURVE
	// handshake): Notify runs while we connect and is waited for before
	// the command starts; Stop is not waited for at all. A signal that
	// comes before Notify is done acts as it would on ssh while it
	// connects: zp dies of it, and nothing has started remotely.
	sigc := make(chan os.Signal, 8)
	sigReady := make(chan struct{})
	go func() {
		defer close(sigReady)
		signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
			syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	}()
	defer func() {
		go func() {
			<-sigReady
			signal.Stop(sigc)
		}()
	}()

	host := hostArg
	if t, err := cli.ParseTarget(hostArg, opts.conn.Port); err == nil {
		host = t.Host
	}
	s, t, err := opts.conn.Dial(ctx, io, hostArg, func(c *client.Config) {
		// Survive a broken link: reconnect and resume the session.
		c.Resume = true
		c.ReconnectFor = opts.conn.ReconnectFor()
		if opts.conn.Quiet {
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
						if !opts.conn.Quiet {
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
	<-sigReady
	st, err := s.Exec(ctx, req)
	if err != nil {
		var oe *client.OutputError
		var we *client.Error
		switch {
		case errors.As(err, &oe) && errors.Is(oe.Err, syscall.EPIPE):
			return cli.WithCode(128+int(syscall.SIGPIPE), nil)
		case errors.Is(err, context.Canceled):
			return cli.WithCode(128+int(syscall.SIGINT), nil)
		case errors.As(err, &we):
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %s", t.Host, we.Reason))
		case errors.Is(err, client.ErrSessionGone):
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v; the remote command was hung up", t.Host, err))
		case errors.Is(err, client.ErrTimeout), strings.Contains(err.Error(), "gave up reconnecting"):
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("lost contact with %s: %v; the remote command gets SIGHUP when zpd's grace period ends", t.Host, err))
		}
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
	}
	if st.Status == client.FailedToStart && st.Message != "" {
		fmt.Fprintf(io.Err, "zp: %s\n", st.Message)
	}
	return exitStatus(st)
}

// exitStatus turns a remote exit into zp's exit.
func exitStatus(st *client.ExitStatus) error {
	if code := st.ExitCode(); code != 0 {
		return cli.WithCode(code, nil)
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
