package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/fleetcli"
)

// fleetExecOptions are zp's flags for running a command on a fleet.
type fleetExecOptions struct {
	hub    string
	sel    fleetcli.Select
	group  bool
	asJSON bool
	// connectTimeoutSet: --connect-timeout was given (else agents get
	// fleetcli.Patience).
	connectTimeoutSet bool
}

func (o *fleetExecOptions) register(c *cobra.Command, conn *cli.ConnFlags) {
	fs := c.Flags()
	fs.StringVar(&o.hub, "fleet", "", "run the command on the agents of the hub HUB ([user@]host[:port]); see --hosts, --label, --group, --json")
	o.sel.Register(fs, "with --fleet: ")
	fs.BoolVar(&o.group, "group", false, "with --fleet: print identical outputs once, under the list of their hosts (as dshbak -c)")
	fs.BoolVar(&o.asJSON, "json", false, "with --fleet: print one JSON array: per host stdout, stderr, exit code, duration, error")
	fs.StringVar(&conn.Login, "user", "", "remote user (as user@host, or -l)")
}

func (o *fleetExecOptions) check(c *cobra.Command) error {
	o.connectTimeoutSet = c.Flags().Changed("connect-timeout")
	if o.hub != "" {
		if o.group && o.asJSON {
			return cli.WithCode(cli.ExitUsage, errors.New("--group or --json, not both"))
		}
		return nil
	}
	for _, f := range []string{"hosts", "label", "group", "json"} {
		if c.Flags().Changed(f) {
			return cli.WithCode(cli.ExitUsage, fmt.Errorf("--%s goes with --fleet HUB", f))
		}
	}
	return nil
}

const fleetHelp = `
Fleet: zp --fleet HUB [--hosts GLOB,...] [--label k=v]... [--group|--json] command [args...]
runs the command on every selected agent of the hub HUB at once, each through
its own tunnel (CURVE end to end with the agent; the agent's authorized_keys
decide as which user, from [user@]HUB, -l or --user). Output lines are prefixed
with the agent's name (stdout to stdout, stderr to stderr); a summary goes to
stderr. Exit status: 0 when every host succeeded, else the largest exit code,
255 when a host could not be reached. Stdin (unless -n) is published once to the
hub, encrypted with a key only the agents get, and every command reads all of it.
With --async, the command starts as a background job on every agent (stdin
/dev/null) and zp prints one fleet job id, for
  zp jobs HUB | zp job status|follow|wait|kill|rm HUB FLEETJOB
(follow prefixes each agent's output with its name and exits as zp --fleet).
  zp fleet HUB      lists the agents (--json, --prometheus-sd)`

// hostResult is how the command went on one agent.
type hostResult struct {
	name     string
	code     int    // the exit code, when err is nil
	why      string // for the summary when err is set: unreachable, unauthorised, …
	err      error
	dur      time.Duration
	out, eo  *spillBuffer // --group and --json
	exitNote string       // e.g. "command not found"
}

func fleetExecRun(ctx context.Context, opts *zpOptions, argv []string) error {
	io := opts.io
	fo := &opts.fleet
	if len(argv) == 0 {
		return cli.WithCode(cli.ExitUsage, errors.New("usage: zp --fleet HUB [flags] command [args...]"))
	}
	if opts.stdinFile != "" {
		return cli.WithCode(cli.ExitUsage, errors.New("--stdin-file does not go with --fleet (--fleet --async jobs read /dev/null)"))
	}
	env, err := localEnv(io.Getenv, opts.env)
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	sel, err := fo.sel.Selector()
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	conn := &opts.conn
	s, fl, t, err := fleetcli.DialHub(ctx, conn, io, fo.hub)
	if err != nil {
		return err
	}
	defer s.Close()
	agents, err := fo.sel.Agents(ctx, fl, t, sel)
	if err != nil {
		return err
	}
	ad, err := fleetcli.NewDialer(conn, io, t, fl, agents, fo.connectTimeoutSet)
	if err != nil {
		return err
	}
	if opts.async {
		return fleetAsyncRun(ctx, opts, fl, ad, agents, argv, env)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Stdin is published once to the hub, encrypted with a key that goes
	// to each agent inside its tunnel, and only to the agents we run on.
	var shared *client.SharedStdin
	if !opts.noStdin && !isDevNull(io.InFile) {
		var names []string
		for _, a := range agents {
			if _, err := ad.Unusable(a); err == nil {
				names = append(names, a.Name)
			}
		}
		if len(names) > 0 {
			if io.InFile != nil {
				growPipe(io.InFile)
			}
			pub, err := fl.Publish(ctx, names, io.In)
			if err != nil {
				var ce *client.Error
				if errors.As(err, &ce) && ce.Code == client.CodeBadRequest {
					return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s cannot pass stdin to the fleet (%s): use -n, or upgrade its zpd", t.Host, ce.Reason))
				}
				return fleetcli.Error(t, err)
			}
			defer pub.Close()
			shared = &pub.Shared
			defer func() {
				if n, eof := pub.Sent(); !eof && pub.Err() != nil && !conn.Quiet {
					fmt.Fprintf(io.Err, "zp: stdin: published %d octets, then: %v\n", n, pub.Err())
				}
			}()
		}
	}
	sigs := forwardSignals(ctx, cancel, io, conn.Quiet)
	pr := newFleetPrinter(io, fo, len(agents))
	results := make([]*hostResult, len(agents))
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
			start := time.Now()
			defer func() { r.dur = time.Since(start) }()
			sess, why, err := ad.Open(ctx, a, sem)
			if err != nil {
				r.err, r.why = err, why
				pr.failed(r)
				return
			}
			defer sess.Close()
			stdout, stderr := pr.writers(r)
			st, err := sess.Exec(ctx, client.ExecRequest{Argv: argv, Env: env, Stdout: stdout, Stderr: stderr, Signals: sigs.add(), Shared: shared})
			pr.flush(r)
			switch {
			case err != nil:
				r.err, r.why = err, "unreachable"
				var oe *client.OutputError
				if errors.As(err, &oe) {
					r.why = "output failed"
				}
				pr.failed(r)
			default:
				r.code = st.ExitCode()
				if st.Status == client.FailedToStart {
					r.exitNote = st.Message
				}
			}
		}()
	}
	wg.Wait()
	sigs.stop()
	if err := pr.finish(results); err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	return fleetSummary(io, conn.Quiet, results)
}

// isDevNull reports whether f is /dev/null: nothing to publish.
func isDevNull(f *os.File) bool {
	if f == nil {
		return false
	}
	st, err := f.Stat()
	if err != nil {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err == nil && os.SameFile(st, null)
}

// fleetSummary prints "40 ok, 2 failed: web3 (exit 2), db1 (unreachable)"
// and returns the exit status: 0, the largest exit code, or 255 when a
// host could not be reached.
func fleetSummary(io *cli.IO, quiet bool, results []*hostResult) error {
	ok, worst, unreached := 0, 0, false
	var failed []string
	for _, r := range results {
		switch {
		case r.err != nil:
			unreached = true
			failed = append(failed, fmt.Sprintf("%s (%s)", r.name, r.why))
		case r.code != 0:
			worst = max(worst, r.code)
			failed = append(failed, fmt.Sprintf("%s (exit %d)", r.name, r.code))
		default:
			ok++
		}
	}
	if !quiet {
		if len(failed) == 0 {
			fmt.Fprintf(io.Err, "zp: %d ok\n", ok)
		} else {
			fmt.Fprintf(io.Err, "zp: %d ok, %d failed: %s\n", ok, len(failed), strings.Join(failed, ", "))
		}
	}
	switch {
	case unreached:
		return cli.WithCode(cli.ExitFailure, nil)
	case worst != 0:
		return cli.WithCode(worst, nil)
	}
	return nil
}

// signalFan forwards zp's signals to every host's command; a third Ctrl-C
// hangs them all up.
type signalFan struct {
	mu   sync.Mutex
	outs []chan string
	done chan struct{}
	once sync.Once
}

func (f *signalFan) add() <-chan string {
	ch := make(chan string, 4)
	f.mu.Lock()
	f.outs = append(f.outs, ch)
	f.mu.Unlock()
	return ch
}

func (f *signalFan) stop() { f.once.Do(func() { close(f.done) }) }

func forwardSignals(ctx context.Context, cancel func(), io *cli.IO, quiet bool) *signalFan {
	f := &signalFan{done: make(chan struct{})}
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	go func() {
		defer signal.Stop(sigc)
		ints := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-f.done:
				return
			case sig := <-sigc:
				if sig == syscall.SIGPIPE {
					continue
				}
				if sig == syscall.SIGINT {
					if ints++; ints >= 3 {
						if !quiet {
							fmt.Fprintln(io.Err, "zp: interrupted three times; hanging up the remote commands")
						}
						cancel()
						return
					}
				}
				name := strings.TrimPrefix(unixSignalName(sig), "SIG")
				f.mu.Lock()
				for _, ch := range f.outs {
					select {
					case ch <- name:
					default:
					}
				}
				f.mu.Unlock()
			}
		}
	}()
	return f
}

// fleetPrinter writes the hosts' output: prefixed lines as they come, or
// (--group, --json) collected per host and printed at the end.
type fleetPrinter struct {
	io      *cli.IO
	opts    *fleetExecOptions
	mu      sync.Mutex // one host's lines at a time
	collect bool
	memory  int // octets a host's output may hold in memory before spilling to a file
	pw      sync.Map
}

func newFleetPrinter(io *cli.IO, opts *fleetExecOptions, hosts int) *fleetPrinter {
	// Collected output stays in memory up to 64 MiB in all (at most 4 MiB
	// and at least 64 KiB per host), then goes to temporary files.
	mem := min(4<<20, max(64<<10, (64<<20)/max(hosts, 1)))
	return &fleetPrinter{io: io, opts: opts, collect: opts.group || opts.asJSON, memory: mem}
}

func (p *fleetPrinter) writers(r *hostResult) (io.Writer, io.Writer) {
	if p.collect {
		r.out, r.eo = newSpillBuffer(p.memory), newSpillBuffer(p.memory)
		return r.out, r.eo
	}
	out := &prefixWriter{mu: &p.mu, w: p.io.Out, prefix: []byte(r.name + ": ")}
	eo := &prefixWriter{mu: &p.mu, w: p.io.Err, prefix: []byte(r.name + ": ")}
	p.pw.Store(r, [2]*prefixWriter{out, eo})
	return out, eo
}

// flush ends a host's partial last lines.
func (p *fleetPrinter) flush(r *hostResult) {
	if v, ok := p.pw.LoadAndDelete(r); ok {
		for _, w := range v.([2]*prefixWriter) {
			w.Flush()
		}
	}
}

// failed reports a host's failure on stderr as it happens (not with
// --json, where it is in the output).
func (p *fleetPrinter) failed(r *hostResult) {
	if p.opts.asJSON {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.io.Err, "zp: %s: %v\n", r.name, r.err)
}

func (p *fleetPrinter) finish(results []*hostResult) error {
	defer func() {
		for _, r := range results {
			r.out.Close()
			r.eo.Close()
		}
	}()
	switch {
	case p.opts.asJSON:
		return p.writeJSON(results)
	case p.opts.group:
		return p.writeGroups(results)
	}
	for _, r := range results {
		if r.exitNote != "" && r.err == nil {
			fmt.Fprintf(p.io.Err, "zp: %s: %s\n", r.name, r.exitNote)
		}
	}
	return nil
}

// writeGroups prints identical outputs once, under the names of the hosts
// that produced them (as dshbak -c): stdout groups on stdout, stderr
// groups on stderr.
func (p *fleetPrinter) writeGroups(results []*hostResult) error {
	type group struct {
		hosts []string
		r     *hostResult
	}
	var order []string
	groups := map[string]*group{}
	for _, r := range results {
		if r.out == nil || (r.out.Len() == 0 && r.eo.Len() == 0) {
			continue
		}
		k := string(r.out.Sum()) + string(r.eo.Sum())
		g := groups[k]
		if g == nil {
			g = &group{r: r}
			groups[k] = g
			order = append(order, k)
		}
		g.hosts = append(g.hosts, r.name)
	}
	for _, k := range order {
		g := groups[k]
		for _, st := range []struct {
			w   io.Writer
			buf *spillBuffer
		}{{p.io.Out, g.r.out}, {p.io.Err, g.r.eo}} {
			if st.buf.Len() == 0 {
				continue
			}
			names := strings.Join(g.hosts, ",")
			rule := strings.Repeat("-", min(max(len(names), 16), 78))
			fmt.Fprintf(st.w, "%s\n%s\n%s\n", rule, names, rule)
			if err := st.buf.copyTo(st.w); err != nil {
				return err
			}
			if !st.buf.EndsWithNewline() {
				fmt.Fprintln(st.w)
			}
		}
	}
	return nil
}

// fleetHostJSON is one host in zp --fleet --json.
type fleetHostJSON struct {
	Host         string  `json:"host"`
	Stdout       *string `json:"stdout,omitempty"`
	StdoutBase64 *string `json:"stdout_base64,omitempty"`
	Stderr       *string `json:"stderr,omitempty"`
	StderrBase64 *string `json:"stderr_base64,omitempty"`
	ExitCode     *int    `json:"exit_code"`
	Duration     float64 `json:"duration_seconds"`
	Error        string  `json:"error,omitempty"`
}

// writeJSON prints one JSON array, a host at a time (only one host's
// output is in memory at once).
func (p *fleetPrinter) writeJSON(results []*hostResult) error {
	w := p.io.Out
	fmt.Fprint(w, "[")
	for i, r := range results {
		h := fleetHostJSON{Host: r.name, Duration: r.dur.Seconds()}
		if r.err != nil {
			h.Error = r.err.Error()
		} else {
			code := r.code
			h.ExitCode = &code
			if r.exitNote != "" {
				h.Error = r.exitNote
			}
		}
		var err error
		if h.Stdout, h.StdoutBase64, err = r.out.jsonText(); err != nil {
			return err
		}
		if h.Stderr, h.StderrBase64, err = r.eo.jsonText(); err != nil {
			return err
		}
		b, err := json.MarshalIndent(h, "  ", "  ")
		if err != nil {
			return err
		}
		sep := ","
		if i == 0 {
			sep = ""
		}
		if _, err := fmt.Fprintf(w, "%s\n  %s", sep, b); err != nil {
			return err
		}
	}
	_, err := fmt.Fprint(w, "\n]\n")
	return err
}

// prefixWriter writes complete lines prefixed with a host's name, a batch
// of lines per write under the printer's lock; a partial line waits for
// its end (at most maxLine octets, then it is written as a line).
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix []byte
	buf    []byte
}

const maxLine = 64 << 10

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	var out []byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			room := maxLine - len(p.buf)
			if len(b) < room {
				p.buf = append(p.buf, b...)
				break
			}
			p.buf = append(p.buf, b[:room]...)
			b = b[room:]
			out = append(append(append(out, p.prefix...), p.buf...), '\n')
			p.buf = p.buf[:0]
			continue
		}
		out = append(append(append(out, p.prefix...), p.buf...), b[:i+1]...)
		p.buf = p.buf[:0]
		b = b[i+1:]
	}
	if len(out) > 0 {
		p.mu.Lock()
		_, err := p.w.Write(out)
		p.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// Flush writes a partial last line, with a newline.
func (p *prefixWriter) Flush() {
	if len(p.buf) == 0 {
		return
	}
	line := append(append(append([]byte(nil), p.prefix...), p.buf...), '\n')
	p.buf = p.buf[:0]
	p.mu.Lock()
	_, _ = p.w.Write(line)
	p.mu.Unlock()
}

// spillBuffer holds a host's output: in memory up to a limit, then in an
// unlinked temporary file; it keeps a SHA-256 of everything written.
type spillBuffer struct {
	limit int
	mem   bytes.Buffer
	f     *os.File
	n     int64
	last  byte
	h     hash.Hash
	err   error
}

func newSpillBuffer(limit int) *spillBuffer {
	return &spillBuffer{limit: limit, h: sha256.New()}
}

func (s *spillBuffer) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	s.h.Write(p)
	s.n += int64(len(p))
	s.last = p[len(p)-1]
	if s.f == nil && s.mem.Len()+len(p) > s.limit {
		f, err := os.CreateTemp("", "zp-fleet-*")
		if err != nil {
			s.err = fmt.Errorf("spilling output to a file: %w", err)
			return 0, s.err
		}
		os.Remove(f.Name()) // unlinked: gone with zp, whatever happens
		if _, err := s.mem.WriteTo(f); err != nil {
			f.Close()
			s.err = err
			return 0, err
		}
		s.mem = bytes.Buffer{}
		s.f = f
	}
	if s.f != nil {
		if _, err := s.f.Write(p); err != nil {
			s.err = fmt.Errorf("spilling output to a file: %w", err)
			return 0, s.err
		}
		return len(p), nil
	}
	return s.mem.Write(p)
}

func (s *spillBuffer) Len() int64 {
	if s == nil {
		return 0
	}
	return s.n
}

func (s *spillBuffer) Sum() []byte { return s.h.Sum(nil) }

func (s *spillBuffer) EndsWithNewline() bool { return s.n == 0 || s.last == '\n' }

func (s *spillBuffer) copyTo(w io.Writer) error {
	if s.f == nil {
		_, err := w.Write(s.mem.Bytes())
		return err
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, s.f)
	return err
}

// jsonText returns the content as a string, or base64 when it is not
// valid UTF-8; nil, nil for a host without this buffer.
func (s *spillBuffer) jsonText() (text, b64 *string, err error) {
	if s == nil {
		return nil, nil, nil
	}
	var b bytes.Buffer
	if err := s.copyTo(&b); err != nil {
		return nil, nil, err
	}
	if utf8.Valid(b.Bytes()) {
		t := b.String()
		return &t, nil, nil
	}
	e := base64.StdEncoding.EncodeToString(b.Bytes())
	return nil, &e, nil
}

func (s *spillBuffer) Close() {
	if s != nil && s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// fleetFirst reports whether zp's arguments give --fleet before the first
// positional argument: then that argument is the remote command, even if
// it is also the name of one of zp's subcommands (zp --fleet hub version).
func fleetFirst(root *cobra.Command, args []string) bool {
	lookup := func(name string, short bool) *pflag.Flag {
		for _, fs := range []*pflag.FlagSet{root.Flags(), root.PersistentFlags()} {
			if short {
				if f := fs.ShorthandLookup(name); f != nil {
					return f
				}
			} else if f := fs.Lookup(name); f != nil {
				return f
			}
		}
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			return false
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		short := !strings.HasPrefix(a, "--")
		if short && len(name) > 1 {
			// -lalice or a group of booleans (-nq): the last letter decides.
			hasValue = hasValue || lookup(name[:1], true) != nil && lookup(name[:1], true).Value.Type() != "bool"
			name = name[len(name)-1:]
		}
		if !short && name == "fleet" {
			return true
		}
		if f := lookup(name, short); f != nil && f.Value.Type() != "bool" && !hasValue {
			i++ // its value
		}
	}
	return false
}
