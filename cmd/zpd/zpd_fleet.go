package main

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/internal/cli"
	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/wire"
)

// zpdFleetOptions are zpd's fleet flags: a hub's (--fleet-keys,
// --fleet-clients, --max-tunnels) and an agent's (--join and the rest).
type zpdFleetOptions struct {
	fleetKeys    string
	fleetClients string
	maxTunnels   int
	join         string
	name         string
	labels       []string
	hubKey       string
	fleetUsers   []string
	noRelay      bool
}

func (o *zpdFleetOptions) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.fleetKeys, "fleet-keys", "", "hub: file of the agents' server keys (Z85 per line, as zpd --print-key shows them) that may join; re-read when changed")
	fs.StringVar(&o.fleetClients, "fleet-clients", "", "hub: file of client keys that may list the fleet and reach agents through this hub; re-read when changed")
	fs.IntVar(&o.maxTunnels, "max-tunnels", 10000, "hub: tunnels one client session may hold")
	fs.StringVar(&o.join, "join", "", "agent: join the hub HUB (host[:port], tcp://host:port or ipc:///path); rejoins by itself")
	fs.StringVar(&o.name, "name", "", "agent: this agent's name on the hub (default: the host name)")
	fs.StringArrayVar(&o.labels, "label", nil, "agent: a label k=v shown in listings and used to select agents (repeatable)")
	fs.StringVar(&o.hubKey, "hub-key", "", "agent: the hub's public key (Z85); default: learn it on first contact and pin it in STATE/hub_known_hosts")
	fs.BoolVar(&o.noRelay, "no-relay", false, "agent: never relay broadcasts to other agents (zpc --fleet --fanout); by default the agent offers its XPUB's port to its hub")
	fs.StringSliceVar(&o.fleetUsers, "fleet-users", nil, "agent: the only users a session through the hub may act as (comma-separated; default: any user the keys allow)")
}

func (o *zpdFleetOptions) hub() bool   { return o.fleetKeys != "" || o.fleetClients != "" }
func (o *zpdFleetOptions) agent() bool { return o.join != "" }

// configure adds the fleet to a zpd's broker configuration. kp is the
// server key pair; metricsAddr the bound /metrics address ("" for none).
func (o *zpdFleetOptions) configure(cfg *broker.Config, kp curve.KeyPair, metricsAddr string) (agents, clients *broker.KeyList, err error) {
	if !o.agent() {
		for _, f := range []struct {
			name string
			set  bool
		}{{"--name", o.name != ""}, {"--label", len(o.labels) > 0}, {"--hub-key", o.hubKey != ""}, {"--fleet-users", len(o.fleetUsers) > 0}, {"--no-relay", o.noRelay}} {
			if f.set {
				return nil, nil, fmt.Errorf("%s goes with --join", f.name)
			}
		}
	}
	if o.hub() {
		for _, p := range []string{o.fleetKeys, o.fleetClients} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				return nil, nil, fmt.Errorf("%w (create it, even empty, to start a hub)", err)
			}
		}
		if o.maxTunnels <= 0 {
			return nil, nil, fmt.Errorf("--max-tunnels %d: want a positive number", o.maxTunnels)
		}
		agents = &broker.KeyList{Path: o.fleetKeys, Log: cfg.Logger}
		clients = &broker.KeyList{Path: o.fleetClients, Log: cfg.Logger}
		cfg.Hub = &broker.HubConfig{Agents: agents, Clients: clients, MaxTunnels: o.maxTunnels, Metrics: reportedMetrics(metricsAddr)}
	}
	if o.agent() {
		t, err := cli.ParseTarget(o.join, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("--join %q: %v", o.join, err)
		}
		if t.User != "" {
			return nil, nil, fmt.Errorf("--join %q: no user@ here (the hub admits this zpd by its key)", o.join)
		}
		name := o.name
		if name == "" {
			host, err := os.Hostname()
			if err != nil {
				return nil, nil, fmt.Errorf("no --name and no host name: %w", err)
			}
			name = strings.SplitN(host, ".", 2)[0]
			if wire.ValidAgentName(name) != nil {
				return nil, nil, fmt.Errorf("the host name %q is not a valid agent name: give --name (1-63 of A-Z a-z 0-9 . _ -)", host)
			}
		} else if err := wire.ValidAgentName(name); err != nil {
			return nil, nil, fmt.Errorf("--name %q: 1-63 of A-Z a-z 0-9 . _ -, not starting with . or -", name)
		}
		labels := map[string]string{}
		for _, kv := range o.labels {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, nil, fmt.Errorf("--label %q: want k=v", kv)
			}
			if err := wire.ValidLabel(k, v); err != nil {
				return nil, nil, fmt.Errorf("--label %q: the key is 1-63 of a-z 0-9 _ . -, the value at most 255 octets without , or =", kv)
			}
			labels[k] = v
		}
		if o.hubKey != "" {
			if _, err := curve.ParsePublicKey(o.hubKey); err != nil {
				return nil, nil, fmt.Errorf("--hub-key: %v", err)
			}
		}
		cfg.Agent = &broker.AgentConfig{Hub: t.Endpoint, HubKey: o.hubKey, Key: kp, Name: name, Labels: labels,
			Metrics: reportedMetrics(metricsAddr), Users: o.fleetUsers, NoRelay: o.noRelay}
	}
	return agents, clients, nil
}

// reportedMetrics is how a zpd tells others where its /metrics are: the
// bound address, or ":PORT" when it listens on every address (the hub
// then uses the address it sees).
func reportedMetrics(addr string) string {
	if addr == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return ":" + port
	}
	return addr
}
