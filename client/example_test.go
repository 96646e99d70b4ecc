package client_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/zpipes/zp/client"
)

// target is the zpd the examples reach: "[user@]host[:port]" as zp takes
// it. exampleMain points it at a zpd in this process.
var target = "alice@db1.example.com"

// Connect the way zp does: identity and known_hosts from $ZP_CONFIG (or
// ~/.config/zp), the user from the target, and a command run with
// stdin, stdout and stderr as an io.Reader and io.Writers.
func Example() {
	ctx := context.Background()
	s, err := client.Connect(ctx, target, client.Config{
		// First contact: pin the host's key (check its fingerprint
		// against `zpd --print-key` first). Without AcceptHost an
		// unknown host is an *UnknownHostError.
		AcceptHost: func(host string, key client.PublicKey) error { return nil },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	var stdout, stderr bytes.Buffer
	st, err := s.Exec(ctx, client.ExecRequest{
		Argv:   []string{"tr", "a-z", "A-Z"},
		Stdin:  strings.NewReader("hello\n"),
		Stdout: &stdout,
		Stderr: &stderr,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(stdout.String())
	fmt.Println("exit code", st.ExitCode())
	// Output:
	// HELLO
	// exit code 0
}

// Explicit keys instead of $ZP_CONFIG: the client's key pair from a file,
// and the server's key pinned in the program.
func ExampleDial() {
	dir := client.ConfigDir(nil)
	key, err := client.LoadIdentity(dir) // dir/id_curve, as zp keygen writes it
	if err != nil {
		log.Fatal(err)
	}
	t, err := client.ParseTarget(target, 0)
	if err != nil {
		log.Fatal(err)
	}
	serverKey, _, found, err := (&client.KnownHosts{Path: filepath.Join(dir, "known_hosts")}).Lookup(t.Host)
	if err != nil || !found {
		log.Fatal("not pinned yet: ", err)
	}
	s, err := client.Dial(context.Background(), client.Config{
		Endpoint: t.Endpoint, User: t.RemoteUser(), Key: &key, ServerKey: serverKey,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	st, err := s.Exec(context.Background(), client.ExecRequest{Argv: []string{"sh", "-c", "exit 3"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Status, st.ExitCode())
	// Output: exited 3
}

// A background job: start it, follow its output until it ends, read its
// final description.
func ExampleSession_StartJob() {
	ctx := context.Background()
	s, err := client.Connect(ctx, target, client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	id, failed, err := s.StartJob(ctx, client.ExecRequest{Argv: []string{"sh", "-c", "echo working; exit 2"}})
	if err != nil || failed != nil {
		log.Fatal(err, failed)
	}
	res, err := s.Follow(ctx, id, client.FollowOptions{Stdout: os.Stdout})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Info.Status, res.Info.ExitCode)
	if err := s.RemoveJob(ctx, id); err != nil {
		log.Fatal(err)
	}
	_, err = s.JobStatus(ctx, id)
	fmt.Println(client.IsCode(err, client.CodeNotFound))
	// Output:
	// working
	// exited 2
	// true
}

// Copy a file up and back with a progress callback.
func ExampleSession_Upload() {
	ctx := context.Background()
	s, err := client.Connect(ctx, target, client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	dir, _ := os.MkdirTemp("", "zp-example-")
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "report.txt")
	os.WriteFile(src, bytes.Repeat([]byte("x"), 3<<20), 0o644)

	var moved uint64
	st, err := s.Upload(ctx, []string{src}, filepath.Join(dir, "remote.txt"), client.TransferOptions{
		OnProgress: func(name string, done, size uint64) { moved = done },
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("uploaded", st.Files, "file,", moved, "octets")
	st, err = s.Download(ctx, []string{filepath.Join(dir, "remote.txt")}, filepath.Join(dir, "back.txt"), client.TransferOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("downloaded", st.Files, "file,", st.BytesSent, "octets")
	// Output:
	// uploaded 1 file, 3145728 octets
	// downloaded 1 file, 3145728 octets
}
