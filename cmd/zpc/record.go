package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nuid"

	"github.com/zpipes/zp/internal/cli"
)

// A broadcast record keeps what a zpc --fleet run was asked and how it
// went per host, in the client's config directory (broadcasts/ID.json,
// 0600), for --status ID (an --async run) and --retry-failed ID. It is
// the client's own account: the agents' tree digests are the proof.
type bcastRecord struct {
	ID        string      `json:"id"`
	Hub       string      `json:"hub"`
	Sources   []string    `json:"sources"` // absolute, a trailing "/" kept
	Dest      string      `json:"dest"`    // [user@]:DEST as typed
	Recursive bool        `json:"recursive"`
	Preserve  bool        `json:"preserve"`
	Fanout    int         `json:"fanout,omitempty"` // --fanout: a relay tree
	State     string      `json:"state"`            // running, done
	PID       int         `json:"pid,omitempty"`
	Started   time.Time   `json:"started"`
	Ended     time.Time   `json:"ended,omitzero"`
	Digest    string      `json:"digest,omitempty"`
	Entries   int         `json:"entries,omitempty"`
	Bytes     uint64      `json:"bytes,omitempty"`
	Hosts     []*hostCopy `json:"hosts"`
	Error     string      `json:"error,omitempty"` // what ended it before any host was tried

	path string
	mu   sync.Mutex
}

// validRecordID: the ids zpc makes ("B" and a nuid), nothing that could
// name another file.
func validRecordID(id string) bool {
	if len(id) < 2 || len(id) > 64 || id[0] != 'B' {
		return false
	}
	for _, c := range id[1:] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func recordDir(io *cli.IO) string { return filepath.Join(cli.ConfigDir(io.Getenv), "broadcasts") }

// newRecord starts a record for a broadcast of srcs to dest.
func newRecord(io *cli.IO, hub string, srcs []string, dest string, recursive, preserve bool) (*bcastRecord, error) {
	abs := make([]string, len(srcs))
	for i, s := range srcs {
		a, err := filepath.Abs(s)
		if err != nil {
			return nil, err
		}
		if strings.HasSuffix(s, "/") && !strings.HasSuffix(a, "/") {
			a += "/" // rsync's "contents of"
		}
		abs[i] = a
	}
	r := &bcastRecord{ID: "B" + nuid.Next(), Hub: hub, Sources: abs, Dest: dest, Recursive: recursive,
		Preserve: preserve, State: "running", PID: os.Getpid(), Started: time.Now(), Hosts: []*hostCopy{}}
	r.path = filepath.Join(recordDir(io), r.ID+".json")
	return r, r.save()
}

// loadRecord reads the record id.
func loadRecord(io *cli.IO, id string) (*bcastRecord, error) {
	if !validRecordID(id) {
		return nil, fmt.Errorf("%q is not a broadcast id (B…, as zpc printed it)", id)
	}
	path := filepath.Join(recordDir(io), id+".json")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no broadcast %s in %s", id, recordDir(io))
	}
	if err != nil {
		return nil, err
	}
	r := &bcastRecord{path: path}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return r, nil
}

// save writes the record atomically.
func (r *bcastRecord) save() error {
	r.mu.Lock()
	b, err := json.MarshalIndent(r, "", "  ")
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, r.path)
}

// merge takes a run's results: hosts it ran on replace their earlier
// results (a retry), the others stay.
func (r *bcastRecord) merge(hosts []*hostCopy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hosts {
		replaced := false
		for i, old := range r.Hosts {
			if old.Host == h.Host {
				r.Hosts[i], replaced = h, true
			}
		}
		if !replaced {
			r.Hosts = append(r.Hosts, h)
		}
	}
}

// failed names the hosts that did not prove the digest.
func (r *bcastRecord) failed() []string {
	var out []string
	for _, h := range r.Hosts {
		if h.State != "ok" {
			out = append(out, h.Host)
		}
	}
	return out
}

// running reports whether the record's zpc still runs (an --async run).
func (r *bcastRecord) running() bool {
	if r.State != "running" || r.PID <= 0 {
		return false
	}
	err := syscall.Kill(r.PID, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
