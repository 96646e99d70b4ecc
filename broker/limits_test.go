package broker

import (
	"strings"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

func TestLimits(t *testing.T) {
	var refused, bugs []string
	logged := 0
	l := newLimits(&Config{MaxTransfersPerUser: 2, MaxTransfers: 3}, func(m, user string, logIt bool) {
		refused = append(refused, m)
		if logIt {
			logged++
		}
	}, func(m string) { bugs = append(bugs, m) })
	for i := 0; i < 2; i++ {
		if e := l.acquire(limTransfers, "alice"); e != nil {
			t.Fatal(e)
		}
	}
	e := l.acquire(limTransfers, "alice")
	if e == nil || e.Code != wire.CodeTooMany || !strings.Contains(e.Reason, "file transfers for user alice: 2 (zpd --max-transfers-per-user)") {
		t.Fatalf("per user: %v", e)
	}
	if e := l.acquire(limTransfers, "bob"); e != nil {
		t.Fatalf("bob: %v", e)
	}
	e = l.acquire(limTransfers, "carol")
	if e == nil || !strings.Contains(e.Reason, "file transfers on this zpd: 3 (zpd --max-transfers)") {
		t.Fatalf("global: %v", e)
	}
	// Other kinds are counted apart.
	if e := l.acquire(limCommands, "alice"); e != nil {
		t.Fatal(e)
	}
	l.release(limTransfers, "alice")
	if e := l.acquire(limTransfers, "carol"); e != nil {
		t.Fatalf("after a release: %v", e)
	}
	// Refusals are all counted, logged once a minute per user and limit.
	for range 3 {
		l.acquire(limTransfers, "alice")
	}
	if strings.Join(refused, ",") != "max-transfers-per-user,max-transfers,max-transfers,max-transfers,max-transfers" || logged != 3 {
		t.Fatalf("refusals reported: %v, %d logged", refused, logged)
	}
	// add counts past the limit (jobs re-adopted after a restart).
	l.add(limTransfers, "alice")
	if l.count[limTransfers] != 4 || l.users[limTransfers]["alice"] != 2 {
		t.Fatalf("count %d alice %d", l.count[limTransfers], l.users[limTransfers]["alice"])
	}
	// Releasing what was not taken is reported as a bug, counts stay sane.
	l.release(limSessions, "nobody")
	if len(bugs) != 1 || l.count[limSessions] != 0 {
		t.Fatalf("bugs %v count %d", bugs, l.count[limSessions])
	}
}
