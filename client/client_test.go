package client_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/curve"
)

// TestMain lets this test binary serve as the job supervisor ("shim"):
// a program that embeds the broker does the same in its main.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == broker.ShimArg {
		os.Exit(broker.RunShim(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// The library as another program embeds it: a broker and a client in one
// process, over tcp on 127.0.0.1 with CURVE.
func TestLibrary(t *testing.T) {
	defer goleak.VerifyNone(t,
		// zmq4's reaper and readers end shortly after Close, not before it returns.
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*qreader).listen"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*socket).connReaper"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*pubQReader).listen"),
		// zmq4's publisher goroutine can miss Close's wake-up (pub.go).
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
	serverKey, _ := curve.GenerateKeyPair()
	clientKey, _ := curve.GenerateKeyPair()
	self, err := broker.CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		Endpoint:  "tcp://127.0.0.1:0",
		StateDir:  t.TempDir(),
		Mechanism: &curve.Server{Key: serverKey, Authorize: curve.AllowKeys(clientKey.Public)},
		Authorize: func(key []byte, user string) (*broker.Account, error) { return self, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		stop()
		<-done
	}()

	s, err := client.Dial(context.Background(), client.Config{
		Endpoint:  "tcp://" + b.Addr().String(),
		Mechanism: &curve.Client{Key: clientKey, ServerKey: serverKey.Public},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	var out, errb bytes.Buffer
	st, err := s.Exec(context.Background(), client.ExecRequest{
		Argv: []string{"sh", "-c", "tr a-z A-Z; echo oops >&2; exit 5"}, Stdin: strings.NewReader("hello\n"),
		Stdout: &out, Stderr: &errb,
	})
	if err != nil || st.ExitCode() != 5 || out.String() != "HELLO\n" || errb.String() != "oops\n" {
		t.Fatalf("exec: %v %+v %q %q", err, st, out.String(), errb.String())
	}

	id, exit, err := s.StartJob(context.Background(), client.ExecRequest{Argv: []string{"sh", "-c", "echo from a job; exit 2"}})
	if err != nil || exit != nil {
		t.Fatalf("job: %v %+v", err, exit)
	}
	out.Reset()
	fctx, fcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer fcancel()
	res, err := s.Follow(fctx, id, client.FollowOptions{Stdout: &out})
	if err != nil || out.String() != "from a job\n" || res.Info["exit_code"] != "2" {
		t.Fatalf("follow: %v %q %v", err, out.String(), res)
	}

	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("file content"), 0o640)
	dst := filepath.Join(t.TempDir(), "copy")
	stats, err := s.Upload(context.Background(), []string{src + "/"}, dst, client.TransferOptions{Recursive: true})
	if err != nil || stats.Files != 1 || len(stats.Failures) != 0 {
		t.Fatalf("upload: %v %+v", err, stats)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "f")); string(b) != "file content" {
		t.Fatalf("copied %q", b)
	}
}

// Run returns only after every goroutine it started has ended, and does not
// wait for a command that ignores SIGHUP: it outlives zpd, as a nohup'd
// command outlives sshd.
func TestRunOwnsItsGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t,
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*qreader).listen"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*socket).connReaper"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen"),
		goleak.IgnoreTopFunction("github.com/go-zeromq/zmq4.(*pubQReader).listen"),
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
	self, err := broker.CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{Endpoint: "tcp://127.0.0.1:0", StateDir: t.TempDir(),
		Authorize: func(key []byte, user string) (*broker.Account, error) { return self, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	s, err := client.Dial(context.Background(), client.Config{Endpoint: "tcp://" + b.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	started, execDone, readDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	r, w := io.Pipe()
	go func() { // the command's first output line means it is running
		defer close(readDone)
		buf := make([]byte, 64)
		r.Read(buf)
		close(started)
		io.Copy(io.Discard, r)
	}()
	go func() {
		defer close(execDone)
		s.Exec(context.Background(), client.ExecRequest{Argv: []string{"sh", "-c", "trap '' HUP; echo $$ > " + pidFile + "; echo up; exec sleep 30"}, Stdout: w, Stderr: io.Discard})
	}()
	<-started
	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return while a command ignoring SIGHUP runs")
	}
	s.Close()
	<-execDone
	w.Close()
	<-readDone
	b2, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b2)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		t.Fatalf("the command (pid %d) did not outlive zpd", pid)
	}
	syscall.Kill(pid, syscall.SIGKILL)
}
