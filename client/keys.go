package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/zmtp"
)

// PublicKey is a CURVE (Curve25519) public key: a client's identity or a
// server's host key.
type PublicKey [32]byte

// String is the key in Z85 (40 characters), as in key files and
// known_hosts.
func (k PublicKey) String() string { return curve.PublicKey(k).String() }

// Fingerprint is the short form users compare (as zpd --print-key shows).
func (k PublicKey) Fingerprint() string { return curve.PublicKey(k).Fingerprint() }

// IsZero reports whether k is unset.
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// ParsePublicKey parses a Z85 public key.
func ParsePublicKey(s string) (PublicKey, error) {
	k, err := curve.ParsePublicKey(s)
	return PublicKey(k), err
}

// SecretKey is a CURVE secret key. String and GoString do not reveal it.
type SecretKey [32]byte

func (SecretKey) String() string     { return "client.SecretKey(REDACTED)" }
func (k SecretKey) GoString() string { return k.String() }

// KeyPair is a long-term CURVE key pair: a client's identity.
type KeyPair struct {
	Public PublicKey
	Secret SecretKey
}

func (kp KeyPair) curve() curve.KeyPair {
	return curve.KeyPair{Public: curve.PublicKey(kp.Public), Secret: curve.SecretKey(kp.Secret)}
}

// GenerateKeyPair makes a new key pair from crypto/rand.
func GenerateKeyPair() (KeyPair, error) {
	kp, err := curve.GenerateKeyPair()
	return KeyPair{Public: PublicKey(kp.Public), Secret: SecretKey(kp.Secret)}, err
}

// LoadKeyPair reads a secret key file (zcert format, as zp keygen, czmq or
// pyzmq write it). It refuses a file that group or others may read.
func LoadKeyPair(path string) (KeyPair, error) {
	kp, err := curve.LoadKeyPair(path)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{Public: PublicKey(kp.Public), Secret: SecretKey(kp.Secret)}, nil
}

// LoadPublicKey reads the public key of a key file (public or secret).
func LoadPublicKey(path string) (PublicKey, error) {
	k, err := curve.LoadPublicKey(path)
	return PublicKey(k), err
}

// WriteKeyFiles writes kp as a secret key file (mode 0600) and a public
// key file. It refuses to replace existing files (fs.ErrExist) unless
// force.
func WriteKeyFiles(secretPath, publicPath string, kp KeyPair, force bool) error {
	return curve.WriteKeyFiles(secretPath, publicPath, kp.curve(), force)
}

// ConfigDir is where zp keeps the client's identity and known_hosts:
// $ZP_CONFIG, else ~/.config/zp. getenv is os.Getenv when nil.
func ConfigDir(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	if d := getenv("ZP_CONFIG"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "zp")
	}
	return ".zp"
}

// IdentityPaths are the client's key files in a config directory:
// id_curve (secret) and id_curve.pub.
func IdentityPaths(dir string) (secret, public string) {
	return filepath.Join(dir, "id_curve"), filepath.Join(dir, "id_curve.pub")
}

// ErrNoIdentity: the client has no key pair yet (run zp keygen).
var ErrNoIdentity = errors.New("client: no client key")

// LoadIdentity reads the client's key pair from a config directory
// (ConfigDir). A missing file is ErrNoIdentity.
func LoadIdentity(dir string) (KeyPair, error) {
	secret, _ := IdentityPaths(dir)
	kp, err := LoadKeyPair(secret)
	if errors.Is(err, fs.ErrNotExist) {
		return KeyPair{}, fmt.Errorf("%w at %s: run 'zp keygen' first", ErrNoIdentity, secret)
	}
	return kp, err
}

// KnownHosts is a file of pinned host keys, "HOST Z85KEY [comment]" a
// line (zp's $ZP_CONFIG/known_hosts). HOST is host:port or an ipc://
// endpoint, as Target.Host. Its methods are safe for concurrent use within
// one process; Add appends with O_APPEND.
type KnownHosts struct {
	Path string
}

var khMu sync.Mutex

// Lookup returns the key pinned for host and its line number; found is
// false when none is.
func (k *KnownHosts) Lookup(host string) (key PublicKey, line int, found bool, err error) {
	khMu.Lock()
	defer khMu.Unlock()
	f, err := os.Open(k.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return key, 0, false, nil
	}
	if err != nil {
		return key, 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 2 || fields[0] != host {
			continue
		}
		key, err := ParsePublicKey(fields[1])
		if err != nil {
			return key, n, false, fmt.Errorf("%s:%d: %v", k.Path, n, err)
		}
		return key, n, true, nil
	}
	return key, 0, false, sc.Err()
}

// Add pins key for host (appending a line; the directory is made 0700
// and the file 0600 when missing).
func (k *KnownHosts) Add(host string, key PublicKey) error {
	if strings.ContainsAny(host, " \t\r\n") || host == "" {
		return fmt.Errorf("known_hosts: bad host name %q", host)
	}
	khMu.Lock()
	defer khMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(k.Path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(k.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s added %s\n", host, key.String(), time.Now().Format("2006-01-02"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// UnknownHostError: the host's key is not pinned and Config.AcceptHost
// did not accept it (or is nil). Key is what the host announced: check
// its fingerprint against zpd --print-key on that host.
type UnknownHostError struct {
	Host string
	Key  PublicKey
	// Err is AcceptHost's refusal, if it gave one.
	Err error
}

func (e *UnknownHostError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("host key for %s not accepted: %v", e.Host, e.Err)
	}
	return fmt.Sprintf("the key of %s is not known (CURVE %s)", e.Host, e.Key.Fingerprint())
}
func (e *UnknownHostError) Unwrap() error { return e.Err }

// HostKeyChangedError: the host announces a key that is not the one
// pinned in known_hosts. Someone may be intercepting the connection, or
// the host's key was regenerated; the connection is refused.
type HostKeyChangedError struct {
	Host              string
	Path              string // the known_hosts file
	Line              int    // the pinned line in it
	Pinned, Announced PublicKey
}

func (e *HostKeyChangedError) Error() string {
	return fmt.Sprintf("the CURVE key of %s (%s) is not the one pinned at %s:%d (%s)",
		e.Host, e.Announced.Fingerprint(), e.Path, e.Line, e.Pinned.Fingerprint())
}

// ErrServerInsecure: the server runs without encryption (zpd --insecure);
// connect with Config.Insecure.
var ErrServerInsecure = errors.New("the server runs without encryption (zpd --insecure)")

// QueryServerKey asks the zpd at endpoint for its public key, as on first
// contact. The key is NOT authenticated by this call: compare its
// fingerprint out of band before pinning it. The CURVE handshake that
// follows proves that the server holds the matching secret key.
func QueryServerKey(ctx context.Context, endpoint string, timeout time.Duration) (PublicKey, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	s, err := zmtp.QueryServerKey(ctx, endpoint, timeout)
	if errors.Is(err, zmtp.ErrServerInsecure) {
		return PublicKey{}, ErrServerInsecure
	}
	if err != nil {
		return PublicKey{}, err
	}
	k, err := ParsePublicKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("the server announced a malformed key: %v", err)
	}
	return k, nil
}

// resolveServerKey finds the key to expect from the server: Config.ServerKey,
// else the pinned one, else (first contact) the announced one if AcceptHost
// accepts it, which is then pinned. It returns the known_hosts line it used
// (0 when none).
func resolveServerKey(ctx context.Context, cfg *Config) (PublicKey, int, error) {
	if !cfg.ServerKey.IsZero() {
		return cfg.ServerKey, 0, nil
	}
	if cfg.KnownHosts == nil {
		return PublicKey{}, 0, errors.New("client: Config needs ServerKey or KnownHosts (or Insecure)")
	}
	host := cfg.hostName()
	key, line, found, err := cfg.KnownHosts.Lookup(host)
	if err != nil {
		return PublicKey{}, 0, err
	}
	if found {
		return key, line, nil
	}
	key, err = QueryServerKey(ctx, cfg.Endpoint, cfg.connectTimeout())
	if err != nil {
		return PublicKey{}, 0, &ConnectError{Endpoint: cfg.Endpoint, Err: err}
	}
	if cfg.AcceptHost == nil {
		return PublicKey{}, 0, &UnknownHostError{Host: host, Key: key}
	}
	if err := cfg.AcceptHost(host, key); err != nil {
		return PublicKey{}, 0, &UnknownHostError{Host: host, Key: key, Err: err}
	}
	if err := cfg.KnownHosts.Add(host, key); err != nil {
		return PublicKey{}, 0, fmt.Errorf("pinning host key: %w", err)
	}
	return key, 0, nil
}

// hostChanged checks, after a failed handshake against a pinned key,
// whether the host now announces another key.
func hostChanged(ctx context.Context, cfg *Config, pinned PublicKey, line int, err error) error {
	var he *zmtp.HandshakeError
	if line == 0 || !errors.As(err, &he) || he.Reason == zmtp.ReasonRejected {
		return nil
	}
	now, qerr := QueryServerKey(ctx, cfg.Endpoint, cfg.connectTimeout())
	if qerr != nil || now == pinned {
		return nil
	}
	return &HostKeyChangedError{Host: cfg.hostName(), Path: cfg.KnownHosts.Path, Line: line, Pinned: pinned, Announced: now}
}

// Connect opens a session with target ("[user@]host[:port]", or a
// tcp:// or ipc:// endpoint, as zp takes it) the way zp does: the remote
// user defaults to the local user name; unless cfg says otherwise, the
// identity is ConfigDir's id_curve and host keys are pinned in ConfigDir's
// known_hosts. Other fields of cfg apply as in Dial (set cfg.AcceptHost to
// pin a new host's key on first contact).
func Connect(ctx context.Context, target string, cfg Config) (*Session, error) {
	t, err := ParseTarget(target, 0)
	if err != nil {
		return nil, err
	}
	cfg.Endpoint = t.Endpoint
	if cfg.User == "" {
		cfg.User = t.RemoteUser()
	}
	if cfg.HostName == "" {
		cfg.HostName = t.Host
	}
	if !cfg.Insecure {
		dir := ConfigDir(nil)
		if cfg.Key == nil {
			kp, err := LoadIdentity(dir)
			if err != nil {
				return nil, err
			}
			cfg.Key = &kp
		}
		if cfg.ServerKey.IsZero() && cfg.KnownHosts == nil {
			cfg.KnownHosts = &KnownHosts{Path: filepath.Join(dir, "known_hosts")}
		}
	}
	if cfg.ClientName == "" {
		cfg.ClientName = "zp-go/" + Version
	}
	return Dial(ctx, cfg)
}
