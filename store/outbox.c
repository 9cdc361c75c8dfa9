/*
 * outbox.c — the in-memory mirror of the `outbox` table: the changes waiting
 * to go out to the MQTT broker, the latest one per topic, in rev order.
 *
 * Items sit in a hash table by topic and in a list by rev. A change of a
 * topic that already waits replaces its item, and the new item goes to the
 * tail: revs only grow, so the list stays in rev order.
 * Invariants:
 *   1. an item is here only once its row is committed (outbox__put runs on
 *      the committer after the commit, or at load);
 *   2. one item per topic; the list is in rev order;
 *   3. an acknowledgement removes the item only when its rev is the one
 *      sent; the row's deletion then waits in `acks` for the committer's
 *      next transaction (a newer change of the topic is never removed);
 *   4. everything is under `lock`.
 */
#include "store_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct obx_item {
    struct obx_item *prev, *next; /* rev order */
    struct obx_item *hnext;       /* hash chain */
    uint64_t hash;
    int64_t rev;
    struct store_entry *entry; /* NULL: a deletion */
    size_t tlen;
    char topic[];
};

struct outbox {
    pthread_mutex_t lock;
    struct obx_item **buckets;
    size_t nbuckets, n;
    struct obx_item *head, *tail;
    struct obx_item *hint; /* where the last outbox__next ended */
    struct outbox_ack *acks;
    size_t nacks, cap;
};

static uint64_t outbox__hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

struct outbox *outbox__new(void)
{
    struct outbox *ob = calloc(1, sizeof *ob);
    if (ob == NULL)
        return NULL;
    ob->nbuckets = 64;
    if ((ob->buckets = calloc(ob->nbuckets, sizeof *ob->buckets)) == NULL) {
        free(ob);
        return NULL;
    }
    pthread_mutex_init(&ob->lock, NULL);
    return ob;
}

static void outbox__free_item(struct obx_item *it)
{
    store_entry_unref(it->entry);
    free(it);
}

void outbox__free(struct outbox *ob)
{
    if (ob == NULL)
        return;
    for (struct obx_item *it = ob->head, *next; it != NULL; it = next) {
        next = it->next;
        outbox__free_item(it);
    }
    for (size_t i = 0; i < ob->nacks; i++)
        free(ob->acks[i].topic);
    free(ob->acks);
    free(ob->buckets);
    pthread_mutex_destroy(&ob->lock);
    free(ob);
}

/* The slot that holds (or would hold) the item of `topic`. */
static struct obx_item **outbox__slot(struct outbox *ob, const char *topic, size_t tlen,
                                      uint64_t hash)
{
    struct obx_item **p = &ob->buckets[hash & (ob->nbuckets - 1)];
    while (*p != NULL &&
           ((*p)->hash != hash || (*p)->tlen != tlen || memcmp((*p)->topic, topic, tlen) != 0))
        p = &(*p)->hnext;
    return p;
}

static void outbox__unlink(struct outbox *ob, struct obx_item **slot)
{
    struct obx_item *it = *slot;
    *slot = it->hnext;
    if (ob->hint == it)
        ob->hint = it->prev; /* a lower rev: still a place to start from */
    if (it->prev)
        it->prev->next = it->next;
    else
        ob->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        ob->tail = it->prev;
    ob->n--;
    outbox__free_item(it);
}

static void outbox__grow(struct outbox *ob)
{
    size_t nb = ob->nbuckets * 2;
    struct obx_item **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return; /* longer chains, still correct */
    for (struct obx_item *it = ob->head; it != NULL; it = it->next) {
        it->hnext = b[it->hash & (nb - 1)];
        b[it->hash & (nb - 1)] = it;
    }
    free(ob->buckets);
    ob->buckets = b;
    ob->nbuckets = nb;
}

int outbox__put(struct outbox *ob, const char *topic, int64_t rev, struct store_entry *e)
{
    size_t tlen = strlen(topic);
    uint64_t hash = outbox__hash(topic, tlen);
    struct obx_item *it = malloc(sizeof *it + tlen + 1);
    if (it == NULL)
        return STORE_EINTERNAL;
    memcpy(it->topic, topic, tlen + 1);
    it->tlen = tlen;
    it->hash = hash;
    it->rev = rev;
    it->entry = e;
    if (e != NULL)
        store_entry_ref(e);
    pthread_mutex_lock(&ob->lock);
    struct obx_item **slot = outbox__slot(ob, topic, tlen, hash);
    if (*slot != NULL)
        outbox__unlink(ob, slot);
    it->hnext = *slot;
    *slot = it;
    it->next = NULL;
    it->prev = ob->tail;
    if (ob->tail)
        ob->tail->next = it;
    else
        ob->head = it;
    ob->tail = it;
    if (++ob->n > ob->nbuckets)
        outbox__grow(ob);
    pthread_mutex_unlock(&ob->lock);
    return STORE_OK;
}

size_t outbox__next(struct outbox *ob, int64_t after, struct store_outbox_msg *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&ob->lock);
    /* The messages handed out last time come first: skip them from the hint,
     * not from the head. */
    struct obx_item *it = ob->hint != NULL && ob->hint->rev <= after ? ob->hint : ob->head;
    while (it != NULL && it->rev <= after)
        it = it->next;
    for (; it != NULL && n < max; it = it->next) {
        ob->hint = it;
        if ((out[n].topic = strdup(it->topic)) == NULL)
            break;
        out[n].rev = it->rev;
        out[n].entry = it->entry;
        if (it->entry != NULL)
            store_entry_ref(it->entry);
        n++;
    }
    pthread_mutex_unlock(&ob->lock);
    return n;
}

int64_t outbox__waiting(struct outbox *ob, const char *topic)
{
    size_t tlen = strlen(topic);
    pthread_mutex_lock(&ob->lock);
    struct obx_item *it = *outbox__slot(ob, topic, tlen, outbox__hash(topic, tlen));
    int64_t rev = it != NULL ? it->rev : 0;
    pthread_mutex_unlock(&ob->lock);
    return rev;
}

bool outbox__ack(struct outbox *ob, const char *topic, int64_t rev)
{
    size_t tlen = strlen(topic);
    bool removed = false;
    pthread_mutex_lock(&ob->lock);
    struct obx_item **slot = outbox__slot(ob, topic, tlen, outbox__hash(topic, tlen));
    if (*slot != NULL && (*slot)->rev == rev) {
        if (ob->nacks == ob->cap) {
            size_t cap = ob->cap ? ob->cap * 2 : 64;
            struct outbox_ack *v = realloc(ob->acks, cap * sizeof *v);
            if (v == NULL)
                goto out; /* the row stays and goes out again after a restart */
            ob->acks = v;
            ob->cap = cap;
        }
        if ((ob->acks[ob->nacks].topic = strdup(topic)) == NULL)
            goto out;
        ob->acks[ob->nacks++].rev = rev;
        outbox__unlink(ob, slot);
        removed = true;
    }
out:
    pthread_mutex_unlock(&ob->lock);
    return removed;
}

size_t outbox__take_acks(struct outbox *ob, struct outbox_ack **acks)
{
    pthread_mutex_lock(&ob->lock);
    size_t n = ob->nacks;
    *acks = ob->acks;
    ob->acks = NULL;
    ob->nacks = ob->cap = 0;
    pthread_mutex_unlock(&ob->lock);
    return n;
}

size_t outbox__depth(struct outbox *ob)
{
    pthread_mutex_lock(&ob->lock);
    size_t n = ob->n;
    pthread_mutex_unlock(&ob->lock);
    return n;
}
