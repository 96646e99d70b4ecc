package client_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
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
