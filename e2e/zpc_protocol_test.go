package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// scriptedServer is a hand-made zpd (NULL mechanism) that answers OPEN
// and PING and hands every other message of the client to its script,
// which may answer with anything, well-formed or not.
type scriptedServer struct {
	Addr string
	mu   sync.Mutex
	got  []wire.Message // what the client sent, besides OPEN and PING
}

type scriptIO struct {
	send func(wire.Message)
	raw  func(frames ...[]byte) // frames as they are, encoded or not
}

func startScriptedServer(t *testing.T, script func(io scriptIO, m wire.Message)) *scriptedServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	router := zmq4.NewRouter(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "ROUTER"}))
	if err := router.Listen("zptcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	srv := &scriptedServer{Addr: router.Addr().String()}
	done := make(chan struct{})
	t.Cleanup(func() { router.Close(); cancel(); <-done })
	go func() {
		defer close(done)
		for {
			msg, err := router.Recv()
			if err != nil {
				return
			}
			id := msg.Frames[0]
			io := scriptIO{
				send: func(m wire.Message) { router.Send(zmq4.NewMsgFrom(append([][]byte{id}, wire.Frames(m)...)...)) },
				raw:  func(frames ...[]byte) { router.Send(zmq4.NewMsgFrom(append([][]byte{id}, frames...)...)) },
			}
			batch, err := wire.Decode(msg.Frames[1:])
			if err != nil {
				continue
			}
			for _, m := range unbatch(batch) {
				switch m := m.(type) {
				case *wire.Open:
					io.send(&wire.OpenOK{Version: wire.Version, Session: "fake", Token: make([]byte, 16), Heartbeat: 1000, Timeout: 5000, Grace: 1000, Server: "fake"})
				case *wire.Ping:
					io.send(&wire.Pong{Seq: m.Seq})
				default:
					srv.mu.Lock()
					srv.got = append(srv.got, m)
					srv.mu.Unlock()
					script(io, m)
				}
			}
		}
	}()
	return srv
}

// runZpc runs zpc with a deadline well below its reconnect budget (1m):
// a zpc that retries shows up as a timeout.
func runZpc(t *testing.T, args ...string) (result, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin("zpc"), append([]string{"--insecure"}, args...)...)
	cmd.Env = []string{"ZP_CONFIG=" + t.TempDir(), "PATH=/usr/bin:/bin"}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{Stdout: out.String(), Stderr: errb.String(), Elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.Code = ee.ExitCode()
	}
	return r, ctx.Err() == nil
}

// A server that breaks the protocol is not a network fault: zpc stops at
// once (exit 255, saying so) instead of reconnecting for a minute.
func TestZpcProtocolViolation(t *testing.T) {
	entry := func(ch uint32) *wire.File {
		return &wire.File{Channel: ch, FID: 1, Path: "f", Kind: wire.KindFile, Mode: 0o644, Size: 64 << 20}
	}
	cases := []struct {
		name   string
		upload bool
		script func(io scriptIO, m wire.Message)
	}{
		{"more entries in flight than allowed", false, func(io scriptIO, m wire.Message) {
			if m, ok := m.(*wire.Recv); ok {
				for fid := uint32(1); fid <= 20000; fid++ { // at most 1024 unfinished
					io.send(&wire.File{Channel: m.Channel, FID: fid, Path: fmt.Sprintf("f%d", fid), Kind: wire.KindFile, Mode: 0o644, Size: 1})
				}
			}
		}},
		{"undecodable message", false, func(io scriptIO, m wire.Message) {
			if m, ok := m.(*wire.Recv); ok {
				io.send(entry(m.Channel))
				io.raw([]byte("ZP\xfe garbage"))
			}
		}},
		{"acknowledgement of what was never sent", true, func(io scriptIO, m wire.Message) {
			if m, ok := m.(*wire.Send); ok {
				io.send(&wire.SendOK{Channel: m.Channel, Mode: wire.TargetInto, Window: 1 << 20, Root: "/x"})
				io.send(&wire.Ack{Channel: m.Channel, Offset: 1 << 30, Limit: 1 << 31})
			}
		}},
		{"wrong answer to SEND", true, func(io scriptIO, m wire.Message) {
			if m, ok := m.(*wire.Send); ok {
				io.send(&wire.FileOK{Channel: m.Channel, FID: 7})
			}
		}},
	}
	src := filepath.Join(t.TempDir(), "f")
	writeFile(t, src, []byte("content"), 0o644, time.Unix(1e9, 0))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := startScriptedServer(t, c.script)
			args := []string{srv.Addr + ":f", filepath.Join(t.TempDir(), "f")}
			if c.upload {
				args = []string{src, srv.Addr + ":dest"}
			}
			r, finished := runZpc(t, args...)
			t.Logf("exit %d after %v: %s", r.Code, r.Elapsed.Round(time.Millisecond), r.Stderr)
			if !finished {
				t.Fatal("zpc still runs (retrying?) after 20 s")
			}
			if r.Code != 255 || !strings.Contains(r.Stderr, "broke the protocol") || strings.Contains(r.Stderr, "reconnecting") {
				t.Fatalf("exit %d, stderr %q: want 255 and a clear message, no retry", r.Code, r.Stderr)
			}
		})
	}
}

// An entry of a kind the receiver does not know gets an answer (FILE_DONE
// 400) like any entry it cannot make, and the rest of the copy goes on.
func TestZpcUnknownEntryKind(t *testing.T) {
	var mu sync.Mutex
	codes := map[uint32]uint16{}
	srv := startScriptedServer(t, func(io scriptIO, m wire.Message) {
		switch m := m.(type) {
		case *wire.Recv:
			unknown := &wire.File{Channel: m.Channel, FID: 1, Path: "dev", Kind: 9, Mode: 0o644}
			io.raw(wire.Encode(nil, unknown)) // Encode does not check the kind
			io.send(&wire.File{Channel: m.Channel, FID: 2, Path: "good", Kind: wire.KindFile, Mode: 0o644, MTime: 1e18, Size: 5})
		case *wire.FileOK:
			if m.Action == wire.ActionSend {
				io.send(&wire.Chunk{Channel: m.Channel, FID: m.FID, Seq: 0, Bytes: hello})
				io.send(&wire.Commit{Channel: m.Channel, FID: m.FID, Size: 5, Digest: helloDigest()})
			}
		case *wire.FileDone:
			mu.Lock()
			codes[m.FID] = m.Code
			n := len(codes)
			mu.Unlock()
			if n == 2 {
				io.send(&wire.End{Channel: m.Channel, Count: 2})
			}
		}
	})
	dest := t.TempDir()
	r, finished := runZpc(t, "-r", srv.Addr+":src/", dest)
	t.Logf("exit %d after %v: %s", r.Code, r.Elapsed.Round(time.Millisecond), r.Stderr)
	if !finished {
		t.Fatal("zpc still runs after 20 s: the entry got no answer")
	}
	mu.Lock()
	defer mu.Unlock()
	if codes[1] != 400 || codes[2] != 0 {
		t.Fatalf("answers %v: want 400 for the unknown kind, 0 for the file", codes)
	}
	if r.Code != 1 || !strings.Contains(r.Stderr, "dev") || !strings.Contains(r.Stderr, "kind 9") {
		t.Fatalf("exit %d: want 1, naming the entry and its kind", r.Code)
	}
	sameListing(t, dest, map[string]string{"good": "hello"})
}
