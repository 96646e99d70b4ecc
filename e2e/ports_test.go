package e2e

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Ports for zpd. zpd binds P, P+1 and P+2; a test that restarts zpd needs
// the same three again. Ports handed out by the kernel for outgoing
// connections (the ephemeral range, 32768–60999 by default) may take P+1
// or P+2 at any moment, so zpds here listen below that range, on triples
// this process hands out once each.
var ports struct {
	sync.Mutex
	next, lo, hi int
}

func initPorts() {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				lo = v
			}
		}
	}
	ports.hi = max(lo-1, 12000)
	ports.lo = max(ports.hi-12000, 10000)
	ports.next = ports.lo + 3*rand.IntN((ports.hi-ports.lo)/3-1) // another test binary picks elsewhere
}

// freePorts returns a port P such that P, P+1 and P+2 are free now and
// handed to no other test of this process.
func freePorts(t *testing.T) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.hi == 0 {
		initPorts()
	}
	for i := 0; i < 1000; i++ {
		p := ports.next
		ports.next += 3
		if ports.next+2 > ports.hi {
			ports.next = ports.lo
		}
		if bindable(p, p+1, p+2) {
			return p
		}
	}
	t.Fatal("no three free consecutive ports")
	return 0
}

func bindable(ps ...int) bool {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for _, p := range ps {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		ls = append(ls, l)
	}
	return true
}
