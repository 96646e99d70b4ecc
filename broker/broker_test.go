package broker

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/testutil/leak"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ShimArg {
		os.Exit(RunShim(os.Args[2:]))
	}
	goleak.VerifyTestMain(m, leak.ZMQ4...)
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	noexec := filepath.Join(dir, "data")
	os.WriteFile(noexec, []byte("x"), 0o644)
	cases := []struct {
		argv0, path string
		code        int
	}{
		{"tool", dir, 0},
		{"data", dir, 126},
		{"missing", dir, 127},
		{exe, "", 0},
		{noexec, "", 126},
		{"/no/such", "", 127},
		{"./tool", "", 0}, // relative to the working directory
	}
	for _, c := range cases {
		_, code, _ := lookPath(c.argv0, c.path, dir)
		if code != c.code {
			t.Errorf("%s in %q: code %d, want %d", c.argv0, c.path, code, c.code)
		}
	}
}

func TestSideEndpoint(t *testing.T) {
	for _, c := range []struct{ in, pub, sub string }{
		{"zptcp://127.0.0.1:5750", "zptcp://127.0.0.1:5751", "zptcp://127.0.0.1:5752"},
		{"zptcp://127.0.0.1:0", "zptcp://127.0.0.1:0", "zptcp://127.0.0.1:0"},
		{"zptcp://[::1]:7000", "zptcp://[::1]:7001", "zptcp://[::1]:7002"},
		{"zpipc:///run/zpd.sock", "zpipc:///run/zpd.sock.pub", "zpipc:///run/zpd.sock.sub"},
	} {
		pub, _ := sideEndpoint(c.in, 1)
		sub, _ := sideEndpoint(c.in, 2)
		if pub != c.pub || sub != c.sub {
			t.Errorf("%s: %s %s", c.in, pub, sub)
		}
	}
}

func TestKeyring(t *testing.T) {
	self, err := CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := curve.GenerateKeyPair()
	k2, _ := curve.GenerateKeyPair()
	global := filepath.Join(t.TempDir(), "keys")
	os.WriteFile(global, []byte("# team\n"+k1.Public.String()+" laptop\n"), 0o600)
	ring := &Keyring{Global: global, Self: self}
	if !ring.Known(k1.Public) || ring.Known(k2.Public) {
		t.Fatal("Known")
	}
	if a, err := ring.Authorize(k1.Public[:], self.Name); err != nil || a.Name != self.Name {
		t.Fatalf("authorize: %v", err)
	}
	if _, err := ring.Authorize(k2.Public[:], self.Name); err == nil {
		t.Fatal("unknown key authorised")
	}
	if _, err := ring.Authorize(nil, self.Name); err == nil {
		t.Fatal("NULL client authorised")
	}
}
