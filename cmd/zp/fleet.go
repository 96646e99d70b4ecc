package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/fleetcli"
)

type fleetListOptions struct {
	conn    *cli.ConnFlags
	sel     fleetcli.Select
	asJSON  bool
	promSD  bool
	tree    bool
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

--tree draws the relay tree of the last broadcast with --fanout (zpc --fleet
HUB --fanout K): which agent takes the content from which, and which
relays are lost (their children go on from the hub).

Your key must be in the hub's --fleet-clients.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.hostArg = args[0]
			return fleetListRun(c.Context(), opts)
		},
	}
	opts.sel.Register(c.Flags(), "")
	c.Flags().BoolVar(&opts.asJSON, "json", false, "print a JSON array")
	c.Flags().BoolVar(&opts.promSD, "prometheus-sd", false, "print Prometheus file service discovery targets")
	c.Flags().BoolVar(&opts.tree, "tree", false, "draw the relay tree of the last broadcast with --fanout")
	return c
}

func fleetListRun(ctx context.Context, opts *fleetListOptions) error {
	io := opts.io
	if opts.asJSON && opts.promSD || opts.tree && (opts.asJSON || opts.promSD) {
		return cli.WithCode(cli.ExitUsage, errors.New("one of --json, --prometheus-sd and --tree"))
	}
	sel, err := opts.sel.Selector()
	if err != nil {
		return cli.WithCode(cli.ExitUsage, err)
	}
	s, fl, t, err := fleetcli.DialHub(ctx, opts.conn, io, opts.hostArg)
	if err != nil {
		return err
	}
	defer s.Close()
	l, err := fl.List(ctx, sel)
	if err != nil {
		return fleetcli.Error(t, err)
	}
	switch {
	case opts.asJSON:
		return writeFleetJSON(io, l.Agents)
	case opts.promSD:
		return writePrometheusSD(io, t, l)
	case opts.tree:
		return writeTree(io, opts.hostArg, l.Agents)
	}
	w := tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tADDRESS\tLABELS\tVERSION\tJOINED\tLAST-SEEN\tSTATE")
	for _, a := range l.Agents {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, dash(a.Address), dash(labelString(a.Labels)),
			dash(strings.TrimPrefix(a.Software, "zpd/")), a.Joined.Local().Format(time.RFC3339), fleetcli.Ago(a.LastSeen), a.State)
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
	Relay       string            `json:"relay,omitempty"`
	Parent      *string           `json:"parent,omitempty"` // in the last relay tree; "" for the hub
	TreeAt      *time.Time        `json:"tree_at,omitempty"`
}

func writeFleetJSON(io *cli.IO, agents []client.Agent) error {
	out := make([]fleetAgentJSON, 0, len(agents))
	for _, a := range agents {
		j := fleetAgentJSON{Name: a.Name, Key: a.Key, Fingerprint: a.Fingerprint, Address: a.Address,
			Labels: a.Labels, Software: a.Software, Joined: a.Joined, LastSeen: a.LastSeen, State: a.State, Metrics: a.Metrics,
			Relay: a.Relay}
		if !a.TreeAt.IsZero() {
			j.Parent, j.TreeAt = &a.Parent, &a.TreeAt
		}
		out = append(out, j)
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

// writeTree draws the relay tree the hub placed its agents in last: the
// agents of the newest tree under their parents, the hub at the root. A
// lost relay is marked: its children finish from the hub.
func writeTree(io *cli.IO, hub string, agents []client.Agent) error {
	var newest time.Time
	for _, a := range agents {
		if a.TreeAt.After(newest) {
			newest = a.TreeAt
		}
	}
	if newest.IsZero() {
		fmt.Fprintf(io.Out, "%s: no relay tree yet (zpc --fleet %s --fanout K places one)\n", hub, hub)
		return nil
	}
	byName := map[string]client.Agent{}
	kids := map[string][]string{}
	var outside []string
	for _, a := range agents {
		byName[a.Name] = a
		if a.TreeAt.Equal(newest) {
			kids[a.Parent] = append(kids[a.Parent], a.Name)
		} else {
			outside = append(outside, a.Name)
		}
	}
	fmt.Fprintf(io.Out, "%s (hub; tree of %s)\n", hub, newest.Local().Format(time.RFC3339))
	var draw func(name, indent string)
	draw = func(name, indent string) {
		ks := kids[name]
		sort.Strings(ks)
		for i, k := range ks {
			branch, next := "├── ", "│   "
			if i == len(ks)-1 {
				branch, next = "└── ", "    "
			}
			a := byName[k]
			note := ""
			switch {
			case a.State != client.AgentUp && len(kids[k]) > 0:
				note = "  [lost: its children go on from the hub]"
			case a.State != client.AgentUp:
				note = "  [lost]"
			case len(kids[k]) > 0:
				note = fmt.Sprintf("  relay to %d", len(kids[k]))
			}
			fmt.Fprintf(io.Out, "%s%s%s%s\n", indent, branch, k, note)
			draw(k, indent+next)
		}
	}
	draw("", "")
	if len(outside) > 0 {
		sort.Strings(outside)
		fmt.Fprintf(io.Out, "not in this tree: %s\n", strings.Join(outside, " "))
	}
	return nil
}
