/*
 * zp_test: libzp against a real zpd, as a C program uses it.
 * Usage: zp_test TARGET TMPDIR PIPE_MIB, or zp_test --leak-canary
 * ($ZP_CONFIG holds the client key; the host key is pinned on first use.)
 * Prints one line per check and exits 0 when all pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zp.h"

static int failures;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (cond) {                                                   \
            printf("ok   %s:%d ", __func__, __LINE__);                \
        } else {                                                      \
            failures++;                                               \
            printf("FAIL %s:%d ", __func__, __LINE__);                \
        }                                                             \
        printf(__VA_ARGS__);                                          \
        printf("\n");                                                 \
        fflush(stdout);                                               \
    } while (0)

static const char *err(int h) {
    static __thread char buf[512];
    zp_errmsg(h, buf, sizeof buf);
    return buf;
}

/* Reads fd to EOF into buf (at most cap-1 bytes kept, NUL-ended). */
static size_t slurp(int fd, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        char tmp[4096];
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        size_t k = (size_t)r;
        if (n + k > cap - 1) k = cap - 1 - n;
        memcpy(buf + n, tmp, k);
        n += k;
    }
    buf[n] = 0;
    return n;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void test_exec_stdin(int s) {
    const char *argv[] = {"sh", "-c", "tr a-z A-Z; echo oops >&2; exit 5", NULL};
    const char *env[] = {"ZP_TEST_VAR=1", NULL};
    zp_process p;
    int rc = zp_exec(s, argv, env, NULL, 0, &p);
    CHECK(rc == 0, "exec: %s", rc ? err(s) : "");
    if (rc) return;
    write_all(p.stdin_fd, "hello\n", 6);
    close(p.stdin_fd);
    char out[64], errb[64];
    slurp(p.stdout_fd, out, sizeof out);
    slurp(p.stderr_fd, errb, sizeof errb);
    close(p.stdout_fd);
    close(p.stderr_fd);
    zp_exit st;
    rc = zp_wait(p.handle, -1, &st);
    CHECK(rc == 0 && st.status == ZP_EXITED && st.exit_code == 5, "wait: rc=%d status=%d exit=%d", rc, st.status, st.exit_code);
    CHECK(strcmp(out, "HELLO\n") == 0 && strcmp(errb, "oops\n") == 0, "streams: %s / %s", out, errb);
    CHECK(zp_close(p.handle) == 0, "close process");
}

static int run(int s, const char *const argv[], int flags, zp_exit *st) {
    zp_process p;
    if (zp_exec(s, argv, NULL, NULL, flags, &p) != 0) return -1;
    char out[256];
    if (p.stdin_fd >= 0) close(p.stdin_fd);
    slurp(p.stdout_fd, out, sizeof out);
    slurp(p.stderr_fd, out, sizeof out);
    close(p.stdout_fd);
    close(p.stderr_fd);
    int rc = zp_wait(p.handle, -1, st);
    zp_close(p.handle);
    return rc;
}

static void test_exit_codes(int s) {
    zp_exit st;
    const char *a1[] = {"sh", "-c", "exit 7", NULL};
    CHECK(run(s, a1, ZP_NO_STDIN, &st) == 0 && st.status == ZP_EXITED && st.exit_code == 7, "exit 7: %d", st.exit_code);
    const char *a2[] = {"/no/such/command", NULL};
    CHECK(run(s, a2, ZP_NO_STDIN, &st) == 0 && st.status == ZP_FAILED_TO_START && st.exit_code == 127,
          "not found: status=%d exit=%d msg=%s", st.status, st.exit_code, st.message);
    const char *a3[] = {"sh", "-c", "kill -KILL $$", NULL};
    CHECK(run(s, a3, ZP_NO_STDIN, &st) == 0 && st.status == ZP_SIGNALED && st.code == 9 && st.exit_code == 137,
          "killed: status=%d code=%d exit=%d", st.status, st.code, st.exit_code);
}

static void test_signal(int s) {
    const char *argv[] = {"sh", "-c", "echo ready; exec sleep 60", NULL};
    zp_process p;
    int rc = zp_exec(s, argv, NULL, NULL, ZP_NO_STDIN, &p);
    CHECK(rc == 0 && p.stdin_fd == -1, "exec sleep: %s", rc ? err(s) : "");
    if (rc) return;
    char line[16] = {0};
    ssize_t n = read(p.stdout_fd, line, 6);
    CHECK(n == 6 && memcmp(line, "ready\n", 6) == 0, "running: %zd", n);
    zp_exit st;
    CHECK(zp_wait(p.handle, 0, &st) == -1 && zp_errmsg(p.handle, NULL, 0) == ZP_ETIMEOUT, "still running");
    CHECK(zp_signal(p.handle, "SIGTERM") == 0, "signal: %s", err(p.handle));
    rc = zp_wait(p.handle, 20000, &st);
    CHECK(rc == 0 && st.status == ZP_SIGNALED && st.code == 15 && st.exit_code == 143,
          "terminated: rc=%d status=%d code=%d", rc, st.status, st.code);
    CHECK(zp_signal(p.handle, "TERM") == -1 && zp_errmsg(p.handle, NULL, 0) == ZP_ECLOSED, "signal after the end");
    close(p.stdout_fd);
    close(p.stderr_fd);
    zp_close(p.handle);
}

struct feeder {
    int fd;
    size_t total;
};

static void *feed(void *arg) {
    struct feeder *f = arg;
    static char block[1 << 16];
    for (size_t i = 0; i < sizeof block; i++) block[i] = (char)(i * 7 + 3);
    size_t sent = 0;
    while (sent < f->total) {
        size_t k = f->total - sent < sizeof block ? f->total - sent : sizeof block;
        if (write_all(f->fd, block, k) != 0) break;
        sent += k;
    }
    close(f->fd);
    return NULL;
}

static long peak_rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &v) == 1) break;
    if (f) fclose(f);
    return v;
}

static void test_big_pipe(int s, size_t mib) {
    const char *argv[] = {"cat", NULL};
    zp_process p;
    int rc = zp_exec(s, argv, NULL, NULL, 0, &p);
    CHECK(rc == 0, "exec cat: %s", rc ? err(s) : "");
    if (rc) return;
    struct feeder f = {p.stdin_fd, mib << 20};
    pthread_t t;
    pthread_create(&t, NULL, feed, &f);
    static char buf[1 << 16];
    size_t got = 0;
    int same = 1;
    for (;;) {
        ssize_t r = read(p.stdout_fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != (char)(((got + (size_t)i) % (1 << 16)) * 7 + 3)) same = 0;
        got += (size_t)r;
    }
    pthread_join(t, NULL);
    close(p.stdout_fd);
    close(p.stderr_fd);
    zp_exit st;
    rc = zp_wait(p.handle, -1, &st);
    CHECK(rc == 0 && st.exit_code == 0 && got == (mib << 20) && same, "%zu MiB through cat: got %zu octets, intact=%d", mib, got, same);
    printf("peak_rss_kib %ld\n", peak_rss_kib());
    zp_close(p.handle);
}

static int listed;
static char want_id[64];
static void on_job(const zp_job *j, void *user) {
    (void)user;
    if (strcmp(j->id, want_id) == 0) listed++;
}

static void test_job(int s, const char *tmp) {
    const char *argv[] = {"sh", "-c", "echo job-out; echo job-err >&2; exit 4", NULL};
    int rc = zp_job_start(s, argv, NULL, NULL, want_id, sizeof want_id);
    CHECK(rc == 0 && want_id[0], "job start: %s %s", want_id, rc ? err(s) : "");
    if (rc) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/follow.out", tmp);
    int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0600);
    zp_job j;
    rc = zp_job_follow(s, want_id, fd, -1, &j);
    CHECK(rc == 0 && j.exit_code == 4 && strcmp(j.status, "exited") == 0 && j.done, "follow: rc=%d exit=%d status=%s %s", rc, j.exit_code, j.status, rc ? err(s) : "");
    char out[64];
    lseek(fd, 0, SEEK_SET);
    slurp(fd, out, sizeof out);
    close(fd);
    CHECK(strcmp(out, "job-out\n") == 0, "followed stdout: %s", out);
    CHECK(zp_job_list(s, on_job, NULL) == 0 && listed == 1, "listed: %d", listed);
    CHECK(zp_job_status(s, want_id, &j) == 0 && j.stdout_bytes == 8 && j.stderr_bytes == 8 && j.pid > 0 && j.started > 0,
          "status: out=%llu err=%llu", (unsigned long long)j.stdout_bytes, (unsigned long long)j.stderr_bytes);
    CHECK(zp_job_remove(s, want_id) == 0, "remove: %s", err(s));
    rc = zp_job_status(s, want_id, &j);
    CHECK(rc == -1 && zp_errmsg(s, NULL, 0) == 404, "removed job: code %d: %s", zp_errmsg(s, NULL, 0), err(s));

    const char *sl[] = {"sleep", "60", NULL};
    rc = zp_job_start(s, sl, NULL, NULL, want_id, sizeof want_id);
    CHECK(rc == 0 && zp_job_kill(s, want_id, "KILL") == 0, "kill: %s", err(s));
    rc = zp_job_follow(s, want_id, -1, -1, &j);
    CHECK(rc == 0 && strcmp(j.status, "killed") == 0 && j.exit_code == 137, "killed job: %s %d", j.status, j.exit_code);
    zp_job_remove(s, want_id);
}

static uint64_t last_done, calls;
static void on_progress(const char *name, uint64_t done, uint64_t size, void *user) {
    (void)name;
    (void)size;
    *(int *)user = 1;
    last_done = done;
    calls++;
}

static void test_copy(int s, const char *tmp) {
    char src[4096], up[4096], down[4096];
    snprintf(src, sizeof src, "%s/src.bin", tmp);
    snprintf(up, sizeof up, "%s/up.bin", tmp);
    snprintf(down, sizeof down, "%s/down.bin", tmp);
    FILE *f = fopen(src, "w");
    for (int i = 0; i < (3 << 20); i++) fputc(i % 251, f);
    fclose(f);
    const char *srcs[] = {src, NULL};
    zp_copy_stats st;
    int seen = 0;
    int rc = zp_copy_up(s, srcs, up, 0, on_progress, &seen, &st);
    CHECK(rc == 0 && st.files == 1 && st.bytes == (3 << 20) && seen && last_done == (3 << 20), "upload: rc=%d files=%llu bytes=%llu calls=%llu %s",
          rc, (unsigned long long)st.files, (unsigned long long)st.bytes, (unsigned long long)calls, rc ? err(s) : "");
    const char *ups[] = {up, NULL};
    rc = zp_copy_down(s, ups, down, 0, NULL, NULL, &st);
    struct stat sb;
    CHECK(rc == 0 && st.files == 1 && stat(down, &sb) == 0 && sb.st_size == (3 << 20), "download: rc=%d %s", rc, rc ? err(s) : "");
    const char *missing[] = {"/no/such/file", NULL};
    rc = zp_copy_down(s, missing, down, 0, NULL, NULL, &st);
    CHECK(rc == -1 && st.failures == 1, "missing source: code %d: %s", zp_errmsg(s, NULL, 0), err(s));
}

static void test_errors(const char *target, const char *tmp) {
    CHECK(zp_close(123456) == -1 && zp_errmsg(0, NULL, 0) == ZP_EINVAL, "bad handle: %s", err(0));
    int h = zp_new();
    CHECK(zp_connect_abi(ZP_ABI + 1, h, target, NULL) == -1 && zp_errmsg(h, NULL, 0) == ZP_EABI, "abi: %s", err(h));
    char kh[4096];
    snprintf(kh, sizeof kh, "%s/empty_known_hosts", tmp);
    zp_options o = {0};
    o.known_hosts = kh;
    CHECK(zp_connect(h, target, &o) == -1 && zp_errmsg(h, NULL, 0) == ZP_EUNKNOWNHOST, "unknown host: %s", err(h));
    o.server_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"; /* someone else's key */
    o.connect_timeout_ms = 3000;
    CHECK(zp_connect(h, target, &o) == -1 && zp_errmsg(h, NULL, 0) == ZP_EHANDSHAKE, "wrong server key: %d %s", zp_errmsg(h, NULL, 0), err(h));
    CHECK(zp_connect(h, "127.0.0.1:1", NULL) == -1, "refused: %d %s", zp_errmsg(h, NULL, 0), err(h));
    const char *argv[] = {"true", NULL};
    zp_process p;
    CHECK(zp_exec(h, argv, NULL, NULL, 0, &p) == -1 && zp_errmsg(h, NULL, 0) == ZP_EINVAL, "exec unconnected: %s", err(h));
    zp_close(h);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--leak-canary") == 0) {
        /* A leak valgrind must report despite the suppressions. */
        static char *volatile p;
        p = malloc(100);
        p[0] = 1;
        p = NULL;
        return zp_version() == ZP_ABI ? 0 : 1;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: zp_test TARGET TMPDIR PIPE_MIB\n");
        return 2;
    }
    const char *target = argv[1], *tmp = argv[2];
    size_t mib = (size_t)atol(argv[3]);
    CHECK(zp_version() == ZP_ABI, "version %d", zp_version());
    test_errors(target, tmp);
    int s = zp_new();
    zp_options o = {0};
    o.accept_new = 1;
    int rc = zp_connect(s, target, &o);
    CHECK(rc == 0, "connect: %s", rc ? err(s) : "");
    if (rc) return 1;
    test_exec_stdin(s);
    test_exit_codes(s);
    test_signal(s);
    test_job(s, tmp);
    test_copy(s, tmp);
    if (mib > 0) test_big_pipe(s, mib);
    CHECK(zp_close(s) == 0, "close session");
    CHECK(zp_close(s) == -1, "close twice");
    printf("%s: %d failed\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
