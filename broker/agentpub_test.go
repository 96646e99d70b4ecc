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

// FuzzRecordReader: whatever the hub (or its disk) sends, the reader
// never panics, never holds more than a record and a message, and writes
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
		r := &recordReader{key: fuzzKey, max: 64, w: &out}
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
