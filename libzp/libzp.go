// Command libzp is zp's C library: built with -buildmode=c-shared
// (libzp.so) and c-archive (libzp.a) by `make libzp`, it exports the
// functions of include/zp.h on top of the public Go API (package client).
//
// Every export recovers panics (a Go panic must never unwind into C) and
// reports them as ZP_EINTERNAL; objects are integer handles into a table,
// so no Go pointer is ever held by C.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#include <stdlib.h>
#include <stdint.h>
// cgo declares the exports itself (without const): keep zp.h's prototypes
// out of the way under other names.
#define zp_version zp_hdr_version
#define zp_errmsg zp_hdr_errmsg
#define zp_new zp_hdr_new
#define zp_connect_abi zp_hdr_connect_abi
#define zp_close zp_hdr_close
#define zp_exec zp_hdr_exec
#define zp_wait zp_hdr_wait
#define zp_signal zp_hdr_signal
#define zp_job_start zp_hdr_job_start
#define zp_job_list zp_hdr_job_list
#define zp_job_status zp_hdr_job_status
#define zp_job_follow zp_hdr_job_follow
#define zp_job_kill zp_hdr_job_kill
#define zp_job_remove zp_hdr_job_remove
#define zp_copy_up zp_hdr_copy_up
#define zp_copy_down zp_hdr_copy_down
#include "zp.h"
#undef zp_version
#undef zp_errmsg
#undef zp_new
#undef zp_connect_abi
#undef zp_close
#undef zp_exec
#undef zp_wait
#undef zp_signal
#undef zp_job_start
#undef zp_job_list
#undef zp_job_status
#undef zp_job_follow
#undef zp_job_kill
#undef zp_job_remove
#undef zp_copy_up
#undef zp_copy_down

static void zp_call_progress(zp_progress_fn f, const char *name, uint64_t done, uint64_t size, void *user) {
	f(name, done, size, user);
}
static void zp_call_job(zp_job_fn f, const zp_job *job, void *user) { f(job, user); }
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zpipes/zp/client"
)

func main() {} // required by -buildmode=c-shared/c-archive; never runs

// Error codes of zp.h.
const (
	eInval       = 1
	eABI         = 2
	eConnect     = 3
	eHandshake   = 4
	eUnknownHost = 5
	eHostKey     = 6
	eNoIdentity  = 7
	eTimeout     = 8
	eClosed      = 9
	eProtocol    = 10
	eLocal       = 11
	ePartial     = 12
	eInternal    = 13
	eFailed      = 14
)

// abi is ZP_ABI of include/zp.h (TestABI checks they agree).
const abi = 1

// maxStrings bounds a NULL-terminated string array from C.
const maxStrings = 1 << 16

// Handle table: sessions and processes by number, and the last error of
// each handle (0: failures without a valid handle).
var (
	mu      sync.Mutex
	objects = map[int32]any{}
	lastErr = map[int32]errRecord{}
	nextID  int32
)

type errRecord struct {
	code int
	msg  string
}

type session struct {
	mu sync.Mutex
	s  *client.Session // nil until connected
}

type process struct {
	done   chan struct{}
	st     *client.ExitStatus
	err    error
	sigs   chan string
	cancel context.CancelFunc
	files  []*os.File // our ends of the socketpairs
}

func register(o any) int32 {
	mu.Lock()
	defer mu.Unlock()
	if nextID == 1<<31-1 {
		return -1
	}
	nextID++
	objects[nextID] = o
	return nextID
}

func lookup(h C.int) any {
	mu.Lock()
	defer mu.Unlock()
	return objects[int32(h)]
}

// fail records err as handle h's last failure and returns -1. A handle
// that is not in the table records under 0.
func fail(h C.int, code int, err error) C.int {
	mu.Lock()
	defer mu.Unlock()
	id := int32(h)
	if _, ok := objects[id]; !ok {
		id = 0
	}
	lastErr[id] = errRecord{code: code, msg: err.Error()}
	return -1
}

// failErr classifies err (see zp.h's codes) and records it.
func failErr(h C.int, err error) C.int { return fail(h, classify(err), err) }

func classify(err error) int {
	var pe *client.Error
	var uh *client.UnknownHostError
	var hc *client.HostKeyChangedError
	var he *client.HandshakeError
	var ce *client.ConnectError
	var pr *client.ProtocolError
	var le *client.LocalError
	var oe *client.OutputError
	switch {
	case errors.As(err, &pe):
		return int(pe.Code)
	case errors.As(err, &uh):
		return eUnknownHost
	case errors.As(err, &hc):
		return eHostKey
	case errors.Is(err, client.ErrNoIdentity):
		return eNoIdentity
	case errors.As(err, &he), errors.Is(err, client.ErrServerInsecure):
		return eHandshake
	case errors.Is(err, client.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return eTimeout
	case errors.As(err, &ce):
		return eConnect
	case errors.Is(err, client.ErrClosed), errors.Is(err, client.ErrSessionGone):
		return eClosed
	case errors.As(err, &pr):
		return eProtocol
	case errors.As(err, &le), errors.As(err, &oe):
		return eLocal
	}
	return eFailed
}

// guard turns a panic in an export into ZP_EINTERNAL on handle h.
func guard(h C.int, ret *C.int) {
	if r := recover(); r != nil {
		*ret = fail(h, eInternal, fmt.Errorf("bug in libzp: panic: %v\n%s", r, debug.Stack()))
	}
}

func goStrings(p **C.char) ([]string, error) {
	if p == nil {
		return nil, nil
	}
	var out []string
	for i := 0; ; i++ {
		if i == maxStrings {
			return nil, fmt.Errorf("more than %d strings (missing the NULL at the end?)", maxStrings)
		}
		s := *(**C.char)(unsafe.Add(unsafe.Pointer(p), uintptr(i)*unsafe.Sizeof(p)))
		if s == nil {
			return out, nil
		}
		out = append(out, C.GoString(s))
	}
}

func goEnv(p **C.char) (map[string]string, error) {
	kvs, err := goStrings(p)
	if err != nil || kvs == nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("env entry %q: want NAME=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

func optString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// setStr copies s into the C array dst of n bytes, truncated, NUL-ended.
func setStr(dst *C.char, n int, s string) {
	b := unsafe.Slice((*byte)(unsafe.Pointer(dst)), n)
	k := copy(b[:n-1], s)
	b[k] = 0
}

func getSession(h C.int) (*client.Session, C.int) {
	ss, ok := lookup(h).(*session)
	if !ok {
		return nil, fail(h, eInval, errors.New("not a session handle"))
	}
	ss.mu.Lock()
	s := ss.s
	ss.mu.Unlock()
	if s == nil {
		return nil, fail(h, eInval, errors.New("the session is not connected"))
	}
	return s, 0
}

//export zp_version
func zp_version() C.int { return abi }

//export zp_errmsg
func zp_errmsg(h C.int, buf *C.char, n C.size_t) (ret C.int) {
	defer guard(0, &ret)
	mu.Lock()
	e := lastErr[int32(h)]
	mu.Unlock()
	if buf != nil && n > 0 {
		setStr(buf, int(min(n, 1<<30)), e.msg)
	}
	return C.int(e.code)
}

//export zp_new
func zp_new() (ret C.int) {
	defer guard(0, &ret)
	id := register(&session{})
	if id < 0 {
		return fail(0, eFailed, errors.New("out of handles"))
	}
	return C.int(id)
}

//export zp_connect_abi
func zp_connect_abi(cabi C.int, h C.int, target *C.char, opts *C.zp_options) (ret C.int) {
	defer guard(h, &ret)
	if cabi != abi {
		return fail(h, eABI, fmt.Errorf("the program was built against zp.h ABI %d; this libzp implements ABI %d", int(cabi), abi))
	}
	ss, ok := lookup(h).(*session)
	if !ok {
		return fail(h, eInval, errors.New("not a session handle"))
	}
	if target == nil {
		return fail(h, eInval, errors.New("target is NULL"))
	}
	t, err := client.ParseTarget(C.GoString(target), 0)
	if err != nil {
		return fail(h, eInval, err)
	}
	cfg := client.Config{Endpoint: t.Endpoint, HostName: t.Host, User: t.User, ClientName: "libzp/" + client.Version}
	var o C.zp_options
	if opts != nil {
		o = *opts
	}
	if cfg.User == "" {
		cfg.User = optString(o.user)
	}
	if cfg.User == "" {
		cfg.User = t.RemoteUser()
	}
	cfg.ConnectTimeout = time.Duration(o.connect_timeout_ms) * time.Millisecond
	cfg.Timeout = time.Duration(o.timeout_ms) * time.Millisecond
	cfg.Resume = o.resume != 0
	if o.insecure != 0 {
		cfg.Insecure = true
	} else {
		dir := optString(o.config_dir)
		if dir == "" {
			dir = client.ConfigDir(nil)
		}
		var kp client.KeyPair
		if id := optString(o.identity); id != "" {
			kp, err = client.LoadKeyPair(id)
		} else {
			kp, err = client.LoadIdentity(dir)
		}
		if err != nil {
			return failErr(h, err)
		}
		cfg.Key = &kp
		if sk := optString(o.server_key); sk != "" {
			if cfg.ServerKey, err = client.ParsePublicKey(sk); err != nil {
				return fail(h, eInval, fmt.Errorf("server_key: %w", err))
			}
		} else {
			path := optString(o.known_hosts)
			if path == "" {
				path = filepath.Join(dir, "known_hosts")
			}
			cfg.KnownHosts = &client.KnownHosts{Path: path}
			if o.accept_new != 0 {
				cfg.AcceptHost = func(string, client.PublicKey) error { return nil }
			}
		}
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.s != nil {
		return fail(h, eInval, errors.New("the session is already connected"))
	}
	s, err := client.Dial(context.Background(), cfg)
	if err != nil {
		return failErr(h, err)
	}
	ss.s = s
	return 0
}

//export zp_close
func zp_close(h C.int) (ret C.int) {
	defer guard(h, &ret)
	mu.Lock()
	o, ok := objects[int32(h)]
	delete(objects, int32(h))
	delete(lastErr, int32(h))
	mu.Unlock()
	if !ok {
		return fail(0, eInval, fmt.Errorf("no handle %d (closed already?)", int(h)))
	}
	switch o := o.(type) {
	case *session:
		o.mu.Lock()
		s := o.s
		o.mu.Unlock()
		if s != nil {
			s.Close()
		}
	case *process:
		o.cancel() // hangs the command up if it still runs
		for _, f := range o.files {
			f.Close() // unblocks a write to output nobody reads
		}
		<-o.done
	}
	return 0
}

// sockWriter writes to our end of a socketpair through Go's poller,
// with MSG_NOSIGNAL: a caller that closed its end gets no SIGPIPE, we
// get EPIPE.
type sockWriter struct {
	rc syscall.RawConn
}

func (w *sockWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		var werr error
		err := w.rc.Write(func(fd uintptr) bool {
			m, e := unix.SendmsgN(int(fd), p[n:], nil, nil, unix.MSG_NOSIGNAL)
			if e == unix.EAGAIN {
				return false
			}
			if e != nil {
				werr = e
				return true
			}
			n += m
			return true
		})
		if err != nil {
			return n, err
		}
		if werr != nil {
			return n, werr
		}
	}
	return n, nil
}

// pair makes a socketpair: the caller's end (blocking, close-on-exec) and
// ours (non-blocking, in Go's poller).
func pair(name string) (theirs int, ours *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("socketpair: %w", err)
	}
	if err := unix.SetNonblock(fds[1], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return -1, nil, err
	}
	return fds[0], os.NewFile(uintptr(fds[1]), name), nil
}

//export zp_exec
func zp_exec(s C.int, argv **C.char, env **C.char, cwd *C.char, flags C.int, proc *C.zp_process) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if proc == nil {
		return fail(s, eInval, errors.New("proc is NULL"))
	}
	args, err := goStrings(argv)
	if err == nil && len(args) == 0 {
		err = errors.New("argv is empty")
	}
	if err != nil {
		return fail(s, eInval, err)
	}
	envm, err := goEnv(env)
	if err != nil {
		return fail(s, eInval, err)
	}
	p := &process{done: make(chan struct{}), sigs: make(chan string, 16)}
	theirs := [3]int{-1, -1, -1}
	var ours [3]*os.File
	cleanup := func() {
		for i := range 3 {
			if theirs[i] >= 0 {
				unix.Close(theirs[i])
			}
			if ours[i] != nil {
				ours[i].Close()
			}
		}
	}
	for i, name := range []string{"stdin", "stdout", "stderr"} {
		if i == 0 && flags&C.ZP_NO_STDIN != 0 {
			continue
		}
		if theirs[i], ours[i], err = pair(name); err != nil {
			cleanup()
			return fail(s, eLocal, err)
		}
		p.files = append(p.files, ours[i])
	}
	req := client.ExecRequest{Argv: args, Env: envm, Dir: optString(cwd), Signals: p.sigs}
	if ours[0] != nil {
		req.Stdin = ours[0]
	}
	for i, dst := range []*io.Writer{&req.Stdout, &req.Stderr} {
		rc, err := ours[i+1].SyscallConn()
		if err != nil {
			cleanup()
			return fail(s, eLocal, err)
		}
		*dst = &sockWriter{rc: rc}
	}
	id := register(p)
	if id < 0 {
		cleanup()
		return fail(s, eFailed, errors.New("out of handles"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		defer func() {
			if r := recover(); r != nil {
				p.err = fmt.Errorf("bug in libzp: panic: %v\n%s", r, debug.Stack())
			}
		}()
		p.st, p.err = sess.Exec(ctx, req)
		for _, f := range p.files {
			f.Close() // EOF on the caller's stdout and stderr
		}
	}()
	proc.handle = C.int(id)
	proc.stdin_fd, proc.stdout_fd, proc.stderr_fd = C.int(theirs[0]), C.int(theirs[1]), C.int(theirs[2])
	return 0
}

//export zp_wait
func zp_wait(h C.int, timeoutMS C.int, st *C.zp_exit) (ret C.int) {
	defer guard(h, &ret)
	p, ok := lookup(h).(*process)
	if !ok {
		return fail(h, eInval, errors.New("not a process handle"))
	}
	switch {
	case timeoutMS < 0:
		<-p.done
	case timeoutMS == 0:
		select {
		case <-p.done:
		default:
			return fail(h, eTimeout, errors.New("the command is still running"))
		}
	default:
		t := time.NewTimer(time.Duration(timeoutMS) * time.Millisecond)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			return fail(h, eTimeout, errors.New("the command is still running"))
		}
	}
	if p.err != nil {
		if errors.Is(p.err, context.Canceled) {
			return fail(h, eClosed, errors.New("the command was hung up"))
		}
		return failErr(h, p.err)
	}
	if st != nil {
		st.status = C.int(p.st.Status)
		st.code = C.int(p.st.Code)
		st.exit_code = C.int(p.st.ExitCode())
		setStr(&st.message[0], len(st.message), p.st.Message)
	}
	return 0
}

//export zp_signal
func zp_signal(h C.int, name *C.char) (ret C.int) {
	defer guard(h, &ret)
	p, ok := lookup(h).(*process)
	if !ok {
		return fail(h, eInval, errors.New("not a process handle"))
	}
	if name == nil {
		return fail(h, eInval, errors.New("signal name is NULL"))
	}
	sig := strings.TrimPrefix(strings.ToUpper(C.GoString(name)), "SIG")
	select {
	case <-p.done:
		return fail(h, eClosed, errors.New("the command has ended"))
	default:
	}
	select {
	case p.sigs <- sig:
		return 0
	default:
		return fail(h, eFailed, errors.New("too many signals pending"))
	}
}

func fillJob(dst *C.zp_job, j *client.JobInfo) {
	*dst = C.zp_job{}
	setStr(&dst.id[0], len(dst.id), j.ID)
	setStr(&dst.status[0], len(dst.status), j.Status)
	setStr(&dst.command_line[0], len(dst.command_line), j.CommandLine)
	setStr(&dst.user[0], len(dst.user), j.User)
	setStr(&dst.signal[0], len(dst.signal), j.Signal)
	setStr(&dst.message[0], len(dst.message), j.Message)
	dst.pid = C.int64_t(j.PID)
	if !j.Started.IsZero() {
		dst.started = C.int64_t(j.Started.Unix())
	}
	if !j.Ended.IsZero() {
		dst.ended = C.int64_t(j.Ended.Unix())
	}
	dst.exit_code = C.int(j.ExitCode)
	if j.Done {
		dst.done = 1
	}
	dst.stdout_bytes = C.uint64_t(j.StdoutBytes)
	dst.stderr_bytes = C.uint64_t(j.StderrBytes)
}

//export zp_job_start
func zp_job_start(s C.int, argv **C.char, env **C.char, cwd *C.char, id *C.char, idlen C.size_t) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	args, err := goStrings(argv)
	if err == nil && len(args) == 0 {
		err = errors.New("argv is empty")
	}
	if err != nil {
		return fail(s, eInval, err)
	}
	envm, err := goEnv(env)
	if err != nil {
		return fail(s, eInval, err)
	}
	if id == nil || idlen == 0 {
		return fail(s, eInval, errors.New("no buffer for the job id"))
	}
	job, _, err := sess.StartJob(context.Background(), client.ExecRequest{Argv: args, Env: envm, Dir: optString(cwd)})
	if err != nil {
		return failErr(s, err)
	}
	if int(idlen) <= len(job) {
		return fail(s, eInval, fmt.Errorf("job id %s does not fit in %d bytes", job, int(idlen)))
	}
	setStr(id, int(idlen), job)
	return 0
}

//export zp_job_list
func zp_job_list(s C.int, fn C.zp_job_fn, user unsafe.Pointer) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if fn == nil {
		return fail(s, eInval, errors.New("fn is NULL"))
	}
	jobs, err := sess.Jobs(context.Background())
	if err != nil {
		return failErr(s, err)
	}
	cj := (*C.zp_job)(C.malloc(C.size_t(unsafe.Sizeof(C.zp_job{}))))
	defer C.free(unsafe.Pointer(cj))
	for _, j := range jobs {
		fillJob(cj, j)
		C.zp_call_job(fn, cj, user)
	}
	return 0
}

//export zp_job_status
func zp_job_status(s C.int, id *C.char, job *C.zp_job) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if id == nil || job == nil {
		return fail(s, eInval, errors.New("id or job is NULL"))
	}
	j, err := sess.JobStatus(context.Background(), C.GoString(id))
	if err != nil {
		return failErr(s, err)
	}
	fillJob(job, j)
	return 0
}

// fdWriter writes to a descriptor the caller lent us (a dup of it).
func fdWriter(fd C.int, name string) (*os.File, error) {
	if fd < 0 {
		return nil, nil
	}
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s descriptor %d: %w", name, int(fd), err)
	}
	return os.NewFile(uintptr(d), name), nil
}

//export zp_job_follow
func zp_job_follow(s C.int, id *C.char, outFD, errFD C.int, job *C.zp_job) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if id == nil {
		return fail(s, eInval, errors.New("id is NULL"))
	}
	var opts client.FollowOptions
	for _, x := range []struct {
		fd   C.int
		name string
		dst  *io.Writer
	}{{outFD, "stdout", &opts.Stdout}, {errFD, "stderr", &opts.Stderr}} {
		f, err := fdWriter(x.fd, x.name)
		if err != nil {
			return fail(s, eInval, err)
		}
		if f != nil {
			defer f.Close()
			*x.dst = f
		}
	}
	res, err := sess.Follow(context.Background(), C.GoString(id), opts)
	if err != nil {
		return failErr(s, err)
	}
	if job != nil && res.Info != nil {
		fillJob(job, res.Info)
	}
	return 0
}

//export zp_job_kill
func zp_job_kill(s C.int, id *C.char, sig *C.char) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if id == nil {
		return fail(s, eInval, errors.New("id is NULL"))
	}
	name := "TERM"
	if sig != nil {
		name = strings.TrimPrefix(strings.ToUpper(C.GoString(sig)), "SIG")
	}
	if err := sess.KillJob(context.Background(), C.GoString(id), name); err != nil {
		return failErr(s, err)
	}
	return 0
}

//export zp_job_remove
func zp_job_remove(s C.int, id *C.char) (ret C.int) {
	defer guard(s, &ret)
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	if id == nil {
		return fail(s, eInval, errors.New("id is NULL"))
	}
	if err := sess.RemoveJob(context.Background(), C.GoString(id)); err != nil {
		return failErr(s, err)
	}
	return 0
}

func copyFiles(s C.int, up bool, sources **C.char, dest *C.char, flags C.int, progress C.zp_progress_fn, user unsafe.Pointer, stats *C.zp_copy_stats) C.int {
	sess, r := getSession(s)
	if sess == nil {
		return r
	}
	srcs, err := goStrings(sources)
	if err == nil && len(srcs) == 0 {
		err = errors.New("no sources")
	}
	if err != nil {
		return fail(s, eInval, err)
	}
	if dest == nil {
		return fail(s, eInval, errors.New("dest is NULL"))
	}
	opts := client.TransferOptions{
		Recursive: flags&C.ZP_COPY_RECURSIVE != 0,
		Preserve:  flags&C.ZP_COPY_PRESERVE != 0,
		Checksum:  flags&C.ZP_COPY_CHECKSUM != 0,
	}
	if progress != nil {
		var pmu sync.Mutex // one call at a time, whichever goroutine reports
		opts.OnProgress = func(name string, done, size uint64) {
			pmu.Lock()
			defer pmu.Unlock()
			cname := C.CString(name)
			defer C.free(unsafe.Pointer(cname))
			C.zp_call_progress(progress, cname, C.uint64_t(done), C.uint64_t(size), user)
		}
	}
	var st *client.TransferStats
	if up {
		st, err = sess.Upload(context.Background(), srcs, C.GoString(dest), opts)
	} else {
		st, err = sess.Download(context.Background(), srcs, C.GoString(dest), opts)
	}
	if stats != nil && st != nil {
		*stats = C.zp_copy_stats{files: C.uint64_t(st.Files), skipped: C.uint64_t(st.Skipped),
			dirs: C.uint64_t(st.Dirs), links: C.uint64_t(st.Links), bytes: C.uint64_t(st.BytesSent),
			failures: C.uint64_t(len(st.Failures))}
	}
	if err != nil {
		return failErr(s, err)
	}
	if len(st.Failures) > 0 {
		f := st.Failures[0]
		msg := f.Error
		if f.Path != "" {
			msg = f.Path + ": " + msg
		}
		return fail(s, ePartial, fmt.Errorf("%d entries failed; the first: %s", len(st.Failures), msg))
	}
	return 0
}

//export zp_copy_up
func zp_copy_up(s C.int, sources **C.char, dest *C.char, flags C.int, progress C.zp_progress_fn, user unsafe.Pointer, stats *C.zp_copy_stats) (ret C.int) {
	defer guard(s, &ret)
	return copyFiles(s, true, sources, dest, flags, progress, user, stats)
}

//export zp_copy_down
func zp_copy_down(s C.int, sources **C.char, dest *C.char, flags C.int, progress C.zp_progress_fn, user unsafe.Pointer, stats *C.zp_copy_stats) (ret C.int) {
	defer guard(s, &ret)
	return copyFiles(s, false, sources, dest, flags, progress, user, stats)
}

// panicking is an export's shape around a panic (TestPanicRecovered).
func panicking() (ret C.int) {
	defer guard(0, &ret)
	panic("boom")
}
