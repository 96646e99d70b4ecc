package curve

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/zpipes/zp/internal/zmtp"
)

// command is one handshake command as zmtp.CommandRW carries it.
type command struct {
	name string
	body []byte
}

// memRW is one end of an in-memory command pipe.
type memRW struct {
	in       <-chan command
	out      chan<- command
	done     chan struct{} // closed when this end finishes
	peerDone <-chan struct{}
	once     sync.Once

	mu      sync.Mutex
	written []command
}

// pipeRW returns the two ends of an in-memory command pipe.
func pipeRW() (a, b *memRW) {
	ab := make(chan command, 8)
	ba := make(chan command, 8)
	a = &memRW{in: ba, out: ab, done: make(chan struct{})}
	b = &memRW{in: ab, out: ba, done: make(chan struct{})}
	a.peerDone, b.peerDone = b.done, a.done
	return a, b
}

func (m *memRW) close() { m.once.Do(func() { close(m.done) }) }

func (m *memRW) WriteCommand(name string, body []byte) error {
	c := command{name, bytes.Clone(body)}
	select {
	case <-m.peerDone:
		return io.ErrClosedPipe
	default:
	}
	m.mu.Lock()
	m.written = append(m.written, c)
	m.mu.Unlock()
	select {
	case m.out <- c:
		return nil
	case <-m.peerDone:
		return io.ErrClosedPipe
	}
}

func (m *memRW) ReadCommand() (string, []byte, error) {
	select {
	case c := <-m.in:
		return c.name, c.body, nil
	case <-m.peerDone:
		select { // the peer may have written before it finished
		case c := <-m.in:
			return c.name, c.body, nil
		default:
			return "", nil, io.EOF
		}
	}
}

func (m *memRW) sent() []command {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]command(nil), m.written...)
}

// scriptRW plays a fixed list of commands to a mechanism and records what it
// writes.
type scriptRW struct {
	script  []command
	written []command
}

func (s *scriptRW) WriteCommand(name string, body []byte) error {
	s.written = append(s.written, command{name, bytes.Clone(body)})
	return nil
}

func (s *scriptRW) ReadCommand() (string, []byte, error) {
	if len(s.script) == 0 {
		return "", nil, io.EOF
	}
	c := s.script[0]
	s.script = s.script[1:]
	return c.name, c.body, nil
}

type result struct {
	peer *zmtp.Peer
	err  error
}

// handshake runs a client and a server mechanism against each other.
func handshake(t testing.TB, c zmtp.Mechanism, s zmtp.Mechanism, cmeta, smeta zmtp.Metadata) (cr, sr result, crw, srw *memRW) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	crw, srw = pipeRW()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer crw.close()
		cr.peer, cr.err = c.Handshake(ctx, crw, false, cmeta)
	}()
	go func() {
		defer wg.Done()
		defer srw.close()
		sr.peer, sr.err = s.Handshake(ctx, srw, true, smeta)
	}()
	wg.Wait()
	return cr, sr, crw, srw
}

func reasonOf(err error) string {
	var he *zmtp.HandshakeError
	if errors.As(err, &he) {
		return he.Reason
	}
	return ""
}

func wantReason(t testing.TB, who string, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: handshake succeeded, want failure (%s)", who, reason)
	}
	if got := reasonOf(err); got != reason {
		t.Fatalf("%s: reason %q (%v), want %q", who, got, err, reason)
	}
}

func mustKeyPair(t testing.TB) KeyPair {
	t.Helper()
	kp, err := GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// vectors is testdata/vectors.json, made by testdata/gen_vectors.py.
type vectors struct {
	ClientSecret          hexBytes        `json:"client_secret"`
	ClientPublic          hexBytes        `json:"client_public"`
	ServerSecret          hexBytes        `json:"server_secret"`
	ServerPublic          hexBytes        `json:"server_public"`
	ClientRand            hexBytes        `json:"client_rand"`
	ServerRand            hexBytes        `json:"server_rand"`
	ClientTransientPublic hexBytes        `json:"client_transient_public"`
	ServerTransientPublic hexBytes        `json:"server_transient_public"`
	ClientMetadata        hexBytes        `json:"client_metadata"`
	ServerMetadata        hexBytes        `json:"server_metadata"`
	Hello                 hexBytes        `json:"hello"`
	Welcome               hexBytes        `json:"welcome"`
	Initiate              hexBytes        `json:"initiate"`
	Ready                 hexBytes        `json:"ready"`
	Error400              hexBytes        `json:"error_400"`
	Messages              []vectorMessage `json:"messages"`
}

type vectorMessage struct {
	Dir   string   `json:"dir"` // "client" (client to server) or "server"
	Nonce uint64   `json:"nonce"`
	Flags byte     `json:"flags"`
	Frame hexBytes `json:"frame"`
	Body  hexBytes `json:"body"`
}

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// fixture is the deterministic handshake of vectors.json, with the secrets
// each decoder needs.
type fixture struct {
	v               *vectors
	client, server  KeyPair
	cnSecret        [32]byte // c'
	cookieKey       [32]byte // K
	helloKey        sharedKey
	sessionKey      sharedKey
	cmeta, smeta    zmtp.Metadata
	clientMechanism *Client
	serverMechanism *Server
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	v := loadVectors(t)
	f := &fixture{v: v}
	var err error
	if f.client, err = NewKeyPair(SecretKey(v.ClientSecret)); err != nil {
		t.Fatal(err)
	}
	if f.server, err = NewKeyPair(SecretKey(v.ServerSecret)); err != nil {
		t.Fatal(err)
	}
	copy(f.cnSecret[:], v.ClientRand[:32])
	copy(f.cookieKey[:], v.ServerRand[32:64])
	var snPublic [32]byte
	copy(snPublic[:], v.ServerTransientPublic)
	if f.helloKey, err = precompute((*[32]byte)(&f.server.Public), &f.cnSecret); err != nil {
		t.Fatal(err)
	}
	if f.sessionKey, err = precompute(&snPublic, &f.cnSecret); err != nil {
		t.Fatal(err)
	}
	if f.cmeta, err = zmtp.DecodeMetadata(v.ClientMetadata); err != nil {
		t.Fatal(err)
	}
	if f.smeta, err = zmtp.DecodeMetadata(v.ServerMetadata); err != nil {
		t.Fatal(err)
	}
	f.clientMechanism = &Client{Key: f.client, ServerKey: f.server.Public, Rand: bytes.NewReader(v.ClientRand)}
	f.serverMechanism = &Server{Key: f.server, Authorize: AllowKeys(f.client.Public), Rand: bytes.NewReader(v.ServerRand)}
	return f
}
