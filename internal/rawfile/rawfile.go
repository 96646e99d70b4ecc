// Package rawfile reads and writes regular files through their descriptors
// alone. An os.File offers every file it opens to the runtime's poller,
// which refuses a regular file: four fcntl and an epoll_ctl per file (half
// of zpc's system calls in a copy of 4 KiB files), and os.NewFile one fcntl
// more; each also allocates and sets a finalizer (bench/README.md, ninth
// round). A File is not safe for concurrent use, and it must be closed.
package rawfile

import (
	"errors"
	"io"
	"io/fs"

	"golang.org/x/sys/unix"
)

// File is an open descriptor and the name its errors carry.
type File struct {
	fd   int
	name string
}

// ErrNotRegular: the path does not lead to a regular file (any more).
var ErrNotRegular = errors.New("not a regular file")

// Open opens the regular file at path for reading. O_NONBLOCK keeps a FIFO
// put there from blocking the open; anything but a regular file is refused,
// and the regular file's descriptor is made blocking again (a FUSE file
// system may answer a non-blocking read with EAGAIN).
func Open(path string) (*File, error) {
	fd, err := ignoringEINTR(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		if err == nil {
			err = ErrNotRegular
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_RDONLY); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &File{fd: fd, name: path}, nil
}

// New makes a File of an open descriptor, which it then owns.
func New(fd int, name string) *File { return &File{fd: fd, name: name} }

// Fd is the descriptor, valid until Close.
func (f *File) Fd() int { return f.fd }

// Name is the name given to Open or New.
func (f *File) Name() string { return f.name }

func ignoringEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (f *File) err(op string, err error) error {
	if f.fd < 0 {
		err = fs.ErrClosed
	}
	return &fs.PathError{Op: op, Path: f.name, Err: err}
}

// Read is one read(2); io.EOF at the end.
func (f *File) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := ignoringEINTR(func() (int, error) { return unix.Read(f.fd, b) })
	switch {
	case err != nil:
		return 0, f.err("read", err)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// ReadFull is io.ReadFull, except that a short read ending exactly left
// octets in (what the caller expects remain) is taken as the end of the
// file, as it is for a regular file: a small file costs one read(2), not a
// second one to see the end. left < 0 expects nothing.
func (f *File) ReadFull(b []byte, left int) (int, error) {
	k := 0
	for k < len(b) {
		n, err := f.Read(b[k:])
		k += n
		if err != nil {
			if err == io.EOF && k > 0 {
				err = io.ErrUnexpectedEOF
			}
			return k, err
		}
		if k == left && k < len(b) {
			return k, io.ErrUnexpectedEOF
		}
	}
	return k, nil
}

// Write writes all of b (write(2) until done, as os.File does).
func (f *File) Write(b []byte) (int, error) {
	k := 0
	for k < len(b) {
		n, err := ignoringEINTR(func() (int, error) { return unix.Write(f.fd, b[k:]) })
		if err != nil {
			return k, f.err("write", err)
		}
		if n == 0 {
			return k, f.err("write", io.ErrShortWrite)
		}
		k += n
	}
	return k, nil
}

// Seek is lseek(2).
func (f *File) Seek(off int64, whence int) (int64, error) {
	n, err := unix.Seek(f.fd, off, whence)
	if err != nil {
		return 0, f.err("seek", err)
	}
	return n, nil
}

// Truncate is ftruncate(2).
func (f *File) Truncate(size int64) error {
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return f.err("truncate", err)
	}
	return nil
}

// Close closes the descriptor; again, it reports fs.ErrClosed.
func (f *File) Close() error {
	if f.fd < 0 {
		return f.err("close", fs.ErrClosed)
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if err != nil {
		return &fs.PathError{Op: "close", Path: f.name, Err: err}
	}
	return nil
}
