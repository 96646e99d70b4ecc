package digest

import (
	"encoding/hex"
	"strings"
	"testing"
)

// Known answers: BLAKE3's from its reference test vectors, SHA-256's from
// FIPS 180-2; a library swapped for one that disagrees fails here.
func TestKnownAnswers(t *testing.T) {
	cases := []struct {
		v        uint16
		in, want string
	}{
		{6, "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{6, "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{7, "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{7, "abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
		{1, "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{8, "abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
	}
	for _, c := range cases {
		h := For(c.v)()
		h.Write([]byte(c.in))
		if got := hex.EncodeToString(h.Sum(nil)); got != c.want {
			t.Errorf("version %d, %q: %s, want %s", c.v, c.in, got, c.want)
		}
		if h.Size() != 32 {
			t.Errorf("version %d: Size %d, want 32", c.v, h.Size())
		}
	}
}

// Written in pieces or at once, across BLAKE3's 1 KiB chunks and SHA-256's
// 64-octet blocks, the digest is the same; Reset starts over.
func TestPiecesAndReset(t *testing.T) {
	data := []byte(strings.Repeat("zp pipes ", 100_000))
	for _, v := range []uint16{6, 7} {
		whole := For(v)()
		whole.Write(data)
		want := whole.Sum(nil)
		h := For(v)()
		h.Write([]byte("garbage"))
		h.Reset()
		for i, n := 0, 1; i < len(data); i, n = i+n, n*3+1 {
			h.Write(data[i:min(i+n, len(data))])
		}
		if got := h.Sum(nil); string(got) != string(want) {
			t.Errorf("version %d: pieces %x, whole %x", v, got, want)
		}
	}
}

// TestReleasedHasherStartsClean: a hasher given back in the middle of a
// digest (as a failed transfer leaves it) comes back empty.
func TestReleasedHasherStartsClean(t *testing.T) {
	const abc = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
	for range 100 {
		h := BLAKE3()
		h.Write([]byte("left over from another file"))
		Release(h)
		Release(SHA256()) // not pooled: ignored
	}
	for range 100 {
		h := BLAKE3()
		h.Write([]byte("abc"))
		if got := hex.EncodeToString(h.Sum(nil)); got != abc {
			t.Fatalf("a reused hasher gave %s, want %s", got, abc)
		}
		Release(h)
	}
}
