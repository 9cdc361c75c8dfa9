/*
 * lifetime.c — what a session leaves behind and holds (API.md "Session
 * lifetime"): Wörterbuch's last will and grave goods, and locks.
 *
 * A will is kept in the store as the server's key $wills/<client_id>, a
 * JSON record {"origin", "last_will", "grave_goods"}, written (through the
 * committer, like any change) before the session hears `ok`. When the
 * session ends, one transaction sets the will (unless it said bye),
 * deletes the grave goods and deletes the record; a crash leaves the
 * record, and the next start applies it (will_recover). $-keys are no
 * one's but the server's and an admin's: no pattern of a client reads
 * them, and export leaves them out.
 *
 * Locks live in memory only, in a table of buckets by key; a lock and the
 * queue of sessions waiting for it are taken and released on the loop
 * thread, under `lock` all the same. $SYS/locks/<key> names the holder's
 * client_id while it holds the lock.
 * Invariants:
 *   1. a will's parts were checked as writes of the session's principal
 *      when declared; they are applied as they were declared;
 *   2. a holder's locks and waits are gone when lock_release_all returns,
 *      so no `granted` call names a session after it is freed;
 *   3. a waiter is granted a released lock in the order it asked.
 */
#include "lifetime.h"
#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "strict.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WILL_ITEMS_MAX 1000 /* entries of a will, patterns of the grave goods */
#define LOCK_BUCKETS   1024

/* ---- last will and grave goods ---- */

static const char *const will__item_fields[] = {"key",          "value",  "text", "base64",
                                                "content_type", "labels", NULL};

/* The transport named `name` (a record's origin). */
static enum store_origin will__origin(const char *name)
{
    for (int o = 0; o < STORE_ORIGIN_COUNT; o++)
        if (name != NULL && strcmp(store_origin_name((enum store_origin)o), name) == 0)
            return (enum store_origin)o;
    return STORE_ORIGIN_SYS;
}

/* One transaction of the ops of a will: what it owns until committed. */
struct will__txn {
    struct store_txn txn;
    struct store_op *ops;
    json_t *record; /* the keys of the ops point into it */
    char key[64];   /* $wills/<client_id> */
    void (*done)(void *arg, int err);
    void *arg;
};

static void will__txn_free(struct will__txn *t)
{
    for (size_t i = 0; t->ops != NULL && i < t->txn.n; i++)
        store_entry_unref(t->ops[i].entry);
    free(t->ops);
    json_decref(t->record);
    free(t);
}

static void will__done(void *arg, struct store_txn *txn)
{
    struct will__txn *t = arg;
    if (t->done != NULL)
        t->done(t->arg, txn->err);
    else if (txn->err != STORE_OK && txn->err != STORE_EUNAVAIL)
        log_warn("session: applying %s: %s", t->key, store_err_name(txn->err));
    will__txn_free(t);
}

/* The ops of `record` into t->ops: the will's sets (unless `bye`), the
 * grave goods' deletes, and the record's own delete. STORE_OK or an error
 * with a sentence naming the part. With a caller, each is checked as its
 * write (invariant 1). */
static int will__ops(struct store *s, will_check_fn check, void *check_arg, struct will__txn *t,
                     bool bye, char *why, size_t why_len)
{
    json_t *will = json_object_get(t->record, "last_will");
    json_t *graves = json_object_get(t->record, "grave_goods");
    enum store_origin origin =
        will__origin(json_string_value(json_object_get(t->record, "origin")));
    size_t nw = bye ? 0 : json_array_size(will), ng = json_array_size(graves), n = 0;
    char one[400];
    if ((t->ops = calloc(nw + ng + 1, sizeof *t->ops)) == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    t->txn.ops = t->ops;
    int err = STORE_OK;
    for (size_t i = 0; i < nw && err == STORE_OK; i++, n++) {
        json_t *item = json_array_get(will, i), *key = json_object_get(item, "key");
        const char *bad = strict_unknown(item, will__item_fields, NULL);
        struct store_op *op = &t->ops[n];
        *op = (struct store_op){.kind = STORE_OP_SET, .if_rev = STORE_ANY_REV};
        t->txn.n = n + 1;
        if (!json_is_object(item) || !json_is_string(key)) {
            snprintf(why, why_len,
                     "last_will[%zu]: an entry is {\"key\", \"value\" or \"text\" or "
                     "\"base64\", \"content_type\"?, \"labels\"?}",
                     i);
            err = STORE_EBADREQ;
        } else if (bad != NULL) {
            char quoted[96];
            strict_quote(quoted, sizeof quoted, bad);
            snprintf(why, why_len, "last_will[%zu]: unknown field '%s'", i, quoted);
            err = STORE_EBADREQ;
        } else {
            op->key = json_string_value(key);
            op->klen = json_string_length(key);
            err = envelope_entry(item, store_limits(s)->max_value_bytes, false, origin, &op->entry,
                                 one, sizeof one);
            if (err == STORE_OK && check != NULL)
                err = check(check_arg, op, one, sizeof one);
            if (err != STORE_OK)
                snprintf(why, why_len, "last_will[%zu]: %s", i, one);
        }
    }
    for (size_t i = 0; i < ng && err == STORE_OK; i++, n++) {
        json_t *pat = json_array_get(graves, i);
        struct store_op *op = &t->ops[n];
        *op = (struct store_op){.kind = STORE_OP_DELETE, .if_rev = STORE_ANY_REV, .origin = origin};
        t->txn.n = n + 1;
        if (!json_is_string(pat)) {
            snprintf(why, why_len, "grave_goods[%zu]: a key or a pattern, as a string", i);
            err = STORE_EBADREQ;
            break;
        }
        op->key = json_string_value(pat);
        op->klen = json_string_length(pat);
        bool wild = false;
        char what[256];
        if (check != NULL)
            err = check(check_arg, op, one, sizeof one);
        else if (store_pattern_check(op->key, op->klen, SIZE_MAX, &wild, what, sizeof what) ==
                 STORE_OK)
            op->pattern = wild;
        if (err != STORE_OK)
            snprintf(why, why_len, "grave_goods[%zu]: %s", i, one);
    }
    if (err == STORE_OK) {
        t->ops[n] = (struct store_op){.kind = STORE_OP_DELETE,
                                      .key = t->key,
                                      .klen = strlen(t->key),
                                      .sys = true,
                                      .origin = STORE_ORIGIN_SYS,
                                      .if_rev = STORE_ANY_REV};
        t->txn.n = n + 1;
    }
    return err;
}

/* The record of a will: {"origin", "last_will", "grave_goods"} (a part
 * NULL: an empty array). A new reference, or NULL. */
static json_t *will__record(enum store_origin origin, json_t *last_will, json_t *grave_goods)
{
    return json_pack("{s:s,s:o,s:o}", "origin", store_origin_name(origin), "last_will",
                     last_will ? json_incref(last_will) : json_array(), "grave_goods",
                     grave_goods ? json_incref(grave_goods) : json_array());
}

static struct will__txn *will__txn_new(const char *client_id, json_t *record)
{
    struct will__txn *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    snprintf(t->key, sizeof t->key, "$wills/%s", client_id);
    t->record = json_incref(record);
    return t;
}

static bool will__array(json_t *v, bool strings)
{
    size_t i;
    json_t *x;
    if (!json_is_array(v) || json_array_size(v) > WILL_ITEMS_MAX)
        return false;
    json_array_foreach(v, i, x)
    {
        if (strings ? !json_is_string(x) : !json_is_object(x))
            return false;
    }
    return true;
}

int will_declare(struct store *s, enum store_origin origin, const char *client_id, struct will *w,
                 json_t *last_will, json_t *grave_goods, will_check_fn check, void *check_arg,
                 void (*done)(void *arg, int err), void *arg, char *why, size_t why_len)
{
    if (last_will != NULL && !will__array(last_will, false)) {
        snprintf(why, why_len,
                 "last_will is an array of at most %d entries {\"key\", \"value\" "
                 "or \"text\" or \"base64\", ...}",
                 WILL_ITEMS_MAX);
        return STORE_EBADREQ;
    }
    if (grave_goods != NULL && !will__array(grave_goods, true)) {
        snprintf(why, why_len, "grave_goods is an array of at most %d keys or patterns",
                 WILL_ITEMS_MAX);
        return STORE_EBADREQ;
    }
    json_t *record = will__record(origin, last_will ? last_will : w->last_will,
                                  grave_goods ? grave_goods : w->grave_goods);
    struct will__txn *t = record ? will__txn_new(client_id, record) : NULL;
    json_decref(record); /* `t` holds it */
    if (t == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    /* Checked whole as the writes they will be (invariant 1). */
    int err = will__ops(s, check, check_arg, t, false, why, why_len);
    for (size_t i = 0; t->ops != NULL && i < t->txn.n; i++) {
        store_entry_unref(t->ops[i].entry);
        t->ops[i].entry = NULL;
    }
    free(t->ops);
    t->ops = NULL;
    if (err != STORE_OK) {
        will__txn_free(t);
        return err;
    }
    /* The record, as the server's key. */
    char *text = json_dumps(t->record, JSON_COMPACT);
    t->ops = calloc(1, sizeof *t->ops);
    t->done = done;
    t->arg = arg;
    err = text != NULL && t->ops != NULL ? store_entry_new(text, strlen(text), "application/json",
                                                           NULL, STORE_ORIGIN_SYS, &t->ops[0].entry)
                                         : STORE_EINTERNAL;
    free(text);
    if (err != STORE_OK) {
        snprintf(why, why_len, "out of memory");
        will__txn_free(t);
        return STORE_EINTERNAL;
    }
    t->ops[0].kind = STORE_OP_SET;
    t->ops[0].key = t->key;
    t->ops[0].klen = strlen(t->key);
    t->ops[0].if_rev = STORE_ANY_REV;
    t->txn = (struct store_txn){.ops = t->ops, .n = 1};
    /* Taken before the submit: `t` is the committer's from then on. */
    json_t *lw = json_object_get(t->record, "last_will");
    json_t *gg = json_object_get(t->record, "grave_goods");
    lw = json_array_size(lw) ? json_incref(lw) : NULL;
    gg = json_array_size(gg) ? json_incref(gg) : NULL;
    err = store_submit(s, &t->txn, will__done, t);
    if (err != STORE_OK) {
        snprintf(why, why_len, "%s", store_err_text(err));
        json_decref(lw);
        json_decref(gg);
        will__txn_free(t); /* no `done` follows a refused submit */
        return err;
    }
    will_clear(w);
    w->last_will = lw;
    w->grave_goods = gg;
    return STORE_OK;
}

/* Submits the ops of `record` for `client_id`; false when nothing was. */
static bool will__submit(struct store *s, const char *client_id, json_t *record, bool bye)
{
    char why[512];
    struct will__txn *t = will__txn_new(client_id, record);
    if (t == NULL)
        return false;
    int err = will__ops(s, NULL, NULL, t, bye, why, sizeof why);
    if (err == STORE_OK)
        err = store_submit(s, &t->txn, will__done, t);
    if (err != STORE_OK) { /* the record stays: the next start applies it */
        if (err != STORE_EUNAVAIL)
            log_warn("session: the will of %s cannot be applied: %s", client_id,
                     err == STORE_EBADREQ ? why : store_err_name(err));
        will__txn_free(t);
        return false;
    }
    return true;
}

void will_apply(struct store *s, enum store_origin origin, const char *client_id, struct will *w,
                bool bye)
{
    if (w->last_will == NULL && w->grave_goods == NULL)
        return;
    json_t *record = will__record(origin, w->last_will, w->grave_goods);
    if (record != NULL)
        will__submit(s, client_id, record, bye);
    json_decref(record);
}

struct will__found {
    char **ids;
    json_t **records;
    size_t n, cap;
};

static bool will__visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct will__found *f = arg;
    size_t vlen;
    const char *v = store_entry_value(e, &vlen);
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        char **ids = realloc(f->ids, cap * sizeof *ids);
        if (ids != NULL)
            f->ids = ids;
        json_t **records = realloc(f->records, cap * sizeof *records);
        if (records != NULL)
            f->records = records;
        if (ids == NULL || records == NULL)
            return true;
        f->cap = cap;
    }
    f->records[f->n] = json_loadb(v, vlen, 0, NULL);
    f->ids[f->n] = strndup(key + 7, klen - 7); /* after "$wills/" */
    if (f->records[f->n] != NULL && f->ids[f->n] != NULL)
        f->n++;
    else {
        json_decref(f->records[f->n]);
        free(f->ids[f->n]);
    }
    return true;
}

void will_recover(struct store *s)
{
    struct will__found f = {0};
    bool more = true;
    /* Read all first: the walk holds the tree's lock, a submit takes it. */
    store_pget(s, "$wills/+", 8, NULL, NULL, 0, SIZE_MAX, will__visit, &f, &more);
    for (size_t i = 0; i < f.n; i++) {
        if (will__submit(s, f.ids[i], f.records[i], false))
            log_info("session: applied the will of %s, left by the last run", f.ids[i]);
        json_decref(f.records[i]);
        free(f.ids[i]);
    }
    free(f.ids);
    free(f.records);
}

void will_clear(struct will *w)
{
    json_decref(w->last_will);
    json_decref(w->grave_goods);
    w->last_will = w->grave_goods = NULL;
}

/* ---- locks ---- */

struct lock_wait {
    struct lock_wait *next;
    void *holder;
    char client_id[32];
    char *key; /* for the answer */
    int64_t id, deadline_ms;
    lock_granted_fn granted;
};

static void lock__wait_free(struct lock_wait *w)
{
    free(w->key);
    free(w);
}

struct lock {
    struct lock *next; /* in its bucket */
    char *key;
    size_t klen;
    void *holder;
    struct lock_wait *waits, *last; /* invariant 3: first in, first granted */
};

struct locks {
    struct store *store;
    pthread_mutex_t m;
    struct lock *buckets[LOCK_BUCKETS];
    size_t nlocks, nwaits;
};

struct locks *locks_new(struct store *store)
{
    struct locks *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->store = store;
    pthread_mutex_init(&l->m, NULL);
    return l;
}

static void lock__free(struct lock *k)
{
    while (k->waits != NULL) {
        struct lock_wait *w = k->waits;
        k->waits = w->next;
        lock__wait_free(w);
    }
    free(k->key);
    free(k);
}

void locks_free(struct locks *l)
{
    if (l == NULL)
        return;
    for (size_t b = 0; b < LOCK_BUCKETS; b++)
        while (l->buckets[b] != NULL) {
            struct lock *k = l->buckets[b];
            l->buckets[b] = k->next;
            lock__free(k);
        }
    pthread_mutex_destroy(&l->m);
    free(l);
}

static size_t lock__bucket(const char *key, size_t klen)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < klen; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h % LOCK_BUCKETS;
}

static struct lock **lock__find(struct locks *l, const char *key, size_t klen)
{
    struct lock **p = &l->buckets[lock__bucket(key, klen)];
    while (*p != NULL && !((*p)->klen == klen && memcmp((*p)->key, key, klen) == 0))
        p = &(*p)->next;
    return p;
}

struct lock__sys {
    struct store_txn txn;
    struct store_op op;
    char key[];
};

static void lock__sys_done(void *arg, struct store_txn *t)
{
    (void)t;
    free(arg);
}

/* $SYS/locks/<key>: the holder's client_id, or gone (NULL). */
static void lock__mirror(struct locks *l, const char *key, size_t klen, const char *client_id)
{
    size_t len = 11 + klen;
    if (len > store_limits(l->store)->max_key_bytes)
        return; /* too long a key to name under $SYS/locks/ */
    struct lock__sys *w = calloc(1, sizeof *w + len + 1);
    if (w == NULL)
        return;
    memcpy(w->key, "$SYS/locks/", 11);
    memcpy(w->key + 11, key, klen);
    w->op = (struct store_op){.key = w->key, .klen = len, .if_rev = STORE_ANY_REV};
    if (client_id != NULL) {
        w->op.kind = STORE_OP_SET;
        if (store_entry_new(client_id, strlen(client_id), "text/plain; charset=utf-8", NULL,
                            STORE_ORIGIN_SYS, &w->op.entry) != STORE_OK) {
            free(w);
            return;
        }
    } else {
        w->op.kind = STORE_OP_DELETE;
        w->op.sys = true;
        w->op.origin = STORE_ORIGIN_SYS;
    }
    w->txn = (struct store_txn){.ops = &w->op, .n = 1};
    if (store_submit(l->store, &w->txn, lock__sys_done, w) != STORE_OK)
        free(w);
}

int lock_take(struct locks *l, void *holder, const char *client_id, const char *key, size_t klen,
              int64_t wait_ms, int64_t id, lock_granted_fn granted, bool *waiting, char *why,
              size_t why_len)
{
    *waiting = false;
    pthread_mutex_lock(&l->m);
    struct lock **p = lock__find(l, key, klen), *k = *p;
    if (k == NULL) {
        if ((k = calloc(1, sizeof *k)) == NULL || (k->key = malloc(klen + 1)) == NULL) {
            free(k);
            pthread_mutex_unlock(&l->m);
            snprintf(why, why_len, "out of memory");
            return STORE_EINTERNAL;
        }
        memcpy(k->key, key, klen);
        k->key[klen] = '\0';
        k->klen = klen;
        k->holder = holder;
        *p = k;
        l->nlocks++;
        pthread_mutex_unlock(&l->m);
        lock__mirror(l, key, klen, client_id);
        return STORE_OK;
    }
    if (k->holder == holder) {
        pthread_mutex_unlock(&l->m);
        return STORE_OK; /* held already */
    }
    struct lock_wait *w = wait_ms > 0 ? calloc(1, sizeof *w) : NULL;
    if (w != NULL && (w->key = strdup(k->key)) == NULL) {
        free(w);
        w = NULL;
    }
    if (w == NULL) {
        pthread_mutex_unlock(&l->m);
        snprintf(why, why_len, "another session holds the lock on %.*s", (int)klen, key);
        return STORE_ELOCKED;
    }
    w->holder = holder;
    snprintf(w->client_id, sizeof w->client_id, "%s", client_id);
    w->id = id;
    w->deadline_ms = mono_ms() + wait_ms;
    w->granted = granted;
    if (k->last != NULL)
        k->last->next = w;
    else
        k->waits = w;
    k->last = w;
    l->nwaits++;
    pthread_mutex_unlock(&l->m);
    *waiting = true;
    return STORE_OK;
}

/* Hands the lock `*p` to its first waiter, or frees it; the caller holds
 * l->m. The granted waiter goes to `*granted` for the caller to tell. */
static void lock__pass(struct locks *l, struct lock **p, struct lock_wait **granted)
{
    struct lock *k = *p;
    struct lock_wait *w = k->waits;
    *granted = w;
    if (w == NULL) {
        *p = k->next;
        l->nlocks--;
        lock__mirror(l, k->key, k->klen, NULL);
        lock__free(k);
        return;
    }
    k->waits = w->next;
    if (k->waits == NULL)
        k->last = NULL;
    l->nwaits--;
    k->holder = w->holder;
    lock__mirror(l, k->key, k->klen, w->client_id);
}

static void lock__tell(struct lock_wait *w, int err)
{
    if (w != NULL) {
        w->granted(w->holder, w->id, err, w->key);
        lock__wait_free(w);
    }
}

int lock_release(struct locks *l, void *holder, const char *key, size_t klen)
{
    struct lock_wait *granted = NULL;
    pthread_mutex_lock(&l->m);
    struct lock **p = lock__find(l, key, klen);
    if (*p == NULL || (*p)->holder != holder) {
        pthread_mutex_unlock(&l->m);
        return STORE_ENOTFOUND;
    }
    lock__pass(l, p, &granted);
    pthread_mutex_unlock(&l->m);
    lock__tell(granted, STORE_OK);
    return STORE_OK;
}

void lock_release_all(struct locks *l, void *holder)
{
    pthread_mutex_lock(&l->m);
    bool none = l->nlocks == 0; /* the common end of a session: nothing to look through */
    pthread_mutex_unlock(&l->m);
    for (size_t b = 0; b < LOCK_BUCKETS && !none; b++) {
        pthread_mutex_lock(&l->m);
        struct lock **p = &l->buckets[b];
        while (*p != NULL) {
            struct lock *k = *p;
            /* Its waits first (invariant 2). */
            for (struct lock_wait **wp = &k->waits; *wp != NULL;) {
                struct lock_wait *w = *wp;
                if (w->holder != holder) {
                    k->last = w;
                    wp = &w->next;
                    continue;
                }
                *wp = w->next;
                l->nwaits--;
                lock__wait_free(w);
            }
            if (k->waits == NULL)
                k->last = NULL;
            if (k->holder != holder) {
                p = &k->next;
                continue;
            }
            struct lock_wait *granted;
            lock__pass(l, p, &granted);
            if (granted != NULL)
                p = &(*p)->next; /* still there, with its new holder */
            pthread_mutex_unlock(&l->m);
            lock__tell(granted, STORE_OK);
            pthread_mutex_lock(&l->m);
        }
        pthread_mutex_unlock(&l->m);
    }
}

int64_t lock_timers(struct locks *l)
{
    int64_t now = mono_ms(), next = -1;
    struct lock_wait *late = NULL;
    pthread_mutex_lock(&l->m);
    for (size_t b = 0; b < LOCK_BUCKETS && l->nwaits > 0; b++)
        for (struct lock *k = l->buckets[b]; k != NULL; k = k->next) {
            k->last = NULL;
            for (struct lock_wait **wp = &k->waits; *wp != NULL;) {
                struct lock_wait *w = *wp;
                if (w->deadline_ms > now) {
                    if (next < 0 || w->deadline_ms - now < next)
                        next = w->deadline_ms - now;
                    k->last = w;
                    wp = &w->next;
                    continue;
                }
                *wp = w->next; /* its time is up */
                l->nwaits--;
                w->next = late;
                late = w;
            }
        }
    pthread_mutex_unlock(&l->m);
    while (late != NULL) {
        struct lock_wait *w = late;
        late = w->next;
        w->granted(w->holder, w->id, STORE_ELOCKED, w->key);
        lock__wait_free(w);
    }
    return next;
}
