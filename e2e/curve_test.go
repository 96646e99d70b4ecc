package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestKeygen(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	env := []string{"ZP_CONFIG=" + home}
	r := run(t, nil, env, "zp", "keygen")
	if r.Code != 0 || len(strings.TrimSpace(r.Stdout)) != 40 || !strings.Contains(r.Stderr, "SHA256:") {
		t.Fatalf("%+v", r)
	}
	st, err := os.Stat(filepath.Join(home, "id_curve"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file: %v %v", st.Mode(), err)
	}
	pub, _ := os.ReadFile(filepath.Join(home, "id_curve.pub"))
	if !strings.Contains(string(pub), strings.TrimSpace(r.Stdout)) || strings.Contains(string(pub), "secret") {
		t.Fatalf("public key file: %s", pub)
	}
	before, _ := os.ReadFile(filepath.Join(home, "id_curve"))
	if r2 := run(t, nil, env, "zp", "keygen"); r2.Code != 255 || !strings.Contains(r2.Stderr, "--force") {
		t.Fatalf("overwrite without --force: %+v", r2)
	}
	if after, _ := os.ReadFile(filepath.Join(home, "id_curve")); string(after) != string(before) {
		t.Fatal("key changed without --force")
	}
	if r3 := run(t, nil, env, "zp", "keygen", "--force"); r3.Code != 0 || r3.Stdout == r.Stdout {
		t.Fatalf("--force: %+v", r3)
	}
	// A secret key readable by others is refused, like ssh does.
	os.Chmod(filepath.Join(home, "id_curve"), 0o644)
	d := startZPD(t)
	r4 := run(t, nil, env, "zp", "--accept-new", d.Addr, "true")
	if r4.Code != 255 || !strings.Contains(r4.Stderr, "id_curve") {
		t.Fatalf("loose key permissions: %+v", r4)
	}
}

func TestServerKey(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	st, err := os.Stat(filepath.Join(d.State, "server_curve"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("server secret key: %v %v", st, err)
	}
	r := run(t, nil, nil, "zpd", "--print-key", "--state", d.State)
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	if r.Code != 0 || len(lines) != 2 || len(lines[0]) != 40 || !strings.HasPrefix(lines[1], "SHA256:") {
		t.Fatalf("--print-key: %+v", r)
	}
	// The key zp pins is the one --print-key shows.
	if r := d.zp(t, nil, "true"); r.Code != 0 {
		t.Fatalf("%+v", r)
	}
	kh, _ := os.ReadFile(filepath.Join(d.Home, "known_hosts"))
	if !strings.Contains(string(kh), d.Addr+" "+lines[0]) {
		t.Fatalf("known_hosts %q does not pin %s", kh, lines[0])
	}
}

func TestHostKeyPinning(t *testing.T) {
	t.Parallel()
	d := startZPD(t)
	env := d.env()
	// First contact without a terminal and without --accept-new: refused,
	// with the fingerprint to check.
	r := run(t, nil, env, "zp", d.Addr, "true")
	if r.Code != 255 || !strings.Contains(r.Stderr, "SHA256:") || !strings.Contains(r.Stderr, "--accept-new") {
		t.Fatalf("unknown host: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(d.Home, "known_hosts")); err == nil {
		t.Fatal("pinned without consent")
	}
	r = run(t, nil, env, "zp", "--accept-new", d.Addr, "echo", "pinned")
	if r.Code != 0 || r.Stdout != "pinned\n" || !strings.Contains(r.Stderr, "permanently added") {
		t.Fatalf("--accept-new: %+v", r)
	}
	// From now on no flag is needed.
	if r := run(t, nil, env, "zp", d.Addr, "true"); r.Code != 0 || r.Stderr != "" {
		t.Fatalf("pinned host: %+v", r)
	}
	// Another zpd with another key on the same address is refused loudly,
	// even with --accept-new.
	addr := d.Addr
	d.Stop()
	other := startZPDWith(t, "--listen", addr, "--authorized-keys", filepath.Join(d.Home, "authorized_for_zpd"))
	_ = other
	r = run(t, nil, env, "zp", "--accept-new", addr, "echo", "must not run")
	if r.Code != 255 || r.Stdout != "" {
		t.Fatalf("changed key: %+v", r)
	}
	for _, want := range []string{"REMOTE HOST IDENTIFICATION HAS CHANGED", "pinned:", "announced:", "known_hosts", "sed -i"} {
		if !strings.Contains(r.Stderr, want) {
			t.Fatalf("changed-key message lacks %q:\n%s", want, r.Stderr)
		}
	}
}

// metricsZPD starts a CURVE zpd with a metrics endpoint and returns it
// with the metrics URL.
func metricsZPD(t *testing.T, args ...string) (*zpd, string) {
	d := startZPD(t, append([]string{"--metrics", "127.0.0.1:0"}, args...)...)
	m := regexp.MustCompile(`msg=metrics addr=(\S+)`).FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("no metrics address in log:\n%s", d.Log())
	}
	return d, m[1]
}

// metric returns the value of a sample, 0 when absent.
func metric(t *testing.T, url, sample string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, sample+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, sample)), 64)
			return v
		}
	}
	return 0
}

func TestUnknownClientKey(t *testing.T) {
	t.Parallel()
	d, murl := metricsZPD(t)
	stranger := t.TempDir()
	run(t, nil, []string{"ZP_CONFIG=" + stranger}, "zp", "keygen")
	r := run(t, nil, []string{"ZP_CONFIG=" + stranger}, "zp", "--accept-new", d.Addr, "echo", "must not run")
	if r.Code != 255 || r.Stdout != "" || !strings.Contains(r.Stderr, "refused our key") {
		t.Fatalf("%+v", r)
	}
	eventually(t, 5*time.Second, "handshake failure counted", func() bool {
		return metric(t, murl, `zp_handshake_failures_total{reason="unauthorised"}`) >= 1
	})
	if !strings.Contains(d.Log(), "reason=unauthorised") {
		t.Fatalf("refusal not logged with its reason:\n%s", d.Log())
	}
	// The authorised client still works.
	if r := d.zp(t, nil, "true"); r.Code != 0 {
		t.Fatalf("%+v", r)
	}
}

// A peer that stalls mid-handshake is dropped after the timeout and never
// blocks other clients.
func TestStalledHandshakeDropped(t *testing.T) {
	d, murl := metricsZPD(t, "--handshake-timeout", "1s")
	c, err := net.Dial("tcp", d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0}) // half a greeting
	start := time.Now()
	if r := d.zp(t, nil, "echo", "not blocked"); r.Code != 0 || time.Since(start) > 3*time.Second {
		t.Fatalf("%+v after %v", r, time.Since(start))
	}
	eventually(t, 5*time.Second, "stalled handshake dropped", func() bool {
		return metric(t, murl, `zp_handshake_failures_total{reason="timeout"}`) >= 1
	})
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("zpd did not close the stalled connection: %v", err)
	}
}

func TestMechanismMismatch(t *testing.T) {
	t.Parallel()
	secure := startZPD(t)
	r := run(t, nil, secure.env(), "zp", "--insecure", secure.Addr, "true")
	if r.Code != 255 || !strings.Contains(r.Stderr, "security mismatch") {
		t.Fatalf("insecure client, CURVE server: %+v", r)
	}
	insecure := startInsecureZPD(t)
	r = run(t, nil, secure.env(), "zp", "--accept-new", insecure.Addr, "true")
	if r.Code != 255 || !strings.Contains(r.Stderr, "without encryption") {
		t.Fatalf("CURVE client, insecure server: %+v", r)
	}
}

func TestInsecureOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	r := run(t, nil, nil, "zpd", "--insecure", "--listen", "0.0.0.0:0", "--state", t.TempDir())
	if r.Code == 0 || !strings.Contains(r.Stderr, "--insecure-allow-remote") {
		t.Fatalf("%+v", r)
	}
	d := startInsecureZPD(t, "--insecure-allow-remote", "--listen", "0.0.0.0:0")
	_ = d
}

// User switching: a root zpd runs commands as the user the key is
// authorised for; a non-root zpd runs only as itself.
func TestUserSwitching(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: user switching must be tested there")
		}
		t.Skip("needs root to create users and switch to them")
	}
	alice := makeUser(t, "zpalice")
	bob := makeUser(t, "zpbob")
	d := startZPD(t)
	pub := strings.TrimSpace(run(t, nil, d.env(), "zp", "keygen", "--force").Stdout)
	// The new key is authorised for alice only (not in zpd's global file).
	authorize(t, alice, pub)

	r := run(t, nil, d.env(), "zp", "--accept-new", alice.name+"@"+d.Addr, "sh", "-c", `id -un; id -gn; pwd; echo "$HOME $USER $LOGNAME $SHELL"`)
	want := fmt.Sprintf("%[1]s\n%[1]s\n%[2]s\n%[2]s %[1]s %[1]s /bin/sh\n", alice.name, alice.home)
	if r.Code != 0 || r.Stdout != want {
		t.Fatalf("as alice: got %q want %q (%s)", r.Stdout, want, r.Stderr)
	}
	// Supplementary groups come along.
	r = run(t, nil, d.env(), "zp", alice.name+"@"+d.Addr, "id", "-Gn")
	if !strings.Contains(r.Stdout, alice.group) {
		t.Fatalf("groups %q", r.Stdout)
	}
	// Not authorised for bob, nor for root.
	for _, u := range []string{bob.name, "root"} {
		r = run(t, nil, d.env(), "zp", u+"@"+d.Addr, "id", "-un")
		if r.Code != 255 || r.Stdout != "" || !strings.Contains(r.Stderr, "not authorised") {
			t.Fatalf("as %s: %+v", u, r)
		}
	}
	_ = bob
	// A key file that others can write is ignored (sshd's StrictModes).
	os.Chmod(filepath.Join(alice.home, ".config/zp/authorized_keys"), 0o666)
	eventually(t, 10*time.Second, "a world-writable authorized_keys to be ignored", func() bool {
		return run(t, nil, d.env(), "zp", alice.name+"@"+d.Addr, "true").Code == 255
	})
	os.Chmod(filepath.Join(alice.home, ".config/zp/authorized_keys"), 0o600)

	// A zpd running as alice acts only as alice.
	ad := startZPDAs(t, alice, d.Home)
	r = run(t, nil, d.env(), "zp", "--accept-new", alice.name+"@"+ad.Addr, "id", "-un")
	if r.Code != 0 || r.Stdout != alice.name+"\n" {
		t.Fatalf("non-root zpd as itself: %+v", r)
	}
	r = run(t, nil, d.env(), "zp", "root@"+ad.Addr, "id", "-un")
	if r.Code != 255 || !strings.Contains(r.Stderr, "runs as "+alice.name) {
		t.Fatalf("non-root zpd as another user: %+v", r)
	}
}

type testUser struct {
	name     string
	group    string // a supplementary group
	uid, gid int
	home     string
}

// makeUser creates a user named name plus this process's pid (so that two
// runs on one machine never share or delete each other's users; a stale
// home of that name is removed first), with a group of its own (the name
// and "x") as a supplementary group, and removes both at cleanup.
func makeUser(t *testing.T, name string) testUser {
	t.Helper()
	name = fmt.Sprintf("%s%d", name, os.Getpid())
	group := name + "x"
	exec.Command("userdel", "-r", name).Run()
	os.RemoveAll(filepath.Join("/home", name))
	if out, err := exec.Command("groupadd", "-f", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", "-G", group, name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("pkill", "-u", name).Run()
		exec.Command("userdel", "-r", name).Run()
		exec.Command("groupdel", group).Run()
	})
	out, _ := exec.Command("sh", "-c", "id -u "+name+"; id -g "+name+"; getent passwd "+name+" | cut -d: -f6").Output()
	f := strings.Fields(string(out))
	if len(f) != 3 {
		t.Fatalf("user %s: %q", name, out)
	}
	uid, _ := strconv.Atoi(f[0])
	gid, _ := strconv.Atoi(f[1])
	return testUser{name: name, group: group, uid: uid, gid: gid, home: f[2]}
}

// authorize writes key into the user's authorized_keys, owned by them.
func authorize(t *testing.T, u testUser, key string) {
	t.Helper()
	dir := filepath.Join(u.home, ".config", "zp")
	os.MkdirAll(dir, 0o700)
	path := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(path, []byte("# test key\n"+key+" laptop\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(u.home, ".config"), dir, path} {
		os.Chown(p, u.uid, u.gid)
	}
}

// startZPDAs starts a CURVE zpd running as user u.
func startZPDAs(t *testing.T, u testUser, clientHome string) *zpd {
	t.Helper()
	state := filepath.Join(u.home, "zpd-state")
	os.MkdirAll(state, 0o700)
	os.Chown(state, u.uid, u.gid)
	d := &zpd{t: t, State: state, Home: clientHome, log: &syncBuffer{}, done: make(chan struct{}), secure: true}
	d.cmd = exec.Command(bin("zpd"), "--listen", "127.0.0.1:0", "--state", state)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	d.cmd.Env = []string{"HOME=" + u.home, "PATH=/usr/bin:/bin"}
	d.cmd.Dir = u.home
	startAndWait(t, d)
	return d
}

// A libzmq PUB publishes through zpd's XSUB and a libzmq SUB receives it
// from zpd's XPUB, all with CURVE; job topics cannot be injected.
func TestXSubForwarding(t *testing.T) {
	t.Parallel()
	py := "/usr/bin/python3"
	if exec.Command(py, "-c", "import zmq").Run() != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3-zmq missing on CI")
		}
		t.Skip("no python3-zmq")
	}
	d := startZPD(t)
	m := regexp.MustCompile(`xpub=(\S+) xsub=(\S+)`).FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("no xpub/xsub in log:\n%s", d.Log())
	}
	key := strings.Fields(run(t, nil, nil, "zpd", "--print-key", "--state", d.State).Stdout)[0]
	out, err := exec.Command(py, "testdata/xsub.py", "tcp://"+m[2], "tcp://"+m[1], key, filepath.Join(d.Home, "id_curve")).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("SUB got %d messages:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "p/weather|report ") {
			t.Fatalf("unexpected message %q", l)
		}
	}
}

// First contact on a terminal asks, as ssh does; "no" pins nothing.
func TestHostKeyPromptOnTTY(t *testing.T) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skip("no script(1) to give zp a terminal")
	}
	d := startZPD(t)
	runScript := func(answer string) (string, int) {
		pr, pw := io.Pipe()
		go func() {
			time.Sleep(500 * time.Millisecond)
			pw.Write([]byte(answer + "\n"))
			time.Sleep(2 * time.Second)
			pw.Close()
		}()
		cmd := exec.Command(script, "-qec", bin("zp")+" "+d.Addr+" echo via-tty", "/dev/null")
		cmd.Env = append(os.Environ(), d.env()...)
		cmd.Stdin = pr
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	out, code := runScript("no")
	if !strings.Contains(out, "Are you sure you want to continue connecting") || strings.Contains(out, "via-tty\r\n") || code != 255 {
		t.Fatalf("answer no: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(d.Home, "known_hosts")); err == nil {
		t.Fatal("pinned after no")
	}
	out, code = runScript("yes")
	if !strings.Contains(out, "via-tty") || code != 0 {
		t.Fatalf("answer yes: exit %d\n%s", code, out)
	}
	kh, _ := os.ReadFile(filepath.Join(d.Home, "known_hosts"))
	if !strings.Contains(string(kh), d.Addr) {
		t.Fatal("not pinned after yes")
	}
}
