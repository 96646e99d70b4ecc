package broker

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/zpipes/zp/internal/wire"
)

// A fleet job is the hub's record of a background job a client started on
// several agents (docs/PROTOCOL.md §13.6): the command line and, per
// agent, the job id there. The output stays on the agents. A record
// belongs to the key that made it (others get 404, as for a record that
// does not exist), is kept in the hub's state directory, so that it
// survives a restart, and is forgotten --job-retention after it was made.
type fleetJob struct {
	ID      string            `json:"id"`
	Key     []byte            `json:"key"`
	Command string            `json:"command_line"`
	Started time.Time         `json:"started"`
	Jobs    map[string]string `json:"jobs"`
}

// Limits on fleet job records: per key (ERROR 429 beyond), the command
// line, and a job id on an agent.
const (
	maxFleetJobsPerKey = 1024
	maxFleetJobCommand = 64 << 10
	maxAgentJobID      = 64
)

// fleetJobAlphabet makes fleet job ids: "F-" and 20 of these, from
// crypto/rand (never confused with a zpd job id, a NUID without "-").
const fleetJobAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func newFleetJobID() string {
	var b strings.Builder
	b.WriteString("F-")
	max := big.NewInt(int64(len(fleetJobAlphabet)))
	for range 20 {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("bug: crypto/rand failed: " + err.Error())
		}
		b.WriteByte(fleetJobAlphabet[n.Int64()])
	}
	return b.String()
}

// isFleetJobID reports whether id has the form of a fleet job id.
func isFleetJobID(id string) bool {
	if len(id) != 22 || !strings.HasPrefix(id, "F-") {
		return false
	}
	for _, c := range []byte(id[2:]) {
		if strings.IndexByte(fleetJobAlphabet, c) < 0 {
			return false
		}
	}
	return true
}

func (h *hub) fleetJobDir() string { return filepath.Join(h.b.cfg.StateDir, "fleetjobs") }

// loadFleetJobs reads the records a previous hub kept.
func (h *hub) loadFleetJobs() error {
	ents, err := os.ReadDir(h.fleetJobDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || !isFleetJobID(strings.TrimSuffix(e.Name(), ".json")) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(h.fleetJobDir(), e.Name()))
		var j fleetJob
		if err == nil {
			err = json.Unmarshal(b, &j)
		}
		if err != nil || j.ID+".json" != e.Name() {
			h.b.log.Warn("skipping an unreadable fleet job record", "file", e.Name(), "err", err)
			continue
		}
		h.fleetJobs[j.ID] = &j
	}
	h.m.FleetJobs.Set(float64(len(h.fleetJobs)))
	return nil
}

// saveFleetJob writes a record durably: a temporary file, fsync, rename,
// fsync of the directory.
func (h *hub) saveFleetJob(j *fleetJob) error {
	dir := h.fleetJobDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, j.ID+".json"))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// recordFleetJob answers FLEET_JOB (off the receive loop: it writes a file).
func (h *hub) recordFleetJob(s *session, m *wire.FleetJob) {
	switch {
	case len(m.Jobs) == 0:
		s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "FLEET_JOB names no job"))
		return
	case len(m.Command) > maxFleetJobCommand:
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooLarge, "command line over %d octets", maxFleetJobCommand))
		return
	case len(m.Jobs) > h.maxAgents():
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooLarge, "more than %d jobs", h.maxAgents()))
		return
	}
	for name, id := range m.Jobs {
		if err := wire.ValidAgentName(name); err != nil {
			s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "%v", err))
			return
		}
		if id == "" || len(id) > maxAgentJobID {
			s.sendErr(wire.Errorf(m.Channel, wire.CodeBadRequest, "job id of agent %s: %d octets", name, len(id)))
			return
		}
	}
	j := &fleetJob{ID: newFleetJobID(), Key: append([]byte(nil), s.key...), Command: m.Command,
		Started: time.Now().UTC().Truncate(time.Second), Jobs: m.Jobs}
	h.mu.Lock()
	mine := 0
	for _, o := range h.fleetJobs {
		if string(o.Key) == string(s.key) {
			mine++
		}
	}
	if mine >= maxFleetJobsPerKey {
		h.mu.Unlock()
		s.sendErr(wire.Errorf(m.Channel, wire.CodeTooMany, "this key has %d fleet jobs recorded (zpd --job-retention forgets them)", mine))
		return
	}
	h.fleetJobs[j.ID] = j // reserved now: the limit holds while the file is written
	h.mu.Unlock()
	h.b.spawn(func() {
		if err := h.saveFleetJob(j); err != nil {
			h.mu.Lock()
			delete(h.fleetJobs, j.ID)
			h.mu.Unlock()
			s.sendErr(zpdFailure(m.Channel, "record the fleet job", err))
			return
		}
		h.mu.Lock()
		h.m.FleetJobs.Set(float64(len(h.fleetJobs)))
		h.mu.Unlock()
		h.b.log.Info("fleet job recorded", "fleet_job", j.ID, "hosts", len(j.Jobs), "key", keyFingerprint(s.key))
		s.send(&wire.FleetJobOK{Channel: m.Channel, Job: j.ID})
	})
}

// listFleetJobs answers FLEET_JOBS: the caller's records, or one of them.
func (h *hub) listFleetJobs(s *session, m *wire.FleetJobs) {
	h.mu.Lock()
	var sel []*fleetJob
	for _, j := range h.fleetJobs {
		if string(j.Key) == string(s.key) && (m.Job == "" || j.ID == m.Job) {
			sel = append(sel, j)
		}
	}
	out := make([]map[string]string, 0, len(sel))
	sort.Slice(sel, func(a, b int) bool {
		if !sel[a].Started.Equal(sel[b].Started) {
			return sel[a].Started.Before(sel[b].Started)
		}
		return sel[a].ID < sel[b].ID
	})
	for _, j := range sel {
		d := map[string]string{"id": j.ID, "command_line": j.Command,
			"started": j.Started.Format(time.RFC3339), "hosts": strconv.Itoa(len(j.Jobs))}
		for name, id := range j.Jobs {
			d["job."+name] = id
		}
		out = append(out, d)
	}
	h.mu.Unlock()
	if m.Job != "" && len(out) == 0 {
		// The same answer for "no such record" and "not yours".
		s.sendErr(wire.Errorf(m.Channel, wire.CodeNotFound, "no fleet job %s", m.Job))
		return
	}
	s.send(&wire.FleetJobList{Channel: m.Channel, Jobs: out})
}

// expireFleetJobs forgets records older than the retention (0: never).
func (h *hub) expireFleetJobs(now time.Time) {
	ret := h.b.cfg.jobRetention()
	if ret <= 0 {
		return
	}
	h.mu.Lock()
	var old []string
	for id, j := range h.fleetJobs {
		if now.Sub(j.Started) > ret {
			old = append(old, id)
			delete(h.fleetJobs, id)
		}
	}
	h.m.FleetJobs.Set(float64(len(h.fleetJobs)))
	h.mu.Unlock()
	for _, id := range old {
		if err := os.Remove(filepath.Join(h.fleetJobDir(), id+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			h.b.log.Warn("could not delete an expired fleet job record", "fleet_job", id, "err", err)
		}
	}
	if len(old) > 0 {
		h.b.log.Info("fleet job records expired", "count", len(old), "retention", fmt.Sprint(ret))
	}
}
