/*
 * subs.c — the subscription tree: patterns split into segments, one node per
 * segment, as mosquitto's subs.c. A node has its literal children (a sorted
 * array, found by binary search), a '+' child and a '#' child, and the
 * subscriptions whose pattern ends there. Matching a key walks its segments
 * once, following the literal, '+' and '#' branches, so it costs the depth of
 * the key, not the number of subscriptions.
 * Invariants:
 *   1. a node other than the root has subscriptions or children (subs__del
 *      prunes what it empties);
 *   2. at the root, '+' and '#' never match a key starting with '$';
 *   3. the caller holds the store's subs lock for every call here.
 */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

struct subnode {
    struct subnode *parent;
    struct subnode **kids; /* literal children, sorted by name */
    size_t nkids, cap;
    struct subnode *plus, *hash;
    struct store_sub *subs; /* the subscriptions whose pattern ends here */
    size_t nlen;
    char name[];
};

static size_t seg_end(const char *s, size_t len, size_t from)
{
    const char *slash = memchr(s + from, '/', len - from);
    return slash ? (size_t)(slash - s) : len;
}

static int subnode__cmp(const struct subnode *n, const char *name, size_t len)
{
    int c = memcmp(n->name, name, n->nlen < len ? n->nlen : len);
    return c ? c : (n->nlen > len) - (n->nlen < len);
}

/* The index of the literal child `name`, or where it would go (`*found`). */
static size_t subnode__find(const struct subnode *n, const char *name, size_t len, bool *found)
{
    size_t lo = 0, hi = n->nkids;
    *found = false;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = subnode__cmp(n->kids[mid], name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct subnode *subnode__new(struct subnode *parent, const char *name, size_t len)
{
    struct subnode *n = calloc(1, sizeof *n + len);
    if (n == NULL)
        return NULL;
    n->parent = parent;
    n->nlen = len;
    memcpy(n->name, name, len);
    return n;
}

/* The child of `n` for one pattern segment, created when `create`. */
static struct subnode *subnode__child(struct subnode *n, const char *seg, size_t len, bool create)
{
    struct subnode **slot = NULL;
    if (len == 1 && seg[0] == '+')
        slot = &n->plus;
    else if (len == 1 && seg[0] == '#')
        slot = &n->hash;
    if (slot != NULL) {
        if (*slot == NULL && create)
            *slot = subnode__new(n, seg, len);
        return *slot;
    }
    bool found;
    size_t at = subnode__find(n, seg, len, &found);
    if (found)
        return n->kids[at];
    if (!create)
        return NULL;
    if (n->nkids == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        struct subnode **kids = realloc(n->kids, cap * sizeof *kids);
        if (kids == NULL)
            return NULL;
        n->kids = kids;
        n->cap = cap;
    }
    struct subnode *c = subnode__new(n, seg, len);
    if (c == NULL)
        return NULL;
    memmove(n->kids + at + 1, n->kids + at, (n->nkids - at) * sizeof *n->kids);
    n->kids[at] = c;
    n->nkids++;
    return c;
}

struct subnode *subs__new(void)
{
    return subnode__new(NULL, "", 0);
}

static void subnode__free(struct subnode *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        subnode__free(n->kids[i]);
    subnode__free(n->plus);
    subnode__free(n->hash);
    free(n->kids);
    free(n);
}

void subs__free(struct subnode *root)
{
    subnode__free(root);
}

int subs__add(struct subnode *root, struct store_sub *sub, const char *pat, size_t plen)
{
    struct subnode *n = root;
    for (size_t i = 0;;) {
        size_t e = seg_end(pat, plen, i);
        n = subnode__child(n, pat + i, e - i, true);
        if (n == NULL) {
            return STORE_EINTERNAL; /* empty nodes on the way are pruned at free */
        }
        if (e == plen)
            break;
        i = e + 1;
    }
    sub->node = n;
    sub->prev = NULL;
    sub->next = n->subs;
    if (n->subs)
        n->subs->prev = sub;
    n->subs = sub;
    return STORE_OK;
}

static void subnode__unlink_child(struct subnode *parent, struct subnode *n)
{
    if (parent->plus == n)
        parent->plus = NULL;
    else if (parent->hash == n)
        parent->hash = NULL;
    else {
        bool found;
        size_t at = subnode__find(parent, n->name, n->nlen, &found);
        memmove(parent->kids + at, parent->kids + at + 1,
                (parent->nkids - at - 1) * sizeof *parent->kids);
        parent->nkids--;
    }
}

void subs__del(struct store_sub *sub)
{
    struct subnode *n = sub->node;
    if (sub->prev)
        sub->prev->next = sub->next;
    else
        n->subs = sub->next;
    if (sub->next)
        sub->next->prev = sub->prev;
    /* Invariant 1: prune the nodes left with nothing. */
    while (n->parent != NULL && n->subs == NULL && n->nkids == 0 && n->plus == NULL &&
           n->hash == NULL) {
        struct subnode *parent = n->parent;
        subnode__unlink_child(parent, n);
        free(n->kids);
        free(n);
        n = parent;
    }
}

static void subs__deliver(struct store_sub *list, struct store_event *ev)
{
    for (struct store_sub *s = list; s != NULL; s = s->next) {
        if (ev->rev <= s->min_rev && !ev->transient)
            continue; /* already in the subscriber's snapshot */
        if (s->unique && ev->entry != NULL && ev->old != NULL &&
            store_entry_same(ev->entry, ev->old))
            continue;
        s->fn(s->arg, s, ev);
    }
}

static void subs__match(const struct subnode *n, struct store_event *ev, size_t i, bool root)
{
    const char *key = ev->key;
    size_t klen = ev->klen;
    bool reserved = root && store_key_reserved(key, klen);

    /* '#' matches what is left of the key, and the key itself ("a/#" is "a"). */
    if (n->hash != NULL && !reserved)
        subs__deliver(n->hash->subs, ev);
    if (i > klen) {
        subs__deliver(n->subs, ev);
        return;
    }
    size_t e = seg_end(key, klen, i);
    if (n->plus != NULL && !reserved)
        subs__match(n->plus, ev, e + 1, false);
    bool found;
    size_t at = subnode__find(n, key + i, e - i, &found);
    if (found)
        subs__match(n->kids[at], ev, e + 1, false);
}

void subs__dispatch(const struct subnode *root, struct store_event *ev)
{
    subs__match(root, ev, 0, true);
}
