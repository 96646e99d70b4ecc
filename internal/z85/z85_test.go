package z85

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestRFC32Vector is the test case of RFC 32.
func TestRFC32Vector(t *testing.T) {
	bin := []byte{0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B}
	got, err := Encode(bin)
	if err != nil {
		t.Fatal(err)
	}
	if got != "HelloWorld" {
		t.Fatalf("Encode = %q, want %q", got, "HelloWorld")
	}
	dec, err := Decode("HelloWorld")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec, bin) {
		t.Fatalf("Decode = %x, want %x", dec, bin)
	}
}

func TestEdges(t *testing.T) {
	for _, tc := range []struct {
		bin []byte
		txt string
	}{
		{nil, ""},
		{[]byte{0, 0, 0, 0}, "00000"},
		{[]byte{0xff, 0xff, 0xff, 0xff}, "%nSc0"}, // 2^32-1, the largest group
	} {
		got, err := Encode(tc.bin)
		if err != nil || got != tc.txt {
			t.Errorf("Encode(%x) = %q, %v; want %q", tc.bin, got, err, tc.txt)
		}
		dec, err := Decode(tc.txt)
		if err != nil || !bytes.Equal(dec, tc.bin) {
			t.Errorf("Decode(%q) = %x, %v; want %x", tc.txt, dec, err, tc.bin)
		}
	}
}

func TestAlphabet(t *testing.T) {
	if len(alphabet) != 85 {
		t.Fatalf("alphabet has %d characters", len(alphabet))
	}
	seen := map[byte]bool{}
	for i := 0; i < len(alphabet); i++ {
		c := alphabet[i]
		if seen[c] || c <= ' ' || c >= 0x7f || c == '"' || c == '\'' || c == '\\' || c == ',' || c == ';' || c == '_' || c == '`' || c == '|' || c == '~' {
			t.Errorf("bad alphabet character %q", c)
		}
		seen[c] = true
	}
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n <= 256; n += 4 {
		for range 20 {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			s, err := Encode(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(s) != EncodedLen(n) {
				t.Fatalf("len = %d, want %d", len(s), EncodedLen(n))
			}
			d, err := Decode(s)
			if err != nil {
				t.Fatalf("Decode(%q): %v", s, err)
			}
			if !bytes.Equal(d, b) {
				t.Fatalf("round trip %x -> %q -> %x", b, s, d)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5, 7, 33} {
		if _, err := Encode(make([]byte, n)); !errors.Is(err, ErrLength) {
			t.Errorf("Encode(%d octets): err = %v, want ErrLength", n, err)
		}
	}
	for _, s := range []string{"0", "0000", "000000", "HelloWorl"} {
		if _, err := Decode(s); !errors.Is(err, ErrLength) {
			t.Errorf("Decode(%q): err = %v, want ErrLength", s, err)
		}
	}
	for _, s := range []string{
		"Hello Worl", "0000\"", "~0000", "00_00", "0000,", "0000\x00", "0000\xff", "abcd;", "abcd\\", "abcd'",
	} {
		_, err := Decode(s)
		if err == nil || errors.Is(err, ErrLength) || !strings.Contains(err.Error(), "invalid character") {
			t.Errorf("Decode(%q): err = %v, want invalid character", s, err)
		}
	}
	// Overflow: 2^32 and the largest 5-character value.
	for _, s := range []string{"%nSc1", "#####", "$0000", "00000%nSc1"} {
		_, err := Decode(s)
		if err == nil || !strings.Contains(err.Error(), "overflow") {
			t.Errorf("Decode(%q): err = %v, want overflow", s, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("HelloWorld")
	f.Add("%nSc0")
	f.Add("%nSc1")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := Decode(s)
		if err != nil {
			if b != nil {
				t.Fatalf("Decode(%q) returned data with error", s)
			}
			return
		}
		if len(b) != DecodedLen(len(s)) {
			t.Fatalf("Decode(%q): %d octets", s, len(b))
		}
		// Z85 is a bijection between valid strings and octet strings.
		again, err := Encode(b)
		if err != nil {
			t.Fatal(err)
		}
		if again != s {
			t.Fatalf("Encode(Decode(%q)) = %q", s, again)
		}
	})
}

func BenchmarkEncode32(b *testing.B) {
	key := make([]byte, 32)
	for b.Loop() {
		if _, err := Encode(key); err != nil {
			b.Fatal(err)
		}
	}
}
