package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/zmtp"
)

// configDir is $ZP_CONFIG, else ~/.config/zp.
func configDir(getenv func(string) string) string {
	if d := getenv("ZP_CONFIG"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "zp")
	}
	return ".zp"
}

func identityPaths(dir string) (secret, public string) {
	return filepath.Join(dir, "id_curve"), filepath.Join(dir, "id_curve.pub")
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
	kp, err := curve.GenerateKeyPair()
	if err != nil {
		return withCode(ExitFailure, err)
	}
	if err := curve.WriteKeyFiles(secret, public, kp, opts.force); err != nil {
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

// knownHosts is $ZP_CONFIG/known_hosts: "HOST Z85KEY [comment]" lines.
type knownHosts struct {
	path string
}

type khEntry struct {
	line int
	key  curve.PublicKey
}

func (k knownHosts) lookup(host string) (*khEntry, error) {
	f, err := os.Open(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != host {
			continue
		}
		key, err := curve.ParsePublicKey(fields[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", k.path, n, err)
		}
		return &khEntry{line: n, key: key}, nil
	}
	return nil, sc.Err()
}

func (k knownHosts) add(host string, key curve.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(k.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s added %s\n", host, key.String(), time.Now().Format("2006-01-02"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// curveClient resolves the mechanism for connecting to t: our identity,
// and the host key from known_hosts — learning and pinning it on first
// contact when the user agrees (or --accept-new).
func (f *connFlags) curveClient(ctx context.Context, io *IO, t Target) (*curve.Client, *khEntry, error) {
	dir := configDir(io.Getenv)
	secret, _ := identityPaths(dir)
	kp, err := curve.LoadKeyPair(secret)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no client key at %s: run 'zp keygen' first (or --insecure for a zpd started with --insecure)", secret)
	}
	if err != nil {
		return nil, nil, err
	}
	kh := knownHosts{path: filepath.Join(dir, "known_hosts")}
	entry, err := kh.lookup(t.Host)
	if err != nil {
		return nil, nil, err
	}
	if entry != nil {
		return &curve.Client{Key: kp, ServerKey: entry.key}, entry, nil
	}
	announced, err := zmtp.QueryServerKey(ctx, t.Endpoint, f.connectTimeout)
	if errors.Is(err, zmtp.ErrServerInsecure) {
		return nil, nil, fmt.Errorf("%s runs without encryption (zpd --insecure): connect with --insecure", t.Host)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cannot connect to %s: %w", t.Host, err)
	}
	key, err := curve.ParsePublicKey(announced)
	if err != nil {
		return nil, nil, fmt.Errorf("%s announced a malformed key: %v", t.Host, err)
	}
	if !f.acceptNew {
		ok, err := confirmHost(io, t.Host, key)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			return nil, nil, fmt.Errorf("host key for %s not accepted", t.Host)
		}
	}
	if err := kh.add(t.Host, key); err != nil {
		return nil, nil, fmt.Errorf("pinning host key: %w", err)
	}
	if !f.quiet {
		fmt.Fprintf(io.Err, "zp: permanently added %s (CURVE %s) to %s\n", t.Host, key.Fingerprint(), kh.path)
	}
	return &curve.Client{Key: kp, ServerKey: key}, nil, nil
}

// confirmHost asks on the terminal, as ssh does; without a terminal it
// refuses and tells the user what to do.
func confirmHost(io *IO, host string, key curve.PublicKey) (bool, error) {
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
func hostKeyChanged(path string, host string, e *khEntry, now curve.PublicKey) error {
	return fmt.Errorf(`@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
The CURVE key of %s is not the one pinned: someone may be intercepting
the connection, or the host's key was regenerated.
pinned:    %s
announced: %s
If the change is expected, remove line %d of %s:
  sed -i '%dd' %s
Connection refused`, host, e.key.Fingerprint(), now.Fingerprint(), e.line, path, e.line, path)
}
