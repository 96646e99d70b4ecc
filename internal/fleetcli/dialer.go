package fleetcli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// Dials bounds the agents zp dials at once (each dial is a tunnel
// and a CURVE handshake through the hub); commands then run all at once.
const Dials = 64

// Dialer opens sessions with a hub's agents through tunnels.
type Dialer struct {
	fl        *client.Fleet
	keys      map[string]client.PublicKey
	untrusted map[string]error // agents whose key cannot be trusted
	kp        client.KeyPair
	user      string
	timeout   time.Duration
	connect   time.Duration
}

// NewDialer pins the agents' keys, loads ours, and sizes the tunnels.
func NewDialer(conn *cli.ConnFlags, io *cli.IO, t cli.Target, fl *client.Fleet, agents []client.Agent, connectTimeoutSet bool) (*Dialer, error) {
	keys, untrusted, err := AgentKeys(conn, io, t.Host, agents)
	if err != nil {
		return nil, cli.WithCode(cli.ExitFailure, err)
	}
	kp, err := client.LoadIdentity(cli.ConfigDir(io.Getenv))
	if err != nil {
		return nil, cli.WithCode(cli.ExitFailure, fmt.Errorf("client key: %w", err))
	}
	// What the hub may hold for this command, at most a window per
	// tunnel: 8 MiB in all, between 16 KiB and 1 MiB per agent. Every
	// tunnel shares zp's one connection to the hub, so this is also how
	// far a message (an OPEN_OK, a PONG) may queue behind other agents'
	// output: 32 MiB took over 5 s to drain on a starved 2-core machine
	// (TestFleet50 saw an agent's OPEN_OK time out).
	fl.TunnelWindow = min(1<<20, max(16<<10, (8<<20)/max(len(agents), 1)))
	ad := &Dialer{fl: fl, keys: keys, untrusted: untrusted, kp: kp, user: t.RemoteUser(),
		timeout: conn.Timeout, connect: conn.ConnectTimeout}
	if ad.timeout == 0 {
		ad.timeout = Patience
	}
	if !connectTimeoutSet {
		ad.connect = Patience
	}
	return ad, nil
}

// Dial opens a session with agent a through a tunnel.
func (ad *Dialer) Dial(ctx context.Context, a client.Agent) (*client.Session, error) {
	return ad.fl.DialAgent(ctx, a, client.Config{
		User: ad.user, Key: &ad.kp, ServerKey: ad.keys[a.Name],
		ConnectTimeout: ad.connect, Timeout: ad.timeout,
		ClientName: "zp/" + client.Version,
	})
}

// Unusable says why agent a cannot be reached now (the hub lost it, or
// its key is not trusted): a short reason for a summary, and the error;
// "" when it can.
func (ad *Dialer) Unusable(a client.Agent) (string, error) {
	if err := ad.untrusted[a.Name]; err != nil {
		return "untrusted key", err
	}
	if a.State != client.AgentUp {
		return "unreachable", fmt.Errorf("lost by the hub (last seen %s)", Ago(a.LastSeen))
	}
	return "", nil
}

// Open dials a, at most cap(sem) agents at once, and says why it failed
// as zp does for a host.
func (ad *Dialer) Open(ctx context.Context, a client.Agent, sem chan struct{}) (*client.Session, string, error) {
	sem <- struct{}{}
	sess, err := ad.Dial(ctx, a)
	<-sem
	if err != nil {
		return nil, DialFailure(err), cli.DescribeConnectError(cli.Target{Target: client.Target{Host: a.Name, User: ad.user}}, err)
	}
	return sess, "", nil
}

// DialFailure names why an agent could not be reached, for the summary.
func DialFailure(err error) string {
	var he *client.HandshakeError
	if client.IsCode(err, client.CodeUnauthorised) || (errors.As(err, &he) && he.Refused != "") {
		return "unauthorised"
	}
	return "unreachable"
}
