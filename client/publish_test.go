package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/secretbox"
	"github.com/zpipes/zp/internal/wire"
	"github.com/zpipes/zp/internal/zmtp"
)

// sharedExec runs argv on agent a with a shared stdin and returns stdout.
func sharedExec(ctx context.Context, t *testing.T, f *testFleet, fl *Fleet, a Agent, sh *SharedStdin, argv ...string) (string, *ExitStatus, error) {
	t.Helper()
	s, err := fl.DialAgent(ctx, a, Config{mech: &curve.Client{Key: f.client}})
	if err != nil {
		return "", nil, err
	}
	defer s.Close()
	var out bytes.Buffer
	st, err := s.Exec(ctx, ExecRequest{Argv: argv, Shared: sh, Stdout: &out})
	return out.String(), st, err
}

// A stdin published once reaches every listed agent's command whole; the
// hub stores and forwards it without being able to read it.
func TestFleetSharedStdin(t *testing.T) {
	noLeaks(t)
	f := newTestFleet(t, "alpha", "beta", "gamma")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	agents, err := fl.Agents(ctx, Selector{})
	if err != nil {
		t.Fatal(err)
	}
	input := make([]byte, 3<<20+12345)
	rand.Read(input)
	copy(input, "MARKER-IN-CLEAR")
	sum := sha256.Sum256(input)
	want := hex.EncodeToString(sum[:]) + "  -\n"

	pub, err := fl.Publish(ctx, []string{"alpha", "beta"}, bytes.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, a := range agents[:2] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, st, err := sharedExec(ctx, t, f, fl, a, &pub.Shared, "sha256sum")
			if err != nil || st.ExitCode() != 0 || out != want {
				t.Errorf("%s: %v %+v %q, want %q", a.Name, err, st, out, want)
			}
		}()
	}
	wg.Wait()
	if n, eof := pub.Sent(); n != uint64(len(input)) || !eof {
		t.Errorf("published %d octets (eof %v) of %d", n, eof, len(input))
	}

	// gamma is not listed: the hub does not let it fetch (404).
	_, _, err = sharedExec(ctx, t, f, fl, agents[2], &pub.Shared, "cat")
	if !isCode(err, wire.CodeNotFound) {
		t.Errorf("gamma read a publication not meant for it: %v", err)
	}
	// The right topic with another key: the records do not decrypt (422).
	other := pub.Shared
	other.Key[0] ^= 1
	if _, _, err := sharedExec(ctx, t, f, fl, agents[0], &other, "cat"); !isCode(err, wire.CodeFlowControl) {
		t.Errorf("a wrong key: %v", err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	// Deleted with FIN: the topic is gone for everyone.
	if _, _, err := sharedExec(ctx, t, f, fl, agents[0], &pub.Shared, "cat"); !isCode(err, wire.CodeNotFound) {
		t.Errorf("after FIN: %v", err)
	}
	if strings.Contains(f.relayed[1].String(), "MARKER-IN-CLEAR") {
		t.Error("the input crossed the hub in clear")
	}
}

// rawPublication publishes records made by the test (a tampering client).
func rawPublication(ctx context.Context, t *testing.T, s *Session, agents []string, stream []byte) string {
	t.Helper()
	id, inbox := s.openChannel()
	if err := s.send(&wire.Publish{Channel: id, Agents: agents}); err != nil {
		t.Fatal(err)
	}
	var topic string
	select {
	case m := <-inbox:
		ok, isOK := m.(*wire.PublishOK)
		if !isOK {
			t.Fatalf("PUBLISH: %v", m)
		}
		topic = ok.Topic
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if err := s.send(&wire.Data{Channel: id, Stream: wire.Stdin, Offset: 0, Flags: wire.DataEOF, Bytes: stream}); err != nil {
		t.Fatal(err)
	}
	return topic
}

func sealRecord(key *[32]byte, plain []byte, final bool, i uint64) []byte {
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(plain)+secretbox.Overhead))
	return secretbox.Seal(rec, plain, RecordNonce(final, i), key)
}

// A record altered on the way (by the hub, or anyone who can write its
// state directory) or a stream cut before its final record ends the
// command's channel with 422; its stdin never gets the altered octets.
func TestFleetSharedStdinTampered(t *testing.T) {
	f := newTestFleet(t, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := f.dialHub(t, f.client)
	fl, err := NewFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	a := f.waitUp(t, fl, "alpha")
	var key [32]byte
	rand.Read(key[:])
	good := append(sealRecord(&key, []byte("hello\n"), false, 0), sealRecord(&key, nil, true, 1)...)
	for _, c := range []struct {
		name   string
		stream []byte
		code   wire.Code
	}{
		{"intact", good, 0},
		{"flipped bit", func() []byte { b := bytes.Clone(good); b[10] ^= 1; return b }(), wire.CodeFlowControl},
		{"no final record", sealRecord(&key, []byte("hello\n"), false, 0), wire.CodeFlowControl},
		{"reordered", append(sealRecord(&key, []byte("b"), false, 1), sealRecord(&key, []byte("a"), false, 0)...), wire.CodeFlowControl},
		{"final record replayed early", append(sealRecord(&key, nil, true, 0), good...), wire.CodeFlowControl},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff}, wire.CodeFlowControl},
	} {
		t.Run(c.name, func(t *testing.T) {
			topic := rawPublication(ctx, t, s, []string{"alpha"}, c.stream)
			out, st, err := sharedExec(ctx, t, f, fl, a, &SharedStdin{Topic: topic, Key: key, Record: 1 << 10}, "cat")
			if c.code == 0 {
				if err != nil || st.ExitCode() != 0 || out != "hello\n" {
					t.Fatalf("%v %+v %q", err, st, out)
				}
				return
			}
			if !isCode(err, c.code) {
				t.Fatalf("got %v %q, want ERROR %d", err, out, c.code)
			}
		})
	}
}

// ZeroMQ topics match by prefix and are no secret: on the hub's XPUB,
// only the keys of the agents a publication names can subscribe to it.
func TestFleetPublicationSubscribers(t *testing.T) {
	f := newTestFleet(t, "alpha", "beta")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	pub, err := fl.Publish(ctx, []string{"alpha"}, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	defer pw.Close()
	recv := func(key curve.KeyPair, topic string) chan string {
		sub := zmq4.NewSub(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "SUB", OnFull: zmtp.Block,
			Mechanism: &curve.Client{Key: key, ServerKey: f.hubKey.Public}}), zmq4.WithDialerMaxRetries(0))
		t.Cleanup(func() { sub.Close() })
		if err := sub.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
		if err := sub.Dial(zmtp.SchemeTCP + "://" + f.hub.PublishAddr().String()); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 64)
		go func() {
			for {
				m, err := sub.Recv()
				if err != nil {
					return
				}
				got <- string(m.Frames[0])
			}
		}()
		return got
	}
	mine := recv(f.agentKeys["alpha"], pub.Shared.Topic)
	theirs := recv(f.agentKeys["beta"], pub.Shared.Topic)
	everything := recv(f.agentKeys["beta"], "")
	fleetPrefix := recv(f.client, "f/")
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		fmt.Fprintf(pw, "line %d\n", i) // each read becomes a record, published
		select {
		case <-mine:
		case <-time.After(50 * time.Millisecond):
			continue
		case <-deadline:
			t.Fatal("alpha received nothing")
		}
		break
	}
	// Give the others time to receive what they should not.
	for i := 0; i < 10; i++ {
		fmt.Fprintf(pw, "more %d\n", i)
		time.Sleep(20 * time.Millisecond)
	}
	for name, c := range map[string]chan string{"beta's key": theirs, `""`: everything, `"f/"`: fleetPrefix} {
		select {
		case topic := <-c:
			t.Errorf("%s received a publication on %q", name, topic)
		default:
		}
	}
}

// A stdin that trickles in reaches a command that is already reading
// through the hub's XPUB, not by fetching it back.
func TestFleetSharedStdinLive(t *testing.T) {
	f := newTestFleet(t, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	a := f.waitUp(t, fl, "alpha")
	pr, pw := io.Pipe()
	pub, err := fl.Publish(ctx, []string{"alpha"}, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var want strings.Builder
	go func() {
		defer pw.Close()
		for i := range 40 {
			line := fmt.Sprintf("line %d %s\n", i, strings.Repeat("x", 1000))
			want.WriteString(line)
			pw.Write([]byte(line))
			time.Sleep(25 * time.Millisecond)
		}
	}()
	out, st, err := sharedExec(ctx, t, f, fl, a, &pub.Shared, "cat")
	if err != nil || st.ExitCode() != 0 || out != want.String() {
		t.Fatalf("%v %+v: %d octets, want %d", err, st, len(out), want.Len())
	}
	published := counter(t, f.reg, "zp_fleet_published_bytes_total")
	fetched := counter(t, f.reg, "zp_fleet_publication_fetched_bytes_total")
	t.Logf("published %.0f octets, fetched back %.0f", published, fetched)
	if published < float64(want.Len()) || fetched > published/2 {
		t.Fatalf("published %.0f octets, fetched back %.0f: the XPUB carried too little", published, fetched)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// A publication is deleted when its session ends, FIN or not.
func TestFleetPublicationSessionEnd(t *testing.T) {
	f := newTestFleet(t, "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fl, err := NewFleet(f.dialHub(t, f.client))
	if err != nil {
		t.Fatal(err)
	}
	a := f.waitUp(t, fl, "alpha")
	s2 := f.dialHub(t, f.client)
	fl2, err := NewFleet(s2)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := fl2.Publish(ctx, []string{"alpha"}, strings.NewReader("hello\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n := gauge(t, f.reg, "zp_fleet_publications"); n != 1 {
		t.Fatalf("%v publications", n)
	}
	if _, err := fl2.Publish(ctx, []string{"nobody"}, strings.NewReader("")); !isCode(err, wire.CodeNotFound) {
		t.Fatalf("an unknown agent: %v", err)
	}
	if _, err := fl2.Publish(ctx, nil, strings.NewReader("")); !isCode(err, wire.CodeBadRequest) {
		t.Fatalf("no agent: %v", err)
	}
	// At most 16 publications per session.
	for i := 1; ; i++ {
		_, err := fl2.Publish(ctx, []string{"alpha"}, strings.NewReader(""))
		if i <= 15 && err != nil {
			t.Fatalf("publication %d: %v", i+1, err)
		}
		if i == 16 {
			if !isCode(err, wire.CodeTooMany) {
				t.Fatalf("publication 17: %v", err)
			}
			break
		}
	}
	if n := gauge(t, f.reg, "zp_fleet_publications"); n != 16 {
		t.Fatalf("%v publications", n)
	}
	s2.Close()
	deadline := time.Now().Add(10 * time.Second)
	for gauge(t, f.reg, "zp_fleet_publications") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the publication outlived its session")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, err := sharedExec(ctx, t, f, fl, a, &pub.Shared, "cat"); !isCode(err, wire.CodeNotFound) {
		t.Fatalf("after the session ended: %v", err)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
