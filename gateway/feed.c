/*
 * feed.c — one live feed of a pattern, the same for SSE and sessions:
 * subscribe, write the snapshot (or the history replay of `since`), then
 * `sync`, then every live event, through the transport's sink.
 *
 * The sink bounds the client's queue (session_queue_bytes) and refuses a
 * write past it; the feed's answer is always the same (the too_slow
 * policy): the feed fails, the sink ends the client with too_slow, and no
 * event follows.
 * Invariants:
 *   1. events reach the sink after the snapshot and the sync: until
 *      feed_start has written them, events wait in `pending`; the switch to
 *      direct delivery happens under `lock`, which delivery also takes;
 *   2. every event after the sync has a rev above it (the store filters),
 *      in rev order (the committer delivers in order);
 *   3. after a failed write nothing more is written;
 *   4. feed_close unsubscribes before it frees: no event callback runs on
 *      freed memory.
 */
#include "feed.h"
#include "envelope.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The content type name the event cache is made with: the sessions', the
 * form fan-out multiplies. */
#define FEED_CACHED_FIELD "content_type"

const char feed_too_slow[] =
    "the outbound queue is full (session_queue_bytes): the client reads too slowly";

struct feed__pending {
    struct feed__pending *next;
    struct buf text;
};

struct feed {
    struct store *store;
    struct store_sub *sub;
    const struct feed_sink *sink;
    void *arg;
    struct store_snapshot snap; /* from feed_open to feed_start */
    int64_t sync_rev;
    pthread_mutex_t lock;       /* pending, active, failed, filter */
    struct store_filter filter; /* keep NULL: every key */
    struct feed__pending *head, *tail;
    bool active, failed;
};

/* The envelope of `ev` alone, in `b` (empty). */
static void feed__envelope(struct buf *b, const struct feed_event *ev, const char *type_field)
{
    if (ev->entry == NULL) {
        envelope_add_deleted(b, ev->key, ev->klen, ev->rev, ev->ts);
        return;
    }
    envelope_add_as(b, ev->key, ev->klen, ev->entry, type_field);
    if (ev->transient && !b->oom && b->len > 0) {
        b->len--; /* its closing brace */
        buf_adds(b, ",\"transient\":true}");
    }
}

void feed_add_envelope(struct buf *b, const struct feed_event *ev, const char *type_field,
                       const char *head)
{
    struct store_event *live = ev->live;
    bool cached = live != NULL && strcmp(type_field, FEED_CACHED_FIELD) == 0;
    struct buf env = {0};

    if (cached && live->cache == NULL) { /* the first subscriber of this event */
        feed__envelope(&env, ev, type_field);
        if (env.oom) {
            buf_free(&env);
            b->oom = true;
            return;
        }
        live->cache = env.p;
        live->cache_len = env.len;
        env = (struct buf){0};
    }
    if (cached) {
        buf_adds(b, head);
        buf_add(b, live->cache + 1, live->cache_len - 1);
        return;
    }
    if (ev->entry != NULL && !ev->transient) { /* straight in: a snapshot's */
        buf_adds(b, head);
        envelope_add_fields(b, ev->key, ev->klen, ev->entry, type_field);
        return;
    }
    feed__envelope(&env, ev, type_field);
    if (env.len > 0) {
        buf_adds(b, head);
        buf_add(b, env.p + 1, env.len - 1);
    }
    if (env.oom)
        b->oom = true;
    buf_free(&env);
}

/* The too_slow policy: the client is ended, and nothing more is written
 * (invariant 3). The caller holds f->lock. */
static void feed__fail(struct feed *f)
{
    f->failed = true;
    f->sink->fail(f->arg, STORE_ESLOW, feed_too_slow);
}

/* Writes `b` (taken over) unless the feed failed; a refused write fails it.
 * The caller holds f->lock once the feed is live. */
static void feed__write(struct feed *f, struct buf *b)
{
    if (f->failed || b->oom) {
        buf_free(b);
        return;
    }
    if (!f->sink->write(f->arg, b))
        feed__fail(f);
}

static void feed__on_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    struct feed *f = arg;
    struct feed_event fe = {.key = ev->key,
                            .klen = ev->klen,
                            .entry = ev->entry,
                            .rev = ev->rev,
                            .ts = ev->ts,
                            .transient = ev->transient,
                            .live = ev};
    struct buf b = {0};
    (void)sub;
    pthread_mutex_lock(&f->lock);
    if (!f->failed &&
        (f->filter.keep == NULL || f->filter.keep(f->filter.arg, ev->key, ev->klen))) {
        f->sink->add_event(f->arg, &b, &fe);
        if (f->active)
            feed__write(f, &b);
        else { /* invariant 1 */
            struct feed__pending *p = malloc(sizeof *p);
            if (p != NULL && !b.oom) {
                p->next = NULL;
                p->text = b;
                b = (struct buf){0};
                if (f->tail)
                    f->tail->next = p;
                else
                    f->head = p;
                f->tail = p;
            } else
                free(p);
        }
    }
    pthread_mutex_unlock(&f->lock);
    buf_free(&b);
}

int feed_open(struct store *store, const struct feed_request *rq, const struct feed_sink *sink,
              void *arg, struct feed **out, char *why, size_t why_len)
{
    struct feed *f = calloc(1, sizeof *f);
    int err;

    *out = NULL;
    if (f == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    f->store = store;
    f->sink = sink;
    f->arg = arg;
    if (rq->filter != NULL)
        f->filter = *rq->filter;
    pthread_mutex_init(&f->lock, NULL);
    if (rq->since >= 0)
        err = store_subscribe_since(store, rq->pattern, rq->plen, rq->unique, feed__on_event, f,
                                    rq->since, &f->snap, &f->sync_rev, &f->sub);
    else
        err = store_subscribe(store, rq->pattern, rq->plen, rq->unique, feed__on_event, f,
                              rq->live_only ? NULL : &f->snap, &f->sync_rev, &f->sub);
    if (err == STORE_OK) {
        *out = f;
        return STORE_OK;
    }
    if (err == STORE_EGONE)
        snprintf(why, why_len,
                 "history does not hold every change of %.*s after rev %lld: take a fresh "
                 "snapshot (without since)",
                 (int)rq->plen, rq->pattern, (long long)rq->since);
    else
        snprintf(why, why_len, "%s", store_err_text(err));
    f->sub = NULL;
    feed_close(f);
    return err;
}

void feed_start(struct feed *f)
{
    const struct feed_sink *sink = f->sink;
    struct store_snapshot *snap = &f->snap;
    struct buf b = {0};
    bool failed = snap->failed;

    assert(!f->active && !f->failed); /* started once */
    pthread_mutex_lock(&f->lock);
    struct store_filter filter = f->filter;
    pthread_mutex_unlock(&f->lock);

    /* Without the lock: events wait in pending meanwhile (invariant 1), so
     * no other thread writes, and the committer is not held up. */
    for (size_t i = 0; i < snap->n && !failed; i++) {
        struct feed_event fe = {.key = snap->keys[i],
                                .klen = snap->klens[i],
                                .entry = snap->entries[i],
                                .rev = snap->revs[i],
                                .ts = snap->tss[i]};
        if (filter.keep == NULL || filter.keep(filter.arg, fe.key, fe.klen))
            sink->add_event(f->arg, &b, &fe);
        if (b.len > 0 && (sink->chunk == 0 || b.len >= sink->chunk || i + 1 == snap->n)) {
            failed = b.oom || !sink->write(f->arg, &b);
            b = (struct buf){0};
        }
    }
    buf_free(&b);
    store_snapshot_free(snap);
    pthread_mutex_lock(&f->lock);
    if (failed)
        feed__fail(f);
    sink->add_sync(f->arg, &b, f->sync_rev);
    feed__write(f, &b);
    while (f->head != NULL) {
        struct feed__pending *p = f->head;
        f->head = p->next;
        feed__write(f, &p->text);
        free(p);
    }
    f->tail = NULL;
    f->active = true;
    assert(f->head == NULL); /* invariant 1: nothing waits once live */
    pthread_mutex_unlock(&f->lock);
}

void feed_refilter(struct feed *f, const struct store_filter *filter)
{
    pthread_mutex_lock(&f->lock);
    f->filter = filter != NULL ? *filter : (struct store_filter){0};
    pthread_mutex_unlock(&f->lock);
}

void feed_close(struct feed *f)
{
    if (f == NULL)
        return;
    if (f->sub != NULL)
        store_unsubscribe(f->store, f->sub); /* invariant 4 */
    store_snapshot_free(&f->snap);
    while (f->head != NULL) {
        struct feed__pending *p = f->head;
        f->head = p->next;
        buf_free(&p->text);
        free(p);
    }
    pthread_mutex_destroy(&f->lock);
    free(f);
}
