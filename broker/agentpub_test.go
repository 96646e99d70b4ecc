package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/zpipes/zp/internal/secretbox"
)

// fuzzKey is the records' key in the fuzz corpus.
var fuzzKey = [32]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}

func sealRec(plain []byte, final bool, i uint64) []byte {
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(plain)+secretbox.Overhead))
	return secretbox.Seal(rec, plain, recordNonce(final, i), &fuzzKey)
}

func records(parts ...string) []byte {
	var b []byte
	for i, p := range parts {
		b = append(b, sealRec([]byte(p), false, uint64(i))...)
	}
	return append(b, sealRec(nil, true, uint64(len(parts)))...)
}

func TestRecordReader(t *testing.T) {
	good := records("hello ", "world\n")
	for _, c := range []struct {
		name   string
		stream []byte
		want   string
		done   bool
		bad    bool
	}{
		{"whole", good, "hello world\n", true, false},
		{"empty input", records(), "", true, false},
		{"cut", good[:len(good)-1], "hello world\n", false, false},
		{"altered", func() []byte { b := bytes.Clone(good); b[len(b)-1] ^= 0x80; return b }(), "hello world\n", false, true},
		{"trailing", append(bytes.Clone(good), 0), "hello world\n", true, true},
		{"too long", binary.BigEndian.AppendUint32(nil, 1<<20), "", false, true},
		{"too short", binary.BigEndian.AppendUint32(nil, 15), "", false, true},
		{"skipped record", append(sealRec([]byte("a"), false, 1), sealRec(nil, true, 2)...), "", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			r := &recordReader{key: fuzzKey, max: 1 << 10, w: &out}
			var err error
			// Byte by byte and in one go must agree.
			for i := range c.stream {
				if err = r.feed(c.stream[i : i+1]); err != nil {
					break
				}
			}
			var re *errRecord
			if c.bad != (err != nil) || (err != nil && !errors.As(err, &re)) {
				t.Fatalf("err %v, want bad=%v", err, c.bad)
			}
			if out.String() != c.want || r.done != c.done {
				t.Fatalf("out %q done %v", out.String(), r.done)
			}
		})
	}
}

// FuzzRecordReader: whatever the hub (or its disk) sends, the reader (of
// full records, or not: by split's parity) never panics, never holds more than a record and a message, and writes
// only plaintext that decrypted, in order.
func FuzzRecordReader(f *testing.F) {
	f.Add(records("hello ", "world\n"), 3)
	f.Add(records(), 0)
	f.Add(records("x"), 20)
	f.Add([]byte{0, 0, 0, 16}, 2)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0}, 1)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if split < 0 || split > len(data) {
			split = len(data)
		}
		var out bytes.Buffer
		r := &recordReader{key: fuzzKey, max: 64, w: &out, full: split%2 == 1}
		err := r.feed(data[:split])
		if err == nil {
			err = r.feed(data[split:])
		}
		if len(r.buf) > 4+64+secretbox.Overhead+len(data) {
			t.Fatalf("holds %d octets", len(r.buf))
		}
		// Every record costs 20 octets: what came out is smaller.
		if out.Len()+20*int(r.i) > len(data) {
			t.Fatalf("%d octets out of %d in %d records", out.Len(), len(data), r.i)
		}
		if r.done && err == nil && out.Len()+20*int(r.i) != len(data) {
			t.Fatalf("done, but %d octets of %d unaccounted for", len(data)-out.Len()-20*int(r.i), len(data))
		}
	})
}

// Full records (a broadcast's content, protocol 4): a short record may
// only be followed by the final one, and jump goes on at any record.
func TestRecordReaderFull(t *testing.T) {
	var out bytes.Buffer
	r := &recordReader{key: fuzzKey, max: 3, w: &out, full: true}
	if err := r.feed(records("abc", "def", "g")); err != nil || !r.done || out.String() != "abcdefg" {
		t.Fatalf("full records: %v, done %v, %q", err, r.done, out.String())
	}
	out.Reset()
	r = &recordReader{key: fuzzKey, max: 3, w: &out, full: true}
	var re *errRecord
	if err := r.feed(records("ab", "cde")); !errors.As(err, &re) || out.String() != "ab" {
		t.Fatalf("a record after a short one: %v, %q", err, out.String())
	}
	// Records 0 to 2 and the final 3; a jump to record 2 skips 0 and 1,
	// and the partial record 0 held.
	stream := records("abc", "def", "g")
	out.Reset()
	r = &recordReader{key: fuzzKey, max: 3, w: &out, full: true}
	rec := 4 + 3 + secretbox.Overhead
	if err := r.feed(stream[:5]); err != nil {
		t.Fatal(err)
	}
	r.jump(2)
	if err := r.feed(stream[2*rec:]); err != nil || !r.done || out.String() != "g" {
		t.Fatalf("after a jump: %v, done %v, %q", err, r.done, out.String())
	}
	// A record fed where another was expected does not decrypt.
	r = &recordReader{key: fuzzKey, max: 3, w: &out, full: true}
	r.jump(1)
	if err := r.feed(stream[2*rec:]); !errors.As(err, &re) {
		t.Fatalf("record 2 taken for record 1: %v", err)
	}
}
