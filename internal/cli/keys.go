package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zpipes/zp/client"
)

// configDir is $ZP_CONFIG, else ~/.config/zp.
func configDir(getenv func(string) string) string { return client.ConfigDir(getenv) }

func identityPaths(dir string) (secret, public string) { return client.IdentityPaths(dir) }

func knownHostsPath(getenv func(string) string) string {
	return filepath.Join(configDir(getenv), "known_hosts")
}

type keygenOptions struct {
	force bool
	io    *IO
}

func newKeygenCmd(io *IO) *cobra.Command {
	opts := &keygenOptions{io: io}
	c := &cobra.Command{
		Use:   "keygen",
		Short: "create this client's CURVE key pair ($ZP_CONFIG/id_curve)",
		Long: `keygen creates the client identity: id_curve (secret, mode 0600) and id_curve.pub in
$ZP_CONFIG (default ~/.config/zp). It refuses to overwrite an existing key unless --force.
Add the printed public key to ~USER/.config/zp/authorized_keys on the hosts you want to reach
(or to the file given to zpd --authorized-keys).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return keygenRun(opts) },
	}
	c.Flags().BoolVar(&opts.force, "force", false, "overwrite an existing key pair")
	return c
}

func keygenRun(opts *keygenOptions) error {
	dir := configDir(opts.io.Getenv)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return withCode(ExitFailure, err)
	}
	secret, public := identityPaths(dir)
	kp, err := client.GenerateKeyPair()
	if err != nil {
		return withCode(ExitFailure, err)
	}
	if err := client.WriteKeyFiles(secret, public, kp, opts.force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return withCode(ExitFailure, fmt.Errorf("%s already exists; use --force to replace it (clients using it will lose access)", secret))
		}
		return withCode(ExitFailure, err)
	}
	fmt.Fprintf(opts.io.Err, "zp: wrote %s and %s\n", secret, public)
	fmt.Fprintln(opts.io.Out, kp.Public.String())
	fmt.Fprintln(opts.io.Err, "fingerprint:", kp.Public.Fingerprint())
	return nil
}

// secure sets cfg's CURVE security for t: our identity, and the host key
// from known_hosts, learnt and pinned on first contact when the user
// agrees (or --accept-new).
func (f *connFlags) secure(io *IO, t Target, cfg *client.Config) error {
	dir := configDir(io.Getenv)
	kp, err := client.LoadIdentity(dir)
	if errors.Is(err, client.ErrNoIdentity) {
		secret, _ := identityPaths(dir)
		return fmt.Errorf("no client key at %s: run 'zp keygen' first (or --insecure for a zpd started with --insecure)", secret)
	}
	if err != nil {
		return err
	}
	cfg.Key = &kp
	cfg.KnownHosts = &client.KnownHosts{Path: knownHostsPath(io.Getenv)}
	cfg.HostName = t.Host
	cfg.AcceptHost = func(host string, key client.PublicKey) error {
		if !f.acceptNew {
			ok, err := confirmHost(io, host, key)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("host key for %s not accepted", host)
			}
		}
		if !f.quiet {
			fmt.Fprintf(io.Err, "zp: permanently added %s (CURVE %s) to %s\n", host, key.Fingerprint(), cfg.KnownHosts.Path)
		}
		return nil
	}
	return nil
}

// confirmHost asks on the terminal, as ssh does; without a terminal it
// refuses and tells the user what to do.
func confirmHost(io *IO, host string, key client.PublicKey) (bool, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return false, fmt.Errorf("the key of %s is not known (CURVE %s); check it against 'zpd --print-key' on that host, then rerun with --accept-new to pin it", host, key.Fingerprint())
	}
	defer tty.Close()
	fmt.Fprintf(tty, "The authenticity of host '%s' can't be established.\nCURVE key fingerprint is %s.\nAre you sure you want to continue connecting (yes/no)? ", host, key.Fingerprint())
	answer, _ := bufio.NewReader(tty).ReadString('\n')
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "yes" || answer == "y", nil
}

// hostKeyChanged builds the loud refusal for a pinned key that no longer
// matches what the host announces.
func hostKeyChanged(e *client.HostKeyChangedError) error {
	return fmt.Errorf(`@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
The CURVE key of %s is not the one pinned: someone may be intercepting
the connection, or the host's key was regenerated.
pinned:    %s
announced: %s
If the change is expected, remove line %d of %s:
  sed -i '%dd' %s
Connection refused`, e.Host, e.Pinned.Fingerprint(), e.Announced.Fingerprint(), e.Line, e.Path, e.Line, e.Path)
}
