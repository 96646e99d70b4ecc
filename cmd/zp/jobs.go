package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// ExitNoJob is the exit code for an unknown job id.
const ExitNoJob = 2

// jobError maps a failure of a job command to an exit code.
func jobError(t cli.Target, id string, err error) error {
	var we *client.Error
	if errors.As(err, &we) {
		switch we.Code {
		case client.CodeNotFound:
			return cli.WithCode(ExitNoJob, fmt.Errorf("%s: no job %s", t.Host, id))
		case client.CodeConflict:
			return cli.WithCode(1, fmt.Errorf("%s: %s", t.Host, we.Reason))
		}
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %s", t.Host, we.Reason))
	}
	if errors.Is(err, client.ErrTimeout) {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("lost contact with %s: %v", t.Host, err))
	}
	return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
}

// withSession runs f on a session with host and maps its error as a job
// command's.
func withSession(ctx context.Context, conn *cli.ConnFlags, io *cli.IO, host, id string, f func(*client.Session) error) error {
	s, t, err := conn.Dial(ctx, io, host)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := f(s); err != nil {
		return jobError(t, id, err)
	}
	return nil
}

func newJobsCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "jobs [flags] [user@]host",
		Short: "list your background jobs on a host (and your fleet jobs on a hub)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var jobs []map[string]string
			var fleetJobs []client.FleetJob
			err := withSession(c.Context(), conn, io, args[0], "", func(s *client.Session) (err error) {
				list, err := s.Jobs(c.Context())
				for _, j := range list {
					jobs = append(jobs, j.Fields())
				}
				fleetOnly := client.IsCode(err, client.CodeUnauthorised)
				if err != nil && !fleetOnly {
					return err
				}
				// A hub also lists the fleet jobs recorded by this key.
				fj, ferr := fleetJobsList(c.Context(), s)
				if ferr != nil {
					return ferr
				}
				fleetJobs = fj
				if fleetOnly && fj == nil {
					return err
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, fj := range fleetJobs {
				d := map[string]string{"id": fj.ID, "status": "fleet", "command_line": fj.Command,
					"started": fj.Started.Format(time.RFC3339), "hosts": strconv.Itoa(len(fj.Jobs))}
				for n, id := range fj.Jobs {
					d["job."+n] = id
				}
				jobs = append(jobs, d)
			}
			if asJSON {
				if jobs == nil {
					jobs = []map[string]string{}
				}
				return writeJSON(io, jobs)
			}
			w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTATE\tUSER\tSTARTED\tELAPSED/EXIT\tCOMMAND")
			for _, j := range jobs {
				if j["status"] == "fleet" {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", j["id"], "fleet", "-", j["started"], j["hosts"]+" hosts", j["command_line"])
					continue
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", j["id"], j["status"], j["user"], j["started"], elapsedOrExit(j), j["command_line"])
			}
			return w.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return c
}

func elapsedOrExit(j map[string]string) string {
	if j["status"] == "running" {
		if t, err := time.Parse(time.RFC3339, j["started"]); err == nil {
			return time.Since(t).Round(time.Second).String()
		}
		return "-"
	}
	if s := j["signal"]; s != "" {
		return "SIG" + s
	}
	return "exit " + j["exit_code"]
}

// statusKeys is the order of `zp job status`.
var statusKeys = []string{"id", "status", "command_line", "stdout", "stderr", "pid", "user", "started",
	"ended", "exit_code", "signal", "message", "stdout_bytes", "stderr_bytes"}

func newJobCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	c := &cobra.Command{Use: "job", Short: "inspect, follow, wait for, kill or remove a background job"}
	c.AddCommand(newJobStatusCmd(io, conn), newJobFollowCmd(io, conn), newJobWaitCmd(io, conn),
		newJobKillCmd(io, conn), newJobRmCmd(io, conn))
	return c
}

func newJobStatusCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [flags] [user@]host ID",
		Short: "describe a job (key = value lines, or --json)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if client.IsFleetJobID(args[1]) {
				return fleetJobStatus(c.Context(), io, conn, args[0], args[1], asJSON)
			}
			var info map[string]string
			err := withSession(c.Context(), conn, io, args[0], args[1], func(s *client.Session) (err error) {
				j, err := s.JobStatus(c.Context(), args[1])
				if err == nil {
					info = j.Fields()
				}
				return err
			})
			if err != nil {
				return err
			}
			delete(info, "done")
			if asJSON {
				return writeJSON(io, info)
			}
			for _, k := range statusKeys {
				v, ok := info[k]
				if !ok {
					continue
				}
				if k == "command_line" || k == "message" {
					v = strconv.Quote(v)
				}
				fmt.Fprintf(io.Out, "%s = %s\n", k, v)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return c
}

// writeJSON prints job descriptions with numbers as numbers.
func writeJSON(io *cli.IO, v any) error {
	typed := func(m map[string]string) map[string]any {
		out := make(map[string]any, len(m))
		for k, s := range m {
			switch k {
			case "pid", "exit_code", "stdout_bytes", "stderr_bytes":
				if n, err := strconv.ParseInt(s, 10, 64); err == nil {
					out[k] = n
					continue
				}
			case "done":
				continue
			}
			out[k] = s
		}
		return out
	}
	switch x := v.(type) {
	case map[string]string:
		v = typed(x)
	case []map[string]string:
		l := make([]map[string]any, len(x))
		for i, m := range x {
			l[i] = typed(m)
		}
		v = l
	}
	enc := json.NewEncoder(io.Out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

type followOpts struct {
	stdout, stderr, all bool
	tail                int
	noHistory           bool
}

func newJobFollowCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	var o followOpts
	c := &cobra.Command{
		Use:   "follow [--stdout|--stderr|--all] [flags] [user@]host ID",
		Short: "write a job's output from the start, then live, until it ends; exit with its code",
		Long: `follow writes the job's stdout to stdout and its stderr to stderr, from the start
(or --tail N lines, or --no-history), then live as the job produces it, and exits with the
job's exit code when it ends. Ctrl-C detaches without touching the job. Many followers may
watch one job; a slow one never slows the job or the others.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if !o.stdout && !o.stderr {
				o.all = true
			}
			fo := client.FollowOptions{Tail: o.tail, NoHistory: o.noHistory}
			if o.stdout || o.all {
				fo.Stdout = io.Out
			}
			if o.stderr || o.all {
				fo.Stderr = io.Err
			}
			if client.IsFleetJobID(args[1]) {
				return fleetJobFollow(c.Context(), io, conn, args[0], args[1], fo, true)
			}
			return followRun(c.Context(), io, conn, args[0], args[1], fo)
		},
	}
	c.Flags().BoolVar(&o.stdout, "stdout", false, "follow stdout only")
	c.Flags().BoolVar(&o.stderr, "stderr", false, "follow stderr only")
	c.Flags().BoolVar(&o.all, "all", false, "follow both (default)")
	c.Flags().IntVar(&o.tail, "tail", 0, "start with the last N lines of each stream")
	c.Flags().BoolVar(&o.noHistory, "no-history", false, "only output produced from now on")
	return c
}

func newJobWaitCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "wait [flags] [user@]host ID",
		Short: "wait for a job to end and exit with its exit code",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if client.IsFleetJobID(args[1]) {
				return fleetJobFollow(c.Context(), io, conn, args[0], args[1], client.FollowOptions{}, false)
			}
			return followRun(c.Context(), io, conn, args[0], args[1], client.FollowOptions{})
		},
	}
}

// followRun follows (or, with no streams, waits for) a job; it reconnects
// when the connection drops and continues where it stopped.
func followRun(ctx context.Context, io *cli.IO, conn *cli.ConnFlags, hostArg, id string, fo client.FollowOptions) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	backoff := 200 * time.Millisecond
	var lostSince time.Time          // first loss since output last moved: bounds the retries
	var lostAt time.Time             // latest loss
	var history, live, missed uint64 // ZP_FOLLOW_STATS: over every attempt
	for {
		s, t, err := conn.Dial(ctx, io, hostArg)
		if err == nil && !lostAt.IsZero() {
			if !conn.Quiet {
				fmt.Fprintf(io.Err, "zp: reconnected to %s after %v\n", t.Host, time.Since(lostAt).Round(time.Millisecond))
			}
			lostAt = time.Time{}
		}
		if err != nil {
			if ctx.Err() != nil {
				return cli.WithCode(130, nil)
			}
			if lostSince.IsZero() || time.Since(lostSince) > conn.ReconnectFor() {
				return err
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		res, err := s.Follow(ctx, id, fo)
		s.Close()
		history, live, missed = history+res.History, live+res.Live, missed+res.Missed
		if err == nil {
			if os.Getenv("ZP_FOLLOW_STATS") != "" {
				fmt.Fprintf(io.Err, "zp: follow stats: history=%d live=%d missed=%d\n", history, live, missed)
			}
			return exitStatusCode(res.Info.ExitCode)
		}
		if ctx.Err() != nil {
			return cli.WithCode(130, nil) // detached; the job goes on
		}
		var we *client.Error
		var oe *client.OutputError
		if errors.As(err, &we) || errors.As(err, &oe) {
			return jobError(t, id, err)
		}
		// The connection was lost: continue from where we are.
		if !conn.Quiet {
			fmt.Fprintf(io.Err, "zp: connection to %s lost (%v); reconnecting\n", t.Host, err)
		}
		if res.Next != fo.Start { // output moved: a later loss gets the whole time again
			lostSince, backoff = time.Time{}, 200*time.Millisecond
		}
		if lostSince.IsZero() {
			lostSince = time.Now()
		}
		lostAt = time.Now()
		fo.Start = res.Next
		fo.NoHistory, fo.Tail = false, 0
		time.Sleep(backoff)
	}
}

func exitStatusCode(code int) error {
	if code == 0 {
		return nil
	}
	return cli.WithCode(code, nil)
}

func newJobKillCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	var sig string
	c := &cobra.Command{
		Use:   "kill [--signal TERM] [flags] [user@]host ID",
		Short: "send a signal to a job's process group",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			name := strings.TrimPrefix(strings.ToUpper(sig), "SIG")
			if client.IsFleetJobID(args[1]) {
				return fleetJobEach(c.Context(), io, conn, args[0], args[1], func(ctx context.Context, s *client.Session, job string) error {
					return s.KillJob(ctx, job, name)
				})
			}
			return withSession(c.Context(), conn, io, args[0], args[1], func(s *client.Session) error {
				return s.KillJob(c.Context(), args[1], name)
			})
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "TERM", "signal name")
	return c
}

func newJobRmCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm [flags] [user@]host ID",
		Short: "forget a finished job and delete its output",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			if client.IsFleetJobID(args[1]) {
				return fleetJobEach(c.Context(), io, conn, args[0], args[1], func(ctx context.Context, s *client.Session, job string) error {
					return s.RemoveJob(ctx, job)
				})
			}
			return withSession(c.Context(), conn, io, args[0], args[1], func(s *client.Session) error {
				return s.RemoveJob(c.Context(), args[1])
			})
		},
	}
}

// asyncRun starts a background job and prints its id.
func asyncRun(ctx context.Context, opts *zpOptions, hostArg string, argv []string, env map[string]string) error {
	io := opts.io
	req := client.ExecRequest{Argv: argv, Env: env}
	if opts.stdinFile != "" {
		f, err := os.Open(opts.stdinFile)
		if err != nil {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("--stdin-file: %w", err))
		}
		defer f.Close()
		req.Stdin = f
	}
	s, t, err := opts.conn.Dial(ctx, io, hostArg)
	if err != nil {
		return err
	}
	defer s.Close()
	id, exit, err := s.StartJob(ctx, req)
	if err != nil {
		return jobError(t, "", err)
	}
	fmt.Fprintln(io.Out, id)
	if exit != nil {
		if exit.Message != "" {
			fmt.Fprintf(io.Err, "zp: %s\n", exit.Message)
		}
		return exitStatus(exit)
	}
	return nil
}
