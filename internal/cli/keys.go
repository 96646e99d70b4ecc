package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"

	"github.com/zpipes/zp/client"
)

// ConfigDir is $ZP_CONFIG, else ~/.config/zp.
func ConfigDir(getenv func(string) string) string { return client.ConfigDir(getenv) }

// IdentityPaths are the client's key files in dir.
func IdentityPaths(dir string) (secret, public string) { return client.IdentityPaths(dir) }

// KnownHostsPath is the known_hosts file zp and zpc pin host keys in.
func KnownHostsPath(getenv func(string) string) string {
	return filepath.Join(ConfigDir(getenv), "known_hosts")
}

// secure sets cfg's CURVE security for t: our identity, and the host key
// from known_hosts, learnt and pinned on first contact when the user
// agrees (or --accept-new).
func (f *ConnFlags) secure(io *IO, t Target, cfg *client.Config) error {
	dir := ConfigDir(io.Getenv)
	kp, err := client.LoadIdentity(dir)
	if errors.Is(err, client.ErrNoIdentity) {
		secret, _ := IdentityPaths(dir)
		return fmt.Errorf("no client key at %s: run 'zp keygen' first (or --insecure for a zpd started with --insecure)", secret)
	}
	if err != nil {
		return err
	}
	cfg.Key = &kp
	cfg.KnownHosts = &client.KnownHosts{Path: KnownHostsPath(io.Getenv)}
	cfg.HostName = t.Host
	cfg.AcceptHost = func(host string, key client.PublicKey) error {
		if !f.AcceptNew {
			ok, err := confirmHost(io, host, key)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("host key for %s not accepted", host)
			}
		}
		if !f.Quiet {
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
