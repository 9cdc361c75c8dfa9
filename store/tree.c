/*
 * tree.c — the in-memory key tree, one node per segment (as mosquitto's
 * retain tree), children in a hash table.
 *
 * A node's children are a plain chain while there are few of them and a
 * table of 2^kbits buckets, each a chain, once there are more than
 * TREE_CHAIN_MAX; each node links to its next sibling, so a child costs no
 * allocation beyond itself. The root stands for "no segment yet": every key
 * has at least one segment, so the root never holds an entry.
 * Invariants:
 *   1. every node but the root holds an entry or has children (tree__del
 *      prunes the nodes it empties);
 *   2. nkids is the number of children reachable from `kids`;
 *   3. `count` is the number of nodes holding an entry.
 * The caller holds the store's lock: read for lookups, write for changes.
 */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

#define TREE_CHAIN_MAX 8

struct node {
    struct node *next; /* the next sibling in the parent's chain or bucket */
    union {
        struct node *chain;    /* kbits == 0 */
        struct node **buckets; /* kbits > 0 */
    } kids;
    struct store_entry *entry; /* owned reference, or NULL */
    uint32_t nkids;
    uint16_t nlen;
    uint8_t kbits;
    char name[];
};

struct tree {
    struct node root;
    uint64_t count;
};

static uint32_t node__hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static struct node **node__slot(struct node *n, const char *name, size_t len)
{
    if (n->kbits == 0)
        return &n->kids.chain;
    return &n->kids.buckets[node__hash(name, len) & ((1u << n->kbits) - 1)];
}

static struct node *node__child(const struct node *n, const char *name, size_t len)
{
    struct node *c = *node__slot((struct node *)n, name, len);
    for (; c != NULL; c = c->next)
        if (c->nlen == len && memcmp(c->name, name, len) == 0)
            return c;
    return NULL;
}

/* Rehashes into 2^bits buckets. Returns 0, or -1 when out of memory. */
static int node__rehash(struct node *n, uint8_t bits)
{
    struct node **table = calloc((size_t)1 << bits, sizeof *table);
    if (table == NULL)
        return -1;
    struct node *all = NULL;
    /* Unlink every child into one list, then hash them into the new table. */
    size_t nb = n->kbits ? (size_t)1 << n->kbits : 1;
    for (size_t b = 0; b < nb; b++) {
        struct node *c = n->kbits ? n->kids.buckets[b] : n->kids.chain;
        while (c != NULL) {
            struct node *next = c->next;
            c->next = all;
            all = c;
            c = next;
        }
    }
    if (n->kbits)
        free(n->kids.buckets);
    n->kids.buckets = table;
    n->kbits = bits;
    while (all != NULL) {
        struct node *next = all->next;
        struct node **slot = node__slot(n, all->name, all->nlen);
        all->next = *slot;
        *slot = all;
        all = next;
    }
    return 0;
}

static struct node *node__add(struct node *n, const char *name, size_t len)
{
    if (n->nkids >= TREE_CHAIN_MAX && n->nkids >= ((uint32_t)1 << n->kbits) &&
        node__rehash(n, n->kbits ? (uint8_t)(n->kbits + 1) : 4) != 0)
        return NULL;
    struct node *c = malloc(sizeof *c + len);
    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof *c);
    c->nlen = (uint16_t)len;
    memcpy(c->name, name, len);
    struct node **slot = node__slot(n, name, len);
    c->next = *slot;
    *slot = c;
    n->nkids++;
    return c;
}

static void node__unlink(struct node *n, struct node *child)
{
    struct node **p = node__slot(n, child->name, child->nlen);
    while (*p != child)
        p = &(*p)->next;
    *p = child->next;
    if (--n->nkids == 0 && n->kbits) {
        free(n->kids.buckets);
        n->kids.chain = NULL;
        n->kbits = 0;
    }
}

static void node__free_kids(struct node *n)
{
    size_t nb = n->kbits ? (size_t)1 << n->kbits : 1;
    for (size_t b = 0; b < nb; b++) {
        struct node *c = n->kbits ? n->kids.buckets[b] : n->kids.chain;
        while (c != NULL) {
            struct node *next = c->next;
            node__free_kids(c);
            store_entry_unref(c->entry);
            free(c);
            c = next;
        }
    }
    if (n->kbits)
        free(n->kids.buckets);
}

static int node__name_cmp(const void *a, const void *b)
{
    const struct node *x = *(struct node *const *)a, *y = *(struct node *const *)b;
    int c = memcmp(x->name, y->name, x->nlen < y->nlen ? x->nlen : y->nlen);
    return c ? c : (x->nlen > y->nlen) - (x->nlen < y->nlen);
}

/* The children sorted by name, in a new array (NULL when there are none or
 * out of memory; `*n` is the count). */
static struct node **node__sorted(const struct node *n, size_t *count)
{
    *count = 0;
    if (n->nkids == 0)
        return NULL;
    struct node **v = malloc(n->nkids * sizeof *v);
    if (v == NULL)
        return NULL;
    size_t i = 0;
    size_t nb = n->kbits ? (size_t)1 << n->kbits : 1;
    for (size_t b = 0; b < nb; b++)
        for (struct node *c = n->kbits ? n->kids.buckets[b] : n->kids.chain; c; c = c->next)
            v[i++] = c;
    qsort(v, i, sizeof *v, node__name_cmp);
    *count = i;
    return v;
}

struct tree *tree__new(void)
{
    return calloc(1, sizeof(struct tree));
}

void tree__free(struct tree *t)
{
    if (t == NULL)
        return;
    node__free_kids(&t->root);
    free(t);
}

uint64_t tree__count(const struct tree *t)
{
    return t->count;
}

static size_t tree__seg_end(const char *s, size_t len, size_t from)
{
    const char *slash = memchr(s + from, '/', len - from);
    return slash ? (size_t)(slash - s) : len;
}

static const struct node *tree__find(const struct tree *t, const char *key, size_t klen)
{
    const struct node *n = &t->root;
    for (size_t i = 0;;) {
        size_t e = tree__seg_end(key, klen, i);
        n = node__child(n, key + i, e - i);
        if (n == NULL || e == klen)
            return n;
        i = e + 1;
    }
}

struct store_entry *tree__get(const struct tree *t, const char *key, size_t klen)
{
    const struct node *n = tree__find(t, key, klen);
    return n ? n->entry : NULL;
}

static struct store_entry *tree__remove(struct tree *t, const char *key, size_t klen,
                                        bool take_entry);

int tree__set(struct tree *t, const char *key, size_t klen, struct store_entry *e,
              struct store_entry **old)
{
    struct node *n = &t->root;
    *old = NULL;
    for (size_t i = 0;;) {
        size_t end = tree__seg_end(key, klen, i);
        struct node *c = node__child(n, key + i, end - i);
        if (c == NULL && (c = node__add(n, key + i, end - i)) == NULL) {
            /* Nodes added on the way hold nothing: remove them again. */
            if (i > 0)
                tree__remove(t, key, i - 1, false);
            return STORE_EINTERNAL;
        }
        n = c;
        if (end == klen)
            break;
        i = end + 1;
    }
    *old = n->entry;
    n->entry = e;
    if (*old == NULL)
        t->count++;
    return STORE_OK;
}

struct store_entry *tree__del(struct tree *t, const char *key, size_t klen)
{
    return tree__remove(t, key, klen, true);
}

/* Takes the entry of `key` away (when `take_entry`) and prunes the nodes on
 * its path left holding nothing, from the leaf up (invariant 1). Returns the
 * entry's reference, or NULL. */
static struct store_entry *tree__remove(struct tree *t, const char *key, size_t klen,
                                        bool take_entry)
{
    struct node *stack[64], **path = stack;
    size_t depth = 0, cap = 64;
    struct node *n = &t->root;
    struct store_entry *old = NULL;

    for (size_t i = 0;;) {
        if (depth == cap) {
            struct node **bigger = malloc(cap * 2 * sizeof *bigger);
            if (bigger == NULL)
                goto out; /* cannot prune: leave the key in place */
            memcpy(bigger, path, depth * sizeof *bigger);
            if (path != stack)
                free(path);
            path = bigger;
            cap *= 2;
        }
        path[depth++] = n;
        size_t end = tree__seg_end(key, klen, i);
        n = node__child(n, key + i, end - i);
        if (n == NULL)
            goto out;
        if (end == klen)
            break;
        i = end + 1;
    }
    if (take_entry && n->entry != NULL) {
        old = n->entry;
        n->entry = NULL;
        t->count--;
    }
    while (depth > 0 && n->entry == NULL && n->nkids == 0) {
        struct node *parent = path[--depth];
        node__unlink(parent, n);
        free(n);
        n = parent;
    }
out:
    if (path != stack)
        free(path);
    return old;
}

/* ---- pattern walks in key order ---- */

struct walk {
    const char *pat;
    size_t plen;
    const char *after; /* NULL: no cursor */
    size_t alen;
    size_t limit, count;
    bool more, stop;
    store_visit_fn visit;
    void *arg;
    char *buf; /* the key of the node being visited */
    size_t len, cap;
};

static int walk__push(struct walk *w, const struct node *n, bool root)
{
    size_t need = w->len + (root ? 0 : 1) + n->nlen;
    if (need > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        while (cap < need)
            cap *= 2;
        char *b = realloc(w->buf, cap);
        if (b == NULL)
            return -1;
        w->buf = b;
        w->cap = cap;
    }
    if (!root)
        w->buf[w->len++] = '/';
    memcpy(w->buf + w->len, n->name, n->nlen);
    w->len += n->nlen;
    return 0;
}

/* Whether the subtree at the current key can hold a key after the cursor:
 * it can when the key is after the cursor or a segment-prefix of it. */
static bool walk__reaches_cursor(const struct walk *w)
{
    if (w->after == NULL)
        return true;
    if (w->len <= w->alen && memcmp(w->buf, w->after, w->len) == 0 &&
        (w->len == w->alen || w->after[w->len] == '/'))
        return true;
    return store_key_cmp(w->buf, w->len, w->after, w->alen) > 0;
}

static void walk__emit(struct walk *w, const struct node *n)
{
    if (n->entry == NULL || w->stop)
        return;
    if (w->after && store_key_cmp(w->buf, w->len, w->after, w->alen) <= 0)
        return;
    if (w->count == w->limit) {
        w->more = true;
        w->stop = true;
        return;
    }
    w->count++;
    w->visit(w->arg, w->buf, w->len, n->entry);
}

static void walk__at(struct walk *w, const struct node *n, size_t pi, bool root);

/* Visits the children of `n` in name order; `pi` as for walk__at. With
 * SIZE_MAX the whole subtree is visited ('#'). */
static void walk__kids(struct walk *w, const struct node *n, size_t pi, bool root)
{
    size_t count, saved = w->len;
    struct node **kids = node__sorted(n, &count);
    if (kids == NULL && n->nkids > 0) {
        w->stop = true;
        return;
    }
    for (size_t i = 0; i < count && !w->stop; i++) {
        const struct node *c = kids[i];
        if (root && c->nlen > 0 && c->name[0] == '$')
            continue; /* a wildcard never matches a $-key (rule 5) */
        if (walk__push(w, c, root) != 0) {
            w->stop = true;
            break;
        }
        if (walk__reaches_cursor(w)) {
            if (pi == SIZE_MAX) {
                walk__emit(w, c);
                walk__kids(w, c, SIZE_MAX, false);
            } else
                walk__at(w, c, pi, false);
        }
        w->len = saved;
    }
    free(kids);
}

/* `n` matched the pattern up to the segment at `pi` (> plen: all of it). */
static void walk__at(struct walk *w, const struct node *n, size_t pi, bool root)
{
    if (w->stop)
        return;
    if (pi > w->plen) {
        walk__emit(w, n);
        return;
    }
    size_t pe = tree__seg_end(w->pat, w->plen, pi);
    if (pe - pi == 1 && w->pat[pi] == '#') {
        if (!root)
            walk__emit(w, n); /* "a/#" matches "a" */
        walk__kids(w, n, SIZE_MAX, root);
    } else if (pe - pi == 1 && w->pat[pi] == '+') {
        walk__kids(w, n, pe + 1, root);
    } else {
        const struct node *c = node__child(n, w->pat + pi, pe - pi);
        size_t saved = w->len;
        if (c == NULL)
            return;
        if (walk__push(w, c, root) != 0) {
            w->stop = true;
            return;
        }
        if (walk__reaches_cursor(w))
            walk__at(w, c, pe + 1, false);
        w->len = saved;
    }
}

void tree__walk(const struct tree *t, const char *pat, size_t plen, const char *after,
                size_t alen, size_t limit, store_visit_fn visit, void *arg, bool *more)
{
    struct walk w = {
        .pat = pat,
        .plen = plen,
        .after = after,
        .alen = alen,
        .limit = limit,
        .visit = visit,
        .arg = arg,
    };
    walk__at(&w, &t->root, 0, true);
    free(w.buf);
    *more = w.more;
}

int tree__ls(const struct tree *t, bool root, const char *key, size_t klen, store_child_fn child,
             void *arg)
{
    const struct node *n = root ? &t->root : tree__find(t, key, klen);
    if (n == NULL)
        return STORE_ENOTFOUND;
    size_t count;
    struct node **kids = node__sorted(n, &count);
    if (kids == NULL && n->nkids > 0)
        return STORE_EINTERNAL;
    for (size_t i = 0; i < count; i++)
        child(arg, kids[i]->name, kids[i]->nlen, kids[i]->entry != NULL, kids[i]->nkids > 0);
    free(kids);
    return STORE_OK;
}
