/*
 * sys.c — the server's own keys under $SYS: its version and uptime, the
 * number of keys, one subtree per open session, and the MQTT bridge's state,
 * the node it is connected to (bridge_url may list several) and its outbox.
 * They are written like any change (origin "sys"), so they are read, listed
 * and subscribed to as every other key; clients cannot write them (store.c
 * refuses $-keys).
 *
 * Writes are submitted without waiting: the callers are the session loop,
 * which must not block on a commit. The sessions' keys are held in memory
 * only (store_op's memory_only): a restart ends every session, and their
 * rows cost each session about a third of its memory.
 */
#include "sys.h"
#include "gateway.h"
#include "clock.h"
#include "version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One transaction of up to SYS_OPS writes: a session's keys go together,
 * one allocation and one commit. */
#define SYS_OPS 4

struct sys__write {
    struct store_txn txn;
    struct store_op op[SYS_OPS];
    char key[SYS_OPS][160];
};

static void sys__done(void *arg, struct store_txn *t)
{
    struct sys__write *w = arg;
    if (t->err != STORE_OK && t->err != STORE_EUNAVAIL)
        log_warn("sys: writing %s: %s", w->key[t->fail < t->n ? t->fail : 0],
                 store_err_name(t->err));
    free(w);
}

/* A transaction to fill with sys__add_set and sys__add_delete (NULL: out of
 * memory, and they and sys__submit do nothing). */
static struct sys__write *sys__begin(void)
{
    return calloc(1, sizeof(struct sys__write));
}

static struct store_op *sys__add(struct sys__write *w, const char *key)
{
    if (w == NULL || w->txn.n == SYS_OPS)
        return NULL;
    size_t i = w->txn.n++;
    snprintf(w->key[i], sizeof w->key[i], "%s", key);
    w->op[i].key = w->key[i];
    w->op[i].klen = strlen(w->key[i]);
    return &w->op[i];
}

static void sys__add_set(struct sys__write *w, const char *key, const char *value, const char *type)
{
    struct store_op *op = sys__add(w, key);
    if (op == NULL)
        return;
    *op = (struct store_op){.kind = STORE_OP_SET,
                            .key = op->key,
                            .klen = op->klen,
                            .if_rev = STORE_ANY_REV,
                            .if_changed = true};
    if (store_entry_new(value, strlen(value), type, NULL, STORE_ORIGIN_SYS, &op->entry) != STORE_OK)
        w->txn.n--; /* left out */
}

static void sys__add_number(struct sys__write *w, const char *key, unsigned long long n)
{
    char text[32];
    snprintf(text, sizeof text, "%llu", n);
    sys__add_set(w, key, text, "application/json");
}

static void sys__add_delete(struct sys__write *w, const char *pattern)
{
    struct store_op *op = sys__add(w, pattern);
    if (op == NULL)
        return;
    *op = (struct store_op){.kind = STORE_OP_DELETE,
                            .key = op->key,
                            .klen = op->klen,
                            .pattern = true,
                            .sys = true,
                            .if_rev = STORE_ANY_REV,
                            .origin = STORE_ORIGIN_SYS};
}

/* The writes of `w` so far change memory only. */
static void sys__memory_only(struct sys__write *w)
{
    for (size_t i = 0; w != NULL && i < w->txn.n; i++)
        w->op[i].memory_only = true;
}

/* Submits `w` (taken over) without waiting. */
static void sys__submit(struct store *store, struct sys__write *w)
{
    if (w == NULL)
        return;
    w->txn.ops = w->op;
    if (w->txn.n == 0 || store_submit(store, &w->txn, sys__done, w) != STORE_OK)
        free(w); /* the store took the entries' references (store.h) */
}

static void sys__set(struct store *store, const char *key, const char *value, const char *type)
{
    struct sys__write *w = sys__begin();
    sys__add_set(w, key, value, type);
    sys__submit(store, w);
}

static void sys__set_number(struct store *store, const char *key, unsigned long long n)
{
    char text[32];
    snprintf(text, sizeof text, "%llu", n);
    sys__set(store, key, text, "application/json");
}

static void sys__session_count(struct sys__write *w, unsigned count)
{
    sys__add_number(w, "$SYS/sessions/count", count);
    sys__memory_only(w);
}

struct sys {
    struct store *store;
    struct bridge *bridge;                /* NULL: off */
    const char *bridge_state;             /* as last written; only on the loop */
    char bridge_node[BRIDGE_URL_MAX + 1]; /* likewise: the node connected to, or "" */
    unsigned interval;                    /* seconds between updates; 0: none */
    int64_t started, last;                /* CLOCK_MONOTONIC seconds; `last` only on the loop */
};

static void sys__delete(struct store *store, const char *pattern)
{
    struct sys__write *w = sys__begin();
    sys__add_delete(w, pattern);
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
    /* Sessions of a previous run (rows of a version that wrote them). */
    sys__delete(store, "$SYS/sessions/#");
    sys__delete(store, "$SYS/locks/#");     /* locks live in memory: none survived */
    sys__delete(store, "$SYS/bridge/node"); /* not connected yet */
    sys__set(store, "$SYS/version", ALMANAC_VERSION, "text/plain; charset=utf-8");
    sys__set_number(store, "$SYS/uptime", 0);
    struct store_stats st;
    store_stats(store, &st);
    sys__set_number(store, "$SYS/store/keys", st.keys);
    struct sys__write *w = sys__begin();
    sys__session_count(w, 0);
    sys__submit(store, w);
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
    if (strcmp(bs.node, sys->bridge_node) != 0) { /* a switch, even between two ticks */
        snprintf(sys->bridge_node, sizeof sys->bridge_node, "%s", bs.node);
        if (bs.node[0])
            sys__set(sys->store, "$SYS/bridge/node", bs.node, "text/plain; charset=utf-8");
        else
            sys__delete(sys->store, "$SYS/bridge/node");
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
    char key[160], value[256];
    struct sys__write *w = sys__begin();
    /* Since when: the key's ts. */
    snprintf(key, sizeof key, "$SYS/sessions/%s", client_id);
    snprintf(value, sizeof value, "{\"transport\":\"%s\",\"address\":\"%s\"}", transport, address);
    sys__add_set(w, key, value, "application/json");
    sys__session_count(w, count);
    sys__submit(sys->store, w);
}

void sys_session_close(struct sys *sys, const char *client_id, unsigned count)
{
    char pattern[160];
    snprintf(pattern, sizeof pattern, "$SYS/sessions/%s", client_id);
    struct sys__write *w = sys__begin();
    sys__add_delete(w, pattern);
    sys__session_count(w, count);
    sys__submit(sys->store, w);
}
