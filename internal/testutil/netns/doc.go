// Package netns puts test servers in network namespaces of their own, joined
// to the host by a point-to-point link that tests can degrade: delay, jitter,
// packet loss and bandwidth (Netem, Impair) and outages (LinkDown, LinkUp).
// Unlike faultproxy, the faults act on real packets under the kernel's TCP,
// so retransmissions, timeouts and keepalives behave as on a real network.
//
//	ns := netns.New(t, "zpd")           // skipped unless root + iproute2
//	ln, _ := ns.Listen("tcp", ns.NSIP()+":0")
//	ns.Netem("delay", "50ms", "loss", "1%") // each way: RTT +100 ms
//	conn, _ := net.Dial("tcp", ln.Addr().String())
//	ns.LinkDown()                       // as if the cable were pulled
//
// The host reaches the namespace directly through its end of the link, so no
// forwarding, NAT or firewall rule is involved (Docker's FORWARD DROP policy
// does not matter). No traffic leaves the machine: the namespace has no
// route but its /30, and the host keeps its route to it even while the link
// is down.
//
// There are two kinds of link (LinkKind). A veth pair with tc netem on both
// ends needs a kernel with CONFIG_NET_SCH_NETEM; many VM and CI kernels lack
// it (modules included). A TUN pair whose packets the test process carries
// across in userspace implements the common netem parameters itself and
// works on any kernel with TUN. New picks veth when netem works and TUN
// otherwise.
//
// Everything needs Linux, root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2.
// Without them New skips the test with "netns: needs root and iproute2: …",
// unless the CI environment variable is non-empty: CI runs as root, so there
// the test fails instead.
package netns
