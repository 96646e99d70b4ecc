package curve

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/zpipes/zp/internal/zmtp"
)

var (
	dealerMeta = zmtp.Metadata{{Name: zmtp.PropSocketType, Value: []byte("DEALER")}, {Name: zmtp.PropIdentity, Value: []byte("me")}}
	routerMeta = zmtp.Metadata{{Name: zmtp.PropSocketType, Value: []byte("ROUTER")}}
)

func pair(t testing.TB) (*Client, *Server) {
	ck, sk := mustKeyPair(t), mustKeyPair(t)
	return &Client{Key: ck, ServerKey: sk.Public},
		&Server{Key: sk, Authorize: AllowKeys(ck.Public)}
}

func connected(t testing.TB) (client, server *zmtp.Peer) {
	t.Helper()
	c, s := pair(t)
	cr, sr, _, _ := handshake(t, c, s, dealerMeta, routerMeta)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("handshake: client %v, server %v", cr.err, sr.err)
	}
	return cr.peer, sr.peer
}

func TestHandshake(t *testing.T) {
	c, s := pair(t)
	if c.Name() != "CURVE" || s.Name() != "CURVE" {
		t.Fatal("Name is not CURVE")
	}
	cr, sr, crw, srw := handshake(t, c, s, dealerMeta, routerMeta)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("handshake: client %v, server %v", cr.err, sr.err)
	}
	if !bytes.Equal(sr.peer.Key, c.Key.Public[:]) {
		t.Error("server: Peer.Key is not the client's key")
	}
	if !bytes.Equal(cr.peer.Key, s.Key.Public[:]) {
		t.Error("client: Peer.Key is not the server's key")
	}
	if v, _ := sr.peer.Meta.Get("socket-type"); string(v) != "DEALER" {
		t.Errorf("server got Socket-Type %q", v)
	}
	if v, _ := sr.peer.Meta.Get(zmtp.PropIdentity); string(v) != "me" {
		t.Errorf("server got Identity %q", v)
	}
	if v, _ := cr.peer.Meta.Get(zmtp.PropSocketType); string(v) != "ROUTER" {
		t.Errorf("client got Socket-Type %q", v)
	}
	// Sizes on the wire (body + name + length octet), as RFC 26 and libzmq.
	for _, c := range append(crw.sent(), srw.sent()...) {
		size := len(c.body) + len(c.name) + 1
		switch c.name {
		case cmdHello:
			if size != 200 {
				t.Errorf("HELLO is %d octets", size)
			}
		case cmdWelcome:
			if size != 168 {
				t.Errorf("WELCOME is %d octets", size)
			}
		case cmdInitiate:
			if want := 257 + len(dealerMeta.AppendEncode(nil)); size != want {
				t.Errorf("INITIATE is %d octets, want %d", size, want)
			}
		case cmdReady:
			if want := 30 + len(routerMeta.AppendEncode(nil)); size != want {
				t.Errorf("READY is %d octets, want %d", size, want)
			}
		}
	}
}

func TestHandshakeNoMetadata(t *testing.T) {
	c, s := pair(t)
	cr, sr, _, _ := handshake(t, c, s, nil, nil)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("handshake: client %v, server %v", cr.err, sr.err)
	}
	if len(cr.peer.Meta) != 0 || len(sr.peer.Meta) != 0 {
		t.Fatal("metadata appeared from nowhere")
	}
}

func TestFramesBothWays(t *testing.T) {
	cp, sp := connected(t)
	frames := []struct {
		flags byte
		data  []byte
	}{
		{zmtp.FlagMore, []byte("part one")},
		{zmtp.FlagMore, nil},
		{0, []byte("last part")},
		{zmtp.FlagCommand, []byte("\x04PING\x00\x01")},
		{zmtp.FlagMore | zmtp.FlagCommand, bytes.Repeat([]byte{0xa5}, 70000)},
		{0, bytes.Repeat([]byte("x"), 31)}, // flags + frame = one Salsa20 half block
		{0, bytes.Repeat([]byte("y"), 32)},
	}
	for _, dir := range []struct {
		name     string
		from, to zmtp.Cipher
	}{{"client->server", cp.Cipher, sp.Cipher}, {"server->client", sp.Cipher, cp.Cipher}} {
		for i, f := range frames {
			body := dir.from.Seal([]byte("junk"), f.flags, f.data)
			if string(body[:4]) != "junk" || string(body[4:12]) != "\x07MESSAGE" {
				t.Fatalf("%s: Seal did not append a MESSAGE body", dir.name)
			}
			body = body[4:]
			if len(body) != len(f.data)+Overhead {
				t.Fatalf("%s: body %d octets for a %d-octet frame", dir.name, len(body), len(f.data))
			}
			// Open into an empty and into a non-empty dst.
			dst := []byte{}
			if i%2 == 1 {
				dst = []byte("hdr")
			}
			flags, out, err := dir.to.Open(dst, body)
			if err != nil {
				t.Fatalf("%s frame %d: %v", dir.name, i, err)
			}
			if flags != f.flags || !bytes.Equal(out[len(dst):], f.data) || string(out[:len(dst)]) != string(dst) {
				t.Fatalf("%s frame %d: got flags %d, %d octets", dir.name, i, flags, len(out))
			}
		}
	}
}

// TestVerifyDecrypt: zmtp's reader authenticates a MESSAGE first (Verify)
// and decrypts its frame later, in pieces, into zmq4's buffer (Decrypt).
func TestVerifyDecrypt(t *testing.T) {
	cp, sp := connected(t)
	from, to := cp.Cipher, sp.Cipher.(zmtp.Decrypter)
	for _, n := range []int{0, 1, 31, 32, 33, 63, 64, 65, 1000, 70000, 1 << 20} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i*7 + n)
		}
		body := from.Seal(nil, zmtp.FlagMore, data)
		flags, size, err := to.Verify(body)
		if err != nil || flags != zmtp.FlagMore || size != n {
			t.Fatalf("%d octets: Verify = %d, %d, %v", n, flags, size, err)
		}
		got := make([]byte, n)
		for off := 0; off < n; {
			k := min(n-off, 1+off*3) // pieces of growing, odd sizes
			to.Decrypt(got[off:off+k], body, off)
			off += k
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%d octets: Decrypt differs at %d", n, firstDiff(got, data))
		}
		if _, _, err := to.Verify(body); !errors.Is(err, ErrMessageReplay) {
			t.Fatalf("%d octets: replayed MESSAGE: %v", n, err)
		}
	}
	body := from.Seal(nil, 0, []byte("tampered"))
	body[len(body)-1] ^= 1
	if _, _, err := to.Verify(body); !errors.Is(err, ErrMessageAuth) {
		t.Fatalf("tampered MESSAGE: %v", err)
	}
	body = from.Seal(nil, 0, []byte("after"))
	if _, _, err := to.Verify(body[:Overhead-1]); !errors.Is(err, ErrMessageMalformed) {
		t.Fatalf("short MESSAGE: %v", err)
	}
	if f, n, err := to.Verify(body); err != nil || f != 0 || n != 5 {
		t.Fatalf("MESSAGE after a forged one: %d, %d, %v", f, n, err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestNonceSequence(t *testing.T) {
	cp, sp := connected(t)
	nonceOf := func(body []byte) uint64 { return binary.BigEndian.Uint64(body[8:16]) }
	for i := range uint64(3) {
		if n := nonceOf(cp.Cipher.Seal(nil, 0, nil)); n != 3+i {
			t.Errorf("client MESSAGE %d has nonce %d, want %d (HELLO 1, INITIATE 2)", i, n, 3+i)
		}
		if n := nonceOf(sp.Cipher.Seal(nil, 0, nil)); n != 2+i {
			t.Errorf("server MESSAGE %d has nonce %d, want %d (READY 1)", i, n, 2+i)
		}
	}
}

func TestReplayAndReorder(t *testing.T) {
	cp, sp := connected(t)
	m1 := cp.Cipher.Seal(nil, 0, []byte("one"))
	m2 := cp.Cipher.Seal(nil, 0, []byte("two"))
	m3 := cp.Cipher.Seal(nil, 0, []byte("three"))
	if _, _, err := sp.Cipher.Open(nil, m2); err != nil { // skipping is allowed
		t.Fatal(err)
	}
	if _, _, err := sp.Cipher.Open(nil, m1); !errors.Is(err, ErrMessageReplay) {
		t.Fatalf("reordered MESSAGE: err = %v, want ErrMessageReplay", err)
	}
	if _, _, err := sp.Cipher.Open(nil, m2); !errors.Is(err, ErrMessageReplay) {
		t.Fatalf("replayed MESSAGE: err = %v, want ErrMessageReplay", err)
	}
	if _, f, err := sp.Cipher.Open(nil, m3); err != nil || string(f) != "three" {
		t.Fatalf("next MESSAGE after a replay: %q, %v", f, err)
	}

	// A forged nonce: the box does not open, and does not advance the
	// counter.
	m4 := cp.Cipher.Seal(nil, 0, []byte("four"))
	forged := bytes.Clone(m4)
	binary.BigEndian.PutUint64(forged[8:], 1<<62)
	if _, _, err := sp.Cipher.Open(nil, forged); !errors.Is(err, ErrMessageAuth) {
		t.Fatalf("forged nonce: err = %v, want ErrMessageAuth", err)
	}
	if _, f, err := sp.Cipher.Open(nil, m4); err != nil || string(f) != "four" {
		t.Fatalf("MESSAGE after a forged one: %q, %v", f, err)
	}

	// The server's own MESSAGE reflected back at it does not open: the
	// directions use different nonce prefixes.
	refl := sp.Cipher.Seal(nil, 0, []byte("mirror"))
	binary.BigEndian.PutUint64(refl[8:], 1<<63) // beat the replay check
	if _, _, err := sp.Cipher.Open(nil, refl); err == nil {
		t.Fatal("a reflected MESSAGE opened")
	}
	// Nor does a handshake nonce the server already saw (INITIATE's 2).
	_, sp2 := connected(t)
	early := bytes.Clone(m1)
	binary.BigEndian.PutUint64(early[8:], 2)
	if _, _, err := sp2.Cipher.Open(nil, early); !errors.Is(err, ErrMessageReplay) {
		t.Fatalf("MESSAGE with the INITIATE nonce: err = %v, want ErrMessageReplay", err)
	}
}

func TestOpenMalformed(t *testing.T) {
	cp, sp := connected(t)
	good := cp.Cipher.Seal(nil, zmtp.FlagMore, []byte("payload"))
	cases := map[string][]byte{
		"empty":     nil,
		"short":     good[:Overhead-1],
		"name":      append([]byte("\x07MASSAGE"), good[8:]...),
		"truncated": good[:len(good)-1],
		"extended":  append(bytes.Clone(good), 0),
		"tag":       flip(good, 16),
		"data":      flip(good, len(good)-1),
	}
	for name, body := range cases {
		dst := []byte("keep")
		_, out, err := sp.Cipher.Open(dst, body)
		if err == nil {
			t.Errorf("%s: Open succeeded", name)
		}
		if string(out) != "keep" {
			t.Errorf("%s: dst changed to %q", name, out)
		}
	}
	if _, f, err := sp.Cipher.Open(nil, good); err != nil || string(f) != "payload" {
		t.Fatalf("good MESSAGE after bad ones: %q %v", f, err)
	}
}

// TestReservedFlags: a box whose flags octet has reserved bits is refused
// (RFC 26: they MUST be zero); Seal never sets them.
func TestReservedFlags(t *testing.T) {
	cp, sp := connected(t)
	c := cp.Cipher.(*cipher)
	// Seal drops reserved bits.
	body := c.Seal(nil, 0xff, []byte("x"))
	flags, _, err := sp.Cipher.Open(nil, body)
	if err != nil || flags != zmtp.FlagMore|zmtp.FlagCommand {
		t.Fatalf("flags %#x, %v", flags, err)
	}
	// Hand-made box with a reserved bit.
	n := c.s.next
	c.s.next++
	nonce := shortNonce(prefixMessageC, n)
	bad := binary.BigEndian.AppendUint64([]byte(messageName), n)
	bad = seal(bad, []byte{0x04, 'x'}, nonce, &c.s.key)
	for _, dst := range [][]byte{nil, []byte("h")} {
		if _, _, err := sp.Cipher.Open(dst, bad); !errors.Is(err, ErrMessageMalformed) {
			t.Fatalf("reserved flag: err = %v", err)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// TestOpenAliasing: Open into the buffer that holds the body, and Seal a
// frame that sits in dst's spare capacity.
func TestOpenAliasing(t *testing.T) {
	cp, sp := connected(t)
	buf := make([]byte, 0, 4096)
	body := cp.Cipher.Seal(buf, zmtp.FlagMore, []byte("aliased frame"))
	flags, out, err := sp.Cipher.Open(body[:0], body)
	if err != nil || flags != zmtp.FlagMore || string(out) != "aliased frame" {
		t.Fatalf("Open(body[:0], body) = %d %q %v", flags, out, err)
	}
	body = cp.Cipher.Seal(buf[:0], 0, []byte("second"))
	_, out, err = sp.Cipher.Open(body[:1], body)
	if err != nil || string(out) != "\x07second" {
		t.Fatalf("Open(body[:1], body) = %q %v", out, err)
	}
	// Seal where frame aliases dst's spare capacity.
	buf = buf[:0]
	frame := append(buf[100:100], "frame in dst's capacity"...)
	body = sp.Cipher.Seal(buf, 0, frame)
	if _, out, err := cp.Cipher.Open(nil, body); err != nil || string(out) != "frame in dst's capacity" {
		t.Fatalf("aliased Seal: %q %v", out, err)
	}
}

func TestCipherNoAlloc(t *testing.T) {
	cp, sp := connected(t)
	frame := make([]byte, 64<<10)
	sealBuf := make([]byte, 0, len(frame)+Overhead)
	openBuf := make([]byte, 0, len(frame)+1)
	hdrBuf := make([]byte, 0, len(frame)+9)
	cp.Cipher.Seal(sealBuf, 0, frame) // warm up the scratch buffer
	if a := testing.AllocsPerRun(50, func() { cp.Cipher.Seal(sealBuf, zmtp.FlagMore, frame) }); a != 0 {
		t.Errorf("Seal allocates %v times", a)
	}
	// Each Open needs a fresh nonce: seal a batch first.
	bodies := make([][]byte, 0, 120)
	for range 120 {
		bodies = append(bodies, cp.Cipher.Seal(nil, 0, frame[:1000]))
	}
	i := 0
	if a := testing.AllocsPerRun(50, func() {
		if _, _, err := sp.Cipher.Open(openBuf, bodies[i]); err != nil {
			t.Fatal(err)
		}
		i++
	}); a != 0 {
		t.Errorf("Open(empty dst) allocates %v times", a)
	}
	if a := testing.AllocsPerRun(50, func() {
		if _, _, err := sp.Cipher.Open(append(hdrBuf[:0], 1, 2), bodies[i]); err != nil {
			t.Fatal(err)
		}
		i++
	}); a != 0 {
		t.Errorf("Open(header dst) allocates %v times", a)
	}
}

// TestCipherConcurrent: Seal and Open run on different goroutines, both
// directions at once (run with -race).
func TestCipherConcurrent(t *testing.T) {
	cp, sp := connected(t)
	const n = 500
	var wg sync.WaitGroup
	pipe := func(from, to zmtp.Cipher) {
		ch := make(chan []byte, 16)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range n {
				ch <- from.Seal(nil, byte(i&1), fmt.Appendf(nil, "frame %d", i))
			}
			close(ch)
		}()
		go func() {
			defer wg.Done()
			i := 0
			for body := range ch {
				flags, f, err := to.Open(nil, body)
				if err != nil || flags != byte(i&1) || string(f) != fmt.Sprintf("frame %d", i) {
					t.Errorf("frame %d: %q %v", i, f, err)
					return
				}
				i++
			}
		}()
	}
	pipe(cp.Cipher, sp.Cipher)
	pipe(sp.Cipher, cp.Cipher)
	wg.Wait()
}

// TestWrongServerKey: the client pins a key the server does not have. Our
// server cannot open HELLO and drops the connection (as libzmq does); a
// server that answers anyway with a WELCOME from another key fails the
// client with ReasonCrypto.
func TestWrongServerKey(t *testing.T) {
	c, s := pair(t)
	c.ServerKey = mustKeyPair(t).Public
	cr, sr, _, srw := handshake(t, c, s, dealerMeta, routerMeta)
	wantReason(t, "server", sr.err, zmtp.ReasonCrypto)
	wantReason(t, "client", cr.err, zmtp.ReasonIO)
	if len(srw.sent()) != 0 {
		t.Fatalf("server answered a HELLO it could not open: %v", srw.sent())
	}

	// An impostor with its own key S2 answers the HELLO meant for S.
	c, _ = pair(t)
	impostor := mustKeyPair(t)
	crw, irw := pipeRW()
	go func() {
		defer irw.close()
		_, body, err := irw.ReadCommand()
		if err != nil {
			return
		}
		var cn [32]byte
		copy(cn[:], body[74:106])
		k, _ := precompute(&cn, (*[32]byte)(&impostor.Secret))
		var cookie [cookieLen]byte
		var long [16]byte
		irw.WriteCommand(cmdWelcome, makeWelcome(nil, &k, &long, &[32]byte{9}, &cookie))
	}()
	_, err := c.Handshake(context.Background(), crw, false, dealerMeta)
	crw.close()
	wantReason(t, "client", err, zmtp.ReasonCrypto)
}

func TestUnauthorised(t *testing.T) {
	c, s := pair(t)
	s.Authorize = AllowKeys(mustKeyPair(t).Public) // someone else
	cr, sr, _, srw := handshake(t, c, s, dealerMeta, routerMeta)
	wantReason(t, "server", sr.err, zmtp.ReasonUnauthorised)
	wantReason(t, "client", cr.err, zmtp.ReasonRejected)
	if !errors.Is(sr.err, ErrNotAuthorised) {
		t.Errorf("server error %v does not wrap Authorize's", sr.err)
	}
	if !strings.Contains(sr.err.Error(), c.Key.Public.Fingerprint()) {
		t.Errorf("server error %v does not name the client key", sr.err)
	}
	var pe *zmtp.PeerError
	if !errors.As(cr.err, &pe) || pe.Reason != "400" {
		t.Fatalf("client error %v: want a PeerError with reason 400", cr.err)
	}
	sent := srw.sent()
	if last := sent[len(sent)-1]; last.name != cmdError || string(last.body) != "\x03400" {
		t.Fatalf("server sent %s %q", last.name, last.body)
	}

	// A nil Authorize refuses everyone.
	s.Authorize = nil
	cr, sr, _, _ = handshake(t, c, s, dealerMeta, routerMeta)
	wantReason(t, "server", sr.err, zmtp.ReasonUnauthorised)
	wantReason(t, "client", cr.err, zmtp.ReasonRejected)

	// An Authorize that accepts everyone.
	s.Authorize = func(PublicKey) error { return nil }
	cr, sr, _, _ = handshake(t, c, s, dealerMeta, routerMeta)
	if cr.err != nil || sr.err != nil {
		t.Fatalf("accept-all: client %v, server %v", cr.err, sr.err)
	}
}

// TestServerBadCommands feeds the server malformed HELLO and INITIATE
// commands: each fails cleanly with the right reason, and the server sends
// nothing after a bad INITIATE (only ERROR for an unauthorised key).
func TestServerBadCommands(t *testing.T) {
	f := newFixture(t)
	v := f.v
	hello, initiate := v.Hello, v.Initiate
	mut := func(b []byte, i int) []byte { return flip(b, i) }
	cases := []struct {
		name   string
		script []command
		reason string
	}{
		{"no command", nil, zmtp.ReasonIO},
		{"not HELLO", []command{{cmdInitiate, initiate}}, zmtp.ReasonProtocol},
		{"ERROR from client", []command{{cmdError, []byte("\x03400")}}, zmtp.ReasonProtocol},
		{"empty HELLO", []command{{cmdHello, nil}}, zmtp.ReasonProtocol},
		{"short HELLO", []command{{cmdHello, hello[:len(hello)-1]}}, zmtp.ReasonProtocol},
		{"long HELLO", []command{{cmdHello, append(bytes.Clone(hello), 0)}}, zmtp.ReasonProtocol},
		{"HELLO version 2", []command{{cmdHello, mut(hello, 0)}}, zmtp.ReasonProtocol},
		{"HELLO version 1.1", []command{{cmdHello, mut(hello, 1)}}, zmtp.ReasonProtocol},
		{"HELLO padding", []command{{cmdHello, mut(hello, 40)}}, zmtp.ReasonProtocol},
		{"HELLO C'", []command{{cmdHello, mut(hello, 80)}}, zmtp.ReasonCrypto},
		{"HELLO low-order C'", []command{{cmdHello, lowOrderHello(hello)}}, zmtp.ReasonCrypto},
		// The same C' with its top bit set: X25519 ignores that bit.
		{"HELLO C' not canonical", []command{{cmdHello, nonCanonicalHello(hello)}}, zmtp.ReasonCrypto},
		{"HELLO nonce", []command{{cmdHello, mut(hello, 110)}}, zmtp.ReasonCrypto},
		{"HELLO box", []command{{cmdHello, mut(hello, 150)}}, zmtp.ReasonCrypto},
		{"garbage HELLO", []command{{cmdHello, bytes.Repeat([]byte{0x5a}, helloBodyLen)}}, zmtp.ReasonProtocol},
		{"no INITIATE", []command{{cmdHello, hello}}, zmtp.ReasonIO},
		{"HELLO twice", []command{{cmdHello, hello}, {cmdHello, hello}}, zmtp.ReasonProtocol},
		{"empty INITIATE", []command{{cmdHello, hello}, {cmdInitiate, nil}}, zmtp.ReasonProtocol},
		{"short INITIATE", []command{{cmdHello, hello}, {cmdInitiate, initiate[:initiateBodyMin-1]}}, zmtp.ReasonProtocol},
		{"truncated INITIATE", []command{{cmdHello, hello}, {cmdInitiate, initiate[:len(initiate)-1]}}, zmtp.ReasonCrypto},
		{"INITIATE cookie nonce", []command{{cmdHello, hello}, {cmdInitiate, mut(initiate, 3)}}, zmtp.ReasonCrypto},
		{"INITIATE cookie", []command{{cmdHello, hello}, {cmdInitiate, mut(initiate, 50)}}, zmtp.ReasonCrypto},
		{"INITIATE nonce", []command{{cmdHello, hello}, {cmdInitiate, mut(initiate, 100)}}, zmtp.ReasonCrypto},
		{"INITIATE box", []command{{cmdHello, hello}, {cmdInitiate, mut(initiate, 200)}}, zmtp.ReasonCrypto},
		{"garbage INITIATE", []command{{cmdHello, hello}, {cmdInitiate, bytes.Repeat([]byte{0xa5}, 300)}}, zmtp.ReasonCrypto},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			rw := &scriptRW{script: tc.script}
			_, err := f.serverMechanism.Handshake(context.Background(), rw, true, f.smeta)
			wantReason(t, "server", err, tc.reason)
			for _, c := range rw.written {
				if c.name != cmdWelcome {
					t.Errorf("server sent %s", c.name)
				}
			}
		})
	}
}

// nonCanonicalHello sets the top bit of C', which X25519 ignores.
func nonCanonicalHello(hello []byte) []byte {
	h := bytes.Clone(hello)
	h[105] |= 0x80
	return h
}

// lowOrderHello replaces C' with a low-order point (here 0).
func lowOrderHello(hello []byte) []byte {
	h := bytes.Clone(hello)
	clear(h[74:106])
	return h
}

// TestServerBadVouch: INITIATE boxes that open but carry a bad vouch: for
// another transient key, for another server, or from a key other than C.
func TestServerBadVouch(t *testing.T) {
	f := newFixture(t)
	var cookie [cookieLen]byte
	copy(cookie[:], f.v.Initiate[:cookieLen])
	var snPublic [32]byte
	copy(snPublic[:], f.v.ServerTransientPublic)
	var cnPublic [32]byte
	copy(cnPublic[:], f.v.ClientTransientPublic)
	other := mustKeyPair(t)
	build := func(client *PublicKey, vouchSecret *SecretKey, cn *[32]byte, server *PublicKey) []byte {
		vk, err := precompute(&snPublic, (*[32]byte)(vouchSecret))
		if err != nil {
			t.Fatal(err)
		}
		return makeInitiate(nil, &initiateParams{
			cookie: &cookie, nonce: 2, sessionKey: &f.sessionKey, vouchKey: &vk,
			vouchLong: &[16]byte{1}, client: client, cnClient: cn, server: server,
		})
	}
	good := build(&f.client.Public, &f.client.Secret, &cnPublic, &f.server.Public)
	otherCn := [32]byte{1, 2, 3}
	cases := map[string][]byte{
		"other transient key":  build(&f.client.Public, &f.client.Secret, &otherCn, &f.server.Public),
		"other server":         build(&f.client.Public, &f.client.Secret, &cnPublic, &other.Public),
		"vouch by another key": build(&f.client.Public, &other.Secret, &cnPublic, &f.server.Public),
		"claims another key":   build(&other.Public, &f.client.Secret, &cnPublic, &f.server.Public),
	}
	for name, initiate := range cases {
		f := newFixture(t)
		rw := &scriptRW{script: []command{{cmdHello, f.v.Hello}, {cmdInitiate, initiate}}}
		_, err := f.serverMechanism.Handshake(context.Background(), rw, true, nil)
		wantReason(t, name, err, zmtp.ReasonCrypto)
	}
	f = newFixture(t)
	rw := &scriptRW{script: []command{{cmdHello, f.v.Hello}, {cmdInitiate, good}}}
	if _, err := f.serverMechanism.Handshake(context.Background(), rw, true, nil); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// TestCookieIsPerHandshake: a cookie (and INITIATE) from one handshake is
// refused by another, even with the same server key.
func TestCookieIsPerHandshake(t *testing.T) {
	f := newFixture(t)
	s := &Server{Key: f.server, Authorize: AllowKeys(f.client.Public)} // fresh randomness
	rw := &scriptRW{script: []command{{cmdHello, f.v.Hello}, {cmdInitiate, f.v.Initiate}}}
	_, err := s.Handshake(context.Background(), rw, true, nil)
	wantReason(t, "server", err, zmtp.ReasonCrypto)
	if !strings.Contains(err.Error(), "cookie") {
		t.Fatalf("error %v does not blame the cookie", err)
	}
}

// TestClientBadCommands feeds the client malformed WELCOME, READY and
// ERROR commands.
func TestClientBadCommands(t *testing.T) {
	f := newFixture(t)
	v := f.v
	cases := []struct {
		name   string
		script []command
		reason string
	}{
		{"no WELCOME", nil, zmtp.ReasonIO},
		{"READY first", []command{{cmdReady, v.Ready}}, zmtp.ReasonProtocol},
		{"empty WELCOME", []command{{cmdWelcome, nil}}, zmtp.ReasonProtocol},
		{"short WELCOME", []command{{cmdWelcome, v.Welcome[:len(v.Welcome)-1]}}, zmtp.ReasonProtocol},
		{"long WELCOME", []command{{cmdWelcome, append(bytes.Clone(v.Welcome), 0)}}, zmtp.ReasonProtocol},
		{"WELCOME nonce", []command{{cmdWelcome, flip(v.Welcome, 0)}}, zmtp.ReasonCrypto},
		{"WELCOME box", []command{{cmdWelcome, flip(v.Welcome, 100)}}, zmtp.ReasonCrypto},
		{"ERROR for HELLO", []command{{cmdError, []byte("\x03400")}}, zmtp.ReasonRejected},
		{"malformed ERROR", []command{{cmdError, []byte("\x05400")}}, zmtp.ReasonProtocol},
		{"empty ERROR", []command{{cmdError, nil}}, zmtp.ReasonProtocol},
		{"no READY", []command{{cmdWelcome, v.Welcome}}, zmtp.ReasonIO},
		{"WELCOME twice", []command{{cmdWelcome, v.Welcome}, {cmdWelcome, v.Welcome}}, zmtp.ReasonProtocol},
		{"short READY", []command{{cmdWelcome, v.Welcome}, {cmdReady, v.Ready[:readyBodyMin-1]}}, zmtp.ReasonProtocol},
		{"READY nonce", []command{{cmdWelcome, v.Welcome}, {cmdReady, flip(v.Ready, 7)}}, zmtp.ReasonCrypto},
		{"READY box", []command{{cmdWelcome, v.Welcome}, {cmdReady, flip(v.Ready, 20)}}, zmtp.ReasonCrypto},
		{"ERROR for INITIATE", []command{{cmdWelcome, v.Welcome}, {cmdError, []byte("\x03500")}}, zmtp.ReasonRejected},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			rw := &scriptRW{script: tc.script}
			_, err := f.clientMechanism.Handshake(context.Background(), rw, false, f.cmeta)
			wantReason(t, "client", err, tc.reason)
		})
	}
	// The unmodified script succeeds.
	f = newFixture(t)
	rw := &scriptRW{script: []command{{cmdWelcome, v.Welcome}, {cmdReady, v.Ready}}}
	if _, err := f.clientMechanism.Handshake(context.Background(), rw, false, f.cmeta); err != nil {
		t.Fatalf("control: %v", err)
	}
}

// TestReadyBadMetadata: a READY box that opens but holds malformed
// metadata.
func TestReadyBadMetadata(t *testing.T) {
	f := newFixture(t)
	ready := makeReady(nil, 1, &f.sessionKey, []byte{0x05, 'a'})
	rw := &scriptRW{script: []command{{cmdWelcome, f.v.Welcome}, {cmdReady, ready}}}
	_, err := f.clientMechanism.Handshake(context.Background(), rw, false, f.cmeta)
	wantReason(t, "client", err, zmtp.ReasonProtocol)
}

func TestErrorReasonSanitised(t *testing.T) {
	pe, err := parseError([]byte("\x06no\x00\n\xffx"))
	if err != nil {
		t.Fatal(err)
	}
	if pe.Reason != "no????x" && pe.Reason != "no???x" {
		t.Fatalf("reason %q", pe.Reason)
	}
	if b := makeError(strings.Repeat("x", 300)); len(b) != 256 || b[0] != 255 {
		t.Fatalf("makeError of 300 octets: %d octets, length %d", len(b), b[0])
	}
}

func TestHandshakeConfig(t *testing.T) {
	ctx := context.Background()
	c, s := pair(t)
	if _, err := c.Handshake(ctx, &scriptRW{}, true, nil); reasonOf(err) != zmtp.ReasonMechanism {
		t.Errorf("client as server: %v", err)
	}
	if _, err := s.Handshake(ctx, &scriptRW{}, false, nil); reasonOf(err) != zmtp.ReasonMechanism {
		t.Errorf("server as client: %v", err)
	}
	if _, err := (&Client{Key: c.Key}).Handshake(ctx, &scriptRW{}, false, nil); reasonOf(err) != zmtp.ReasonServerKey {
		t.Errorf("no server key: %v", err)
	}
	if _, err := (&Client{ServerKey: s.Key.Public}).Handshake(ctx, &scriptRW{}, false, nil); reasonOf(err) != zmtp.ReasonMechanism {
		t.Errorf("no client key: %v", err)
	}
	if _, err := (&Server{}).Handshake(ctx, &scriptRW{}, true, nil); reasonOf(err) != zmtp.ReasonMechanism {
		t.Errorf("no server key pair: %v", err)
	}
	if _, err := (&Client{Key: c.Key, ServerKey: PublicKey{}}).Handshake(ctx, &scriptRW{}, false, nil); err == nil {
		t.Error("zero server key accepted")
	}
	// A low-order server key is refused before anything is sent.
	rw := &scriptRW{}
	if _, err := (&Client{Key: c.Key, ServerKey: PublicKey{1}}).Handshake(ctx, rw, false, nil); reasonOf(err) != zmtp.ReasonServerKey || len(rw.written) != 0 {
		t.Errorf("low-order server key: %v, sent %d", err, len(rw.written))
	}
	// A failing Rand.
	bad := &Client{Key: c.Key, ServerKey: s.Key.Public, Rand: bytes.NewReader(nil)}
	if _, err := bad.Handshake(ctx, &scriptRW{}, false, nil); err == nil {
		t.Error("empty Rand accepted")
	}
}

func TestHandshakeContext(t *testing.T) {
	c, s := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rw := &scriptRW{}
	if _, err := c.Handshake(ctx, rw, false, nil); err == nil || len(rw.written) != 0 {
		t.Errorf("client with a cancelled context: %v, sent %d", err, len(rw.written))
	}
	if _, err := s.Handshake(ctx, &scriptRW{}, true, nil); err == nil {
		t.Error("server with a cancelled context succeeded")
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 0)
	defer dcancel()
	<-dctx.Done()
	if _, err := c.Handshake(dctx, &scriptRW{}, false, nil); reasonOf(err) != zmtp.ReasonTimeout {
		t.Errorf("expired context: %v, want reason timeout", err)
	}
}
