package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/internal/curve"
)

// Keyring decides which CURVE client keys may act as which users, from
// authorized_keys files like ssh's:
//
//   - every key in the file given to zpd --authorized-keys may act as the
//     user zpd runs as;
//   - a key in ~U/.config/zp/authorized_keys may act as U. Such a file
//     counts only when it is a regular file (not a symlink, FIFO or
//     device) of at most maxKeysFile octets that U (or root) owns and
//     nobody else can write, in directories up to U's home that U (or
//     root) owns and nobody else can write, as sshd's StrictModes demands.
//
// A zpd that does not run as root acts only as itself. Files are re-read
// when they change (checked at most once a second), so adding a key
// needs no restart. Files are opened without blocking and read by one
// goroutine at a time outside the lock: meanwhile handshakes use the keys
// of the last read, so nothing a user puts in their home can stall
// another user's handshake.
type Keyring struct {
	Global string // --authorized-keys file; may be empty
	Self   *Account
	Log    *slog.Logger

	mu       sync.Mutex
	checked  time.Time
	stamp    string                       // files and mtimes of the last load
	byKey    map[curve.PublicKey][]string // key -> users it may act as
	loading  chan struct{}                // non-nil while a reload runs; closed when done
	problems map[string]string            // path -> why it was last refused (logged once)
}

// maxKeysFile bounds what the keyring reads of one authorized_keys file.
const maxKeysFile = 1 << 20

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

// lookup returns the users key may act as. At most once a second one
// caller re-reads the files (outside the lock); the others use the keys
// of the last read, and wait only for the very first one.
func (k *Keyring) lookup(key curve.PublicKey) []string {
	k.mu.Lock()
	if k.loading == nil && (k.byKey == nil || time.Since(k.checked) > time.Second) {
		k.checked = time.Now()
		done := make(chan struct{})
		k.loading = done
		old, first := k.stamp, k.byKey == nil
		k.mu.Unlock()
		files := k.files()
		stamp := stampOf(files)
		var m map[curve.PublicKey][]string
		if first || stamp != old {
			m = k.load(files)
		}
		k.mu.Lock()
		if m != nil {
			k.byKey, k.stamp = m, stamp
		}
		k.loading = nil
		close(done)
	}
	for k.byKey == nil && k.loading != nil {
		wait := k.loading
		k.mu.Unlock()
		<-wait
		k.mu.Lock()
	}
	users := k.byKey[key]
	k.mu.Unlock()
	return users
}

type keyFile struct {
	path string
	user string
	home string // the user's home for a per-user file; "" for --authorized-keys
}

// files lists the authorized_keys files to consult: the global one and,
// per user, ~/.config/zp/authorized_keys (every account when zpd is root,
// else only zpd's own).
func (k *Keyring) files() []keyFile {
	var out []keyFile
	if k.Global != "" {
		out = append(out, keyFile{k.Global, k.Self.Name, ""})
	}
	if os.Geteuid() != 0 {
		return append(out, keyFile{userKeysPath(k.Self.Home), k.Self.Name, k.Self.Home})
	}
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return append(out, keyFile{userKeysPath(k.Self.Home), k.Self.Name, k.Self.Home})
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 6 || fields[5] == "" || strings.HasPrefix(fields[0], "#") {
			continue
		}
		out = append(out, keyFile{userKeysPath(fields[5]), fields[0], fields[5]})
	}
	return out
}

// stampOf describes the files and the directories checked with them
// (without opening anything): a change to any of them triggers a re-read.
func stampOf(files []keyFile) string {
	var b bytes.Buffer
	for _, f := range files {
		paths, stat := []string{f.path}, os.Stat // the global file may be a symlink
		if f.home != "" {
			stat = os.Lstat
			for d := filepath.Dir(f.path); len(d) >= len(f.home) && d != "/"; d = filepath.Dir(d) {
				paths = append(paths, d)
			}
		}
		for _, p := range paths {
			if st, err := stat(p); err == nil {
				// ctime too: chmod and chown change it, not the mtime.
				var ctime int64
				var uid uint32
				if sys, ok := st.Sys().(*syscall.Stat_t); ok {
					ctime, uid = sys.Ctim.Nano(), sys.Uid
				}
				fmt.Fprintf(&b, "%s %d %d %d %v %d\n", p, st.ModTime().UnixNano(), ctime, st.Size(), st.Mode(), uid)
			}
		}
	}
	return b.String()
}

func (k *Keyring) load(files []keyFile) map[curve.PublicKey][]string {
	m := make(map[curve.PublicKey][]string)
	problems := make(map[string]string)
	for _, f := range files {
		keys, err := k.readFile(f)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				problems[f.path] = err.Error()
			}
			continue
		}
		for _, key := range keys {
			m[key] = append(m[key], f.user)
		}
	}
	k.report(problems)
	return m
}

// report logs why a file is refused when the reason is new, and when a
// refused file is accepted again: once, not on every handshake.
func (k *Keyring) report(problems map[string]string) {
	k.mu.Lock()
	old := k.problems
	k.problems = problems
	k.mu.Unlock()
	if k.Log == nil {
		return
	}
	for path, why := range problems {
		if old[path] != why {
			k.Log.Warn("ignoring authorized keys file", "path", path, "err", why)
		}
	}
	for path := range old {
		if _, ok := problems[path]; !ok {
			k.Log.Info("authorized keys file no longer refused", "path", path)
		}
	}
}

func (k *Keyring) readFile(f keyFile) ([]curve.PublicKey, error) {
	var owner *Account
	if f.home != "" {
		if _, err := os.Lstat(f.path); err != nil {
			return nil, err // mostly: no such file (before any user lookup)
		}
		acct, err := k.account(f.user)
		if err != nil {
			return nil, err
		}
		owner = acct
		if err := checkDirs(filepath.Dir(f.path), acct); err != nil {
			return nil, err
		}
	}
	b, err := readKeysFile(f.path, owner)
	if err != nil {
		return nil, err
	}
	return curve.ParseAuthorizedKeys(bytes.NewReader(b))
}

func (k *Keyring) account(user string) (*Account, error) {
	if user == k.Self.Name {
		return k.Self, nil
	}
	return LookupAccount(user)
}

// readKeysFile reads an authorized_keys file without ever blocking on it:
// it must be a regular file of at most maxKeysFile octets. A user's file
// (owner not nil) must also not be a symlink, and belong to owner (or
// root) and be writable by nobody else; the --authorized-keys file, the
// administrator's, may be a symlink.
func readKeysFile(path string, owner *Account) ([]byte, error) {
	// Stat first: a device or FIFO is refused before it is opened
	// (opening a device can have effects); fstat after the open checks
	// that it is still the same file.
	stat, flags := os.Stat, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC
	if owner != nil {
		stat, flags = os.Lstat, flags|unix.O_NOFOLLOW
	}
	lst, err := stat(path)
	if err != nil {
		return nil, err
	}
	if lst.Mode()&fs.ModeSymlink != 0 {
		return nil, errors.New("is a symbolic link")
	}
	if !lst.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%v)", lst.Mode().Type())
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, errors.New("is a symbolic link")
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || !os.SameFile(st, lst) {
		return nil, errors.New("not a regular file (replaced while opening)")
	}
	if owner != nil {
		if err := checkOwner(st, owner); err != nil {
			return nil, err
		}
	}
	if st.Size() > maxKeysFile {
		return nil, fmt.Errorf("larger than %d octets", maxKeysFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeysFile {
		return nil, fmt.Errorf("larger than %d octets", maxKeysFile)
	}
	return b, nil
}

// checkDirs checks, as sshd's StrictModes, every directory from dir up to
// the owner's home (or up to / when dir is not below it), symlinks
// resolved: each must belong to the owner or root and be writable by
// nobody else.
func checkDirs(dir string, owner *Account) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	home, err := filepath.EvalSymlinks(owner.Home)
	if err != nil {
		home = filepath.Clean(owner.Home)
	}
	for d := real; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("%s: not a directory", d)
		}
		if err := checkOwner(st, owner); err != nil {
			return fmt.Errorf("directory %s: %w", d, err)
		}
		if d == home || d == "/" {
			return nil
		}
	}
}

// checkOwner refuses a file or directory that someone other than owner
// (or root) could have written.
func checkOwner(st fs.FileInfo, owner *Account) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner information")
	}
	if sys.Uid != 0 && sys.Uid != owner.UID {
		return fmt.Errorf("owned by uid %d, not %s", sys.Uid, owner.Name)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("writable by group or others (mode %v)", st.Mode().Perm())
	}
	return nil
}
