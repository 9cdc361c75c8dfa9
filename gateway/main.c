/*
 * main.c — the `almanac` command: `serve` runs the server.
 *
 * Start: configuration, the bridge's maps, store (open, migrate, load), the
 * session loop, HTTP, then the bridge connects.
 * SIGTERM and SIGINT are blocked in every thread and taken here with
 * sigwait. Stop, in order: stop accepting, drain the commit queue (every
 * writer is answered), let the answers go out, stop HTTP and the sessions,
 * close the database. The bridge disconnects before the store drains, and
 * what is committed after it stays in the outbox for the next start.
 */
#include "gateway.h"
#include "version.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

/* Descriptors besides the sessions': listeners, the epoll and event fds,
 * SQLite's files, blob files, the bridge's socket and HTTP requests (with a
 * descriptor limit under twice this, half of it). */
#define SERVE_NOFILE_MARGIN 1024
/* max_sessions derived from the descriptor limit, at most (as MHD's
 * connection limit, http.c). */
#define SERVE_SESSIONS_MAX 65536

/* Raises the soft descriptor limit to the hard one (as nginx's
 * worker_rlimit_nofile); http_start derives its connection limit from it,
 * and an unset max_sessions (0) becomes what it holds after the margin: a
 * session holds one descriptor, a wss one three (MHD carries its TLS
 * through a socket pair). Says which limit is in effect; warns when it
 * cannot be raised, or when it is too low for a max_sessions that was set.
 * HTTP connections and sessions are bounded each by their own limit: if
 * both fill at once, accept() finds no descriptor, and both the loop (a
 * spare descriptor) and MHD refuse the connection without harm. */
static void serve__raise_nofile(struct config *cfg)
{
    struct rlimit rl;
    unsigned per = cfg->http_tls_cert != NULL ? 3 : 1;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        log_warn("almanac: getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        rl.rlim_cur = rl.rlim_max = 1024;
    }
    rlim_t was = rl.rlim_cur, want = rl.rlim_max;
    if (want == RLIM_INFINITY) { /* the kernel takes at most fs.nr_open */
        unsigned long long nr_open = 1 << 20;
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        if (f != NULL) {
            if (fscanf(f, "%llu", &nr_open) != 1)
                nr_open = 1 << 20;
            fclose(f);
        }
        want = (rlim_t)nr_open;
    }
    if (want > rl.rlim_cur) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            log_warn("almanac: cannot raise the descriptor limit from %llu to %llu: %s",
                     (unsigned long long)was, (unsigned long long)want, strerror(errno));
            getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    unsigned long long n = rl.rlim_cur, hard = rl.rlim_max;
    unsigned long long margin = n / 2 < SERVE_NOFILE_MARGIN ? n / 2 : SERVE_NOFILE_MARGIN;
    if (cfg->max_sessions == 0) {
        unsigned long long fit = (n - margin) / per;
        cfg->max_sessions = fit > SERVE_SESSIONS_MAX ? SERVE_SESSIONS_MAX
                            : fit < 1                ? 1
                                                     : (unsigned)fit;
        log_info("almanac: descriptor limit %llu (was %llu): max_sessions %u, derived from it", n,
                 (unsigned long long)was, cfg->max_sessions);
        return;
    }
    unsigned long long need = (unsigned long long)cfg->max_sessions * per + SERVE_NOFILE_MARGIN;
    if (n < need)
        log_warn("almanac: descriptor limit %llu (hard limit %llu): too low for max_sessions %u, "
                 "which needs about %llu; raise the hard limit (LimitNOFILE=%llu in the systemd "
                 "unit, or ulimit -n %llu before starting almanac), lower max_sessions, or leave "
                 "it unset (0) to derive it from the limit",
                 n, hard, cfg->max_sessions, need, need, need);
    else
        log_info("almanac: descriptor limit %llu (was %llu; enough for max_sessions %u)", n,
                 (unsigned long long)was, cfg->max_sessions);
}

static int serve(int argc, char **argv)
{
    struct config cfg;
    struct store *store = NULL;
    struct http *http = NULL;
    struct loop *loop = NULL;
    struct sys *sys = NULL;
    struct ops *ops = NULL;
    struct bridge *bridge = NULL;
    char why[1024];
    sigset_t stop;
    int sig, rc = 1;

    if (config_load(&cfg, argc, argv, why, sizeof why) != 0) {
        fprintf(stderr, "almanac: %s\n", why);
        config_free(&cfg);
        return 2;
    }
    log_set_level(cfg.log_level);
    serve__raise_nofile(&cfg);
    /* OpenSSL's lazy start on an HTTP thread (the WebSocket handshake's
     * SHA-1) would leave that thread's state behind at exit. */
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
    /* Blocked before any thread starts, so every thread inherits it. */
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (bridge_new(&cfg.bridge, &cfg.limits, &bridge, why, sizeof why) != 0) {
        log_error("almanac: %s", why);
        rc = 2;
        goto out;
    }
    struct store_config scfg = {.data_dir = cfg.data_dir,
                                .durability = cfg.durability,
                                .max_db_bytes = cfg.max_db_bytes,
                                .limits = cfg.limits,
                                .history_keys = cfg.history_keys,
                                .nhistory_keys = cfg.nhistory_keys,
                                .history_retention_us = cfg.history_retention_us,
                                .history_max_bytes = cfg.history_max_bytes,
                                .blob_min_bytes = cfg.blob_min_bytes,
                                .blob_file_bytes = cfg.blob_file_bytes};
    bridge_outbox_hooks(bridge, &scfg.outbox);
    if (store_open(&scfg, &store, why, sizeof why) != STORE_OK) {
        log_error("almanac: %s", why);
        goto out;
    }
    sys = sys_start(store, bridge, cfg.sys_interval);
    if ((ops = ops_new(store, bridge, sys, &cfg, why, sizeof why)) == NULL) {
        log_error("almanac: %s", why);
        goto out;
    }
    if (session_serve(ops, &cfg, &loop, why, sizeof why) != 0 ||
        (strcmp(cfg.http_listen, "off") != 0 &&
         http_start(ops, &cfg, loop, &http, why, sizeof why) != 0) ||
        (bridge != NULL && bridge_start(bridge, store, why, sizeof why) != 0)) {
        log_error("almanac: %s", why);
        goto out;
    }
    log_info("almanac %s ready", ALMANAC_VERSION);
    sigwait(&stop, &sig);
    log_info("almanac: %s: stopping", strsignal(sig));
    rc = 0;
out:
    if (http)
        http_quiesce(http);
    loop_quiesce(loop);
    bridge_stop(bridge);
    if (store)
        store_drain(store);
    loop_stop(loop); /* MHD must see its upgraded sockets closed before it stops */
    http_stop(http);
    loop_free(loop);
    ops_free(ops);
    sys_stop(sys);
    store_close(store);
    bridge_free(bridge);
    config_free(&cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        help_commands(stderr);
        return 2;
    }
    if (strcmp(argv[1], "serve") == 0) {
        /* where an option may stand, not its value (a password "-h"):
         * "-c FILE", "--name value" and "--name=value", as config_load */
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
                return config_help(stdout) == 0 ? 0 : 1;
            if (strcmp(argv[i], "-c") == 0 ||
                (strncmp(argv[i], "--", 2) == 0 && strchr(argv[i], '=') == NULL))
                i++;
        }
        return serve(argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("almanac %s\n", ALMANAC_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        if (argc < 3) {
            help_commands(stdout);
            return 0;
        }
        if (help_command(stdout, argv[2]) == 0)
            return 0;
        fprintf(stderr, "almanac: no command '%s' (almanac --help lists them)\n", argv[2]);
        return 2;
    }
    return cli_main(argc, argv);
}
