package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// rawDealer connects a bare DEALER to d (NULL mechanism).
func rawDealer(t *testing.T, d *zpd) zmq4.Socket {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := zmq4.NewDealer(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "DEALER"}), zmq4.WithDialerMaxRetries(0))
	if err := s.Dial("zptcp://" + d.Addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func recvMsg(t *testing.T, s zmq4.Socket) (wire.Message, error) {
	t.Helper()
	type res struct {
		m   zmq4.Msg
		err error
	}
	c := make(chan res, 1)
	go func() {
		m, err := s.Recv()
		c <- res{m, err}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			return nil, r.err
		}
		return wire.Decode(r.m.Frames)
	case <-time.After(5 * time.Second):
		return nil, errors.New("no reply")
	}
}

func expectError(t *testing.T, s zmq4.Socket, code wire.Code) {
	t.Helper()
	m, err := recvMsg(t, s)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := m.(*wire.Error)
	if !ok || e.Code != code {
		t.Fatalf("got %#v, want ERROR %d", m, code)
	}
}

// Garbage never crashes zpd nor disturbs other sessions, and gets an
// ERROR with a stable code where a reply makes sense.
func TestGarbage(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t) // the raw DEALERs below speak NULL
	// A long-running healthy session alongside the abuse.
	hin, hw := io.Pipe()
	healthy, hout, _ := startZP(t, d, hin, "sh", "-c", "echo ready; read x; echo bye $x")
	expectLine(t, hout, "ready")

	t.Run("not ZMTP", func(t *testing.T) {
		for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), bytes.Repeat([]byte{0xff}, 100), {}} {
			c, err := net.Dial("tcp", d.Addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(junk)
			c.Close()
		}
	})
	t.Run("before OPEN", func(t *testing.T) {
		s := rawDealer(t, d)
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Ping{Seq: 1})...))
		expectError(t, s, wire.CodeBadRequest)
	})
	s := rawDealer(t, d)
	s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: wire.Version})...))
	if m, err := recvMsg(t, s); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*wire.OpenOK); !ok {
		t.Fatalf("OPEN got %#v", m)
	}
	cases := []struct {
		name   string
		frames [][]byte
		code   wire.Code
	}{
		{"bad signature", [][]byte{{'X', 'Y', 1}}, wire.CodeBadRequest},
		{"unknown id", [][]byte{{0x5A, 0x50, 0xEE, 1, 2, 3}}, wire.CodeBadRequest},
		{"truncated", [][]byte{wire.Encode(nil, &wire.Exec{Channel: 1, Argv: []string{"true"}})[:9]}, wire.CodeBadRequest},
		{"empty header", [][]byte{{}}, wire.CodeBadRequest},
		{"too many frames", [][]byte{{0x5A, 0x50, 0x03}, {1}, {2}}, wire.CodeBadRequest},
		{"wrong version", wire.Frames(&wire.Open{Version: 99}), wire.CodeVersion},
		{"second OPEN", wire.Frames(&wire.Open{Version: wire.Version}), wire.CodeBadRequest},
		{"data on unknown channel", wire.Frames(&wire.Data{Channel: 77, Bytes: []byte("x")}), wire.CodeNotFound},
		{"signal unknown channel", wire.Frames(&wire.Signal{Channel: 77, Name: "INT"}), wire.CodeNotFound},
		{"channel 0", wire.Frames(&wire.Exec{Channel: 0, Argv: []string{"true"}}), wire.CodeBadRequest},
		{"server-only message", wire.Frames(&wire.ExecOK{Channel: 1}), wire.CodeBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.Send(zmq4.NewMsgFrom(c.frames...))
			expectError(t, s, c.code)
		})
	}
	t.Run("credit violation", func(t *testing.T) {
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Exec{Channel: 5, Flags: wire.ExecStdin, Window: 1 << 16, Argv: []string{"sleep", "5"}})...))
		m, _ := recvMsg(t, s)
		ok, isOK := m.(*wire.ExecOK)
		if !isOK {
			t.Fatalf("%#v", m)
		}
		// Data past the credit the server granted: the command reads
		// nothing, its pipe holds 1 MiB, so the limit cannot pass
		// window + 1 MiB; send well beyond it, contiguously.
		chunk := make([]byte, wire.MaxData)
		for off := uint64(0); off < uint64(ok.Window)+3*uint64(len(chunk)); off += uint64(len(chunk)) {
			s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Data{Channel: 5, Stream: wire.Stdin, Offset: off, Bytes: chunk})...))
		}
		for {
			m, err := recvMsg(t, s)
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := m.(*wire.Error); ok {
				if e.Code != wire.CodeFlowControl {
					t.Fatalf("%v", e)
				}
				break
			}
		}
	})
	t.Run("oversized frame closes only that connection", func(t *testing.T) {
		s2 := rawDealer(t, d)
		s2.Send(zmq4.NewMsgFrom(make([]byte, 3<<20)))
		if _, err := recvMsg(t, s2); err == nil {
			t.Fatal("expected the connection to be closed")
		}
	})
	t.Run("random messages", func(t *testing.T) {
		s3 := rawDealer(t, d)
		s3.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: wire.Version})...))
		recvMsg(t, s3)
		rng := rand.New(rand.NewSource(1))
		for i := 0; i < 2000; i++ {
			h := make([]byte, 3+rng.Intn(40))
			rng.Read(h)
			h[0], h[1] = 0x5A, 0x50
			h[2] = byte(rng.Intn(0x20))
			frames := [][]byte{h}
			if rng.Intn(2) == 0 {
				frames = append(frames, make([]byte, rng.Intn(100)))
			}
			s3.Send(zmq4.NewMsgFrom(frames...))
		}
	})
	// zpd is alive and the healthy session was not disturbed.
	if r := d.zp(t, nil, "echo", "still here"); r.Stdout != "still here\n" {
		t.Fatalf("zpd unhealthy after garbage: %+v\n%s", r, d.Log())
	}
	hw.Write([]byte("now\n"))
	hw.Close()
	expectLine(t, hout, "bye now")
	if code := waitExit(t, healthy, 10*time.Second); code != 0 {
		t.Fatalf("healthy session exit %d", code)
	}
	if strings.Contains(d.Log(), "panic") {
		t.Fatal("zpd logged a panic")
	}
}

// A client that stops reading (SIGSTOP) must not slow the others, and gets
// every byte once it resumes.
func TestStoppedClientDoesNotSlowOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d := startZPD(t)
	type reader struct {
		cmd   *exec.Cmd
		bytes atomic.Int64
		done  chan error
	}
	start := func() *reader {
		r := &reader{done: make(chan error, 1)}
		r.cmd = exec.Command(bin("zp"), append(d.clientArgs(), d.Addr, "head", "-c", "1500000000", "/dev/zero")...)
		r.cmd.Env = append(os.Environ(), d.env()...)
		out, _ := r.cmd.StdoutPipe()
		r.cmd.Start()
		go func() {
			buf := make([]byte, 1<<16)
			for {
				n, err := out.Read(buf)
				r.bytes.Add(int64(n))
				if err != nil {
					r.done <- r.cmd.Wait()
					return
				}
			}
		}()
		t.Cleanup(func() { r.cmd.Process.Signal(syscall.SIGCONT); r.cmd.Process.Kill() })
		return r
	}
	rate := func(r *reader, d time.Duration) float64 {
		a := r.bytes.Load()
		time.Sleep(d)
		return float64(r.bytes.Load()-a) / d.Seconds()
	}
	a, b := start(), start()
	time.Sleep(300 * time.Millisecond)
	before := rate(b, time.Second)
	a.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(200 * time.Millisecond) // let A's window fill
	stoppedAt := a.bytes.Load()
	during := rate(b, 2*time.Second)
	if a.bytes.Load() != stoppedAt {
		t.Fatal("stopped client kept reading")
	}
	t.Logf("B's rate: %.0f MB/s with A running, %.0f MB/s with A stopped", before/1e6, during/1e6)
	// On a shared 2-core machine rates swing; a stall caused by the
	// stopped peer would take B to ~0, far below this bound.
	if during < before*0.3 {
		t.Fatalf("B slowed down from %.0f to %.0f MB/s while A was stopped", before/1e6, during/1e6)
	}
	// Hold A stopped beyond zpd's heartbeat timeout? No: a stopped client
	// cannot ping, so zpd would drop it; resume well within the timeout.
	a.cmd.Process.Signal(syscall.SIGCONT)
	for _, r := range []*reader{a, b} {
		select {
		case err := <-r.done:
			if err != nil {
				t.Fatalf("zp: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("transfer did not finish")
		}
		if n := r.bytes.Load(); n != 1500000000 {
			t.Fatalf("got %d octets", n)
		}
	}
}

// A zpd accepts OPEN with version 1 to wire.Version (7), answers with the
// client's version, and refuses others with 426.
func TestOpenVersions(t *testing.T) {
	d := startInsecureZPD(t)
	for v := uint16(1); v <= wire.Version; v++ {
		s := rawDealer(t, d)
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: v})...))
		m, err := recvMsg(t, s)
		if err != nil {
			t.Fatal(err)
		}
		if ok, isOK := m.(*wire.OpenOK); !isOK || ok.Version != v {
			t.Fatalf("OPEN version %d got %#v", v, m)
		}
	}
	for _, v := range []uint16{0, wire.Version + 1} {
		s := rawDealer(t, d)
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: v})...))
		expectError(t, s, wire.CodeVersion)
	}
}

// BATCH needs a version 6 session: in a version 5 one it is refused
// (ERROR 400); in a version 6 one each message in it is handled as if it
// had come alone (here: ERROR 404, no such channel, for each).
func TestBatchNeedsVersion6(t *testing.T) {
	d := startInsecureZPD(t)
	batch := &wire.Batch{Channel: 9, Msgs: []wire.Message{
		&wire.FileOK{Channel: 9, FID: 1, Action: wire.ActionSkip},
		&wire.FileOK{Channel: 9, FID: 2, Action: wire.ActionSkip},
	}}
	for _, v := range []uint16{5, 6} {
		s := rawDealer(t, d)
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: v})...))
		if m, err := recvMsg(t, s); err != nil {
			t.Fatal(err)
		} else if _, ok := m.(*wire.OpenOK); !ok {
			t.Fatalf("OPEN version %d got %#v", v, m)
		}
		s.Send(zmq4.NewMsgFrom(wire.Frames(batch)...))
		answers := 1
		if v == 6 {
			answers = 2
		}
		for range answers {
			m, err := recvMsg(t, s)
			if err != nil {
				t.Fatal(err)
			}
			e, ok := m.(*wire.Error)
			switch {
			case !ok:
				t.Fatalf("version %d: BATCH got %#v", v, m)
			case v == 5 && (e.Code != wire.CodeBadRequest || !strings.Contains(e.Reason, "needs protocol version 6")):
				t.Fatalf("version 5: BATCH got %#v", e)
			case v == 6 && (e.Code != wire.CodeNotFound || e.Channel != 9):
				t.Fatalf("version 6: BATCH got %#v", e)
			}
		}
	}
}

// BCAST announcing chunk lists needs a version 5 session: in a version 4
// one it is refused (ERROR 400) before anything else is looked at.
func TestBroadcastChunksNeedVersion5(t *testing.T) {
	d := startInsecureZPD(t)
	bcast := &wire.Bcast{Channel: 3, Flags: wire.XferRecursive | wire.XferChunks, Topic: "f/x", Key: make([]byte, 32),
		Record: 1 << 10, Count: 1, Digest: make([]byte, 32)}
	for _, c := range []struct {
		version uint16
		reason  string
	}{{4, "needs protocol version 5"}, {5, "not a fleet agent"}} {
		s := rawDealer(t, d)
		s.Send(zmq4.NewMsgFrom(wire.Frames(&wire.Open{Version: c.version})...))
		if m, err := recvMsg(t, s); err != nil {
			t.Fatal(err)
		} else if _, ok := m.(*wire.OpenOK); !ok {
			t.Fatalf("OPEN version %d got %#v", c.version, m)
		}
		s.Send(zmq4.NewMsgFrom(wire.Frames(bcast)...))
		m, err := recvMsg(t, s)
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := m.(*wire.Error); !ok || e.Code != wire.CodeBadRequest || !strings.Contains(e.Reason, c.reason) {
			t.Fatalf("version %d: BCAST with chunk lists got %#v", c.version, m)
		}
	}
}
