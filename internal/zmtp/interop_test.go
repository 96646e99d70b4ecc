package zmtp_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/zmtp"
)

// libzmqPython returns a python3 that has pyzmq (Debian python3-zmq), or
// skips. CI installs python3-zmq (.ci/run), so there these tests run.
func libzmqPython(t *testing.T) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import zmq").Run() == nil {
			return py
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("python3-zmq is missing on CI: the libzmq interoperability tests cannot run")
	}
	t.Skip("no python3 with pyzmq (apt-get install python3-zmq): skipping libzmq interop")
	return ""
}

// PeerScript is the libzmq peer used by interop tests.
const peerScript = "testdata/peer.py"

// EchoWithLibzmqDealer: a libzmq DEALER sends multi-frame messages to our
// ROUTER, which echoes them back.
func echoWithLibzmqDealer(t *testing.T, cfg *zmtp.Config, keys ...string) {
	py := libzmqPython(t)
	router, ep := listen(t, cfg, zmq4.NewRouter)
	go func() {
		for {
			m, err := router.Recv()
			if err != nil {
				return
			}
			router.Send(m)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{peerScript, "dealer-echo", "tcp://" + ep[len("zptcp://"):]}, keys...)
	out, err := exec.CommandContext(ctx, py, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK") {
		t.Fatalf("libzmq dealer: %v\n%s", err, out)
	}
}

// libzmqRouter starts a libzmq ROUTER echo server and returns its endpoint.
func libzmqRouter(t *testing.T, keys ...string) string {
	py := libzmqPython(t)
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{peerScript, "router-echo", "tcp://127.0.0.1:*"}, keys...)
	cmd := exec.CommandContext(ctx, py, args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("libzmq router did not start: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestInteropNullLibzmqDealer(t *testing.T) {
	echoWithLibzmqDealer(t, &zmtp.Config{SocketType: "ROUTER", OnFull: zmtp.Disconnect})
}

func TestInteropNullLibzmqRouter(t *testing.T) {
	ep := libzmqRouter(t)
	zep, _ := zmtp.Endpoint(ep)
	d := dial(t, &zmtp.Config{SocketType: "DEALER"}, zmq4.NewDealer, zep)
	payload := strings.Repeat("z", 70000)
	if err := d.Send(zmq4.NewMsgFrom([]byte("a"), []byte(payload))); err != nil {
		t.Fatal(err)
	}
	m, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Frames) != 2 || string(m.Frames[0]) != "a" || string(m.Frames[1]) != payload {
		t.Fatalf("echo mismatch: %d frames", len(m.Frames))
	}
}
