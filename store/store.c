/*
 * store.c — the store: the tree under a read-write lock, revisions, and the
 * commit pipeline (group commit on one committer thread).
 *
 * The write path (ARCHITECTURE.md):
 *   store_submit (any thread, tree write-locked): check every op, assign
 *     revs, change the tree, append a `struct commit` to the queue;
 *   committer: takes the whole queue, writes it in one SQLite transaction,
 *     then marks it settled and calls each `done`.
 * Invariants:
 *   1. `rev` (the last assigned) only grows, and only under the write lock;
 *      commits sit in the queue in rev order because they are queued under it;
 *   2. settled <= rev; every change up to `settled` is committed or undone;
 *   3. a reader answers only from state whose changes are settled: it waits
 *      for `settled` to reach the `rev` it saw (store__await), so no client
 *      sees a change that a crash could take back;
 *   4. when a commit fails, every queued change after it is undone too, in
 *      reverse order, under the write lock: the tree returns to the last
 *      committed state and every writer of those changes gets the error.
 */
#include "store_int.h"
#include "clock.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct store {
    struct store_config cfg;
    char *data_dir;
    struct db *db;
    struct tree *tree;
    pthread_rwlock_t lock; /* the tree and `rev` */
    int64_t rev;

    pthread_mutex_t qlock; /* the queue, `stop`, `busy`, `acks` */
    pthread_cond_t qcond;
    struct commit *head, *tail;
    bool stop, busy, acks; /* acks: outbox rows wait to be deleted */
    pthread_t committer;
    bool started;

    pthread_mutex_t slock; /* waits on `settled` */
    pthread_cond_t scond;
    _Atomic int64_t settled;
    _Atomic int64_t committed;
    _Atomic bool draining;
    _Atomic bool writable;

    pthread_mutex_t sublock; /* the subscription tree; held while delivering */
    struct subnode *subs;

    struct outbox *outbox;
    struct expiry *expiry; /* keys that expire */

    struct history *history; /* NULL: history is off */
    struct blobs *blobs;     /* NULL: no blob files (blob_file_bytes 0) */
    char **hist_keys;        /* owned copies of cfg.history_keys, or "#" */
    size_t nhist_keys;
    int64_t last_ts; /* the ts of the last change; under `lock` */

    _Atomic uint64_t commits, changes, commit_failures, publishes, nsubs, events;
};

static void store__settle(struct store *s, int64_t rev)
{
    assert(rev >= 0);
    pthread_mutex_lock(&s->slock);
    if (rev > atomic_load(&s->settled))
        atomic_store(&s->settled, rev);
    pthread_cond_broadcast(&s->scond);
    pthread_mutex_unlock(&s->slock);
}

/* Waits until every change up to `rev` is settled (invariant 3). */
static void store__await(struct store *s, int64_t rev)
{
    if (atomic_load(&s->settled) >= rev)
        return;
    pthread_mutex_lock(&s->slock);
    while (atomic_load(&s->settled) < rev)
        pthread_cond_wait(&s->scond, &s->slock);
    pthread_mutex_unlock(&s->slock);
}

static void commit__free(struct commit *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->changes[i].key);
        free(c->changes[i].topic);
        store_entry_unref(c->changes[i].entry);
        store_entry_unref(c->changes[i].old);
    }
    free(c->changes);
    free(c);
}

/* Puts back what the changes of `c` replaced, last change first. */
static void commit__undo(struct store *s, struct commit *c)
{
    for (size_t i = c->n; i-- > 0;) {
        struct change *ch = &c->changes[i];
        struct store_entry *cur = NULL;
        if (ch->transient)
            continue;
        if (ch->old != NULL) {
            store_entry_ref(ch->old);
            if (tree__set(s->tree, ch->key, ch->klen, ch->old, &cur) != STORE_OK) {
                store_entry_unref(ch->old);
                log_error("store: out of memory undoing the change of %.*s", (int)ch->klen,
                          ch->key);
            }
        } else
            cur = tree__del(s->tree, ch->key, ch->klen);
        store_entry_unref(cur);
    }
}

/* Hands the changes of `list` to the subscribers, in rev order; after a
 * failed commit only the publishes, as the rest was undone. */
static void store__deliver(struct store *s, const struct commit *list, bool transient_only)
{
    pthread_mutex_lock(&s->sublock);
    for (const struct commit *c = list; c != NULL; c = c->next) {
        for (size_t i = 0; i < c->n; i++) {
            const struct change *ch = &c->changes[i];
            if (transient_only && !ch->transient)
                continue;
            struct store_event ev = {.key = ch->key,
                                     .klen = ch->klen,
                                     .entry = ch->entry,
                                     .old = ch->old,
                                     .rev = ch->transient ? c->last_rev : ch->rev,
                                     .ts = ch->ts,
                                     .transient = ch->transient};
            subs__dispatch(s->subs, &ev);
            free(ev.cache);
            atomic_fetch_add_explicit(&s->events, 1, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&s->sublock);
}

static void store__finish(struct commit *list, int err)
{
    while (list != NULL) {
        struct commit *next = list->next;
        struct store_txn *t = list->txn;
        if (t == NULL) { /* a publish */
            commit__free(list);
            list = next;
            continue;
        }
        if (err != STORE_OK) {
            t->err = err;
            t->fail = 0;
            for (size_t i = 0; i < t->n; i++) {
                t->ops[i].err = err;
                store_entry_unref(t->ops[i].got);
                t->ops[i].got = NULL;
            }
        }
        list->done(list->arg, t);
        commit__free(list);
        list = next;
    }
}

static bool store__history_wanted(const struct store *s, const char *key, size_t klen)
{
    for (size_t i = 0; i < s->nhist_keys; i++)
        if (store_pattern_match(s->hist_keys[i], strlen(s->hist_keys[i]), key, klen))
            return true;
    return false;
}

/* Names the outbox topic of each change of `list` that goes out, and marks
 * those history keeps. */
static void store__prepare(struct store *s, struct commit *list)
{
    const struct store_outbox_hooks *h = &s->cfg.outbox;
    for (struct commit *c = list; c != NULL; c = c->next) {
        for (size_t i = 0; i < c->n; i++) {
            struct change *ch = &c->changes[i];
            if (h->topic != NULL)
                ch->topic = h->topic(h->arg, ch->key, ch->klen,
                                     ch->entry ? store_entry_origin(ch->entry) : ch->origin);
            ch->history = s->history != NULL && !ch->transient && !ch->memory_only &&
                          store__history_wanted(s, ch->key, ch->klen);
        }
    }
}

/* After the commit: the outbox items of `list`, and a word to the sender;
 * the transient messages go straight out. */
static void store__outbox_add(struct store *s, const struct commit *list)
{
    bool added = false;
    for (const struct commit *c = list; c != NULL; c = c->next) {
        for (size_t i = 0; i < c->n; i++) {
            const struct change *ch = &c->changes[i];
            if (ch->topic == NULL)
                continue;
            if (ch->transient) {
                s->cfg.outbox.publish(s->cfg.outbox.arg, ch->topic, ch->entry);
                continue;
            }
            if (outbox__put(s->outbox, ch->topic, ch->rev, ch->entry) != STORE_OK)
                log_error("store: out of memory: the change of %s goes out after a restart",
                          ch->topic);
            added = true;
        }
    }
    if (added)
        s->cfg.outbox.ready(s->cfg.outbox.arg);
}

/* Compaction moved the value of `key` (blob.c): its entry, if it still is
 * the one that maps the old place, is swapped for the same entry mapping
 * the copy. Not a change: no rev, no event. */
static void store__relocate(void *arg, const char *key, const struct blob_file *from, uint64_t off,
                            struct blob_file *to, uint64_t to_off)
{
    struct store *s = arg;
    struct store_entry *old = NULL;
    struct blob_file *f;
    uint64_t at;
    uint32_t crc;
    size_t klen = strlen(key);
    pthread_rwlock_wrlock(&s->lock);
    struct store_entry *e = tree__get(s->tree, key, klen);
    if (e != NULL && entry__blob_ref(e, &f, &at, &crc) && f == from && at == off) {
        struct store_entry *n = entry__moved(e, to, to_off);
        if (n != NULL && tree__set(s->tree, key, klen, n, &old) != STORE_OK)
            store_entry_unref(n);
    }
    pthread_rwlock_unlock(&s->lock);
    store_entry_unref(old);
}

/* Invariant 3 of blob.c: the blob files the rows of `list` reference are
 * held while they are written (`hold`), released after. */
static void store__hold_blobs(struct store *s, const struct commit *list, bool hold)
{
    if (s->blobs == NULL)
        return;
    for (const struct commit *c = list; c != NULL; c = c->next)
        for (size_t i = 0; i < c->n; i++) {
            struct blob_file *f;
            uint64_t off;
            uint32_t crc;
            const struct change *ch = &c->changes[i];
            if (ch->transient || ch->entry == NULL || !entry__blob_ref(ch->entry, &f, &off, &crc))
                continue;
            if (hold)
                blobs__hold(s->blobs, f);
            else
                blobs__release(s->blobs, f);
        }
}

static void *store__committer(void *arg)
{
    struct store *s = arg;

    for (;;) {
        pthread_mutex_lock(&s->qlock);
        while (s->head == NULL && !s->acks && !s->stop)
            pthread_cond_wait(&s->qcond, &s->qlock);
        if (s->head == NULL && !s->acks) {
            pthread_mutex_unlock(&s->qlock);
            break;
        }
        struct commit *list = s->head, *last = s->tail;
        s->head = s->tail = NULL;
        s->acks = false;
        s->busy = true;
        pthread_mutex_unlock(&s->qlock);

        struct outbox_ack *acks;
        size_t nacks = outbox__take_acks(s->outbox, &acks), n = 0;
        for (struct commit *c = list; c != NULL; c = c->next)
            for (size_t i = 0; i < c->n; i++)
                n += !c->changes[i].transient;
        store__prepare(s, list);
        uint64_t hist_bytes = 0, hist_records = 0;
        store__hold_blobs(s, list, true);
        int err = s->blobs != NULL ? blobs__sync(s->blobs) : STORE_OK;
        if (err == STORE_OK && n + nacks > 0)
            err = db__write(s->db, list, acks, nacks, &hist_bytes, &hist_records);
        store__hold_blobs(s, list, false);
        if (err == STORE_OK && hist_records > 0)
            history__added(s->history, hist_bytes, hist_records);
        for (size_t i = 0; i < nacks; i++)
            free(acks[i].topic);
        free(acks);
        if (list == NULL) /* acknowledgements only; a failure leaves the rows */
            goto next;
        if (err == STORE_OK) {
            if (s->cfg.outbox.topic != NULL)
                store__outbox_add(s, list);
            if (n > 0) {
                atomic_store(&s->committed, last->last_rev);
                atomic_fetch_add(&s->commits, 1);
                atomic_fetch_add(&s->changes, n);
                atomic_store(&s->writable, true);
            }
            store__settle(s, last->last_rev);
            store__deliver(s, list, false);
        } else {
            /* Invariant 4: undo this list and everything queued after it. */
            atomic_fetch_add(&s->commit_failures, 1);
            atomic_store(&s->writable, false);
            pthread_rwlock_wrlock(&s->lock);
            pthread_mutex_lock(&s->qlock);
            last->next = s->head;
            s->head = s->tail = NULL;
            pthread_mutex_unlock(&s->qlock);
            struct commit *rev_list = NULL;
            /* Undo newest first: reverse the list, undo, reverse back. */
            for (struct commit *c = list, *next; c != NULL; c = next) {
                next = c->next;
                c->next = rev_list;
                rev_list = c;
            }
            list = NULL;
            for (struct commit *c = rev_list, *next; c != NULL; c = next) {
                next = c->next;
                commit__undo(s, c);
                c->next = list;
                list = c;
            }
            int64_t rev = s->rev;
            pthread_rwlock_unlock(&s->lock);
            store__settle(s, rev);
            store__deliver(s, list, true);
        }
        store__finish(list, err);
    next:
        pthread_mutex_lock(&s->qlock);
        s->busy = false;
        pthread_cond_broadcast(&s->qcond);
        pthread_mutex_unlock(&s->qlock);
    }
    return NULL;
}

/* The expiry thread's deletes (expiry.c takes them through this, and
 * calls nothing of the store itself). */
static int store__apply_expired(void *arg, struct store_txn *t)
{
    int err = store_apply(arg, t);
    store_txn_clear(t);
    return err;
}

/* Called by db.c's loader thread for each row, in order, while store_open
 * waits in db__load: nothing else touches the tree or the expiry heap yet. */
static int store__load_one(void *arg, const char *key, size_t klen, struct store_entry *e)
{
    struct store *s = arg;
    struct store_entry *old;
    if (store_entry_ts(e) > s->last_ts)
        s->last_ts = store_entry_ts(e);
    int64_t expires = store_entry_expires(e);
    int err = tree__set(s->tree, key, klen, e, &old);
    if (err != STORE_OK)
        store_entry_unref(e);
    store_entry_unref(old);
    if (err == STORE_OK && expires > 0) /* expired already: at once */
        err = expiry__push(s->expiry, key, klen, expires);
    return err;
}

/* History's patterns, the pruner, and the floor: when the patterns changed
 * since the last run (or history was off), history is complete only from
 * now on. */
static int store__open_history(struct store *s, const struct store_config *cfg, char *why,
                               size_t why_len)
{
    size_t n = cfg->nhistory_keys ? cfg->nhistory_keys : 1, len = 0;
    if ((s->hist_keys = calloc(n, sizeof *s->hist_keys)) == NULL)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        if ((s->hist_keys[i] = strdup(cfg->nhistory_keys ? cfg->history_keys[i] : "#")) == NULL)
            goto oom;
        s->nhist_keys++;
        len += strlen(s->hist_keys[i]) + 1;
    }
    char *joined = calloc(1, len + 1), *old = db__meta_text(s->db, "history_keys");
    if (joined == NULL) {
        free(old);
        goto oom;
    }
    for (size_t i = 0; i < n && cfg->history_retention_us > 0; i++) {
        strcat(joined, s->hist_keys[i]);
        strcat(joined, "\n");
    }
    int err = STORE_OK;
    /* New keys: history may lack changes of theirs up to now, if there were
     * any (rev_first: none yet, on a new database). */
    if (old != NULL && strcmp(old, joined) != 0 && db__meta(s->db, "history_floor") < s->rev &&
        s->rev > db__meta(s->db, "rev_first"))
        err = db__set_meta(s->db, "history_floor", NULL, s->rev);
    /* Written only when changed: a start on a full disk still serves. */
    if (err == STORE_OK && (old == NULL || strcmp(old, joined) != 0))
        err = db__set_meta(s->db, "history_keys", joined, 0);
    free(joined);
    free(old);
    if (err != STORE_OK) {
        snprintf(why, why_len, "cannot record the history settings in %s", db__path(s->db));
        return err;
    }
    if (cfg->history_retention_us <= 0)
        return STORE_OK;
    return history__open(db__path(s->db), s->blobs, cfg->history_retention_us,
                         cfg->history_max_bytes, &s->history, why, why_len);
oom:
    snprintf(why, why_len, "out of memory");
    return STORE_EINTERNAL;
}

int store_open(const struct store_config *cfg, struct store **out, char *why, size_t why_len)
{
    struct store *s = calloc(1, sizeof *s);
    int err = STORE_EINTERNAL;
    int64_t rev = 0;

    *out = NULL;
    if (s == NULL || (s->data_dir = strdup(cfg->data_dir)) == NULL ||
        (s->tree = tree__new()) == NULL) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    s->cfg = *cfg;
    s->cfg.data_dir = s->data_dir;
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->qlock, NULL);
    pthread_cond_init(&s->qcond, NULL);
    pthread_mutex_init(&s->slock, NULL);
    pthread_cond_init(&s->scond, NULL);
    pthread_mutex_init(&s->sublock, NULL);
    if ((s->subs = subs__new()) == NULL || (s->outbox = outbox__new()) == NULL ||
        (s->expiry = expiry__new(store__apply_expired, s)) == NULL) {
        snprintf(why, why_len, "out of memory");
        err = STORE_EINTERNAL;
        goto fail;
    }
    if ((err = db__open(cfg->data_dir, cfg->durability, cfg->max_db_bytes, &s->db, why, why_len)) !=
        STORE_OK)
        goto fail;
    if (cfg->blob_file_bytes > 0 &&
        (err = blobs__open(cfg->data_dir, db__path(s->db), cfg->blob_file_bytes, cfg->max_db_bytes,
                           cfg->durability == STORE_DURABLE_FSYNC, &s->blobs, why, why_len)) !=
            STORE_OK)
        goto fail;
    db__set_blobs(s->db, s->blobs);
    int64_t t0 = now_us();
    if ((err = db__load(s->db, store__load_one, s, &rev, why, why_len)) != STORE_OK ||
        (err = db__load_outbox(s->db, s->outbox, why, why_len)) != STORE_OK ||
        (s->blobs != NULL &&
         (err = blobs__trim(s->blobs, store__relocate, s, why, why_len)) != STORE_OK))
        goto fail;
    int64_t load_ms = (now_us() - t0) / 1000;
    s->rev = rev;
    if ((err = store__open_history(s, cfg, why, why_len)) != STORE_OK)
        goto fail;
    atomic_store(&s->settled, rev);
    atomic_store(&s->committed, rev);
    atomic_store(&s->writable, true);
    if (pthread_create(&s->committer, NULL, store__committer, s) != 0) {
        snprintf(why, why_len, "cannot start the committer thread");
        err = STORE_EINTERNAL;
        goto fail;
    }
    s->started = true;
    if (expiry__start(s->expiry) != STORE_OK) {
        snprintf(why, why_len, "cannot start the expiry thread");
        err = STORE_EINTERNAL;
        goto fail;
    }
    log_info("store: %s loaded in %lld ms: %llu keys, rev %lld, schema %d", db__path(s->db),
             (long long)load_ms, (unsigned long long)tree__count(s->tree), (long long)rev,
             db__schema_version(s->db));
    *out = s;
    return STORE_OK;
fail:
    store_close(s);
    return err;
}

void store_drain(struct store *s)
{
    atomic_store(&s->draining, true);
    /* A submit that took the lock before `draining` was set is queued once
     * the lock is ours; the queue then only shrinks. */
    pthread_rwlock_wrlock(&s->lock);
    pthread_rwlock_unlock(&s->lock);
    pthread_mutex_lock(&s->qlock);
    while ((s->head != NULL || s->busy) && s->started)
        pthread_cond_wait(&s->qcond, &s->qlock);
    pthread_mutex_unlock(&s->qlock);
}

void store_close(struct store *s)
{
    if (s == NULL)
        return;
    expiry__stop(s->expiry); /* it writes: before the drain */
    if (s->started) {
        store_drain(s);
        pthread_mutex_lock(&s->qlock);
        s->stop = true;
        pthread_cond_broadcast(&s->qcond);
        pthread_mutex_unlock(&s->qlock);
        pthread_join(s->committer, NULL);
        log_info("store: closed at rev %lld", (long long)atomic_load(&s->committed));
    }
    history__close(s->history);
    db__close(s->db);
    tree__free(s->tree);
    blobs__close(s->blobs); /* after the entries that map its files */
    for (size_t i = 0; i < s->nhist_keys; i++)
        free(s->hist_keys[i]);
    free(s->hist_keys);
    if (s->data_dir != NULL) {
        pthread_rwlock_destroy(&s->lock);
        pthread_mutex_destroy(&s->qlock);
        pthread_cond_destroy(&s->qcond);
        pthread_mutex_destroy(&s->slock);
        pthread_cond_destroy(&s->scond);
        pthread_mutex_destroy(&s->sublock);
    }
    subs__free(s->subs);
    outbox__free(s->outbox);
    expiry__free(s->expiry);
    free(s->data_dir);
    free(s);
}

const char *store__db_path(const struct store *s)
{
    return db__path(s->db);
}

const struct store_limits *store_limits(const struct store *s)
{
    return &s->cfg.limits;
}

int store_get(struct store *s, const char *key, size_t klen, struct store_entry **out)
{
    pthread_rwlock_rdlock(&s->lock);
    struct store_entry *e = tree__get(s->tree, key, klen);
    if (e != NULL)
        store_entry_ref(e);
    int64_t seen = s->rev;
    pthread_rwlock_unlock(&s->lock);
    store__await(s, seen);
    *out = e;
    return e ? STORE_OK : STORE_ENOTFOUND;
}

int store_pget(struct store *s, const char *pat, size_t plen, const struct store_filter *filter,
               const char *after, size_t alen, size_t limit, store_visit_fn visit, void *arg,
               bool *more)
{
    /* Wait first, so the answer holds nothing unsettled but what arrives
     * during the walk; then wait for that too before the caller answers. */
    pthread_rwlock_rdlock(&s->lock);
    int64_t seen = s->rev;
    pthread_rwlock_unlock(&s->lock);
    store__await(s, seen);
    pthread_rwlock_rdlock(&s->lock);
    tree__walk(s->tree, pat, plen, filter, after, alen, limit, visit, arg, more);
    seen = s->rev;
    pthread_rwlock_unlock(&s->lock);
    store__await(s, seen);
    return STORE_OK;
}

int store_ls(struct store *s, bool root, const char *key, size_t klen, store_child_fn child,
             void *arg, int64_t *rev)
{
    pthread_rwlock_rdlock(&s->lock);
    int64_t seen = s->rev;
    pthread_rwlock_unlock(&s->lock);
    store__await(s, seen);
    pthread_rwlock_rdlock(&s->lock);
    int err = tree__ls(s->tree, root, key, klen, child, arg);
    seen = s->rev;
    pthread_rwlock_unlock(&s->lock);
    store__await(s, seen);
    if (rev != NULL)
        *rev = seen;
    return err;
}

/* ---- transactions ---- */

static struct change *commit__add(struct commit *c, const char *key, size_t klen)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        struct change *v = realloc(c->changes, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        c->changes = v;
        c->cap = cap;
    }
    struct change *ch = &c->changes[c->n];
    memset(ch, 0, sizeof *ch);
    if ((ch->key = malloc(klen + 1)) == NULL)
        return NULL;
    memcpy(ch->key, key, klen);
    ch->key[klen] = '\0';
    ch->klen = klen;
    c->n++;
    return ch;
}

/* Appends `c` to the commit queue; the caller holds the write lock, so the
 * queue stays in rev order (invariant 1). */
static void store__enqueue(struct store *s, struct commit *c)
{
    pthread_mutex_lock(&s->qlock);
    assert(s->tail == NULL || s->tail->last_rev <= c->last_rev); /* invariant 1 */
    if (s->tail)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    pthread_cond_signal(&s->qcond);
    pthread_mutex_unlock(&s->qlock);
}

static int store__check_rev(const struct store_entry *cur, int64_t if_rev)
{
    if (if_rev == STORE_ANY_REV)
        return STORE_OK;
    if (if_rev == 0)
        return cur == NULL ? STORE_OK : STORE_EREV;
    return cur != NULL && store_entry_rev(cur) == if_rev ? STORE_OK : STORE_EREV;
}

/* Whether two entries expire alike: both never, or within the second that
 * MQTT's message expiry interval counts in (so the echo of a retained
 * message of ours, its remaining seconds rounded, is the same). */
static bool store__same_expiry(const struct store_entry *a, const struct store_entry *b)
{
    int64_t x = store_entry_expires(a), y = store_entry_expires(b);
    return (x == 0) == (y == 0) && (x > y ? x - y : y - x) <= 1000000;
}

static int store__apply_set(struct store *s, struct commit *c, struct store_op *op, int64_t ts)
{
    struct store_entry *cur = tree__get(s->tree, op->key, op->klen);
    int err = store__check_rev(cur, op->if_rev);
    if (err != STORE_OK)
        return err;
    if (store_key_reserved(op->key, op->klen) && store_entry_origin(op->entry) != STORE_ORIGIN_SYS)
        return STORE_EREADONLY;
    if (op->if_changed && cur != NULL && store_entry_same(cur, op->entry) &&
        store__same_expiry(cur, op->entry)) {
        const char *a = store_entry_labels(cur), *b = store_entry_labels(op->entry);
        if (a == b || (a != NULL && b != NULL && strcmp(a, b) == 0)) {
            store_entry_unref(op->entry);
            op->entry = NULL;
            op->rev = 0;
            return STORE_OK;
        }
    }
    int64_t expires = store_entry_expires(op->entry);
    if (expires > 0 && expiry__push(s->expiry, op->key, op->klen, expires) != STORE_OK)
        return STORE_EINTERNAL; /* an undone set leaves a harmless item (if_expired) */
    struct change *ch = commit__add(c, op->key, op->klen);
    if (ch == NULL)
        return STORE_EINTERNAL;
    ch->rev = ++s->rev;
    ch->ts = ts;
    ch->memory_only = op->memory_only;
    entry__stamp(op->entry, ch->rev, ts);
    store_entry_ref(op->entry);
    if (tree__set(s->tree, op->key, op->klen, op->entry, &ch->old) != STORE_OK) {
        store_entry_unref(op->entry);
        s->rev--;
        free(ch->key);
        c->n--;
        return STORE_EINTERNAL;
    }
    ch->entry = op->entry; /* the op's reference moves to the change */
    op->entry = NULL;
    op->rev = ch->rev;
    op->ts = ts;
    op->created = ch->old == NULL;
    return STORE_OK;
}

static int store__delete_one(struct store *s, struct commit *c, const char *key, size_t klen,
                             int64_t ts, struct store_op *op)
{
    struct change *ch = commit__add(c, key, klen);
    if (ch == NULL)
        return STORE_EINTERNAL;
    ch->origin = op->origin;
    ch->memory_only = op->memory_only;
    ch->rev = op->rev = ++s->rev;
    ch->ts = ts;
    ch->old = tree__del(s->tree, key, klen);
    return STORE_OK;
}

static bool store__snap_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct store_snapshot *snap = arg;
    store_entry_ref((struct store_entry *)e);
    if (snapshot__add(snap, key, klen, (struct store_entry *)e, store_entry_rev(e),
                      store_entry_ts(e)) != STORE_OK)
        snap->failed = true;
    return !snap->failed;
}

static int store__apply_delete(struct store *s, struct commit *c, struct store_op *op, int64_t ts)
{
    if (store_key_reserved(op->key, op->klen) && !op->sys)
        return STORE_EREADONLY; /* whether or not anything matches */
    if (!op->pattern) {
        struct store_entry *cur = tree__get(s->tree, op->key, op->klen);
        int err = store__check_rev(cur, op->if_rev);
        if (err != STORE_OK)
            return err;
        if (cur == NULL)
            return op->must_exist ? STORE_ENOTFOUND : STORE_OK;
        if (op->if_expired && (store_entry_expires(cur) == 0 || store_entry_expires(cur) > ts))
            return STORE_OK; /* set again since, without a ttl or with a later one */
        op->deleted = 1;
        return store__delete_one(s, c, op->key, op->klen, ts, op);
    }
    /* A wildcard never matches a $-key when it comes first: the walk skips
     * them, so no $-key is deleted here. */
    struct store_snapshot k = {0};
    bool more;
    int err = STORE_OK;
    tree__walk(s->tree, op->key, op->klen, NULL, NULL, 0, SIZE_MAX, store__snap_visit, &k, &more);
    if (k.failed) /* out of memory */
        err = STORE_EINTERNAL;
    for (size_t i = 0; i < k.n && err == STORE_OK; i++) {
        err = store__delete_one(s, c, k.keys[i], k.klens[i], ts, op);
        op->deleted += err == STORE_OK;
    }
    store_snapshot_free(&k);
    return err;
}

int store_submit(struct store *s, struct store_txn *t, store_done_fn done, void *arg)
{
    struct commit *c = calloc(1, sizeof *c);
    int err = STORE_OK;
    size_t i;

    t->err = STORE_OK;
    t->fail = 0;
    for (i = 0; i < t->n; i++) {
        t->ops[i].err = STORE_OK;
        t->ops[i].got = NULL;
        t->ops[i].deleted = 0;
        t->ops[i].created = false;
    }
    if (c == NULL) {
        err = STORE_EINTERNAL;
        goto out;
    }
    c->txn = t;
    c->done = done;
    c->arg = arg;
    /* Large values go to a blob file first, outside the lock: the commit
     * that references them comes after their bytes (blob.c). */
    for (i = 0; i < t->n && err == STORE_OK; i++)
        if (t->ops[i].kind == STORE_OP_SET && t->ops[i].entry != NULL)
            err = t->ops[i].err = entry__to_blob(s->blobs, s->cfg.blob_min_bytes, &t->ops[i].entry);
    if (err != STORE_OK) {
        t->fail = i - 1;
        goto out;
    }
    pthread_rwlock_wrlock(&s->lock);
    if (atomic_load(&s->draining)) {
        pthread_rwlock_unlock(&s->lock);
        err = STORE_EUNAVAIL;
        goto out;
    }
    /* Invariant of history.c: ts only grows with rev. */
    int64_t ts = now_us(), rev0 = s->rev;
    if (ts < s->last_ts)
        ts = s->last_ts;
    s->last_ts = ts;
    for (i = 0; i < t->n && err == STORE_OK; i++) {
        struct store_op *op = &t->ops[i];
        switch (op->kind) {
        case STORE_OP_SET:
            err = store__apply_set(s, c, op, ts);
            break;
        case STORE_OP_DELETE:
            err = store__apply_delete(s, c, op, ts);
            break;
        case STORE_OP_GET:
            op->got = tree__get(s->tree, op->key, op->klen);
            if (op->got != NULL)
                store_entry_ref(op->got);
            break;
        }
        if (err != STORE_OK)
            op->err = err;
    }
    if (err != STORE_OK) {
        /* All or nothing: nobody saw these revs, so they are given back. */
        commit__undo(s, c);
        s->rev = rev0;
        pthread_rwlock_unlock(&s->lock);
        t->fail = i - 1;
        goto out;
    }
    c->last_rev = s->rev;
    store__enqueue(s, c);
    pthread_rwlock_unlock(&s->lock);
    return STORE_OK;
out:
    for (i = 0; i < t->n; i++) {
        store_entry_unref(t->ops[i].got);
        t->ops[i].got = NULL;
        store_entry_unref(t->ops[i].entry);
        t->ops[i].entry = NULL;
    }
    if (c != NULL)
        commit__free(c);
    t->err = err;
    return err;
}

struct store__waiter {
    pthread_mutex_t m;
    pthread_cond_t cv;
    bool done;
};

static void store__wake(void *arg, struct store_txn *t)
{
    struct store__waiter *w = arg;
    (void)t;
    pthread_mutex_lock(&w->m);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->m);
}

int store_apply(struct store *s, struct store_txn *t)
{
    struct store__waiter w = {.done = false};
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.cv, NULL);
    if (store_submit(s, t, store__wake, &w) == STORE_OK) {
        pthread_mutex_lock(&w.m);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.m);
        pthread_mutex_unlock(&w.m);
    }
    pthread_mutex_destroy(&w.m);
    pthread_cond_destroy(&w.cv);
    return t->err;
}

void store_txn_clear(struct store_txn *t)
{
    for (size_t i = 0; i < t->n; i++) {
        store_entry_unref(t->ops[i].got);
        t->ops[i].got = NULL;
    }
}

int store_publish(struct store *s, const char *key, size_t klen, struct store_entry *e)
{
    struct commit *c = NULL;
    struct change *ch;
    int err = STORE_OK;

    if (store_key_reserved(key, klen) && store_entry_origin(e) != STORE_ORIGIN_SYS) {
        err = STORE_EREADONLY;
        goto fail;
    }
    if ((c = calloc(1, sizeof *c)) == NULL || (ch = commit__add(c, key, klen)) == NULL) {
        err = STORE_EINTERNAL;
        goto fail;
    }
    ch->transient = true;
    ch->ts = now_us();
    ch->entry = e;
    e = NULL;
    /* Queued under the write lock, as changes are: subscribers get it in
     * order with the writes around it. */
    pthread_rwlock_wrlock(&s->lock);
    if (atomic_load(&s->draining)) {
        pthread_rwlock_unlock(&s->lock);
        err = STORE_EUNAVAIL;
        goto fail;
    }
    entry__stamp(ch->entry, s->rev, ch->ts);
    c->last_rev = s->rev;
    store__enqueue(s, c);
    pthread_rwlock_unlock(&s->lock);
    atomic_fetch_add(&s->publishes, 1);
    return STORE_OK;
fail:
    store_entry_unref(e);
    if (c != NULL)
        commit__free(c);
    return err;
}

/* ---- the outbox ---- */

size_t store_outbox_next(struct store *s, int64_t after, struct store_outbox_msg *out, size_t max)
{
    return outbox__next(s->outbox, after, out, max);
}

void store_outbox_msg_clear(struct store_outbox_msg *m)
{
    free(m->topic);
    store_entry_unref(m->entry);
    memset(m, 0, sizeof *m);
}

int64_t store_outbox_waiting(struct store *s, const char *topic)
{
    return outbox__waiting(s->outbox, topic);
}

void store_outbox_ack(struct store *s, const char *topic, int64_t rev)
{
    if (!outbox__ack(s->outbox, topic, rev))
        return;
    pthread_mutex_lock(&s->qlock);
    s->acks = true;
    pthread_cond_signal(&s->qcond);
    pthread_mutex_unlock(&s->qlock);
}

/* ---- subscriptions ---- */

static int store__subscribe(struct store *s, const char *pat, size_t plen, bool unique,
                            store_event_fn fn, void *arg, struct store_snapshot *snap,
                            int64_t *sync_rev, struct store_sub **out)
{
    struct store_sub *sub = calloc(1, sizeof *sub);
    bool more;
    int err;

    *out = NULL;
    if (sub == NULL)
        return STORE_EINTERNAL;
    sub->unique = unique;
    sub->fn = fn;
    sub->arg = arg;
    /* No change is applied while the read lock is held: the tree is the
     * state at `rev`, and every later change reaches the new subscription. */
    pthread_rwlock_rdlock(&s->lock);
    int64_t rev = s->rev;
    sub->min_rev = rev;
    pthread_mutex_lock(&s->sublock);
    err = subs__add(s->subs, sub, pat, plen);
    pthread_mutex_unlock(&s->sublock);
    if (err == STORE_OK && snap != NULL)
        tree__walk(s->tree, pat, plen, NULL, NULL, 0, SIZE_MAX, store__snap_visit, snap, &more);
    pthread_rwlock_unlock(&s->lock);
    if (err == STORE_OK && snap != NULL && snap->failed) {
        store_snapshot_free(snap);
        err = STORE_EINTERNAL;
    }
    if (err != STORE_OK) {
        if (sub->node != NULL)
            store_unsubscribe(s, sub);
        else
            free(sub);
        return err;
    }
    store__await(s, rev); /* the snapshot holds only committed changes */
    atomic_fetch_add(&s->nsubs, 1);
    *sync_rev = rev;
    *out = sub;
    return STORE_OK;
}

/* Subscribes, and fills `snap` with the state (since < 0) or with the
 * changes after `since` from history; again when a commit fails meanwhile,
 * as what was read may hold changes that were undone. */
static int store__subscribe_consistent(struct store *s, const char *pat, size_t plen, bool unique,
                                       store_event_fn fn, void *arg, int64_t since,
                                       struct store_snapshot *snap, int64_t *sync_rev,
                                       struct store_sub **out)
{
    for (;;) {
        uint64_t failures = atomic_load(&s->commit_failures);
        int err =
            store__subscribe(s, pat, plen, unique, fn, arg, since < 0 ? snap : NULL, sync_rev, out);
        if (err == STORE_OK && since >= 0 && s->history != NULL)
            err = history__replay(s->history, pat, plen, since, *sync_rev, snap);
        if (err == STORE_OK && atomic_load(&s->commit_failures) == failures)
            return STORE_OK;
        if (*out != NULL)
            store_unsubscribe(s, *out);
        *out = NULL;
        if (snap != NULL)
            store_snapshot_free(snap);
        if (err != STORE_OK)
            return err;
    }
}

int store_subscribe(struct store *s, const char *pat, size_t plen, bool unique, store_event_fn fn,
                    void *arg, struct store_snapshot *snap, int64_t *sync_rev,
                    struct store_sub **out)
{
    return store__subscribe_consistent(s, pat, plen, unique, fn, arg, -1, snap, sync_rev, out);
}

int store_subscribe_since(struct store *s, const char *pat, size_t plen, bool unique,
                          store_event_fn fn, void *arg, int64_t since, struct store_snapshot *snap,
                          int64_t *sync_rev, struct store_sub **out)
{
    bool covered = false;
    for (size_t i = 0; i < s->nhist_keys && s->history != NULL && !covered; i++)
        covered = store_pattern_covers(s->hist_keys[i], strlen(s->hist_keys[i]), pat, plen);
    /* The server's memory-only changes ($-keys, store_op) are in no history,
     * whatever history_keys says. */
    if (plen > 0 && pat[0] == '$')
        covered = false;
    pthread_rwlock_rdlock(&s->lock);
    int64_t rev = s->rev;
    pthread_rwlock_unlock(&s->lock);
    *out = NULL;
    if (since > rev || (!covered && since < rev))
        return STORE_EGONE;
    /* Not covered, since == rev: nothing to replay, and history may be off. */
    return store__subscribe_consistent(s, pat, plen, unique, fn, arg, covered ? since : -1,
                                       covered ? snap : NULL, sync_rev, out);
}

int store_history_open(struct store *s, const struct store_history_query *q,
                       struct store_history **out)
{
    *out = NULL;
    if (s->history == NULL)
        return STORE_EUNAVAIL;
    return history__query(s->history, q, out);
}

int store_history_first_rev(struct store *s, int64_t ts, int64_t *rev)
{
    return s->history != NULL ? history__first_rev(s->history, ts, rev) : STORE_EUNAVAIL;
}

void store_unsubscribe(struct store *s, struct store_sub *sub)
{
    pthread_mutex_lock(&s->sublock);
    subs__del(sub);
    pthread_mutex_unlock(&s->sublock);
    if (sub->node != NULL)
        atomic_fetch_sub(&s->nsubs, 1);
    free(sub);
}

static int64_t store__file_size(const char *path, const char *suffix)
{
    char p[4200];
    struct stat st;
    snprintf(p, sizeof p, "%s%s", path, suffix);
    return stat(p, &st) == 0 ? (int64_t)st.st_size : 0;
}

void store_stats(struct store *s, struct store_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&s->lock);
    out->keys = tree__count(s->tree);
    out->rev = s->rev;
    pthread_rwlock_unlock(&s->lock);
    out->committed_rev = atomic_load(&s->committed);
    out->commits = atomic_load(&s->commits);
    out->changes = atomic_load(&s->changes);
    out->commit_failures = atomic_load(&s->commit_failures);
    out->publishes = atomic_load(&s->publishes);
    out->subscriptions = atomic_load(&s->nsubs);
    out->events = atomic_load(&s->events);
    out->schema_version = db__schema_version(s->db);
    out->writable = atomic_load(&s->writable);
    out->draining = atomic_load(&s->draining);
    out->db_path = db__path(s->db);
    out->db_bytes = store__file_size(out->db_path, "");
    out->wal_bytes = store__file_size(out->db_path, "-wal");
    out->durability = s->cfg.durability;
    out->outbox = outbox__depth(s->outbox);
    out->history = s->history != NULL;
    if (s->history != NULL)
        history__stats(s->history, out);
    blobs__stats(s->blobs, &out->blob_files, &out->blob_bytes);
}

/* ---- values written straight to a blob file ---- */

struct store_blob {
    struct blob_file *file;
    uint64_t off;
    size_t len, done;
    uint32_t crc;
    int err;
};

int store_blob_open(struct store *s, size_t len, struct store_blob **out)
{
    *out = NULL;
    if (s->blobs == NULL || len < s->cfg.blob_min_bytes || len == 0)
        return STORE_ENOTFOUND;
    struct store_blob *w = calloc(1, sizeof *w);
    if (w == NULL)
        return STORE_EINTERNAL;
    int err = blobs__reserve(s->blobs, len, &w->file, &w->off);
    if (err != STORE_OK) {
        free(w);
        return err;
    }
    w->len = len;
    *out = w;
    return STORE_OK;
}

int store_blob_write(struct store_blob *w, const void *data, size_t len)
{
    if (w->err == STORE_OK && len > w->len - w->done)
        w->err = STORE_EBADREQ; /* more than opened */
    if (w->err == STORE_OK)
        w->err = blob__pwrite(w->file, data, len, w->off + w->done);
    if (w->err == STORE_OK) {
        w->crc = blob__crc_more(w->crc, data, len);
        w->done += len;
        if (w->done == w->len)
            blob__written(w->file);
    }
    return w->err;
}

int store_blob_entry(struct store_blob *w, const char *type, const char *labels_json,
                     enum store_origin origin, struct store_entry **out)
{
    int err = w->err != STORE_OK ? w->err : w->done != w->len ? STORE_EBADREQ : STORE_OK;
    /* Judged from the file's pages, as store_entry_new judges the bytes. */
    const void *value = blob__data(w->file, w->off);
    *out = NULL;
    if (err == STORE_OK && (type == NULL || type[0] == '\0'))
        type = store_sniff_type(value, w->len);
    else if (err == STORE_OK && store_type_is_json(type) && !store_json_valid(value, w->len))
        err = STORE_EBODY;
    if (labels_json != NULL && strcmp(labels_json, "{}") == 0)
        labels_json = NULL;
    if (err == STORE_OK) {
        *out = entry__blob(w->file, w->off, w->len, w->crc, type, labels_json, origin, 0);
        w->file = NULL; /* the entry took it, also on failure */
        err = *out != NULL ? STORE_OK : STORE_EINTERNAL;
    }
    store_blob_abort(w);
    return err;
}

void store_blob_abort(struct store_blob *w)
{
    if (w == NULL)
        return;
    if (w->file != NULL && w->done != w->len)
        blob__written(w->file);
    blob__unref(w->file);
    free(w);
}

int store_entry_make(struct store *s, const void *value, size_t len, const char *type,
                     const char *labels_json, enum store_origin origin, struct store_entry **out)
{
    struct store_blob *w;
    int err = store_blob_open(s, len, &w);
    if (err == STORE_ENOTFOUND)
        return store_entry_new(value, len, type, labels_json, origin, out);
    *out = NULL;
    if (err != STORE_OK)
        return err;
    if (store_blob_write(w, value, len) != STORE_OK) {
        err = w->err;
        store_blob_abort(w);
        return err;
    }
    return store_blob_entry(w, type, labels_json, origin, out);
}
