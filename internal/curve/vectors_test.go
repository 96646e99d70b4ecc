package curve

import (
	"bytes"
	"testing"

	"github.com/zpipes/zp/internal/zmtp"
)

// TestKnownAnswer runs a deterministic handshake and compares every command
// body with the vectors that testdata/gen_vectors.py computed independently
// with PyNaCl (libsodium).
func TestKnownAnswer(t *testing.T) {
	f := newFixture(t)
	v := f.v
	if !bytes.Equal(f.client.Public[:], v.ClientPublic) || !bytes.Equal(f.server.Public[:], v.ServerPublic) {
		t.Fatal("public keys derived from the secret keys differ from libsodium's")
	}
	cr, sr, crw, srw := handshake(t, f.clientMechanism, f.serverMechanism, f.cmeta, f.smeta)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("handshake: client %v, server %v", cr.err, sr.err)
	}
	check := func(who string, got []command, want []command) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s sent %d commands, want %d", who, len(got), len(want))
		}
		for i := range want {
			if got[i].name != want[i].name {
				t.Errorf("%s command %d is %s, want %s", who, i, got[i].name, want[i].name)
			}
			if !bytes.Equal(got[i].body, want[i].body) {
				t.Errorf("%s %s body differs from the vector:\n got %x\nwant %x", who, want[i].name, got[i].body, want[i].body)
			}
		}
	}
	check("client", crw.sent(), []command{{cmdHello, v.Hello}, {cmdInitiate, v.Initiate}})
	check("server", srw.sent(), []command{{cmdWelcome, v.Welcome}, {cmdReady, v.Ready}})
	if n := f.clientMechanism.Rand.(*bytes.Reader).Len(); n != 0 {
		t.Errorf("client left %d random octets unread", n)
	}
	if n := f.serverMechanism.Rand.(*bytes.Reader).Len(); n != 0 {
		t.Errorf("server left %d random octets unread", n)
	}
	if len(v.Hello)+6 != 200 || len(v.Welcome)+8 != 168 {
		t.Errorf("vector sizes: HELLO %d, WELCOME %d", len(v.Hello)+6, len(v.Welcome)+8)
	}

	// Peers and metadata.
	if !bytes.Equal(sr.peer.Key, f.client.Public[:]) || !bytes.Equal(cr.peer.Key, f.server.Public[:]) {
		t.Error("Peer.Key is not the peer's long-term key")
	}
	if !bytes.Equal(sr.peer.Meta.AppendEncode(nil), v.ClientMetadata) {
		t.Errorf("server got client metadata %q", sr.peer.Meta)
	}
	if !bytes.Equal(cr.peer.Meta.AppendEncode(nil), v.ServerMetadata) {
		t.Errorf("client got server metadata %q", cr.peer.Meta)
	}

	// MESSAGE, both ways, continuing the handshake's short nonces.
	for _, m := range v.Messages {
		from, to := cr.peer.Cipher, sr.peer.Cipher
		if m.Dir == "server" {
			from, to = to, from
		}
		got := from.Seal(nil, m.Flags, m.Frame)
		if !bytes.Equal(got, m.Body) {
			t.Errorf("%s MESSAGE nonce %d:\n got %x\nwant %x", m.Dir, m.Nonce, got, m.Body)
		}
		if len(got) != len(m.Frame)+from.Overhead() {
			t.Errorf("Overhead %d does not match a sealed body of %d for a frame of %d", from.Overhead(), len(got), len(m.Frame))
		}
		flags, frame, err := to.Open(nil, m.Body)
		if err != nil || flags != m.Flags || !bytes.Equal(frame, m.Frame) {
			t.Errorf("%s MESSAGE nonce %d: Open = %d, %q, %v; want %d, %q", m.Dir, m.Nonce, flags, frame, err, m.Flags, m.Frame)
		}
	}
}

// TestKnownAnswerError checks the ERROR body the server sends when
// Authorize refuses, and that the client reports it.
func TestKnownAnswerError(t *testing.T) {
	f := newFixture(t)
	f.serverMechanism.Authorize = func(PublicKey) error { return ErrNotAuthorised }
	cr, sr, _, srw := handshake(t, f.clientMechanism, f.serverMechanism, f.cmeta, f.smeta)
	wantReason(t, "server", sr.err, zmtp.ReasonUnauthorised)
	wantReason(t, "client", cr.err, zmtp.ReasonRejected)
	sent := srw.sent()
	last := sent[len(sent)-1]
	if last.name != cmdError || !bytes.Equal(last.body, f.v.Error400) {
		t.Fatalf("server sent %s %x, want ERROR %x", last.name, last.body, f.v.Error400)
	}
}
