package broker

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errNoPidfd means the kernel has no pidfd_open (Linux < 5.3): callers
// fall back to a blocking wait.
var errNoPidfd = errors.New("broker: pidfd_open not supported")

// waitExited waits until the child pid has exited (it stays a zombie for
// the caller to reap) or ctx ends. It waits on a pidfd through Go's
// poller, so a waiting command holds no OS thread: exec.Cmd.Wait blocks
// one thread per running command in wait4, and 10,000 sleeping commands
// killed zpd with "thread exhaustion".
func waitExited(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
			return errNoPidfd
		}
		return err
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stop()
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		// WNOWAIT: look, do not reap (exec.Cmd.Wait does that).
		werr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return werr != nil || info.Signo != 0
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, os.ErrNoDeadline) {
			return errNoPidfd // not pollable here: wait the old way
		}
		return err
	}
	return werr
}
