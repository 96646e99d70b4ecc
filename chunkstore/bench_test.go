package chunkstore

import (
	"strconv"
	"testing"
)

// BenchmarkResume measures what reopening a 1 GiB partial costs (the
// receiver hashes what it keeps before it answers the entry), with the
// partial in the page cache as after an interruption.
func BenchmarkResume(b *testing.B) {
	const size = 1 << 30
	dir := b.TempDir()
	r, err := OpenRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	p, err := r.OpenPartial("big", size+1, 1)
	if err != nil {
		b.Fatal(err)
	}
	buf := randomBytes(1<<20, 3)
	for off := 0; off < size; off += len(buf) {
		if err := p.Write(uint64(off), buf); err != nil {
			b.Fatal(err)
		}
	}
	p.Close()
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		q, err := r.OpenPartial("big", size+1, 1)
		if err != nil {
			b.Fatal(err)
		}
		if q.Have() != size {
			b.Fatalf("have %d", q.Have())
		}
		q.Close()
	}
}

// BenchmarkSmallFile measures the file system calls of receiving one
// 4 KiB file (partial, write, seal, rename) without the flush, which a
// batch of small files shares (one syncfs).
func BenchmarkSmallFile(b *testing.B) {
	dir := b.TempDir()
	r, err := OpenRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	content := randomBytes(4096, 1)
	sum := digestOf(content)
	b.ResetTimer()
	for i := range b.N {
		name := "f" + strconv.Itoa(i%5000)
		p, err := r.OpenPartial(name, 4096, int64(i))
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Write(0, content); err != nil {
			b.Fatal(err)
		}
		if err := p.Seal(4096, sum, Attrs{Mode: 0o644, MTime: 1e18}); err != nil {
			b.Fatal(err)
		}
		if err := p.Publish(); err != nil {
			b.Fatal(err)
		}
	}
}
