package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/fleetcli"
)

// fleetCopy are zpc's flags for a broadcast.
type fleetCopy struct {
	hub    string
	sel    fleetcli.Select
	async  bool
	status string // --status ID
	retry  string // --retry-failed ID
	fanout int    // --fanout K: a relay tree
	// fanoutSet: --fanout was given (--retry-failed otherwise takes the
	// record's).
	fanoutSet bool
	// connectTimeoutSet: --connect-timeout was given (else agents get
	// fleetcli.Patience).
	connectTimeoutSet bool
}

func (f *fleetCopy) register(c *cobra.Command) {
	fs := c.Flags()
	fs.StringVar(&f.hub, "fleet", "", "broadcast to the agents of the hub HUB ([user@]host[:port]): zpc --fleet HUB [-r] SRC... [user@]:DEST")
	f.sel.Register(fs, "with --fleet: ")
	fs.BoolVar(&f.async, "async", false, "with --fleet: run the broadcast in the background and print its id at once (see --status)")
	fs.StringVar(&f.status, "status", "", "with --fleet: how the broadcast ID went (or goes), per host")
	fs.StringVar(&f.retry, "retry-failed", "", "with --fleet: broadcast ID again, to the hosts that did not prove its digest")
	fs.IntVar(&f.fanout, "fanout", 0, "with --fleet: a relay tree: the hub feeds at most K agents and each of those relays to at most K more (0: the hub feeds every agent)")
}

// args checks the positional arguments: none with --status or
// --retry-failed, else SRC... DEST.
func (f *fleetCopy) args(c *cobra.Command, args []string) error {
	status, _ := c.Flags().GetString("status")
	retry, _ := c.Flags().GetString("retry-failed")
	if status != "" || retry != "" {
		if len(args) > 0 {
			return cli.WithCode(cli.ExitUsage, errors.New("--status and --retry-failed take a broadcast id, and no SRC or DEST"))
		}
		return nil
	}
	return cobra.MinimumNArgs(2)(c, args)
}

func (f *fleetCopy) check(c *cobra.Command) error {
	f.connectTimeoutSet = c.Flags().Changed("connect-timeout")
	f.fanoutSet = c.Flags().Changed("fanout")
	if f.hub == "" {
		for _, fl := range []string{"hosts", "label", "async", "status", "retry-failed", "fanout"} {
			if c.Flags().Changed(fl) {
				return cli.WithCode(cli.ExitUsage, fmt.Errorf("--%s goes with --fleet HUB", fl))
			}
		}
	}
	if f.fanout < 0 || f.fanout > maxFanout {
		return cli.WithCode(cli.ExitUsage, fmt.Errorf("--fanout %d: 0 (no relays) to %d", f.fanout, maxFanout))
	}
	return nil
}

const fleetCopyHelp = `
Broadcast: zpc --fleet HUB [--hosts GLOB,...] [--label k=v]... [-r] [-p] SRC... [user@]:DEST
sends the tree to the hub once; the hub publishes it to every selected agent,
which writes it under DEST (as the user the agent's authorized_keys allow for
your key) exactly as an upload does, and proves it with the tree digest (the
SHA-256 of the manifest: paths, kinds, modes, times, sizes and each file's
SHA-256). Files an agent already holds with the same digest are not sent to it;
the files no selected agent lacks are not sent at all. An agent that misses
part of the publication, is cut off or restarts fetches what it lacks from the
hub. With --fanout K the hub feeds at most K agents, each of which republishes
the (sealed) content to at most K more, and so on: no node sends more than K
copies. A child whose relay dies or stalls goes on from the hub. zp fleet HUB
--tree shows the tree. A table shows each host on a terminal; --json prints one object per host.
Every broadcast gets an id (B…), recorded in the client's config directory:
  zpc --fleet HUB --async ...          starts it in the background, prints the id
  zpc --fleet HUB --status ID [--json] how it went (or goes), per host
  zpc --fleet HUB --retry-failed ID    sends it again to the hosts that did not
                                       prove its digest (files already there are
                                       not sent again)
Exit status: 0 when every host proved the tree digest; 1 when entries failed on
some host (each named); 255 when a host could not be reached.`

// hostCopy is how the broadcast went on one agent.
type hostCopy struct {
	Host     string   `json:"host"`
	State    string   `json:"state"` // ok, failed, unreachable, unauthorised
	Digest   string   `json:"digest,omitempty"`
	Received uint64   `json:"bytes_received"` // publication octets taken, live or repaired
	Repaired uint64   `json:"bytes_repaired"` // of which fetched from the hub
	Written  uint64   `json:"bytes_written"`
	Deduped  uint64   `json:"bytes_deduplicated"`
	Needed   uint64   `json:"bytes_needed"`
	Seconds  float64  `json:"seconds"`
	Retries  int      `json:"reconnects"`
	Failures []string `json:"failures"`
	Error    string   `json:"error,omitempty"`
	// Relay trees (--fanout): the host's parent ("" for the hub), what it
	// received from it, what it republished to its children, and whether
	// it gave its parent up and went on from the hub.
	Parent     string `json:"parent,omitempty"`
	FromRelay  uint64 `json:"bytes_from_relay,omitempty"`
	Relayed    uint64 `json:"bytes_relayed,omitempty"`
	Reparented bool   `json:"reparented,omitempty"`

	agent client.Agent
	// relaying is its place in the relay tree; parent the host it takes
	// the content from. ready is closed once it follows the content (its
	// first BCAST_PROGRESS; relayOK) or ended: then its children go.
	relaying  *client.Relaying
	parent    *hostCopy
	ready     chan struct{}
	readyOnce sync.Once
	relayOK   atomic.Bool
	start     time.Time
	end       time.Time // when it ended
	need      *client.Need
	sess      *client.Session
	err       error // what ended it, when not ok
	why       string
}

// recordEnv names the record an --async run's background zpc works for.
const recordEnv = "ZP_BCAST_RECORD"

// fleetCopyMain runs zpc --fleet: a broadcast, its --status, or a retry.
func fleetCopyMain(ctx context.Context, opts *zpcOptions, args []string) error {
	io := opts.io
	fo := &opts.fleet
	switch {
	case fo.status != "":
		return fleetStatus(opts, fo.status)
	case fo.retry != "":
		rec, err := loadRecord(io, fo.retry)
		if err != nil {
			return cli.WithCode(cli.ExitUsage, err)
		}
		if rec.running() {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("broadcast %s is still running (pid %d)", rec.ID, rec.PID))
		}
		failed := rec.failed()
		if len(failed) == 0 {
			fmt.Fprintf(io.Err, "zpc: every host of broadcast %s proved its digest: nothing to retry\n", rec.ID)
			return nil
		}
		if len(fo.sel.Hosts) > 0 || len(fo.sel.Labels) > 0 {
			return cli.WithCode(cli.ExitUsage, errors.New("--retry-failed chooses the hosts itself: no --hosts or --label"))
		}
		fo.sel.Hosts = failed
		opts.recursive, opts.preserve = rec.Recursive, rec.Preserve
		if !fo.fanoutSet {
			fo.fanout = rec.Fanout // the same tree shape, unless told otherwise
		}
		rec.State, rec.PID, rec.Error = "running", os.Getpid(), ""
		return finishRecord(rec, fleetCopyRun(ctx, opts, rec.Sources, rec.Dest, rec))
	case os.Getenv(recordEnv) != "":
		rec, err := loadRecord(io, os.Getenv(recordEnv))
		if err != nil {
			return cli.WithCode(cli.ExitFailure, err)
		}
		rec.PID = os.Getpid()
		return finishRecord(rec, fleetCopyRun(ctx, opts, args[:len(args)-1], args[len(args)-1], rec))
	}
	rec, err := newRecord(io, fo.hub, args[:len(args)-1], args[len(args)-1], opts.recursive, opts.preserve)
	if err == nil && fo.fanout > 0 {
		rec.Fanout = fo.fanout
		err = rec.save()
	}
	if err != nil {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("recording the broadcast: %w", err))
	}
	if fo.async {
		return fleetAsync(opts, rec)
	}
	return finishRecord(rec, fleetCopyRun(ctx, opts, args[:len(args)-1], args[len(args)-1], rec))
}

// finishRecord records a run that ended before trying any host (the
// hub unreachable, a usage error), and returns its error.
func finishRecord(rec *bcastRecord, err error) error {
	if err != nil && rec.State == "running" {
		rec.State, rec.Ended, rec.Error = "failed", time.Now(), err.Error()
		_ = rec.save()
	}
	return err
}

// fleetAsync starts this zpc again in the background, for rec, and prints
// rec's id.
func fleetAsync(opts *zpcOptions, rec *bcastRecord) error {
	io := opts.io
	self, err := os.Executable()
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--async" {
			args = append(args, a)
		}
	}
	logf, err := os.OpenFile(strings.TrimSuffix(rec.path, ".json")+".log", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	defer logf.Close()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), recordEnv+"="+rec.ID)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("starting the background zpc: %w", err))
	}
	rec.PID = cmd.Process.Pid
	_ = rec.save()
	_ = cmd.Process.Release()
	fmt.Fprintln(io.Out, rec.ID)
	return nil
}

// fleetStatus prints how broadcast id went, per host.
func fleetStatus(opts *zpcOptions, id string) error {
	io := opts.io
	rec, err := loadRecord(io, id)
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	state := rec.State
	if state == "running" && !rec.running() {
		state = "died" // the background zpc ended without finishing the record
	}
	if opts.asJSON {
		enc := json.NewEncoder(io.Out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		rec.State = state // shown, not saved
		return enc.Encode(rec)
	}
	fmt.Fprintf(io.Out, "%s  %s  %s -> %s on %s  started %s\n", rec.ID, state, strings.Join(rec.Sources, " "), rec.Dest, rec.Hub, rec.Started.Format(time.RFC3339))
	if rec.Error != "" {
		fmt.Fprintf(io.Out, "  %s\n", rec.Error)
	}
	for _, h := range rec.Hosts {
		line := fmt.Sprintf("  %-20s %-12s %10s written %10s already there  %.1fs", printable(h.Host), h.State, human(h.Written), human(h.Deduped), h.Seconds)
		if h.Error != "" {
			line += "  " + h.Error
		}
		fmt.Fprintln(io.Out, line)
	}
	if state != "done" {
		return cli.WithCode(1, fmt.Errorf("broadcast %s is %s", rec.ID, state))
	}
	if f := rec.failed(); len(f) > 0 {
		return cli.WithCode(1, fmt.Errorf("%d of %d hosts did not prove the digest: zpc --fleet %s --retry-failed %s", len(f), len(rec.Hosts), rec.Hub, rec.ID))
	}
	return nil
}

// fleetCopyRun broadcasts srcs to DEST on the selected agents and keeps
// the outcome in rec.
func fleetCopyRun(ctx context.Context, opts *zpcOptions, srcs []string, dst string, rec *bcastRecord) error {
	io := opts.io
	fo := &opts.fleet
	if fo.hub == "" {
		fo.hub = rec.Hub
	}
	user, dest, ok := strings.Cut(dst, ":")
	if !ok || (user != "" && !strings.HasSuffix(user, "@")) || strings.ContainsAny(user, "/:") {
		return cli.WithCode(cli.ExitUsage, errors.New("with --fleet the destination is [user@]:DEST (the agents' path)"))
	}
	user = strings.TrimSuffix(user, "@")
	for _, s := range srcs {
		if _, remote := parseRemote(s); remote {
			return cli.WithCode(cli.ExitUsage, fmt.Errorf("%s: a broadcast sends local files", s))
		}
	}
	sel, err := fo.sel.Selector()
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	var warned []string
	var wmu sync.Mutex
	single := len(srcs) == 1 && !strings.HasSuffix(srcs[0], "/")
	tree, err := client.BuildTree(srcs, client.TreeOptions{Recursive: opts.recursive,
		Warn: func(msg string, failed bool) {
			fmt.Fprintf(io.Err, "zpc: %s\n", printable(msg))
			if failed {
				wmu.Lock()
				warned = append(warned, msg)
				wmu.Unlock()
			}
		}})
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
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
	at := t
	if user != "" {
		at.User = user
	}
	ad, err := fleetcli.NewDialer(conn, io, at, fl, agents, fo.connectTimeoutSet)
	if err != nil {
		return err
	}
	b := &broadcast{opts: opts, tree: tree, fl: fl, ad: ad, dest: dest, single: single && !isDir(srcs[0]),
		sem: make(chan struct{}, fleetcli.Dials), view: newFleetView(io, opts.asJSON), rec: rec}
	rec.Digest, rec.Entries, rec.Bytes = tree.Digest(), tree.Entries(), tree.Bytes()
	_ = rec.save()
	hosts := b.run(ctx, agents)
	b.view.finish()
	return b.report(hosts, t, warned)
}

// broadcast is one zpc --fleet run.
type broadcast struct {
	opts     *zpcOptions
	tree     *client.Tree
	fl       *client.Fleet
	ad       *fleetcli.Dialer
	dest     string
	single   bool
	sem      chan struct{}
	view     *fleetView
	manifest *client.Publication
	chunks   *client.Publication // the chunk index, or nil
	rec      *bcastRecord

	mu      sync.Mutex
	content *client.Publication // once every host said what it lacks
	union   *client.Need
	// contentErr: the content could not be published (no agent gets it).
	contentErr error
	ready      chan struct{} // closed when content and union are set
	// subscribed gets a value from each agent once it follows the
	// content publication (or gave up).
	subscribed chan struct{}
}

// run takes the broadcast through its two rounds: every agent says what
// it lacks; then the union is published and every agent writes the tree.
func (b *broadcast) run(ctx context.Context, agents []client.Agent) []*hostCopy {
	hosts := make([]*hostCopy, len(agents))
	var names []string
	for i, a := range agents {
		h := &hostCopy{Host: a.Name, agent: a, start: time.Now(), Failures: []string{}}
		hosts[i] = h
		if h.why, h.err = b.ad.Unusable(a); h.err != nil {
			h.State = "unreachable"
			continue
		}
		names = append(names, a.Name)
	}
	if len(names) == 0 {
		return hosts
	}
	b.ready = make(chan struct{})
	b.subscribed = make(chan struct{}, len(agents))
	m, err := b.fl.PublishManifest(ctx, names, b.tree)
	if err != nil {
		for _, h := range hosts {
			if h.State == "" {
				h.State, h.err = "unreachable", fmt.Errorf("publishing the manifest to the hub: %w", err)
			}
		}
		return hosts
	}
	b.manifest = m
	defer m.Close()
	if b.chunks, err = b.fl.PublishChunks(ctx, names, b.tree); err != nil {
		// Only the agents' dedupe of chunks is lost: go on without.
		b.view.warn(fmt.Sprintf("publishing the chunk index to the hub: %v (changed files are sent whole)", err))
	} else if b.chunks != nil {
		defer b.chunks.Close()
	}

	var asked, wg sync.WaitGroup
	sessions := make([]*client.AgentBroadcast, len(hosts))
	for i, h := range hosts {
		if h.State != "" {
			continue
		}
		b.view.add(h)
		asked.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ab, err := b.ask(ctx, h)
			if err != nil {
				h.end = time.Now()
				h.State, h.err = "unreachable", err
				if h.why == "unauthorised" {
					h.State = h.why
				}
				b.view.done(h)
			}
			sessions[i] = ab
			asked.Done()
			if ab != nil {
				b.apply(ctx, h, ab)
			}
		}()
	}
	asked.Wait()
	b.union = b.tree.NewNeed()
	var receivers []string
	for i, h := range hosts {
		if sessions[i] != nil {
			b.union.Add(h.need)
			receivers = append(receivers, h.Host)
		}
	}
	for _, h := range hosts {
		h.ready = make(chan struct{})
	}
	if len(receivers) > 0 && b.tree.ContentBytes(b.union) > 0 {
		if b.opts.fleet.fanout > 0 && len(receivers) > b.opts.fleet.fanout {
			b.placeTree(ctx, hosts, receivers)
		}
		start := make(chan struct{})
		go b.startContent(ctx, len(receivers), start)
		c, err := b.fl.PublishContent(ctx, receivers, b.tree, b.union, func(path string) {
			b.view.warn(fmt.Sprintf("%s changed while it was broadcast: the agents refuse it (run zpc again)", path))
		}, start)
		if err != nil {
			b.contentErr = fmt.Errorf("publishing the content to the hub: %w", err)
		} else {
			b.content = c
			defer c.Close()
		}
	}
	close(b.ready)
	wg.Wait()
	return hosts
}

// subscribeWait bounds how long the content waits for the agents to
// subscribe to it: one that is slower fetches what it missed.
const subscribeWait = 2 * time.Second

// startContent closes start once n agents said they follow the content
// publication (their first BCAST_PROGRESS, or their end), or after
// subscribeWait.
func (b *broadcast) startContent(ctx context.Context, n int, start chan struct{}) {
	defer close(start)
	t := time.NewTimer(subscribeWait)
	defer t.Stop()
	for range n {
		select {
		case <-b.subscribed:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// ask dials h's agent and asks what it lacks, trying again while the
// agent is unreachable, for up to --reconnect-for.
func (b *broadcast) ask(ctx context.Context, h *hostCopy) (*client.AgentBroadcast, error) {
	var lost time.Time
	for {
		sess, why, err := b.ad.Open(ctx, h.agent, b.sem)
		if why == "unauthorised" {
			h.why = why
			return nil, err // the agent refused the key or user: trying again would not help
		}
		var ab *client.AgentBroadcast
		if err == nil {
			ab, err = sess.StartBroadcast(ctx, client.BroadcastRequest{Tree: b.tree, Manifest: b.manifest, Chunks: b.chunks, Dest: b.dest,
				Recursive: b.opts.recursive, Preserve: b.opts.preserve, Single: b.single})
			if err != nil {
				sess.Close()
			}
		}
		if err == nil {
			h.sess, h.need = sess, ab.Need
			if h.Retries == 0 {
				h.Deduped = ab.Have
			}
			h.Needed = b.tree.NeedBytes(ab.Need)
			b.view.update(h, client.BroadcastStats{Deduped: ab.Have})
			return ab, nil
		}
		if !b.retryable(ctx, err) {
			return nil, err
		}
		if lost.IsZero() {
			lost = time.Now()
		}
		if time.Since(lost) > b.opts.conn.ReconnectFor() {
			return nil, fmt.Errorf("%v; gave up after %v", err, b.opts.conn.ReconnectFor())
		}
		h.Retries++
		b.view.warn(fmt.Sprintf("%s: %v; trying again", h.Host, err))
		if !b.waitUp(ctx, h) {
			return nil, err
		}
	}
}

// apply waits for the content and has the agent write the tree; when the
// agent is lost it starts it again on a new session, which resumes: the
// files already in place are not needed any more.
func (b *broadcast) apply(ctx context.Context, h *hostCopy, ab *client.AgentBroadcast) {
	defer b.view.done(h)
	defer func() { h.end = time.Now() }()
	select {
	case <-b.ready:
	case <-ctx.Done():
		ab.Close()
		h.State, h.err = "failed", ctx.Err()
		return
	}
	var once sync.Once
	following := func() { once.Do(func() { b.subscribed <- struct{}{} }) }
	defer following()
	defer h.readyOnce.Do(func() { close(h.ready) })
	if b.contentErr != nil {
		ab.Close()
		h.State, h.err = "failed", b.contentErr
		return
	}
	ab.Relaying = b.relaying(ctx, h)
	for {
		if !b.union.Covers(ab.Need) {
			ab.Close()
			h.State, h.err = "failed", errors.New("it lacks files that no agent lacked when the broadcast began (they changed there meanwhile): run zpc again")
			return
		}
		var last *client.BroadcastStats // the attempt's latest counts
		r, err := ab.Go(ctx, b.content, b.union, func(st client.BroadcastStats) {
			last = &st
			following()
			if ab.Relaying != nil {
				h.relayOK.Store(true)
			}
			h.readyOnce.Do(func() { close(h.ready) })
			b.view.update(h, st)
		})
		h.sess.Close()
		switch {
		case r != nil:
			h.record(r)
			b.view.update(h, r.Stats)
		case last != nil:
			// The session was lost: what the agent took before counts.
			h.record(&client.BroadcastResult{Stats: *last})
		}
		if err == nil {
			h.State, h.Digest = "ok", r.Digest
			return
		}
		var we *client.Error
		switch {
		case b.retryable(ctx, err):
		case errors.As(err, &we) && !we.Session:
			h.State, h.err = "failed", err // the agent refused the tree, or entries failed
			return
		default:
			h.State, h.err = "unreachable", err
			return
		}
		if h.Retries >= maxReconnects {
			h.State, h.err = "unreachable", fmt.Errorf("%v; gave up after %d reconnections", err, h.Retries)
			return
		}
		h.Retries++
		b.view.warn(fmt.Sprintf("%s: %v; reconnecting to resume", h.Host, err))
		if ab, err = b.ask(ctx, h); err != nil {
			h.State, h.err = "unreachable", err
			return
		}
		// Started again: from the hub, relaying to nobody (its children
		// went on from the hub when it fell silent).
	}
}

// maxFanout is --fanout's largest value.
const maxFanout = 64

// placeTree asks the hub for a relay tree over the receivers and gives
// each host its place. Without one (a hub that predates relay trees), the
// hub feeds every agent.
func (b *broadcast) placeTree(ctx context.Context, hosts []*hostCopy, receivers []string) {
	nodes, err := b.fl.Tree(ctx, b.opts.fleet.fanout, receivers)
	if err != nil {
		b.view.warn(fmt.Sprintf("no relay tree (%v): the hub sends to every agent", err))
		return
	}
	byName := make(map[string]*hostCopy, len(hosts))
	for _, h := range hosts {
		byName[h.Host] = h
	}
	byNode := make(map[string]client.TreeNode, len(nodes))
	for _, n := range nodes {
		byNode[n.Name] = n
	}
	relays := 0
	for _, n := range nodes {
		h, p, pn := byName[n.Name], byName[n.Parent], byNode[n.Parent]
		if n.Parent == "" || h == nil || p == nil || pn.Relay == "" {
			continue
		}
		if p.relaying == nil {
			p.relaying = &client.Relaying{}
		}
		if len(p.relaying.Children) == 0 {
			relays++
		}
		p.relaying.Children = append(p.relaying.Children, n.Key)
		if h.relaying == nil {
			h.relaying = &client.Relaying{}
		}
		h.relaying.Parent, h.relaying.ParentKey, h.relaying.ParentControl = pn.Relay, pn.Key, pn.Control
		h.parent, h.Parent = p, p.Host
	}
	fed := 0
	for _, h := range hosts {
		if h.parent == nil && h.need != nil {
			fed++
		}
	}
	b.view.warn(fmt.Sprintf("relay tree of fanout %d: the hub feeds %d agents, %d relays feed %d", b.opts.fleet.fanout, fed, relays, len(receivers)-fed))
}

// relaying is h's place in the relay tree once its parent follows the
// content (at most subscribeWait); nil for none. A parent that ended
// without following it leaves h to the hub.
func (b *broadcast) relaying(ctx context.Context, h *hostCopy) *client.Relaying {
	if h.relaying == nil {
		return nil
	}
	r := *h.relaying
	if p := h.parent; p != nil {
		t := time.NewTimer(subscribeWait)
		defer t.Stop()
		select {
		case <-p.ready:
		case <-t.C:
		case <-ctx.Done():
		}
		if !p.relayOK.Load() {
			r.Parent, r.ParentKey, r.ParentControl = "", "", ""
			h.Parent = ""
		}
	}
	if r.Parent == "" && len(r.Children) == 0 {
		return nil
	}
	return &r
}

// maxReconnects bounds how often a host's broadcast starts again.
const maxReconnects = 20

// retryable: the session was lost (the agent, its link or the hub), not
// refused.
func (b *broadcast) retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var we *client.Error
	var pe *client.ProtocolError
	switch {
	case errors.Is(err, client.ErrNoBroadcast), errors.As(err, &pe):
		return false
	case errors.As(err, &we):
		// The agent or hub going away, not a refusal (key, user, path).
		return we.Code == client.CodeUnavailable || we.Code == client.CodeGone
	}
	return true
}

// waitUp waits until the hub lists h's agent as up again (a second
// between looks), for up to --reconnect-for; false if it does not come
// back or ctx ends.
func (b *broadcast) waitUp(ctx context.Context, h *hostCopy) bool {
	deadline := time.Now().Add(b.opts.conn.ReconnectFor())
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
		l, err := b.fl.Agents(ctx, client.Selector{Hosts: []string{h.Host}})
		if err != nil {
			return false // the hub itself is gone
		}
		for _, a := range l {
			if a.Name == h.Host && a.State == client.AgentUp {
				h.agent = a
				return true
			}
		}
	}
	return false
}

// record adds a finished attempt's figures.
func (h *hostCopy) record(r *client.BroadcastResult) {
	h.Written += r.Stats.Written
	h.Received += r.Stats.Live + r.Stats.Repaired
	h.Repaired += r.Stats.Repaired
	h.FromRelay += r.Stats.FromRelay
	h.Relayed += r.Stats.Relayed
	h.Reparented = h.Reparented || r.Stats.Reparented
	h.Failures = append(h.Failures[:0], r.Failures...)
}

// report prints the outcome and returns the exit status.
func (b *broadcast) report(hosts []*hostCopy, t cli.Target, warned []string) error {
	io := b.opts.io
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Host < hosts[j].Host })
	var ok, failed, unreachable int
	for _, h := range hosts {
		if h.end.IsZero() {
			h.end = time.Now()
		}
		h.Seconds = h.end.Sub(h.start).Seconds()
		if h.err != nil {
			h.Error = printable(h.err.Error())
		}
		switch {
		case h.State == "ok" && h.Digest == b.tree.Digest():
			ok++
		case h.State == "ok":
			h.State, h.Error = "failed", fmt.Sprintf("proved digest %s, not the tree's %s", h.Digest, b.tree.Digest())
			failed++
		case h.State == "failed":
			failed++
		case h.State == "unauthorised":
			unreachable++
		default:
			h.State = "unreachable"
			unreachable++
		}
	}
	if b.opts.asJSON {
		enc := json.NewEncoder(io.Out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(struct {
			Digest  string      `json:"digest"`
			Entries int         `json:"entries"`
			Bytes   uint64      `json:"bytes"`
			Hosts   []*hostCopy `json:"hosts"`
		}{b.tree.Digest(), b.tree.Entries(), b.tree.Bytes(), hosts})
	} else {
		for _, h := range hosts {
			switch h.State {
			case "ok":
				if b.opts.verbose {
					fmt.Fprintf(io.Err, "%s: ok, %s written, %s already there, %.1f s\n", h.Host, human(h.Written), human(h.Deduped), h.Seconds)
				}
			default:
				fmt.Fprintf(io.Err, "zpc: %s: %s: %s\n", h.Host, h.State, h.Error)
				for _, f := range h.Failures {
					fmt.Fprintf(io.Err, "zpc: %s: %s\n", h.Host, printable(f))
				}
			}
		}
	}
	b.rec.merge(hosts)
	b.rec.State, b.rec.Ended = "done", time.Now()
	if err := b.rec.save(); err != nil {
		fmt.Fprintf(io.Err, "zpc: recording broadcast %s: %v\n", b.rec.ID, err)
	}
	if !b.opts.conn.Quiet {
		fmt.Fprintf(io.Err, "zpc: broadcast %s: %d of %d hosts proved tree %s (%d entries, %s)\n", b.rec.ID, ok, len(hosts), b.tree.Digest()[:16], b.tree.Entries(), human(b.tree.Bytes()))
		if ok < len(hosts) {
			fmt.Fprintf(io.Err, "zpc: to send it again to the others: zpc --fleet %s --retry-failed %s\n", b.opts.fleet.hub, b.rec.ID)
		}
	}
	switch {
	case unreachable > 0:
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("%d of %d hosts could not be reached or refused the key", unreachable, len(hosts)))
	case failed > 0:
		return cli.WithCode(1, fmt.Errorf("%d of %d hosts failed", failed, len(hosts)))
	case len(warned) > 0:
		return cli.WithCode(1, fmt.Errorf("%d sources could not be read (not broadcast)", len(warned)))
	}
	return nil
}
