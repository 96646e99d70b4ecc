/*
 * zp.h - libzp, the C API of zp: run commands on remote hosts through
 * their zpd, over CURVE-encrypted ZeroMQ, with background jobs and file
 * copies.  Build with `make libzp` (lib/libzp.so and lib/libzp.a); link
 * with -lzp (and -lpthread for the static library).
 *
 * Conventions (as libzmq's and libcurl's):
 *   - Objects are opaque integer handles (> 0): a session from zp_new(),
 *     a process from zp_exec().  zp_close() ends either.  A handle is
 *     never reused within a process's lifetime.
 *   - Functions return 0 on success and -1 on failure; then
 *     zp_errmsg(handle, buf, len) copies the message of the handle's last
 *     failure into buf and returns its code (ZP_E* below, or the
 *     protocol's stable code: 401, 404, 409, ... as in docs/PROTOCOL.md).
 *     Failures that have no valid handle are kept under handle 0.  No
 *     memory allocated by the library is ever handed to the caller.
 *   - Strings are NUL-terminated UTF-8; arrays of strings end with NULL.
 *   - Every function is safe to call from any thread; calls on one
 *     session from several threads run concurrently.  The error of a
 *     handle is that of its last failing call, whichever thread made it.
 *   - Callbacks are (function, void *user) pairs.  They run on threads the
 *     library owns, not the caller's, while the call that took them is in
 *     progress; they must not block for long and must not call zp_close()
 *     on the session they report about.
 *
 * Limits:
 *   - fork(): the Go runtime inside libzp does not survive fork() in the
 *     child.  A child may only call async-signal-safe functions and then
 *     exec; it must not call libzp.
 *   - dlclose(): libzp cannot be unloaded; dlclose() leaves it mapped (the
 *     Go runtime's threads keep running).  Load it once per process.
 *   - Signals: the Go runtime installs handlers for synchronous signals
 *     (SIGSEGV, SIGBUS, SIGFPE) and SIGURG/SIGPROF with SA_ONSTACK; a program
 *     that installs its own must use SA_ONSTACK and chain to the previous
 *     handler.  libzp never raises SIGPIPE on the descriptors it hands out.
 */
#ifndef ZP_H
#define ZP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ZP_ABI is the version of this interface.  zp_connect() passes the ABI
 * the program was compiled against and fails with ZP_EABI if the library
 * implements another one; zp_version() returns the library's. */
#define ZP_ABI 1

/* Library error codes (protocol codes are 400-599). */
#define ZP_EINVAL        1  /* bad argument or handle */
#define ZP_EABI          2  /* the program was built against another ZP_ABI */
#define ZP_ECONNECT      3  /* cannot reach the server (refused, unreachable, DNS) */
#define ZP_EHANDSHAKE    4  /* the security handshake failed (key refused, wrong key, insecure mismatch) */
#define ZP_EUNKNOWNHOST  5  /* the host's key is not pinned (see accept_new) */
#define ZP_EHOSTKEY      6  /* the host's key is not the pinned one: possible interception */
#define ZP_ENOIDENTITY   7  /* no client key (run zp keygen) */
#define ZP_ETIMEOUT      8  /* the server went silent, or a wait timed out */
#define ZP_ECLOSED       9  /* the session or process was closed */
#define ZP_EPROTOCOL    10  /* the server broke the protocol */
#define ZP_ELOCAL       11  /* a local failure: a file, a descriptor */
#define ZP_EPARTIAL     12  /* a copy finished, but some entries failed (see the stats) */
#define ZP_EINTERNAL    13  /* a bug in libzp (a recovered panic); the message says where */
#define ZP_EFAILED      14  /* anything else; the message says what */

/* Returns the ABI the library implements (ZP_ABI of its build). */
int zp_version(void);

/* Copies the message of the handle's last failure (or "" when none) into
 * buf, truncated to len-1 bytes and NUL-terminated, and returns its code
 * (0 when none).  buf may be NULL with len 0 to get only the code. */
int zp_errmsg(int handle, char *buf, size_t len);

/* Connection options; zero (or a NULL pointer) means the default. */
typedef struct zp_options {
    const char *config_dir;  /* identity and known_hosts dir: default $ZP_CONFIG, else ~/.config/zp
                                (the environment as it was when libzp was loaded: the Go runtime
                                copies it at start, and later setenv() calls are not seen) */
    const char *identity;    /* secret key file (zcert): default CONFIG_DIR/id_curve */
    const char *known_hosts; /* pinned host keys: default CONFIG_DIR/known_hosts */
    const char *server_key;  /* the server's public key, Z85 (40 chars): skips known_hosts */
    const char *user;        /* remote user, if not given as user@host: default the local user */
    int accept_new;          /* pin an unknown host's key on first contact (else ZP_EUNKNOWNHOST) */
    int insecure;            /* no encryption: only for a zpd started with --insecure */
    int resume;              /* survive a broken connection: reconnect and resume */
    int connect_timeout_ms;  /* connecting, handshake and open: default 5000 */
    int timeout_ms;          /* server silence before giving up: default the server's (5000) */
} zp_options;

/* Returns a new, unconnected session handle (> 0), or -1. */
int zp_new(void);

/* Connects session h to target "[user@]host[:port]" (port 5750 by
 * default), "[user@]tcp://host:port" or "ipc:///path", with CURVE unless
 * opts->insecure.  opts may be NULL.  Blocks up to the connect timeout. */
#define zp_connect(h, target, opts) zp_connect_abi(ZP_ABI, (h), (target), (opts))
int zp_connect_abi(int abi, int h, const char *target, const zp_options *opts);

/* Closes a session (the server hangs up what still runs on it, but not its
 * background jobs) or a process (hangs the command up if it still runs,
 * and releases the handle; close its descriptors yourself). Closing a
 * closed handle is an error (ZP_EINVAL). */
int zp_close(int handle);

/* A running remote command.  The descriptors are one end of socketpairs
 * and belong to the caller, who must close them: write the command's
 * stdin to stdin_fd (close it for EOF; -1 with ZP_NO_STDIN), read its
 * stdout and stderr from stdout_fd and stderr_fd until EOF.  They work
 * with read/write/poll/epoll, are blocking (set O_NONBLOCK yourself) and
 * close-on-exec (clear FD_CLOEXEC to hand one to a child process).
 * Read stdout and stderr while the command runs: output you do not read
 * stops it once the flow-control window (4 MiB) is full, as a pipe does. */
typedef struct zp_process {
    int handle;
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
} zp_process;

#define ZP_NO_STDIN 1 /* the command reads /dev/null; stdin_fd is -1 */

/* Runs argv[0] with argv on session s (no shell: argv as given), with env
 * ("NAME=VALUE" strings, may be NULL) added to the remote environment and
 * in cwd (NULL: the user's home).  Returns once the request is sent; a
 * command that cannot start is reported by zp_wait (127 or 126). */
int zp_exec(int s, const char *const argv[], const char *const env[], const char *cwd, int flags, zp_process *proc);

/* How a command ended. */
#define ZP_EXITED          0 /* code: the exit code */
#define ZP_SIGNALED        1 /* code: the signal number */
#define ZP_FAILED_TO_START 2 /* code: 127 not found, 126 not executable */
#define ZP_LOST            3 /* the session expired on the server; the command got SIGHUP */

typedef struct zp_exit {
    int status;        /* ZP_EXITED, ZP_SIGNALED, ZP_FAILED_TO_START or ZP_LOST */
    int code;          /* see status */
    int exit_code;     /* as a shell reports it: code, 128+signal, 127/126, 255 when lost */
    char message[256]; /* detail from the server (why it could not start) */
} zp_exit;

/* Waits up to timeout_ms (-1: forever, 0: poll) for process p to end and
 * all its output to be written to stdout_fd and stderr_fd; then fills
 * *st.  Fails with ZP_ETIMEOUT while it runs.  May be called again. */
int zp_wait(int p, int timeout_ms, zp_exit *st);

/* Sends a signal ("TERM", "INT", "HUP", "KILL", "USR1", ...; a leading
 * "SIG" is allowed) to the command's process group. */
int zp_signal(int p, const char *name);

/* A background job's description (docs/PROTOCOL.md 9.2); longer strings
 * are truncated. */
typedef struct zp_job {
    char id[64];
    char status[24];        /* running, exited, killed, failed-to-start */
    char command_line[512]; /* argv, shell-quoted */
    char user[64];
    char signal[16];        /* the signal's name when killed */
    char message[256];
    int64_t pid;
    int64_t started;        /* Unix seconds */
    int64_t ended;          /* Unix seconds; 0 while running */
    int exit_code;          /* once ended: the code, 128+N killed by signal N, 127/126 */
    int done;               /* the job ended and its output is complete */
    uint64_t stdout_bytes;
    uint64_t stderr_bytes;
} zp_job;

/* Starts argv as a background job that outlives the session; copies its
 * id into id (64 bytes suffice).  A command that cannot start still gets
 * an id; its status says failed-to-start. */
int zp_job_start(int s, const char *const argv[], const char *const env[], const char *cwd, char *id, size_t idlen);

/* Calls fn for each of this key's jobs on the server, oldest first, on
 * the caller's thread; job is valid during the call only. */
typedef void (*zp_job_fn)(const zp_job *job, void *user);
int zp_job_list(int s, zp_job_fn fn, void *user);

/* Fills *job with the job's description (404 if there is no such job). */
int zp_job_status(int s, const char *id, zp_job *job);

/* Writes the job's output from its start to out_fd and err_fd (-1: not
 * that stream), then live until the job ends, and fills *job (may be NULL)
 * with its final description.  Blocks until then. */
int zp_job_follow(int s, const char *id, int out_fd, int err_fd, zp_job *job);

/* Signals a job's process group ("TERM" by default when sig is NULL). */
int zp_job_kill(int s, const char *id, const char *sig);

/* Forgets a finished job and deletes its output (409 while it runs). */
int zp_job_remove(int s, const char *id);

/* Copy flags. */
#define ZP_COPY_RECURSIVE 1 /* copy directories */
#define ZP_COPY_PRESERVE  2 /* keep the whole mode and the owner where allowed */
#define ZP_COPY_CHECKSUM  4 /* compare digests, not size and time, to skip files */

typedef struct zp_copy_stats {
    uint64_t files;    /* regular files copied */
    uint64_t skipped;  /* already identical */
    uint64_t dirs;
    uint64_t links;
    uint64_t bytes;    /* content octets moved */
    uint64_t failures; /* entries that failed (the first is in zp_errmsg) */
} zp_copy_stats;

/* Progress of a copy: octets of the current file (name) moved so far out
 * of size (0 when unknown: downloads report the running total). Runs on a
 * library thread. */
typedef void (*zp_progress_fn)(const char *name, uint64_t done, uint64_t size, void *user);

/* Copies local sources to dest on the server (upload), or sources on the
 * server to the local dest (download), with rsync's rules for "dir" and
 * "dir/".  stats and progress may be NULL.  Entries that fail do not stop
 * the copy: it returns -1 with ZP_EPARTIAL and stats->failures set. */
int zp_copy_up(int s, const char *const sources[], const char *dest, int flags,
               zp_progress_fn progress, void *user, zp_copy_stats *stats);
int zp_copy_down(int s, const char *const sources[], const char *dest, int flags,
                 zp_progress_fn progress, void *user, zp_copy_stats *stats);

#ifdef __cplusplus
}
#endif
#endif /* ZP_H */
