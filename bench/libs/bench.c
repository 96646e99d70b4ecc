/* libzp's side of bench/libs.sh.
 *   zpbench TARGET noop-reuse N   N no-op commands in one session
 *   zpbench TARGET noop-fresh N   N times: connect, run `true`, close
 *   zpbench TARGET pipe MIB       MIB MiB through a remote cat and back
 * Prints the elapsed seconds; exits non-zero on any failure. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zp.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(int h, const char *what) {
    char buf[512];
    zp_errmsg(h, buf, sizeof buf);
    fprintf(stderr, "zpbench: %s: %s\n", what, buf);
    exit(1);
}

static int session(const char *target) {
    int s = zp_new();
    if (zp_connect(s, target, NULL) != 0) die(s, "connect");
    return s;
}

static void run_true(int s) {
    const char *argv[] = {"true", NULL};
    zp_process p;
    if (zp_exec(s, argv, NULL, NULL, ZP_NO_STDIN, &p) != 0) die(s, "exec");
    char b[64];
    while (read(p.stdout_fd, b, sizeof b) > 0) {}
    close(p.stdout_fd);
    close(p.stderr_fd);
    zp_exit st;
    if (zp_wait(p.handle, -1, &st) != 0 || st.exit_code != 0) die(p.handle, "wait");
    zp_close(p.handle);
}

struct feed { int fd; size_t n; };
static void *feeder(void *arg) {
    struct feed *f = arg;
    static char block[1 << 20];
    while (f->n > 0) {
        size_t k = f->n < sizeof block ? f->n : sizeof block;
        ssize_t w = write(f->fd, block, k);
        if (w <= 0) break;
        f->n -= (size_t)w;
    }
    close(f->fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const char *target = argv[1], *mode = argv[2];
    long n = atol(argv[3]);
    double t0;
    if (strcmp(mode, "noop-reuse") == 0) {
        int s = session(target);
        t0 = now();
        for (long i = 0; i < n; i++) run_true(s);
        printf("%.6f\n", now() - t0);
        zp_close(s);
    } else if (strcmp(mode, "noop-fresh") == 0) {
        t0 = now();
        for (long i = 0; i < n; i++) {
            int s = session(target);
            run_true(s);
            zp_close(s);
        }
        printf("%.6f\n", now() - t0);
    } else if (strcmp(mode, "pipe") == 0) {
        int s = session(target);
        const char *cat[] = {"cat", NULL};
        zp_process p;
        t0 = now();
        if (zp_exec(s, cat, NULL, NULL, 0, &p) != 0) die(s, "exec");
        struct feed f = {p.stdin_fd, (size_t)n << 20};
        pthread_t t;
        pthread_create(&t, NULL, feeder, &f);
        static char buf[1 << 20];
        size_t got = 0;
        ssize_t r;
        while ((r = read(p.stdout_fd, buf, sizeof buf)) > 0) got += (size_t)r;
        pthread_join(t, NULL);
        zp_exit st;
        if (zp_wait(p.handle, -1, &st) != 0 || st.exit_code != 0 || got != ((size_t)n << 20)) die(p.handle, "pipe");
        printf("%.6f\n", now() - t0);
        zp_close(s);
    } else {
        return 2;
    }
    return 0;
}
