package chunkstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errors from Partial.
var (
	ErrGap      = errors.New("chunkstore: write beyond the end of the partial file")
	ErrMismatch = errors.New("chunkstore: digest mismatch")
	ErrSize     = errors.New("chunkstore: size mismatch")
)

// Partial is a file being received: a temporary name in the destination
// directory, written sequentially while its SHA-256 is computed. It stays
// on disk when the transfer is interrupted, so that the next transfer of
// the same source resumes from its end.
type Partial struct {
	r       *Root
	name    string // final name
	tmp     string // partial's name in the same directory
	dirfd   int    // owned: closed by Close, Commit and Discard
	f       *os.File
	h       hash.Hash
	written uint64
	synced  uint64 // start of the range not yet handed to writeback
}

// writeback is how much is written before the kernel is asked to start
// writing it out, so that the final fdatasync has little left to do.
const writeback = 8 << 20

// OpenPartial opens (creating if needed) the partial file for the entry
// name whose source has the given size and modification time. If a partial
// from an earlier attempt exists, it is kept and its SHA-256 computed from
// the octets it holds (never from a record beside it, which anyone who can
// write the directory could forge): Have reports its length and Prefix its
// digest, for the sender to check against its own first Have octets.
func (r *Root) OpenPartial(name string, size uint64, mtime int64) (*Partial, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty name", ErrUnsafePath)
	}
	d, b := split(name)
	dfd, err := r.dir(d)
	if err != nil {
		return nil, err
	}
	if st, err := r.Lstat(name); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		unix.Close(dfd)
		return nil, r.pathErr("open", name, unix.EISDIR)
	}
	tmp := partialName(b, size, mtime)
	fd, err := unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		unix.Close(dfd)
		return nil, r.pathErr("create", name, err)
	}
	shown := tmp
	if d != "" {
		shown = d + "/" + tmp
	}
	p := &Partial{r: r, name: name, tmp: tmp, dirfd: dfd, f: os.NewFile(uintptr(fd), r.display(shown)), h: sha256.New()}
	_ = unix.Unlinkat(dfd, p.staleState(), 0)
	n, err := io.Copy(p.h, p.f)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("reading partial %s: %w", p.f.Name(), err)
	}
	p.written = uint64(n)
	p.synced = p.written
	return p, nil
}

// staleState is the hash checkpoint that earlier versions of zp kept beside
// a partial. It is never read (anyone who can write the directory could
// forge it): a resume hashes the partial itself. It is removed with the
// partial.
func (p *Partial) staleState() string { return p.tmp + ".sha" }

// Have is how many octets the partial holds.
func (p *Partial) Have() uint64 { return p.written }

// Prefix is the SHA-256 of the octets the partial holds.
func (p *Partial) Prefix() []byte {
	return p.h.Sum(nil)
}

// Restart empties the partial (the sender's content differs).
func (p *Partial) Restart() error {
	if err := p.f.Truncate(0); err != nil {
		return err
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	p.h.Reset()
	p.written, p.synced = 0, 0
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
		rc, err := p.f.SyscallConn()
		if err == nil {
			start, n := int64(p.synced), int64(p.written-p.synced)
			_ = rc.Control(func(fd uintptr) {
				_ = unix.SyncFileRange(int(fd), start, n, unix.SYNC_FILE_RANGE_WRITE)
			})
		}
		p.synced = p.written
	}
	return nil
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
// a Root.SyncFS covering many partials) and Publish.
func (p *Partial) Seal(size uint64, digest []byte, a Attrs) error {
	if size != p.written {
		p.remove()
		p.Close()
		return fmt.Errorf("%w: %s: received %d octets, sender says %d", ErrSize, p.r.display(p.name), p.written, size)
	}
	if sum := p.h.Sum(nil); !bytes.Equal(sum, digest) {
		p.remove()
		p.Close()
		return fmt.Errorf("%w: %s: sha256 %x, sender says %x", ErrMismatch, p.r.display(p.name), sum, digest)
	}
	if err := p.setAttrs(a); err != nil {
		p.Close()
		return err
	}
	return nil
}

func (p *Partial) setAttrs(a Attrs) error {
	fd := int(p.f.Fd())
	if a.Chown {
		if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
			return p.r.pathErr("chown", p.name, err)
		}
	}
	if a.Mode != 0 {
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
	if err := unix.Fdatasync(int(p.f.Fd())); err != nil {
		return p.r.pathErr("fdatasync", p.name, err)
	}
	return nil
}

// Dev is the device of the file system the partial is on.
func (p *Partial) Dev() uint64 {
	var st unix.Stat_t
	if unix.Fstat(int(p.f.Fd()), &st) != nil {
		return 0
	}
	return st.Dev
}

// Publish renames a sealed, durable partial over its final name, in one
// atomic step, and closes it.
func (p *Partial) Publish() error {
	defer p.Close()
	_, b := split(p.name)
	if err := unix.Renameat(p.dirfd, p.tmp, p.dirfd, b); err != nil {
		return p.r.pathErr("rename", p.name, err)
	}
	return nil
}

// SyncFS makes everything written on the root's file system durable, in
// one call: a batch of sealed partials costs one flush instead of one
// each (see subscriber's commit batching).
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

// Close leaves the partial on disk for a later resume. Calling it again
// (or after Commit or Discard) does nothing.
func (p *Partial) Close() error {
	if p.dirfd < 0 {
		return nil
	}
	unix.Close(p.dirfd)
	p.dirfd = -1
	return p.f.Close()
}

// Discard removes the partial.
func (p *Partial) Discard() {
	p.remove()
	p.Close()
}

func (p *Partial) remove() {
	if p.dirfd >= 0 {
		_ = unix.Unlinkat(p.dirfd, p.tmp, 0)
		_ = unix.Unlinkat(p.dirfd, p.staleState(), 0)
	}
}

// SameDigest reports whether name is a regular file with this SHA-256.
func (r *Root) SameDigest(name string, size uint64, digest []byte) bool {
	st, err := r.Lstat(name)
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Size) != size {
		return false
	}
	d, err := r.Digest(name)
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
