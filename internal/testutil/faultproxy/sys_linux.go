package faultproxy

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// unlisten takes a listening socket out of the LISTEN state while keeping
// its bound address: connect(2) with AF_UNSPEC disconnects a TCP socket,
// which for a listener resets the connections waiting in its accept queue
// and makes the kernel answer new SYNs with a RST (ECONNREFUSED).
func unlisten(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
		_, _, e := unix.Syscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// relisten puts a socket taken out of LISTEN by unlisten back into it.
func relisten(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.Listen(int(fd), 4096)
	})
	if err != nil {
		return err
	}
	return serr
}

// unacked returns how many bytes c's socket still holds for sending (unsent
// or not yet acknowledged by the peer), or 0 if that cannot be told.
func unacked(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}
