package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runDir is where iproute2 keeps named network namespaces.
const runDir = "/run/netns"

// ErrNetemUnsupported is returned (wrapped) by Netem and Impair on a veth
// link when the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM).
var ErrNetemUnsupported = errors.New("netns: the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM); use a LinkTun namespace")

// LinkKind says how the namespace is joined to the host.
type LinkKind int

const (
	// LinkAuto picks LinkVeth when the kernel has netem and LinkTun
	// otherwise, so that Netem works either way.
	LinkAuto LinkKind = iota
	// LinkVeth is a veth pair; Netem runs tc netem on both ends.
	LinkVeth
	// LinkTun is a pair of TUN devices whose packets the test process
	// carries across in userspace, applying delay, loss and rate itself.
	// It needs no kernel qdisc; it carries a few hundred Mbit/s each way
	// (1500-byte MTU, one syscall per packet).
	LinkTun
)

func (k LinkKind) String() string {
	switch k {
	case LinkAuto:
		return "auto"
	case LinkVeth:
		return "veth"
	case LinkTun:
		return "tun"
	}
	return "LinkKind(" + strconv.Itoa(int(k)) + ")"
}

// Option configures New.
type Option func(*options)

type options struct {
	link LinkKind
}

// WithLink chooses the kind of link instead of LinkAuto.
func WithLink(k LinkKind) Option { return func(o *options) { o.link = k } }

// NS is a network namespace joined to the host by a point-to-point link:
// the host end has HostIP, the namespace end NSIP, in a /30 of its own.
// It is deleted, with its link, when the test that made it ends.
type NS struct {
	t      testing.TB
	name   string
	link   LinkKind
	prefix netip.Prefix
	hostIP netip.Addr
	nsIP   netip.Addr
	hostIf string // device on the host
	nsIf   string // device in the namespace
	emu    *emuLink

	mu sync.Mutex // serialises link changes
}

// Available reports why namespaces cannot be made here, or nil if they can:
// it needs Linux, root with CAP_SYS_ADMIN and CAP_NET_ADMIN, and iproute2's
// ip. tc is needed only for netem on a veth link.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not running as root (euid %d)", os.Geteuid())
	}
	if err := checkCaps(); err != nil {
		return err
	}
	if _, err := tool("ip"); err != nil {
		return fmt.Errorf("%w (apt-get install iproute2)", err)
	}
	return nil
}

// checkCaps reads the effective capability set of this process.
func checkCaps() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(b)) {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return fmt.Errorf("parse CapEff %q: %v", hex, err)
		}
		const netAdmin, sysAdmin = 12, 21
		if caps&(1<<netAdmin) == 0 || caps&(1<<sysAdmin) == 0 {
			return fmt.Errorf("root lacks CAP_NET_ADMIN or CAP_SYS_ADMIN (CapEff %s)", strings.TrimSpace(hex))
		}
		return nil
	}
	return nil
}

// tool finds an iproute2 program, also in the sbin directories a non-login
// PATH may lack.
func tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// unavailable skips the test, or fails it when CI is set.
func unavailable(t testing.TB, reason string) {
	t.Helper()
	msg := "netns: needs root and iproute2: " + reason
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, where these tests must run)")
		return
	}
	t.Skip(msg)
}

// New creates a network namespace named zp-NAME-PID-RANDOM (NAME reduced to
// [a-z0-9]) joined to the host by a link whose host end is 10.x.y.z+1/30 and
// namespace end 10.x.y.z+2/30, in a /30 picked at random in 10.200.0.0 -
// 10.250.255.255 that no host interface uses. The namespace's lo and both
// link ends are up. Everything is deleted by t.Cleanup, also when the test
// fails; namespaces left by a killed test process are deleted by the next
// New.
//
// Without root or iproute2 the test is skipped, or failed when the CI
// environment variable is set.
func New(t testing.TB, name string, opts ...Option) *NS {
	t.Helper()
	if err := Available(); err != nil {
		unavailable(t, err.Error())
		return nil
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	sweepOnce.Do(sweepStale)

	ns := &NS{t: t, link: o.link}
	tag := fmt.Sprintf("%08x", rand.Uint32())
	ns.name = fmt.Sprintf("zp-%s-%d-%s", cleanName(name), os.Getpid(), tag[:6])
	ns.hostIf, ns.nsIf = "zp"+tag+"h", "zp"+tag+"n"
	if err := ns.pickSubnet(); err != nil {
		t.Fatal(err)
	}
	if err := ipCmd("netns", "add", ns.name); err != nil {
		ns.releaseSubnet()
		if os.Getenv("CI") == "" && (errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "ermission denied")) {
			unavailable(t, err.Error())
		}
		t.Fatal(err)
	}
	t.Cleanup(ns.cleanup)
	if err := ipCmd("-n", ns.name, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	if ns.link == LinkAuto {
		ns.link = LinkTun
		if kernelNetem(ns.name) {
			ns.link = LinkVeth
		}
	}
	var err error
	switch ns.link {
	case LinkVeth:
		err = ns.setupVeth()
	case LinkTun:
		err = ns.setupTun()
	default:
		err = fmt.Errorf("netns: unknown link kind %v", ns.link)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func cleanName(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
		if b.Len() == 16 {
			break
		}
	}
	if b.Len() == 0 {
		return "t"
	}
	return b.String()
}

var (
	subnetMu    sync.Mutex
	subnetsUsed = map[netip.Prefix]bool{}
)

// pickSubnet picks a free /30 at random in 10.200.0.0–10.250.255.255.
func (ns *NS) pickSubnet() error {
	subnetMu.Lock()
	defer subnetMu.Unlock()
	var hostNets []netip.Prefix
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(ipn.String()); err == nil {
					hostNets = append(hostNets, p.Masked())
				}
			}
		}
	}
	for range 1000 {
		a := netip.AddrFrom4([4]byte{10, byte(200 + rand.IntN(51)), byte(rand.IntN(256)), byte(4 * rand.IntN(64))})
		p := netip.PrefixFrom(a, 30)
		if subnetsUsed[p] || overlaps(p, hostNets) {
			continue
		}
		subnetsUsed[p] = true
		ns.prefix = p
		ns.hostIP = a.Next()
		ns.nsIP = ns.hostIP.Next()
		return nil
	}
	return errors.New("netns: no free /30 in 10.200.0.0/16-10.250.255.255")
}

func overlaps(p netip.Prefix, nets []netip.Prefix) bool {
	for _, n := range nets {
		if n.Overlaps(p) {
			return true
		}
	}
	return false
}

func (ns *NS) releaseSubnet() {
	subnetMu.Lock()
	delete(subnetsUsed, ns.prefix)
	subnetMu.Unlock()
}

func (ns *NS) setupVeth() error {
	if err := ipCmd("link", "add", ns.hostIf, "type", "veth", "peer", "name", ns.nsIf, "netns", ns.name); err != nil {
		return err
	}
	return ns.addressAndUp()
}

func (ns *NS) setupTun() error {
	host, err := openTun(ns.hostIf)
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	peer, err := openTun(ns.nsIf)
	if err != nil {
		host.Close()
		return fmt.Errorf("netns: %w", err)
	}
	ns.emu = newEmuLink(host, peer)
	if err := ipCmd("link", "set", ns.nsIf, "netns", ns.name); err != nil {
		return err
	}
	return ns.addressAndUp()
}

func (ns *NS) addressAndUp() error {
	bits := strconv.Itoa(ns.prefix.Bits())
	for _, args := range [][]string{
		{"addr", "add", ns.hostIP.String() + "/" + bits, "dev", ns.hostIf},
		{"link", "set", ns.hostIf, "up"},
		{"-n", ns.name, "addr", "add", ns.nsIP.String() + "/" + bits, "dev", ns.nsIf},
		{"-n", ns.name, "link", "set", ns.nsIf, "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	return nil
}

func (ns *NS) cleanup() {
	if ns.emu != nil {
		ns.emu.close() // closing the TUN files deletes both devices
	}
	if ns.link == LinkVeth {
		// Deleting the namespace deletes the pair too; this is in case
		// the pair was made but not moved.
		ipCmd("link", "del", ns.hostIf)
	}
	if err := deleteNS(ns.name); err != nil {
		ns.t.Errorf("netns cleanup: %v", err)
	}
	ns.releaseSubnet()
}

// nsID identifies a network namespace by the device and inode of its nsfs
// file.
type nsID struct{ dev, ino uint64 }

func nsOf(path string) (nsID, bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// killIn kills every process whose network namespace is id (processes a
// test started there) and reports whether it found any.
func killIn(id nsID) bool {
	procs, _ := os.ReadDir("/proc")
	found := false
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if got, ok := nsOf("/proc/" + p.Name() + "/ns/net"); ok && got == id {
			syscall.Kill(pid, syscall.SIGKILL)
			found = true
		}
	}
	return found
}

// deleteNS kills what runs in the named namespace, deletes it, and looks
// again for processes that were entering it meanwhile ("ip netns exec"
// between opening the namespace and setns).
func deleteNS(name string) error {
	id, ok := nsOf(filepath.Join(runDir, name))
	if ok {
		killIn(id)
	}
	err := ipCmd("netns", "del", name)
	if ok {
		for range 3 {
			time.Sleep(5 * time.Millisecond)
			killIn(id)
		}
	}
	return err
}

var sweepOnce sync.Once

// sweepStale deletes namespaces that New made in test processes that no
// longer exist (killed by a test timeout, say).
func sweepStale() {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		parts := strings.Split(e.Name(), "-")
		if len(parts) != 4 || parts[0] != "zp" {
			continue
		}
		pid, err := strconv.Atoi(parts[2])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			deleteNS(e.Name())
		}
	}
}

var (
	netemOnce sync.Once
	netemOK   bool
)

// kernelNetem reports whether the kernel has the netem qdisc, trying it once
// on the loopback device of the namespace given.
func kernelNetem(nsName string) bool {
	netemOnce.Do(func() {
		tc, err := tool("tc")
		if err != nil {
			return
		}
		if exec.Command(tc, "-n", nsName, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").Run() == nil {
			netemOK = true
			exec.Command(tc, "-n", nsName, "qdisc", "del", "dev", "lo", "root").Run()
		}
	})
	return netemOK
}

func ipCmd(args ...string) error { return run("ip", args...) }

func run(prog string, args ...string) error {
	path, err := tool(prog)
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: %s %s: %w: %s", prog, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Name returns the namespace's name, as "ip netns" knows it.
func (ns *NS) Name() string { return ns.name }

// Link returns the kind of link in use (never LinkAuto).
func (ns *NS) Link() LinkKind { return ns.link }

// HostIP returns the address of the host end of the link.
func (ns *NS) HostIP() string { return ns.hostIP.String() }

// NSIP returns the address of the namespace end of the link.
func (ns *NS) NSIP() string { return ns.nsIP.String() }

// HostIf returns the name of the link's device on the host.
func (ns *NS) HostIf() string { return ns.hostIf }

// NSIf returns the name of the link's device inside the namespace.
func (ns *NS) NSIf() string { return ns.nsIf }

// Command returns a command that runs name with args inside the namespace
// (as "ip netns exec NS name args…"; ip execs the program, so the process id
// and the context's kill reach it). Processes still running there when the
// test ends are killed by the cleanup.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	ip, err := tool("ip")
	if err != nil {
		ip = "ip"
	}
	return exec.CommandContext(ctx, ip, append([]string{"netns", "exec", ns.name, name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace. Sockets that fn
// creates belong to the namespace for their whole life, and may be used from
// any goroutine afterwards; goroutines that fn starts do not run in the
// namespace.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Join(runDir, ns.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: setns %s: %w", ns.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime ends it with this
			// goroutine rather than reuse it in the wrong namespace.
			errc <- fmt.Errorf("netns: setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen is net.Listen run inside the namespace: listen on NSIP():port to be
// reachable from the host.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// Netem applies "tc qdisc replace dev DEV root netem ARGS…" to both ends of
// the link, so each direction is impaired: "delay 50ms" adds 50 ms each way,
// 100 ms to a round trip; "loss 5%" drops 5% of packets each way. It
// replaces any earlier Netem or Impair.
//
// On a LinkTun namespace the arguments are read by ParseNetem (delay with
// optional jitter, loss, rate, limit) and applied by the userspace link; on
// a LinkVeth one they go to tc as they are, and the error wraps
// ErrNetemUnsupported if the kernel lacks netem.
func (ns *NS) Netem(args ...string) error {
	if ns.link == LinkTun {
		im, err := ParseNetem(args...)
		if err != nil {
			return err
		}
		return ns.Impair(im)
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for _, a := range [][]string{
		{"qdisc", "replace", "dev", ns.hostIf, "root", "netem"},
		{"-n", ns.name, "qdisc", "replace", "dev", ns.nsIf, "root", "netem"},
	} {
		if err := run("tc", append(a, args...)...); err != nil {
			if strings.Contains(err.Error(), "qdisc kind is unknown") {
				return fmt.Errorf("%w: %v", ErrNetemUnsupported, err)
			}
			return err
		}
	}
	return nil
}

// Impair applies im to both directions of the link, replacing any earlier
// Netem or Impair. The zero Impairment is the same as ClearNetem.
func (ns *NS) Impair(im Impairment) error {
	if err := im.validate(); err != nil {
		return err
	}
	if ns.link == LinkVeth {
		if im == (Impairment{}) {
			return ns.ClearNetem()
		}
		return ns.Netem(im.Args()...)
	}
	ns.emu.set(im)
	return nil
}

// ClearNetem removes any impairment from both ends.
func (ns *NS) ClearNetem() error {
	if ns.link == LinkTun {
		return ns.Impair(Impairment{})
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	var first error
	for _, a := range [][]string{
		{"qdisc", "del", "dev", ns.hostIf, "root"},
		{"-n", ns.name, "qdisc", "del", "dev", ns.nsIf, "root"},
	} {
		err := run("tc", a...)
		// Deleting the default qdisc fails; that is a clean link already.
		if err != nil && !strings.Contains(err.Error(), "handle of zero") &&
			!strings.Contains(err.Error(), "No such file") && first == nil {
			first = err
		}
	}
	return first
}

// LinkDown takes the link down as a pulled cable would. The namespace end
// is set administratively down; the host end stays up but loses carrier
// (NO-CARRIER) and keeps its route to NSIP, so packets the host sends there
// are silently dropped: connects time out, established TCP connections
// retransmit and survive a LinkUp that comes before their timeouts. Inside
// the namespace the route to the host is gone, so sends there fail with
// ENETUNREACH. (Downing the host end instead would remove the host's route
// and let traffic for NSIP follow the default route out of the machine.)
func (ns *NS) LinkDown() error {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown"); err == nil &&
		strings.TrimSpace(string(b)) != "0" {
		return errors.New("netns: net.ipv4.conf.all.ignore_routes_with_linkdown is set: " +
			"a link without carrier would lose its route and traffic for NSIP could leave the machine")
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.emu != nil {
		ns.emu.setDown(true)
		if err := setCarrier(ns.emu.host, false); err != nil {
			return fmt.Errorf("netns: carrier off: %w", err)
		}
	}
	return ipCmd("-n", ns.name, "link", "set", ns.nsIf, "down")
}

// LinkUp undoes LinkDown. The namespace gets its route back; TCP
// connections resume at their next retransmission.
func (ns *NS) LinkUp() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if err := ipCmd("-n", ns.name, "link", "set", ns.nsIf, "up"); err != nil {
		return err
	}
	if ns.emu != nil {
		if err := setCarrier(ns.emu.host, true); err != nil {
			return fmt.Errorf("netns: carrier on: %w", err)
		}
		ns.emu.setDown(false)
	}
	return nil
}

// LinkStats returns the packets the userspace link has carried and dropped
// (by loss, queue limit or LinkDown), both directions together. On a veth
// link it returns zeros.
func (ns *NS) LinkStats() (sent, dropped int64) {
	if ns.emu == nil {
		return 0, 0
	}
	for _, d := range ns.emu.dirs {
		sent += d.sent.Load()
		dropped += d.dropped.Load()
	}
	return sent, dropped
}
