package cli

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// gcFloor is the memory (heap, stacks and runtime, as debug.SetMemoryLimit
// counts it) below which the collector does not run.
const gcFloor = 48 << 20

// TuneGC makes the collector run when the process's memory reaches
// max(gcFloor, twice the live heap of the last collection), capped at
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
	debug.SetMemoryLimit(min(gcFloor, ceiling))
	rearmGC(gcTuning.Add(1), ceiling)
}

// gcSentinel's finalizer runs after each collection that found it
// unreachable: it sets the next limit and arms a new sentinel.
type gcSentinel struct{ _ [16]byte }

var liveSample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}

// gcTuning is the generation of the tuner that may run: a sentinel of an
// older one (a test's, after it stopped) does nothing and is not re-armed.
var gcTuning atomic.Int64

func rearmGC(gen, ceiling int64) {
	s := &gcSentinel{}
	runtime.SetFinalizer(s, func(*gcSentinel) {
		if gcTuning.Load() != gen {
			return
		}
		metrics.Read(liveSample)
		live := int64(0)
		if liveSample[0].Value.Kind() == metrics.KindUint64 {
			live = int64(liveSample[0].Value.Uint64())
		}
		debug.SetMemoryLimit(min(max(gcFloor, 2*live), ceiling))
		rearmGC(gen, ceiling)
	})
}
