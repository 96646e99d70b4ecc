package cli

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// limitAfterGC collects until the tuner's finalizer has set the memory
// limit to something want accepts, and returns it.
func limitAfterGC(t *testing.T, want func(int64) bool) int64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the finalizer goroutine
		l := debug.SetMemoryLimit(-1)
		if want(l) || time.Now().After(deadline) {
			return l
		}
	}
}

func TestTuneGC(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	defer func() {
		gcTuning.Add(1) // stop the sentinels
		debug.SetGCPercent(100)
		debug.SetMemoryLimit(math.MaxInt64)
	}()

	TuneGC(0)
	if l := limitAfterGC(t, func(l int64) bool { return l == gcFloor }); l != gcFloor {
		t.Fatalf("small live heap: limit %d MiB, want the floor %d MiB", l>>20, gcFloor>>20)
	}
	live := make([][]byte, 100) // 100 MiB live: the limit follows it
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	if l := limitAfterGC(t, func(l int64) bool { return l >= 200<<20 }); l < 200<<20 {
		t.Fatalf("100 MiB live: limit %d MiB, want at least twice that", l>>20)
	}
	runtime.KeepAlive(live)
	live = nil
	if l := limitAfterGC(t, func(l int64) bool { return l == gcFloor }); l != gcFloor {
		t.Fatalf("live heap freed: limit %d MiB, want the floor again", l>>20)
	}

	// zpd's --memory-limit caps it.
	TuneGC(150 << 20)
	live = make([][]byte, 100)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	if l := limitAfterGC(t, func(l int64) bool { return l == 150<<20 }); l != 150<<20 {
		t.Fatalf("100 MiB live, ceiling 150 MiB: limit %d MiB", l>>20)
	}
	runtime.KeepAlive(live)

	// An explicit GOGC leaves the collector alone but for the ceiling.
	gcTuning.Add(1)
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOGC", "100")
	TuneGC(300 << 20)
	if l := debug.SetMemoryLimit(-1); l != 300<<20 {
		t.Fatalf("GOGC set: limit %d MiB, want the ceiling", l>>20)
	}
	if p := debug.SetGCPercent(100); p != 100 {
		t.Fatalf("GOGC set: GC percent %d", p)
	}
}
