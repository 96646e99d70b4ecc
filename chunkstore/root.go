package chunkstore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"

	"github.com/zpipes/zp/internal/digest"
	"golang.org/x/sys/unix"
)

// Root is a destination directory. Every name below it is resolved with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): no component may be a
// symlink (ErrSymlink), even one that points within the root, so that a
// name has one meaning; nothing can lead out (ErrEscape). The root itself
// may be reached through symlinks. Root's methods are safe for concurrent
// use; opened directories are cached.
type Root struct {
	Path string
	fd   int

	mu   sync.RWMutex   // read-held while a cached descriptor is used
	dirs map[string]int // open directory fds by name
}

// OpenRoot opens an existing directory as a Root.
func OpenRoot(path string) (*Root, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &Root{Path: path, fd: fd, dirs: map[string]int{"": fd}}, nil
}

// Close releases the root and its cached directories.
func (r *Root) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, fd := range r.dirs {
		unix.Close(fd)
		delete(r.dirs, name)
	}
	return nil
}

func (r *Root) display(name string) string {
	if name == "" {
		return r.Path
	}
	return r.Path + "/" + name
}

// pathErr wraps an errno from a resolution beneath the root.
func (r *Root) pathErr(op, name string, err error) error {
	if errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("%w: %s", ErrEscape, r.display(name))
	}
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%w: %s (zpc never writes through a symlink in the destination)", ErrSymlink, r.display(name))
	}
	return &fs.PathError{Op: op, Path: r.display(name), Err: err}
}

const maxCachedDirs = 256

// dir returns a descriptor for the existing directory name (beneath the
// root) that the caller owns and closes. The cache keeps its own
// descriptors and may close them at any time (when it is full), so it
// hands out duplicates: a descriptor in use is never closed under its
// user, nor its number reused for another file.
func (r *Root) dir(name string) (int, error) {
	r.mu.RLock()
	if fd, ok := r.dirs[name]; ok {
		defer r.mu.RUnlock()
		return dupFD(fd, name, r)
	}
	r.mu.RUnlock()
	fd, err := openBeneath(r.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, r.pathErr("open", name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.dirs[name]; ok {
		unix.Close(fd)
		return dupFD(old, name, r)
	}
	if len(r.dirs) >= maxCachedDirs {
		for n, f := range r.dirs {
			if n != "" {
				unix.Close(f)
				delete(r.dirs, n)
			}
		}
	}
	r.dirs[name] = fd
	return dupFD(fd, name, r)
}

// withDir runs f with the cached descriptor of the existing directory
// name, holding the cache's lock for reading so that the descriptor stays
// open: for quick *at system calls, without the dup and close that dir
// costs. Receivers' writers so make their calls in parallel.
func (r *Root) withDir(name string, f func(dfd int) error) error {
	r.mu.RLock()
	if fd, ok := r.dirs[name]; ok {
		defer r.mu.RUnlock()
		return f(fd)
	}
	r.mu.RUnlock()
	fd, err := r.dir(name) // opens and caches it
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return f(fd)
}

func dupFD(fd int, name string, r *Root) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, r.pathErr("dup", name, err)
	}
	return nfd, nil
}

// openBeneath is openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS
// (Linux 5.6+): a symlink anywhere in name fails with ELOOP. On older
// kernels it walks the components with O_NOFOLLOW, which refuses the same.
func openBeneath(dirfd int, name string, flags int, mode uint32) (int, error) {
	if name == "" {
		name = "."
	}
	if noOpenat2 {
		return openNoFollow(dirfd, name, flags, mode)
	}
	how := &unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS}
	fd, err := unix.Openat2(dirfd, name, how)
	// EAGAIN: a rename raced the lookup (the kernel refuses to guess).
	for i := 0; i < 8 && (errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN)); i++ {
		fd, err = unix.Openat2(dirfd, name, how)
	}
	if errors.Is(err, unix.ENOSYS) {
		return openNoFollow(dirfd, name, flags, mode)
	}
	return fd, err
}

// noOpenat2 makes openBeneath take the path of kernels without openat2
// (tests).
var noOpenat2 bool

func openNoFollow(dirfd int, name string, flags int, mode uint32) (int, error) {
	cur := dirfd
	defer func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}()
	parts := splitAll(name)
	for i, p := range parts {
		last := i == len(parts)-1
		f := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if last {
			f = flags | unix.O_NOFOLLOW
		}
		fd, err := unix.Openat(cur, p, f, mode)
		if errors.Is(err, unix.ENOTDIR) {
			// O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR, as a file.
			var st unix.Stat_t
			if unix.Fstatat(cur, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		if err != nil {
			return -1, err
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		cur = fd
	}
	fd := cur
	cur = dirfd
	return fd, nil
}

func splitAll(name string) []string {
	if name == "." || name == "" {
		return []string{"."}
	}
	var out []string
	for name != "" {
		d, b := split(name)
		out = append([]string{b}, out...)
		name = d
	}
	return out
}

// Lstat describes name without following a final symlink.
func (r *Root) Lstat(name string) (*unix.Stat_t, error) {
	d, b := split(name)
	if name == "" {
		var st unix.Stat_t
		if err := unix.Fstat(r.fd, &st); err != nil {
			return nil, r.pathErr("stat", name, err)
		}
		return &st, nil
	}
	var st unix.Stat_t
	err := r.withDir(d, func(dfd int) error {
		if err := unix.Fstatat(dfd, b, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return r.pathErr("stat", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// MkdirAll creates the directory name and its missing parents (mode 0700
// while the transfer runs; SetAttrs gives them their final mode).
func (r *Root) MkdirAll(name string) error {
	if name == "" {
		return nil
	}
	r.mu.RLock()
	_, cached := r.dirs[name]
	r.mu.RUnlock()
	if cached {
		return nil
	}
	if fd, err := r.dir(name); err == nil {
		unix.Close(fd)
		return nil
	}
	d, b := split(name)
	if err := r.MkdirAll(d); err != nil {
		return err
	}
	dfd, err := r.dir(d)
	if err != nil {
		return err
	}
	err = unix.Mkdirat(dfd, b, 0o700)
	unix.Close(dfd)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return r.pathErr("mkdir", name, err)
	}
	fd, err := r.dir(name)
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

// Symlink makes name a symlink to target, replacing a file or symlink
// there (never a directory). The target is stored as given: it is never
// followed by chunkstore.
func (r *Root) Symlink(target, name string) error {
	if name == "" {
		return fmt.Errorf("%w: a symlink cannot be the destination root", ErrUnsafePath)
	}
	d, b := split(name)
	dfd, err := r.dir(d)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if st, err := r.Lstat(name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return r.pathErr("symlink", name, unix.EISDIR)
	}
	// A name nobody can know in advance (and plant something at).
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := ReservedPrefix + "link-" + hex.EncodeToString(rnd[:])
	if err := unix.Symlinkat(target, dfd, tmp); err != nil {
		return r.pathErr("symlink", name, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, b); err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return r.pathErr("rename", name, err)
	}
	return nil
}

// Attrs are what SetAttrs applies.
type Attrs struct {
	Mode    uint32 // permission bits with setuid, setgid and sticky
	SetMode bool   // apply Mode (else only a Mode other than 0 is applied)
	// KeepSetgid keeps a directory's setgid bit (inherited from its
	// parent) when Mode has none.
	KeepSetgid bool
	MTime      int64 // nanoseconds; 0 leaves the time alone
	Chown      bool
	UID, GID   uint32
}

// setMode reports whether the mode is to be applied.
func (a *Attrs) setMode() bool { return a.SetMode || a.Mode != 0 }

// Held reports whether st, what an Lstat found at an entry that is not a
// symlink, already has these attributes, so that SetAttrs would change
// nothing: a receiver that skips an identical file then needs no more
// system calls than that one stat (SetAttrs costs four even when it
// changes nothing: open, fstat, close and the stat before).
func (a *Attrs) Held(st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return false // SetAttrs treats symlinks apart
	}
	if a.Chown && (st.Uid != a.UID || st.Gid != a.GID) {
		return false
	}
	mode := a.Mode & 0o7777
	if a.KeepSetgid && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		mode |= st.Mode & unix.S_ISGID
	}
	if a.setMode() && st.Mode&0o7777 != mode {
		return false
	}
	return a.MTime == 0 || st.Mtim.Nano() == a.MTime
}

// testHookSetAttrs runs in SetAttrs after the entry was opened.
var testHookSetAttrs func()

// SetAttrs applies attributes to name without ever following a symlink:
// it opens the entry itself (O_PATH|O_NOFOLLOW) and changes that inode,
// whatever is put at the name meanwhile. A symlink gets only its owner
// and time.
func (r *Root) SetAttrs(name string, a Attrs) error {
	d, b := split(name)
	if name == "" {
		b = "."
	}
	return r.withDir(d, func(dfd int) error {
		fd, err := unix.Openat(dfd, b, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return r.pathErr("open", name, err)
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return r.pathErr("stat", name, err)
		}
		if testHookSetAttrs != nil {
			testHookSetAttrs()
		}
		isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
		if a.Chown {
			if err := unix.Fchownat(fd, "", int(a.UID), int(a.GID), unix.AT_EMPTY_PATH); err != nil {
				return r.pathErr("chown", name, err)
			}
		}
		mode := a.Mode & 0o7777
		if a.KeepSetgid && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			mode |= st.Mode & unix.S_ISGID
		}
		if a.setMode() && !isLink && (a.Chown || st.Mode&0o7777 != mode) { // chown clears setuid
			if err := chmodFD(fd, mode); err != nil {
				return r.pathErr("chmod", name, err)
			}
		}
		if a.MTime != 0 && st.Mtim.Nano() != a.MTime {
			err := utimesFD(fd, a.MTime, isLink)
			if errors.Is(err, errNoFDCall) { // an old kernel: a symlink by name, never followed
				ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(a.MTime)}
				err = unix.UtimesNanoAt(dfd, b, ts, unix.AT_SYMLINK_NOFOLLOW)
			}
			if err != nil {
				return r.pathErr("utimes", name, err)
			}
		}
		return nil
	})
}

// noEmptyPath makes chmodFD and utimesFD take their fallbacks (tests).
var noEmptyPath bool

// errNoFDCall: the kernel cannot change this attribute through an O_PATH
// descriptor of a symlink.
var errNoFDCall = errors.New("chunkstore: no system call for this descriptor")

// chmodFD changes the mode of the inode fd (O_PATH, not a symlink) refers
// to: fchmodat2(AT_EMPTY_PATH) (Linux 6.6), or else chmod of its
// /proc/self/fd link, which leads to that inode and no further.
func chmodFD(fd int, mode uint32) error {
	if !noEmptyPath {
		err := unix.Fchmodat(fd, "", mode, unix.AT_EMPTY_PATH)
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
			return err
		}
	}
	return unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), mode, 0)
}

// utimesFD sets the modification time of the inode fd (O_PATH) refers to:
// utimensat(AT_EMPTY_PATH), or else, for anything but a symlink, through
// its /proc/self/fd link.
func utimesFD(fd int, mtime int64, isLink bool) error {
	ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime)}
	if !noEmptyPath {
		err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	if isLink {
		return errNoFDCall
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), ts, 0)
}

// SyncDir flushes a directory's entries (after renames into it).
func (r *Root) SyncDir(name string) error {
	dfd, err := r.dir(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fsync(dfd); err != nil {
		return r.pathErr("fsync", name, err)
	}
	return nil
}

// Same reports whether name is a regular file of this size and modification
// time (to the second, as rsync compares by default).
func (r *Root) Same(name string, size uint64, mtime int64) bool {
	st, err := r.Lstat(name)
	return err == nil && SameStat(st, size, mtime)
}

// SameStat is Same for what an Lstat found.
func SameStat(st *unix.Stat_t, size uint64, mtime int64) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) == size && st.Mtim.Sec == mtime/1e9
}

// Digest returns the digest (made by newHash) of the regular file name.
func (r *Root) Digest(name string, newHash func() hash.Hash) ([]byte, error) {
	f, err := r.OpenFile(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := newHash()
	defer digest.Release(h)
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// OpenFile opens the regular file name for reading, not following a final
// symlink.
func (r *Root) OpenFile(name string) (*os.File, error) {
	// O_NONBLOCK: a FIFO put at the name must not block the open.
	fd, err := openBeneath(r.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, r.pathErr("open", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file", r.display(name))
	}
	return os.NewFile(uintptr(fd), r.display(name)), nil
}

// partialName is the name of the partial file for the entry base with the
// given source identity, in the same directory.
func partialName(base string, size uint64, mtime int64) string {
	h := sha256.Sum256([]byte(base + "\x00" + strconv.FormatUint(size, 10) + "\x00" + strconv.FormatInt(mtime, 10)))
	return ".zpc-" + hex.EncodeToString(h[:8]) + ".part"
}
