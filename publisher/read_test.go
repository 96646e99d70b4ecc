package publisher

import (
	"bytes"
	"io"
	"testing"
)

// pieces returns its chunks one per Read, like a pipe written line by line.
type pieces [][]byte

func (p *pieces) Read(b []byte) (int, error) {
	if len(*p) == 0 {
		return 0, io.EOF
	}
	n := copy(b, (*p)[0])
	(*p)[0] = (*p)[0][n:]
	if len((*p)[0]) == 0 {
		*p = (*p)[1:]
	}
	return n, nil
}

func TestReaderShortReadsDoNotPinBuffers(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 200<<10)
	src := pieces{[]byte("line 1\n"), []byte("line 2\n"), big, []byte("tail")}
	var r Reader
	var got [][]byte
	for {
		b, err := r.Read(&src, 256<<10)
		if len(b) > 0 {
			got = append(got, b)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 4 {
		t.Fatalf("%d reads, want 4", len(got))
	}
	for i, b := range got {
		if cap(b) > 2*len(b)+64 {
			t.Errorf("read %d: %d octets in a buffer of %d", i, len(b), cap(b))
		}
	}
	if string(got[0]) != "line 1\n" || string(got[1]) != "line 2\n" || !bytes.Equal(got[2], big) || string(got[3]) != "tail" {
		t.Fatalf("wrong data")
	}
	// Slices handed out stay intact while the reader goes on.
	if string(got[0]) != "line 1\n" {
		t.Fatal("a short read was overwritten by a later one")
	}
}
