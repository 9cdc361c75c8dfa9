/*
 * ops.c — the operations layer: one entry point per operation, called by
 * every transport (HTTP and SSE, WebSocket, TCP and Unix sessions) after it
 * has parsed its wire, and answered by the transport from what it returns.
 *
 * A request is checked here, once, before the store sees it: keys and
 * patterns (store/key.c's rules, with the message a client reads), the
 * combinations that make no sense (if_rev on a pattern; an empty value of
 * a key the bridge maps out, which MQTT would take for a delete), and who
 * is asking (the caller's principal, auth.c): read of a key, or of some key
 * of a pattern, whose other keys are then filtered out, never widened;
 * write of a key, or of every key a pattern delete can match. So a new rule
 * lands in one place for every transport.
 * Invariants:
 *   1. nothing reaches the store from a request that fails a check: an
 *      error return means nothing was submitted, subscribed or applied;
 *      nothing is answered of a key the caller may not read (but a write
 *      says, as any write does, whether its key was there);
 *   2. a change carries its caller's transport as its origin;
 *   3. a write is checked whole (every op of a batch, every line of an
 *      import) before any of it is submitted.
 */
#include "ops.h"
#include "lifetime.h"
#include "envelope.h"
#include "gateway.h"
#include "import.h"
#include "log.h"
#include "sys.h"

#include <assert.h>
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ops {
    struct auth *auth;
    struct store *store;
    struct bridge *bridge;
    struct sys *sys;
    const struct config *cfg;
    struct locks *locks; /* the sessions' (lifetime.c) */
    _Atomic unsigned sessions;
    _Atomic uint64_t next_id;
};

struct ops *ops_new(struct store *store, struct bridge *bridge, struct sys *sys,
                    const struct config *cfg, char *why, size_t why_len)
{
    struct ops *o = calloc(1, sizeof *o);
    if (o == NULL || (o->auth = auth_new(cfg, why, why_len)) == NULL) {
        free(o);
        return NULL;
    }
    if (auth_load(o->auth, store, why, why_len) != STORE_OK) {
        auth_free(o->auth);
        free(o);
        return NULL;
    }
    o->store = store;
    o->bridge = bridge;
    o->sys = sys;
    o->cfg = cfg;
    if ((o->locks = locks_new(store)) == NULL) {
        snprintf(why, why_len, "out of memory");
        ops_free(o);
        return NULL;
    }
    will_recover(store); /* the wills of the sessions a crash left */
    return o;
}

void ops_free(struct ops *o)
{
    if (o == NULL)
        return;
    auth_free(o->auth);
    locks_free(o->locks);
    free(o);
}

struct locks *ops_locks(const struct ops *o)
{
    return o->locks;
}

struct store *ops_store(const struct ops *o)
{
    return o->store;
}

const struct config *ops_config(const struct ops *o)
{
    return o->cfg;
}

struct bridge *ops_bridge(const struct ops *o)
{
    return o->bridge;
}

struct sys *ops_sys(const struct ops *o)
{
    return o->sys;
}

/* ---- who is asking ---- */

int ops_authenticate(struct ops *o, const char *address, const char *token,
                     const struct principal **out, char *why, size_t why_len)
{
    return auth_principal(o->auth, address, token, out, why, why_len);
}

int ops_caller_live(const struct caller *c, char *why, size_t why_len)
{
    const struct principal *p = c->principal;
    if (!p->authenticated || auth_live(p))
        return STORE_OK;
    snprintf(why, why_len, "the token %s was revoked or has expired", p->name);
    return STORE_EUNAUTH;
}

bool ops_auth_required(struct ops *o, const char *address)
{
    return auth_required(o->auth, address);
}

/* A refusal: unauthorized for a caller who presented no credential (they
 * may have one), forbidden for one who did. */
static int ops__refuse(const struct caller *c, char *why, size_t why_len, const char *what,
                       const char *key, size_t klen)
{
    const struct principal *p = c->principal;
    if (!p->authenticated) {
        snprintf(why, why_len, "%s %.*s needs a credential (Authorization: Bearer, or a token)",
                 what, (int)klen, key);
        return STORE_EUNAUTH;
    }
    if (ops_caller_live(c, why, why_len) != STORE_OK)
        return STORE_EUNAUTH;
    snprintf(why, why_len, "%s may not %s %.*s", p->name, what, (int)klen, key);
    return STORE_EFORBIDDEN;
}

/* A revoked or expired token may do nothing, from its next request (and
 * its feeds' next event) on. */
static bool ops__reads(const struct principal *p, const char *key, size_t klen)
{
    return (p->admin || privs_match(p->read, key, klen)) && (!p->authenticated || auth_live(p));
}

static bool ops__writes(const struct principal *p, const char *key, size_t klen)
{
    return (p->admin || privs_match(p->write, key, klen)) && (!p->authenticated || auth_live(p));
}

static bool ops__admin(const struct principal *p)
{
    return p->admin && (!p->authenticated || auth_live(p));
}

/* The store_filter of a principal's reads. */
static bool ops__keep(void *arg, const char *key, size_t klen)
{
    return ops__reads(arg, key, klen);
}

/* May the caller read some key of `pat`? Then `*filter` is what keeps the
 * others out (keep NULL: no need, every key of `pat` is readable). */
static int ops__read_pattern(const struct caller *c, const char *pat, size_t plen,
                             struct store_filter *filter, char *why, size_t why_len)
{
    const struct principal *p = c->principal;
    *filter = (struct store_filter){0};
    if (p->authenticated && !auth_live(p))
        return ops__refuse(c, why, why_len, "read", pat, plen);
    if (ops__admin(p) || privs_cover(p->read, pat, plen))
        return STORE_OK;
    if (!privs_meet(p->read, pat, plen))
        return ops__refuse(c, why, why_len, "read", pat, plen);
    *filter = (struct store_filter){.keep = ops__keep, .arg = (void *)p};
    return STORE_OK;
}

int ops_server(struct ops *o, const struct caller *c, char *why, size_t why_len)
{
    (void)o;
    struct store_filter filter;
    int err = ops__read_pattern(c, "$SYS/#", 6, &filter, why, why_len);
    if (err == STORE_OK && filter.keep != NULL) /* all of it, or nothing */
        err = ops__refuse(c, why, why_len, "read", "$SYS/#", 6);
    return err;
}

/* ---- checks ---- */

static size_t ops__max_key(const struct ops *o)
{
    return store_limits(o->store)->max_key_bytes;
}

static int ops__key(struct ops *o, const char *key, size_t klen, char *why, size_t why_len)
{
    return store_key_check(key, klen, ops__max_key(o), why, why_len);
}

int ops_pattern(struct ops *o, const struct caller *c, const char *pat, size_t plen, bool *wild,
                char *why, size_t why_len)
{
    (void)c;
    int err = store_pattern_check(pat, plen, ops__max_key(o), wild, why, why_len);
    if (err == STORE_OK)
        return STORE_OK;
    /* Without '+' or '#' it was meant as a key: say what is wrong with it. */
    if (memchr(pat, '+', plen) != NULL || memchr(pat, '#', plen) != NULL)
        return err;
    store_key_check(pat, plen, ops__max_key(o), why, why_len);
    return STORE_EKEY;
}

/* API.md "MQTT bridge": the bridge would publish an empty value of a key
 * it maps out as an empty retained message, which MQTT takes for a delete
 * of the topic, so the broker and the store would disagree from then on. A
 * transient publish is not retained, so an empty one is fine (ops_publish
 * does not ask). */
static int ops__value_fits_mqtt(struct ops *o, const struct store_op *op, char *why, size_t why_len)
{
    size_t len;
    store_entry_value(op->entry, &len);
    if (len > 0 || !bridge_maps_out(o->bridge, op->key, op->klen))
        return STORE_OK;
    snprintf(why, why_len,
             "the value of %.*s is empty, and the key maps out to MQTT, which cannot carry an "
             "empty retained value (it would delete the topic): delete the key instead",
             (int)op->klen, op->key);
    return STORE_EBODY;
}

/* Checks one op of a write, and who may make it, and fills what follows
 * from it (a delete's `pattern`). */
static int ops__check_op(struct ops *o, const struct caller *c, struct store_op *op, char *why,
                         size_t why_len)
{
    const struct principal *p = c->principal;
    /* invariant 2: the transport made the entry with its own origin */
    assert(op->entry == NULL || store_entry_origin(op->entry) == c->transport);
    if (op->kind != STORE_OP_DELETE) {
        int err = ops__key(o, op->key, op->klen, why, why_len);
        if (err != STORE_OK)
            return err;
        if (op->kind == STORE_OP_GET ? !ops__reads(p, op->key, op->klen)
                                     : !ops__writes(p, op->key, op->klen))
            return ops__refuse(c, why, why_len, op->kind == STORE_OP_GET ? "read" : "write",
                               op->key, op->klen);
        if (op->kind == STORE_OP_SET)
            return ops__value_fits_mqtt(o, op, why, why_len);
        return STORE_OK;
    }
    bool wild;
    int err = ops_pattern(o, c, op->key, op->klen, &wild, why, why_len);
    if (err != STORE_OK)
        return err;
    op->pattern = wild;
    op->origin = c->transport; /* invariant 2 (a set's is its entry's) */
    if (wild && op->if_rev != STORE_ANY_REV) {
        snprintf(why, why_len, "if_rev (If-Match) applies to a key, not a pattern");
        return STORE_EBADREQ;
    }
    /* A pattern delete needs write of every key it can match. */
    if (!(wild ? ops__admin(p) || privs_cover(p->write, op->key, op->klen)
               : ops__writes(p, op->key, op->klen)) ||
        (p->authenticated && !auth_live(p)))
        return ops__refuse(c, why, why_len, "delete", op->key, op->klen);
    return STORE_OK;
}

/* ---- reads ---- */

int ops_get(struct ops *o, const struct caller *c, const char *key, size_t klen,
            struct store_entry **out, char *why, size_t why_len)
{
    int err = ops__key(o, key, klen, why, why_len);
    if (err != STORE_OK)
        return err;
    if (!ops__reads(c->principal, key, klen))
        return ops__refuse(c, why, why_len, "read", key, klen);
    if (store_get(o->store, key, klen, out) == STORE_OK)
        return STORE_OK;
    snprintf(why, why_len, "key %.*s does not exist", (int)klen, key);
    return STORE_ENOTFOUND;
}

/* A substring search (pget's `contains`) on top of the reader's filter.
 * It examines every key of the pattern until `limit` match, so its cost is
 * a pattern walk's; the needle is short (OPS_CONTAINS_MAX) and each key is
 * scanned for the needle's first letter before it is compared. */
#define OPS_CONTAINS_MAX 256
struct ops__search {
    const char *needle;
    size_t nlen;
    int first;                  /* the needle's first byte, lower case */
    struct store_filter reader; /* keep NULL: every key may be read */
};

static bool ops__has(void *arg, const char *key, size_t klen)
{
    const struct ops__search *s = arg;
    bool found = s->nlen == 0;
    for (size_t i = 0; !found && i + s->nlen <= klen; i++)
        found = tolower((unsigned char)key[i]) == s->first &&
                strncasecmp(key + i, s->needle, s->nlen) == 0;
    return found && (s->reader.keep == NULL || s->reader.keep(s->reader.arg, key, klen));
}

int ops_pget(struct ops *o, const struct caller *c, const char *pat, size_t plen, const char *after,
             size_t alen, const char *contains, size_t limit, store_visit_fn visit, void *arg,
             bool *more, char *why, size_t why_len)
{
    bool wild;
    struct ops__search search = {.needle = contains, .nlen = contains ? strlen(contains) : 0};
    struct store_filter *filter = &search.reader;
    *more = false;
    int err = ops_pattern(o, c, pat, plen, &wild, why, why_len);
    if (err != STORE_OK || (err = ops__read_pattern(c, pat, plen, filter, why, why_len)) != 0)
        return err;
    if (search.nlen > OPS_CONTAINS_MAX) {
        snprintf(why, why_len, "contains is at most %d bytes", OPS_CONTAINS_MAX);
        return STORE_EBADREQ;
    }
    search.first = search.nlen ? tolower((unsigned char)contains[0]) : 0;
    struct store_filter has = {.keep = ops__has, .arg = &search};
    if (contains != NULL)
        filter = &has;
    return store_pget(o->store, pat, plen, filter->keep ? filter : NULL, after, alen, limit, visit,
                      arg, more);
}

/* ls for a caller who does not read everything: the children are
 * gathered first (store_ls holds the tree's lock), then each is shown when
 * the caller may read it, or a key below it that exists (a filtered look,
 * so no name is shown for keys the caller may not read). */
struct ops__kid {
    char *name;
    size_t nlen;
    bool value, children;
    uint64_t below;
};

struct ops__kids {
    struct ops__kid *v;
    size_t n, cap;
    bool oom;
};

static void ops__gather(void *arg, const char *name, size_t nlen, bool value, bool children,
                        uint64_t below)
{
    struct ops__kids *k = arg;
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 16;
        struct ops__kid *v = realloc(k->v, cap * sizeof *v);
        if (v == NULL) {
            k->oom = true;
            return;
        }
        k->v = v;
        k->cap = cap;
    }
    struct ops__kid *kid = &k->v[k->n];
    if ((kid->name = malloc(nlen + 1)) == NULL) {
        k->oom = true;
        return;
    }
    memcpy(kid->name, name, nlen);
    kid->name[nlen] = '\0';
    kid->nlen = nlen;
    kid->value = value;
    kid->children = children;
    kid->below = below;
    k->n++;
}

static bool ops__found(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    (void)key, (void)klen, (void)e;
    *(bool *)arg = true;
    return false; /* one is enough */
}

static int ops__ls_filtered(struct ops *o, const struct caller *c, const char *key, size_t klen,
                            store_child_fn child, void *arg, int64_t *rev, char *why,
                            size_t why_len)
{
    const struct principal *p = c->principal;
    size_t max = ops__max_key(o);
    char *path = malloc(klen + max + 4); /* key, '/', a child's name, "/#" */
    struct ops__kids kids = {0};
    struct store_filter filter = {.keep = ops__keep, .arg = (void *)p};
    int err = STORE_OK;
    size_t at = 0;

    if (path == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    if (key != NULL) {
        memcpy(path, key, klen);
        path[klen] = '/';
        at = klen + 1;
    }
    path[at] = '#';
    if (!privs_meet(p->read, path, at + 1)) {
        err = ops__refuse(c, why, why_len, "list", key ? key : "the root", key ? klen : 8);
        goto out;
    }
    bool covered = privs_cover(p->read, path, at + 1);
    if (store_ls(o->store, key == NULL, key, klen, ops__gather, &kids, rev) != STORE_OK &&
        covered) {
        snprintf(why, why_len, "key %.*s does not exist", (int)klen, key);
        err = STORE_ENOTFOUND; /* not covered: as empty, so no name is probed */
        goto out;
    }
    for (size_t i = 0; i < kids.n && !kids.oom; i++) {
        struct ops__kid *k = &kids.v[i];
        if (k->nlen > max)
            continue;
        memcpy(path + at, k->name, k->nlen);
        bool holds = k->value && privs_match(p->read, path, at + k->nlen);
        memcpy(path + at + k->nlen, "/#", 2);
        size_t plen = at + k->nlen + 2;
        bool below = false;
        if (k->children && privs_meet(p->read, path, plen)) {
            bool more;
            store_pget(o->store, path, plen, &filter, NULL, 0, 1, ops__found, &below, &more);
        }
        /* How many keys are below is told only to who may read them all. */
        if (holds || below)
            child(arg, k->name, k->nlen, holds, below,
                  below && privs_cover(p->read, path, plen) ? k->below : STORE_BELOW_UNKNOWN);
    }
    if (kids.oom) {
        snprintf(why, why_len, "out of memory");
        err = STORE_EINTERNAL;
    }
out:
    for (size_t i = 0; i < kids.n; i++)
        free(kids.v[i].name);
    free(kids.v);
    free(path);
    return err;
}

int ops_ls(struct ops *o, const struct caller *c, const char *key, size_t klen,
           store_child_fn child, void *arg, int64_t *rev, char *why, size_t why_len)
{
    const struct principal *p = c->principal;
    int err;
    if (key != NULL && (err = ops__key(o, key, klen, why, why_len)) != STORE_OK)
        return err;
    if (p->authenticated && !auth_live(p))
        return ops__refuse(c, why, why_len, "list", key ? key : "the root", key ? klen : 8);
    if (!ops__admin(p))
        return ops__ls_filtered(o, c, key, klen, child, arg, rev, why, why_len);
    if (store_ls(o->store, key == NULL, key, klen, child, arg, rev) == STORE_OK)
        return STORE_OK;
    snprintf(why, why_len, "key %.*s does not exist", (int)klen, key);
    return STORE_ENOTFOUND;
}

int ops_history(struct ops *o, const struct caller *c, const struct store_history_query *q,
                struct store_history **out, char *why, size_t why_len)
{
    bool wild;
    struct store_filter filter;
    int err = ops_pattern(o, c, q->pattern, q->plen, &wild, why, why_len);
    if (err != STORE_OK ||
        (err = ops__read_pattern(c, q->pattern, q->plen, &filter, why, why_len)) != STORE_OK)
        return err;
    struct store_history_query fq = *q;
    fq.filter = filter;
    err = store_history_open(o->store, &fq, out);
    if (err != STORE_OK)
        snprintf(why, why_len, "%s",
                 err == STORE_EUNAVAIL ? "history is off (history_retention 0)"
                                       : store_err_text(err));
    return err;
}

int ops_export(struct ops *o, const struct caller *c, const char *after, size_t alen, size_t limit,
               store_visit_fn visit, void *arg, bool *more, char *why, size_t why_len)
{
    return ops_pget(o, c, "#", 1, after, alen, NULL, limit, visit, arg, more, why, why_len);
}

/* ---- writes ---- */

static int ops__submit(struct ops *o, struct ops_write *w, store_done_fn done, void *arg, char *why,
                       size_t why_len)
{
    int err = store_submit(o->store, &w->txn, done, arg);
    if (err != STORE_OK)
        envelope_failure(why, why_len, &w->txn, w->txn.ops != &w->one);
    return err;
}

/* A write of one op that failed its check: the store takes its entry. */
static int ops__drop(struct store_op *op, int err)
{
    store_entry_unref(op->entry);
    op->entry = NULL;
    return err;
}

int ops_set(struct ops *o, const struct caller *c, struct ops_write *w, const char *key,
            size_t klen, struct store_entry *e, int64_t if_rev, store_done_fn done, void *arg,
            char *why, size_t why_len)
{
    w->one = (struct store_op){
        .kind = STORE_OP_SET, .key = key, .klen = klen, .entry = e, .if_rev = if_rev};
    w->txn = (struct store_txn){.ops = &w->one, .n = 1};
    int err = ops__check_op(o, c, &w->one, why, why_len);
    if (err != STORE_OK)
        return ops__drop(&w->one, err);
    return ops__submit(o, w, done, arg, why, why_len);
}

int ops_delete(struct ops *o, const struct caller *c, struct ops_write *w, const char *pat,
               size_t plen, int64_t if_rev, bool must_exist, store_done_fn done, void *arg,
               char *why, size_t why_len)
{
    w->one = (struct store_op){.kind = STORE_OP_DELETE, .key = pat, .klen = plen, .if_rev = if_rev};
    w->txn = (struct store_txn){.ops = &w->one, .n = 1};
    int err = ops__check_op(o, c, &w->one, why, why_len);
    if (err != STORE_OK)
        return err;
    w->one.must_exist = must_exist && !w->one.pattern;
    return ops__submit(o, w, done, arg, why, why_len);
}

int ops_may_write(struct ops *o, const struct caller *c, const char *key, size_t klen, char *why,
                  size_t why_len)
{
    int err = ops__key(o, key, klen, why, why_len);
    if (err == STORE_OK && !ops__writes(c->principal, key, klen))
        err = ops__refuse(c, why, why_len, "write", key, klen);
    return err;
}

int ops_check(struct ops *o, const struct caller *c, struct store_op *op, char *why, size_t why_len)
{
    return ops__check_op(o, c, op, why, why_len);
}

int ops_batch(struct ops *o, const struct caller *c, struct ops_write *w, struct store_op *ops,
              size_t n, store_done_fn done, void *arg, char *why, size_t why_len)
{
    char one[400];
    w->txn = (struct store_txn){.ops = ops, .n = n};
    for (size_t i = 0; i < n; i++) { /* invariant 3 */
        int err = ops__check_op(o, c, &ops[i], one, sizeof one);
        if (err != STORE_OK) {
            snprintf(why, why_len, "ops[%zu]: %s", i, one);
            for (size_t k = 0; k < n; k++)
                ops__drop(&ops[k], err);
            return err;
        }
    }
    return ops__submit(o, w, done, arg, why, why_len);
}

int ops_publish(struct ops *o, const struct caller *c, const char *key, size_t klen,
                struct store_entry *e, char *why, size_t why_len)
{
    int err = ops__key(o, key, klen, why, why_len);
    if (err == STORE_OK && !ops__writes(c->principal, key, klen))
        err = ops__refuse(c, why, why_len, "write", key, klen);
    if (err != STORE_OK) {
        store_entry_unref(e);
        return err;
    }
    err = store_publish(o->store, key, klen, e);
    if (err != STORE_OK)
        snprintf(why, why_len, "%s", store_err_text(err));
    return err;
}

/* Each line of an import is checked as an op of a batch by its caller. */
struct ops__importer {
    struct ops *ops;
    struct caller caller;
};

static int ops__import_check(void *arg, struct store_op *op, char *why, size_t why_len)
{
    struct ops__importer *im = arg;
    return ops__check_op(im->ops, &im->caller, op, why, why_len);
}

int ops_import(struct ops *o, const struct caller *c, struct import **out, char *why,
               size_t why_len)
{
    struct ops__importer *im = malloc(sizeof *im);
    if (im == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    im->ops = o;
    im->caller = *c;
    int err = import_new(o->store, o->cfg->data_dir, c->transport, ops__import_check, im, out);
    if (err != STORE_OK)
        snprintf(why, why_len, "cannot start an import: no spool file in data_dir");
    return err;
}

/* ---- live ---- */

int ops_subscribe(struct ops *o, const struct caller *c, const struct feed_request *rq,
                  const struct feed_sink *sink, void *sink_arg, struct feed **out, char *why,
                  size_t why_len)
{
    bool wild;
    struct store_filter filter;
    if (rq->since >= 0 && rq->from_start) {
        snprintf(why, why_len,
                 "since and start both say where the replay begins (after a rev, from a time): "
                 "give one of them");
        return STORE_EBADREQ;
    }
    int err = ops_pattern(o, c, rq->pattern, rq->plen, &wild, why, why_len);
    if (err != STORE_OK ||
        (err = ops__read_pattern(c, rq->pattern, rq->plen, &filter, why, why_len)) != STORE_OK)
        return err;
    struct feed_request frq = *rq; /* its label filters go on apart from `filter` */
    frq.filter = filter.keep ? &filter : NULL;
    return feed_open(o->store, &frq, sink, sink_arg, out, why, why_len);
}

int ops_resubscribe(struct ops *o, const struct caller *c, struct feed *f, const char *pat,
                    size_t plen, char *why, size_t why_len)
{
    struct store_filter filter;
    (void)o;
    int err = ops__read_pattern(c, pat, plen, &filter, why, why_len);
    if (err == STORE_OK)
        feed_refilter(f, filter.keep ? &filter : NULL);
    return err;
}

void ops_unsubscribe(struct ops *o, struct feed *f)
{
    (void)o;
    feed_close(f);
}

/* ---- tokens (admin) ---- */

static int ops__need_admin(const struct caller *c, char *why, size_t why_len)
{
    return ops__admin(c->principal) ? STORE_OK
                                    : ops__refuse(c, why, why_len, "manage", "tokens", 6);
}

int ops_token_add(struct ops *o, const struct caller *c, const char *name, char *const *read,
                  size_t nread, char *const *write, size_t nwrite, bool admin, int64_t expires,
                  char secret[64], char *why, size_t why_len)
{
    int err = ops__need_admin(c, why, why_len);
    if (err != STORE_OK)
        return err;
    err = auth_token_add(o->auth, o->store, name, read, nread, write, nwrite, admin, expires,
                         secret, why, why_len);
    if (err == STORE_OK)
        log_info("auth: token %s created by %s", name, c->principal->name);
    return err;
}

int ops_token_remove(struct ops *o, const struct caller *c, const char *name, char *why,
                     size_t why_len)
{
    int err = ops__need_admin(c, why, why_len);
    if (err != STORE_OK)
        return err;
    if ((err = auth_token_remove(o->auth, o->store, name)) == STORE_ENOTFOUND)
        snprintf(why, why_len, "no token is named %s", name);
    else if (err != STORE_OK)
        snprintf(why, why_len, "the token cannot be removed from the database");
    else
        log_info("auth: token %s revoked by %s", name, c->principal->name);
    return err;
}

int ops_tokens(struct ops *o, const struct caller *c,
               void (*fn)(void *arg, const struct auth_token_info *t), void *arg, char *why,
               size_t why_len)
{
    int err = ops__need_admin(c, why, why_len);
    if (err == STORE_OK)
        auth_tokens(o->auth, fn, arg);
    return err;
}

/* ---- sessions ---- */

void ops_session_open(struct ops *o, const struct caller *c, const char *client_id)
{
    unsigned n = atomic_fetch_add(&o->sessions, 1) + 1;
    log_debug("session %s: %s from %s", client_id, store_origin_name(c->transport), c->address);
    if (o->sys != NULL)
        sys_session_open(o->sys, client_id, store_origin_name(c->transport), c->address, n);
}

void ops_session_close(struct ops *o, const char *client_id)
{
    unsigned n = atomic_fetch_sub(&o->sessions, 1) - 1;
    if (o->sys != NULL)
        sys_session_close(o->sys, client_id, n);
}

unsigned ops_sessions(const struct ops *o)
{
    return atomic_load(&o->sessions);
}

uint64_t ops_next_id(struct ops *o)
{
    return atomic_fetch_add(&o->next_id, 1) + 1;
}
