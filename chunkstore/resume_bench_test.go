package chunkstore

import (
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
