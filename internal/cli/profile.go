package cli

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// StartProfile writes a CPU profile to $ZP_CPUPROFILE.PROG.PID when that
// variable is set (for developers measuring zp; see bench/README.md).
// The returned function stops it.
func StartProfile(io *IO, prog string) func() {
	base := io.Getenv("ZP_CPUPROFILE")
	if base == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%s.%d", base, prog, os.Getpid()))
	if err != nil {
		fmt.Fprintf(io.Err, "%s: ZP_CPUPROFILE: %v\n", prog, err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
