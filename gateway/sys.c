/*
 * sys.c — the server's own keys under $SYS: its version and uptime, the
 * number of keys, one subtree per open session, and the MQTT bridge's state
 * and outbox. They are written like
 * any change (origin "sys"), so they are read, listed and subscribed to as
 * every other key; clients cannot write them (store.c refuses $-keys).
 *
 * Writes are submitted without waiting: the callers are the session loop,
 * which must not block on a commit.
 */
#include "sys.h"
#include "gateway.h"
#include "clock.h"
#include "version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sys__write {
    struct store_txn txn;
    struct store_op op;
    char key[160];
};

static void sys__done(void *arg, struct store_txn *t)
{
    if (t->err != STORE_OK && t->err != STORE_EUNAVAIL)
        log_warn("sys: writing %s: %s", ((struct sys__write *)arg)->key, store_err_name(t->err));
    free(arg);
}

static void sys__submit(struct store *store, struct sys__write *w)
{
    w->op.key = w->key;
    w->op.klen = strlen(w->key);
    w->txn.ops = &w->op;
    w->txn.n = 1;
    if (store_submit(store, &w->txn, sys__done, w) != STORE_OK)
        free(w);
}

static void sys__set(struct store *store, const char *key, const char *value, const char *type)
{
    struct sys__write *w = calloc(1, sizeof *w);
    if (w == NULL)
        return;
    snprintf(w->key, sizeof w->key, "%s", key);
    w->op = (struct store_op){.kind = STORE_OP_SET, .if_rev = STORE_ANY_REV, .if_changed = true};
    if (store_entry_new(value, strlen(value), type, NULL, STORE_ORIGIN_SYS, &w->op.entry) !=
        STORE_OK) {
        free(w);
        return;
    }
    sys__submit(store, w);
}

static void sys__set_number(struct store *store, const char *key, unsigned long long n)
{
    char text[32];
    snprintf(text, sizeof text, "%llu", n);
    sys__set(store, key, text, "application/json");
}

struct sys {
    struct store *store;
    struct bridge *bridge;    /* NULL: off */
    const char *bridge_state; /* as last written; only on the loop */
    unsigned interval;        /* seconds between updates; 0: none */
    int64_t started, last;    /* CLOCK_MONOTONIC seconds; `last` only on the loop */
};

static void sys__delete(struct store *store, const char *pattern)
{
    struct sys__write *w = calloc(1, sizeof *w);
    if (w == NULL)
        return;
    snprintf(w->key, sizeof w->key, "%s", pattern);
    w->op = (struct store_op){.kind = STORE_OP_DELETE,
                              .pattern = true,
                              .sys = true,
                              .if_rev = STORE_ANY_REV,
                              .origin = STORE_ORIGIN_SYS};
    sys__submit(store, w);
}

struct sys *sys_start(struct store *store, struct bridge *bridge, unsigned interval)
{
    struct sys *sys = calloc(1, sizeof *sys);
    if (sys == NULL)
        return NULL;
    sys->store = store;
    sys->bridge = bridge;
    sys->interval = interval;
    sys->started = sys->last = mono_s();
    /* Sessions of a previous run that ended without closing them. */
    sys__delete(store, "$SYS/sessions/#");
    sys__delete(store, "$SYS/locks/#"); /* locks live in memory: none survived */
    sys__set(store, "$SYS/version", ALMANAC_VERSION, "text/plain; charset=utf-8");
    sys__set_number(store, "$SYS/uptime", 0);
    struct store_stats st;
    store_stats(store, &st);
    sys__set_number(store, "$SYS/store/keys", st.keys);
    sys__set_number(store, "$SYS/sessions/count", 0);
    sys_tick(sys);
    return sys;
}

void sys_stop(struct sys *sys)
{
    free(sys);
}

void sys_tick(struct sys *sys)
{
    if (sys == NULL)
        return;
    struct bridge_stats bs;
    bridge_stats(sys->bridge, &bs);
    if (bs.state != sys->bridge_state) { /* at once, not at the interval */
        sys->bridge_state = bs.state;
        sys__set(sys->store, "$SYS/bridge/state", bs.state, "text/plain; charset=utf-8");
    }
    int64_t now = mono_s();
    if (sys->interval == 0 || now - sys->last < sys->interval)
        return;
    sys->last = now;
    struct store_stats st;
    store_stats(sys->store, &st);
    sys__set_number(sys->store, "$SYS/uptime", (unsigned long long)(now - sys->started));
    sys__set_number(sys->store, "$SYS/store/keys", st.keys);
    sys__set_number(sys->store, "$SYS/bridge/outbox", st.outbox);
}

void sys_session_open(struct sys *sys, const char *client_id, const char *transport,
                      const char *address, unsigned count)
{
    struct store *store = sys->store;
    char key[160], since[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(key, sizeof key, "$SYS/sessions/%s/transport", client_id);
    sys__set(store, key, transport, "text/plain; charset=utf-8");
    snprintf(key, sizeof key, "$SYS/sessions/%s/address", client_id);
    sys__set(store, key, address, "text/plain; charset=utf-8");
    snprintf(key, sizeof key, "$SYS/sessions/%s/since", client_id);
    sys__set(store, key, since, "text/plain; charset=utf-8");
    sys__set_number(store, "$SYS/sessions/count", count);
}

void sys_session_close(struct sys *sys, const char *client_id, unsigned count)
{
    struct store *store = sys->store;
    char pattern[160];
    snprintf(pattern, sizeof pattern, "$SYS/sessions/%s/#", client_id);
    sys__delete(store, pattern);
    sys__set_number(store, "$SYS/sessions/count", count);
}
