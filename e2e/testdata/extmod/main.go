// zpuser exercises zp's public Go API from another module: connect with
// CURVE (pinning the host key on first contact), exec with streams, a job,
// a copy with progress. Usage: zpuser [user@]host:port DIR
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zpipes/zp/client"
)

func main() {
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "zpuser:", err)
		os.Exit(1)
	}
}

func run(target, dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Without AcceptHost, an unknown host is refused.
	_, err := client.Connect(ctx, target, client.Config{})
	var uh *client.UnknownHostError
	if !errors.As(err, &uh) {
		return fmt.Errorf("unknown host: want *UnknownHostError, got %v", err)
	}
	fmt.Println("unknown host refused:", uh.Key.Fingerprint() != "")

	s, err := client.Connect(ctx, target, client.Config{
		AcceptHost: func(host string, key client.PublicKey) error { return nil },
	})
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Println("protocol:", s.Info().Protocol >= 1)

	var out, errb bytes.Buffer
	st, err := s.Exec(ctx, client.ExecRequest{
		Argv:  []string{"sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 7"},
		Stdin: strings.NewReader("piped\n"), Stdout: &out, Stderr: &errb,
	})
	if err != nil {
		return err
	}
	fmt.Printf("exec: %q %q %s %d\n", out.String(), errb.String(), st.Status, st.ExitCode())

	id, failed, err := s.StartJob(ctx, client.ExecRequest{Argv: []string{"sh", "-c", "echo job-output; exit 3"}})
	if err != nil || failed != nil {
		return fmt.Errorf("job: %v %v", err, failed)
	}
	out.Reset()
	res, err := s.Follow(ctx, id, client.FollowOptions{Stdout: &out})
	if err != nil {
		return err
	}
	jobs, err := s.Jobs(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("job: %q %s %d listed=%v\n", out.String(), res.Info.Status, res.Info.ExitCode, len(jobs) == 1 && jobs[0].ID == id)
	_, err = s.JobStatus(ctx, "no-such-job")
	fmt.Println("unknown job:", client.IsCode(err, client.CodeNotFound))

	src := filepath.Join(dir, "src.bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("z"), 2<<20), 0o644); err != nil {
		return err
	}
	var last uint64
	ts, err := s.Upload(ctx, []string{src}, filepath.Join(dir, "up.bin"), client.TransferOptions{
		OnProgress: func(_ string, done, _ uint64) { last = done },
	})
	if err != nil {
		return err
	}
	fmt.Printf("upload: files=%d bytes=%d progress=%d\n", ts.Files, ts.BytesSent, last)
	return nil
}
