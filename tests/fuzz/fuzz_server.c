/*
 * fuzz_server.c — the environment and the in-process server of the
 * harnesses (fuzz_server.h).
 *
 * The server lives for the whole fuzzing process: starting the store for
 * every input would cost more than the input. What one input leaves in the
 * store (keys, history) is state the next one may meet, as a real client
 * would. At exit (libFuzzer's -runs or -max_total_time end with exit) it is
 * stopped in main.c's order, so LeakSanitizer sees a clean shutdown.
 */
#include "fuzz_server.h"
#include "gateway.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

void fuzz_clear_env(void)
{
    for (bool again = true; again;) { /* unsetenv changes environ: start over */
        again = false;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "ALMANAC_", 8) == 0) {
                char name[256];
                snprintf(name, sizeof name, "%.*s", (int)strcspn(*e, "="), *e);
                unsetenv(name);
                again = true;
                break;
            }
        }
    }
}

static struct {
    bool started;
    struct fuzz_server pub;
    struct config cfg;
    struct store *store;
    struct sys *sys;
    struct ops *ops;
    struct loop *loop;
    struct http *http;
} fuzz__srv;

static int fuzz__rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes the directories that harnesses which crashed (so never reached
 * fuzz__stop) left in `tmp`: almanac-fuzz-<pid>-* of a pid that is gone. */
static void fuzz__sweep(const char *tmp)
{
    DIR *d = opendir(tmp);
    struct dirent *de;
    int pid;
    char path[512];
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (sscanf(de->d_name, "almanac-fuzz-%d-", &pid) == 1 && pid > 0 && kill(pid, 0) != 0 &&
            errno == ESRCH) {
            snprintf(path, sizeof path, "%s/%s", tmp, de->d_name);
            nftw(path, fuzz__rm, 8, FTW_DEPTH | FTW_PHYS);
        }
    }
    closedir(d);
}

static void fuzz__stop(void)
{
    if (!fuzz__srv.started)
        return;
    fuzz__srv.started = false;
    if (fuzz__srv.http)
        http_quiesce(fuzz__srv.http);
    loop_quiesce(fuzz__srv.loop);
    store_drain(fuzz__srv.store);
    loop_stop(fuzz__srv.loop);
    http_stop(fuzz__srv.http);
    loop_free(fuzz__srv.loop);
    ops_free(fuzz__srv.ops);
    sys_stop(fuzz__srv.sys);
    store_close(fuzz__srv.store);
    config_free(&fuzz__srv.cfg);
    nftw(fuzz__srv.pub.dir, fuzz__rm, 8, FTW_DEPTH | FTW_PHYS);
}

const struct fuzz_server *fuzz_server_start(bool unix_socket, bool http)
{
    struct fuzz_server *pub = &fuzz__srv.pub;
    char why[1024];

    if (fuzz__srv.started)
        return pub;
    fuzz_clear_env();
    signal(SIGPIPE, SIG_IGN);
    /* OpenSSL initialised lazily on an MHD thread (SHA1 of a WebSocket key)
     * leaves that thread's error state behind at exit, which LeakSanitizer
     * reports: initialised here, on the main thread, it does not. */
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
    /* In memory if we can: every write of an input waits for its commit. */
    const char *tmp = getenv("FUZZ_TMPDIR");
    if (tmp == NULL)
        tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (tmp == NULL)
        tmp = "/tmp";
    fuzz__sweep(tmp);
    snprintf(pub->dir, sizeof pub->dir, "%s/almanac-fuzz-%d-XXXXXX", tmp, (int)getpid());
    if (mkdtemp(pub->dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    if (unix_socket)
        snprintf(pub->unix_socket, sizeof pub->unix_socket, "%s/s.sock", pub->dir);
    char *argv[] = {"--data_dir", pub->dir, "--tcp_listen", "off", "--http_listen",
                    http ? "127.0.0.1:0" : "off", "--http_threads", "1",
                    /* main.c derives it from the descriptor limit when 0 */
                    "--http_max_connections", "256", "--sys_interval", "0", "--log_level",
                    getenv("FUZZ_LOG") ? getenv("FUZZ_LOG") : "error", "--max_message_bytes",
                    "64KiB", "--max_body_bytes", "1MiB", "--unix_socket", pub->unix_socket, NULL};
    int argc = unix_socket ? 20 : 18;
    if (config_load(&fuzz__srv.cfg, argc, argv, why, sizeof why) != 0)
        goto fail;
    log_set_level(fuzz__srv.cfg.log_level);
    struct store_config scfg = {.data_dir = fuzz__srv.cfg.data_dir,
                                .durability = fuzz__srv.cfg.durability,
                                .max_db_bytes = fuzz__srv.cfg.max_db_bytes,
                                .limits = fuzz__srv.cfg.limits,
                                .history_keys = fuzz__srv.cfg.history_keys,
                                .nhistory_keys = fuzz__srv.cfg.nhistory_keys,
                                .history_retention_us = fuzz__srv.cfg.history_retention_us,
                                .history_max_bytes = fuzz__srv.cfg.history_max_bytes};
    bridge_outbox_hooks(NULL, &scfg.outbox);
    if (store_open(&scfg, &fuzz__srv.store, why, sizeof why) != STORE_OK)
        goto fail;
    fuzz__srv.sys = sys_start(fuzz__srv.store, NULL, fuzz__srv.cfg.sys_interval);
    fuzz__srv.ops = ops_new(fuzz__srv.store, NULL, fuzz__srv.sys, &fuzz__srv.cfg, why, sizeof why);
    if (fuzz__srv.ops == NULL ||
        session_serve(fuzz__srv.ops, &fuzz__srv.cfg, &fuzz__srv.loop, why, sizeof why) != 0)
        goto fail;
    if (http) {
        if (http_start(fuzz__srv.ops, &fuzz__srv.cfg, fuzz__srv.loop, &fuzz__srv.http, why,
                       sizeof why) != 0)
            goto fail;
        pub->port = http_port(fuzz__srv.http);
    }
    fuzz__srv.started = true;
    atexit(fuzz__stop);
    return pub;
fail:
    fprintf(stderr, "fuzz: cannot start the server: %s\n", why);
    abort();
}

static int64_t fuzz__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int fuzz_exchange(int fd, const void *data, size_t len, bool shut,
                  bool (*done)(const char *reply, size_t len), char **reply, size_t *reply_len,
                  int idle_ms, int timeout_ms)
{
    size_t off = 0, n = 0, cap = 4096;
    char *buf = malloc(cap);
    int64_t deadline = fuzz__now_ms() + timeout_ms, last = fuzz__now_ms();
    bool shut_done = false;
    int rc = 0;

    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (;;) {
        if (shut && off == len && !shut_done) {
            shutdown(fd, SHUT_WR);
            shut_done = true;
        }
        int64_t now = fuzz__now_ms(), left = deadline - now;
        if (left <= 0) {
            rc = -1;
            break;
        }
        if (idle_ms > 0 && off == len) {
            if (now - last >= idle_ms) {
                rc = 1;
                break;
            }
            if (left > idle_ms - (now - last))
                left = idle_ms - (now - last);
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (off < len ? POLLOUT : 0)};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
        if ((p.revents & POLLOUT) && off < len) {
            ssize_t w = send(fd, (const char *)data + off, len - off, MSG_NOSIGNAL);
            if (w > 0) {
                off += (size_t)w;
                last = fuzz__now_ms();
            } else if (w < 0 && errno != EAGAIN && errno != EINTR)
                off = len; /* the peer is gone: nothing more goes out */
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (cap - n < 4096)
                buf = realloc(buf, cap *= 2);
            ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                break;
            if (r > 0) {
                last = fuzz__now_ms();
                n += (size_t)r;
                buf[n] = '\0';
                if (done && done(buf, n))
                    break;
            }
        }
    }
    buf[n] = '\0';
    *reply = buf;
    *reply_len = n;
    return rc;
}
