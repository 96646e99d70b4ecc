package cli

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
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

var sink []byte

// allocated is what the process has allocated since it started.
func allocated() int64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

func TestGCLimit(t *testing.T) {
	for _, c := range []struct{ live, allocs, ceiling, want int64 }{
		{0, 0, math.MaxInt64, gcFloorStart},
		{1 << 20, gcGrowAfter - 1, math.MaxInt64, gcFloorStart},
		{1 << 20, gcGrowAfter, math.MaxInt64, gcFloor},
		{20 << 20, 0, math.MaxInt64, 40 << 20},
		{30 << 20, gcGrowAfter, math.MaxInt64, 60 << 20},
		{0, 0, 16 << 20, 16 << 20},
		{100 << 20, 1 << 40, 150 << 20, 150 << 20},
	} {
		if got := gcLimit(c.live, c.allocs, c.ceiling); got != c.want {
			t.Errorf("gcLimit(live %d, allocs %d, ceiling %d) = %d, want %d", c.live, c.allocs, c.ceiling, got, c.want)
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
	if allocated() < gcGrowAfter-64<<20 {
		if l := limitAfterGC(t, func(l int64) bool { return l == gcFloorStart }); l != gcFloorStart {
			t.Fatalf("small live heap, little allocated: limit %d MiB, want the first floor %d MiB", l>>20, gcFloorStart>>20)
		}
	}
	// Allocating past gcGrowAfter raises the floor.
	for range (gcGrowAfter >> 20) + 16 {
		sink = make([]byte, 1<<20)
	}
	sink = nil
	if l := limitAfterGC(t, func(l int64) bool { return l == gcFloor }); l != gcFloor {
		t.Fatalf("small live heap, %d MiB allocated: limit %d MiB, want the floor %d MiB", allocated()>>20, l>>20, gcFloor>>20)
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
