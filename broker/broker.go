// Package broker is zpd: the ROUTER that serves sessions (exec, jobs,
// files) and the sockets that publish job output. One Broker owns its
// sockets; Run returns after every goroutine it started has ended.
package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
	"github.com/zpipes/zp/metrics"
)

// Config configures a Broker. Zero durations and sizes take the defaults
// documented on each field.
type Config struct {
	// Endpoint of the control ROUTER: tcp://HOST:PORT or ipc:///PATH.
	Endpoint string
	// StateDir holds zpd's keys, jobs and partial files.
	StateDir string
	// Mechanism secures every socket; nil is NULL (--insecure).
	Mechanism zmtp.Mechanism
	// AnnounceKey is the server public key (Z85) told to clients that greet
	// without CURVE, so that they can pin it on first contact.
	AnnounceKey string
	// Authorize decides whether the client key may act as user. Nil allows
	// only zpd's own user.
	Authorize func(key []byte, user string) (*Account, error)
	// Heartbeat is the ping interval clients are told to use (1s); Timeout
	// the silence after which a connection is presumed dead (5s); Grace how
	// long a session outlives its connection (60s).
	Heartbeat, Timeout, Grace time.Duration
	// Window is the largest credit window per stream (4 MiB; 16 MiB for a
	// file transfer and a command's stdin, stdout and stderr) and Chunk
	// the largest DATA payload (256 KiB; 1 MiB for files and a command's
	// output).
	Window, Chunk int
	// ShimPath is the program that supervises background jobs: it must
	// call RunShim when its first argument is ShimArg (zpd does). Empty:
	// this program itself.
	ShimPath string
	// JobRetention is how long finished jobs stay listed (7 days); negative
	// keeps them until removed.
	JobRetention time.Duration
	// HandshakeTimeout drops a connection that has not completed its ZMTP
	// handshake in time (10s).
	HandshakeTimeout time.Duration
	// MaxSessions bounds sessions (10000); MaxChannels channels per session (64).
	MaxSessions, MaxChannels int
	// MaxSubscriptions bounds the subscriptions one XPUB connection holds
	// (64): a follower needs at most three per job it follows.
	MaxSubscriptions int
	// Per-user and global limits, answered with ERROR 429: sessions of one
	// user (256); commands and background jobs running at once, per user
	// (1024) and in all (4096); file transfers open at once, per user (32)
	// and in all (256).
	MaxSessionsPerUser, MaxCommandsPerUser, MaxCommands, MaxTransfersPerUser, MaxTransfers int

	Logger *slog.Logger
	// Registerer receives the metrics; nil uses a private registry.
	Registerer prometheus.Registerer

	// Hub makes this zpd a fleet hub, Agent an agent of one (hub.go,
	// agent.go); nil: neither.
	Hub   *HubConfig
	Agent *AgentConfig
}

func (c *Config) heartbeat() time.Duration { return durOr(c.Heartbeat, time.Second) }
func (c *Config) timeout() time.Duration   { return durOr(c.Timeout, 5*time.Second) }
func (c *Config) grace() time.Duration     { return durOr(c.Grace, 60*time.Second) }
func (c *Config) window() int              { return intOr(c.Window, 4<<20) }
func (c *Config) chunk() int               { return intOr(c.Chunk, 256<<10) }
func (c *Config) maxSessions() int         { return intOr(c.MaxSessions, 10000) }
func (c *Config) maxChannels() int         { return intOr(c.MaxChannels, 64) }

// xferWindow is the credit a file receiver grants and xferChunk the DATA
// size a file sender uses (16 MiB and 1 MiB: measured with
// BenchmarkUploadChunkWindow in client/, larger chunks and windows move
// 256 MiB over CURVE up to 45% faster than 256 KiB/8 MiB, and 16 MiB keeps
// a 128 Mbit/s·1s bandwidth-delay product full).
func (c *Config) xferWindow() int { return intOr(c.Window, 16<<20) }
func (c *Config) xferChunk() int  { return intOr(c.Chunk, wire.MaxData) }

// execWindow caps a command's stdout/stderr credit and is the stdin
// credit zpd grants, and execChunk is the DATA size of its output (16 MiB
// and 1 MiB: BenchmarkPipe in client/ moved 256 MiB down in 240 ms and
// 360 CPU-ms with them against 800 ms and 465 CPU-ms with 256 KiB/4 MiB,
// and up in 230 ms against 400 ms; bench/README.md).
func (c *Config) execWindow() int { return intOr(c.Window, 16<<20) }
func (c *Config) execChunk() int  { return intOr(c.Chunk, wire.MaxData) }
func (c *Config) jobRetention() time.Duration {
	if c.JobRetention < 0 {
		return 0
	}
	return durOr(c.JobRetention, 7*24*time.Hour)
}

func durOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func intOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// Broker is a running zpd.
type Broker struct {
	cfg Config
	log *slog.Logger
	// version is the newest protocol version this zpd accepts: wire.Version,
	// or lower with ZP_FAULT_MAX_VERSION (for tests: an older zpd).
	version uint16
	m       *metrics.Metrics
	router  zmq4.Socket
	// dispatchMu makes dispatch handle one message at a time: messages
	// arrive on each connection's reader goroutine (onRecv). stopped, under
	// it, is set once Run has stopped receiving.
	dispatchMu sync.Mutex
	stopped    bool
	running    chan struct{} // closed once Run may dispatch
	xsub       zmq4.Socket
	self       *Account
	jobs       *jobManager
	grants     *grants // who may subscribe to what on the XPUB
	// relayed admits, on the XPUB only, the keys of agents this agent
	// relays a broadcast to (relay.go).
	relayed relayAdmits
	logCap  *rateLimit      // bounds log lines about floods
	limits  *limits         // per-user and global limits
	ctx     context.Context // set by Run; jobs' goroutines stop with it
	work    sync.WaitGroup  // every goroutine of sessions and channels (spawn)

	mu       sync.Mutex
	conns    map[string]*connInfo // by routing identity
	sessions map[string]*session  // by session id

	hub    *hub             // nil unless a fleet hub
	agent  *agentRunner     // nil unless an agent
	inject [2]chan net.Conn // an agent's tunnels to its ROUTER and XPUB
}

// connInfo is an authenticated connection on the control socket.
type connInfo struct {
	id     []byte
	key    []byte // CURVE key, nil under NULL
	remote string
	close  func()
	since  time.Time
	sess   *session
	// agentLink: an agent joined on this connection (a hub's); tunneled:
	// it came through a tunnel from a hub (an agent's).
	agentLink, tunneled bool
	// fetcher: a relay's child fetching what it missed (relayrepair.go).
	fetcher bool
	// send queues a message on the connection without zmq4's Send
	// (zmtp.Config.OnDirect); reply uses it for everything.
	send func(frames [][]byte) error
}

// New validates cfg and binds the control socket.
func New(cfg Config) (*Broker, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	self, err := CurrentAccount()
	if err != nil {
		return nil, fmt.Errorf("broker: who am I: %w", err)
	}
	b := &Broker{
		running:  make(chan struct{}),
		cfg:      cfg,
		log:      cfg.Logger,
		version:  wire.Version,
		m:        metrics.New(cfg.Registerer),
		self:     self,
		grants:   newGrants(publicTopicPrefix),
		logCap:   newRateLimit(10 * time.Second),
		conns:    make(map[string]*connInfo),
		sessions: make(map[string]*session),
	}
	if v := os.Getenv("ZP_FAULT_MAX_VERSION"); v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n < wire.MinVersion || n > wire.Version {
			return nil, fmt.Errorf("broker: ZP_FAULT_MAX_VERSION=%q: want %d to %d", v, wire.MinVersion, wire.Version)
		}
		b.version = uint16(n)
		b.log.Warn("fault injection: speaking an older protocol", "max_version", n)
	}
	b.limits = newLimits(&b.cfg, func(limit, user string, logIt bool) {
		b.m.LimitRefusals.WithLabelValues(limit).Inc()
		if logIt {
			b.log.Warn("limit reached; refusing (logged once a minute per user and limit)", "limit", limit, "user", user)
		}
	}, func(msg string) { b.log.Error(msg) })
	ep, err := zmtp.Endpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	b.hub = newHub(b, cfg.Hub)
	if b.agent, err = newAgent(b, cfg.Agent); err != nil {
		return nil, err
	}
	if b.agent != nil {
		b.inject = [2]chan net.Conn{make(chan net.Conn, 64), make(chan net.Conn, 64)}
	}
	zcfg := &zmtp.Config{
		Mechanism:        b.relayMechanism(),
		SocketType:       string(zmq4.Router),
		AnnounceKey:      cfg.AnnounceKey,
		HandshakeTimeout: cfg.HandshakeTimeout,
		OnFull:           zmtp.Disconnect,
		NoCopy:           true, // the broker never modifies a frame it sent
		// Room for every stream of a session to have its whole window in
		// flight, plus control messages.
		SendQueue:          2*cfg.maxChannels()*cfg.execWindow() + 1<<20,
		MaxFrame:           wire.MaxHeader + 64,
		MaxMessage:         wire.MaxHeader + wire.MaxData + 128,
		MaxFrames:          3,
		Identity:           routingID,
		OnConnect:          b.onConnect,
		OnDirect:           b.onDirect,
		OnRecv:             b.onRecv,
		OnClose:            b.onClose,
		OnHandshakeFailure: b.onHandshakeFailure,
		Inject:             b.inject[wire.PortControl],
	}
	ctx := zmtp.WithConfig(context.Background(), zcfg)
	b.router = zmq4.NewRouter(ctx, zmq4.WithLogger(discardLogger()))
	if err := b.router.Listen(ep); err != nil {
		b.router.Close()
		return nil, fmt.Errorf("broker: listen on %s: %w", cfg.Endpoint, err)
	}
	if err := b.listenPublish(ep); err != nil {
		b.router.Close()
		return nil, err
	}
	return b, nil
}

// sideEndpoint derives the XPUB (offset 1) and XSUB (offset 2) endpoints
// from the control endpoint: the next ports, or PATH.pub and PATH.sub.
func sideEndpoint(ep string, offset int) (string, error) {
	if strings.HasPrefix(ep, zmtp.SchemeIPC+"://") {
		return ep + map[int]string{1: ".pub", 2: ".sub"}[offset], nil
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(ep, zmtp.SchemeTCP+"://"))
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	if p != 0 {
		p += offset
	}
	return zmtp.SchemeTCP + "://" + net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// pubQueue is how many octets of publications zpd queues per XPUB
// subscriber whatever the others do; past it, a subscriber's queue may
// grow to pubBurst while all the queues together reference at most
// pubBurstMax octets (zmtp.Burst: a publication queued on every
// subscriber counts once, NoCopy). Past that, whole messages are dropped
// for that subscriber, which fetches them again over the ROUTER.
//
// A job that writes in bursts (2 MiB at once in bench.sh's fan-out)
// overflowed the 256 KiB the queue used to be at once. With 4 MiB and no
// burst, 100 watchers of one job on a 2-CPU machine either all kept up or,
// after a stall, fell behind together (35% received live, twice the wall
// time): a watcher descheduled for 200 ms misses two bursts. With the
// burst, --insecure watchers received 100% live in every run and CURVE
// ones a median of 64-98% (bench/README.md, 2026-12-03). The bound is on
// what stalled subscribers keep referenced: pubQueue each plus
// pubBurstMax for all, whatever their number.
const (
	pubQueue    = 4 << 20
	pubBurst    = 16 << 20
	pubBurstMax = 256 << 20
)

// listenPublish binds the XPUB that publishes job output and the XSUB
// through which authenticated publishers reach it (topics "p/…" only).
func (b *Broker) listenPublish(ep string) error {
	b.jobs = newJobManager(b)
	pubEP, err := sideEndpoint(ep, 1)
	if err != nil {
		return err
	}
	pcfg := &zmtp.Config{
		Mechanism: b.relayMechanism(), SocketType: string(zmq4.XPub), HandshakeTimeout: b.cfg.HandshakeTimeout,
		OnFull: zmtp.DropMessage, SendQueue: pubQueue, NoCopy: true,
		Burst: &zmtp.Burst{PerPeer: pubBurst, Max: pubBurstMax},
		// Subscribers send only subscriptions: small frames, and only
		// those their key was granted (grants), a few per connection.
		MaxFrame: 1024, MaxMessage: 1024, MaxFrames: 1,
		Subscribe:        func(p *zmtp.Peer, topic []byte) bool { return b.grants.permits(p.Key, topic) },
		MaxSubscriptions: intOr(b.cfg.MaxSubscriptions, 64),
		OnRefuse:         b.onRefuse,
		Barrier:          barrierTopic, OnBarrier: b.jobs.onBarrier,
		OnConnect: func([]byte, *zmtp.Peer, net.Addr, func()) {
			b.jobs.pubConns.Add(1)
			b.m.JobFollowers.Inc()
		},
		OnClose: func([]byte, *zmtp.Peer, error) {
			b.jobs.pubConns.Add(-1)
			b.m.JobFollowers.Dec()
		},
		OnHandshakeFailure: b.onHandshakeFailure,
		OnDrop:             func() { b.m.Dropped.WithLabelValues("xpub").Inc() },
		Inject:             b.inject[wire.PortPublish],
	}
	b.jobs.pub = zmq4.NewXPub(zmtp.WithConfig(context.Background(), pcfg), zmq4.WithLogger(discardLogger()))
	if err := b.jobs.pub.Listen(pubEP); err != nil {
		return fmt.Errorf("broker: listen on %s (XPUB): %w", pubEP, err)
	}
	subEP, err := sideEndpoint(ep, 2)
	if err != nil {
		return err
	}
	scfg := &zmtp.Config{
		Mechanism: b.cfg.Mechanism, SocketType: string(zmq4.XSub), HandshakeTimeout: b.cfg.HandshakeTimeout,
		OnFull: zmtp.DropMessage, MaxFrame: wire.MaxHeader + 64, MaxMessage: wire.MaxHeader + wire.MaxData + 128, MaxFrames: 3,
		Hello:              [][]byte{append([]byte{1}, publicTopicPrefix...)},
		OnHandshakeFailure: b.onHandshakeFailure,
	}
	b.xsub = zmq4.NewXSub(zmtp.WithConfig(context.Background(), scfg), zmq4.WithLogger(discardLogger()))
	if err := b.xsub.Listen(subEP); err != nil {
		b.jobs.pub.Close()
		return fmt.Errorf("broker: listen on %s (XSUB): %w", subEP, err)
	}
	return nil
}

// publicTopicPrefix is what publishers may publish through the XSUB: job
// topics ("j/…") are zpd's alone.
const publicTopicPrefix = "p/"

// forwardPublications relays what publishers send to the XSUB onto the
// XPUB (zmq_proxy's job), for "p/" topics only.
func (b *Broker) forwardPublications() {
	for {
		msg, err := b.xsub.Recv()
		if err != nil {
			return
		}
		if len(msg.Frames) == 0 || !strings.HasPrefix(string(msg.Frames[0]), publicTopicPrefix) {
			continue
		}
		_ = b.jobs.pub.Send(msg)
	}
}

// PublishAddr is the XPUB's bound address.
func (b *Broker) PublishAddr() net.Addr { return b.jobs.pub.Addr() }

// SubscribeAddr is the XSUB's bound address.
func (b *Broker) SubscribeAddr() net.Addr { return b.xsub.Addr() }

// publishEndpoint is how FOLLOW_OK tells clients where the XPUB is.
func (b *Broker) publishEndpoint() string {
	a := b.jobs.pub.Addr()
	if a == nil {
		return ""
	}
	if a.Network() == "unix" {
		return "ipc://" + a.String()
	}
	_, port, _ := net.SplitHostPort(a.String())
	return ":" + port
}

// Addr is the control socket's bound address (useful with port 0).
func (b *Broker) Addr() net.Addr { return b.router.Addr() }

// routingID gives each connection an identity that starts with the peer's
// authenticated key (32 zero octets under NULL) and ends with 8 random
// octets: the broker reads the key from every message's envelope, and no
// client can choose or collide with another's identity.
func routingID(p *zmtp.Peer) []byte {
	id := make([]byte, 40)
	copy(id, p.Key)
	_, _ = rand.Read(id[32:])
	return id
}

func (b *Broker) onConnect(id []byte, p *zmtp.Peer, remote net.Addr, closeConn func()) {
	b.mu.Lock()
	b.conns[string(id)] = &connInfo{id: id, key: p.Key, remote: remote.String(), close: closeConn, since: time.Now(),
		tunneled: remote.Network() == "tunnel"}
	b.mu.Unlock()
	b.m.Connections.Inc()
	b.log.Debug("connection", "peer", remote.String())
}

// onDirect keeps the connection's own send (zmtp.Config.OnDirect): zmq4's
// ROUTER Send takes a socket-wide lock, a context, a timer and a goroutine
// for every message.
func (b *Broker) onDirect(id []byte, send func([][]byte) error) {
	b.mu.Lock()
	if c := b.conns[string(id)]; c != nil {
		c.send = send
	}
	b.mu.Unlock()
}

// onRecv takes a message on its connection's reader goroutine
// (zmtp.Config.OnRecv): zmq4 allocated every frame afresh and passed each
// message through a channel to Run. Large frames come from bufpool; a
// channel that is done with a payload may recycle it.
func (b *Broker) onRecv(id []byte, frames [][]byte) {
	<-b.running
	b.dispatchMu.Lock()
	defer b.dispatchMu.Unlock()
	if b.stopped {
		return
	}
	b.dispatch(append([][]byte{id}, frames...))
}

func (b *Broker) onClose(id []byte, _ *zmtp.Peer, err error) {
	b.mu.Lock()
	c := b.conns[string(id)]
	delete(b.conns, string(id))
	var s *session
	if c != nil {
		s = c.sess // under the lock: Run's goroutine sets it (open, resume, end)
	}
	b.mu.Unlock()
	if c == nil {
		return
	}
	b.m.Connections.Dec()
	if errors.Is(err, zmtp.ErrSlowPeer) {
		b.log.Warn("dropped a client that stopped reading", "peer", c.remote)
	}
	if s != nil {
		s.detach(c)
	}
	b.hub.closed(c, s)
}

func (b *Broker) onHandshakeFailure(remote net.Addr, err *zmtp.HandshakeError) {
	b.m.HandshakeFailures.WithLabelValues(err.Reason).Inc()
	if err.Reason == zmtp.ReasonKeyQuery {
		b.log.Debug("server key announced", "peer", remote.String())
		return
	}
	// A flood of failures is one line per reason per interval, with the
	// count of those not logged (the metric counts them all).
	if ok, held := b.logCap.allow("handshake/" + err.Reason); ok {
		b.log.Info("handshake failed", "peer", remote.String(), "reason", err.Reason, "err", err.Err, "suppressed", held)
	}
}

// onRefuse counts (and logs, rate-limited) a subscription the XPUB refused.
func (b *Broker) onRefuse(p *zmtp.Peer, topic []byte, reason string) {
	reason = strings.ReplaceAll(reason, " ", "_")
	b.m.SubsRefused.WithLabelValues(reason).Inc()
	if ok, held := b.logCap.allow("subscribe/" + reason); ok {
		b.log.Warn("subscription refused", "reason", reason, "key", keyFingerprint(p.Key), "topic_len", len(topic), "suppressed", held)
	}
}

// Run serves until ctx ends, then stops every session and returns.
func (b *Broker) Run(ctx context.Context) error {
	b.ctx = ctx
	if err := b.jobs.load(ctx); err != nil {
		b.dispatchMu.Lock()
		b.stopped = true
		b.dispatchMu.Unlock()
		close(b.running)
		return fmt.Errorf("broker: loading jobs: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		b.reaper(ctx)
	}()
	if b.agent != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.agent.run(ctx)
		}()
	}
	go func() {
		defer wg.Done()
		b.forwardPublications()
	}()
	stop := context.AfterFunc(ctx, func() { b.router.Close(); b.xsub.Close() })
	defer stop()
	// Connections are accepted from New on; what they send waits in
	// onRecv until now, when what dispatch uses is set up.
	close(b.running)
	for {
		// Messages arrive through onRecv; zmq4's Recv returns when the
		// socket ends (or with a message from a connection that does not
		// go through internal/zmtp: none).
		msg, err := b.router.Recv()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			b.log.Error("control socket receive failed", "err", err)
			break
		}
		b.dispatchMu.Lock()
		b.dispatch(msg.Frames)
		b.dispatchMu.Unlock()
	}
	b.router.Close()
	b.dispatchMu.Lock()
	b.stopped = true
	b.dispatchMu.Unlock()
	b.mu.Lock()
	sessions := make([]*session, 0, len(b.sessions))
	for _, s := range b.sessions {
		sessions = append(sessions, s)
	}
	b.mu.Unlock()
	for _, s := range sessions {
		s.end("zpd shutting down")
	}
	b.xsub.Close()
	wg.Wait()
	b.work.Wait()    // sessions' goroutines end with their channels and ctx
	b.jobs.wg.Wait() // job watchers stop with ctx; the jobs keep running
	b.jobs.pub.Close()
	return nil
}

// spawn runs f on a goroutine that Run waits for before it returns (as
// nats-server's startGoRoutine): every goroutine a session or channel
// starts goes through here, and each ends when its channel is stopped or
// Run's context ends.
func (b *Broker) spawn(f func()) {
	b.work.Add(1)
	go func() {
		defer b.work.Done()
		f()
	}()
}

// dispatch handles one message from the ROUTER; it must never block.
func (b *Broker) dispatch(frames [][]byte) {
	if len(frames) < 2 {
		return
	}
	id := frames[0]
	b.mu.Lock()
	c := b.conns[string(id)]
	b.mu.Unlock()
	if c == nil {
		return // connection already gone
	}
	m, err := wire.Decode(frames[1:])
	if err != nil {
		code := wire.CodeBadRequest
		if errors.Is(err, wire.ErrTooLarge) {
			code = wire.CodeTooLarge
		}
		b.reply(id, wire.Errorf(0, code, "%v", err))
		return
	}
	if b.hub.link(c, m) {
		return
	}
	if o, ok := m.(*wire.Open); ok {
		b.open(c, o)
		return
	}
	s := c.sess
	if f, ok := m.(*wire.PubFetch); ok && s == nil && b.agent != nil {
		b.relayFetch(c, f)
		return
	}
	if s == nil {
		b.reply(id, wire.Errorf(0, wire.CodeBadRequest, "%s before OPEN", m.ID()))
		return
	}
	s.handle(m)
}

// reply sends a message to a connection that may have no session.
func (b *Broker) reply(id []byte, m wire.Message) {
	if e, ok := m.(*wire.Error); ok {
		b.m.Errors.WithLabelValues(strconv.Itoa(int(e.Code))).Inc()
	}
	b.mu.Lock()
	var send func([][]byte) error
	if c := b.conns[string(id)]; c != nil {
		send = c.send
	}
	b.mu.Unlock()
	var err error
	if send != nil {
		err = send(wire.Frames(m))
	} else { // gone (zmq4 drops it too), or not through internal/zmtp
		err = b.router.Send(zmq4.NewMsgFrom(append([][]byte{id}, wire.Frames(m)...)...))
	}
	if err != nil {
		b.log.Debug("send failed", "err", err)
	}
}

func (b *Broker) open(c *connInfo, m *wire.Open) {
	if m.Version < wire.MinVersion || m.Version > b.version {
		b.reply(c.id, wire.Errorf(0, wire.CodeVersion, "protocol version %d not supported (this zpd speaks %d to %d)", m.Version, wire.MinVersion, b.version))
		return
	}
	if c.sess != nil {
		b.reply(c.id, wire.Errorf(0, wire.CodeBadRequest, "this connection already has a session"))
		return
	}
	if m.Session != "" {
		b.resume(c, m)
		return
	}
	user := m.User
	if user == "" {
		user = b.self.Name
	}
	var acct *Account
	var err error
	if b.cfg.Authorize != nil {
		acct, err = b.cfg.Authorize(c.key, user)
	} else if user != b.self.Name {
		err = fmt.Errorf("zpd runs as %s and cannot act as %s", b.self.Name, user)
	} else {
		acct = b.self
	}
	fleetOnly := false
	if err != nil && b.hub.admitsClient(c.key, m.Version) {
		acct, err, fleetOnly = fleetOnlyAccount(c.key), nil, true
	}
	if err == nil && c.tunneled && !b.agent.userAllowed(user) {
		err = fmt.Errorf("user %s may not be reached through the fleet on this host (--fleet-users)", user)
	}
	if err != nil {
		b.log.Info("session refused", "peer", c.remote, "user", user, "err", err)
		b.reply(c.id, wire.Errorf(0, wire.CodeUnauthorised, "%v", err))
		return
	}
	if e := b.limits.acquire(limSessions, acct.Name); e != nil {
		b.reply(c.id, e)
		return
	}
	b.mu.Lock()
	s := newSession(b, acct, c)
	s.version = m.Version
	s.fleetOnly = fleetOnly
	b.sessions[s.id] = s
	c.sess = s
	b.mu.Unlock()
	b.m.Sessions.Inc()
	b.m.SessionsOpened.WithLabelValues("new").Inc()
	b.log.Info("session opened", "session", s.id, "user", acct.Name, "peer", c.remote, "client", m.Client)
	s.send(b.openOK(s, false))
}

func (b *Broker) openOK(s *session, resumed bool) *wire.OpenOK {
	host, _ := os.Hostname()
	return &wire.OpenOK{
		Version: s.version, Session: s.id, Token: s.token, Resumed: resumed,
		Heartbeat: uint32(b.cfg.heartbeat().Milliseconds()),
		Timeout:   uint32(b.cfg.timeout().Milliseconds()),
		Grace:     uint32(b.cfg.grace().Milliseconds()),
		Server:    host + " zpd/" + wire.SoftwareVersion,
	}
}

func (b *Broker) resume(c *connInfo, m *wire.Open) {
	b.mu.Lock()
	s := b.sessions[m.Session]
	b.mu.Unlock()
	// The same answer for "no such session" and "not yours": session ids
	// are not secrets, tokens and keys are.
	if s == nil || subtle.ConstantTimeCompare(s.token, m.Token) != 1 || subtle.ConstantTimeCompare(s.key, c.key) != 1 {
		b.reply(c.id, wire.Errorf(0, wire.CodeGone, "session %s cannot be resumed (expired or unknown)", m.Session))
		return
	}
	s.armResend() // before the new link is visible: no new data overtakes the resend
	if !s.attach(c) {
		b.reply(c.id, wire.Errorf(0, wire.CodeGone, "session %s has ended", m.Session))
		return
	}
	b.m.SessionsOpened.WithLabelValues("resumed").Inc()
	b.log.Info("session resumed", "session", s.id, "peer", c.remote)
	s.resumeStreams(b.openOK(s, true))
}

// reaper drops dead connections and expired sessions.
func (b *Broker) reaper(ctx context.Context) {
	t := time.NewTicker(b.cfg.heartbeat() / 2)
	defer t.Stop()
	lastExpire := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if now.Sub(lastExpire) > min(time.Minute, b.cfg.jobRetention()/4) {
			lastExpire = now
			b.jobs.expire(b.cfg.jobRetention())
			if b.hub != nil {
				b.hub.expireFleetJobs(now)
			}
		}
		var kick []*connInfo
		var expired []*session
		b.mu.Lock()
		for _, c := range b.conns {
			// A relay's child fetching keeps its connection while its key
			// is admitted (its broadcast lasts), not beyond.
			if c.sess == nil && !c.agentLink && (!c.fetcher || !b.relayed.has(c.key)) && now.Sub(c.since) > b.cfg.timeout()+b.cfg.heartbeat() {
				kick = append(kick, c) // connected but never opened a session
			}
		}
		for _, s := range b.sessions {
			switch st, since := s.state(); st {
			case attached:
				if now.Sub(since) > b.cfg.timeout() {
					if c := s.currentConn(); c != nil {
						kick = append(kick, c)
					}
				}
			case detached:
				if now.Sub(since) > b.cfg.grace() {
					expired = append(expired, s)
				}
			}
		}
		b.mu.Unlock()
		for _, c := range kick {
			b.log.Info("closing silent connection", "peer", c.remote)
			c.close()
		}
		for _, s := range expired {
			b.m.SessionsReaped.Inc()
			s.end("client did not return within the grace period")
		}
		b.hub.tick(now)
	}
}

func (b *Broker) forget(s *session) {
	b.mu.Lock()
	delete(b.sessions, s.id)
	b.mu.Unlock()
	b.limits.release(limSessions, s.acct.Name)
	b.m.Sessions.Dec()
}

func newSessionID() string { return nuid.Next() }
