package cli

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// StartProfile writes a CPU profile to $ZP_CPUPROFILE.PROG.PID and an
// allocation profile (pprof's heap profile: alloc_space, alloc_objects
// since the start, and what is still in use) to $ZP_MEMPROFILE.PROG.PID
// when those variables are set (for developers measuring zp; see
// bench/README.md). The returned function stops the CPU profile and
// writes the allocation profile.
func StartProfile(io *IO, prog string) func() {
	stopCPU := func() {}
	if base := io.Getenv("ZP_CPUPROFILE"); base != "" {
		f, err := os.Create(fmt.Sprintf("%s.%s.%d", base, prog, os.Getpid()))
		if err != nil {
			fmt.Fprintf(io.Err, "%s: ZP_CPUPROFILE: %v\n", prog, err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
		} else {
			stopCPU = func() {
				pprof.StopCPUProfile()
				f.Close()
			}
		}
	}
	mem := io.Getenv("ZP_MEMPROFILE")
	return func() {
		stopCPU()
		if mem == "" {
			return
		}
		f, err := os.Create(fmt.Sprintf("%s.%s.%d", mem, prog, os.Getpid()))
		if err != nil {
			fmt.Fprintf(io.Err, "%s: ZP_MEMPROFILE: %v\n", prog, err)
			return
		}
		defer f.Close()
		runtime.GC() // up-to-date in-use figures; alloc_* are cumulative anyway
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
	}
}
