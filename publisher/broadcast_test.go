package publisher

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/zpipes/zp/internal/wire"
)

// The manifest lists the tree parents first with each file's digest, and
// decodes back; the content stream holds the chosen files in order, and a
// file that changed since is reported and keeps the stream aligned.
func TestManifestAndContent(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d"), 0o755))
	must(os.WriteFile(filepath.Join(src, "d", "a"), []byte("aaaa"), 0o644))
	must(os.WriteFile(filepath.Join(src, "b"), []byte("bb"), 0o600))
	must(os.WriteFile(filepath.Join(src, "e"), nil, 0o644))
	must(os.Symlink("b", filepath.Join(src, "l")))
	m, err := BuildManifest([]string{src + "/"}, true, false, func(msg string, _ bool) { t.Log(msg) })
	must(err)
	if d := sha256.Sum256(m.Encoded); d != m.Digest || m.Bytes != 6 {
		t.Fatalf("digest or size wrong: %d", m.Bytes)
	}
	got, err := wire.DecodeManifest(m.Encoded, uint32(len(m.Entries)))
	must(err)
	names := map[string]*wire.File{}
	for _, f := range got {
		names[f.Path] = f
	}
	if len(got) != 6 || names["d/a"] == nil || names["l"].Target != "b" || names["b"].Mode != 0o600 {
		t.Fatalf("manifest: %+v", got)
	}
	idx := func(path string) int {
		for i, f := range m.Entries {
			if f.Path == path {
				return i
			}
		}
		t.Fatalf("no %s", path)
		return -1
	}
	bitmap := make([]byte, wire.BitmapLen(len(m.Entries)))
	wire.BitmapSet(bitmap, idx("d/a"))
	wire.BitmapSet(bitmap, idx("b"))
	wire.BitmapSet(bitmap, idx("e"))
	var changed []string
	all, err := io.ReadAll(m.Content(bitmap, nil, func(p string) { changed = append(changed, p) }))
	must(err)
	want := "aaaa" + "bb"
	if idx("b") < idx("d/a") {
		want = "bb" + "aaaa"
	}
	if string(all) != want || len(changed) != 0 {
		t.Fatalf("content %q, changed %v", all, changed)
	}
	// d/a shrinks, b changes: both are reported, the stream keeps its size.
	must(os.WriteFile(filepath.Join(src, "d", "a"), []byte("a"), 0o644))
	must(os.WriteFile(filepath.Join(src, "b"), []byte("BB"), 0o600))
	all, err = io.ReadAll(m.Content(bitmap, nil, func(p string) { changed = append(changed, p) }))
	must(err)
	if len(all) != 6 || len(changed) != 2 || !bytes.Contains(all, []byte("a\x00\x00\x00")) {
		t.Fatalf("after changes: %q, changed %v", all, changed)
	}
}

// fileDigests lists each chunk's SHA-256 of a file of several chunks (and
// none of a file of one), with the whole file's; a file that shrank since
// its size was taken has its missing octets hashed as zeros in the chunks,
// as the content stream sends them.
func TestFileDigests(t *testing.T) {
	const c = wire.MinChunk
	data := make([]byte, 5*c+7)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, data, 0o644)
	list := func(b []byte) []byte {
		var l []byte
		for off := 0; off < len(b); off += c {
			d := sha256.Sum256(b[off:min(off+c, len(b))])
			l = append(l, d[:]...)
		}
		return l
	}
	whole := sha256.Sum256(data)
	d, chunks, err := fileDigests(path, uint64(len(data)), c)
	if err != nil || !bytes.Equal(d, whole[:]) || !bytes.Equal(chunks, list(data)) {
		t.Fatalf("digests: %v, %d octets of chunk digests", err, len(chunks))
	}
	if _, chunks, _ := fileDigests(path, c, c); chunks != nil {
		t.Fatalf("one chunk listed")
	}
	// It shrank by 2 chunks since the walk.
	os.WriteFile(path, data[:3*c], 0o644)
	padded := append(append([]byte(nil), data[:3*c]...), make([]byte, 2*c+7)...)
	short := sha256.Sum256(data[:3*c])
	d, chunks, err = fileDigests(path, uint64(len(data)), c)
	if err != nil || !bytes.Equal(d, short[:]) || !bytes.Equal(chunks, list(padded)) {
		t.Fatalf("a file that shrank: %v", err)
	}
}

// With a chunk map, the stream holds of a file only the chunks it sets,
// each checked against the chunk index: one that changed since is
// reported, one not sent is not.
func TestContentSlices(t *testing.T) {
	const c = wire.BcastChunk
	dir := t.TempDir()
	data := make([]byte, 5*c+7)
	for i := range data {
		data[i] = byte(i * 31 / 7)
	}
	os.WriteFile(filepath.Join(dir, "big"), data, 0o644)
	os.WriteFile(filepath.Join(dir, "small"), []byte("small\n"), 0o644)
	m, err := BuildManifest([]string{dir + "/"}, true, false, func(string, bool) {})
	if err != nil {
		t.Fatal(err)
	}
	var big, small int = -1, -1
	for i, e := range m.Entries {
		switch e.Path {
		case "big":
			big = i
		case "small":
			small = i
		}
	}
	if big < 0 || small < 0 || len(m.Chunks) != 6*32 {
		t.Fatalf("entries %d and %d, an index of %d octets", big, small, len(m.Chunks))
	}
	bitmap := make([]byte, wire.BitmapLen(len(m.Entries)))
	wire.BitmapSet(bitmap, big)
	wire.BitmapSet(bitmap, small)
	slices := make([][]byte, len(m.Entries))
	slices[big] = []byte{0x48} // chunks 1 and 4
	read := func() ([]byte, []string) {
		var changed []string
		all, err := io.ReadAll(m.Content(bitmap, slices, func(p string) { changed = append(changed, p) }))
		if err != nil {
			t.Fatal(err)
		}
		return all, changed
	}
	want := append(append(append([]byte(nil), data[c:2*c]...), data[4*c:5*c]...), "small\n"...)
	if big > small {
		want = append([]byte("small\n"), want[:len(want)-6]...)
	}
	if all, changed := read(); !bytes.Equal(all, want) || len(changed) != 0 {
		t.Fatalf("%d octets, changed %v", len(all), changed)
	}
	// A chunk not sent changes: nothing to report; one sent: reported.
	f, _ := os.OpenFile(filepath.Join(dir, "big"), os.O_RDWR, 0)
	f.WriteAt([]byte{0xAA}, 2*c+1)
	if _, changed := read(); len(changed) != 0 {
		t.Fatalf("a chunk not sent changed: %v reported", changed)
	}
	f.WriteAt([]byte{0xAA}, 4*c+1)
	f.Close()
	if all, changed := read(); len(all) != len(want) || len(changed) != 1 || changed[0] != filepath.Join(dir, "big") {
		t.Fatalf("a chunk sent changed: %d octets, %v reported", len(all), changed)
	}
	// No chunk of it: nothing of it, nothing reported.
	slices[big] = []byte{0}
	if all, changed := read(); string(all) != "small\n" || len(changed) != 0 {
		t.Fatalf("no chunk: %q, %v", all, changed)
	}
}

// An empty file in the stream contributes nothing, and the file after it
// is not passed over.
func TestContentAfterEmptyFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "b"), []byte("data"), 0o644)
	m, err := BuildManifest([]string{dir + "/"}, true, false, func(string, bool) {})
	if err != nil {
		t.Fatal(err)
	}
	bitmap := make([]byte, wire.BitmapLen(len(m.Entries)))
	for i := range m.Entries {
		wire.BitmapSet(bitmap, i)
	}
	all, err := io.ReadAll(m.Content(bitmap, nil, nil))
	if err != nil || string(all) != "data" {
		t.Fatalf("stream %q, %v (entries %d)", all, err, len(m.Entries))
	}
}
