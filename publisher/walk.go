package publisher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// walkDir emits what is below the directory at path (emitted already, as
// name), lexically and parents first, as filepath.WalkDir would. It stats
// each entry relative to its directory's descriptor (fstatat of one
// component) rather than by its whole path, and keeps of each entry only
// what a FILE message needs. A no-op re-sync of 50,000 files spent 65% of
// zpc's CPU in WalkDir: a path lookup of every component per lstat
// (__d_lookup_rcu alone 10% of all CPU), a fileStat and two path strings
// per entry, and page faults on the memory they took. The directory is
// read and its entries stated before any is emitted, so that no
// descriptor stays open beneath it: a directory's descriptor is open only
// while it is read (with the read-ahead of listing, at most one per level
// of the tree at once). top
// says path is the tree's root, which Walk found to be a directory, or a
// symlink to one that the source named as "link/" (rsync's way of asking
// for what it points to).
func walkDir(path, name string, top bool, warn func(string, bool), emit func(Entry) error) error {
	return walkListed(path, name, listDir(path, top), warn, emit)
}

// listing is a directory's entries as readDirStat found them, read on
// another goroutine: while a directory's entries are emitted (encoded
// and sent, the other half of a no-op's CPU), the next subdirectory's are
// already being listed and stated (bench/README.md, ninth round). At
// most one listing per level of the tree is read ahead, so what is held
// stays bounded by the depth, as the recursion's own.
type listing struct {
	done chan struct{}
	ents []statInfo
	err  error
}

func listDir(path string, top bool) *listing {
	l := &listing{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.ents, l.err = readDirStat(path, top)
	}()
	return l
}

// walkListed is walkDir with the directory's listing l under way.
func walkListed(path, name string, l *listing, warn func(string, bool), emit func(Entry) error) error {
	<-l.done
	if l.err != nil {
		warn(fmt.Sprintf("%s: %v", path, l.err), true)
		return nil
	}
	ents := l.ents
	dir := path
	if !strings.HasSuffix(dir, "/") {
		dir += "/"
	}
	// ahead is the listing of the next subdirectory to walk: the first
	// one's starts now, each next one's when the one before is entered.
	var ahead *listing
	nextDir := func(after int) {
		ahead = nil
		for j := after + 1; j < len(ents); j++ {
			if ents[j].walkedInto() {
				ahead = listDir(dir+ents[j].name, false)
				return
			}
		}
	}
	nextDir(-1)
	defer func() {
		if ahead != nil {
			<-ahead.done // no goroutine outlives the walk
		}
	}()
	for i := range ents {
		e := &ents[i]
		p := dir + e.name
		switch {
		case reserved(e.name):
			warn(skipReserved(p), false)
			continue
		case e.err != nil:
			warn(fmt.Sprintf("%s: %v", p, e.err), true)
			continue
		}
		n := e.name
		if name != "" {
			n = name + "/" + e.name
		}
		if err := emitOne(Entry{Name: n, Path: p, Info: e}, warn, emit); err != nil {
			return err
		}
		if e.walkedInto() {
			l := ahead // this entry's: nextDir looks for what this tests
			nextDir(i)
			if err := walkListed(p, n, l, warn, emit); err != nil {
				return err
			}
		}
	}
	return nil
}

// walkedInto reports whether walkListed descends into the entry: a
// directory it could stat, not one of the receiver's reserved names.
func (s *statInfo) walkedInto() bool { return s.err == nil && !reserved(s.name) && s.IsDir() }

// readDirStat lists the directory at path, sorted by name, each entry
// with what fstatat (not following a symlink) found or why it failed.
// Below the root the directory is opened with O_NOFOLLOW: a symlink put
// in its place after it was found to be a directory is not followed.
func readDirStat(path string, root bool) ([]statInfo, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if !root {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, err
	}
	slices.Sort(names)
	ents := make([]statInfo, len(names))
	var st unix.Stat_t
	for i, n := range names {
		e := &ents[i]
		e.name = n
		if reserved(n) {
			continue // skipped unread
		}
		if e.err = unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); e.err == nil {
			e.fill(&st)
		}
	}
	return ents, nil
}

// statInfo is an fs.FileInfo with what an entry's FILE message needs.
type statInfo struct {
	name     string
	size     int64
	mtime    int64 // ns since the epoch
	mode     fs.FileMode
	uid, gid uint32
	err      error
}

func (s *statInfo) fill(st *unix.Stat_t) {
	s.size = st.Size
	s.mtime = st.Mtim.Nano()
	s.uid, s.gid = st.Uid, st.Gid
	s.mode = fileMode(st.Mode)
}

// fileMode is os's translation of st_mode into an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

func (s *statInfo) Name() string             { return s.name }
func (s *statInfo) Size() int64              { return s.size }
func (s *statInfo) Mode() fs.FileMode        { return s.mode }
func (s *statInfo) ModTime() time.Time       { return time.Unix(0, s.mtime) }
func (s *statInfo) IsDir() bool              { return s.mode.IsDir() }
func (s *statInfo) Sys() any                 { return nil }
func (s *statInfo) owner() (uid, gid uint32) { return s.uid, s.gid }
