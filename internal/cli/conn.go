package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/zpipes/zp/client"
)

// ConnFlags are the flags every zp/zpc command shares to reach a zpd.
type ConnFlags struct {
	Insecure       bool
	Port           int
	Login          string
	Timeout        time.Duration
	ConnectTimeout time.Duration
	Quiet          bool
	AcceptNew      bool
	Reconnect      time.Duration
}

// ReconnectFor is how long a command that can continue after a lost
// connection keeps trying.
func (f *ConnFlags) ReconnectFor() time.Duration { return f.Reconnect }

// Register adds the flags to c; portShort is the port's one-letter form
// ("p" for zp as ssh, "P" for zpc as scp, whose -p preserves).
func (f *ConnFlags) Register(c *cobra.Command, portShort string) {
	fs := c.PersistentFlags()
	fs.BoolVar(&f.Insecure, "insecure", false, "connect without CURVE encryption (only to a zpd started with --insecure)")
	fs.IntVarP(&f.Port, "port", portShort, 0, "zpd port (default 5750)")
	fs.StringVarP(&f.Login, "login", "l", "", "remote user (as user@host)")
	fs.DurationVar(&f.Timeout, "timeout", 0, "give up when the server is silent this long (default: the server's, 5s)")
	fs.DurationVar(&f.ConnectTimeout, "connect-timeout", 5*time.Second, "give up connecting after this long")
	fs.BoolVarP(&f.Quiet, "quiet", "q", false, "print no diagnostics of zp's own")
	fs.DurationVar(&f.Reconnect, "reconnect-for", time.Minute, "keep trying this long to reconnect after the connection is lost")
	fs.BoolVar(&f.AcceptNew, "accept-new", false, "pin an unknown host's key without asking (scripts); a changed key is still refused")
}

// Dial opens a session with the target.
func (f *ConnFlags) Dial(ctx context.Context, io *IO, hostArg string, opts ...func(*client.Config)) (*client.Session, Target, error) {
	t, err := ParseTarget(hostArg, f.Port)
	if err != nil {
		return nil, t, WithCode(ExitFailure, err)
	}
	if f.Login != "" {
		t.User = f.Login
	}
	return f.DialTarget(ctx, io, t, opts...)
}

// DialTarget opens a session with a parsed target.
func (f *ConnFlags) DialTarget(ctx context.Context, io *IO, t Target, opts ...func(*client.Config)) (*client.Session, Target, error) {
	cfg := client.Config{
		Endpoint:       t.Endpoint,
		User:           t.RemoteUser(),
		ConnectTimeout: f.ConnectTimeout,
		Timeout:        f.Timeout,
		ClientName:     "zp/" + client.Version,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if f.Insecure {
		cfg.Insecure = true
	} else if err := f.secure(io, t, &cfg); err != nil {
		return nil, t, WithCode(ExitFailure, err)
	}
	s, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, t, WithCode(ExitFailure, DescribeConnectError(t, err))
	}
	return s, t, nil
}

// DescribeConnectError turns a dial failure into a sentence for users.
func DescribeConnectError(t Target, err error) error {
	var hc *client.HostKeyChangedError
	if errors.As(err, &hc) {
		return hostKeyChanged(hc)
	}
	var uh *client.UnknownHostError
	if errors.As(err, &uh) && uh.Err != nil {
		return uh.Err // our own refusal (confirmHost)
	}
	if errors.Is(err, client.ErrServerInsecure) {
		return fmt.Errorf("%s runs without encryption (zpd --insecure): connect with --insecure", t.Host)
	}
	var we *client.Error
	if errors.As(err, &we) {
		switch we.Code {
		case client.CodeUnauthorised:
			return fmt.Errorf("%s refused: %s", t.Host, we.Reason)
		}
		return fmt.Errorf("%s: %s", t.Host, we.Reason)
	}
	var he *client.HandshakeError
	if errors.As(err, &he) {
		switch {
		case he.Reason == client.HandshakeMechanism && strings.Contains(he.Error(), "server-key="):
			return fmt.Errorf("cannot connect to %s: security mismatch: it requires CURVE encryption; drop --insecure", t.Host)
		case he.Refused != "" && t.FleetHub:
			return fmt.Errorf("%s refused our key (%s): add the output of 'zp keygen' (id_curve.pub) to the hub's --fleet-clients", t.Host, he.Refused)
		case he.Refused != "":
			return fmt.Errorf("%s refused our key (%s): add %s to ~%s/.config/zp/authorized_keys there", t.Host, he.Refused, "the output of 'zp keygen' (id_curve.pub)", t.RemoteUser())
		case he.Reason == client.HandshakeMechanism:
			return fmt.Errorf("cannot connect to %s: security mismatch (%v); is zpd running with --insecure, or are you?", t.Host, he.Err)
		case he.Reason == client.HandshakeTimeout:
			return fmt.Errorf("cannot connect to %s: handshake timeout", t.Host)
		}
		return fmt.Errorf("cannot connect to %s: handshake failed (%s): %v", t.Host, he.Reason, he.Err)
	}
	return err
}
