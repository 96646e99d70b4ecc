package broker

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/curve"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// keyringUser creates an unprivileged user with a home and removes it at
// cleanup; the test is skipped when not root.
func keyringUser(t *testing.T, name string) *Account {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: the keyring's per-user checks must be tested there")
		}
		t.Skip("needs root: creates a user and reads their authorized_keys as a root zpd does")
	}
	exec.Command("userdel", "-r", name).Run()
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", "-r", name).Run() })
	a, err := LookupAccount(name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// A root zpd's keyring must never block or trust what a user controls:
// a FIFO, a symlink, a directory others may write. Each is refused at
// once, its reason logged once, and other users' handshakes go on.
func TestKeyringHostileUserFiles(t *testing.T) {
	// A name of this process's own: another test run on the machine
	// (another checkout) must not share, or delete, this user.
	u := keyringUser(t, fmt.Sprintf("zpkr%d", os.Getpid()))
	self, err := CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	userKey, _ := curve.GenerateKeyPair()
	adminKey, _ := curve.GenerateKeyPair()
	global := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(global, []byte(adminKey.Public.String()+"\n"), 0o600)
	var logs lockedBuffer
	ring := &Keyring{Global: global, Self: self, Log: slog.New(slog.NewTextHandler(&logs, nil))}

	zdir := filepath.Join(u.Home, ".config", "zp")
	keys := filepath.Join(zdir, "authorized_keys")
	mkdirOwned := func(t *testing.T) {
		for _, d := range []string{filepath.Join(u.Home, ".config"), zdir} {
			os.Mkdir(d, 0o700)
			os.Chown(d, int(u.UID), int(u.GID))
			os.Chmod(d, 0o700)
		}
	}
	writeKeys := func(t *testing.T) {
		t.Helper()
		os.Remove(keys)
		if err := os.WriteFile(keys, []byte(userKey.Public.String()+" laptop\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(keys, int(u.UID), int(u.GID))
	}
	// known asks the keyring in the background: a keyring that blocks
	// fails the test instead of hanging it.
	known := func(t *testing.T, k curve.PublicKey) bool {
		t.Helper()
		res := make(chan bool, 1)
		go func() { res <- ring.Known(k) }()
		select {
		case ok := <-res:
			return ok
		case <-time.After(3 * time.Second):
			t.Fatal("the keyring blocked for 3s")
			return false
		}
	}
	// eventuallyKnown waits for the keyring's once-a-second re-read.
	eventuallyKnown := func(t *testing.T, k curve.PublicKey, want bool) {
		t.Helper()
		deadline := time.Now().Add(4 * time.Second)
		for time.Now().Before(deadline) {
			if known(t, k) == want {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("key known=%v, want %v", !want, want)
	}

	mkdirOwned(t)
	writeKeys(t)
	eventuallyKnown(t, userKey.Public, true)
	if a, err := ring.Authorize(userKey.Public[:], u.Name); err != nil || a.UID != u.UID {
		t.Fatalf("authorise the user's own key: %v", err)
	}

	t.Run("fifo", func(t *testing.T) {
		os.Remove(keys)
		if err := syscall.Mkfifo(keys, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(keys, int(u.UID), int(u.GID))
		// Release a reader stuck in open(2) at the end, whatever happens.
		t.Cleanup(func() {
			if f, err := os.OpenFile(keys, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		})
		eventuallyKnown(t, userKey.Public, false)
		for range 5 {
			if !known(t, adminKey.Public) {
				t.Fatal("the admin's key is no longer known")
			}
		}
		// Gone and replaced: the user's key works again, no restart.
		writeKeys(t)
		eventuallyKnown(t, userKey.Public, true)
	})
	t.Run("symlink to /dev/zero", func(t *testing.T) {
		os.Remove(keys)
		if err := os.Symlink("/dev/zero", keys); err != nil {
			t.Fatal(err)
		}
		os.Lchown(keys, int(u.UID), int(u.GID))
		eventuallyKnown(t, userKey.Public, false)
		if !known(t, adminKey.Public) {
			t.Fatal("the admin's key is no longer known")
		}
		writeKeys(t)
		eventuallyKnown(t, userKey.Public, true)
	})
	t.Run("symlink to a root file", func(t *testing.T) {
		// A file root owns is not the user's to point at.
		other := filepath.Join(t.TempDir(), "root-keys")
		os.WriteFile(other, []byte(userKey.Public.String()+"\n"), 0o600)
		os.Remove(keys)
		os.Symlink(other, keys)
		eventuallyKnown(t, userKey.Public, false)
		writeKeys(t)
		eventuallyKnown(t, userKey.Public, true)
	})
	t.Run("group-writable directory", func(t *testing.T) {
		os.Chmod(zdir, 0o770)
		eventuallyKnown(t, userKey.Public, false)
		os.Chmod(zdir, 0o700)
		eventuallyKnown(t, userKey.Public, true)
		os.Chmod(filepath.Join(u.Home, ".config"), 0o777)
		eventuallyKnown(t, userKey.Public, false)
		os.Chmod(filepath.Join(u.Home, ".config"), 0o700)
		eventuallyKnown(t, userKey.Public, true)
	})
	t.Run("directory owned by another user", func(t *testing.T) {
		os.Chown(zdir, 12345, 12345)
		eventuallyKnown(t, userKey.Public, false)
		os.Chown(zdir, int(u.UID), int(u.GID))
		eventuallyKnown(t, userKey.Public, true)
	})
	t.Run("too large", func(t *testing.T) {
		big := bytes.Repeat([]byte("# padding padding padding padding padding padding padding\n"), (maxKeysFile/58)+10)
		os.WriteFile(keys, append(big, []byte(userKey.Public.String()+"\n")...), 0o600)
		eventuallyKnown(t, userKey.Public, false)
		writeKeys(t)
		eventuallyKnown(t, userKey.Public, true)
	})

	// Each reason is logged once, however many handshakes asked. (Only
	// this test user's lines count: the keyring reads every user's file,
	// and another test on this machine may have a hostile one too.)
	var log string
	for _, line := range strings.SplitAfter(logs.String(), "\n") {
		if strings.Contains(line, u.Home+"/") {
			log += line
		}
	}
	for reason, want := range map[string]int{"not a regular file": 1, "symbolic link": 2, "writable by group or others": 2, "owned by uid 12345": 1, "larger than": 1} {
		if n := strings.Count(log, reason); n != want {
			t.Errorf("reason %q logged %d times, want %d:\n%s", reason, n, want, log)
		}
	}
}
