package chunkstore

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"
	"unsafe"

	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/rawfile"
	"golang.org/x/sys/unix"
)

// Errors from Partial.
var (
	ErrGap      = errors.New("chunkstore: write beyond the end of the partial file")
	ErrMismatch = errors.New("chunkstore: digest mismatch")
	ErrSize     = errors.New("chunkstore: size mismatch")
	// ErrReplaced: the partial's name no longer leads to the file that
	// was written (someone who may write the directory replaced it).
	ErrReplaced = errors.New("chunkstore: the partial file was replaced under its name")
	// ErrBusy: another receiver kept writing the partial for LockWait.
	ErrBusy = errors.New("chunkstore: the partial file is being written by another transfer")
)

// LockWait bounds how long OpenPartial waits for another receiver of the
// same file to let go of its partial (a session that replaces one whose
// client was killed: the old one stops as soon as zpd sees its connection
// gone). A variable for tests.
var LockWait = 10 * time.Second

// Partial is a file being received: a temporary name in the destination
// directory, written sequentially while its digest is computed. It stays
// on disk when the transfer is interrupted, so that the next transfer of
// the same source resumes from its end.
type Partial struct {
	r       *Root
	name    string // final name
	tmp     string // partial's name in the same directory
	dirfd   int    // owned: closed by Close, Commit and Discard
	f       *rawfile.File
	h       hash.Hash
	written uint64
	synced  uint64 // start of the range not yet handed to writeback
	flushed uint64 // end of the range the last background fdatasync covered
	// flushing is set while a background fdatasync runs (Write); it is
	// closed when that ends, with its error in flushErr.
	flushing chan struct{}
	flushErr error
	notice   string      // why an existing partial was not resumed
	waited   bool        // another receiver held the partial when it was opened
	existed  bool        // the partial was there from an earlier attempt
	st       unix.Stat_t // of the open partial when claimed: its dev and ino never change
}

// writeback is how much is written before the kernel is asked to start
// writing it out, so that the final fdatasync has little left to do.
const writeback = 8 << 20

// flushEvery is how much is written between two background fdatasyncs of
// a large file (one at a time, never waited for by Write). sync_file_range
// starts the kernel's writeback, but a disk with a volatile cache, or a
// virtual disk whose host caches writes, still has everything to flush at
// the final fdatasync: 0.01-0.46 s after 1 GiB written in 3 s here, against
// 0.03-0.04 s with a flush every 64 MiB (bench/README.md, eighth round).
const flushEvery = 64 << 20

// OpenPartial opens (creating if needed) the partial file for the entry
// name whose source has the given size and modification time; newHash makes
// the content digest (SHA-256 or BLAKE3: internal/digest, by protocol
// version). If a partial from an earlier attempt exists, it is kept and its
// digest computed from the octets it holds (never from a record beside it,
// which anyone who can write the directory could forge): Have reports its
// length and Prefix its digest, for the sender to check against its own
// first Have octets.
//
// A new partial is created exclusively (O_EXCL, mode 0600). An existing
// one is resumed only if it is a regular file owned by the caller's file
// system identity (fsuid), with one link and not writable by group or
// others; anything else at that name (another user's file, a hard or
// symbolic link, a FIFO) is removed, or, where the caller may not remove
// it (a sticky directory), left alone while the partial is written under
// a fresh name. Notice says why.
func (r *Root) OpenPartial(name string, size uint64, mtime int64, newHash func() hash.Hash) (*Partial, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty name", ErrUnsafePath)
	}
	st, _ := r.Lstat(name)
	return r.OpenPartialSeen(name, st, size, mtime, newHash)
}

// OpenPartialSeen is OpenPartial for a caller that has just looked at
// name: seen is what an Lstat of it found (nil: nothing, or it could not
// tell). A directory there is refused without a second look (a system
// call per file saved in a copy of small files).
func (r *Root) OpenPartialSeen(name string, seen *unix.Stat_t, size uint64, mtime int64, newHash func() hash.Hash) (*Partial, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty name", ErrUnsafePath)
	}
	if seen != nil && seen.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, r.pathErr("open", name, unix.EISDIR)
	}
	d, b := split(name)
	dfd, err := r.dir(d)
	if err != nil {
		return nil, err
	}
	p := &Partial{r: r, name: name, dirfd: dfd, h: newHash()}
	fd, err := p.claim(partialName(b, size, mtime))
	if err != nil {
		unix.Close(dfd)
		return nil, r.pathErr("create", name, err)
	}
	shown := p.tmp
	if d != "" {
		shown = d + "/" + p.tmp
	}
	p.f = rawfile.New(fd, r.display(shown))
	if p.notice != "" {
		p.notice = r.display(name) + ": " + p.notice
	}
	if p.existed {
		_ = unix.Unlinkat(dfd, p.staleState(), 0)
	}
	// What an earlier attempt wrote is hashed again. An empty partial (the
	// common case: a new one) costs no read and no 32 KiB buffer (that
	// was an eighth of zpd's CPU in a copy of small files); claim's fstat
	// tells.
	var n int64
	if p.st.Size > 0 {
		n, err = io.Copy(p.h, p.f)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("reading partial %s: %w", p.f.Name(), err)
		}
	}
	p.written = uint64(n)
	p.synced, p.flushed = p.written, p.written
	return p, nil
}

// claim opens the partial tmp in p.dirfd for p: its own file, new or
// from an earlier attempt, never something planted there (OpenPartial),
// and holds an exclusive lock (flock) on it until Close, so that two
// receivers never write one partial. It sets p.tmp to the name it uses
// and p.notice to what it did instead of resuming.
func (p *Partial) claim(tmp string) (int, error) {
	deadline := time.Now().Add(LockWait)
	for range 4 {
		fd, name, err := p.openOrCreate(tmp)
		if err != nil {
			return -1, err
		}
		waited, err := lockUntil(fd, deadline)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		p.waited = p.waited || waited
		// While we waited, the receiver holding the lock may have
		// published or removed the file: then it is not a partial any
		// more, and never ours to write.
		var b unix.Stat_t
		if unix.Fstat(fd, &p.st) == nil && unix.Fstatat(p.dirfd, name, &b, unix.AT_SYMLINK_NOFOLLOW) == nil && p.st.Dev == b.Dev && p.st.Ino == b.Ino {
			p.tmp = name
			return fd, nil
		}
		unix.Close(fd)
	}
	return -1, fmt.Errorf("%s keeps being replaced", tmp)
}

// lockUntil takes an exclusive flock on fd, waiting until deadline; it
// reports whether it had to wait.
func lockUntil(fd int, deadline time.Time) (bool, error) {
	for waited := false; ; waited = true {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return waited, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return waited, err
		}
		if time.Now().After(deadline) {
			return waited, ErrBusy
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openOrCreate creates the partial tmp exclusively or opens an existing
// one that passes openOwn; anything else there is removed, or, if it may
// not be, left alone for a fresh name. It returns the name it opened.
func (p *Partial) openOrCreate(tmp string) (int, string, error) {
	const flags = unix.O_RDWR | unix.O_NOFOLLOW | unix.O_CLOEXEC
	for range 4 {
		fd, err := unix.Openat(p.dirfd, tmp, flags|unix.O_CREAT|unix.O_EXCL, 0o600)
		if err == nil {
			return fd, tmp, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return -1, "", err
		}
		fd, why := openOwn(p.dirfd, tmp, flags)
		if why == "" {
			p.existed = true
			return fd, tmp, nil
		}
		if why == "gone" {
			continue // removed meanwhile: create it
		}
		if uerr := unix.Unlinkat(p.dirfd, tmp, 0); uerr != nil && !errors.Is(uerr, unix.ENOENT) {
			// Not ours to remove: write beside it, under a name nobody
			// can know in advance.
			var rnd [8]byte
			_, _ = rand.Read(rnd[:])
			fresh := tmp + "." + hex.EncodeToString(rnd[:])
			fd, err := unix.Openat(p.dirfd, fresh, flags|unix.O_CREAT|unix.O_EXCL, 0o600)
			if err != nil {
				return -1, "", err
			}
			p.notice = fmt.Sprintf("not resuming from %s: %s, and it cannot be removed (%v); writing %s instead", tmp, why, uerr, fresh)
			return fd, fresh, nil
		}
		p.notice = fmt.Sprintf("removed %s instead of resuming from it: %s", tmp, why)
	}
	return -1, "", fmt.Errorf("%s keeps being replaced", tmp)
}

// openOwn opens the existing partial tmp if it is one the caller may
// resume: a regular file owned by the caller's fsuid, with one link, not
// writable by group or others. Otherwise it says why not ("gone" if
// nothing is there any more). Nothing but a regular file is ever opened
// (a FIFO would block, a device could react to an open).
func openOwn(dirfd int, tmp string, flags int) (int, string) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, "gone"
		}
		return -1, err.Error()
	}
	if why := unusable(&st); why != "" {
		return -1, why
	}
	fd, err := unix.Openat(dirfd, tmp, flags|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, "gone"
		}
		return -1, err.Error()
	}
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		unix.Close(fd)
		return -1, err.Error()
	}
	why := unusable(&fst)
	if why == "" && (fst.Dev != st.Dev || fst.Ino != st.Ino) {
		why = "it was replaced while being checked"
	}
	if why == "" {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		unix.Close(fd)
		return -1, why
	}
	return fd, ""
}

// unusable says why a file found at a partial's name may not be resumed
// ("" if it may).
func unusable(st *unix.Stat_t) string {
	uid := fsuid()
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return "it is not a regular file"
	case st.Uid != uid:
		return fmt.Sprintf("it belongs to uid %d, not %d", st.Uid, uid)
	case st.Nlink != 1:
		return fmt.Sprintf("it has %d links", st.Nlink)
	case st.Mode&0o022 != 0:
		return fmt.Sprintf("it is writable by others (mode %04o)", st.Mode&0o7777)
	}
	return ""
}

// fsuid is the calling thread's file system uid: what new files belong to
// (zpd's receiver threads take the user's, see broker). setfsuid with an
// invalid id changes nothing and returns the current one.
func fsuid() uint32 {
	old, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(^uint32(0)), 0, 0)
	return uint32(old)
}

// Waited reports whether OpenPartial had to wait for another receiver of
// the same file to let go of it: that one may have put the file in place
// meanwhile.
func (p *Partial) Waited() bool { return p.waited }

// Notice says, naming the file, why an existing partial was not resumed
// ("" if none was found, or it was resumed).
func (p *Partial) Notice() string { return p.notice }

// staleState is the hash checkpoint that earlier versions of zp kept beside
// a partial. It is never read (anyone who can write the directory could
// forge it): a resume hashes the partial itself. It is removed with the
// partial.
func (p *Partial) staleState() string { return p.tmp + ".sha" }

// Have is how many octets the partial holds.
func (p *Partial) Have() uint64 { return p.written }

// Prefix is the digest of the octets the partial holds (nil once closed).
func (p *Partial) Prefix() []byte {
	if p.h == nil {
		return nil
	}
	return p.h.Sum(nil)
}

// Restart empties the partial (the sender's content differs).
func (p *Partial) Restart() error {
	_ = p.waitFlush() // what it flushed is thrown away
	p.flushErr = nil
	if err := p.f.Truncate(0); err != nil {
		return err
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	p.h.Reset()
	p.written, p.synced, p.flushed = 0, 0, 0
	return nil
}

// Write appends data that must start at offset off (= Have()).
func (p *Partial) Write(off uint64, data []byte) error {
	if off != p.written {
		return fmt.Errorf("%w: offset %d, have %d", ErrGap, off, p.written)
	}
	if _, err := p.f.Write(data); err != nil {
		return err
	}
	p.h.Write(data)
	p.written += uint64(len(data))
	if p.written-p.synced >= writeback {
		_ = unix.SyncFileRange(p.f.Fd(), int64(p.synced), int64(p.written-p.synced), unix.SYNC_FILE_RANGE_WRITE)
		p.synced = p.written
	}
	if p.written-p.flushed >= flushEvery && p.idle() {
		p.flushed = p.written
		done := make(chan struct{})
		p.flushing = done
		fd := p.f.Fd() // Close waits for this flush before closing it
		go func() {
			defer close(done)
			if err := unix.Fdatasync(fd); err != nil {
				p.flushErr = err // read only after done is closed
			}
		}()
	}
	return nil
}

// idle reports whether no background fdatasync is running.
func (p *Partial) idle() bool {
	if p.flushing == nil {
		return true
	}
	select {
	case <-p.flushing:
		return true
	default:
		return false
	}
}

// waitFlush waits for the background fdatasync, if one runs, and returns
// the error of any that failed. It must be seen: since Linux 4.13 a write
// error is reported once per open file, so the final fdatasync on the same
// descriptor would not report it again.
func (p *Partial) waitFlush() error {
	if p.flushing != nil {
		<-p.flushing
	}
	return p.flushErr
}

// Commit verifies size and digest, applies attributes, makes the content
// durable (fdatasync) and renames it over the final name. On a mismatch
// the partial is removed (its content is wrong); on other errors it is
// kept for a later resume.
func (p *Partial) Commit(size uint64, digest []byte, a Attrs) error {
	if err := p.Seal(size, digest, a); err != nil {
		return err
	}
	if err := p.Sync(); err != nil {
		p.Close()
		return err
	}
	return p.Publish()
}

// Seal is the first step of a commit: it verifies size and digest (a
// mismatch removes the partial) and applies the attributes. Then Sync (or
// StartSync on many partials, then Sync on each) and Publish.
func (p *Partial) Seal(size uint64, digest []byte, a Attrs) error {
	if size != p.written {
		p.remove()
		p.Close()
		return fmt.Errorf("%w: %s: received %d octets, sender says %d", ErrSize, p.r.display(p.name), p.written, size)
	}
	if p.h == nil {
		return fmt.Errorf("%s: %w", p.r.display(p.name), os.ErrClosed)
	}
	if sum := p.h.Sum(nil); !bytes.Equal(sum, digest) {
		p.remove()
		p.Close()
		return fmt.Errorf("%w: %s: digest %x, sender says %x", ErrMismatch, p.r.display(p.name), sum, digest)
	}
	if err := p.setAttrs(a); err != nil {
		p.Close()
		return err
	}
	return nil
}

func (p *Partial) setAttrs(a Attrs) error {
	fd := p.f.Fd()
	if a.Chown {
		if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
			return p.r.pathErr("chown", p.name, err)
		}
	}
	if a.setMode() {
		if err := unix.Fchmod(fd, a.Mode&0o7777); err != nil {
			return p.r.pathErr("chmod", p.name, err)
		}
	}
	if a.MTime != 0 {
		if err := futimens(fd, a.MTime); err != nil {
			return p.r.pathErr("utimes", p.name, err)
		}
	}
	return nil
}

// Sync makes a sealed partial's content durable on its own (fdatasync).
func (p *Partial) Sync() error {
	if err := p.waitFlush(); err != nil {
		return p.r.pathErr("fdatasync", p.name, err)
	}
	if err := unix.Fdatasync(p.f.Fd()); err != nil {
		return p.r.pathErr("fdatasync", p.name, err)
	}
	return nil
}

// StartSync asks the kernel to start writing the partial's dirty pages
// out (sync_file_range SYNC_FILE_RANGE_WRITE) without waiting: a batch of
// small files calls it on each, then Sync on each, so that the writes of
// the whole batch are in flight together. It promises nothing; only Sync
// makes the content durable.
func (p *Partial) StartSync() {
	if p.written > p.synced {
		_ = unix.SyncFileRange(p.f.Fd(), int64(p.synced), int64(p.written-p.synced), unix.SYNC_FILE_RANGE_WRITE)
		p.synced = p.written
	}
}

// Dev is the device of the file system the partial is on.
func (p *Partial) Dev() uint64 { return p.st.Dev }

// Publish renames a sealed, durable partial over its final name, in one
// atomic step, and closes it.
func (p *Partial) Publish() error {
	defer p.Close()
	_, b := split(p.name)
	if !p.mine() {
		return fmt.Errorf("%w: %s", ErrReplaced, p.f.Name())
	}
	if err := unix.Renameat(p.dirfd, p.tmp, p.dirfd, b); err != nil {
		return p.r.pathErr("rename", p.name, err)
	}
	return nil
}

// SyncFS makes everything written on the root's file system durable, in
// one call, everybody's dirty data included: the receiver uses it for a
// batch of small files only while little else is dirty
// (BenchmarkCommitBatch compares it with syncing each file).
func (r *Root) SyncFS() error {
	if err := unix.Syncfs(r.fd); err != nil {
		return r.pathErr("syncfs", "", err)
	}
	return nil
}

// Dev is the device of the root's file system.
func (r *Root) Dev() uint64 {
	var st unix.Stat_t
	if unix.Fstat(r.fd, &st) != nil {
		return 0
	}
	return st.Dev
}

// mine reports whether the partial's name still leads to the file written
// (the open file's dev and ino, from claim, never change).
func (p *Partial) mine() bool {
	var b unix.Stat_t
	return unix.Fstatat(p.dirfd, p.tmp, &b, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		p.st.Dev == b.Dev && p.st.Ino == b.Ino
}

// Close leaves the partial on disk for a later resume. Calling it again
// (or after Commit or Discard) does nothing.
func (p *Partial) Close() error {
	if p.dirfd < 0 {
		return nil
	}
	_ = p.waitFlush() // its descriptor must not be closed under it
	unix.Close(p.dirfd)
	p.dirfd = -1
	digest.Release(p.h)
	p.h = nil
	return p.f.Close()
}

// Discard removes the partial.
func (p *Partial) Discard() {
	p.remove()
	p.Close()
}

func (p *Partial) remove() {
	if p.dirfd >= 0 && p.mine() {
		_ = unix.Unlinkat(p.dirfd, p.tmp, 0)
	}
}

// SameDigest reports whether name is a regular file of this size whose
// digest (made by newHash) is digest.
func (r *Root) SameDigest(name string, size uint64, digest []byte, newHash func() hash.Hash) bool {
	st, err := r.Lstat(name)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Size) != size {
		return false
	}
	d, err := r.Digest(name, newHash)
	return err == nil && bytes.Equal(d, digest)
}

// futimens sets a file's modification time (ns) through its descriptor:
// utimensat(fd, NULL, …), which x/sys/unix does not wrap.
func futimens(fd int, mtime int64) error {
	ts := [2]unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(mtime)}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
