// Package fleetcli selects a hub's agents and dials them through tunnels,
// for the zp and zpc commands: the --hosts and --label flags, the session
// with the hub, the agents' keys pinned in known_hosts, and one Dialer
// that opens a session with each agent, a bounded number at once.
package fleetcli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// Select are the flags that choose agents.
type Select struct {
	Hosts  []string
	Labels []string
}

// Register adds --hosts and --label to fs; prefix starts their help
// (e.g. "with --fleet: ").
func (f *Select) Register(fs *pflag.FlagSet, prefix string) {
	fs.StringSliceVar(&f.Hosts, "hosts", nil, prefix+"only agents whose names match these shell patterns (comma-separated)")
	fs.StringArrayVar(&f.Labels, "label", nil, prefix+"only agents with this label k=v (repeatable)")
}

// Selector is the hub's selector for the flags.
func (f *Select) Selector() (client.Selector, error) {
	sel := client.Selector{Hosts: f.Hosts}
	for _, kv := range f.Labels {
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

// Describe says which agents the flags chose, after "no agent of HUB";
// "" when all.
func (f *Select) Describe() string {
	var parts []string
	if len(f.Hosts) > 0 {
		parts = append(parts, "--hosts "+strings.Join(f.Hosts, ","))
	}
	for _, l := range f.Labels {
		parts = append(parts, "--label "+l)
	}
	if len(parts) == 0 {
		return ""
	}
	return " matches " + strings.Join(parts, " ")
}

// Agents lists the hub's agents that sel chooses (sel from Selector); no
// agent at all is an error that names the flags.
func (f *Select) Agents(ctx context.Context, fl *client.Fleet, t cli.Target, sel client.Selector) ([]client.Agent, error) {
	agents, err := fl.Agents(ctx, sel)
	if err != nil {
		return nil, Error(t, err)
	}
	if len(agents) == 0 {
		return nil, cli.WithCode(cli.ExitFailure, fmt.Errorf("no agent of %s%s", t.Host, f.Describe()))
	}
	return agents, nil
}

// DialHub opens a session with a hub and its fleet API.
func DialHub(ctx context.Context, conn *cli.ConnFlags, io *cli.IO, hubArg string) (*client.Session, *client.Fleet, cli.Target, error) {
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
			// this one connection (see Patience).
			c.Timeout = Patience
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

// Patience is how long zp --fleet waits for a silent hub or agent
// session, and for an agent's session to open, unless --timeout or
// --connect-timeout say otherwise. Every tunnel shares zp's one
// connection to the hub, so a message (a PONG, an OPEN_OK) may queue
// behind up to the tunnels' windows of other agents' output: on a
// starved machine that took more than the usual 5 s (TestFleet50). A
// dead or stopped agent is still reported after the hub's timeout (5 s):
// the hub fails its tunnels.
const Patience = 30 * time.Second

// Error maps a failed fleet request to a message.
func Error(t cli.Target, err error) error {
	var we *client.Error
	if errors.As(err, &we) && we.Code == client.CodeUnauthorised {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %s: add your key (zp keygen's id_curve.pub) to the hub's --fleet-clients", t.Host, we.Reason))
	}
	return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s: %v", t.Host, err))
}

// Ago says how long ago t was, to the second ("now", "-" for never).
func Ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	if d < time.Second {
		return "now"
	}
	return d.String() + " ago"
}
