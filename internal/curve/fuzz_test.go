package curve

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/zpipes/zp/internal/zmtp"
)

// The fuzz targets feed each decoder of a received command with the keys of
// the deterministic handshake in testdata/vectors.json. Invariants: no panic,
// and nothing authenticates but the exact bytes the real peer sent (the
// seeds include them, so the fuzzer mutates valid commands).

var genCorpus = flag.Bool("gencorpus", false, "rewrite the seed corpora under testdata/fuzz")

func FuzzHello(f *testing.F) {
	fx := newFixture(f)
	f.Add([]byte(fx.v.Hello))
	f.Fuzz(func(t *testing.T, body []byte) {
		cn, _, err := openHello(body, &fx.server.Secret)
		if err == nil {
			if !bytes.Equal(body, fx.v.Hello) {
				t.Fatalf("forged HELLO authenticated: %x", body)
			}
			if !bytes.Equal(cn[:], fx.v.ClientTransientPublic) {
				t.Fatal("wrong C'")
			}
			return
		}
		checkReason(t, err, zmtp.ReasonProtocol, zmtp.ReasonCrypto)
	})
}

func FuzzWelcome(f *testing.F) {
	fx := newFixture(f)
	f.Add([]byte(fx.v.Welcome))
	f.Fuzz(func(t *testing.T, body []byte) {
		sn, cookie, err := openWelcome(body, &fx.helloKey)
		if err == nil {
			if !bytes.Equal(body, fx.v.Welcome) {
				t.Fatalf("forged WELCOME authenticated: %x", body)
			}
			if !bytes.Equal(sn[:], fx.v.ServerTransientPublic) || !bytes.Equal(cookie[:], fx.v.Initiate[:cookieLen]) {
				t.Fatal("wrong S' or cookie")
			}
			return
		}
		checkReason(t, err, zmtp.ReasonProtocol, zmtp.ReasonCrypto)
	})
}

func FuzzInitiate(f *testing.F) {
	fx := newFixture(f)
	f.Add([]byte(fx.v.Initiate))
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := openInitiate(body, &fx.cookieKey, &fx.server.Public)
		if err == nil {
			if !bytes.Equal(body, fx.v.Initiate) {
				t.Fatalf("forged INITIATE authenticated: %x", body)
			}
			if in.client != fx.client.Public || in.sessionKey != fx.sessionKey || in.nonce != 2 {
				t.Fatal("wrong INITIATE contents")
			}
			return
		}
		checkReason(t, err, zmtp.ReasonProtocol, zmtp.ReasonCrypto)
	})
}

func FuzzReady(f *testing.F) {
	fx := newFixture(f)
	f.Add([]byte(fx.v.Ready))
	f.Fuzz(func(t *testing.T, body []byte) {
		nonce, meta, err := openReady(body, &fx.sessionKey)
		if err == nil {
			if !bytes.Equal(body, fx.v.Ready) {
				t.Fatalf("forged READY authenticated: %x", body)
			}
			if nonce != 1 || !bytes.Equal(meta.AppendEncode(nil), fx.v.ServerMetadata) {
				t.Fatal("wrong READY contents")
			}
			return
		}
		checkReason(t, err, zmtp.ReasonProtocol, zmtp.ReasonCrypto)
	})
}

// FuzzMessage opens a MESSAGE body on the server (from the client) or on the
// client (from the server), into a dst with a prefix of dstLen octets.
func FuzzMessage(f *testing.F) {
	fx := newFixture(f)
	for _, m := range fx.v.Messages {
		f.Add([]byte(m.Body), m.Dir == "server", uint8(0))
		f.Add([]byte(m.Body), m.Dir == "server", uint8(3))
	}
	valid := map[string]vectorMessage{}
	for _, m := range fx.v.Messages {
		valid[string(m.Body)] = m
	}
	f.Fuzz(func(t *testing.T, body []byte, toClient bool, dstLen uint8) {
		// The server last saw nonce 2 (INITIATE), the client 1 (READY).
		c := newCipher(&fx.sessionKey, !toClient, 100, map[bool]uint64{false: 2, true: 1}[toClient])
		dst := bytes.Repeat([]byte{0xee}, int(dstLen))
		flags, out, err := c.Open(dst, body)
		// Verify and Decrypt (zmtp's path) agree with Open.
		c2 := newCipher(&fx.sessionKey, !toClient, 100, map[bool]uint64{false: 2, true: 1}[toClient])
		vflags, vsize, verr := c2.Verify(body)
		if (verr == nil) != (err == nil) || (err == nil && (vflags != flags || vsize != len(out)-len(dst))) {
			t.Fatalf("Verify: %d, %d, %v; Open: %d, %d, %v", vflags, vsize, verr, flags, len(out)-len(dst), err)
		}
		if verr == nil {
			frame := make([]byte, vsize)
			cut := int(dstLen) % (vsize + 1)
			c2.Decrypt(frame[:cut], body, 0)
			c2.Decrypt(frame[cut:], body, cut)
			if !bytes.Equal(frame, out[len(dst):]) {
				t.Fatal("Decrypt differs from Open")
			}
			if _, _, err := c2.Verify(body); err == nil {
				t.Fatal("Verify accepted a replayed MESSAGE")
			}
		}
		if !bytes.Equal(out[:len(dst)], bytes.Repeat([]byte{0xee}, int(dstLen))) {
			t.Fatal("Open changed dst's contents")
		}
		if err != nil {
			if len(out) != len(dst) {
				t.Fatal("failed Open extended dst")
			}
			return
		}
		m, ok := valid[string(body)]
		if !ok || (m.Dir == "server") != toClient {
			t.Fatalf("forged MESSAGE authenticated: %x", body)
		}
		if flags != m.Flags || !bytes.Equal(out[len(dst):], m.Frame) {
			t.Fatal("wrong MESSAGE contents")
		}
		// The same body again is a replay.
		if _, _, err := c.Open(nil, body); err == nil {
			t.Fatal("replayed MESSAGE accepted")
		}
	})
}

func FuzzError(f *testing.F) {
	f.Add([]byte("\x03400"))
	f.Fuzz(func(t *testing.T, body []byte) {
		pe, err := parseError(body)
		if err != nil {
			checkReason(t, err, zmtp.ReasonProtocol)
			return
		}
		if len(body) == 0 || int(body[0]) != len(body)-1 {
			t.Fatalf("malformed ERROR %q accepted", body)
		}
		if !utf8.ValidString(pe.Reason) || len(pe.Reason) > len(body)-1 {
			t.Fatalf("reason %q", pe.Reason)
		}
		for _, r := range pe.Reason {
			if r < 0x20 || r > 0x7e {
				t.Fatalf("unprintable reason %q", pe.Reason)
			}
		}
	})
}

func checkReason(t *testing.T, err error, reasons ...string) {
	t.Helper()
	got := reasonOf(err)
	for _, r := range reasons {
		if got == r {
			return
		}
	}
	t.Fatalf("error %v has reason %q, want one of %q", err, got, reasons)
}

// TestGenerateFuzzCorpus rewrites testdata/fuzz/*/seed-* when run with
// -gencorpus. The seeds are valid commands from vectors.json and systematic
// corruptions of them.
func TestGenerateFuzzCorpus(t *testing.T) {
	if !*genCorpus {
		t.Skip("run with -gencorpus to rewrite the seed corpora")
	}
	fx := newFixture(t)
	v := fx.v
	variants := func(valid []byte) map[string][]byte {
		return map[string][]byte{
			"valid":     valid,
			"empty":     {},
			"truncated": valid[:len(valid)-1],
			"extended":  append(bytes.Clone(valid), 0),
			"first":     flip(valid, 0),
			"middle":    flip(valid, len(valid)/2),
			"last":      flip(valid, len(valid)-1),
			"zeros":     make([]byte, len(valid)),
		}
	}
	write := func(target, name string, args ...any) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch a := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%s)\n", strconv.Quote(string(a)))
			case bool:
				fmt.Fprintf(&b, "bool(%t)\n", a)
			case uint8:
				fmt.Fprintf(&b, "byte(%s)\n", strconv.QuoteRune(rune(a)))
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for target, valid := range map[string][]byte{
		"FuzzHello": v.Hello, "FuzzWelcome": v.Welcome, "FuzzInitiate": v.Initiate, "FuzzReady": v.Ready,
	} {
		for name, body := range variants(valid) {
			write(target, name, body)
		}
	}
	write("FuzzHello", "low-order", lowOrderHello(v.Hello))
	write("FuzzHello", "padding", flip(v.Hello, 10))
	for i, m := range v.Messages {
		for name, body := range variants(m.Body) {
			write("FuzzMessage", fmt.Sprintf("%d-%s", i, name), body, m.Dir == "server", uint8(i))
		}
		write("FuzzMessage", fmt.Sprintf("%d-wrong-direction", i), []byte(m.Body), m.Dir != "server", uint8(0))
	}
	for name, body := range map[string][]byte{
		"400": []byte("\x03400"), "empty": {}, "zero": {0}, "short": []byte("\x05400"),
		"long": []byte("\x01400"), "binary": []byte("\x04\x00\xff\n\x7f"), "utf8": []byte("\x04h\xc3\xa9!"),
	} {
		write("FuzzError", name, body)
	}
}
