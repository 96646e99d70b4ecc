package main

import (
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// signalsResetEnv marks a zpd that re-executed itself with an empty
// signal mask, so that it does not try again.
const signalsResetEnv = "ZPD_SIGNALS_RESET"

// cleanInheritedSignals keeps what zpd inherited from whoever started it
// (nohup, trap "" HUP, a blocked signal mask) from reaching the commands
// it runs, as sshd resets dispositions and the mask before exec. Go's
// fork resets to SIG_DFL only the signals the runtime handles, and gives
// the child the mask the process started with; there is no hook between
// fork and exec. So, once at start:
//
//   - a blocked mask: zpd unblocks everything on this thread and
//     re-executes itself (same pid, same arguments), so its children
//     start with nothing blocked;
//   - a signal still ignored (SIGHUP and SIGINT under nohup or trap, and
//     job-control signals): zpd installs a handler that drops it, so zpd
//     still ignores it and its children get the default.
//
// It returns normally unless it re-executed zpd.
func cleanInheritedSignals() {
	resetDone := os.Getenv(signalsResetEnv) != ""
	os.Unsetenv(signalsResetEnv)
	ign, blk, ok := procSignalState()
	if !ok {
		return
	}
	if blk != 0 && !resetDone {
		runtime.LockOSThread()
		var empty unix.Sigset_t
		if unix.PthreadSigmask(unix.SIG_SETMASK, &empty, nil) == nil {
			os.Setenv(signalsResetEnv, "1")
			_ = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
			os.Unsetenv(signalsResetEnv) // exec failed: go on as we are
		}
		runtime.UnlockOSThread()
	}
	var ignored []os.Signal
	for n := 1; n <= 64; n++ {
		sig := syscall.Signal(n)
		if ign&(1<<(n-1)) == 0 || sig == syscall.SIGKILL || sig == syscall.SIGSTOP {
			continue
		}
		if n == 32 || n == 33 {
			// glibc's SIGCANCEL and SIGSETXID: Go's runtime leaves them
			// alone (os/signal cannot take them over), and GNU make
			// starts everything with both ignored. Nothing in zpd uses
			// them: back to the default, so commands get the default.
			setDefault(n)
			continue
		}
		ignored = append(ignored, sig)
	}
	if len(ignored) > 0 {
		// Never read: a full channel drops the signal, which is what
		// ignoring it means.
		signal.Notify(make(chan os.Signal, 1), ignored...)
	}
}

// procSignalState reads the ignored and blocked signal sets of this
// process (its main thread) from /proc/self/status.
func procSignalState() (ign, blk uint64, ok bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, false
	}
	var gotIgn, gotBlk bool
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "SigIgn:":
			ign, err = strconv.ParseUint(f[1], 16, 64)
			gotIgn = err == nil
		case "SigBlk:":
			blk, err = strconv.ParseUint(f[1], 16, 64)
			gotBlk = err == nil
		}
	}
	return ign, blk, gotIgn && gotBlk
}

// setDefault sets signal n's disposition to SIG_DFL with rt_sigaction,
// for the signals the Go runtime neither handles nor lets os/signal handle.
func setDefault(n int) {
	var act struct { // the kernel's struct sigaction on Linux
		handler  uintptr // SIG_DFL = 0
		flags    uint64
		restorer uintptr
		mask     uint64
	}
	_, _, _ = unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(n), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
}
