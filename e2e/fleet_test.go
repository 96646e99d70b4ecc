package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/client"
)

// testFleet is a hub and its agents, each a zpd process with CURVE, and
// a client config ($ZP_CONFIG) whose key is a fleet client of the hub and
// authorised on every agent.
type testFleet struct {
	t          *testing.T
	dir        string
	home       string // the fleet client's $ZP_CONFIG
	clientKey  string
	agentAK    string // the agents' --authorized-keys
	fleetKeys  string // the hub's --fleet-keys
	hub        *zpd
	hubArgs    []string
	agents     map[string]*zpd
	agentState map[string]string
	agentArgs  map[string][]string
}

// startZPDAt starts zpd with a given state directory and listen address.
func startZPDAt(t *testing.T, state, listen string, args ...string) *zpd {
	t.Helper()
	d := &zpd{t: t, State: state, Home: t.TempDir(), log: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin("zpd"), append([]string{"--listen", listen, "--state", state}, args...)...)
	t.Cleanup(func() { // after Stop: the log is complete
		if strings.Contains(d.Log(), "WARNING: DATA RACE") || strings.Contains(d.Log(), "panic:") {
			t.Errorf("zpd %v:\n%s", args, d.Log())
		}
	})
	startAndWait(t, d)
	return d
}

// agentKey creates an agent's state directory and returns its key.
func agentKey(t *testing.T, state string) string {
	t.Helper()
	r := run(t, nil, nil, "zpd", "--print-key", "--state", state)
	if r.Code != 0 {
		t.Fatalf("zpd --print-key: %+v", r)
	}
	return strings.SplitN(r.Stdout, "\n", 2)[0]
}

func keygen(t *testing.T, home string) string {
	t.Helper()
	r := run(t, nil, []string{"ZP_CONFIG=" + home}, "zp", "keygen")
	if r.Code != 0 {
		t.Fatalf("zp keygen: %+v", r)
	}
	return strings.TrimSpace(r.Stdout)
}

// newTestFleet starts a hub (with hubArgs) and no agent yet; spare names
// get keys admitted by the hub.
func newTestFleet(t *testing.T, admitted []string, hubArgs ...string) *testFleet {
	t.Helper()
	f := &testFleet{t: t, dir: t.TempDir(), home: t.TempDir(), agents: map[string]*zpd{},
		agentState: map[string]string{}, agentArgs: map[string][]string{}}
	f.clientKey = keygen(t, f.home)
	f.agentAK = filepath.Join(f.dir, "agents_authorized_keys")
	os.WriteFile(f.agentAK, []byte(f.clientKey+"\n"), 0o600)
	clients := filepath.Join(f.dir, "fleet_clients")
	os.WriteFile(clients, []byte("# fleet clients\n"+f.clientKey+"\n"), 0o600)
	var keys strings.Builder
	for _, n := range admitted {
		st := filepath.Join(f.dir, "state-"+n)
		f.agentState[n] = st
		keys.WriteString(agentKey(t, st) + " " + n + "\n")
	}
	f.fleetKeys = filepath.Join(f.dir, "fleet_keys")
	os.WriteFile(f.fleetKeys, []byte(keys.String()), 0o600)
	f.hubArgs = append([]string{"--fleet-keys", f.fleetKeys, "--fleet-clients", clients}, hubArgs...)
	// A port triple of our own: restartHub needs P, P+1 and P+2 again (with
	// port 0 the XPUB and XSUB get ports of their own, which P+1 and P+2
	// need not be free at a restart).
	f.hub = startZPDAt(t, filepath.Join(f.dir, "hub"), fmt.Sprintf("127.0.0.1:%d", freePorts(t)), f.hubArgs...)
	return f
}

// startAgent starts (or restarts) an agent with its state directory.
func (f *testFleet) startAgent(name string, args ...string) *zpd {
	f.t.Helper()
	st := f.agentState[name]
	if st == "" {
		st = filepath.Join(f.dir, "state-"+name)
		f.agentState[name] = st
	}
	if args != nil {
		f.agentArgs[name] = args
	}
	all := append([]string{"--join", f.hub.Addr, "--name", name, "--authorized-keys", f.agentAK}, f.agentArgs[name]...)
	d := startZPDAt(f.t, st, "127.0.0.1:0", all...)
	f.agents[name] = d
	return d
}

// restartHub stops the hub and starts it again on the same port.
func (f *testFleet) restartHub() {
	f.t.Helper()
	f.hub.Stop()
	f.hub = startZPDAt(f.t, f.hub.State, f.hub.Addr, f.hubArgs...)
}

// zp runs zp as the fleet client.
func (f *testFleet) zp(args ...string) result {
	f.t.Helper()
	return f.zpIn(nil, args...)
}

// zpIn runs zp as the fleet client with stdin.
func (f *testFleet) zpIn(stdin io.Reader, args ...string) result {
	f.t.Helper()
	return run(f.t, stdin, []string{"ZP_CONFIG=" + f.home}, "zp", append([]string{"--accept-new"}, args...)...)
}

// textInput is n octets of random lowercase hex in lines of 64.
func textInput(t *testing.T, n int) []byte {
	t.Helper()
	raw := make([]byte, n/2)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	b := []byte(hex.EncodeToString(raw))
	for i := 64; i < len(b); i += 65 {
		b[i] = '\n'
	}
	b[len(b)-1] = '\n'
	return b
}

type listedAgent struct {
	Name, Address, State, Software, Fingerprint, Metrics string
	Labels                                               map[string]string
}

func (f *testFleet) list() map[string]listedAgent {
	f.t.Helper()
	r := f.zp("fleet", "--json", f.hub.Addr)
	if r.Code != 0 {
		f.t.Fatalf("zp fleet --json: %+v", r)
	}
	var l []listedAgent
	if err := json.Unmarshal([]byte(r.Stdout), &l); err != nil {
		f.t.Fatalf("zp fleet --json: %v\n%s", err, r.Stdout)
	}
	m := map[string]listedAgent{}
	for _, a := range l {
		m[a.Name] = a
	}
	return m
}

// waitStates polls the listing until every named agent is in state; it
// returns how long that took.
func (f *testFleet) waitStates(within time.Duration, state string, names ...string) time.Duration {
	f.t.Helper()
	start := time.Now()
	eventually(f.t, within, fmt.Sprintf("%v %s", names, state), func() bool {
		l := f.list()
		for _, n := range names {
			if l[n].State != state {
				return false
			}
		}
		return true
	})
	return time.Since(start)
}

// agentNameCmd is a shell snippet that finds the name of the agent that
// runs it: its parent is that zpd, whose command line has --name NAME.
const agentNameCmd = `name=$(tr '\0' '\n' </proc/$PPID/cmdline | grep -A1 -x -- --name | tail -1)`

// prefixed returns NAME -> lines of output prefixed "NAME: ".
func prefixed(out string) map[string][]string {
	m := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if n, rest, ok := strings.Cut(l, ": "); ok {
			m[n] = append(m[n], rest)
		}
	}
	return m
}

func TestFleetExec(t *testing.T) {
	names := []string{"web1", "web2", "db1"}
	f := newTestFleet(t, names, "--log-level", "debug", "--metrics", "127.0.0.1:0")
	for _, n := range names {
		f.startAgent(n, "--label", "role="+n[:len(n)-1], "--metrics", "127.0.0.1:0")
	}
	f.waitStates(15*time.Second, "up", names...)

	t.Run("list", func(t *testing.T) {
		r := f.zp("fleet", f.hub.Addr)
		lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
		if r.Code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "db1 ") ||
			!strings.Contains(lines[1], "role=db") || !strings.HasSuffix(lines[3], " up") {
			t.Fatalf("zp fleet: %+v", r)
		}
		l := f.list()
		if a := l["web2"]; !strings.HasPrefix(a.Address, "127.0.0.1:") || a.Labels["role"] != "web" || !strings.HasPrefix(a.Software, "zpd/") ||
			!strings.HasPrefix(a.Metrics, "127.0.0.1:") || !strings.HasPrefix(a.Fingerprint, "SHA256:") {
			t.Fatalf("web2: %+v", a)
		}
		r = f.zp("fleet", "--prometheus-sd", f.hub.Addr)
		var sd []struct {
			Targets []string
			Labels  map[string]string
		}
		if err := json.Unmarshal([]byte(r.Stdout), &sd); err != nil || len(sd) != 4 || sd[0].Labels["zp_role"] != "hub" ||
			sd[2].Labels["zp_agent"] != "web1" || sd[2].Labels["role"] != "web" || sd[2].Targets[0] != l["web1"].Metrics {
			t.Fatalf("--prometheus-sd: %v %+v", err, r)
		}
	})

	t.Run("prefixed", func(t *testing.T) {
		r := f.zp("--fleet", f.hub.Addr, "sh", "-c", agentNameCmd+`; echo "I am $name"; echo "err $name" >&2; printf partial`)
		out, errs := prefixed(r.Stdout), prefixed(r.Stderr)
		for _, n := range names {
			if strings.Join(out[n], "|") != "I am "+n+"|partial" || strings.Join(errs[n], "|") != "err "+n {
				t.Errorf("%s: stdout %q stderr %q", n, out[n], errs[n])
			}
		}
		if r.Code != 0 || !strings.Contains(r.Stderr, "zp: 3 ok\n") {
			t.Fatalf("%+v", r)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		r := f.zp("--fleet", f.hub.Addr, "sh", "-c", agentNameCmd+`; case $name in web2) exit 3;; db1) exit 1;; esac`)
		if r.Code != 3 || !strings.Contains(r.Stderr, "zp: 1 ok, 2 failed: db1 (exit 1), web2 (exit 3)") {
			t.Fatalf("%+v", r)
		}
		r = f.zp("--fleet", f.hub.Addr, "--label", "role=db", "no-such-command-zp")
		if r.Code != 127 || !strings.Contains(r.Stderr, "db1 (exit 127)") || strings.Contains(r.Stderr, "web") {
			t.Fatalf("selected by label: %+v", r)
		}
		// A remote command named like one of zp's subcommands is still remote.
		r = f.zp("--fleet", f.hub.Addr, "--hosts", "db1", "version")
		if r.Code != 127 || r.Stdout != "" || !strings.Contains(r.Stderr, "db1 (exit 127)") {
			t.Fatalf("zp --fleet HUB version: %+v", r)
		}
		r = f.zp("--fleet", f.hub.Addr, "--hosts", "nomatch*", "true")
		if r.Code != 255 || !strings.Contains(r.Stderr, "no agent of "+f.hub.Addr+" matches --hosts nomatch*") {
			t.Fatalf("nothing selected: %+v", r)
		}
	})

	t.Run("group and json", func(t *testing.T) {
		r := f.zp("--fleet", f.hub.Addr, "--group", "sh", "-c", agentNameCmd+`; echo same; case $name in db*) echo different;; esac`)
		if r.Code != 0 || !strings.Contains(r.Stdout, "web1,web2\n----------------\nsame\n") ||
			!strings.Contains(r.Stdout, "\ndb1\n----------------\nsame\ndifferent\n") {
			t.Fatalf("--group: %+v", r)
		}
		r = f.zp("--fleet", f.hub.Addr, "--json", "--hosts", "web*", "sh", "-c", `printf 'a\377b'; echo e >&2; exit 2`)
		var hosts []struct {
			Host      string  `json:"host"`
			Stderr    string  `json:"stderr"`
			StdoutB64 string  `json:"stdout_base64"`
			ExitCode  *int    `json:"exit_code"`
			Duration  float64 `json:"duration_seconds"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &hosts); err != nil || r.Code != 2 || len(hosts) != 2 || hosts[0].Host != "web1" ||
			hosts[0].StdoutB64 != "Yf9i" || hosts[0].Stderr != "e\n" || hosts[0].ExitCode == nil || *hosts[0].ExitCode != 2 || hosts[0].Duration <= 0 {
			t.Fatalf("--json: %v %+v", err, r)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		// Published once, read whole by every command; -n gives /dev/null.
		in := textInput(t, 3<<20)
		sum := sha256.Sum256(in)
		want := hex.EncodeToString(sum[:]) + "  -"
		r := f.zpIn(bytes.NewReader(in), "--fleet", f.hub.Addr, "sha256sum")
		out := prefixed(r.Stdout)
		for _, n := range names {
			if strings.Join(out[n], "|") != want {
				t.Errorf("%s: %q, want %q", n, out[n], want)
			}
		}
		if r.Code != 0 {
			t.Fatalf("%+v", r)
		}
		r = f.zpIn(bytes.NewReader(in), "-n", "--fleet", f.hub.Addr, "wc", "-c")
		for _, n := range names {
			if strings.Join(prefixed(r.Stdout)[n], "|") != "0" {
				t.Errorf("-n: %s: %q", n, r.Stdout)
			}
		}
		// An empty stdin (a pipe, not /dev/null) is published too: EOF at once.
		r = f.zpIn(strings.NewReader(""), "--fleet", f.hub.Addr, "wc", "-c")
		for _, n := range names {
			if strings.Join(prefixed(r.Stdout)[n], "|") != "0" || r.Code != 0 {
				t.Errorf("empty stdin: %s: %+v", n, r)
			}
		}
		r = f.zp("--fleet", f.hub.Addr, "--stdin-file", "/etc/hostname", "true")
		if r.Code != 255 || !strings.Contains(r.Stderr, "--stdin-file does not go with --fleet") {
			t.Errorf("--stdin-file: %+v", r)
		}
		// A command that does not read its stdin ends all the same.
		r = f.zpIn(bytes.NewReader(in), "--fleet", f.hub.Addr, "--hosts", "web*", "true")
		if r.Code != 0 || !strings.Contains(r.Stderr, "zp: 2 ok") {
			t.Fatalf("true: %+v", r)
		}
		if strings.Contains(f.hub.Log(), string(in[:64])) {
			t.Fatal("the hub logged the input")
		}
		// The hub deleted the publications (its state dir keeps nothing).
		eventually(t, 5*time.Second, "publications deleted", func() bool {
			m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(f.hub.Log())
			return m != nil && metric(t, m[1], `zp_fleet_publications`) == 0 && metric(t, m[1], `zp_fleet_published_bytes_total`) > 3<<20
		})
	})

	t.Run("no-op latency", func(t *testing.T) {
		var fleet, direct []string
		for range 3 {
			r := f.zp("-q", "--fleet", f.hub.Addr, "true")
			if r.Code != 0 {
				t.Fatalf("%+v", r)
			}
			fleet = append(fleet, r.Elapsed.Round(time.Millisecond).String())
			r = f.zp("-q", f.agents["web1"].Addr, "true")
			if r.Code != 0 {
				t.Fatalf("%+v", r)
			}
			direct = append(direct, r.Elapsed.Round(time.Millisecond).String())
		}
		t.Logf("zp --fleet (3 agents) true: %v; zp AGENT true (direct): %v", fleet, direct)
	})

	t.Run("hub sees no plaintext", func(t *testing.T) {
		marker := "MARKER-7d2c1f"
		r := f.zp("--fleet", f.hub.Addr, "sh", "-c", "echo "+marker+"-out", marker+"-argv")
		if r.Code != 0 || len(prefixed(r.Stdout)) != 3 {
			t.Fatalf("%+v", r)
		}
		if strings.Contains(f.hub.Log(), marker) {
			t.Fatalf("the hub logged the marker:\n%s", f.hub.Log())
		}
		// The hub relayed the sessions' octets without reading them.
		m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(f.hub.Log())
		if m == nil || metric(t, m[1], `zp_fleet_relayed_bytes_total{direction="to_agent"}`) == 0 ||
			metric(t, m[1], `zp_fleet_agents{state="up"}`) != 3 {
			t.Fatalf("hub metrics: %v", m)
		}
	})
}

// TestFleetFailures: agents that die, stop, restart; a hub that restarts;
// who may join and who may use the fleet.
func TestFleetFailures(t *testing.T) {
	names := []string{"web1", "web2", "db1"}
	f := newTestFleet(t, append(names, "dup", "restricted"))
	for _, n := range names {
		f.startAgent(n)
	}
	f.waitStates(15*time.Second, "up", names...)

	t.Run("agent killed mid-command", func(t *testing.T) {
		cmd := exec.Command(bin("zp"), "--accept-new", "--fleet", f.hub.Addr, "sh", "-c", "echo started; sleep 2; echo done")
		cmd.Env = append(os.Environ(), "ZP_CONFIG="+f.home)
		out, _ := cmd.StdoutPipe()
		var errb syncBuffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		sc := bufio.NewScanner(out)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "web2: started" {
				f.agents["web2"].cmd.Process.Kill()
			}
		}
		code := waitExit(t, cmd, 30*time.Second)
		sort.Strings(lines)
		if code != 255 || strings.Join(lines, "|") != "db1: done|db1: started|web1: done|web1: started|web2: started" ||
			!strings.Contains(errb.String(), "zp: 2 ok, 1 failed: web2 (unreachable)") {
			t.Fatalf("exit %d, stdout %q, stderr %s", code, lines, errb.String())
		}
	})

	t.Run("restarted agent rejoins", func(t *testing.T) {
		f.agents["web2"].Stop()
		f.startAgent("web2")
		f.waitStates(15*time.Second, "up", "web2")
		if r := f.zp("--fleet", f.hub.Addr, "--hosts", "web2", "true"); r.Code != 0 {
			t.Fatalf("%+v", r)
		}
	})

	t.Run("stopped agent is lost, then back", func(t *testing.T) {
		p := f.agents["db1"].cmd.Process
		stoppedAt := time.Now()
		p.Signal(syscall.SIGSTOP)
		defer p.Signal(syscall.SIGCONT)
		took := f.waitStates(10*time.Second, "lost", "db1")
		// When the hub decided, from its log (polling with zp adds its own time).
		lostRE := regexp.MustCompile(`time=(\S+) level=WARN msg="agent lost: silent for three heartbeats" agent=db1`)
		m := lostRE.FindStringSubmatch(f.hub.Log())
		if m == nil {
			t.Fatalf("no 'agent lost' in the hub's log:\n%s", f.hub.Log())
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("a stopped agent was lost after %v (listed so after %v)", at.Sub(stoppedAt).Round(10*time.Millisecond), took.Round(10*time.Millisecond))
		if d := at.Sub(stoppedAt); d > 4*time.Second {
			t.Errorf("lost after %v: want three heartbeats (3s)", d)
		}
		r := f.zp("--fleet", f.hub.Addr, "true")
		// Reported at once: zp does not wait for a lost agent.
		if r.Code != 255 || !strings.Contains(r.Stderr, "2 ok, 1 failed: db1 (unreachable)") || (r.Elapsed > 3*time.Second && os.Getenv("ZP_E2E_RACE") == "") {
			t.Fatalf("with a lost agent: %+v", r)
		}
		p.Signal(syscall.SIGCONT)
		f.waitStates(15*time.Second, "up", "db1")
	})

	t.Run("hub restart", func(t *testing.T) {
		f.restartHub()
		took := f.waitStates(20*time.Second, "up", names...)
		t.Logf("every agent rejoined %v after the hub restarted", took.Round(10*time.Millisecond))
		if r := f.zp("--fleet", f.hub.Addr, "true"); r.Code != 0 {
			t.Fatalf("%+v", r)
		}
	})

	t.Run("duplicate name", func(t *testing.T) {
		// "dup"'s key is admitted; it asks for the name web1, which is up.
		d := startZPDAt(t, f.agentState["dup"], "127.0.0.1:0", "--join", f.hub.Addr, "--name", "web1")
		eventually(t, 10*time.Second, "the refusal in the agent's log", func() bool {
			return strings.Contains(d.Log(), "name web1 is taken by an agent that is up, key SHA256:") && strings.Contains(d.Log(), "level=ERROR")
		})
		d.Stop()
		if l := f.list(); len(l) != 3 || l["web1"].State != "up" {
			t.Fatalf("%+v", l)
		}
	})

	t.Run("agent key not admitted", func(t *testing.T) {
		d := startZPDAt(t, t.TempDir(), "127.0.0.1:0", "--join", f.hub.Addr, "--name", "intruder")
		eventually(t, 10*time.Second, "the refusal in the agent's log", func() bool {
			return strings.Contains(d.Log(), "the hub refused this agent's key") && strings.Contains(d.Log(), "--fleet-keys")
		})
		d.Stop()
		if _, ok := f.list()["intruder"]; ok {
			t.Fatal("an agent with an unknown key was listed")
		}
	})

	t.Run("hub key changed", func(t *testing.T) {
		// An agent that pinned another key for this hub refuses it loudly.
		st := f.agentState["dup"]
		other := keygen(t, t.TempDir())
		os.WriteFile(filepath.Join(st, "hub_known_hosts"), []byte("tcp://"+f.hub.Addr+" "+other+" added 2026-01-01\n"), 0o600)
		d := startZPDAt(t, st, "127.0.0.1:0", "--join", f.hub.Addr, "--name", "dup")
		eventually(t, 10*time.Second, "the refusal in the agent's log", func() bool {
			return strings.Contains(d.Log(), "HUB KEY CHANGED") && strings.Contains(d.Log(), "level=ERROR")
		})
		d.Stop()
		os.Remove(filepath.Join(st, "hub_known_hosts"))
		if _, ok := f.list()["dup"]; ok {
			t.Fatal("the agent joined a hub whose key changed")
		}
	})

	t.Run("client not in --fleet-clients", func(t *testing.T) {
		// A key the hub authorises for its own user, but not a fleet client.
		other := t.TempDir()
		key := keygen(t, other)
		ak := filepath.Join(t.TempDir(), "ak")
		os.WriteFile(ak, []byte(key+"\n"), 0o600)
		f.hubArgs = append(f.hubArgs, "--authorized-keys", ak)
		f.restartHub()
		f.waitStates(20*time.Second, "up", names...)
		for _, args := range [][]string{{"fleet", f.hub.Addr}, {"--fleet", f.hub.Addr, "true"}} {
			r := run(t, nil, []string{"ZP_CONFIG=" + other}, "zp", append([]string{"--accept-new"}, args...)...)
			if r.Code != 255 || !strings.Contains(r.Stderr, "is not a fleet client of this hub: add your key") {
				t.Fatalf("%v: %+v", args, r)
			}
		}
	})

	t.Run("client unknown to one agent", func(t *testing.T) {
		// A second fleet client that only web1 authorises.
		other := t.TempDir()
		key := keygen(t, other)
		clients := filepath.Join(f.dir, "fleet_clients")
		b, _ := os.ReadFile(clients)
		os.WriteFile(clients, append(b, key+"\n"...), 0o600)
		ak := filepath.Join(t.TempDir(), "ak")
		os.WriteFile(ak, []byte(f.clientKey+"\n"+key+"\n"), 0o600)
		f.agents["web1"].Stop()
		f.agentArgs["web1"] = []string{"--authorized-keys", ak} // the later flag wins
		f.startAgent("web1")
		f.waitStates(15*time.Second, "up", "web1")
		var r result
		eventually(t, 5*time.Second, "the hub re-reading --fleet-clients", func() bool {
			r = run(t, nil, []string{"ZP_CONFIG=" + other}, "zp", "--accept-new", "--fleet", f.hub.Addr, "echo", "hi")
			return !strings.Contains(r.Stderr, "--fleet-clients")
		})
		if r.Code != 255 || r.Stdout != "web1: hi\n" || !strings.Contains(r.Stderr, "1 ok, 2 failed: db1 (unauthorised), web2 (unauthorised)") {
			t.Fatalf("%+v", r)
		}
	})

	t.Run("--fleet-users", func(t *testing.T) {
		f.startAgent("restricted", "--fleet-users", "daemon")
		f.waitStates(15*time.Second, "up", "restricted")
		r := f.zp("--fleet", f.hub.Addr, "--hosts", "restricted,web2", "-l", currentUser(t), "true")
		if r.Code != 255 || !strings.Contains(r.Stderr, "--fleet-users") || !strings.Contains(r.Stderr, "1 ok, 1 failed: restricted (unauthorised)") {
			t.Fatalf("%+v", r)
		}
	})
}

// TestFleet50 runs a command with 1 MiB of output on 50 agents (each a
// zpd process) through one hub, then again with one agent stopped: the
// others finish as fast, the stopped one is reported after the timeout,
// and the hub's memory stays bounded.
func TestFleet50(t *testing.T) {
	if testing.Short() {
		t.Skip("50 zpd processes")
	}
	var names []string
	for i := range 50 {
		names = append(names, fmt.Sprintf("n%02d", i))
	}
	f := newTestFleet(t, names, "--metrics", "127.0.0.1:0")
	for _, n := range names {
		f.startAgent(n)
	}
	f.waitStates(60*time.Second, "up", names...)

	r := f.zp("--fleet", f.hub.Addr, "true")
	if r.Code != 0 || !strings.Contains(r.Stderr, "zp: 50 ok") {
		t.Fatalf("no-op: %+v", r)
	}
	noop := r.Elapsed
	r = f.zp("--fleet", f.hub.Addr, "true")
	t.Logf("no-op on 50 agents: %v, %v", noop.Round(time.Millisecond), r.Elapsed.Round(time.Millisecond))

	// 1 MiB of stdin to every agent, 1 MiB of output back from each:
	// the input is published once, each command copies it out.
	in := textInput(t, 1<<20)
	sum := sha256.Sum256(in)
	sumLine := hex.EncodeToString(sum[:])
	echo := `tee /dev/stderr | sha256sum` // the input back on stderr, its digest on stdout
	type hostJSON struct {
		Host     string  `json:"host"`
		Stdout   string  `json:"stdout"`
		Stderr   string  `json:"stderr"`
		Error    string  `json:"error"`
		Duration float64 `json:"duration_seconds"`
	}
	check := func(r result, skip string) (slowest float64, byHost map[string]hostJSON) {
		t.Helper()
		var hosts []hostJSON
		if err := json.Unmarshal([]byte(r.Stdout), &hosts); err != nil || len(hosts) != 50 {
			t.Fatalf("--json: %v, %d hosts; stderr %s", err, len(hosts), r.Stderr)
		}
		byHost = map[string]hostJSON{}
		for _, h := range hosts {
			byHost[h.Host] = h
			if h.Host == skip {
				continue
			}
			if h.Stderr != string(in) || h.Stdout != sumLine+"  -\n" || h.Error != "" {
				t.Errorf("%s: %d octets of %d back, stdout %q, error %q", h.Host, len(h.Stderr), len(in), h.Stdout, h.Error)
			}
			slowest = max(slowest, h.Duration)
		}
		return slowest, byHost
	}
	r = f.zpIn(bytes.NewReader(in), "--fleet", f.hub.Addr, "--json", "sh", "-c", echo)
	if r.Code != 0 {
		t.Fatalf("1 MiB each way: exit %d %s", r.Code, r.Stderr)
	}
	check(r, "")
	allUp := r.Elapsed
	t.Logf("1 MiB of stdin to each of 50 agents and 1 MiB back from each: %v", allUp.Round(time.Millisecond))

	// A command that reads its stdin 3 s late slows nobody else: the
	// publication waits on the hub, and its agent fetches it then.
	late := agentNameCmd + `; [ "$name" = n05 ] && sleep 3; ` + echo
	r = f.zpIn(bytes.NewReader(in), "--fleet", f.hub.Addr, "--json", "sh", "-c", late)
	slowest, byHost := check(r, "n05")
	if h := byHost["n05"]; r.Code != 0 || h.Stderr != string(in) || h.Duration < 3 {
		t.Fatalf("the late reader: exit %d, %d octets, %.2fs; %s", r.Code, len(h.Stderr), h.Duration, r.Stderr)
	}
	t.Logf("with n05 reading 3 s late: zp took %v; the slowest of the other 49 took %.2fs", r.Elapsed.Round(time.Millisecond), slowest)
	if limit := max(1.5*allUp.Seconds(), allUp.Seconds()+2); slowest > limit {
		t.Errorf("a late reader slowed the others: the slowest took %.2fs, all 50 took %v", slowest, allUp)
	}

	// One agent stopped just before: still listed up, it answers nothing.
	stopped := f.agents["n17"].cmd.Process
	stopped.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { stopped.Signal(syscall.SIGCONT) })
	r = f.zpIn(bytes.NewReader(in), "--fleet", f.hub.Addr, "--json", "sh", "-c", echo)
	slowest, byHost = check(r, "n17")
	if h := byHost["n17"]; h.Error == "" || h.Duration < 2 {
		t.Errorf("the stopped agent: %+v", h)
	}
	t.Logf("with n17 stopped: zp took %v; the slowest of the other 49 took %.2fs", r.Elapsed.Round(time.Millisecond), slowest)
	if r.Code != 255 || !strings.Contains(r.Stderr, "49 ok, 1 failed: n17 (unreachable)") {
		t.Fatalf("exit %d, stderr %s", r.Code, r.Stderr)
	}
	if limit := max(1.5*allUp.Seconds(), allUp.Seconds()+2); slowest > limit {
		t.Errorf("the stopped agent slowed the others: the slowest took %.2fs, all 50 up took %v", slowest, allUp)
	}
	if m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(f.hub.Log()); m != nil {
		t.Logf("stdin published to the hub: %.0f octets; fetched back by agents: %.0f octets (the rest arrived on the XPUB)",
			metric(t, m[1], "zp_fleet_published_bytes_total"), metric(t, m[1], "zp_fleet_publication_fetched_bytes_total"))
	}
	kb, err := rssKB(f.hub.PID())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hub peak RSS %d MiB", kb>>10)
	if kb > 150<<10 && os.Getenv("ZP_E2E_RACE") == "" {
		t.Errorf("hub peak RSS %d KiB, want < 150 MiB", kb)
	}
}

// TestFleetJobs: zp --fleet --async starts a job on every agent and
// records one fleet job on the hub; zp jobs, zp job status|follow|wait|kill
// fan out to the agents; another key gets 404; records expire with
// --job-retention.
func TestFleetJobs(t *testing.T) {
	names := []string{"web1", "web2", "db1"}
	f := newTestFleet(t, names, "--job-retention", "1h")
	for _, n := range names {
		f.startAgent(n)
	}
	f.waitStates(15*time.Second, "up", names...)

	// A job's parent is zpd's job shim, whose stdout is the job's log
	// under the agent's state directory (state-NAME).
	jobAgentNameCmd := `name=$(readlink /proc/$PPID/fd/1 | sed 's#.*/state-\([^/]*\)/.*#\1#')`
	r := f.zp("--fleet", f.hub.Addr, "--async", "sh", "-c", jobAgentNameCmd+`; echo "start $name"; sleep 1; echo "err $name" >&2; echo "done $name"; case $name in db1) exit 3;; esac`)
	id := strings.TrimSpace(r.Stdout)
	if r.Code != 0 || !regexp.MustCompile(`^F-[0-9A-Za-z]{20}$`).MatchString(id) || !strings.Contains(r.Stderr, "zp: 3 ok") {
		t.Fatalf("--async: %+v", r)
	}
	r = f.zp("jobs", f.hub.Addr)
	if r.Code != 0 || !strings.Contains(r.Stdout, id+"  fleet") || !strings.Contains(r.Stdout, "3 hosts") || !strings.Contains(r.Stdout, "sh -c") {
		t.Fatalf("zp jobs: %+v", r)
	}
	r = f.zp("job", "follow", f.hub.Addr, id)
	out, errs := prefixed(r.Stdout), prefixed(r.Stderr)
	for _, n := range names {
		if strings.Join(out[n], "|") != "start "+n+"|done "+n || strings.Join(errs[n], "|") != "err "+n {
			t.Errorf("follow %s: stdout %q stderr %q", n, out[n], errs[n])
		}
	}
	if r.Code != 3 || !strings.Contains(r.Stderr, "zp: 2 ok, 1 failed: db1 (exit 3)") {
		t.Fatalf("follow: %+v", r)
	}
	r = f.zp("job", "status", f.hub.Addr, id)
	if r.Code != 0 || !regexp.MustCompile(`(?m)^db1\s+\S+\s+exited\s+exit 3$`).MatchString(r.Stdout) ||
		!regexp.MustCompile(`(?m)^web2\s+\S+\s+exited\s+exit 0$`).MatchString(r.Stdout) {
		t.Fatalf("status: %+v", r)
	}
	r = f.zp("job", "wait", f.hub.Addr, id)
	if r.Code != 3 || r.Stdout != "" {
		t.Fatalf("wait: %+v", r)
	}

	// Kill: a long job on web*, killed everywhere at once.
	r = f.zp("--fleet", f.hub.Addr, "--hosts", "web*", "--async", "sleep", "300")
	long := strings.TrimSpace(r.Stdout)
	if r.Code != 0 || !client.IsFleetJobID(long) {
		t.Fatalf("--async sleep: %+v", r)
	}
	if r = f.zp("job", "kill", f.hub.Addr, long); r.Code != 0 {
		t.Fatalf("kill: %+v", r)
	}
	r = f.zp("job", "wait", f.hub.Addr, long)
	if r.Code != 143 || !strings.Contains(r.Stderr, "web1 (exit 143)") || !strings.Contains(r.Stderr, "web2 (exit 143)") {
		t.Fatalf("wait after kill: %+v", r)
	}

	// Records belong to the key that made them: another fleet client,
	// authorised on every agent too, sees none of them.
	other := t.TempDir()
	otherKey := keygen(t, other)
	clients := filepath.Join(f.dir, "fleet_clients")
	b, _ := os.ReadFile(clients)
	os.WriteFile(clients, append(b, []byte(otherKey+"\n")...), 0o600)
	ak, _ := os.ReadFile(f.agentAK)
	os.WriteFile(f.agentAK, append(ak, []byte(otherKey+"\n")...), 0o600)
	zpOther := func(args ...string) result {
		return run(t, nil, []string{"ZP_CONFIG=" + other}, "zp", append([]string{"--accept-new"}, args...)...)
	}
	eventually(t, 10*time.Second, "the other key admitted", func() bool {
		return zpOther("fleet", f.hub.Addr).Code == 0
	})
	for _, args := range [][]string{{"status"}, {"follow"}, {"kill"}, {"rm"}} {
		r = zpOther(append(append([]string{"job"}, args...), f.hub.Addr, id)...)
		if r.Code != 2 || !strings.Contains(r.Stderr, "no fleet job "+id) {
			t.Errorf("job %s by another key: %+v", args[0], r)
		}
	}
	if r = zpOther("jobs", f.hub.Addr); r.Code != 0 || strings.Contains(r.Stdout, "F-") {
		t.Errorf("jobs by another key: %+v", r)
	}

	// The record survives a hub restart, and a follower reconnects
	// through the new hub and continues where it stopped.
	r = f.zp("--fleet", f.hub.Addr, "--async", "sh", "-c", `echo before; sleep 4; echo after`)
	slow := strings.TrimSpace(r.Stdout)
	if r.Code != 0 {
		t.Fatalf("--async: %+v", r)
	}
	follow := exec.Command(bin("zp"), "job", "follow", f.hub.Addr, slow)
	follow.Env = append(os.Environ(), "ZP_CONFIG="+f.home)
	fout, ferr := &syncBuffer{}, &syncBuffer{}
	follow.Stdout, follow.Stderr = fout, ferr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- follow.Wait() }()
	t.Cleanup(func() { follow.Process.Kill() })
	eventually(t, 10*time.Second, "the follower's first lines", func() bool {
		return strings.Count(fout.String(), "before") == 3
	})
	f.restartHub()
	f.waitStates(30*time.Second, "up", names...)
	if r = f.zp("jobs", f.hub.Addr); !strings.Contains(r.Stdout, id) || !strings.Contains(r.Stdout, long) {
		t.Fatalf("after a hub restart: %+v", r)
	}
	select {
	case err := <-done:
		out := prefixed(fout.String())
		for _, n := range names {
			if strings.Join(out[n], "|") != "before|after" {
				t.Errorf("%s: %q", n, out[n])
			}
		}
		if err != nil || !strings.Contains(ferr.String(), "following again") {
			t.Fatalf("follow across a hub restart: %v\nstdout %s\nstderr %s", err, fout.String(), ferr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the follower did not finish: stdout %s\nstderr %s", fout.String(), ferr.String())
	}
}

// A hub forgets fleet job records --job-retention after they were made.
func TestFleetJobsRetention(t *testing.T) {
	f := newTestFleet(t, []string{"a1"}, "--job-retention", "2s")
	f.startAgent("a1")
	f.waitStates(15*time.Second, "up", "a1")
	r := f.zp("--fleet", f.hub.Addr, "--async", "true")
	id := strings.TrimSpace(r.Stdout)
	if r.Code != 0 || !client.IsFleetJobID(id) {
		t.Fatalf("%+v", r)
	}
	if r = f.zp("job", "status", f.hub.Addr, id); r.Code != 0 {
		t.Fatalf("status: %+v", r)
	}
	eventually(t, 10*time.Second, "the record expired", func() bool {
		return f.zp("job", "status", f.hub.Addr, id).Code == 2
	})
	ents, _ := os.ReadDir(filepath.Join(f.hub.State, "fleetjobs"))
	if len(ents) != 0 {
		t.Fatalf("files left: %v", ents)
	}
}
