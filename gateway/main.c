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

#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: almanac COMMAND [ARGS]   (almanac COMMAND --help for its options)\n"
            "\n"
            "The server:\n"
            "  serve [-c FILE] [--OPTION VALUE ...]  run it (almanac serve --help: every option)\n"
            "\n"
            "Clients of a running server (-s HOST:PORT, --token T, --tls, --cafile FILE, --json):\n"
            "  get KEY|PATTERN          a value, or every entry a pattern matches\n"
            "  set KEY VALUE            store a value (`-` reads it from stdin)\n"
            "  del KEY|PATTERN          delete a key, or every key a pattern matches\n"
            "  ls [KEY]                 the children of a key (the top without one)\n"
            "  sub PATTERN              the current entries, then every change, live\n"
            "  pub KEY VALUE            publish without storing (subscribers and MQTT see it)\n"
            "  history KEY|PATTERN      past changes (--start, --stop, --limit, --desc, --every)\n"
            "  export                   every entry as JSON lines, to stdout\n"
            "  import                   JSON lines as export writes them, from stdin\n"
            "  info                     the server's version, keys, rev, storage and bridge\n"
            "  token create|ls|rm       access tokens (an admin's)\n"
            "\n"
            "  version                  almanac's version\n"
            "  help                     this\n");
}

/* Raises the descriptor limit to what the system allows (as nginx's
 * worker_rlimit_nofile); http_start derives its connection limit from it. */
static void serve__raise_nofile(void)
{
    struct rlimit rl;
    rlim_t n = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY ? 1 << 20 : rl.rlim_max;
        if (want > rl.rlim_cur) {
            rl.rlim_cur = want;
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                getrlimit(RLIMIT_NOFILE, &rl);
        }
        n = rl.rlim_cur;
    }
    log_info("almanac: %llu descriptors", (unsigned long long)n);
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
    serve__raise_nofile();
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
        usage(stderr);
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
        usage(stdout);
        return 0;
    }
    return cli_main(argc, argv);
}
