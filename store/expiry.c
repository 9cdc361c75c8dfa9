/*
 * expiry.c — keys that expire (a set with a ttl): a min-heap of (when, key)
 * and a thread that deletes each key once its time has come, as any delete
 * by the server (origin sys: history, events, an empty retained message on
 * MQTT).
 *
 * The heap is lazy: an item whose key was overwritten or deleted before its
 * time stays in it. Its delete carries `if_expired`, which the store applies
 * only when the key's entry then has expired, so an old item never deletes
 * a key set again without a ttl, or with a later one. Deletions go in
 * transactions of at most EXPIRY_BATCH keys, each waited for before the
 * next, so a hundred thousand keys expiring at once pass through the
 * committer between the commits of other writers instead of in one long
 * one.
 * Invariants:
 *   1. every entry of the tree that expires has an item with its time in
 *      the heap: pushed when it is set (store.c, under the store's lock) or
 *      loaded;
 *   2. the heap changes under `lock` only, taken after the store's lock,
 *      never before it;
 *   3. a transaction that fails puts its items back, a second later, so a
 *      full disk delays an expiry but does not lose it.
 */
#include "store_int.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPIRY_BATCH 1000

struct expiry_item {
    int64_t when; /* µs since the epoch */
    char *key;    /* owned */
    size_t klen;
};

struct expiry {
    int (*apply)(void *arg, struct store_txn *t); /* the store's */
    void *arg;
    pthread_mutex_t lock; /* the heap and `stop` */
    pthread_cond_t cond;
    struct expiry_item *heap;
    size_t n, cap;
    bool stop, started;
    pthread_t thread;
};

static void expiry__swap(struct expiry_item *a, struct expiry_item *b)
{
    struct expiry_item t = *a;
    *a = *b;
    *b = t;
}

/* Adds an item whose key is already owned; the caller holds `lock`. */
static int expiry__add(struct expiry *x, struct expiry_item it)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 64;
        struct expiry_item *h = realloc(x->heap, cap * sizeof *h);
        if (h == NULL)
            return STORE_EINTERNAL;
        x->heap = h;
        x->cap = cap;
    }
    size_t i = x->n++;
    x->heap[i] = it;
    while (i > 0 && x->heap[(i - 1) / 2].when > x->heap[i].when) {
        expiry__swap(&x->heap[(i - 1) / 2], &x->heap[i]);
        i = (i - 1) / 2;
    }
    if (i == 0)
        pthread_cond_signal(&x->cond); /* a new first: the thread's wait changes */
    return STORE_OK;
}

static struct expiry_item expiry__pop(struct expiry *x)
{
    struct expiry_item top = x->heap[0];
    x->heap[0] = x->heap[--x->n];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < x->n && x->heap[l].when < x->heap[m].when)
            m = l;
        if (r < x->n && x->heap[r].when < x->heap[m].when)
            m = r;
        if (m == i)
            break;
        expiry__swap(&x->heap[i], &x->heap[m]);
        i = m;
    }
    return top;
}

int expiry__push(struct expiry *x, const char *key, size_t klen, int64_t when)
{
    struct expiry_item it = {.when = when, .key = malloc(klen + 1), .klen = klen};
    if (it.key == NULL)
        return STORE_EINTERNAL;
    memcpy(it.key, key, klen);
    it.key[klen] = '\0';
    pthread_mutex_lock(&x->lock);
    int err = expiry__add(x, it);
    pthread_mutex_unlock(&x->lock);
    if (err != STORE_OK)
        free(it.key);
    return err;
}

size_t expiry__pending(struct expiry *x)
{
    pthread_mutex_lock(&x->lock);
    size_t n = x->n;
    pthread_mutex_unlock(&x->lock);
    return n;
}

/* Deletes the keys of `items` that have expired, in one transaction;
 * invariant 3 when it fails. Returns the store's answer. */
static int expiry__delete(struct expiry *x, struct expiry_item *items, size_t n)
{
    struct store_op *ops = calloc(n, sizeof *ops);
    struct store_txn t = {.ops = ops, .n = n};
    int err = STORE_EINTERNAL;
    if (ops != NULL) {
        for (size_t i = 0; i < n; i++)
            ops[i] = (struct store_op){.kind = STORE_OP_DELETE,
                                       .key = items[i].key,
                                       .klen = items[i].klen,
                                       .if_expired = true,
                                       .sys = true,
                                       .origin = STORE_ORIGIN_SYS,
                                       .if_rev = STORE_ANY_REV};
        err = x->apply(x->arg, &t);
    }
    free(ops);
    pthread_mutex_lock(&x->lock);
    for (size_t i = 0; i < n; i++) {
        if (err != STORE_OK && err != STORE_EUNAVAIL) { /* invariant 3 */
            items[i].when = now_us() + 1000000;
            if (expiry__add(x, items[i]) == STORE_OK)
                continue;
        }
        free(items[i].key);
    }
    pthread_mutex_unlock(&x->lock);
    return err;
}

static void *expiry__run(void *arg)
{
    struct expiry *x = arg;
    struct expiry_item *batch = malloc(EXPIRY_BATCH * sizeof *batch);
    pthread_mutex_lock(&x->lock);
    while (!x->stop && batch != NULL) {
        int64_t now = now_us();
        if (x->n == 0) {
            pthread_cond_wait(&x->cond, &x->lock);
            continue;
        }
        if (x->heap[0].when > now) { /* until the first is due, or a new first */
            int64_t when = x->heap[0].when;
            struct timespec ts = {.tv_sec = when / 1000000, .tv_nsec = (when % 1000000) * 1000};
            pthread_cond_timedwait(&x->cond, &x->lock, &ts);
            continue;
        }
        size_t n = 0;
        while (n < EXPIRY_BATCH && x->n > 0 && x->heap[0].when <= now)
            batch[n++] = expiry__pop(x);
        pthread_mutex_unlock(&x->lock);
        int err = expiry__delete(x, batch, n);
        if (err != STORE_OK && err != STORE_EUNAVAIL)
            log_warn("store: %zu keys could not expire (%s); trying again in a second", n,
                     store_err_name(err));
        pthread_mutex_lock(&x->lock);
        if (err == STORE_EUNAVAIL) /* the store is draining: the next start does it */
            break;
    }
    pthread_mutex_unlock(&x->lock);
    free(batch);
    return NULL;
}

struct expiry *expiry__new(int (*apply)(void *arg, struct store_txn *t), void *arg)
{
    struct expiry *x = calloc(1, sizeof *x);
    if (x == NULL)
        return NULL;
    x->apply = apply;
    x->arg = arg;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->cond, NULL);
    return x;
}

int expiry__start(struct expiry *x)
{
    if (pthread_create(&x->thread, NULL, expiry__run, x) != 0)
        return STORE_EINTERNAL;
    x->started = true;
    return STORE_OK;
}

void expiry__stop(struct expiry *x)
{
    if (x == NULL || !x->started)
        return;
    pthread_mutex_lock(&x->lock);
    x->stop = true;
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->lock);
    pthread_join(x->thread, NULL);
    x->started = false;
}

void expiry__free(struct expiry *x)
{
    if (x == NULL)
        return;
    expiry__stop(x);
    for (size_t i = 0; i < x->n; i++)
        free(x->heap[i].key);
    free(x->heap);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->cond);
    free(x);
}
