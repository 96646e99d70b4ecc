package broker

import (
	"fmt"
	"sync"
	"time"

	"github.com/zpipes/zp/internal/wire"
)

// limitKind is what a limit counts.
type limitKind int

const (
	limSessions  limitKind = iota // open sessions
	limCommands                   // running commands and background jobs
	limTransfers                  // open file-transfer channels
)

// limitNames are the flags that set each limit: [kind][per user?].
var limitNames = [...][2]string{
	limSessions:  {"max-sessions", "max-sessions-per-user"},
	limCommands:  {"max-commands", "max-commands-per-user"},
	limTransfers: {"max-transfers", "max-transfers-per-user"},
}

var limitWhat = [...]string{limSessions: "sessions", limCommands: "running commands", limTransfers: "file transfers"}

// limits counts what each user holds, so that one client (or one user
// with many clients) cannot take zpd's processes, descriptors and memory
// from everyone else. Safe for concurrent use.
type limits struct {
	total, perUser [3]int
	// onRefuse counts a refusal of limit (its flag's name) for user; logIt
	// is true at most once a minute per user and limit.
	onRefuse func(limit, user string, logIt bool)
	onBug    func(msg string) // a release without an acquire (logged, never a crash)

	mu     sync.Mutex
	count  [3]int
	users  [3]map[string]int
	logged map[string]time.Time // limit+user -> last refusal logged
}

func newLimits(cfg *Config, onRefuse func(limit, user string, logIt bool), onBug func(string)) *limits {
	l := &limits{onRefuse: onRefuse, onBug: onBug, logged: make(map[string]time.Time)}
	l.total = [3]int{cfg.maxSessions(), intOr(cfg.MaxCommands, 4096), intOr(cfg.MaxTransfers, 256)}
	l.perUser = [3]int{intOr(cfg.MaxSessionsPerUser, 256), intOr(cfg.MaxCommandsPerUser, 1024), intOr(cfg.MaxTransfersPerUser, 32)}
	for i := range l.users {
		l.users[i] = make(map[string]int)
	}
	return l
}

// acquire takes one of kind for user, or returns the ERROR 429 that
// names the limit (its channel is for the caller to set).
func (l *limits) acquire(kind limitKind, user string) *wire.Error {
	l.mu.Lock()
	var e *wire.Error
	metric := ""
	switch {
	case l.users[kind][user] >= l.perUser[kind]:
		e = wire.Errorf(0, wire.CodeTooMany, "too many %s for user %s: %d (zpd --%s)", limitWhat[kind], user, l.perUser[kind], limitNames[kind][1])
		metric = limitNames[kind][1]
	case l.count[kind] >= l.total[kind]:
		e = wire.Errorf(0, wire.CodeTooMany, "too many %s on this zpd: %d (zpd --%s)", limitWhat[kind], l.total[kind], limitNames[kind][0])
		metric = limitNames[kind][0]
	default:
		l.count[kind]++
		l.users[kind][user]++
	}
	logIt := false
	if e != nil {
		key := metric + "\x00" + user
		if now := time.Now(); now.Sub(l.logged[key]) >= time.Minute {
			l.logged[key], logIt = now, true
		}
	}
	l.mu.Unlock()
	if e != nil && l.onRefuse != nil {
		l.onRefuse(metric, user, logIt)
	}
	return e
}

// add takes one of kind for user whatever the limits (jobs found running
// after a restart).
func (l *limits) add(kind limitKind, user string) {
	l.mu.Lock()
	l.count[kind]++
	l.users[kind][user]++
	l.mu.Unlock()
}

// release gives back one of kind taken by acquire or add.
func (l *limits) release(kind limitKind, user string) {
	l.mu.Lock()
	if l.users[kind][user] <= 0 {
		l.mu.Unlock()
		if l.onBug != nil {
			l.onBug(fmt.Sprintf("bug: releasing %s of %s that were not taken", limitWhat[kind], user))
		}
		return
	}
	defer l.mu.Unlock()
	l.count[kind]--
	if l.users[kind][user]--; l.users[kind][user] == 0 {
		delete(l.users[kind], user)
	}
}
