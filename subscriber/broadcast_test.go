package subscriber

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zpipes/zp/chunkstore"
	"github.com/zpipes/zp/internal/wire"
)

// bcastTree is a manifest and the content of its files.
type bcastTree struct {
	entries []*wire.File
	data    map[uint32][]byte
}

func (t *bcastTree) add(path string, kind uint8, data []byte, target string) {
	f := &wire.File{FID: uint32(len(t.entries) + 1), Path: path, Kind: kind, Mode: 0o644, MTime: time.Unix(1700000000, 0).UnixNano(), Target: target}
	if kind == wire.KindDir {
		f.Mode = 0o755
	}
	if kind == wire.KindFile {
		d := sha256.Sum256(data)
		f.Size, f.Digest = uint64(len(data)), d[:]
		t.data[f.FID] = data
	}
	t.entries = append(t.entries, f)
}

// stream is the content of the entries set in bitmap, in order.
func (t *bcastTree) stream(bitmap []byte) []byte {
	var b []byte
	for i, e := range t.entries {
		if wire.BitmapHas(bitmap, i) {
			b = append(b, t.data[e.FID]...)
		}
	}
	return b
}

func sampleBcast() *bcastTree {
	t := &bcastTree{data: map[uint32][]byte{}}
	t.add("", wire.KindDir, nil, "")
	t.add("a", wire.KindDir, nil, "")
	t.add("a/big", wire.KindFile, bytes.Repeat([]byte("0123456789abcdef"), 300000), "") // 4.8 MB: several chunks
	t.add("a/small", wire.KindFile, []byte("small\n"), "")
	t.add("empty", wire.KindFile, nil, "")
	t.add("link", wire.KindSymlink, nil, "a/small")
	for i := 0; i < 50; i++ {
		t.add(filepath.Join("many", string(rune('a'+i%26))+string(rune('a'+i/26))), wire.KindFile, []byte{byte(i), 1, 2}, "")
	}
	return t
}

func applyTree(t *testing.T, dir string, tree *bcastTree, stream []byte, content []byte) (ApplyStats, []string, error) {
	t.Helper()
	return applyFrom(t, dir, tree, bytes.NewReader(stream), content)
}

func applyFrom(t *testing.T, dir string, tree *bcastTree, stream io.Reader, content []byte) (ApplyStats, []string, error) {
	t.Helper()
	return applyCopies(t, dir, tree, stream, content, nil)
}

func needs(t *testing.T, dir string, tree *bcastTree) ([]byte, uint64) {
	t.Helper()
	need, have, _ := needsCopies(t, dir, tree)
	return need, have
}

func needsCopies(t *testing.T, dir string, tree *bcastTree) ([]byte, uint64, map[uint32]string) {
	t.Helper()
	root, err := chunkstore.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	n, err := Needs(context.Background(), root, "", tree.entries, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n.Need, n.Have, n.Copies
}

func countBits(b []byte, n int) int {
	c := 0
	for i := 0; i < n; i++ {
		if wire.BitmapHas(b, i) {
			c++
		}
	}
	return c
}

// A broadcast applied to an empty directory writes every entry; applied
// again after one file changed, only that file is needed, and a stream
// holding other agents' files too is read past them.
func TestApplyBroadcast(t *testing.T) {
	dir := t.TempDir()
	tree := sampleBcast()
	need, have := needs(t, dir, tree)
	if n := countBits(need, len(tree.entries)); n != 53 || have != 0 {
		t.Fatalf("empty destination needs %d files, has %d octets", n, have)
	}
	st, failed, err := applyTree(t, dir, tree, tree.stream(need), need)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if st.Files != 53 || st.Links != 1 || st.Bytes != 4800000+6+150 {
		t.Fatalf("stats %+v", st)
	}
	for _, e := range tree.entries {
		if e.Kind != wire.KindFile {
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, e.Path))
		if err != nil || !bytes.Equal(got, tree.data[e.FID]) {
			t.Fatalf("%s: %v", e.Path, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(dir, "link")); err != nil || l != "a/small" {
		t.Fatalf("link: %q %v", l, err)
	}

	// One file changes at the source.
	tree.entries[3].Size, tree.data[4] = 7, []byte("SMALL!\n")
	d := sha256.Sum256(tree.data[4])
	tree.entries[3].Digest = d[:]
	need, have = needs(t, dir, tree)
	if n := countBits(need, len(tree.entries)); n != 1 || !wire.BitmapHas(need, 3) || have != 4800000+150 {
		t.Fatalf("after one change: %d needed (small: %v), %d octets held", n, wire.BitmapHas(need, 3), have)
	}
	// Another agent lacked the big file: the stream holds it too.
	content := append([]byte(nil), need...)
	wire.BitmapSet(content, 2)
	st, failed, err = applyTree(t, dir, tree, tree.stream(content), content)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if st.Bytes != 7 || st.Discarded != 4800000 || st.Skipped != 52 {
		t.Fatalf("second apply: %+v", st)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a/small")); string(got) != "SMALL!\n" {
		t.Fatalf("a/small is %q", got)
	}

	// Again, from a stream that can skip: the big file is skipped, not
	// read.
	tree.entries[3].Size, tree.data[4] = 6, []byte("again\n")
	d = sha256.Sum256(tree.data[4])
	tree.entries[3].Digest = d[:]
	sr := &skipReader{r: bytes.NewReader(tree.stream(content))}
	st, failed, err = applyFrom(t, dir, tree, sr, content)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if st.Bytes != 6 || st.Discarded != 4800000 || sr.read != 6 || sr.skipped != 4800000 {
		t.Fatalf("apply from a skipping stream: %+v; %d octets read, %d skipped", st, sr.read, sr.skipped)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a/small")); string(got) != "again\n" {
		t.Fatalf("a/small is %q", got)
	}
}

// skipReader is a Skipper that counts what was read and what skipped.
type skipReader struct {
	r             *bytes.Reader
	read, skipped int
}

func (s *skipReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.read += n
	return n, err
}

func (s *skipReader) Skip(n uint64) {
	s.r.Seek(int64(n), io.SeekCurrent)
	s.skipped += int(n)
}

// Content that does not match the manifest's digest fails that entry (the
// file already there is kept); a stream that ends early fails the whole,
// and what arrived whole is in place.
func TestApplyBroadcastBadContent(t *testing.T) {
	dir := t.TempDir()
	tree := sampleBcast()
	need, _ := needs(t, dir, tree)
	stream := tree.stream(need)
	stream[len(stream)-1] ^= 0xff // the last "many/" file
	_, failed, err := applyTree(t, dir, tree, stream, need)
	if err != nil || len(failed) != 1 {
		t.Fatalf("apply: %v, failed %v", err, failed)
	}
	if _, err := os.Stat(filepath.Join(dir, tree.entries[len(tree.entries)-1].Path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a file that does not match its digest is in place: %v", err)
	}

	dir2 := t.TempDir()
	full := tree.stream(need)
	_, _, err = applyTree(t, dir2, tree, full[:4800000+3], need)
	if !errors.Is(err, ErrShortContent) {
		t.Fatalf("short stream: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir2, "a/big")); len(got) != 4800000 {
		t.Fatalf("a/big has %d octets", len(got))
	}
}

// A broadcast cut in a file's content leaves its partial; the next one
// keeps what the partial holds, passes over those octets of the stream
// and writes the rest.
func TestApplyBroadcastResumes(t *testing.T) {
	dir := t.TempDir()
	tree := sampleBcast()
	need, _ := needs(t, dir, tree)
	full := tree.stream(need)
	if _, _, err := applyTree(t, dir, tree, full[:2500000], need); !errors.Is(err, ErrShortContent) {
		t.Fatalf("cut stream: %v", err)
	}
	sr := &skipReader{r: bytes.NewReader(full)}
	st, failed, err := applyFrom(t, dir, tree, sr, need)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if st.BytesResumed < 1<<20 || sr.skipped != int(st.BytesResumed) || sr.read != len(full)-sr.skipped {
		t.Fatalf("resumed %d octets; %d skipped, %d read of %d", st.BytesResumed, sr.skipped, sr.read, len(full))
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a/big")); !bytes.Equal(got, tree.data[3]) {
		t.Fatalf("a/big: %d octets, not its content", len(got))
	}

	// A partial that does not hold the content (planted, or from a file
	// that changed keeping its size and mtime) fails its entry at COMMIT
	// and is removed: the next broadcast writes the file whole.
	dir = t.TempDir()
	if _, _, err := applyTree(t, dir, tree, full[:2500000], need); !errors.Is(err, ErrShortContent) {
		t.Fatalf("cut stream: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(dir, "a", ".zpc-*"))
	var bigPart string // a/big's: the largest
	for _, p := range parts {
		if st, err := os.Stat(p); err == nil && st.Size() >= 1<<20 {
			bigPart = p
		}
	}
	if bigPart == "" {
		t.Fatalf("no partial of a/big among %v", parts)
	}
	f, _ := os.OpenFile(bigPart, os.O_WRONLY, 0)
	f.WriteAt([]byte("planted"), 100)
	f.Close()
	if _, failed, err := applyTree(t, dir, tree, full, need); err != nil || len(failed) != 1 || !strings.Contains(failed[0], "a/big") {
		t.Fatalf("apply over a bad partial: %v %v", err, failed)
	}
	if st, failed, err := applyTree(t, dir, tree, full, need); err != nil || len(failed) != 0 || st.BytesResumed != 0 {
		t.Fatalf("apply after it: %v %v %+v", err, failed, st)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "a/big")); !bytes.Equal(got, tree.data[3]) {
		t.Fatalf("a/big: %d octets, not its content", len(got))
	}
}

// A file the destination lacks whose content it holds under another name
// of the tree is not needed: it is copied from there (as the user), and
// the stream's copy, there for other agents, is passed over. A source that
// is gone by then fails that entry alone.
func TestApplyBroadcastCopies(t *testing.T) {
	dir := t.TempDir()
	same := bytes.Repeat([]byte("same content "), 120000) // 1.5 MB
	tree := &bcastTree{data: map[uint32][]byte{}}
	tree.add("", wire.KindDir, nil, "")
	tree.add("a", wire.KindDir, nil, "")
	tree.add("a/one", wire.KindFile, same, "")
	tree.add("b", wire.KindDir, nil, "")
	tree.add("b/two", wire.KindFile, same, "")
	tree.add("c", wire.KindFile, []byte("other\n"), "")
	os.MkdirAll(filepath.Join(dir, "a"), 0o755)
	os.WriteFile(filepath.Join(dir, "a/one"), same, 0o644)
	need, have, copies := needsCopies(t, dir, tree)
	if countBits(need, len(tree.entries)) != 1 || !wire.BitmapHas(need, 5) || have != 2*uint64(len(same)) || copies[5] != "a/one" {
		t.Fatalf("need %08b, have %d, copies %v", need, have, copies)
	}
	// Another agent lacked b/two: the stream holds it too.
	content := append([]byte(nil), need...)
	wire.BitmapSet(content, 4)
	sr := &skipReader{r: bytes.NewReader(tree.stream(content))}
	st, failed, err := applyCopies(t, dir, tree, sr, content, copies)
	if err != nil || len(failed) != 0 {
		t.Fatalf("apply: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "b/two")); !bytes.Equal(got, same) {
		t.Fatalf("b/two: %d octets, not its content", len(got))
	}
	if sr.read != len("other\n") || sr.skipped != len(same) || st.Bytes != uint64(len(same))+6 {
		t.Fatalf("%d octets read from the stream, %d skipped; stats %+v", sr.read, sr.skipped, st)
	}

	// The source is gone when it is copied (Needs saw it): b/two fails,
	// and so does a/one (its content is not in the stream); c lands.
	dir2 := t.TempDir()
	_, failed, err = applyCopies(t, dir2, tree, bytes.NewReader(tree.stream(need)), need, copies)
	sort.Strings(failed)
	if err != nil || len(failed) != 2 || !strings.HasPrefix(failed[0], "a/one: ") || !strings.HasPrefix(failed[1], "b/two: copying from a/one") {
		t.Fatalf("apply without the source: %v %v", err, failed)
	}
	if got, _ := os.ReadFile(filepath.Join(dir2, "c")); string(got) != "other\n" {
		t.Fatalf("c is %q", got)
	}
}

func applyCopies(t *testing.T, dir string, tree *bcastTree, stream io.Reader, content []byte, copies map[uint32]string) (ApplyStats, []string, error) {
	t.Helper()
	return applyConfig(t, dir, stream, ApplyConfig{Entries: tree.entries, Content: content, Copies: copies})
}

// applyConfig applies cfg (its Receiver and Failure set here) into dir,
// and returns the failures reported.
func applyConfig(t *testing.T, dir string, stream io.Reader, cfg ApplyConfig) (ApplyStats, []string, error) {
	t.Helper()
	root, err := chunkstore.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	var failed []string
	var mu sync.Mutex // the receiver's writers report failures
	cfg.Receiver = ReceiverConfig{Root: root, Flags: wire.XferRecursive, Umask: 0o022}
	cfg.Failure = func(path string, err error) {
		mu.Lock()
		failed = append(failed, path+": "+err.Error())
		mu.Unlock()
	}
	st, err := Apply(context.Background(), cfg, stream)
	return st, failed, err
}

// Names the receiver refuses are not needed and fail when applied; the
// rest of the broadcast lands.
func TestApplyBroadcastUnsafeNames(t *testing.T) {
	dir := t.TempDir()
	tree := &bcastTree{data: map[uint32][]byte{}}
	tree.add("ok", wire.KindFile, []byte("fine"), "")
	tree.add("../escape", wire.KindFile, []byte("evil"), "")
	tree.add("/abs", wire.KindFile, []byte("evil"), "")
	need, _ := needs(t, dir, tree)
	if countBits(need, 3) != 1 || !wire.BitmapHas(need, 0) {
		t.Fatalf("need %08b", need)
	}
	_, failed, err := applyTree(t, dir, tree, tree.stream(need), need)
	if err != nil || len(failed) != 2 {
		t.Fatalf("apply: %v, failed %v", err, failed)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape")); err == nil {
		t.Fatal("an entry escaped the destination")
	}
}
