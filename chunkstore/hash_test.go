package chunkstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

func TestHashChunks(t *testing.T) {
	data := make([]byte, 5*1000+7)
	for i := range data {
		data[i] = byte(i * 13 / 7)
	}
	want := func(b []byte, c int) (offs []int64, ds [][32]byte) {
		for off := 0; off < len(b); off += c {
			offs = append(offs, int64(off))
			ds = append(ds, sha256.Sum256(b[off:min(off+c, len(b))]))
		}
		return
	}
	run := func(r io.Reader, size int64) (int64, []int64, [][32]byte, []byte, error) {
		var offs []int64
		var ds [][32]byte
		h := sha256.New()
		n, err := HashChunks(r, 1000, size, h, func(off int64, d [32]byte) {
			offs = append(offs, off)
			ds = append(ds, d)
		})
		return n, offs, ds, h.Sum(nil), err
	}
	whole := sha256.Sum256(data)
	wo, wd := want(data, 1000)
	for _, size := range []int64{-1, int64(len(data))} {
		n, offs, ds, h, err := run(bytes.NewReader(data), size)
		if err != nil || n != int64(len(data)) || !bytes.Equal(h, whole[:]) || len(offs) != 6 || offs[5] != wo[5] || ds[5] != wd[5] || ds[0] != wd[0] {
			t.Fatalf("size %d: read %d, %d chunks, %v", size, n, len(offs), err)
		}
	}
	// It shrank: 3,500 octets where 5,007 were announced.
	padded := append(append([]byte(nil), data[:3500]...), make([]byte, len(data)-3500)...)
	_, pd := want(padded, 1000)
	short := sha256.Sum256(data[:3500])
	n, offs, ds, h, err := run(bytes.NewReader(data[:3500]), int64(len(data)))
	if err != nil || n != 3500 || !bytes.Equal(h, short[:]) || len(offs) != 6 || ds[3] != pd[3] || ds[5] != pd[5] {
		t.Fatalf("a file that shrank: read %d, %d chunks, %v", n, len(offs), err)
	}
	// An exact multiple of the chunk, and nothing.
	if _, offs, _, _, _ := run(bytes.NewReader(data[:3000]), -1); len(offs) != 3 {
		t.Fatalf("3 chunks read as %d", len(offs))
	}
	if _, offs, _, _, _ := run(bytes.NewReader(nil), -1); len(offs) != 0 {
		t.Fatalf("nothing read as %d chunks", len(offs))
	}
	boom := errors.New("boom")
	if _, _, _, _, err := run(io.MultiReader(bytes.NewReader(data[:1500]), &failing{boom}), -1); !errors.Is(err, boom) {
		t.Fatalf("a read error: %v", err)
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }
