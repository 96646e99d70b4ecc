package e2e

import (
	"bytes"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/wire"
)

// peer is a raw DEALER with one goroutine reading every message it gets,
// so that a test can wait for a message, or for silence, without losing
// one to a timed-out read.
type peer struct {
	t    *testing.T
	s    zmq4.Socket
	msgs chan wire.Message
}

func rawPeer(t *testing.T, d *zpd) *peer {
	t.Helper()
	p := &peer{t: t, s: rawDealer(t, d), msgs: make(chan wire.Message, 1024)}
	go func() {
		for {
			m, err := p.s.Recv()
			if err != nil {
				close(p.msgs)
				return
			}
			if wm, err := wire.Decode(m.Frames); err == nil {
				p.msgs <- wm
			}
		}
	}()
	return p
}

func (p *peer) send(m wire.Message) {
	p.t.Helper()
	if err := p.s.Send(zmq4.NewMsgFrom(wire.Frames(m)...)); err != nil {
		p.t.Fatal(err)
	}
}

// next returns the next message that is not a PONG, or fails after 5 s.
func (p *peer) next() wire.Message {
	p.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				p.t.Fatal("connection closed")
			}
			if _, pong := m.(*wire.Pong); pong {
				continue
			}
			return m
		case <-timeout:
			p.t.Fatal("no message within 5 s")
		}
	}
}

// quiet fails if a message of channel ch (other than ERROR 404, the answer
// to a message for a channel zpd no longer has) arrives within d.
func (p *peer) quiet(ch uint32, d time.Duration) {
	p.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case m := <-p.msgs:
			if e, ok := m.(*wire.Error); ok && e.Code == wire.CodeNotFound {
				continue // the answer to a message for the ended channel
			}
			if id, ok := wire.ChannelOf(m); ok && id == ch {
				p.t.Fatalf("channel %d is over, yet zpd sent %#v", ch, m)
			}
		case <-timeout:
			return
		}
	}
}

func (p *peer) open() {
	p.t.Helper()
	p.send(&wire.Open{Version: wire.Version})
	if _, ok := p.next().(*wire.OpenOK); !ok {
		p.t.Fatal("no OPEN-OK")
	}
}

func (p *peer) expectError(ch uint32, code wire.Code) *wire.Error {
	p.t.Helper()
	m := p.next()
	e, ok := m.(*wire.Error)
	if !ok || e.Code != code || e.Channel != ch {
		p.t.Fatalf("got %#v, want ERROR %d on channel %d", m, code, ch)
	}
	return e
}

// Issue 12: CLOSE is answered (OK on channel 0) once the session has
// ended, and the connection can open another session.
func TestCloseIsConfirmed(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t)
	p := rawPeer(t, d)
	p.open()
	p.send(&wire.Exec{Channel: 1, Window: 1 << 16, Argv: []string{"sleep", "30"}})
	if _, ok := p.next().(*wire.ExecOK); !ok {
		t.Fatal("no EXEC-OK")
	}
	p.send(&wire.Close{})
	if ok, isOK := p.next().(*wire.OK); !isOK || ok.Channel != 0 {
		t.Fatal("CLOSE not confirmed with OK on channel 0")
	}
	p.open() // the same connection, a new session
	// Closed again before the zp runs below: a session left open there
	// would be silent for as long as they take, and zpd detaches a silent
	// session after its timeout (seen with the race detector's slower
	// binaries), which the count below would take for a lost CLOSE.
	p.send(&wire.Close{})
	if _, isOK := p.next().(*wire.OK); !isOK {
		t.Fatal("second CLOSE not confirmed")
	}
	// zp waits for the confirmation: under load a CLOSE sent behind a lot
	// of stdin is not lost, so no session is left detached.
	for i := 0; i < 10; i++ {
		if r := d.zp(t, bytes.NewReader(make([]byte, 8<<20)), "true"); r.Code != 0 {
			t.Fatalf("zp true: %+v", r)
		}
	}
	if n := strings.Count(d.Log(), `msg="session detached"`); n != 0 {
		t.Fatalf("%d sessions were left detached:\n%s", n, d.Log())
	}
}

// Issue 12: EXEC with window 0 grants no credit: zpd sends no output
// until the client's first ACK.
func TestExecWindowZero(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t)
	p := rawPeer(t, d)
	p.open()
	p.send(&wire.Exec{Channel: 1, Window: 0, Argv: []string{"echo", "held back"}})
	if _, ok := p.next().(*wire.ExecOK); !ok {
		t.Fatal("no EXEC-OK")
	}
	// EOF on stderr needs no credit; data on stdout does.
	timeout := time.After(time.Second)
wait:
	for {
		select {
		case m := <-p.msgs:
			if dm, ok := m.(*wire.Data); ok && len(dm.Bytes) > 0 {
				t.Fatalf("zpd sent %q without credit", dm.Bytes)
			}
		case <-timeout:
			break wait
		}
	}
	p.send(&wire.Ack{Channel: 1, Stream: wire.Stdout, Offset: 0, Limit: 4})
	var got []byte
	for len(got) < 4 {
		if dm, ok := p.next().(*wire.Data); ok && dm.Stream == wire.Stdout {
			got = append(got, dm.Bytes...)
		}
	}
	if string(got) != "held" {
		t.Fatalf("with 4 octets of credit zpd sent %q", got)
	}
}

// Issue 12: an ERROR on a channel ends it. After a flow-control
// violation zpd sends nothing more on the channel (no ACK, EOF or EXIT),
// hangs up the command, answers later DATA with 404 and ignores FIN and
// ACK for it.
func TestChannelErrorEndsChannel(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t)
	p := rawPeer(t, d)
	p.open()
	p.send(&wire.Exec{Channel: 3, Flags: wire.ExecStdin, Window: 1 << 16, Argv: []string{"sh", "-c", "echo $$; exec cat"}})
	if _, isOK := p.next().(*wire.ExecOK); !isOK {
		t.Fatal("no EXEC-OK")
	}
	var pidLine []byte
	for !bytes.Contains(pidLine, []byte("\n")) {
		if dm, ok := p.next().(*wire.Data); ok && dm.Stream == wire.Stdout {
			pidLine = append(pidLine, dm.Bytes...)
		}
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidLine)))
	// Contiguous stdin far past the credit (the command's output is not
	// read, so zpd's consumption stops a few MiB in; the stdin window is
	// 16 MiB, broker execWindow).
	chunk := make([]byte, wire.MaxData)
	for off := 0; off < 48<<20; off += len(chunk) {
		p.send(&wire.Data{Channel: 3, Stream: wire.Stdin, Offset: uint64(off), Bytes: chunk})
	}
	for {
		m := p.next()
		if e, isErr := m.(*wire.Error); isErr {
			if e.Code != wire.CodeFlowControl || e.Channel != 3 {
				t.Fatalf("got %#v, want ERROR 422 on channel 3", e)
			}
			break
		}
	}
	p.quiet(3, time.Second) // 404s for the DATA already sent are answers, not channel traffic
	eventually(t, 5*time.Second, "the command hung up", func() bool { return syscall.Kill(pid, 0) != nil })
	p.send(&wire.Fin{Channel: 3})
	p.send(&wire.Ack{Channel: 3, Stream: wire.Stdout, Offset: 0, Limit: 10})
	p.send(&wire.Ping{Seq: 99})
	for { // FIN and ACK got nothing: the next answer is the PONG
		m := <-p.msgs
		if pong, ok := m.(*wire.Pong); ok && pong.Seq == 99 {
			break
		}
		if e, ok := m.(*wire.Error); !ok || e.Code != wire.CodeNotFound {
			t.Fatalf("FIN or ACK for an ended channel answered: %#v", m)
		}
	}
}

// Issue 12: request errors that concern the session go on channel 0, and
// a missing working directory is a failure to start, as "cd DIR && cmd".
func TestExecRequestErrors(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t)
	p := rawPeer(t, d)
	p.open()
	p.send(&wire.Exec{Channel: 0, Argv: []string{"true"}})
	p.expectError(0, wire.CodeBadRequest)
	p.send(&wire.Exec{Channel: 5, Window: 1 << 16, Argv: []string{"sleep", "30"}})
	if _, ok := p.next().(*wire.ExecOK); !ok {
		t.Fatal("no EXEC-OK")
	}
	p.send(&wire.Exec{Channel: 5, Window: 1 << 16, Argv: []string{"true"}})
	if e := p.expectError(0, wire.CodeConflict); !strings.Contains(e.Reason, "channel 5") {
		t.Fatalf("reason %q", e.Reason)
	}
	p.send(&wire.Fin{Channel: 5}) // channel 5 was not ended by the conflict
	p.send(&wire.Exec{Channel: 6, Window: 1 << 16, Argv: []string{"true"}, Dir: "/no/such/dir"})
	m := p.next()
	if ex, ok := m.(*wire.Exit); !ok || ex.Status != wire.FailedToStart || ex.Code != 1 || ex.Message != "cd: /no/such/dir: no such file or directory" {
		t.Fatalf("missing directory: %#v", m)
	}
	home := t.TempDir()
	p.send(&wire.Exec{Channel: 7, Window: 1 << 16, Argv: []string{"pwd"}, Dir: home})
	var out []byte
	for {
		m := p.next()
		if dm, ok := m.(*wire.Data); ok {
			out = append(out, dm.Bytes...)
		}
		if _, ok := m.(*wire.Exit); ok {
			break
		}
	}
	if string(out) != home+"\n" {
		t.Fatalf("pwd in %s: %q", home, out)
	}
	// An oversized header or data frame is 413 and ends nothing.
	big := append(wire.Encode(nil, &wire.Signal{Channel: 9, Name: "INT"}), make([]byte, wire.MaxHeader)...)
	p.s.Send(zmq4.NewMsgFrom(big))
	p.expectError(0, wire.CodeTooLarge)
	p.s.Send(zmq4.NewMsgFrom(wire.Encode(nil, &wire.Data{Channel: 9}), make([]byte, wire.MaxData+1)))
	p.expectError(0, wire.CodeTooLarge)
	p.send(&wire.Ping{Seq: 7})
	select {
	case m := <-p.msgs:
		if pong, ok := m.(*wire.Pong); !ok || pong.Seq != 7 {
			t.Fatalf("after the errors: %#v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the session did not survive the errors")
	}
}
