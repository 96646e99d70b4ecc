package subscriber

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkNoopResync measures a no-op re-sync of a tree of 4 KiB files
// (100 per directory) through a Sender and a Receiver in one process, at
// 5,000 and 50,000 files: the cost per entry (ns/entry) must not grow
// with the tree. Skipping an identical file once cost five system calls
// on the receiver (a stat, then SetAttrs' open, fstat and close even with
// nothing to change) under a lock all writers shared: 20 µs per entry at
// 5,000 files, 36-50 µs at 20,000 here. bench/bench.sh measures the same
// with real processes (BENCH_SCALE=10 for 50,000 files).
func BenchmarkNoopResync(b *testing.B) {
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprintf("files=%d", n), func(b *testing.B) {
			src, dst := b.TempDir(), b.TempDir()
			makeTree(b, n, src, dst)
			b.ResetTimer()
			cpu0 := cpuTime(b)
			for range b.N {
				st, _ := transfer(b, src, dst)
				if st.Skipped != n {
					b.Fatalf("%d skipped, want %d", st.Skipped, n)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
			// CPU time too: wall time on a shared machine swings with
			// everybody's load.
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N*n), "cpu-ns/entry")
		})
	}
}

// cpuTime is the CPU time (user and system) the process used so far, in
// nanoseconds.
func cpuTime(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// makeTree writes the same n files of 4 KiB, 100 per subdirectory, into
// each of dirs, with the same modification time: a copy that a re-sync
// finds identical.
func makeTree(tb testing.TB, n int, dirs ...string) {
	tb.Helper()
	mt := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for i := range n {
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 2048)
		for _, dir := range dirs {
			sub := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
			if i%100 == 0 {
				if err := os.Mkdir(sub, 0o755); err != nil {
					tb.Fatal(err)
				}
			}
			p := filepath.Join(sub, fmt.Sprintf("f%03d", i%100))
			if err := os.WriteFile(p, data, 0o644); err != nil {
				tb.Fatal(err)
			}
			if err := os.Chtimes(p, mt, mt); err != nil {
				tb.Fatal(err)
			}
		}
	}
}
