package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/testutil/leak"
	"github.com/zpipes/zp/internal/tunnel"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// testFleet is a hub and its agents in this process, over tcp on
// 127.0.0.1 with CURVE, and a client key admitted to the fleet.
type testFleet struct {
	hub       *broker.Broker
	hubLog    syncBuf
	relayed   [2]syncBuf // what the hub relayed: to clients, to agents
	hubKey    curve.KeyPair
	client    curve.KeyPair // a fleet client that every agent authorises
	stranger  curve.KeyPair // a fleet client that no agent knows
	hubUser   curve.KeyPair // authorised on the hub itself, not a fleet client
	spare     curve.KeyPair // an admitted agent key that no agent uses yet
	agentKeys map[string]curve.KeyPair
	stopAgent map[string]func()
	agents    map[string]*broker.Broker
	self      *broker.Account
	reg       *prometheus.Registry // the hub's metrics
}

func runBroker(t *testing.T, cfg broker.Config) (*broker.Broker, func()) {
	t.Helper()
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	halt := func() { once.Do(func() { stop(); <-done }) }
	t.Cleanup(halt)
	return b, halt
}

func writeKeys(t *testing.T, keys ...curve.PublicKey) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# test keys\n")
	for _, k := range keys {
		b.WriteString(k.String() + "\n")
	}
	p := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustKeyPair(t *testing.T) curve.KeyPair {
	t.Helper()
	k, err := curve.GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestFleet starts a hub and one agent per name (labels role=NAME's
// first letter), and waits until all are up.
func newTestFleet(t *testing.T, names ...string) *testFleet {
	t.Helper()
	self, err := broker.CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	f := &testFleet{reg: prometheus.NewRegistry(), hubKey: mustKeyPair(t), client: mustKeyPair(t), stranger: mustKeyPair(t), hubUser: mustKeyPair(t),
		spare: mustKeyPair(t), agentKeys: map[string]curve.KeyPair{}, stopAgent: map[string]func(){}, agents: map[string]*broker.Broker{}, self: self}
	agentPubs := []curve.PublicKey{f.spare.Public}
	for _, n := range names {
		k := mustKeyPair(t)
		f.agentKeys[n] = k
		agentPubs = append(agentPubs, k.Public)
	}
	agents := &broker.KeyList{Path: writeKeys(t, agentPubs...)}
	clients := &broker.KeyList{Path: writeKeys(t, f.client.Public, f.stranger.Public)}
	f.hub, _ = runBroker(t, broker.Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(&f.hubLog, nil)),
		MaxSessionsPerUser: 2, Registerer: f.reg,
		Mechanism: &curve.Server{Key: f.hubKey, Authorize: func(k curve.PublicKey) error {
			if agents.Contains(k[:]) || clients.Contains(k[:]) || k == f.hubUser.Public {
				return nil
			}
			return errors.New("not authorised")
		}},
		// The hub's own keyring authorises only hubUser: fleet clients
		// get fleet-only sessions.
		Authorize: func(k []byte, _ string) (*broker.Account, error) {
			if string(k) == string(f.hubUser.Public[:]) {
				return self, nil
			}
			return nil, errors.New("not here")
		},
		Hub: &broker.HubConfig{Agents: agents, Clients: clients, Metrics: ":9999",
			OnRelay: func(toAgent bool, p []byte) {
				if toAgent {
					f.relayed[1].Write(p)
				} else {
					f.relayed[0].Write(p)
				}
			}},
	})
	for _, n := range names {
		f.stopAgent[n] = f.startAgent(t, n, f.agentKeys[n], nil)
	}
	s := f.dialHub(t, f.client)
	fl, err := NewFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := fl.Agents(context.Background(), Selector{})
		if err != nil {
			t.Fatal(err)
		}
		up := 0
		for _, a := range list {
			if a.State == AgentUp {
				up++
			}
		}
		if up == len(names) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents up: %d of %d: %+v", up, len(names), list)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Close()
	return f
}

func (f *testFleet) startAgent(t *testing.T, name string, key curve.KeyPair, users []string) func() {
	t.Helper()
	b, stop := runBroker(t, broker.Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(),
		Mechanism: &curve.Server{Key: key, Authorize: curve.AllowKeys(f.client.Public)},
		Authorize: func([]byte, string) (*broker.Account, error) { return f.self, nil },
		Heartbeat: 200 * time.Millisecond, Timeout: 5 * time.Second,
		Agent: &broker.AgentConfig{Hub: "tcp://" + f.hub.Addr().String(), HubKey: f.hubKey.Public.String(),
			Key: key, Name: name, Labels: map[string]string{"role": name[:1]}, Metrics: ":9100", Users: users},
	})
	f.agents[name] = b
	return stop
}

func (f *testFleet) dialHub(t *testing.T, key curve.KeyPair) *Session {
	t.Helper()
	s, err := Dial(context.Background(), Config{
		Endpoint: "tcp://" + f.hub.Addr().String(),
		mech:     &curve.Client{Key: key, ServerKey: f.hubKey.Public},
		User:     "anyone",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// noLeaks checks, after every cleanup of the test, that no goroutine of
// the hub, the agents or the client is left.
func noLeaks(t *testing.T) {
	t.Cleanup(func() {
		goleak.VerifyNone(t, leak.ZMQ4...)
	})
}

func TestFleetListAndExec(t *testing.T) {
	noLeaks(t)
	f := newTestFleet(t, "alpha", "beta", "gamma")
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := fl.List(ctx, Selector{})
	if err != nil {
		t.Fatal(err)
	}
	if l.HubMetrics != ":9999" || len(l.Agents) != 3 || l.Agents[0].Name != "alpha" || l.Agents[2].Name != "gamma" {
		t.Fatalf("listing: %+v", l)
	}
	a := l.Agents[0]
	if a.Key != f.agentKeys["alpha"].Public.String() || a.Fingerprint != f.agentKeys["alpha"].Public.Fingerprint() ||
		a.Labels["role"] != "a" || !strings.HasPrefix(a.Address, "127.0.0.1:") || !strings.HasPrefix(a.Metrics, "127.0.0.1:9100") ||
		!strings.HasPrefix(a.Software, "zpd/") || time.Since(a.Joined) > time.Minute || time.Since(a.LastSeen) > time.Minute {
		t.Fatalf("agent: %+v", a)
	}
	for _, c := range []struct {
		sel  Selector
		want string
	}{
		{Selector{Hosts: []string{"b*", "gamma"}}, "beta,gamma"},
		{Selector{Labels: map[string]string{"role": "g"}}, "gamma"},
		{Selector{Hosts: []string{"a*"}, Labels: map[string]string{"role": "b"}}, ""},
	} {
		got, err := fl.Agents(ctx, c.sel)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, a := range got {
			names = append(names, a.Name)
		}
		if strings.Join(names, ",") != c.want {
			t.Errorf("%+v: %v, want %s", c.sel, names, c.want)
		}
	}
	if _, err := fl.Agents(ctx, Selector{Hosts: []string{"[bad"}}); !isCode(err, wire.CodeBadRequest) {
		t.Errorf("bad pattern: %v", err)
	}

	// A command on every agent at once, each through its own tunnel.
	big := strings.Repeat("x", 3<<20)
	var wg sync.WaitGroup
	for _, a := range l.Agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := fl.DialAgent(ctx, a, Config{mech: &curve.Client{Key: f.client}})
			if err != nil {
				t.Errorf("%s: %v", a.Name, err)
				return
			}
			defer s.Close()
			var out, errb bytes.Buffer
			st, err := s.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "wc -c; echo " + a.Name + " >&2; echo MARKER-OUT-" + a.Name + "; exit 3", "MARKER-ARGV"},
				Stdin: strings.NewReader(big), Stdout: &out, Stderr: &errb})
			if err != nil || st.ExitCode() != 3 || out.String() != fmt.Sprintf("%d\nMARKER-OUT-%s\n", len(big), a.Name) || errb.String() != a.Name+"\n" {
				t.Errorf("%s: %v %+v %q %q", a.Name, err, st, out.String(), errb.String())
			}
		}()
	}
	wg.Wait()
	// The hub relayed every octet of those sessions and read none.
	up, down := f.relayed[1].String(), f.relayed[0].String()
	if len(up) < 3*len(big) || len(down) < 3*len("MARKER-OUT-alpha") {
		t.Fatalf("relayed %d octets to agents, %d to the client", len(up), len(down))
	}
	for _, marker := range []string{"MARKER", "xxxxxxxx", "alpha\n"} {
		if strings.Contains(up, marker) || strings.Contains(down, marker) {
			t.Errorf("the hub saw %q in clear", marker)
		}
	}

	if _, err := fl.Tunnel(ctx, "nobody", wire.PortControl); !isCode(err, wire.CodeNotFound) {
		t.Errorf("tunnel to an unknown agent: %v", err)
	}
}

func isCode(err error, code wire.Code) bool {
	var we *wire.Error // a tunnel's Read reports the hub's ERROR as is
	return IsCode(err, Code(code)) || (errors.As(err, &we) && we.Code == code)
}

// A fleet client's session on the hub is fleet-only; a key that is not
// a fleet client gets 401 for fleet requests; each agent authorises the
// client itself.
func TestFleetAuthorisation(t *testing.T) {
	f := newTestFleet(t, "alpha", "beta")
	ctx := context.Background()
	s := f.dialHub(t, f.client)
	if _, err := s.Exec(ctx, ExecRequest{Argv: []string{"true"}}); !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("exec on the hub by a fleet-only key: %v", err)
	}
	if _, err := s.Jobs(ctx); !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("jobs on the hub by a fleet-only key: %v", err)
	}
	// The agent's key passes the hub's handshake but is no fleet client
	// (nor authorised on the hub for any user): OPEN is refused.
	_, err := Dial(ctx, Config{Endpoint: "tcp://" + f.hub.Addr().String(),
		mech: &curve.Client{Key: f.agentKeys["alpha"], ServerKey: f.hubKey.Public}, User: "x"})
	if !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("OPEN by an agent key: %v", err)
	}
	// A key authorised on the hub but not a fleet client: its session
	// works, its fleet requests get 401.
	hs, err := NewFleet(f.dialHub(t, f.hubUser))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs.Agents(ctx, Selector{}); !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("FLEET by a key that is not a fleet client: %v", err)
	}
	if _, err := hs.Tunnel(ctx, "alpha", wire.PortControl); !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("TUNNEL by a key that is not a fleet client: %v", err)
	}
	// Fleet-only sessions naming a user do not use up that user's
	// sessions on the hub (the limit is 2 per user here).
	f.dialHub(t, f.client)
	f.dialHub(t, f.stranger)
	if _, err := Dial(ctx, Config{Endpoint: "tcp://" + f.hub.Addr().String(),
		mech: &curve.Client{Key: f.hubUser, ServerKey: f.hubKey.Public}, User: "anyone"}); err != nil {
		t.Errorf("the user's second session, beside fleet-only ones naming it: %v", err)
	}
	// A fleet client that no agent knows: the tunnel opens, the agent
	// refuses the handshake.
	sf, err := NewFleet(f.dialHub(t, f.stranger))
	if err != nil {
		t.Fatal(err)
	}
	agents, err := sf.Agents(ctx, Selector{})
	if err != nil || len(agents) != 2 {
		t.Fatalf("listing: %v %v", agents, err)
	}
	if _, err := sf.DialAgent(ctx, agents[0], Config{mech: &curve.Client{Key: f.stranger}}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("a key the agent does not know: %v", err)
	}
}

// An agent's --fleet-users bounds the users a tunnelled session may be.
func TestFleetUsers(t *testing.T) {
	f := newTestFleet(t)
	f.startAgent(t, "restricted", f.spare, []string{"deploy"})
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := f.waitUp(t, fl, "restricted")
	if _, err := fl.DialAgent(ctx, a, Config{mech: &curve.Client{Key: f.client}, User: "root"}); !isCode(err, wire.CodeUnauthorised) {
		t.Errorf("a user not in --fleet-users: %v", err)
	}
	s, err := fl.DialAgent(ctx, a, Config{mech: &curve.Client{Key: f.client}, User: "deploy"})
	if err != nil {
		t.Fatalf("a user in --fleet-users: %v", err)
	}
	s.Close()
}

// A second agent under a name that is up, with another key, is refused
// (409, and its log says why); the first keeps the name. When an agent
// stops, it is listed lost and its tunnels fail with 503.
func TestFleetNameTakenAndLost(t *testing.T) {
	noLeaks(t)
	f := newTestFleet(t, "alpha")
	var logBuf syncBuf
	_, stop := runBroker(t, broker.Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(),
		Mechanism: &curve.Server{Key: f.spare, Authorize: curve.AllowKeys(f.client.Public)},
		Logger:    slog.New(slog.NewTextHandler(&logBuf, nil)),
		Agent: &broker.AgentConfig{Hub: "tcp://" + f.hub.Addr().String(), HubKey: f.hubKey.Public.String(),
			Key: f.spare, Name: "alpha"},
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logBuf.String(), "name alpha is taken by an agent that is up, key "+f.agentKeys["alpha"].Public.Fingerprint()) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal in the second agent's log:\n%s", logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := f.waitUp(t, fl, "alpha")
	if a.Key != f.agentKeys["alpha"].Public.String() {
		t.Fatalf("alpha's key changed: %+v", a)
	}

	// A command that runs until its agent stops.
	s, err := fl.DialAgent(ctx, a, Config{mech: &curve.Client{Key: f.client}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	result := make(chan error, 1)
	var out syncBuf
	go func() {
		_, err := s.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo started; sleep 30"}, Stdout: &out})
		result <- err
	}()
	for !strings.Contains(out.String(), "started") {
		time.Sleep(10 * time.Millisecond)
	}
	f.stopAgent["alpha"]()
	select {
	case err := <-result:
		if err == nil {
			t.Fatal("the command survived its agent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not fail when its agent stopped")
	}
	l, err := fl.Agents(ctx, Selector{})
	if err != nil || len(l) != 1 || l[0].State != AgentLost {
		t.Fatalf("after the agent stopped: %+v %v", l, err)
	}
	if _, err := fl.Tunnel(ctx, "alpha", wire.PortControl); !isCode(err, wire.CodeNotFound) {
		t.Errorf("tunnel to a lost agent: %v", err)
	}
}

func (f *testFleet) waitUp(t *testing.T, fl *Fleet, name string) Agent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := fl.Agents(context.Background(), Selector{Hosts: []string{name}})
		if err != nil {
			t.Fatal(err)
		}
		if len(l) == 1 && l[0].State == AgentUp {
			return l[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not up: %+v", name, l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The hub relays a tunnel's octets only within the credit the receiver
// granted: a client that sends past the agent's window gets 422 and the
// tunnel ends; a window over 4 MiB is refused.
func TestFleetTunnelCredit(t *testing.T) {
	f := newTestFleet(t, "alpha")
	s := f.dialHub(t, f.client)
	fl, err := NewFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fl.TunnelWindow = 8 << 20
	if _, err := fl.Tunnel(ctx, "alpha", wire.PortControl); !isCode(err, wire.CodeTooLarge) {
		t.Fatalf("an 8 MiB window: %v", err)
	}
	fl.TunnelWindow = 0
	c, err := fl.Tunnel(ctx, "alpha", wire.PortControl)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*tunnel.Conn)
	s.fleet.mu.Lock()
	var id uint32
	for k, v := range s.fleet.open {
		if v == tc {
			id = k
		}
	}
	s.fleet.mu.Unlock()
	// The agent granted 1 MiB; this ends 100 octets past it.
	if err := s.send(&wire.Data{Channel: id, Stream: wire.TunnelUp, Offset: 1<<20 - 50, Bytes: make([]byte, 150)}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue // the agent's greeting
		}
		if !isCode(err, wire.CodeFlowControl) {
			t.Fatalf("after sending past the credit: %v", err)
		}
		break
	}
}

// Two zpds with one key and one name (a cloned state directory): the
// newer link replaces the older, whose agent is told why and backs off
// instead of taking the name back at once.
func TestFleetClonedAgent(t *testing.T) {
	f := newTestFleet(t, "alpha")
	var logBuf syncBuf
	runBroker(t, broker.Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(),
		Mechanism: &curve.Server{Key: f.agentKeys["alpha"], Authorize: curve.AllowKeys(f.client.Public)},
		Logger:    slog.New(slog.NewTextHandler(&logBuf, nil)),
		Agent: &broker.AgentConfig{Hub: "tcp://" + f.hub.Addr().String(), HubKey: f.hubKey.Public.String(),
			Key: f.agentKeys["alpha"], Name: "alpha"},
	})
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(f.hubLog.String(), `msg="agent joined" agent=alpha`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the clone did not join:\n%s", f.hubLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	if n := strings.Count(f.hubLog.String(), `msg="agent joined" agent=alpha`); n != 2 {
		t.Fatalf("alpha joined %d times: the two links flap", n)
	}
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	f.waitUp(t, fl, "alpha")
}

// A tunnel to port 1 reaches the agent's XPUB: a SUB through the hub
// receives what is published on the agent (CURVE with the agent's key).
func TestFleetTunnelToPublish(t *testing.T) {
	noLeaks(t)
	f := newTestFleet(t, "alpha")
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := zmq4.NewSub(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "SUB", OnFull: zmtp.Block,
		Mechanism: &curve.Client{Key: f.client, ServerKey: f.agentKeys["alpha"].Public},
		Dial:      func(ctx context.Context) (net.Conn, error) { return fl.Tunnel(ctx, "alpha", wire.PortPublish) }}),
		zmq4.WithDialerMaxRetries(0))
	defer sub.Close()
	if err := sub.Dial(zmtp.SchemeDial + "://alpha"); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, "p/test"); err != nil {
		t.Fatal(err)
	}
	pub := zmq4.NewPub(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "PUB", OnFull: zmtp.Block,
		Mechanism: &curve.Client{Key: f.client, ServerKey: f.agentKeys["alpha"].Public}}), zmq4.WithDialerMaxRetries(0))
	defer pub.Close()
	if err := pub.Dial(zmtp.SchemeTCP + "://" + f.agents["alpha"].SubscribeAddr().String()); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		m, err := sub.Recv()
		if err == nil {
			got <- string(m.Frames[1])
		}
	}()
	deadline := time.After(10 * time.Second)
	for {
		// Subscriptions propagate asynchronously: publish until one arrives.
		pub.Send(zmq4.NewMsgFrom([]byte("p/test"), []byte("hello through the hub")))
		select {
		case m := <-got:
			if m != "hello through the hub" {
				t.Fatalf("got %q", m)
			}
			return
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("nothing arrived through the tunnel to the XPUB")
		}
	}
}
