// Package chunkstore is where transferred files land: it resolves names
// that come from the network strictly beneath a destination directory
// (no "..", no absolute paths, no symlink leading out), keeps partial
// files that an interrupted transfer resumes from, verifies every file's
// digest before renaming it into place atomically, and compares files for
// skipping. No sockets here.
package chunkstore

import (
	"errors"
	"fmt"
	"strings"
)

// Errors for unsafe names.
var (
	ErrUnsafePath = errors.New("chunkstore: unsafe path")
	ErrEscape     = errors.New("chunkstore: path leads outside the destination")
	// ErrSymlink: a name goes through a symlink below the destination
	// (names from the network never do, docs/PROTOCOL.md §10).
	ErrSymlink = errors.New("chunkstore: path goes through a symlink")
)

// ReservedPrefix begins the names of the receiver's own temporary files
// (partial files, symlinks being made). No name from the network may have
// a component that begins with it: a peer could otherwise plant a partial
// for a later transfer to resume from, or clobber one being written.
const ReservedPrefix = ".zpc-"

// CleanName validates a relative, '/'-separated name received from the
// network and returns it cleaned. The empty name is the root itself.
// Rejected: absolute paths, ".." components, NUL bytes, "." or empty
// components (except a trailing slash), components that begin with
// ReservedPrefix, and names over 4096 octets.
func CleanName(name string) (string, error) {
	if len(name) > 4096 {
		return "", fmt.Errorf("%w: name too long", ErrUnsafePath)
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: NUL in %q", ErrUnsafePath, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute path %q", ErrUnsafePath, name)
	}
	name = strings.TrimSuffix(name, "/")
	if name == "" {
		return "", nil
	}
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "..":
			return "", fmt.Errorf("%w: %q contains ..", ErrUnsafePath, name)
		case ".", "":
			return "", fmt.Errorf("%w: %q has an empty or . component", ErrUnsafePath, name)
		}
		if len(c) > 255 {
			return "", fmt.Errorf("%w: component too long in %q", ErrUnsafePath, name)
		}
		if strings.HasPrefix(c, ReservedPrefix) {
			return "", fmt.Errorf("%w: %q: names beginning with %s are reserved for zpc's temporary files", ErrUnsafePath, name, ReservedPrefix)
		}
	}
	return name, nil
}

// split returns the parent directory ("" for the root) and the base name.
func split(name string) (dir, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}
