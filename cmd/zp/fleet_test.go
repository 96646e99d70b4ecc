package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

func TestPrefixWriter(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	w := &prefixWriter{mu: &mu, w: &out, prefix: []byte("web3: ")}
	for _, p := range []string{"one\ntw", "o\n", "", "three\nfour\nfi", "ve"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("write %q: %d %v", p, n, err)
		}
	}
	w.Flush()
	w.Flush()
	if want := "web3: one\nweb3: two\nweb3: three\nweb3: four\nweb3: five\n"; out.String() != want {
		t.Fatalf("%q, want %q", out.String(), want)
	}
	// A line longer than maxLine is cut, never held whole.
	out.Reset()
	w.Write(bytes.Repeat([]byte("x"), 2*maxLine+10))
	if len(w.buf) != 10 || strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("held %d, wrote %d lines", len(w.buf), strings.Count(out.String(), "\n"))
	}
}

func TestSpillBuffer(t *testing.T) {
	small, big := newSpillBuffer(16), newSpillBuffer(16)
	defer small.Close()
	defer big.Close()
	small.Write([]byte("hello\n"))
	for range 10 {
		big.Write([]byte("0123456789"))
	}
	if small.f != nil || big.f == nil || big.mem.Len() != 0 {
		t.Fatal("spilling past the limit")
	}
	var b bytes.Buffer
	if err := big.copyTo(&b); err != nil || b.String() != strings.Repeat("0123456789", 10) || big.Len() != 100 {
		t.Fatalf("spilled content: %v %q", err, b.String())
	}
	if !small.EndsWithNewline() || big.EndsWithNewline() {
		t.Fatal("EndsWithNewline")
	}
	same := newSpillBuffer(1 << 20)
	same.Write([]byte(strings.Repeat("0123456789", 10)))
	if !bytes.Equal(same.Sum(), big.Sum()) || bytes.Equal(small.Sum(), big.Sum()) {
		t.Fatal("digests")
	}
	bin := newSpillBuffer(16)
	bin.Write([]byte{0xff, 'a'})
	if txt, b64, _ := bin.jsonText(); txt != nil || b64 == nil || *b64 != "/2E=" {
		t.Fatalf("binary output: %v %v", txt, b64)
	}
	if txt, b64, _ := small.jsonText(); txt == nil || *txt != "hello\n" || b64 != nil {
		t.Fatal("text output")
	}
}

func TestFleetSummary(t *testing.T) {
	for _, c := range []struct {
		results []*hostResult
		code    int
		line    string
	}{
		{[]*hostResult{{name: "a"}, {name: "b"}}, 0, "zp: 2 ok\n"},
		{[]*hostResult{{name: "a", code: 2}, {name: "b"}, {name: "c", code: 7}}, 7, "zp: 1 ok, 2 failed: a (exit 2), c (exit 7)\n"},
		{[]*hostResult{{name: "a", code: 2}, {name: "db1", err: errors.New("x"), why: "unreachable"}}, 255, "zp: 0 ok, 2 failed: a (exit 2), db1 (unreachable)\n"},
	} {
		var errb bytes.Buffer
		err := fleetSummary(&cli.IO{Err: &errb}, false, c.results)
		code := cli.ExitCode("zp", &bytes.Buffer{}, err, 255)
		if code != c.code || errb.String() != c.line {
			t.Errorf("%d %q, want %d %q", code, errb.String(), c.code, c.line)
		}
	}
}

func TestFleetGroups(t *testing.T) {
	var out, errb bytes.Buffer
	p := newFleetPrinter(&cli.IO{Out: &out, Err: &errb}, &fleetExecOptions{group: true}, 4)
	mk := func(name, o, e string) *hostResult {
		r := &hostResult{name: name}
		so, se := p.writers(r)
		so.Write([]byte(o))
		se.Write([]byte(e))
		return r
	}
	rs := []*hostResult{mk("a", "same\n", ""), mk("b", "other", "warn\n"), mk("c", "same\n", ""), mk("d", "", "")}
	if err := p.finish(rs); err != nil {
		t.Fatal(err)
	}
	want := "----------------\na,c\n----------------\nsame\n----------------\nb\n----------------\nother\n"
	if out.String() != want || errb.String() != "----------------\nb\n----------------\nwarn\n" {
		t.Fatalf("stdout %q\nstderr %q", out.String(), errb.String())
	}
}

func TestPromLabel(t *testing.T) {
	for in, want := range map[string]string{"role": "role", "k8s.io-zone": "k8s_io_zone", "9x": "label_9x", "__x": "label___x",
		"job": "label_job", "instance": "label_instance", "zp_agent": "label_zp_agent", "jobs": "jobs"} {
		if got := promLabel(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestFleetFirst(t *testing.T) {
	root := NewZPCmd(&cli.IO{Getenv: func(string) string { return "" }})
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"--fleet", "hub", "version"}, true},
		{[]string{"--fleet=hub", "jobs"}, true},
		{[]string{"-l", "alice", "--fleet", "hub", "keygen"}, true},
		{[]string{"-q", "--hosts", "web*", "--fleet", "hub", "version"}, true},
		{[]string{"-lalice", "--fleet", "hub", "version"}, true},
		{[]string{"host", "grep", "--fleet", "x"}, false},
		{[]string{"-l", "--fleet", "host", "cmd"}, false}, // --fleet is -l's value
		{[]string{"jobs", "host"}, false},
		{[]string{"--", "--fleet"}, false},
	} {
		if got := fleetFirst(root, c.args); got != c.want {
			t.Errorf("%q: %v", c.args, got)
		}
	}
}

func TestFleetJobIDs(t *testing.T) {
	for id, want := range map[string]bool{
		"F-0123456789abcdefghij": true, "F-0123456789abcdefghi": false, "F_0123456789abcdefghij": false,
		"F-0123456789abcdefgh/j": false, "kxKzcVZy1VMeBMHzbktarE": false, "": false,
	} {
		if client.IsFleetJobID(id) != want {
			t.Errorf("IsFleetJobID(%q) != %v", id, want)
		}
	}
}

func TestIsDevNull(t *testing.T) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	other, err := os.CreateTemp(t.TempDir(), "x")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if !isDevNull(null) || isDevNull(other) || isDevNull(nil) {
		t.Error("isDevNull")
	}
}
