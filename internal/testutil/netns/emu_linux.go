package netns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// openTun creates a TUN device (layer 3, no packet information header) in
// the calling thread's network namespace. The device lives as long as the
// returned file is open. The file is non-blocking, so reads go through the
// runtime poller and Close interrupts them.
func openTun(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tun:"+name), nil
}

// setCarrier turns a TUN device's carrier on or off (Linux 5.0+).
func setCarrier(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETCARRIER, v)
	}); err != nil {
		return err
	}
	return ierr
}

// emuLink joins two TUN devices with a goroutine pair per direction that
// carries IP packets across, applying an Impairment: a userspace netem for
// kernels built without sch_netem.
type emuLink struct {
	host, peer *os.File
	dirs       [2]*emuDir // host→peer, peer→host
	stop       chan struct{}
	wg         sync.WaitGroup

	mu   sync.Mutex // guards imp, down, rng
	imp  Impairment
	down bool
	rng  *rand.Rand
}

type emuDir struct {
	l       *emuLink
	in, out *os.File
	wake    chan struct{} // cap 1: a packet was queued

	mu       sync.Mutex
	q        []emuPkt
	writing  bool      // the writer has popped a packet and not yet written it
	linkFree time.Time // rate limiting: when the last queued packet is fully sent
	lastDue  time.Time // packets leave in order

	sent, dropped atomic.Int64
}

type emuPkt struct {
	b   []byte
	due time.Time
}

func newEmuLink(host, peer *os.File) *emuLink {
	l := &emuLink{
		host: host,
		peer: peer,
		stop: make(chan struct{}),
		rng:  rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	l.dirs[0] = &emuDir{l: l, in: host, out: peer, wake: make(chan struct{}, 1)}
	l.dirs[1] = &emuDir{l: l, in: peer, out: host, wake: make(chan struct{}, 1)}
	for _, d := range l.dirs {
		l.wg.Add(2)
		go d.reader()
		go d.writer()
	}
	return l
}

func (l *emuLink) set(im Impairment) {
	l.mu.Lock()
	l.imp = im
	l.mu.Unlock()
}

// setDown makes the link drop everything, including packets in flight.
func (l *emuLink) setDown(down bool) {
	l.mu.Lock()
	l.down = down
	l.mu.Unlock()
	if down {
		for _, d := range l.dirs {
			d.mu.Lock()
			d.dropped.Add(int64(len(d.q)))
			d.q = nil
			d.mu.Unlock()
		}
	}
}

func (l *emuLink) close() {
	close(l.stop)
	l.host.Close()
	l.peer.Close()
	l.wg.Wait()
}

// decide returns whether to drop a packet and, if not, its delay.
func (l *emuLink) decide() (drop bool, delay time.Duration, im Impairment) {
	l.mu.Lock()
	defer l.mu.Unlock()
	im = l.imp
	if l.down || im.Loss > 0 && l.rng.Float64() < im.Loss {
		return true, 0, im
	}
	delay = im.Delay
	if im.Jitter > 0 {
		delay += time.Duration(l.rng.Int64N(int64(2*im.Jitter)+1)) - im.Jitter
	}
	return false, delay, im
}

func (d *emuDir) reader() {
	defer d.l.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := d.in.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			select {
			case <-d.l.stop:
				return
			case <-time.After(time.Millisecond):
			}
			continue
		}
		now := time.Now()
		drop, delay, im := d.l.decide()
		if drop {
			d.dropped.Add(1)
			continue
		}
		limit := im.Limit
		if limit == 0 {
			limit = DefaultLimit
		}
		d.mu.Lock()
		if len(d.q) >= limit {
			d.mu.Unlock()
			d.dropped.Add(1)
			continue
		}
		start := now
		if im.Rate > 0 {
			if d.linkFree.After(start) {
				start = d.linkFree
			}
			tx := time.Duration(float64(n*8) / float64(im.Rate) * float64(time.Second))
			d.linkFree = start.Add(tx)
			start = d.linkFree
		}
		due := start.Add(delay)
		if due.Before(d.lastDue) {
			due = d.lastDue // jitter does not reorder
		}
		d.lastDue = due
		if len(d.q) == 0 && !d.writing && !due.After(now) {
			// Nothing ahead of it and no delay: write it from here,
			// saving a hand-over to the writer.
			d.mu.Unlock()
			d.write(buf[:n])
			continue
		}
		d.q = append(d.q, emuPkt{b: append([]byte(nil), buf[:n]...), due: due})
		d.mu.Unlock()
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

func (d *emuDir) writer() {
	defer d.l.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d.mu.Lock()
		if len(d.q) == 0 {
			d.mu.Unlock()
			select {
			case <-d.wake:
				continue
			case <-d.l.stop:
				return
			}
		}
		p := d.q[0]
		wait := time.Until(p.due)
		if wait <= 0 {
			d.q[0] = emuPkt{}
			d.q = d.q[1:]
			d.writing = true
			d.mu.Unlock()
			d.write(p.b)
			d.mu.Lock()
			d.writing = false
			d.mu.Unlock()
			continue
		}
		d.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-d.wake:
			timer.Stop() // Go 1.23+: no stale tick after Stop
		case <-d.l.stop:
			return
		}
	}
}

// write sends one packet out; a failure (device down, link closed) counts
// as a drop.
func (d *emuDir) write(b []byte) {
	if _, err := d.out.Write(b); err != nil {
		d.dropped.Add(1)
	} else {
		d.sent.Add(1)
	}
}
