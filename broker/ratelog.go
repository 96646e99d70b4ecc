package broker

import (
	"sync"
	"time"
)

// rateLimit lets one log line per kind of event through per interval and
// counts the rest, so that a flood (failed handshakes, refused
// subscriptions) cannot fill the disk with logs: the next line that gets
// through carries how many were suppressed.
type rateLimit struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

func newRateLimit(every time.Duration) *rateLimit {
	return &rateLimit{every: every, last: map[string]time.Time{}, held: map[string]int{}}
}

// allow reports whether an event of this kind may be logged now, and how
// many of its kind were suppressed since the last one logged. Kinds are a
// bounded set (reasons), never peer-chosen strings.
func (r *rateLimit) allow(kind string) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if t, ok := r.last[kind]; ok && now.Sub(t) < r.every {
		r.held[kind]++
		return false, 0
	}
	n := r.held[kind]
	r.last[kind] = now
	r.held[kind] = 0
	return true, n
}
