package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zpipes/zp/internal/curve"
)

// Keyring decides which CURVE client keys may act as which users, from
// authorized_keys files like ssh's:
//
//   - every key in the file given to zpd --authorized-keys may act as the
//     user zpd runs as;
//   - a key in ~U/.config/zp/authorized_keys may act as U. Such a file
//     counts only when U (or root) owns it and nobody else can write it,
//     as sshd's StrictModes demands.
//
// A zpd that does not run as root acts only as itself. Files are re-read
// when they change (checked at most once a second), so adding a key
// needs no restart.
type Keyring struct {
	Global string // --authorized-keys file; may be empty
	Self   *Account
	Log    *slog.Logger

	mu      sync.Mutex
	checked time.Time
	stamp   string                       // files and mtimes of the last load
	byKey   map[curve.PublicKey][]string // key -> users it may act as
}

// userKeysPath is where a user lists the keys that may act as them.
func userKeysPath(home string) string {
	return filepath.Join(home, ".config", "zp", "authorized_keys")
}

// Known reports whether key may act as anyone at all. zpd calls it during
// the CURVE handshake, so that unknown keys are refused before any zp
// message is read.
func (k *Keyring) Known(key curve.PublicKey) bool {
	users := k.lookup(key)
	return len(users) > 0
}

// Authorize implements Config.Authorize: it returns the account key may
// act as under the name user.
func (k *Keyring) Authorize(rawKey []byte, user string) (*Account, error) {
	var key curve.PublicKey
	if len(rawKey) != len(key) {
		return nil, errors.New("no client key (NULL mechanism)")
	}
	copy(key[:], rawKey)
	if os.Geteuid() != 0 && user != k.Self.Name {
		return nil, fmt.Errorf("zpd runs as %s and cannot act as %s", k.Self.Name, user)
	}
	for _, u := range k.lookup(key) {
		if u == user {
			if user == k.Self.Name {
				return k.Self, nil
			}
			return LookupAccount(user)
		}
	}
	return nil, fmt.Errorf("key %s is not authorised for user %s", key.Fingerprint(), user)
}

func (k *Keyring) lookup(key curve.PublicKey) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.byKey == nil || time.Since(k.checked) > time.Second {
		k.checked = time.Now()
		files := k.files()
		stamp := stampOf(files)
		if k.byKey == nil || stamp != k.stamp {
			k.byKey = k.load(files)
			k.stamp = stamp
		}
	}
	return k.byKey[key]
}

type keyFile struct {
	path string
	user string
}

// files lists the authorized_keys files to consult: the global one and,
// per user, ~/.config/zp/authorized_keys (every account when zpd is root,
// else only zpd's own).
func (k *Keyring) files() []keyFile {
	var out []keyFile
	if k.Global != "" {
		out = append(out, keyFile{k.Global, k.Self.Name})
	}
	if os.Geteuid() != 0 {
		return append(out, keyFile{userKeysPath(k.Self.Home), k.Self.Name})
	}
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return append(out, keyFile{userKeysPath(k.Self.Home), k.Self.Name})
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 6 || fields[5] == "" || strings.HasPrefix(fields[0], "#") {
			continue
		}
		out = append(out, keyFile{userKeysPath(fields[5]), fields[0]})
	}
	return out
}

func stampOf(files []keyFile) string {
	var b bytes.Buffer
	for _, f := range files {
		if st, err := os.Stat(f.path); err == nil {
			// ctime too: chmod and chown change it, not the mtime.
			var ctime int64
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				ctime = sys.Ctim.Nano()
			}
			fmt.Fprintf(&b, "%s %d %d %d %v\n", f.path, st.ModTime().UnixNano(), ctime, st.Size(), st.Mode())
		}
	}
	return b.String()
}

func (k *Keyring) load(files []keyFile) map[curve.PublicKey][]string {
	m := make(map[curve.PublicKey][]string)
	for _, f := range files {
		keys, err := k.readFile(f)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && k.Log != nil {
				k.Log.Warn("ignoring authorized keys file", "path", f.path, "err", err)
			}
			continue
		}
		for _, key := range keys {
			m[key] = append(m[key], f.user)
		}
	}
	return m
}

func (k *Keyring) readFile(f keyFile) ([]curve.PublicKey, error) {
	file, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, err
	}
	if f.path != k.Global {
		if err := checkOwnership(st, f.user); err != nil {
			return nil, err
		}
	}
	return curve.ParseAuthorizedKeys(file)
}

// checkOwnership refuses a per-user key file that someone other than its
// user (or root) could have written.
func checkOwnership(st fs.FileInfo, user string) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	acct, err := LookupAccount(user)
	if err != nil {
		return err
	}
	if sys.Uid != 0 && sys.Uid != acct.UID {
		return fmt.Errorf("owned by uid %d, not %s", sys.Uid, user)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("writable by group or others (mode %v)", st.Mode().Perm())
	}
	return nil
}
