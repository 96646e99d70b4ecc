"""zp: run commands on remote hosts through their zpd, like subprocess.

    import zp
    with zp.connect("alice@db1") as host:
        r = host.run(["ls", "-l"], capture_output=True)
        print(r.returncode, r.stdout)

        p = host.popen(["sort"], stdin=zp.PIPE, stdout=zp.PIPE)
        out, _ = p.communicate(b"b\\na\\n")

        host.copy("report.csv", ":/tmp/report.csv")      # ":" marks the remote side
        job = host.job_start(["make", "-j8"])
        host.follow(job)                                   # its output, until it ends

connect() uses CURVE with the client key and known_hosts of zp
($ZP_CONFIG, else ~/.config/zp); an unknown host key raises
UnknownHostError unless accept_new=True pins it. Failures raise zp.Error
(or a subclass) with .code: the protocol's stable code (401, 404, 409, ...)
or a library code (CONNECT, HANDSHAKE, ...).

This module is a ctypes binding of libzp (include/zp.h): each call
releases the GIL while it runs; a Session may be used from several
threads.
"""

import ctypes
import ctypes.util
import os
import signal as _signal
import subprocess
import sys
import threading

__all__ = [
    "connect", "Session", "Popen", "CompletedProcess", "CalledProcessError", "TimeoutExpired",
    "Job", "CopyStats", "Error", "ConnectError", "HandshakeError", "UnknownHostError",
    "HostKeyChangedError", "NoIdentityError", "ServerError", "PIPE", "DEVNULL", "STDOUT",
]

ABI = 1

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
CompletedProcess = subprocess.CompletedProcess
CalledProcessError = subprocess.CalledProcessError
TimeoutExpired = subprocess.TimeoutExpired

# Library error codes (zp.h); protocol codes are 400-599.
EINVAL, EABI, CONNECT, HANDSHAKE, UNKNOWNHOST, HOSTKEY, NOIDENTITY, TIMEOUT, CLOSED, \
    PROTOCOL, LOCAL, PARTIAL, INTERNAL, FAILED = range(1, 15)
# Some protocol codes, by name.
UNAUTHORISED, FORBIDDEN, NOT_FOUND, CONFLICT, GONE, TOO_MANY, UNAVAILABLE, NO_SPACE = \
    401, 403, 404, 409, 410, 429, 503, 507


class Error(Exception):
    """A failure of libzp or of the server; .code is its stable code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return "%s (code %d)" % (self.message, self.code)


class ConnectError(Error):
    """The server could not be reached."""


class HandshakeError(Error):
    """The security handshake failed: our key was refused, or the server's is not the expected one."""


class UnknownHostError(Error):
    """The host's key is not pinned: check it (zpd --print-key), then connect with accept_new=True."""


class HostKeyChangedError(Error):
    """The host's key is not the pinned one: someone may be intercepting the connection."""


class NoIdentityError(Error):
    """There is no client key: run zp keygen."""


class ServerError(Error):
    """The server refused a request; .code is the protocol's code (404: no such job, ...)."""


_classes = {CONNECT: ConnectError, HANDSHAKE: HandshakeError, UNKNOWNHOST: UnknownHostError,
            HOSTKEY: HostKeyChangedError, NOIDENTITY: NoIdentityError}


# --- the C library ---------------------------------------------------------

class _Options(ctypes.Structure):
    _fields_ = [("config_dir", ctypes.c_char_p), ("identity", ctypes.c_char_p),
                ("known_hosts", ctypes.c_char_p), ("server_key", ctypes.c_char_p),
                ("user", ctypes.c_char_p), ("accept_new", ctypes.c_int), ("insecure", ctypes.c_int),
                ("resume", ctypes.c_int), ("connect_timeout_ms", ctypes.c_int), ("timeout_ms", ctypes.c_int)]


class _Process(ctypes.Structure):
    _fields_ = [("handle", ctypes.c_int), ("stdin_fd", ctypes.c_int),
                ("stdout_fd", ctypes.c_int), ("stderr_fd", ctypes.c_int)]


class _Exit(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("code", ctypes.c_int), ("exit_code", ctypes.c_int),
                ("message", ctypes.c_char * 256)]


class _Job(ctypes.Structure):
    _fields_ = [("id", ctypes.c_char * 64), ("status", ctypes.c_char * 24),
                ("command_line", ctypes.c_char * 512), ("user", ctypes.c_char * 64),
                ("signal", ctypes.c_char * 16), ("message", ctypes.c_char * 256),
                ("pid", ctypes.c_int64), ("started", ctypes.c_int64), ("ended", ctypes.c_int64),
                ("exit_code", ctypes.c_int), ("done", ctypes.c_int),
                ("stdout_bytes", ctypes.c_uint64), ("stderr_bytes", ctypes.c_uint64)]


class _CopyStats(ctypes.Structure):
    _fields_ = [("files", ctypes.c_uint64), ("skipped", ctypes.c_uint64), ("dirs", ctypes.c_uint64),
                ("links", ctypes.c_uint64), ("bytes", ctypes.c_uint64), ("failures", ctypes.c_uint64)]


_JOB_FN = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Job), ctypes.c_void_p)
_PROGRESS_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p)
_argv_t = ctypes.POINTER(ctypes.c_char_p)


def _load():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libzp.so")
    candidates = [os.environ.get("ZP_LIBZP"), here if os.path.exists(here) else None,
                  ctypes.util.find_library("zp"), "libzp.so"]
    errors = []
    for c in candidates:
        if not c:
            continue
        try:
            lib = ctypes.CDLL(c)
            break
        except OSError as e:
            errors.append("%s: %s" % (c, e))
    else:
        raise ImportError("cannot load libzp (build it with make libzp, or set ZP_LIBZP): " + "; ".join(errors))
    sig = {
        "zp_version": ([], ctypes.c_int),
        "zp_errmsg": ([ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
        "zp_new": ([], ctypes.c_int),
        "zp_connect_abi": ([ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Options)], ctypes.c_int),
        "zp_close": ([ctypes.c_int], ctypes.c_int),
        "zp_exec": ([ctypes.c_int, _argv_t, _argv_t, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(_Process)], ctypes.c_int),
        "zp_wait": ([ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Exit)], ctypes.c_int),
        "zp_signal": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
        "zp_job_start": ([ctypes.c_int, _argv_t, _argv_t, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
        "zp_job_list": ([ctypes.c_int, _JOB_FN, ctypes.c_void_p], ctypes.c_int),
        "zp_job_status": ([ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Job)], ctypes.c_int),
        "zp_job_follow": ([ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Job)], ctypes.c_int),
        "zp_job_kill": ([ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
        "zp_job_remove": ([ctypes.c_int, ctypes.c_char_p], ctypes.c_int),
        "zp_copy_up": ([ctypes.c_int, _argv_t, ctypes.c_char_p, ctypes.c_int, _PROGRESS_FN, ctypes.c_void_p, ctypes.POINTER(_CopyStats)], ctypes.c_int),
        "zp_copy_down": ([ctypes.c_int, _argv_t, ctypes.c_char_p, ctypes.c_int, _PROGRESS_FN, ctypes.c_void_p, ctypes.POINTER(_CopyStats)], ctypes.c_int),
    }
    for name, (args, res) in sig.items():
        f = getattr(lib, name)
        f.argtypes, f.restype = args, res
    if lib.zp_version() != ABI:
        raise ImportError("libzp implements ABI %d; this binding needs %d" % (lib.zp_version(), ABI))
    return lib


_lib = _load()


def _raise(handle):
    buf = ctypes.create_string_buffer(4096)
    code = _lib.zp_errmsg(handle, buf, len(buf))
    msg = buf.value.decode("utf-8", "replace")
    cls = ServerError if 400 <= code < 600 else _classes.get(code, Error)
    raise cls(code, msg)


def _check(rc, handle):
    if rc != 0:
        _raise(handle)


def _b(s):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return os.fsencode(s)


def _argv(items):
    """A NULL-terminated char* array; keep the result alive during the call."""
    if items is None:
        return None
    enc = [_b(x) for x in items]
    arr = (ctypes.c_char_p * (len(enc) + 1))(*enc, None)
    return ctypes.cast(arr, _argv_t)


def _env(env):
    if env is None:
        return None
    return _argv(["%s=%s" % (k, v) for k, v in env.items()])


def _ms(seconds, default=-1):
    if seconds is None:
        return default
    return max(0, int(seconds * 1000))


# --- results -----------------------------------------------------------------

class Job:
    """A background job's description (docs/PROTOCOL.md 9.2)."""

    __slots__ = ("id", "status", "command_line", "user", "signal", "message", "pid", "started",
                 "ended", "exit_code", "done", "stdout_bytes", "stderr_bytes")

    def __init__(self, j):
        for name in ("id", "status", "command_line", "user", "signal", "message"):
            setattr(self, name, getattr(j, name).decode("utf-8", "replace"))
        self.pid, self.started, self.ended = j.pid, j.started, j.ended or None
        self.exit_code, self.done = j.exit_code, bool(j.done)
        self.stdout_bytes, self.stderr_bytes = j.stdout_bytes, j.stderr_bytes

    @property
    def returncode(self):
        """The exit code once the job ended (128+N when killed by signal N), else None."""
        return self.exit_code if self.status != "running" else None

    def __repr__(self):
        return "Job(id=%r, status=%r, exit_code=%r, command_line=%r)" % (
            self.id, self.status, self.exit_code, self.command_line)


class CopyStats:
    """What a copy did."""

    __slots__ = ("files", "skipped", "dirs", "links", "bytes", "failures")

    def __init__(self, st):
        for name in self.__slots__:
            setattr(self, name, getattr(st, name))

    def __repr__(self):
        return "CopyStats(%s)" % ", ".join("%s=%d" % (n, getattr(self, n)) for n in self.__slots__)


# --- sessions ------------------------------------------------------------------

def connect(target, *, accept_new=False, insecure=False, resume=False, identity=None,
            known_hosts=None, server_key=None, config_dir=None, user=None,
            connect_timeout=None, timeout=None):
    """Opens a session with the zpd at target: "[user@]host[:port]" (port
    5750), "[user@]tcp://host:port" or "ipc:///path".

    The client key is config_dir/id_curve (default $ZP_CONFIG or
    ~/.config/zp; or identity=PATH) and the host key the one pinned in
    known_hosts there; accept_new=True pins an unknown host's key on first
    contact, server_key="Z85..." expects that key. insecure=True connects
    without encryption (only to a zpd started with --insecure).
    resume=True survives a broken connection. Timeouts are in seconds.
    """
    if config_dir is None:
        # libzp's Go runtime sees the environment as it was when it was
        # loaded: pass Python's current one.
        config_dir = os.environ.get("ZP_CONFIG")
    h = _lib.zp_new()
    if h < 0:
        _raise(0)
    o = _Options(config_dir=_b(config_dir), identity=_b(identity), known_hosts=_b(known_hosts),
                 server_key=_b(server_key), user=_b(user), accept_new=int(bool(accept_new)),
                 insecure=int(bool(insecure)), resume=int(bool(resume)),
                 connect_timeout_ms=_ms(connect_timeout, 0), timeout_ms=_ms(timeout, 0))
    rc = _lib.zp_connect_abi(ABI, h, _b(target), ctypes.byref(o))
    if rc != 0:
        try:
            _raise(h)
        finally:
            _lib.zp_close(h)
    return Session(h, target)


class Session:
    """A session with a zpd (from connect()). Close it, or use it as a
    context manager; closing hangs up what still runs on it, but not its
    background jobs."""

    def __init__(self, handle, target):
        self._h = handle
        self.target = target
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self):
        with self._lock:
            h, self._h = self._h, None
        if h is not None:
            _lib.zp_close(h)

    def _handle(self):
        h = self._h
        if h is None:
            raise Error(CLOSED, "the session is closed")
        return h

    def popen(self, args, stdin=None, stdout=None, stderr=None, env=None, cwd=None, bufsize=-1):
        """Starts args (a list: no remote shell) and returns a Popen.

        stdin, stdout, stderr as subprocess takes them: PIPE, DEVNULL, a
        file object or descriptor, or None. stdin=None sends nothing (the
        command reads /dev/null; pass sys.stdin to forward ours); stdout
        and stderr None write to ours. stderr=STDOUT merges. env adds to the
        remote environment; cwd is the remote directory."""
        return Popen(self, args, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd, bufsize=bufsize)

    def run(self, args, *, input=None, capture_output=False, stdin=None, stdout=None, stderr=None,
            check=False, timeout=None, env=None, cwd=None, text=False):
        """Runs args remotely and waits, like subprocess.run: returns a
        CompletedProcess with returncode (128+N when killed by signal N,
        127/126 when it could not start), stdout and stderr (bytes, or str
        with text=True, when captured). check=True raises
        CalledProcessError on a non-zero code; timeout kills the command
        and raises TimeoutExpired."""
        if capture_output:
            stdout = stderr = PIPE
        if input is not None:
            stdin = PIPE
            if text and isinstance(input, str):
                input = input.encode()
        with self.popen(args, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd) as p:
            try:
                out, err = p.communicate(input, timeout=timeout)
            except TimeoutExpired:
                p.kill()
                p.wait()
                raise
        if text:
            out = out.decode() if out is not None else None
            err = err.decode() if err is not None else None
        cp = CompletedProcess(args, p.returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    # Background jobs.

    def job_start(self, args, env=None, cwd=None):
        """Starts args as a background job that outlives the session; returns its id."""
        buf = ctypes.create_string_buffer(64)
        a = _argv(args)
        e = _env(env)
        _check(_lib.zp_job_start(self._handle(), a, e, _b(cwd), buf, len(buf)), self._h)
        return buf.value.decode()

    def jobs(self):
        """This key's jobs on the server, oldest first (a list of Job)."""
        out = []

        def each(j, _):
            out.append(Job(j.contents))
        fn = _JOB_FN(each)
        _check(_lib.zp_job_list(self._handle(), fn, None), self._h)
        return out

    def job_status(self, job_id):
        """The Job with that id (ServerError with code 404 when there is none)."""
        j = _Job()
        _check(_lib.zp_job_status(self._handle(), _b(job_id), ctypes.byref(j)), self._h)
        return Job(j)

    def follow(self, job_id, stdout=None, stderr=None):
        """Writes the job's output from its start, then live, until it
        ends, and returns its final Job. stdout and stderr: a file object
        or descriptor, None for ours, DEVNULL to skip that stream."""
        fds = []
        for f, default in ((stdout, 1), (stderr, 2)):
            if f is None:
                fds.append(default)
            elif f == DEVNULL:
                fds.append(-1)
            elif isinstance(f, int):
                fds.append(f)
            else:
                f.flush()
                fds.append(f.fileno())
        if stdout is None:
            sys.stdout.flush()
        if stderr is None:
            sys.stderr.flush()
        j = _Job()
        _check(_lib.zp_job_follow(self._handle(), _b(job_id), fds[0], fds[1], ctypes.byref(j)), self._h)
        return Job(j)

    def job_kill(self, job_id, sig="TERM"):
        """Sends a signal (a name, "TERM", or a number) to the job's process group."""
        _check(_lib.zp_job_kill(self._handle(), _b(job_id), _b(_signame(sig))), self._h)

    def job_remove(self, job_id):
        """Forgets a finished job and deletes its output (409 while it runs)."""
        _check(_lib.zp_job_remove(self._handle(), _b(job_id)), self._h)

    # Copies.

    def copy(self, src, dst, *, recursive=False, preserve=False, checksum=False, progress=None):
        """Copies files between here and the server, as zpc does; the remote
        side starts with ":" (host.copy("a.txt", ":/tmp/a.txt") uploads,
        host.copy(":/etc/hosts", "hosts") downloads). src may be a list.
        progress(name, done, size) is called from a library thread.
        Returns CopyStats; raises Error with code PARTIAL (and .stats)
        when some entries failed."""
        srcs = [src] if isinstance(src, (str, bytes, os.PathLike)) else list(src)
        srcs = [os.fspath(s) for s in srcs]
        dst = os.fspath(dst)
        remote = [isinstance(s, str) and s.startswith(":") for s in srcs]
        if dst.startswith(":") and not any(remote):
            fn, sources, dest = _lib.zp_copy_up, srcs, dst[1:]
        elif all(remote) and not dst.startswith(":"):
            fn, sources, dest = _lib.zp_copy_down, [s[1:] for s in srcs], dst
        else:
            raise ValueError("copy: mark the remote side with ':' on one side only (':/remote/path')")
        flags = (1 if recursive else 0) | (2 if preserve else 0) | (4 if checksum else 0)
        cb = _PROGRESS_FN(0)
        if progress is not None:
            def cb_py(name, done, size, _):
                progress(name.decode("utf-8", "replace") if name else "", done, size)
            cb = _PROGRESS_FN(cb_py)
        st = _CopyStats()
        rc = fn(self._handle(), _argv(sources), _b(dest), flags, cb, None, ctypes.byref(st))
        stats = CopyStats(st)
        if rc != 0:
            try:
                _raise(self._h)
            except Error as e:
                e.stats = stats
                raise
        return stats


def _signame(sig):
    if isinstance(sig, int):
        return _signal.Signals(sig).name[3:]
    return str(sig).upper().removeprefix("SIG")


class Popen:
    """A running remote command, like subprocess.Popen (see Session.popen).

    .stdin, .stdout, .stderr are file objects when PIPE was asked for;
    .returncode is None until the command ended, then its exit code as a
    shell reports it (128+N for signal N; subprocess's negative codes do
    not apply: a remote signal is not ours)."""

    def __init__(self, session, args, stdin=None, stdout=None, stderr=None, env=None, cwd=None, bufsize=-1):
        self.args = args
        self.returncode = None
        self.stdin = self.stdout = self.stderr = None
        self.exit_status = None
        flags = 1 if stdin in (None, DEVNULL) else 0
        proc = _Process()
        a, e = _argv(args), _env(env)
        _check(_lib.zp_exec(session._handle(), a, e, _b(cwd), flags, ctypes.byref(proc)), session._h)
        self._h = proc.handle
        self._threads = []
        self._closed = False
        # stdin
        if proc.stdin_fd >= 0:
            if stdin == PIPE:
                self.stdin = open(proc.stdin_fd, "wb", buffering=bufsize)
            else:
                src = stdin if isinstance(stdin, int) else stdin.fileno()
                self._pump(src, proc.stdin_fd, close_dst=True)
        # stdout, stderr
        for name, want, fd, ours in (("stdout", stdout, proc.stdout_fd, 1), ("stderr", stderr, proc.stderr_fd, 2)):
            if want == PIPE:
                setattr(self, name, open(fd, "rb", buffering=bufsize))
            elif want == DEVNULL:
                self._pump(fd, None)
            elif want == STDOUT and name == "stderr":
                if stdout == PIPE:
                    # Interleave into the stdout pipe: a pump writes stderr
                    # into a pipe we read from alongside (order between
                    # the two streams is not kept, as over ssh).
                    self._merge_into_stdout(fd)
                else:
                    self._pump(fd, self._target_fd(stdout, 1))
            elif want is None:
                self._pump(fd, ours)
            else:
                self._pump(fd, self._target_fd(want, ours))

    @staticmethod
    def _target_fd(want, default):
        if want is None:
            return default
        if want == DEVNULL:
            return None
        if isinstance(want, int):
            return want
        want.flush()
        return want.fileno()

    def _pump(self, src, dst, close_dst=False):
        def run():
            try:
                while True:
                    try:
                        b = os.read(src, 1 << 16)
                    except OSError:
                        break
                    if not b:
                        break
                    if dst is not None:
                        mv = memoryview(b)
                        while mv:
                            n = os.write(dst, mv)
                            mv = mv[n:]
            except OSError:
                pass
            finally:
                if close_dst:
                    os.close(dst)
                else:
                    os.close(src)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)

    def _merge_into_stdout(self, errfd):
        r, w = os.pipe()
        outfd = os.dup(self.stdout.fileno())
        self.stdout.close()
        self.stdout = open(r, "rb")
        lock = threading.Lock()
        left = [2]

        def copy(src):
            try:
                while True:
                    b = os.read(src, 1 << 16)
                    if not b:
                        break
                    with lock:
                        mv = memoryview(b)
                        while mv:
                            mv = mv[os.write(w, mv):]
            except OSError:
                pass
            finally:
                os.close(src)
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        os.close(w)
        for src in (outfd, errfd):
            t = threading.Thread(target=copy, args=(src,), daemon=True)
            t.start()
            self._threads.append(t)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        try:
            self.wait()
        finally:
            self._close()

    def __del__(self):
        try:
            self._close()
        except Exception:
            pass

    def _close(self):
        if not self._closed:
            self._closed = True
            _lib.zp_close(self._h)

    def poll(self):
        """The exit code if the command ended, else None."""
        if self.returncode is None:
            self._wait(0)
        return self.returncode

    def wait(self, timeout=None):
        """Waits for the command (and for its output to be delivered);
        raises TimeoutExpired after timeout seconds."""
        if self.returncode is None:
            if not self._wait(_ms(timeout)):
                raise TimeoutExpired(self.args, timeout)
        for t in self._threads:
            t.join()
        return self.returncode

    def _wait(self, ms):
        st = _Exit()
        rc = _lib.zp_wait(self._h, ms, ctypes.byref(st))
        if rc != 0:
            if _lib.zp_errmsg(self._h, None, 0) == TIMEOUT and ms >= 0:
                return False
            _raise(self._h)
        self.exit_status = (st.status, st.code, st.message.decode("utf-8", "replace"))
        self.returncode = st.exit_code
        return True

    def send_signal(self, sig):
        """Sends a signal (a name such as "TERM" or a number) to the remote process group."""
        if self.returncode is None:
            _check(_lib.zp_signal(self._h, _b(_signame(sig))), self._h)

    def terminate(self):
        self.send_signal("TERM")

    def kill(self):
        self.send_signal("KILL")

    def communicate(self, input=None, timeout=None):
        """Sends input, closes stdin, reads stdout and stderr to EOF and
        waits, as subprocess does; returns (stdout, stderr)."""
        results = {}

        def reader(name, f):
            results[name] = f.read()
            f.close()
        threads = []
        for name in ("stdout", "stderr"):
            f = getattr(self, name)
            if f is not None:
                t = threading.Thread(target=reader, args=(name, f), daemon=True)
                t.start()
                threads.append(t)
        if self.stdin is not None:
            def writer():
                try:
                    if input:
                        self.stdin.write(input)
                except BrokenPipeError:
                    pass
                finally:
                    try:
                        self.stdin.close()
                    except BrokenPipeError:
                        pass
            t = threading.Thread(target=writer, daemon=True)
            t.start()
            threads.append(t)
        self.wait(timeout)
        for t in threads:
            t.join(timeout)
        return results.get("stdout"), results.get("stderr")
