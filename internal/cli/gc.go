package cli

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// The collector's floor: the memory (heap, stacks and runtime, as
// debug.SetMemoryLimit counts it) below which it does not run. A process
// starts at gcFloorStart and moves to gcFloor once it has allocated
// gcGrowAfter octets: a bulk transfer then pays fewer collections, while
// a short command, a small copy or a follower of bursty output never
// touches 48 MiB of fresh pages (a page fault each: on a VM where faults
// are dear, a 48 MiB floor cost `zp job follow` of 100 MiB a third more
// CPU and twice the RSS; bench/README.md).
const (
	gcFloorStart = 24 << 20
	gcFloor      = 48 << 20
	gcGrowAfter  = 256 << 20
)

// TuneGC makes the collector run when the process's memory reaches
// max(floor, twice the live heap of the last collection), capped at
// ceiling (0: none), instead of at Go's default of twice the live heap
// alone. zmq4 allocates every frame it receives (up to 1 MiB each), so a
// pipe or a copy allocates as many octets as it moves while what is live
// stays small (credit windows): at the default that is a collection every
// few MiB, and its sweeping and the page faults of memory given back and
// taken again cost a quarter to a third of the receiving process's CPU
// (bench/README.md). Above the floor this is the default (GOGC=100) again,
// so memory stays bounded by what is live, and the collector never runs
// flat out against a limit below the live heap (but for the ceiling, which
// is zpd's --memory-limit, a soft cap by design). GOMEMLIMIT in the
// environment turns this off; so does GOGC, which leaves only the ceiling.
func TuneGC(ceiling int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if os.Getenv("GOGC") != "" {
		if ceiling > 0 {
			debug.SetMemoryLimit(ceiling)
		}
		return
	}
	if ceiling <= 0 {
		ceiling = math.MaxInt64
	}
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(gcLimit(0, 0, ceiling))
	rearmGC(gcTuning.Add(1), ceiling)
}

// gcLimit is the memory limit after a collection that left live octets
// live, in a process that has allocated allocs octets since it started.
func gcLimit(live, allocs, ceiling int64) int64 {
	floor := int64(gcFloorStart)
	if allocs >= gcGrowAfter {
		floor = gcFloor
	}
	return min(max(floor, 2*live), ceiling)
}

// gcSentinel's finalizer runs after each collection that found it
// unreachable: it sets the next limit and arms a new sentinel.
type gcSentinel struct{ _ [16]byte }

var gcSamples = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}}

// gcTuning is the generation of the tuner that may run: a sentinel of an
// older one (a test's, after it stopped) does nothing and is not re-armed.
var gcTuning atomic.Int64

func rearmGC(gen, ceiling int64) {
	s := &gcSentinel{}
	runtime.SetFinalizer(s, func(*gcSentinel) {
		if gcTuning.Load() != gen {
			return
		}
		metrics.Read(gcSamples)
		var v [2]int64
		for i, s := range gcSamples {
			if s.Value.Kind() == metrics.KindUint64 {
				v[i] = int64(min(s.Value.Uint64(), math.MaxInt64))
			}
		}
		debug.SetMemoryLimit(gcLimit(v[0], v[1], ceiling))
		rearmGC(gen, ceiling)
	})
}
