package broker

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/curve"
)

// KeyList is a file of public keys (Z85, one per line, # comments), such
// as a hub's --fleet-keys and --fleet-clients. It is re-read when it
// changes (checked at most once a second), like the Keyring. A missing
// file lists no key; so does a nil KeyList. Safe for concurrent use.
type KeyList struct {
	Path string
	Log  *slog.Logger

	mu      sync.Mutex
	checked time.Time
	stamp   string
	keys    map[curve.PublicKey]bool
}

// Contains reports whether key (32 octets) is listed.
func (k *KeyList) Contains(key []byte) bool {
	if k == nil || k.Path == "" || len(key) != 32 {
		return false
	}
	var pk curve.PublicKey
	copy(pk[:], key)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil || time.Since(k.checked) > time.Second {
		k.checked = time.Now()
		stamp := stampOf([]keyFile{{path: k.Path}})
		if k.keys == nil || stamp != k.stamp {
			k.keys = k.load()
			k.stamp = stamp
		}
	}
	return k.keys[pk]
}

func (k *KeyList) load() map[curve.PublicKey]bool {
	m := make(map[curve.PublicKey]bool)
	f, err := os.Open(k.Path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && k.Log != nil {
			k.Log.Warn("cannot read key list", "path", k.Path, "err", err)
		}
		return m
	}
	defer f.Close()
	keys, err := curve.ParseAuthorizedKeys(f)
	if err != nil {
		if k.Log != nil {
			k.Log.Warn("ignoring key list", "path", k.Path, "err", err)
		}
		return m
	}
	for _, key := range keys {
		m[key] = true
	}
	return m
}
