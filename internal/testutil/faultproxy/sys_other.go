//go:build !linux

package faultproxy

import (
	"errors"
	"net"
)

var errNoUnlisten = errors.New("faultproxy: cannot take a listener out of LISTEN on this OS")

// unlisten is unsupported here: Refuse falls back to accepting and resetting.
func unlisten(*net.TCPListener) error { return errNoUnlisten }

func relisten(*net.TCPListener) error { return errNoUnlisten }

// unacked cannot be told here; CutAfter does not wait for acknowledgement.
func unacked(*net.TCPConn) int { return 0 }
