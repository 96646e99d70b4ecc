package chunkstore

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
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
	p, err := r.OpenPartial("big", size+1, 1, sha256.New)
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
		q, err := r.OpenPartial("big", size+1, 1, sha256.New)
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
// batch of small files shares (BenchmarkCommitBatch).
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
		p, err := r.OpenPartial(name, 4096, int64(i), sha256.New)
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

// BenchmarkCommitBatch measures making a batch of 768 sealed 4 KiB files
// durable and renaming them into place, the way the receiver commits
// small files, with each durability strategy:
//
//   - syncfs: one syncfs for the batch (flushes the whole file system);
//   - fdatasync-N: one fdatasync per file, N at a time;
//   - sfr+fdatasync-N: sync_file_range(WRITE) on every file first, then
//     one fdatasync per file, N at a time.
//
// ZP_BENCH_DIRTY_MIB=1024 writes that much unrelated data into the same
// file system (not synced) before every batch, as another program on the
// machine would: syncfs pays for it, per-file syncs must not. Run it on
// the disk in question: go test -run X -bench CommitBatch -benchtime 5x
// ./chunkstore (TMPDIR decides where; tmpfs measures nothing).
func BenchmarkCommitBatch(b *testing.B) {
	dirtyMiB, _ := strconv.Atoi(os.Getenv("ZP_BENCH_DIRTY_MIB"))
	content := randomBytes(4096, 1)
	sum := digestOf(content)
	dirty := randomBytes(1<<20, 2)
	const files = 768
	strategies := []struct {
		name    string
		sfr     bool
		workers int // 0: syncfs
	}{
		{"syncfs", false, 0},
		{"fdatasync-16", false, 16},
		{"fdatasync-64", false, 64},
		{"sfr+fdatasync-16", true, 16},
		{"sfr+fdatasync-64", true, 64},
	}
	for _, st := range strategies {
		b.Run(st.name, func(b *testing.B) {
			dir := b.TempDir()
			r, err := OpenRoot(dir)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			for i := range b.N {
				b.StopTimer()
				if dirtyMiB > 0 {
					f, err := os.Create(filepath.Join(dir, "dirty"))
					if err != nil {
						b.Fatal(err)
					}
					for range dirtyMiB {
						if _, err := f.Write(dirty); err != nil {
							b.Fatal(err)
						}
					}
					f.Close()
				}
				// The files are written untimed: the receiver writes them
				// as they arrive; the flush is what differs.
				ps := make([]*Partial, files)
				for j := range ps {
					p, err := r.OpenPartial(fmt.Sprintf("b%d-%d", i, j), 4096, int64(j), sha256.New)
					if err != nil {
						b.Fatal(err)
					}
					if err := p.Write(0, content); err != nil {
						b.Fatal(err)
					}
					if err := p.Seal(4096, sum, Attrs{Mode: 0o644, MTime: 1e18}); err != nil {
						b.Fatal(err)
					}
					ps[j] = p
				}
				b.StartTimer()
				if st.workers == 0 {
					if err := r.SyncFS(); err != nil {
						b.Fatal(err)
					}
					for _, p := range ps {
						if err := p.Publish(); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					if st.sfr {
						for _, p := range ps {
							p.StartSync()
						}
					}
					jobs := make(chan *Partial)
					var wg sync.WaitGroup
					var failed atomic.Value
					for range st.workers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for p := range jobs {
								err := p.Sync()
								if err == nil {
									err = p.Publish()
								}
								if err != nil {
									failed.Store(err)
								}
							}
						}()
					}
					for _, p := range ps {
						jobs <- p
					}
					close(jobs)
					wg.Wait()
					if err, _ := failed.Load().(error); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if err := os.RemoveAll(dir + "/dirty"); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*files), "µs/file")
		})
	}
}
