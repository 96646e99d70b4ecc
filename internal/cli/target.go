package cli

import "github.com/zpipes/zp/client"

// DefaultPort is zpd's control port; XPUB and XSUB use the next two.
const DefaultPort = client.DefaultPort

// Target is where a command goes: a zpd endpoint and the remote user.
type Target struct {
	client.Target
	FleetHub bool // a fleet hub: messages name --fleet-clients
}

// ParseTarget parses [user@]host[:port], [user@]tcp://host:port or
// [user@]ipc:///path. port overrides the port when non-zero.
func ParseTarget(s string, port int) (Target, error) {
	t, err := client.ParseTarget(s, port)
	return Target{Target: t}, err
}
