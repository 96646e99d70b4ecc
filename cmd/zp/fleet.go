package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// fleetSelect are the flags that choose agents.
type fleetSelect struct {
	hosts  []string
	labels []string
}

func (f *fleetSelect) selector() (client.Selector, error) {
	sel := client.Selector{Hosts: f.hosts}
	for _, kv := range f.labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return sel, fmt.Errorf("--label %q: want k=v", kv)
		}
		if sel.Labels == nil {
			sel.Labels = map[string]string{}
		}
		sel.Labels[k] = v
	}
	return sel, nil
}

func (f *fleetSelect) describe() string {
	var parts []string
	if len(f.hosts) > 0 {
		parts = append(parts, "--hosts "+strings.Join(f.hosts, ","))
	}
	for _, l := range f.labels {
		parts = append(parts, "--label "+l)
	}
	if len(parts) == 0 {
		return ""
	}
	return " matches " + strings.Join(parts, " ")
}

// dialHub opens a session with a hub and its fleet API.
func dialHub(ctx context.Context, conn *cli.ConnFlags, io *cli.IO, hubArg string) (*client.Session, *client.Fleet, cli.Target, error) {
	if conn.Insecure {
		return nil, nil, cli.Target{}, cli.WithCode(cli.ExitUsage, errors.New("the fleet needs CURVE: drop --insecure"))
	}
	t, err := cli.ParseTarget(hubArg, conn.Port)
	if err != nil {
		return nil, nil, t, cli.WithCode(cli.ExitUsage, err)
	}
	if conn.Login != "" {
		t.User = conn.Login
	}
	t.FleetHub = true
	s, t, err := conn.DialTarget(ctx, io, t, func(c *client.Config) {
		if conn.Timeout == 0 {
			// The hub's answers queue behind the agents' output on
			// this one connection (see fleetPatience).
			c.Timeout = fleetPatience
		}
	})
	if err != nil {
		return nil, nil, t, err
	}
	fl, err := client.NewFleet(s)
	if err != nil {
		s.Close()
		return nil, nil, t, cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
	}
	return s, fl, t, nil
}

// fleetPatience is how long zp --fleet waits for a silent hub or agent
// session, and for an agent's session to open, unless --timeout or
// --connect-timeout say otherwise. Every tunnel shares zp's one
// connection to the hub, so a message (a PONG, an OPEN_OK) may queue
// behind up to the tunnels' windows of other agents' output: on a
// starved machine that took more than the usual 5 s (TestFleet50). A
// dead or stopped agent is still reported after the hub's timeout (5 s):
// the hub fails its tunnels.
const fleetPatience = 30 * time.Second

// fleetError maps a failed fleet request to a message.
func fleetError(t cli.Target, err error) error {
	var we *client.Error
	if errors.As(err, &we) && we.Code == client.CodeUnauthorised {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %s: add your key (zp keygen's id_curve.pub) to the hub's --fleet-clients", t.Host, we.Reason))
	}
	return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
}

type fleetListOptions struct {
	conn    *cli.ConnFlags
	sel     fleetSelect
	asJSON  bool
	promSD  bool
	io      *cli.IO
	hostArg string
}

func newFleetCmd(io *cli.IO, conn *cli.ConnFlags) *cobra.Command {
	opts := &fleetListOptions{conn: conn, io: io}
	c := &cobra.Command{
		Use:   "fleet [flags] HUB",
		Short: "list the agents of a fleet hub",
		Long: `fleet lists the agents that joined the hub HUB (a zpd with --fleet-keys):
NAME ADDRESS LABELS VERSION JOINED LAST-SEEN STATE. An agent silent for three
heartbeats is lost; lost agents stay listed until they join again.

--json prints a JSON array; --prometheus-sd prints Prometheus file service
discovery targets (every agent that serves /metrics, and the hub itself):
  zp fleet hub --prometheus-sd > /etc/prometheus/targets/zp.json

Your key must be in the hub's --fleet-clients.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.hostArg = args[0]
			return fleetListRun(c.Context(), opts)
		},
	}
	c.Flags().StringSliceVar(&opts.sel.hosts, "hosts", nil, "only agents whose names match these shell patterns (comma-separated)")
	c.Flags().StringArrayVar(&opts.sel.labels, "label", nil, "only agents with this label k=v (repeatable)")
	c.Flags().BoolVar(&opts.asJSON, "json", false, "print a JSON array")
	c.Flags().BoolVar(&opts.promSD, "prometheus-sd", false, "print Prometheus file service discovery targets")
	return c
}

func fleetListRun(ctx context.Context, opts *fleetListOptions) error {
	io := opts.io
	if opts.asJSON && opts.promSD {
		return cli.WithCode(cli.ExitUsage, errors.New("--json or --prometheus-sd, not both"))
	}
	sel, err := opts.sel.selector()
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	s, fl, t, err := dialHub(ctx, opts.conn, io, opts.hostArg)
	if err != nil {
		return err
	}
	defer s.Close()
	l, err := fl.List(ctx, sel)
	if err != nil {
		return fleetError(t, err)
	}
	switch {
	case opts.asJSON:
		return writeFleetJSON(io, l.Agents)
	case opts.promSD:
		return writePrometheusSD(io, t, l)
	}
	w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tADDRESS\tLABELS\tVERSION\tJOINED\tLAST-SEEN\tSTATE")
	for _, a := range l.Agents {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, dash(a.Address), dash(labelString(a.Labels)),
			dash(strings.TrimPrefix(a.Software, "zpd/")), a.Joined.Local().Format(time.RFC3339), ago(a.LastSeen), a.State)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func labelString(l map[string]string) string {
	kv := make([]string, 0, len(l))
	for k, v := range l {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	if d < time.Second {
		return "now"
	}
	return d.String() + " ago"
}

// fleetAgentJSON is one agent in zp fleet --json.
type fleetAgentJSON struct {
	Name        string            `json:"name"`
	Key         string            `json:"key"`
	Fingerprint string            `json:"fingerprint"`
	Address     string            `json:"address"`
	Labels      map[string]string `json:"labels"`
	Software    string            `json:"software"`
	Joined      time.Time         `json:"joined"`
	LastSeen    time.Time         `json:"last_seen"`
	State       string            `json:"state"`
	Metrics     string            `json:"metrics,omitempty"`
}

func writeFleetJSON(io *cli.IO, agents []client.Agent) error {
	out := make([]fleetAgentJSON, 0, len(agents))
	for _, a := range agents {
		out = append(out, fleetAgentJSON{Name: a.Name, Key: a.Key, Fingerprint: a.Fingerprint, Address: a.Address,
			Labels: a.Labels, Software: a.Software, Joined: a.Joined, LastSeen: a.LastSeen, State: a.State, Metrics: a.Metrics})
	}
	enc := json.NewEncoder(io.Out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}

// sdTarget is one group of Prometheus file service discovery.
type sdTarget struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

var promLabelBad = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// promLabel makes an agent's label key a valid Prometheus label name that
// cannot stand for another target: an agent chooses its own labels, so
// "job", "instance" and the zp_ labels this output sets itself are
// renamed, not trusted.
func promLabel(k string) string {
	k = promLabelBad.ReplaceAllString(k, "_")
	if k == "" || (k[0] >= '0' && k[0] <= '9') || strings.HasPrefix(k, "__") ||
		k == "job" || k == "instance" || strings.HasPrefix(k, "zp_") {
		k = "label_" + k
	}
	return k
}

func writePrometheusSD(io *cli.IO, t cli.Target, l *client.Listing) error {
	out := []sdTarget{}
	if l.HubMetrics != "" {
		addr := l.HubMetrics
		if strings.HasPrefix(addr, ":") {
			host := "127.0.0.1" // an ipc:// hub is on this machine
			if h, _, err := net.SplitHostPort(t.Host); err == nil {
				host = h
			}
			addr = net.JoinHostPort(host, addr[1:])
		}
		out = append(out, sdTarget{Targets: []string{addr}, Labels: map[string]string{"zp_role": "hub"}})
	}
	for _, a := range l.Agents {
		if a.Metrics == "" {
			continue
		}
		labels := map[string]string{"zp_role": "agent", "zp_agent": a.Name}
		for k, v := range a.Labels {
			if pk := promLabel(k); labels[pk] == "" {
				labels[pk] = v
			}
		}
		out = append(out, sdTarget{Targets: []string{a.Metrics}, Labels: labels})
	}
	enc := json.NewEncoder(io.Out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}

// agentKeys pins each selected agent's key under NAME@HUB in known_hosts
// (trust on first use, as for hosts: asked on a terminal, or
// --accept-new) and returns the key to expect from each; an agent whose
// key is not trusted gets an error instead.
func agentKeys(conn *cli.ConnFlags, io *cli.IO, hub string, agents []client.Agent) (map[string]client.PublicKey, map[string]error, error) {
	kh := &client.KnownHosts{Path: cli.KnownHostsPath(io.Getenv)}
	keys := map[string]client.PublicKey{}
	fails := map[string]error{}
	var unknown []client.Agent
	var unknownKeys []client.PublicKey
	for _, a := range agents {
		listed, err := client.ParsePublicKey(a.Key)
		if err != nil {
			fails[a.Name] = fmt.Errorf("the hub lists a malformed key: %v", err)
			continue
		}
		name := a.Name + "@" + hub
		pinned, line, found, err := kh.Lookup(name)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case !found:
			unknown = append(unknown, a)
			unknownKeys = append(unknownKeys, listed)
		case pinned != listed:
			fails[a.Name] = fmt.Errorf("AGENT KEY CHANGED: %s is pinned as %s, the hub lists %s; the hub or the agent may be an impostor. If the change is expected, remove line %d of %s", name, pinned.Fingerprint(), listed.Fingerprint(), line, kh.Path)
		default:
			keys[a.Name] = listed
		}
	}
	if len(unknown) == 0 {
		return keys, fails, nil
	}
	ok := conn.AcceptNew
	if !ok {
		var err error
		ok, err = confirmAgents(hub, unknown, unknownKeys)
		if err != nil {
			names := make([]string, 0, 5)
			for i, a := range unknown {
				if i == 4 {
					names = append(names, "…")
					break
				}
				names = append(names, a.Name+" "+a.Fingerprint)
			}
			return nil, nil, fmt.Errorf("the keys of %d agent(s) of %s are not known yet (%s); check them against 'zpd --print-key' on the agents, then rerun with --accept-new to pin the keys the hub lists", len(unknown), hub, strings.Join(names, ", "))
		}
	}
	for i, a := range unknown {
		if !ok {
			fails[a.Name] = fmt.Errorf("key of %s@%s not accepted", a.Name, hub)
			continue
		}
		if err := kh.Add(a.Name+"@"+hub, unknownKeys[i]); err != nil {
			return nil, nil, fmt.Errorf("pinning agent keys: %w", err)
		}
		keys[a.Name] = unknownKeys[i]
	}
	if ok && !conn.Quiet {
		fmt.Fprintf(io.Err, "zp: permanently added %d agent key(s) listed by %s to %s\n", len(unknown), hub, kh.Path)
	}
	return keys, fails, nil
}

// confirmAgents asks once, on the terminal, whether to pin the keys the
// hub lists for agents not seen before; without a terminal it fails.
func confirmAgents(hub string, agents []client.Agent, keys []client.PublicKey) (bool, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return false, fs.ErrNotExist
	}
	defer tty.Close()
	fmt.Fprintf(tty, "The hub '%s' lists %d agent(s) whose keys are not known yet:\n", hub, len(agents))
	for i, a := range agents {
		if i == 20 {
			fmt.Fprintf(tty, "  … and %d more\n", len(agents)-20)
			break
		}
		fmt.Fprintf(tty, "  %s  CURVE %s\n", a.Name, keys[i].Fingerprint())
	}
	fmt.Fprint(tty, "Trust these keys and pin them (yes/no)? ")
	answer, _ := bufio.NewReader(tty).ReadString('\n')
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "yes" || answer == "y", nil
}
