package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/fleetcli"
	"github.com/zpipes/zp/internal/shellquote"
)

// fleetAsyncRun starts argv as a background job on every selected agent
// (each through its own tunnel), records them on the hub as one fleet job
// and prints its id. Jobs read /dev/null, as zp --async without
// --stdin-file.
func fleetAsyncRun(ctx context.Context, opts *zpOptions, fl *client.Fleet, ad *fleetcli.Dialer, agents []client.Agent, argv []string, env map[string]string) error {
	io := opts.io
	pr := newFleetPrinter(io, &opts.fleet, len(agents))
	results := make([]*hostResult, len(agents))
	ids := make([]string, len(agents))
	sem := make(chan struct{}, fleetcli.Dials)
	var wg sync.WaitGroup
	for i, a := range agents {
		r := &hostResult{name: a.Name}
		results[i] = r
		if r.why, r.err = ad.Unusable(a); r.err != nil {
			pr.failed(r)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, why, err := ad.Open(ctx, a, sem)
			if err != nil {
				r.err, r.why = err, why
				pr.failed(r)
				return
			}
			defer sess.Close()
			id, exit, err := sess.StartJob(ctx, client.ExecRequest{Argv: argv, Env: env})
			if err != nil {
				r.err, r.why = err, "unreachable"
				pr.failed(r)
				return
			}
			ids[i] = id
			if exit != nil { // recorded as failed to start
				r.code, r.exitNote = exit.ExitCode(), exit.Message
			}
		}()
	}
	wg.Wait()
	jobs := map[string]string{}
	for i, id := range ids {
		if id != "" {
			jobs[agents[i].Name] = id
		}
	}
	if len(jobs) > 0 {
		id, err := fl.RecordJob(ctx, shellquote.Join(argv), jobs)
		if err != nil {
			var b strings.Builder
			for _, a := range agents {
				if jobs[a.Name] != "" {
					fmt.Fprintf(&b, " %s=%s", a.Name, jobs[a.Name])
				}
			}
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("the jobs started, but the hub could not record them (%v); their ids:%s", err, b.String()))
		}
		fmt.Fprintln(io.Out, id)
	}
	if err := pr.finish(results); err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	return fleetSummary(io, opts.conn.Quiet, results)
}

// fleetJobAction does a job command on one agent's part of a fleet job;
// it sets r.code (or returns an error) and writes to out and errw.
type fleetJobAction func(ctx context.Context, s *client.Session, job string, r *hostResult, out, errw io.Writer) error

// fleetJobFanout runs action on every agent of the fleet job id, at once,
// each through its own tunnel; output is prefixed with the agent's name
// (as pdsh). Agents the hub no longer lists, or lost, are failures.
func fleetJobFanout(ctx context.Context, io *cli.IO, conn *cli.ConnFlags, hubArg, id string, action fleetJobAction) ([]*hostResult, error) {
	return fleetJobFanoutSome(ctx, io, conn, hubArg, id, fanoutOpts{}, action)
}

// fanoutOpts narrows a fan-out: only these agents (nil: all), and
// failures that retry says will be retried are not reported.
type fanoutOpts struct {
	only  map[string]bool
	retry func(r *hostResult) bool
}

func fleetJobFanoutSome(ctx context.Context, io *cli.IO, conn *cli.ConnFlags, hubArg, id string, o fanoutOpts, action fleetJobAction) ([]*hostResult, error) {
	s, fl, t, err := fleetcli.DialHub(ctx, conn, io, hubArg)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	fjs, err := fl.Jobs(ctx, id)
	switch {
	case client.IsCode(err, client.CodeNotFound):
		return nil, cli.WithCode(ExitNoJob, fmt.Errorf("%s: no fleet job %s", t.Host, id))
	case err != nil:
		return nil, fleetcli.Error(t, err)
	case len(fjs) != 1:
		return nil, cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %d records for fleet job %s", t.Host, len(fjs), id))
	}
	fj := fjs[0]
	names := make([]string, 0, len(fj.Jobs))
	for n := range fj.Jobs {
		if o.only == nil || o.only[n] {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	listed, err := fl.Agents(ctx, client.Selector{Hosts: names})
	if err != nil {
		return nil, fleetcli.Error(t, err)
	}
	byName := map[string]client.Agent{}
	for _, a := range listed {
		byName[a.Name] = a
	}
	ad, err := fleetcli.NewDialer(conn, io, t, fl, listed, false)
	if err != nil {
		return nil, err
	}
	pr := newFleetPrinter(io, &fleetExecOptions{}, len(names))
	failed := func(r *hostResult) {
		if o.retry == nil || !o.retry(r) {
			pr.failed(r)
		}
	}
	results := make([]*hostResult, len(names))
	sem := make(chan struct{}, fleetcli.Dials)
	var wg sync.WaitGroup
	for i, name := range names {
		r := &hostResult{name: name}
		results[i] = r
		a, ok := byName[name]
		switch {
		case !ok:
			r.err, r.why = errors.New("the hub no longer lists this agent"), "unreachable"
		default:
			r.why, r.err = ad.Unusable(a)
		}
		if r.err != nil {
			failed(r)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, why, err := ad.Open(ctx, a, sem)
			if err != nil {
				r.err, r.why = err, why
				failed(r)
				return
			}
			defer sess.Close()
			out, errw := pr.writers(r)
			err = action(ctx, sess, fj.Jobs[name], r, out, errw)
			pr.flush(r)
			if err != nil {
				r.err, r.why = err, "failed"
				if client.IsCode(err, client.CodeNotFound) {
					r.err, r.why = fmt.Errorf("no job %s there (removed, or expired)", fj.Jobs[name]), "no job"
				}
				failed(r)
			}
		}()
	}
	wg.Wait()
	return results, pr.finish(results)
}

// fleetJobStatus prints each agent's part of a fleet job, a line per agent.
func fleetJobStatus(ctx context.Context, ios *cli.IO, conn *cli.ConnFlags, hubArg, id string, asJSON bool) error {
	var mu sync.Mutex
	infos := map[string]map[string]string{}
	results, err := fleetJobFanout(ctx, ios, conn, hubArg, id, func(ctx context.Context, s *client.Session, job string, r *hostResult, _, _ io.Writer) error {
		info, err := s.JobStatus(ctx, job)
		if err == nil {
			mu.Lock()
			infos[r.name] = info.Fields()
			mu.Unlock()
		}
		return err
	})
	if results == nil {
		return err
	}
	if asJSON {
		var l []map[string]string
		for _, r := range results {
			d := map[string]string{}
			for k, v := range infos[r.name] {
				d[k] = v
			}
			d["host"] = r.name
			if r.err != nil {
				d["error"] = r.err.Error()
			}
			l = append(l, d)
		}
		if err := writeJSON(ios, l); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(ios.Out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "HOST\tJOB\tSTATE\tELAPSED/EXIT")
		for _, r := range results {
			if info := infos[r.name]; info != nil {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.name, info["id"], info["status"], elapsedOrExit(info))
			} else {
				fmt.Fprintf(w, "%s\t-\t%s\t-\n", r.name, r.why)
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	for _, r := range results {
		if r.err != nil {
			return cli.WithCode(cli.ExitFailure, nil)
		}
	}
	return nil
}

// fleetJobFollow follows (or, without streams, waits for) every agent's
// part of a fleet job, output prefixed per agent; the exit status is as
// zp --fleet's: the largest exit code, 255 when an agent was unreachable.
// A host whose follow lost its connection (the hub restarted, the agent
// rejoined) is followed again from where it stopped, for --reconnect-for
// after output last moved.
func fleetJobFollow(ctx context.Context, ios *cli.IO, conn *cli.ConnFlags, hubArg, id string, fo client.FollowOptions, streams bool) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	wantOut, wantErr := fo.Stdout != nil, fo.Stderr != nil
	var mu sync.Mutex
	starts := map[string][3]uint64{}
	final := map[string]*hostResult{}
	var only map[string]bool // nil: the first round, every agent
	var lostSince time.Time
	backoff := 200 * time.Millisecond
	retry := func(r *hostResult) bool {
		return ctx.Err() == nil && retryableFollow(r) && (lostSince.IsZero() || time.Since(lostSince) < conn.ReconnectFor())
	}
	for round := 0; ; round++ {
		progress := false
		results, err := fleetJobFanoutSome(ctx, ios, conn, hubArg, id, fanoutOpts{only: only, retry: retry},
			func(ctx context.Context, s *client.Session, job string, r *hostResult, out, errw io.Writer) error {
				o := fo
				o.Stdout, o.Stderr = nil, nil
				if streams && wantOut {
					o.Stdout = out
				}
				if streams && wantErr {
					o.Stderr = errw
				}
				mu.Lock()
				start, again := starts[r.name]
				mu.Unlock()
				if again {
					o.Start, o.NoHistory, o.Tail = start, false, 0
				}
				res, err := s.Follow(ctx, job, o)
				mu.Lock()
				if res != nil {
					if res.Next != start {
						progress = true
					}
					starts[r.name] = res.Next
				}
				mu.Unlock()
				if err != nil {
					return err
				}
				r.code = res.Info.ExitCode
				return nil
			})
		if ctx.Err() != nil {
			return cli.WithCode(130, nil) // detached; the jobs go on
		}
		if results == nil {
			if code, ok := cli.CodeOf(err); round == 0 || ok && code == ExitNoJob || time.Since(lostSince) > conn.ReconnectFor() {
				return err
			}
		}
		var lost []string
		for _, r := range results {
			if r.err != nil && retry(r) {
				lost = append(lost, r.name)
				continue
			}
			final[r.name] = r
		}
		if results != nil && len(lost) == 0 {
			break
		}
		if progress || lostSince.IsZero() {
			lostSince, backoff = time.Now(), 200*time.Millisecond
		}
		if results != nil {
			only = map[string]bool{}
			for _, n := range lost {
				only[n] = true
			}
			if !conn.Quiet {
				fmt.Fprintf(ios.Err, "zp: lost contact with %s; following again from where they stopped\n", strings.Join(lost, ", "))
			}
		}
		select {
		case <-ctx.Done():
			return cli.WithCode(130, nil)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	names := make([]string, 0, len(final))
	for n := range final {
		names = append(names, n)
	}
	sort.Strings(names)
	results := make([]*hostResult, 0, len(names))
	for _, n := range names {
		results = append(results, final[n])
	}
	return fleetSummary(ios, conn.Quiet, results)
}

// retryableFollow reports whether a host's follow failed for a lost
// connection (to the hub, or of the hub to the agent), not for good.
func retryableFollow(r *hostResult) bool {
	if r.why != "unreachable" && r.why != "failed" {
		return false // untrusted, unauthorised, no such job
	}
	var ce *client.Error
	var oe *client.OutputError
	switch {
	case errors.As(r.err, &oe):
		return false
	case errors.As(r.err, &ce):
		return ce.Code == client.CodeUnavailable
	}
	return true
}

// fleetJobEach runs a request (kill, rm) on every agent's part.
func fleetJobEach(ctx context.Context, ios *cli.IO, conn *cli.ConnFlags, hubArg, id string, do func(ctx context.Context, s *client.Session, job string) error) error {
	results, err := fleetJobFanout(ctx, ios, conn, hubArg, id, func(ctx context.Context, s *client.Session, job string, r *hostResult, _, _ io.Writer) error {
		err := do(ctx, s, job)
		var ce *client.Error
		if errors.As(err, &ce) && ce.Code == client.CodeConflict {
			r.code, r.exitNote = 1, ce.Reason // not running, or still running
			return nil
		}
		return err
	})
	if results == nil {
		return err
	}
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	return fleetSummary(ios, conn.Quiet, results)
}

// fleetJobsList lists the caller's fleet jobs on a hub; nil, nil when the
// hub is no hub or the key no fleet client.
func fleetJobsList(ctx context.Context, s *client.Session) ([]client.FleetJob, error) {
	fl, err := client.NewFleet(s)
	if err != nil {
		return nil, nil
	}
	jobs, err := fl.Jobs(ctx, "")
	if client.IsCode(err, client.CodeBadRequest) || client.IsCode(err, client.CodeUnauthorised) {
		return nil, nil
	}
	return jobs, err
}
