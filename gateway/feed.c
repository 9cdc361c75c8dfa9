/*
 * feed.c — one live feed of a pattern, the same for SSE and sessions:
 * subscribe, write the snapshot (or the history replay of `since`, or of
 * `start`: the replay after the rev before that time), then `sync`, then
 * every live event, through the transport's sink.
 *
 * Two filters, kept apart: `filter`, the keys the client may read (its
 * privileges, replaced when they change), and `labels`, what it asked for
 * (fixed for the feed's life). A deletion carries no labels: it passes the
 * label filters when the value it deleted does (store_labels), so a client
 * learns that a key it was shown is gone — a live event's `old`; in a
 * replay, the key's change before it there, or, when that is older than
 * the replay, history's own answer (the record before it; when that is
 * pruned too, it passes: a deletion too many tells the client nothing
 * false, one too few would leave it a key that is gone).
 *
 * The sink bounds the client's queue (session_queue_bytes) and refuses a
 * write past it; the feed's answer is always the same (the too_slow
 * policy): the feed fails, the sink ends the client with too_slow, and no
 * event follows.
 * Invariants:
 *   1. events reach the sink after the snapshot and the sync: until
 *      feed_start has written them, events wait in the opening's pending
 *      list; the switch to direct delivery happens under `lock`, which
 *      delivery also takes, and drops the opening;
 *   2. every event after the sync has a rev above it (the store filters),
 *      in rev order (the committer delivers in order);
 *   3. after a failed write nothing more is written;
 *   4. feed_close unsubscribes before it frees: no event callback runs on
 *      freed memory;
 *   5. `labels` (and the text it points into) is set by feed_open and read
 *      without the lock: it never changes afterwards.
 * A feed is kept small, as there is one for each subscription of each
 * session: the label filters and the snapshot are allocated only when
 * there are some.
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

/* What a feed needs from feed_open to feed_start only: kept apart, so that
 * a feed that is live (a session's subscription, for hours) does not carry
 * it. */
struct feed__opening {
    struct store_snapshot snap; /* with `snapped`; else none (live_only) */
    bool snapped;
    bool from_start; /* a replay from the time `start`: */
    int64_t start;   /* the changes before it are not written */
    int64_t sync_rev;
    struct feed__pending *head, *tail; /* invariant 1; under the feed's lock */
};

struct feed {
    struct store *store;
    struct store_sub *sub;
    const struct feed_sink *sink;
    void *arg;
    struct feed__opening *opening; /* from feed_open to feed_start */
    pthread_mutex_t lock;          /* pending, active, failed, filter */
    struct store_filter filter;    /* keep NULL: every key */
    struct store_labels *labels;   /* invariant 5; NULL: no filter, any labels; its strings
                                      follow it in one block */
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
    /* A live change that made its key says so (a page counting the keys of
     * a folder it never listed learns of a new one); a snapshot or replay
     * cannot tell cheaply, and says nothing. */
    bool created = !ev->transient && ev->live != NULL && ev->live->old == NULL;
    if ((ev->transient || created) && !b->oom && b->len > 0) {
        b->len--; /* its closing brace */
        buf_adds(b, ev->transient ? ",\"transient\":true}" : ",\"created\":true}");
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
    if (live == NULL && ev->entry != NULL && !ev->transient) { /* straight in: a snapshot's */
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

/* Whether a live event passes the label filters: a value or a publish by
 * its labels, a deletion by the value it deleted. */
static bool feed__live_passes(const struct feed *f, const struct store_event *ev)
{
    const struct store_entry *e = ev->entry != NULL ? ev->entry : ev->old;
    return f->labels == NULL || e == NULL || store_labels_pass_entry(f->labels, e);
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
    if (!feed__live_passes(f, ev)) /* outside the lock: invariant 5 */
        return;
    pthread_mutex_lock(&f->lock);
    if (!f->failed &&
        (f->filter.keep == NULL || f->filter.keep(f->filter.arg, ev->key, ev->klen))) {
        f->sink->add_event(f->arg, &b, &fe);
        if (f->active)
            feed__write(f, &b);
        else { /* invariant 1 */
            struct feed__opening *o = f->opening;
            struct feed__pending *p = malloc(sizeof *p);
            if (p != NULL && !b.oom) {
                p->next = NULL;
                p->text = b;
                b = (struct buf){0};
                if (o->tail)
                    o->tail->next = p;
                else
                    o->head = p;
                o->tail = p;
            } else
                free(p);
        }
    }
    pthread_mutex_unlock(&f->lock);
    buf_free(&b);
}

/* Copies `src` to `*p`, moving it past the copy; returns the copy. */
static const char *feed__put(char **p, const char *src)
{
    size_t n = strlen(src) + 1;
    char *dst = memcpy(*p, src, n);
    *p += n;
    return dst;
}

/* Copies the label filters of `from` (NULL: none) into f->labels, one
 * block with their strings. STORE_OK or STORE_EINTERNAL. */
static int feed__copy_labels(struct feed *f, const struct store_labels *from)
{
    size_t len = sizeof *f->labels;
    if (!store_labels_any(from))
        return STORE_OK;
    assert(from->nmatch <= STORE_LABELS_FILTERS_MAX && from->nexclude <= STORE_LABELS_FILTERS_MAX);
    for (size_t i = 0; i < from->nmatch; i++)
        len += strlen(from->match_names[i]) + strlen(from->match_values[i]) + 2;
    for (size_t i = 0; i < from->nexclude; i++)
        len += strlen(from->exclude_names[i]) + strlen(from->exclude_values[i]) + 2;
    struct store_labels *labels = f->labels = calloc(1, len);
    if (labels == NULL)
        return STORE_EINTERNAL;
    char *p = (char *)(labels + 1);
    for (size_t i = 0; i < from->nmatch; i++) {
        labels->match_names[i] = feed__put(&p, from->match_names[i]);
        labels->match_values[i] = feed__put(&p, from->match_values[i]);
    }
    for (size_t i = 0; i < from->nexclude; i++) {
        labels->exclude_names[i] = feed__put(&p, from->exclude_names[i]);
        labels->exclude_values[i] = feed__put(&p, from->exclude_values[i]);
    }
    labels->nmatch = from->nmatch;
    labels->nexclude = from->nexclude;
    return STORE_OK;
}

/* The rev a replay from the time rq->start follows, into `*since`. */
static int feed__since_start(struct store *store, const struct feed_request *rq, int64_t *since,
                             char *why, size_t why_len)
{
    int64_t first;
    int err = store_history_first_rev(store, rq->start, &first);
    if (err == STORE_OK) {
        *since = first - 1;
        return STORE_OK;
    }
    if (err == STORE_EUNAVAIL)
        snprintf(why, why_len,
                 "history is off (history_retention 0): there is nothing to replay from start");
    else if (err == STORE_EGONE)
        snprintf(why, why_len,
                 "history does not reach back to start (%lld µs since the epoch): take a fresh "
                 "snapshot (without start)",
                 (long long)rq->start);
    else
        snprintf(why, why_len, "%s", store_err_text(err));
    return err == STORE_EUNAVAIL ? STORE_EGONE : err;
}

int feed_open(struct store *store, const struct feed_request *rq, const struct feed_sink *sink,
              void *arg, struct feed **out, char *why, size_t why_len)
{
    struct feed *f = calloc(1, sizeof *f);
    struct feed__opening *o = calloc(1, sizeof *o);
    int64_t since = rq->since;
    int err;

    *out = NULL;
    if (f == NULL || o == NULL) {
        free(f);
        free(o);
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    f->opening = o;
    assert(!(rq->from_start && rq->since >= 0)); /* refused by ops_subscribe */
    f->store = store;
    f->sink = sink;
    f->arg = arg;
    o->from_start = rq->from_start;
    o->start = rq->start;
    if (rq->filter != NULL)
        f->filter = *rq->filter;
    pthread_mutex_init(&f->lock, NULL);
    if ((err = feed__copy_labels(f, rq->labels)) != STORE_OK) {
        snprintf(why, why_len, "out of memory");
        feed_close(f);
        return err;
    }
    if (rq->from_start && (err = feed__since_start(store, rq, &since, why, why_len)) != STORE_OK) {
        feed_close(f);
        return err;
    }
    o->snapped = since >= 0 || !rq->live_only;
    struct store_snapshot *snap = o->snapped ? &o->snap : NULL;
    if (since >= 0)
        err = store_subscribe_since(store, rq->pattern, rq->plen, rq->unique, feed__on_event, f,
                                    since, snap, &o->sync_rev, &f->sub);
    else
        err = store_subscribe(store, rq->pattern, rq->plen, rq->unique, feed__on_event, f, snap,
                              &o->sync_rev, &f->sub);
    if (err == STORE_OK) {
        *out = f;
        return STORE_OK;
    }
    if (err == STORE_EGONE && rq->from_start)
        snprintf(why, why_len,
                 "history does not hold every change of %.*s from start (%lld µs since the "
                 "epoch): take a fresh snapshot (without start)",
                 (int)rq->plen, rq->pattern, (long long)rq->start);
    else if (err == STORE_EGONE)
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

/* One change of a snapshot, for feed__passes to find a key's changes. */
struct feed__change {
    const char *key;
    size_t klen;
    size_t i; /* its place in the snapshot */
};

/* Orders by key, then by place: a key's changes together, oldest first. */
static int feed__change_cmp(const void *a, const void *b)
{
    const struct feed__change *x = a, *y = b;
    int c = memcmp(x->key, y->key, x->klen < y->klen ? x->klen : y->klen);
    if (c == 0)
        c = (x->klen > y->klen) - (x->klen < y->klen);
    return c != 0 ? c : (x->i > y->i) - (x->i < y->i);
}

/* Whether the deletion of `key` at (rev, ts), whose value is older than
 * the replay, passes the label filters: history judges it by the record
 * before it (history.c, invariant 4), as a history query with them does.
 * When history cannot tell, it passes. */
static bool feed__deletion_passes(const struct feed *f, const char *key, size_t klen, int64_t rev,
                                  int64_t ts)
{
    struct store_history_query q = {.pattern = key,
                                    .plen = klen,
                                    .start = ts,
                                    .stop = ts + 1,
                                    .limit = SIZE_MAX,
                                    .labels = *f->labels};
    struct store_history *it;
    struct store_record rec;
    int rc;
    if (store_history_open(f->store, &q, &it) != STORE_OK)
        return true;
    while ((rc = store_history_next(it, &rec)) == 1 && rec.rev != rev)
        ;
    store_history_close(it, NULL);
    return rc != 0; /* found it, or could not read */
}

/* Which changes of `snap` pass the label filters (a new array of snap->n;
 * NULL when out of memory): a value by its labels; a deletion (a replay
 * holds them) by the value it deleted, the change of its key before it in
 * the replay, or, when there is none, as history judges it. */
static bool *feed__passes(const struct feed *f, const struct store_snapshot *snap)
{
    bool *pass = malloc(snap->n * sizeof *pass);
    struct feed__change *order;
    size_t deletions = 0;

    if (pass == NULL)
        return NULL;
    for (size_t i = 0; i < snap->n; i++) {
        pass[i] = snap->entries[i] == NULL || store_labels_pass_entry(f->labels, snap->entries[i]);
        deletions += snap->entries[i] == NULL;
    }
    if (deletions == 0)
        return pass;
    if ((order = malloc(snap->n * sizeof *order)) == NULL) {
        free(pass);
        return NULL;
    }
    for (size_t i = 0; i < snap->n; i++)
        order[i] = (struct feed__change){.key = snap->keys[i], .klen = snap->klens[i], .i = i};
    qsort(order, snap->n, sizeof *order, feed__change_cmp);
    for (size_t j = 0; j < snap->n; j++) {
        const struct feed__change *prev = j > 0 ? &order[j - 1] : NULL, *cur = &order[j];
        size_t i = cur->i;
        if (snap->entries[i] != NULL)
            continue;
        if (prev != NULL && prev->klen == cur->klen && memcmp(prev->key, cur->key, cur->klen) == 0)
            pass[i] = pass[prev->i];
        else
            pass[i] = feed__deletion_passes(f, cur->key, cur->klen, snap->revs[i], snap->tss[i]);
    }
    free(order);
    return pass;
}

static void feed__free_opening(struct feed__opening *o)
{
    if (o == NULL)
        return;
    if (o->snapped)
        store_snapshot_free(&o->snap);
    while (o->head != NULL) {
        struct feed__pending *p = o->head;
        o->head = p->next;
        buf_free(&p->text);
        free(p);
    }
    free(o);
}

void feed_start(struct feed *f)
{
    const struct feed_sink *sink = f->sink;
    struct feed__opening *o = f->opening;
    const struct store_snapshot *snap = &o->snap; /* empty when not snapped */
    struct buf b = {0};
    bool failed = snap->failed;

    assert(!f->active && !f->failed); /* started once */
    pthread_mutex_lock(&f->lock);
    struct store_filter filter = f->filter;
    pthread_mutex_unlock(&f->lock);

    bool *pass = NULL; /* NULL: every change passes the label filters */
    if (!failed && snap->n > 0 && f->labels != NULL)
        failed = (pass = feed__passes(f, snap)) == NULL;
    /* Without the lock: events wait in pending meanwhile (invariant 1), so
     * no other thread writes, and the committer is not held up. */
    for (size_t i = 0; i < snap->n && !failed; i++) {
        struct feed_event fe = {.key = snap->keys[i],
                                .klen = snap->klens[i],
                                .entry = snap->entries[i],
                                .rev = snap->revs[i],
                                .ts = snap->tss[i]};
        /* A replay from `start` begins after the last change history held
         * before it; one committed since, of a clock not yet at `start`,
         * is before it too. */
        if ((filter.keep == NULL || filter.keep(filter.arg, fe.key, fe.klen)) &&
            (pass == NULL || pass[i]) && (!o->from_start || fe.ts >= o->start))
            sink->add_event(f->arg, &b, &fe);
        if (b.len > 0 && (sink->chunk == 0 || b.len >= sink->chunk || i + 1 == snap->n)) {
            failed = b.oom || !sink->write(f->arg, &b);
            b = (struct buf){0};
        }
    }
    buf_free(&b);
    free(pass);
    store_snapshot_free(&o->snap);
    o->snapped = false;
    pthread_mutex_lock(&f->lock);
    if (failed)
        feed__fail(f);
    sink->add_sync(f->arg, &b, o->sync_rev);
    feed__write(f, &b);
    while (o->head != NULL) {
        struct feed__pending *p = o->head;
        o->head = p->next;
        feed__write(f, &p->text);
        free(p);
    }
    f->active = true; /* invariant 1: nothing waits once live */
    f->opening = NULL;
    pthread_mutex_unlock(&f->lock);
    feed__free_opening(o);
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
    feed__free_opening(f->opening);
    pthread_mutex_destroy(&f->lock);
    free(f->labels);
    free(f);
}
