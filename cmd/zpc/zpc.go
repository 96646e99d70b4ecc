package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// remoteSpec is [user@]host[:port]:PATH.
type remoteSpec struct {
	host string // what cli.ParseTarget takes
	path string
}

// parseRemote recognises a remote argument as scp and rsync do: a colon
// before any slash. Forms: host:PATH, host:PORT:PATH, [v6]:PATH,
// user@host:PATH, user@tcp://host:port:PATH, user@ipc:///sock:PATH.
// Write ./a:b for a local file whose name has a colon.
func parseRemote(arg string) (remoteSpec, bool) {
	user := ""
	rest := arg
	if i := strings.Index(rest, "@"); i >= 0 && !strings.Contains(rest[:i], "/") && !strings.Contains(rest[:i], ":") {
		user, rest = rest[:i+1], rest[i+1:]
	}
	if strings.HasPrefix(rest, "tcp://") {
		hp := rest[len("tcp://"):]
		// host:port:path, host may be [v6]
		var host string
		if strings.HasPrefix(hp, "[") {
			j := strings.Index(hp, "]")
			if j < 0 {
				return remoteSpec{}, false
			}
			host, hp = hp[:j+1], hp[j+1:]
		} else if j := strings.Index(hp, ":"); j >= 0 {
			host, hp = hp[:j], hp[j:]
		}
		parts := strings.SplitN(strings.TrimPrefix(hp, ":"), ":", 2)
		if len(parts) != 2 {
			return remoteSpec{}, false
		}
		return remoteSpec{host: user + "tcp://" + host + ":" + parts[0], path: parts[1]}, true
	}
	if strings.HasPrefix(rest, "ipc://") {
		p := rest[len("ipc://"):]
		j := strings.Index(p, ":")
		if j < 0 {
			return remoteSpec{}, false
		}
		return remoteSpec{host: user + "ipc://" + p[:j], path: p[j+1:]}, true
	}
	var host string
	if strings.HasPrefix(rest, "[") {
		j := strings.Index(rest, "]:")
		if j < 0 {
			return remoteSpec{}, false
		}
		host, rest = rest[:j+1], rest[j+2:]
	} else {
		j := strings.Index(rest, ":")
		if j <= 0 || strings.Contains(rest[:j], "/") {
			return remoteSpec{}, false
		}
		host, rest = rest[:j], rest[j+1:]
	}
	// An all-digit segment followed by ':' is a port.
	if j := strings.Index(rest, ":"); j > 0 {
		if _, err := strconv.Atoi(rest[:j]); err == nil {
			host, rest = host+":"+rest[:j], rest[j+1:]
		}
	}
	return remoteSpec{host: user + host, path: rest}, true
}

type zpcOptions struct {
	conn      cli.ConnFlags
	recursive bool
	preserve  bool
	verbose   bool
	checksum  bool
	asJSON    bool
	fleet     fleetCopy
	io        *cli.IO
}

// NewZPCCmd builds the zpc command.
func NewZPCCmd(io *cli.IO) *cobra.Command {
	opts := &zpcOptions{io: io}
	root := cli.NewRoot("zpc [flags] SRC... [user@]host[:port]:DEST  |  zpc [flags] [user@]host[:port]:SRC... DEST", "copy files to or from a host through its zpd, reliably")
	root.Long = `zpc copies files like scp and rsync, in chunks that are acknowledged, so that an
interrupted copy resumes where it stopped, identical files are skipped, and no reader ever
sees a half-written file.

Directories (with -r) follow rsync's rules:
  zpc -r dir host:dest     creates dest/dir/...
  zpc -r dir/ host:dest    copies the contents of dir into dest/
  zpc file host:dest       writes dest/file if dest is a directory, else the file dest
Remote paths are relative to the remote user's home; host: alone is the home.
Symlinks are copied as symlinks and modification times kept; modes get the source's permission
bits less the receiver's umask (022 on the server), without setuid, setgid or sticky, unless -p
keeps the whole mode (and the owner, when the receiving side runs as root); devices, sockets and
FIFOs are skipped with a warning. Names from the other side never go through a symlink in the
destination.

Every file is checked with BLAKE3 (SHA-256 with a zpd of protocol version 6 or older) before
it is renamed into place. Files whose size and modification time match are skipped (--checksum
compares digests instead). If the connection
breaks, zpc reconnects and resumes, trying for --reconnect-for (default 1m) per outage; after
that it exits 255 and running the same command again resumes from where it stopped.

Exit status: 0 everything copied; 1 some files failed (each named on stderr, the rest were
copied); 255 connection, authentication, protocol or usage failure.` + fleetCopyHelp
	root.Args = func(c *cobra.Command, args []string) error {
		if f, _ := c.Flags().GetString("fleet"); f != "" {
			return opts.fleet.args(c, args)
		}
		return cobra.MinimumNArgs(2)(c, args)
	}
	opts.conn.Register(root, "P")
	fs := root.Flags()
	fs.BoolVarP(&opts.recursive, "recursive", "r", false, "copy directories recursively")
	fs.BoolVarP(&opts.preserve, "preserve", "p", false, "keep whole modes (setuid, setgid, sticky; no umask) and owners (when the receiver runs as root)")
	fs.BoolVarP(&opts.verbose, "verbose", "v", false, "name each file as it is done")
	fs.BoolVarP(&opts.checksum, "checksum", "c", false, "skip files whose digest (BLAKE3) matches, not size and time")
	fs.BoolVar(&opts.asJSON, "json", false, "print a JSON summary on stdout (with --fleet: per host)")
	opts.fleet.register(root)
	root.RunE = func(c *cobra.Command, args []string) error {
		if err := opts.fleet.check(c); err != nil {
			return err
		}
		if opts.fleet.hub != "" {
			return fleetCopyMain(c.Context(), opts, args)
		}
		return zpcRun(c.Context(), opts, args)
	}
	return root
}

// MainZPC runs zpc and returns the process exit code.
func MainZPC(ctx context.Context, args []string, io *cli.IO) int {
	defer cli.StartProfile(io, "zpc")()
	root := NewZPCCmd(io)
	root.SetArgs(args)
	root.SetOut(io.Out)
	root.SetErr(io.Err)
	return cli.ExitCode("zpc", io.Err, root.ExecuteContext(ctx), cli.ExitFailure)
}

func zpcRun(ctx context.Context, opts *zpcOptions, args []string) error {
	io := opts.io
	srcs, dst := args[:len(args)-1], args[len(args)-1]
	dr, dstRemote := parseRemote(dst)
	var remoteSrcs []remoteSpec
	for _, s := range srcs {
		if r, ok := parseRemote(s); ok {
			remoteSrcs = append(remoteSrcs, r)
		}
	}
	var upload bool
	var hostArg string
	var paths []string
	switch {
	case dstRemote && len(remoteSrcs) == 0:
		upload, hostArg, paths = true, dr.host, srcs
	case !dstRemote && len(remoteSrcs) == len(srcs):
		hostArg = remoteSrcs[0].host
		for _, r := range remoteSrcs {
			if r.host != hostArg {
				return cli.WithCode(cli.ExitUsage, errors.New("all remote sources must be on the same host"))
			}
			paths = append(paths, r.path)
		}
	case dstRemote:
		return cli.WithCode(cli.ExitUsage, errors.New("copying between two remote hosts is not supported; copy through this machine"))
	default:
		return cli.WithCode(cli.ExitUsage, errors.New("no remote host: write the remote side as [user@]host:PATH"))
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	prog := newProgress(io, opts.verbose && !opts.asJSON)
	defer prog.finish()
	topts := client.TransferOptions{
		Recursive: opts.recursive, Preserve: opts.preserve, Checksum: opts.checksum,
		OnFile:     prog.file,
		OnProgress: prog.progress,
		Warn:       func(w string) { prog.warn(w) },
	}
	total := &client.TransferStats{Failures: []client.Failure{}}
	start := time.Now()
	backoff := 200 * time.Millisecond
	var lostSince time.Time // first loss since the copy last moved: bounds the retries
	var lostAt time.Time    // latest loss
	for attempt := 0; ; attempt++ {
		s, t, err := opts.conn.Dial(ctx, io, hostArg)
		if err == nil && !lostAt.IsZero() {
			prog.warn(fmt.Sprintf("reconnected to %s after %v", t.Host, time.Since(lostAt).Round(time.Millisecond)))
			lostAt = time.Time{}
		}
		if err != nil {
			if !lostSince.IsZero() && time.Since(lostSince) < opts.conn.ReconnectFor() && ctx.Err() == nil && retryable(err) {
				time.Sleep(backoff)
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			if !lostSince.IsZero() {
				return cli.WithCode(cli.ExitFailure, fmt.Errorf("%v; gave up after %v: run the same command again to resume", err, opts.conn.ReconnectFor()))
			}
			return err
		}
		var st *client.TransferStats
		if upload {
			st, err = s.Upload(ctx, paths, dr.path, topts)
		} else {
			st, err = s.Download(ctx, paths, dst, topts)
		}
		s.Close()
		if st != nil {
			accumulate(total, st, attempt > 0)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			prog.finish()
			return cli.WithCode(130, errors.New("interrupted; run the same command again to resume"))
		}
		var le *client.LocalError
		if errors.As(err, &le) {
			break // the local destination: reported with its entry, exit 1
		}
		var pe *client.ProtocolError
		if errors.As(err, &pe) {
			// A broken or hostile server, not the network: the same
			// server would break it again.
			prog.finish()
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s broke the protocol (%s); not retrying", t.Host, printable(pe.Err.Error())))
		}
		var we *client.Error
		if errors.As(err, &we) {
			prog.finish()
			code := cli.ExitFailure // the session refused (channel 0)
			if !we.Session {
				code = 1 // the server refused this transfer (its destination), not the connection
			}
			return cli.WithCode(code, fmt.Errorf("%s: %s", t.Host, printable(we.Reason)))
		}
		// The connection broke: reconnect, skip what arrived, resume the rest.
		if st != nil && (st.Files+st.Skipped+st.Dirs+st.Links > 0 || st.BytesSent > 0) {
			// The copy moved: a later loss gets the whole time again.
			lostSince, backoff = time.Time{}, 200*time.Millisecond
		}
		if lostSince.IsZero() {
			lostSince = time.Now()
		}
		lostAt = time.Now()
		if time.Since(lostSince) > opts.conn.ReconnectFor() {
			prog.finish()
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("connection to %s lost (%v); gave up after %v: run the same command again to resume", t.Host, err, opts.conn.ReconnectFor()))
		}
		prog.warn(fmt.Sprintf("connection to %s lost (%v); reconnecting to resume", t.Host, err))
		time.Sleep(backoff)
	}
	prog.finish()
	total.Seconds = time.Since(start).Seconds()
	if opts.asJSON {
		enc := json.NewEncoder(io.Out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(total)
	}
	if len(total.Failures) > 0 {
		return cli.WithCode(1, fmt.Errorf("%d of %d entries failed", len(total.Failures), total.Files+total.Skipped+total.Dirs+total.Links+len(total.Failures)))
	}
	return nil
}

// retryable reports whether a dial error may pass (the host restarting).
func retryable(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "timeout") || strings.Contains(s, "reset") || strings.Contains(s, "EOF")
}

// accumulate adds a run's figures to the total. After a reconnect, files
// skipped because the first run had copied them are not counted twice.
func accumulate(total, st *client.TransferStats, retry bool) {
	total.Files += st.Files
	total.Dirs += st.Dirs
	total.Links += st.Links
	total.BytesSent += st.BytesSent
	total.BytesResumed += st.BytesResumed
	if !retry {
		total.Skipped += st.Skipped
		total.BytesSkipped += st.BytesSkipped
		total.Failures = append(total.Failures, st.Failures...)
	} else {
		total.Failures = st.Failures
	}
}

// progress shows one line on a terminal (current file, octets, rate) and
// nothing elsewhere unless -v, which names each file.
type progress struct {
	io      *cli.IO
	tty     bool
	verbose bool

	mu      sync.Mutex
	name    string
	done    uint64
	size    uint64
	moved   uint64
	last    time.Time
	start   time.Time
	shown   bool
	lastLen int
}

func newProgress(io *cli.IO, verbose bool) *progress {
	tty := io.ErrFile != nil && term.IsTerminal(int(io.ErrFile.Fd()))
	return &progress{io: io, tty: tty, verbose: verbose, start: time.Now()}
}

func (p *progress) progress(name string, done, size uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if name != p.name && name != "" {
		p.name = name
		p.done = 0
	}
	if done > p.done {
		p.moved += done - p.done
	}
	p.done, p.size = done, size
	if p.tty && time.Since(p.last) > 100*time.Millisecond {
		p.last = time.Now()
		p.drawLocked()
	}
}

func (p *progress) drawLocked() {
	rate := float64(p.moved) / max(time.Since(p.start).Seconds(), 0.001)
	line := fmt.Sprintf("%s  %s", shorten(printable(p.name), 40), human(p.done))
	if p.size > 0 {
		line += " / " + human(p.size)
		if rate > 0 && p.size > p.done {
			eta := time.Duration(float64(p.size-p.done)/rate) * time.Second
			line += fmt.Sprintf("  ETA %s", eta.Round(time.Second))
		}
	}
	line += fmt.Sprintf("  %s/s", human(uint64(rate)))
	pad := ""
	if n := p.lastLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(p.io.Err, "\r%s%s", line, pad)
	p.lastLen = len(line)
	p.shown = true
}

func (p *progress) clearLocked() {
	if p.shown {
		fmt.Fprintf(p.io.Err, "\r%s\r", strings.Repeat(" ", p.lastLen))
		p.shown = false
	}
}

func (p *progress) file(name string, err error, skipped bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name = printable(name)
	switch {
	case err != nil:
		p.clearLocked()
		fmt.Fprintf(p.io.Err, "zpc: %s: %s\n", name, printable(err.Error()))
	case p.verbose && skipped:
		p.clearLocked()
		fmt.Fprintf(p.io.Err, "%s (up to date)\n", name)
	case p.verbose:
		p.clearLocked()
		fmt.Fprintln(p.io.Err, name)
	}
}

func (p *progress) warn(w string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	fmt.Fprintf(p.io.Err, "zpc: %s\n", printable(w))
}

// printable returns s, quoted if it holds anything but printable
// characters: names and reasons may come from the network, and must not
// drive the terminal (escape sequences) or hide in it (NUL, newlines).
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !strconv.IsPrint(r) { // invalid UTF-8 may be a C1 control
			return strconv.Quote(s)
		}
	}
	return s
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n+1:]
}

func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
