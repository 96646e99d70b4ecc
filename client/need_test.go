package client

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// The union of needs takes every file and chunk any agent lacks; one
// agent that needs whole files (no chunk map) makes the union whole. It
// covers a need when it holds its files and, chunked, its chunks.
func TestNeedChunks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte{7}, 3*wire.BcastChunk+5), 0o644) // 4 chunks
	os.WriteFile(filepath.Join(dir, "small"), []byte("x"), 0o644)
	tree, err := BuildTree([]string{dir + "/"}, TreeOptions{Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	var big, small int
	for i, e := range tree.m.Entries {
		switch e.Path {
		case "big":
			big = i
		case "small":
			small = i
		}
	}
	need := func(files []int, chunks []byte) *Need {
		n := &Need{bits: make([]byte, wire.BitmapLen(len(tree.m.Entries))), n: len(tree.m.Entries), chunks: chunks}
		for _, i := range files {
			wire.BitmapSet(n.bits, i)
		}
		return n
	}
	a := need([]int{big}, []byte{0x40}) // chunk 1
	b := need([]int{big, small}, []byte{0x10})
	u := tree.NewNeed()
	u.Add(a)
	u.Add(b)
	if !bytes.Equal(u.chunks, []byte{0x50}) || !u.Covers(a) || !u.Covers(b) {
		t.Fatalf("union %08b", u.chunks)
	}
	if got, want := tree.ContentBytes(u), uint64(wire.BcastChunk+5+1); got != want { // chunks 1 and 3 (5 octets), and small
		t.Fatalf("union of %d octets, not %d", got, want)
	}
	if c := need([]int{big}, []byte{0x80}); u.Covers(c) {
		t.Fatal("covers a chunk it lacks")
	}
	if c := need([]int{big}, nil); u.Covers(c) {
		t.Fatal("covers a whole file with some chunks")
	}
	// An agent that reads whole files: the union is whole files.
	u.Add(need([]int{small}, nil))
	if u.chunks != nil || !u.Covers(need([]int{big}, nil)) || tree.ContentBytes(u) != 3*wire.BcastChunk+6 || tree.NeedBytes(u) != 3*wire.BcastChunk+6 {
		t.Fatalf("whole: %08b, %d octets", u.chunks, tree.ContentBytes(u))
	}
}
