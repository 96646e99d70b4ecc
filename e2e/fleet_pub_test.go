package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/curve"
	"github.com/zpipes/zp/internal/zmtp"
)

// TestFleetPublicationDenial, against zpd processes: a publication is
// for the agents it names only (another agent's fetch gets 404, its key
// and the fleet client's subscribe to nothing on the hub's XPUB), and a
// record altered on the hub's disk ends the command's channel with 422
// before the command reads a byte of it.
func TestFleetPublicationDenial(t *testing.T) {
	names := []string{"a1", "a2"}
	f := newTestFleet(t, names)
	for _, n := range names {
		f.startAgent(n)
	}
	f.waitStates(15*time.Second, "up", names...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	kp, err := curve.LoadKeyPair(filepath.Join(f.home, "id_curve"))
	if err != nil {
		t.Fatal(err)
	}
	hubKey, err := curve.ParsePublicKey(strings.Fields(run(t, nil, nil, "zpd", "--print-key", "--state", f.hub.State).Stdout)[0])
	if err != nil {
		t.Fatal(err)
	}
	ckp, err := client.LoadKeyPair(filepath.Join(f.home, "id_curve"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := client.Dial(ctx, client.Config{Endpoint: "tcp://" + f.hub.Addr, User: "anyone",
		Key: &ckp, ServerKey: client.PublicKey(hubKey)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fl, err := client.NewFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	agents, err := fl.Agents(ctx, client.Selector{})
	if err != nil || len(agents) != 2 {
		t.Fatalf("agents: %v %v", err, agents)
	}
	execShared := func(a client.Agent, sh *client.SharedStdin) (string, error) {
		as, err := fl.DialAgent(ctx, a, client.Config{Key: &ckp})
		if err != nil {
			return "", err
		}
		defer as.Close()
		var out strings.Builder
		_, err = as.Exec(ctx, client.ExecRequest{Argv: []string{"cat"}, Shared: sh, Stdout: &out})
		return out.String(), err
	}

	// Published for a1 only; the input stays open (no EOF yet).
	pr, pw := io.Pipe()
	defer pw.Close()
	pub, err := fl.Publish(ctx, []string{"a1"}, pr)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	fmt.Fprintf(pw, "%s\n", strings.Repeat("secret stdin ", 100))

	// On the hub's XPUB, a2's key, the fleet client's key, "" and "f/"
	// subscribe to nothing; a1's key receives the publication.
	xpub := regexp.MustCompile(`xpub=(\S+)`).FindStringSubmatch(f.hub.Log())[1]
	subscribe := func(key curve.KeyPair, topic string) chan string {
		sub := zmq4.NewSub(zmtp.WithConfig(ctx, &zmtp.Config{SocketType: "SUB", OnFull: zmtp.Block,
			Mechanism: &curve.Client{Key: key, ServerKey: hubKey}}), zmq4.WithDialerMaxRetries(0))
		t.Cleanup(func() { sub.Close() })
		if err := sub.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
		if err := sub.Dial(zmtp.SchemeTCP + "://" + xpub); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 256)
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
	agentKey := func(name string) curve.KeyPair {
		k, err := curve.LoadKeyPair(filepath.Join(f.agentState[name], "server_curve"))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	mine := subscribe(agentKey("a1"), pub.Shared.Topic)
	denied := map[string]chan string{
		"a2's key":       subscribe(agentKey("a2"), pub.Shared.Topic),
		"a2's key, \"\"": subscribe(agentKey("a2"), ""),
		"client, f/":     subscribe(kp, "f/"),
	}
	eventually(t, 10*time.Second, "a1's key receives the publication", func() bool {
		fmt.Fprintln(pw, "more")
		select {
		case <-mine:
			return true
		default:
			return false
		}
	})
	for i := range 10 {
		fmt.Fprintf(pw, "more %d\n", i)
		time.Sleep(10 * time.Millisecond)
	}
	for who, c := range denied {
		select {
		case topic := <-c:
			t.Errorf("%s received a publication on %q", who, topic)
		default:
		}
	}
	// a2 was not named: the hub does not let it fetch (404).
	if out, err := execShared(agents[1], &pub.Shared); !client.IsCode(err, client.CodeNotFound) || out != "" {
		t.Errorf("a2 read a publication not meant for it: %q %v", out, err)
	}

	// Someone with the hub's disk flips a bit of the first record (the
	// file is unlinked: reach it through the hub's descriptors).
	var file string
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", f.hub.PID()))
	for _, fd := range fds {
		p := fmt.Sprintf("/proc/%d/fd/%s", f.hub.PID(), fd.Name())
		if l, _ := os.Readlink(p); strings.Contains(l, "/pub/.pub-") {
			file = p
		}
	}
	if file == "" {
		t.Fatal("the hub holds no publication file")
	}
	w, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	r, _ := os.Open(file)
	r.ReadAt(b, 40)
	r.Close()
	b[0] ^= 0x01
	if _, err := w.WriteAt(b, 40); err != nil {
		t.Fatal(err)
	}
	w.Close()
	pw.Close() // EOF: the final record
	out, err := execShared(agents[0], &pub.Shared)
	if !client.IsCode(err, client.CodeFlowControl) || out != "" {
		t.Fatalf("an altered record: %q %v", out, err)
	}
	t.Logf("altered record: %v", err)
}
