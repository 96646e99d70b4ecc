package subscriber

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
)

// chunkList is the chunk digests of data in chunks of c (the index's list
// for one file).
func chunkList(data []byte, c int) []byte {
	var list []byte
	for off := 0; off < len(data); off += c {
		d := sha256.Sum256(data[off:min(off+c, len(data))])
		list = append(list, d[:]...)
	}
	return list
}

// chunkTree is a tree of a directory, a file f of size random octets
// (seeded) and a small file g, with f's chunk list in chunks of 64 KiB.
func chunkTree(seed uint64, size int) (tree *bcastTree, data []byte, lists [][]byte) {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	data = make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	tree = &bcastTree{data: map[uint32][]byte{}}
	tree.add("", wire.KindDir, nil, "")
	tree.add("f", wire.KindFile, data, "")
	tree.add("g", wire.KindFile, []byte("small\n"), "")
	return tree, data, [][]byte{nil, chunkList(data, wire.MinChunk), nil}
}

// needsChunks is Needs with a chunk index of lists in chunks of 64 KiB.
func needsChunks(t *testing.T, dir string, tree *bcastTree, lists [][]byte) Needed {
	t.Helper()
	root, err := chunkstore.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	n, err := Needs(context.Background(), root, "", tree.entries, &Index{Lists: lists, Chunk: wire.MinChunk}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An agent holding an older version of a large file takes the chunks it
// holds from it, wherever they are in it (at a chunk boundary), and reads
// only the others from the stream, passing over the rest unread.
func TestApplyBroadcastBases(t *testing.T) {
	const c = wire.MinChunk
	tree, data, lists := chunkTree(1, 10*c+1000)

	// The old f: chunk 3 differs, chunks 7 and 8 are swapped, and it
	// lacks the last 1000 octets.
	old := append([]byte(nil), data[:10*c]...)
	old[3*c+5] ^= 0xFF
	copy(old[7*c:], data[8*c:9*c])
	copy(old[8*c:], data[7*c:8*c])
	dir := t.TempDir()
	writeOld := func() {
		if err := os.WriteFile(filepath.Join(dir, "f"), old, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeOld()
	n := needsChunks(t, dir, tree, lists)
	need, b, held := n.Need, n.Bases, n.Held
	if held != 9*c || n.Have != held || b[2] == nil || b[2].From[7] != 8*c || b[2].From[8] != 7*c || b[2].From[3] != -1 || b[2].From[10] != -1 {
		t.Fatalf("held %d; basis %+v", held, b[2])
	}
	apply := func(dir string) (*skipReader, []string, error) {
		sr := &skipReader{r: bytes.NewReader(tree.stream(need))}
		_, failed, err := applyConfig(t, dir, sr, ApplyConfig{Entries: tree.entries, Content: need, Bases: b})
		return sr, failed, err
	}
	sr, failed, err := apply(dir)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(got, data) {
		t.Fatal("f is not the new content")
	}
	if sr.read != c+1000+len("small\n") || sr.skipped != 9*c {
		t.Fatalf("%d octets read from the stream, %d skipped", sr.read, sr.skipped)
	}

	// The basis is gone when applied: f comes whole from the stream.
	dir2 := t.TempDir()
	sr, failed, err = apply(dir2)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply without the basis: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir2, "f")); !bytes.Equal(got, data) || sr.read != len(data)+len("small\n") {
		t.Fatalf("without the basis: %d octets read", sr.read)
	}

	// The basis changed since Bases hashed it: f fails at COMMIT (and
	// keeps its old content); g lands.
	old[c] ^= 0xFF
	writeOld()
	os.Remove(filepath.Join(dir, "g"))
	_, failed, err = apply(dir)
	if err != nil || len(failed) != 1 || !strings.HasPrefix(failed[0], "f: ") {
		t.Fatalf("apply with a changed basis: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(got, old) {
		t.Fatal("f was replaced")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "g")); string(got) != "small\n" {
		t.Fatalf("g is %q", got)
	}

	// A file with no chunk in common, or none at all, is no basis; the
	// new content is held, not needed (one read for both).
	os.WriteFile(filepath.Join(dir, "f"), make([]byte, 3*c), 0o644)
	if n := needsChunks(t, dir, tree, lists); n.Bases != nil || n.Held != 0 || !wire.BitmapHas(n.Need, 1) {
		t.Fatalf("a basis of zeros: %+v", n)
	}
	os.Remove(filepath.Join(dir, "f"))
	if n := needsChunks(t, dir, tree, lists); n.Bases != nil || !wire.BitmapHas(n.Need, 1) {
		t.Fatalf("no file, a basis: %+v", n)
	}
	os.WriteFile(filepath.Join(dir, "f"), data, 0o644)
	if n := needsChunks(t, dir, tree, lists); n.Bases != nil || wire.BitmapHas(n.Need, 1) || n.Have != uint64(len(data))+6 {
		t.Fatalf("f in place: %+v", n)
	}
}

// With a chunk map, the stream holds only the chunks some agent lacks: an
// agent takes those and the rest from its basis; a chunk neither held nor
// in the stream fails the file alone, and the stream stays aligned.
func TestApplyBroadcastSlices(t *testing.T) {
	const c = wire.MinChunk
	tree, data, lists := chunkTree(3, 4*c+10)
	old := append([]byte(nil), data...)
	old[2*c] ^= 1 // chunk 2 differs
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), old, 0o644)
	n := needsChunks(t, dir, tree, lists)
	if m := n.ChunkMap(tree.entries, c); !bytes.Equal(m, []byte{0x20}) {
		t.Fatalf("chunk map %08b", m)
	}
	// stream is the content: the chunks of f in its map in, then g.
	stream := func(in []byte) []byte {
		var b []byte
		for k := 0; k*c < len(data); k++ {
			if wire.BitmapHas(in, k) {
				b = append(b, data[k*c:min((k+1)*c, len(data))]...)
			}
		}
		return append(b, "small\n"...)
	}
	applyCut := func(in []byte, cut int) (*skipReader, ApplyStats, []string, error) {
		sr := &skipReader{r: bytes.NewReader(stream(in)[:cut])}
		st, failed, err := applyConfig(t, dir, sr, ApplyConfig{Entries: tree.entries, Content: []byte{0x60},
			Bases: n.Bases, Slices: [][]byte{nil, in, nil}, Chunk: c})
		return sr, st, failed, err
	}
	apply := func(in []byte) (*skipReader, []string, error) {
		sr, _, failed, err := applyCut(in, len(stream(in)))
		return sr, failed, err
	}
	// Another agent lacked chunk 4: it is in the stream, passed over here.
	sr, failed, err := apply([]byte{0x28})
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(got, data) {
		t.Fatal("f is not the new content")
	}
	if sr.read != c+6 || sr.skipped != 10 {
		t.Fatalf("%d octets read, %d skipped", sr.read, sr.skipped)
	}
	// A stream without chunk 2, which this agent lacks: f fails, g lands.
	os.WriteFile(filepath.Join(dir, "f"), old, 0o644)
	os.Remove(filepath.Join(dir, "g"))
	if _, failed, err = apply([]byte{0x08}); err != nil || len(failed) != 1 || !strings.Contains(failed[0], "not in the broadcast") {
		t.Fatalf("apply without chunk 2: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "g")); string(got) != "small\n" {
		t.Fatalf("g is %q", got)
	}

	// Cut in the middle of chunk 2: the partial keeps chunks 0 and 1, from
	// the basis (a chunk is handed on whole); the next attempt resumes
	// it, and takes chunk 2 from the stream (g is in place already).
	os.WriteFile(filepath.Join(dir, "f"), old, 0o644)
	if _, _, _, err := applyCut([]byte{0x28}, 30000); !errors.Is(err, ErrShortContent) {
		t.Fatalf("cut stream: %v", err)
	}
	sr, st, failed, err := applyCut([]byte{0x28}, c+10+6)
	if err != nil || len(failed) != 0 {
		t.Fatalf("resume: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "f")); !bytes.Equal(got, data) {
		t.Fatal("resumed f is not the new content")
	}
	if st.BytesResumed != 2*c || sr.read != c || sr.skipped != 10+6 {
		t.Fatalf("resumed %d octets; %d read, %d skipped", st.BytesResumed, sr.read, sr.skipped)
	}
}
