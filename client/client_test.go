package client_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
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
	"github.com/zpipes/zp/internal/testutil/leak"
)

// TestMain lets this test binary serve as the job supervisor ("shim"):
// a program that embeds the broker does the same in its main.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == broker.ShimArg {
		os.Exit(broker.RunShim(os.Args[2:]))
	}
	if len(os.Args) > 3 && os.Args[1] == exampleZPDArg {
		os.Exit(exampleZPD(os.Args[2:]))
	}
	stop := exampleMain()
	code := m.Run()
	stop()
	os.Exit(code)
}

// exampleMain starts a zpd for the examples in a child process (this test
// binary, so that its goroutines do not meet the leak checks), with CURVE,
// and a $ZP_CONFIG holding a client identity that it authorises.
func exampleMain() func() {
	dir, err := os.MkdirTemp("", "zp-example-config-")
	if err != nil {
		panic(err)
	}
	secret, public := client.IdentityPaths(dir)
	ck, _ := client.GenerateKeyPair()
	if err := client.WriteKeyFiles(secret, public, ck, false); err != nil {
		panic(err)
	}
	os.Setenv("ZP_CONFIG", dir)
	cmd := exec.Command(os.Args[0], exampleZPDArg, ck.Public.String(), dir)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		panic(fmt.Sprintf("example zpd: %v", err))
	}
	target = strings.TrimSpace(line)
	return func() {
		in.Close() // it stops when its stdin closes
		cmd.Wait()
		os.RemoveAll(dir)
	}
}

const exampleZPDArg = "example-zpd"

// exampleZPD runs the examples' zpd until stdin closes: it authorises the
// client key args[0], keeps its state under args[1] and prints its address.
func exampleZPD(args []string) int {
	clientKey, err := curve.ParsePublicKey(args[0])
	if err != nil {
		panic(err)
	}
	serverKey, _ := curve.GenerateKeyPair()
	self, err := broker.CurrentAccount()
	if err != nil {
		panic(err)
	}
	b, err := broker.New(broker.Config{
		Endpoint:    "tcp://127.0.0.1:0",
		StateDir:    filepath.Join(args[1], "state"),
		Mechanism:   &curve.Server{Key: serverKey, Authorize: curve.AllowKeys(clientKey)},
		AnnounceKey: serverKey.Public.String(), // first contact, as zpd
		Authorize:   func(key []byte, user string) (*broker.Account, error) { return self, nil },
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Println(b.Addr().String())
	if err := b.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// The library as another program embeds it: a broker and a client in one
// process, over tcp on 127.0.0.1 with CURVE.
func TestLibrary(t *testing.T) {
	defer goleak.VerifyNone(t, leak.ZMQ4...)
	serverKey, _ := curve.GenerateKeyPair()
	clientKey, _ := client.GenerateKeyPair()
	self, err := broker.CurrentAccount()
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		Endpoint:  "tcp://127.0.0.1:0",
		StateDir:  t.TempDir(),
		Mechanism: &curve.Server{Key: serverKey, Authorize: curve.AllowKeys(curve.PublicKey(clientKey.Public))},
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
		Endpoint: "tcp://" + b.Addr().String(),
		Key:      &clientKey, ServerKey: client.PublicKey(serverKey.Public),
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
	if err != nil || out.String() != "from a job\n" || res.Info.ExitCode != 2 {
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
	defer goleak.VerifyNone(t, leak.ZMQ4...)
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
	s, err := client.Dial(context.Background(), client.Config{Endpoint: "tcp://" + b.Addr().String(), Insecure: true})
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
