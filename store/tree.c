/*
 * tree.c — the in-memory key tree: one level per segment, as mosquitto's
 * retain tree, with children in a hash table; path-compressed, so a run of
 * segments with nothing else on the way is one node ("17/temp").
 *
 * A node's name is one or more segments joined by '/'. Its children are
 * hashed by their first segment: a plain chain while there are few of them,
 * a table of 2^kbits bucket chains once there are more than TREE_CHAIN_MAX;
 * each node links to its next sibling, so a child costs no allocation beyond
 * itself. The root has an empty name and never holds an entry (every key has
 * a segment).
 *
 * Most nodes are leaves (a million `site/NN/devN/temp` keys are a million
 * "devN/temp" leaves under 100 nodes), so a node is two shapes: a leaf is
 * 20 bytes and its name (32 in all for "dev1234/temp"); an *inner* node has
 * a `struct node_kids` (its children and `below`) just before it, in the
 * same allocation. A leaf that gets a child is copied into an inner node in
 * its place (node__grow); an inner node that loses its children stays one.
 *
 * A *position* is a node and a segment boundary in its name: (n, end) stands
 * for the key made of the names on the way down and n->name[0..end). Inside
 * a name a position has exactly one child, the next segment, and no entry;
 * at the end of the name it has n's entry and n's children. Pattern walks
 * and ls move by positions, one segment at a time, so compression is
 * invisible to them.
 *
 * Invariants:
 *   1. every node but the root holds an entry or has children;
 *   2. no two children of a node share a first segment;
 *   3. `count` is the number of nodes holding an entry;
 *   4. a node's `below` is the number of entries in the nodes under it (so
 *      ls tells a folder's size without walking it); only the nodes above
 *      a key that appears or goes change (tree__below); a leaf's is 0;
 *   5. a node with children is inner, and the root is; nothing outlives the
 *      write lock pointing at a node but the sort cache, which `shape`
 *      (bumped whenever a node is added, removed or moved) invalidates.
 * A node with no entry and one child may be merged with it (tree__del does,
 * when memory allows); nothing depends on that being done.
 * The caller holds the store's lock: read for lookups, write for changes.
 */
#include "store_int.h"

#include <assert.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define TREE_CHAIN_MAX 8
#define TREE_LOAD      2   /* children per bucket before the table grows */
#define SORT_CACHE     8   /* sorted child arrays kept for wide nodes */
#define SORT_CACHE_MIN 256 /* children from which a node's sort is kept */
#define SLAB_PAGE      (64 * 1024)
#define SLAB_MAX       512 /* nodes above this many bytes come from malloc */

struct node {
    struct node *next;         /* the next sibling in the parent's chain or bucket */
    struct store_entry *entry; /* owned reference, or NULL */
    uint16_t nlen;
    uint8_t cls;   /* size / 8 for a slab node, 0 for a malloc'd one */
    uint8_t inner; /* a struct node_kids comes just before (invariant 5) */
    char name[];
};

/* What an inner node has besides a leaf's fields, in front of it. */
struct node_kids {
    union {
        struct node *chain;    /* kbits == 0 */
        struct node **buckets; /* kbits > 0 */
    } kids;
    uint32_t nkids;
    uint32_t below; /* invariant 4 */
    uint8_t kbits;
};

_Static_assert(sizeof(struct node_kids) % 8 == 0, "a node after its kids is aligned");

/* Nodes come from pages carved in multiples of 8 bytes, each size with its
 * free list: only the tree's writer (under the write lock) allocates and
 * frees them, and a node costs its size, not malloc's header and rounding. */
struct slab_page {
    struct slab_page *next;
    char mem[];
};

struct slab_free {
    struct slab_free *next;
};

/* Walks and ls sort a node's children; for wide nodes the result is kept
 * until the tree's shape (which nodes exist) changes, so paging through a
 * node of 100,000 children does not sort them again for every page. */
struct sort_cache {
    const struct node *n;
    uint64_t shape;
    struct node **kids;
    size_t count;
    uint64_t used;
};

struct tree {
    struct node *root;
    uint64_t count;
    uint64_t shape;             /* bumped whenever a node is added, removed or moved */
    pthread_mutex_t cache_lock; /* readers share the cache */
    struct sort_cache cache[SORT_CACHE];
    uint64_t clock;
    struct slab_page *pages;
    char *bump; /* the free end of the newest page */
    size_t left;
    struct slab_free *free[SLAB_MAX / 8 + 1];
};

static size_t seg_end(const char *s, size_t len, size_t from)
{
    const char *slash = memchr(s + from, '/', len - from);
    return slash ? (size_t)(slash - s) : len;
}

static uint32_t node__hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static size_t node__first_len(const struct node *n)
{
    return seg_end(n->name, n->nlen, 0);
}

/* The children and `below` of an inner node. */
static struct node_kids *node__k(const struct node *n)
{
    assert(n->inner);
    return (struct node_kids *)(void *)((char *)(uintptr_t)n - sizeof(struct node_kids));
}

static uint32_t node__nkids(const struct node *n)
{
    return n->inner ? node__k(n)->nkids : 0;
}

static uint32_t node__below(const struct node *n)
{
    return n->inner ? node__k(n)->below : 0;
}

static struct node **node__slot(struct node *n, const char *seg, size_t len)
{
    struct node_kids *k = node__k(n);
    if (k->kbits == 0)
        return &k->kids.chain;
    return &k->kids.buckets[node__hash(seg, len) & ((1u << k->kbits) - 1)];
}

/* Whether `seg` (one segment) is the first segment of c's name. */
static bool node__starts_with(const struct node *c, const char *seg, size_t len)
{
    return c->nlen >= len && memcmp(c->name, seg, len) == 0 &&
           (c->nlen == len || c->name[len] == '/');
}

/* The child whose first segment is `seg`, or NULL. */
static struct node *node__child(const struct node *n, const char *seg, size_t len)
{
    if (!n->inner)
        return NULL;
    struct node *c = *node__slot((struct node *)n, seg, len);
    for (; c != NULL; c = c->next)
        if (node__starts_with(c, seg, len))
            return c;
    return NULL;
}

static void node__link(struct node *n, struct node *c)
{
    struct node **slot = node__slot(n, c->name, node__first_len(c));
    c->next = *slot;
    *slot = c;
}

/* Rehashes into 2^bits buckets. Returns 0, or -1 when out of memory. */
static int node__rehash(struct node *n, uint8_t bits)
{
    struct node_kids *k = node__k(n);
    struct node **table = calloc((size_t)1 << bits, sizeof *table);
    struct node *all = NULL;
    if (table == NULL)
        return -1;
    size_t nb = k->kbits ? (size_t)1 << k->kbits : 1;
    for (size_t b = 0; b < nb; b++) {
        struct node *c = k->kbits ? k->kids.buckets[b] : k->kids.chain;
        while (c != NULL) {
            struct node *next = c->next;
            c->next = all;
            all = c;
            c = next;
        }
    }
    if (k->kbits)
        free(k->kids.buckets);
    k->kids.buckets = table;
    k->kbits = bits;
    while (all != NULL) {
        struct node *next = all->next;
        node__link(n, all);
        all = next;
    }
    return 0;
}

/* A node with room for a `len`-byte name, inner or a leaf; only cls and
 * inner are set. */
static struct node *node__alloc(struct tree *t, size_t len, bool inner)
{
    size_t pre = inner ? sizeof(struct node_kids) : 0;
    size_t size = (pre + offsetof(struct node, name) + len + 7) & ~(size_t)7;
    char *mem;
    struct node *n;
    if (size > SLAB_MAX) {
        if ((mem = malloc(size)) == NULL)
            return NULL;
        n = (struct node *)(void *)(mem + pre);
        n->cls = 0;
        n->inner = inner;
        return n;
    }
    size_t cls = size / 8;
    if (t->free[cls] != NULL) {
        mem = (char *)t->free[cls];
        t->free[cls] = t->free[cls]->next;
    } else {
        if (t->left < size) {
            struct slab_page *page = malloc(SLAB_PAGE);
            if (page == NULL)
                return NULL;
            page->next = t->pages;
            t->pages = page;
            t->bump = page->mem;
            t->left = SLAB_PAGE - offsetof(struct slab_page, mem);
        }
        mem = t->bump;
        t->bump += size;
        t->left -= size;
    }
    n = (struct node *)(void *)(mem + pre);
    n->cls = (uint8_t)cls;
    n->inner = inner;
    return n;
}

/* The start of n's allocation. */
static void *node__base(struct node *n)
{
    return (char *)n - (n->inner ? sizeof(struct node_kids) : 0);
}

static void node__release(struct tree *t, struct node *n)
{
    struct slab_free *f = node__base(n);
    if (n->cls == 0) {
        free(f);
        return;
    }
    f->next = t->free[n->cls];
    t->free[n->cls] = f;
}

static struct node *node__new(struct tree *t, const char *name, size_t len, bool inner)
{
    struct node *c = node__alloc(t, len, inner);
    if (c == NULL)
        return NULL;
    uint8_t cls = c->cls;
    memset(node__base(c), 0, (inner ? sizeof(struct node_kids) : 0) + offsetof(struct node, name));
    c->cls = cls;
    c->inner = inner;
    c->nlen = (uint16_t)len;
    memcpy(c->name, name, len);
    return c;
}

/* Adds `c` under inner `n`, growing n's table first when it is full. */
static int node__add(struct node *n, struct node *c)
{
    struct node_kids *k = node__k(n);
    if (k->nkids >= TREE_CHAIN_MAX && k->nkids >= TREE_LOAD * ((uint32_t)1 << k->kbits) &&
        node__rehash(n, k->kbits ? (uint8_t)(k->kbits + 1) : 3) != 0)
        return -1;
    node__link(n, c);
    k->nkids++;
    return 0;
}

/* The pointer that links `c` in its parent's chain or bucket. */
static struct node **node__link_of(struct node *n, struct node *c)
{
    struct node **p = node__slot(n, c->name, node__first_len(c));
    while (*p != c)
        p = &(*p)->next;
    return p;
}

/* Puts `m` in c's place under `parent` (m's first segment is c's: the same
 * chain or bucket). c is left for the caller to release. */
static void node__replace(struct tree *t, struct node *parent, struct node *c, struct node *m)
{
    struct node **link = node__link_of(parent, c);
    m->next = c->next;
    *link = m;
    t->shape++; /* invariant 5: the sort cache may hold c */
}

static void node__unlink(struct node *n, struct node *c)
{
    struct node_kids *k = node__k(n);
    *node__link_of(n, c) = c->next;
    if (--k->nkids == 0 && k->kbits) {
        free(k->kids.buckets);
        k->kids.chain = NULL;
        k->kbits = 0;
    }
}

/* The only child of a node with one child. */
static struct node *node__only_kid(const struct node *n)
{
    const struct node_kids *k = node__k(n);
    if (k->kbits == 0)
        return k->kids.chain;
    for (size_t b = 0;; b++)
        if (k->kids.buckets[b] != NULL)
            return k->kids.buckets[b];
}

/* Releases what the nodes below `n` hold; their pages go with the tree. */
static void node__free_kids(struct node *n)
{
    if (!n->inner)
        return;
    struct node_kids *k = node__k(n);
    size_t nb = k->kbits ? (size_t)1 << k->kbits : 1;
    for (size_t b = 0; b < nb; b++) {
        struct node *c = k->kbits ? k->kids.buckets[b] : k->kids.chain;
        while (c != NULL) {
            struct node *next = c->next;
            node__free_kids(c);
            store_entry_unref(c->entry);
            if (c->cls == 0)
                free(node__base(c));
            c = next;
        }
    }
    if (k->kbits)
        free(k->kids.buckets);
}

static int node__name_cmp(const void *a, const void *b)
{
    const struct node *x = *(struct node *const *)a, *y = *(struct node *const *)b;
    /* First segments differ (invariant 2): segment order sorts by them. */
    return store_key_cmp(x->name, x->nlen, y->name, y->nlen);
}

/* The children sorted by first segment, in a new array (NULL when there are
 * none or out of memory; `*count` is the count). */
static struct node **node__sorted(const struct node *n, size_t *count)
{
    *count = 0;
    if (node__nkids(n) == 0)
        return NULL;
    const struct node_kids *k = node__k(n);
    struct node **v = malloc(k->nkids * sizeof *v);
    if (v == NULL)
        return NULL;
    size_t i = 0, nb = k->kbits ? (size_t)1 << k->kbits : 1;
    for (size_t b = 0; b < nb; b++)
        for (struct node *c = k->kbits ? k->kids.buckets[b] : k->kids.chain; c; c = c->next)
            v[i++] = c;
    qsort(v, i, sizeof *v, node__name_cmp);
    *count = i;
    return v;
}

struct tree *tree__new(void)
{
    struct tree *t = calloc(1, sizeof(struct tree));
    if (t == NULL)
        return NULL;
    if ((t->root = node__new(t, "", 0, true)) == NULL) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->cache_lock, NULL);
    return t;
}

/* The children of `n` sorted, in a new array the caller frees (NULL when
 * there are none or out of memory). */
static struct node **tree__sorted(const struct tree *ct, const struct node *n, size_t *count)
{
    struct tree *t = (struct tree *)ct; /* the cache changes under readers too */
    if (node__nkids(n) < SORT_CACHE_MIN)
        return node__sorted(n, count);
    struct node **v = malloc(node__nkids(n) * sizeof *v);
    if (v == NULL)
        return NULL;
    pthread_mutex_lock(&t->cache_lock);
    struct sort_cache *lru = &t->cache[0];
    for (size_t i = 0; i < SORT_CACHE; i++) {
        struct sort_cache *e = &t->cache[i];
        if (e->n == n && e->shape == t->shape && e->kids != NULL) {
            memcpy(v, e->kids, e->count * sizeof *v);
            *count = e->count;
            e->used = ++t->clock;
            pthread_mutex_unlock(&t->cache_lock);
            return v;
        }
        if (e->used < lru->used)
            lru = e;
    }
    pthread_mutex_unlock(&t->cache_lock);
    struct node **sorted = node__sorted(n, count);
    if (sorted == NULL) {
        free(v);
        return NULL;
    }
    memcpy(v, sorted, *count * sizeof *v);
    pthread_mutex_lock(&t->cache_lock);
    free(lru->kids);
    *lru = (struct sort_cache){n, t->shape, sorted, *count, ++t->clock};
    pthread_mutex_unlock(&t->cache_lock);
    return v;
}

void tree__free(struct tree *t)
{
    if (t == NULL)
        return;
    node__free_kids(t->root);
    for (size_t i = 0; i < SORT_CACHE; i++)
        free(t->cache[i].kids);
    pthread_mutex_destroy(&t->cache_lock);
    while (t->pages != NULL) {
        struct slab_page *next = t->pages->next;
        free(t->pages);
        t->pages = next;
    }
    free(t);
}

uint64_t tree__count(const struct tree *t)
{
    return t->count;
}

/* ---- positions ---- */

struct pos {
    const struct node *n;
    size_t end; /* a segment boundary of n->name: an index of '/' or nlen */
};

static bool pos__at_node(struct pos p)
{
    return p.end == p.n->nlen;
}

static const struct store_entry *pos__entry(struct pos p)
{
    return pos__at_node(p) ? p.n->entry : NULL;
}

static bool pos__has_kids(struct pos p)
{
    return !pos__at_node(p) || node__nkids(p.n) > 0;
}

/* The child of `p` whose segment is `seg`; false when there is none. */
static bool pos__child(struct pos p, const char *seg, size_t len, struct pos *out)
{
    if (!pos__at_node(p)) {
        size_t from = p.end + 1, e = seg_end(p.n->name, p.n->nlen, from);
        if (e - from != len || memcmp(p.n->name + from, seg, len) != 0)
            return false;
        *out = (struct pos){p.n, e};
        return true;
    }
    const struct node *c = node__child(p.n, seg, len);
    if (c == NULL)
        return false;
    *out = (struct pos){c, len};
    return true;
}

/* The position of `key`; false when no key starts with it. */
static bool tree__pos(const struct tree *t, const char *key, size_t klen, struct pos *out)
{
    struct pos p = {t->root, 0};
    for (size_t i = 0;;) {
        size_t e = seg_end(key, klen, i);
        if (!pos__child(p, key + i, e - i, &p))
            return false;
        if (e == klen) {
            *out = p;
            return true;
        }
        i = e + 1;
    }
}

/* Calls fn(arg, child, segment, seglen) for each child of `p` in segment
 * order. Returns -1 when out of memory. */
typedef void (*pos_kid_fn)(void *arg, struct pos kid, const char *seg, size_t len);
static int pos__kids(const struct tree *t, struct pos p, pos_kid_fn fn, void *arg)
{
    if (!pos__at_node(p)) {
        size_t from = p.end + 1, e = seg_end(p.n->name, p.n->nlen, from);
        fn(arg, (struct pos){p.n, e}, p.n->name + from, e - from);
        return 0;
    }
    size_t count;
    struct node **kids = tree__sorted(t, p.n, &count);
    if (kids == NULL && node__nkids(p.n) > 0)
        return -1;
    for (size_t i = 0; i < count; i++) {
        size_t e = node__first_len(kids[i]);
        fn(arg, (struct pos){kids[i], e}, kids[i]->name, e);
    }
    free(kids);
    return 0;
}

struct store_entry *tree__get(const struct tree *t, const char *key, size_t klen)
{
    struct pos p;
    return tree__pos(t, key, klen, &p) ? (struct store_entry *)pos__entry(p) : NULL;
}

/* ---- changes ---- */

/* The length of the longest run of whole segments that `a` and `b` both
 * start with (0 when even the first differs). */
static size_t common_segments(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen, i = 0, common = 0;
    while (i < n && a[i] == b[i]) {
        if (a[i] == '/')
            common = i;
        i++;
    }
    if (i == n && (alen == blen || (alen > n ? a[n] : b[n]) == '/'))
        common = n;
    return common;
}

/* Splits `c`, a child of `parent`, after `at` bytes of its name (at least
 * its first segment): the head takes c's place and one new child the tail,
 * with c's entry and children. An inner c keeps the head in place (so its
 * parent's link stays valid); a leaf is replaced by a new inner head and
 * released. Returns the head, or NULL (nothing changed) when out of memory. */
static struct node *node__split(struct tree *t, struct node *parent, struct node *c, size_t at)
{
    bool kids = node__nkids(c) > 0;
    struct node *tail = node__new(t, c->name + at + 1, c->nlen - at - 1, kids);
    struct node *head = c;
    if (tail == NULL)
        return NULL;
    if (!c->inner) {
        if ((head = node__new(t, c->name, at, true)) == NULL) {
            node__release(t, tail);
            return NULL;
        }
        node__replace(t, parent, c, head);
    }
    if (kids) {
        struct node_kids *tk = node__k(tail), *ck = node__k(c);
        tk->kids = ck->kids;
        tk->nkids = ck->nkids;
        tk->kbits = ck->kbits;
        tk->below = ck->below;
    }
    tail->entry = c->entry;
    uint32_t below = node__below(c) + (c->entry != NULL); /* the same keys, now all in tail */
    struct node_kids *hk = node__k(head);
    head->nlen = (uint16_t)at;
    head->entry = NULL;
    hk->below = below;
    hk->kids.chain = tail;
    tail->next = NULL;
    hk->nkids = 1;
    hk->kbits = 0;
    if (head != c)
        node__release(t, c);
    return head;
}

/* Copies leaf `c`, a child of `parent`, into an inner node in its place, so
 * that it can take a child; releases c. Returns the copy, or NULL (nothing
 * changed) when out of memory. */
static struct node *node__grow(struct tree *t, struct node *parent, struct node *c)
{
    struct node *m = node__new(t, c->name, c->nlen, true);
    if (m == NULL)
        return NULL;
    m->entry = c->entry;
    node__replace(t, parent, c, m);
    node__release(t, c);
    return m;
}

/* Invariant 4 when a key appears (+1) or goes (-1): every node on the way
 * down to it, the root too, counts one more or less. The way is kept as it
 * is walked, up to TREE_WAY nodes; a deeper key is walked again. */
#define TREE_WAY 32
struct way {
    struct node *n[TREE_WAY];
    size_t len;
    bool deep;
};

static void way__add(struct way *w, struct node *n)
{
    if (w->len < TREE_WAY)
        w->n[w->len++] = n;
    else
        w->deep = true;
}

static void tree__below(struct tree *t, const struct way *w, const char *key, size_t klen,
                        int delta)
{
    if (!w->deep) {
        for (size_t i = 0; i < w->len; i++)
            node__k(w->n[i])->below += (uint32_t)delta;
        return;
    }
    struct node *n = t->root; /* `key` ends at a node; those above are inner */
    for (;;) {
        node__k(n)->below += (uint32_t)delta;
        n = node__child(n, key, seg_end(key, klen, 0));
        if (n->nlen == klen)
            return;
        key += n->nlen + 1;
        klen -= n->nlen + 1;
    }
}

int tree__set(struct tree *t, const char *key, size_t klen, struct store_entry *e,
              struct store_entry **old)
{
    struct node *n = t->root; /* inner, as each n below */
    const char *rem = key;
    size_t rlen = klen;
    struct way way = {.n = {n}, .len = 1};

    *old = NULL;
    for (;;) {
        struct node *c = node__child(n, rem, seg_end(rem, rlen, 0));
        if (c == NULL) {
            if ((c = node__new(t, rem, rlen, false)) == NULL)
                return STORE_EINTERNAL;
            if (node__add(n, c) != 0) {
                node__release(t, c);
                return STORE_EINTERNAL;
            }
            c->entry = e;
            t->count++;
            t->shape++;
            tree__below(t, &way, key, klen, 1);
            return STORE_OK;
        }
        /* c starts with rem's first segment; keep what they share. */
        size_t common = common_segments(c->name, c->nlen, rem, rlen);
        if (common < c->nlen) {
            if ((c = node__split(t, n, c, common)) == NULL)
                return STORE_EINTERNAL;
            t->shape++;
        }
        if (common == rlen) {
            *old = c->entry;
            c->entry = e;
            if (*old == NULL) {
                t->count++;
                tree__below(t, &way, key, klen, 1);
            }
            return STORE_OK;
        }
        if (!c->inner && (c = node__grow(t, n, c)) == NULL)
            return STORE_EINTERNAL;
        n = c;
        way__add(&way, c);
        rem += common + 1;
        rlen -= common + 1;
    }
}

/* Merges `n` (no entry, one child) with its child into one node that takes
 * n's place under `parent`, and frees n, its bucket table (it keeps one
 * after having had more than TREE_CHAIN_MAX children) and the child.
 * Nothing happens when out of memory. */
static void node__merge(struct tree *t, struct node *parent, struct node *n)
{
    struct node *kid = node__only_kid(n);
    size_t len = (size_t)n->nlen + 1 + kid->nlen;
    bool inner = node__nkids(kid) > 0;
    if (len > UINT16_MAX)
        return;
    struct node *m = node__alloc(t, len, inner);
    if (m == NULL)
        return;
    memcpy(m->name, n->name, n->nlen);
    m->name[n->nlen] = '/';
    memcpy(m->name + n->nlen + 1, kid->name, kid->nlen);
    m->nlen = (uint16_t)len;
    m->entry = kid->entry;
    if (inner)
        *node__k(m) = *node__k(kid);
    node__replace(t, parent, n, m); /* same first segment: same bucket */
    /* n's one child had been one of many: its table goes with it (the
     * kid's table, if any, is m's now). */
    if (node__k(n)->kbits)
        free(node__k(n)->kids.buckets);
    node__release(t, kid);
    node__release(t, n);
}

struct store_entry *tree__del(struct tree *t, const char *key, size_t klen)
{
    struct node *n = t->root, *parent = NULL, *grand = NULL;
    const char *rem = key;
    size_t rlen = klen;
    struct way way = {.n = {n}, .len = 1};

    for (;;) {
        struct node *c = node__child(n, rem, seg_end(rem, rlen, 0));
        if (c == NULL || c->nlen > rlen || memcmp(c->name, rem, c->nlen) != 0 ||
            (c->nlen < rlen && rem[c->nlen] != '/'))
            return NULL;
        grand = parent;
        parent = n;
        n = c;
        if (c->nlen == rlen)
            break;
        way__add(&way, c);
        rem += c->nlen + 1;
        rlen -= c->nlen + 1;
    }
    struct store_entry *old = n->entry;
    if (old == NULL)
        return NULL;
    tree__below(t, &way, key, klen, -1); /* while the way down is as it was */
    n->entry = NULL;
    t->count--;
    t->shape++;
    if (node__nkids(n) == 0) {
        /* Invariant 1: n goes, and its parent may be left with one child. */
        node__unlink(parent, n);
        node__release(t, n);
        if (grand != NULL && parent->entry == NULL && node__nkids(parent) == 1)
            node__merge(t, grand, parent);
    } else if (node__nkids(n) == 1)
        node__merge(t, parent, n);
    return old;
}

/* ---- pattern walks in key order ---- */

struct walk {
    const struct tree *t;
    const char *pat;
    size_t plen;
    const struct store_filter *filter; /* NULL: every key */
    const char *after;                 /* NULL: no cursor */
    size_t alen;
    size_t limit, count; /* count: the visited (kept) ones */
    bool more, stop;
    store_visit_fn visit;
    void *arg;
    char *buf; /* the key of the position being visited */
    size_t len, cap;
};

static int walk__push(struct walk *w, const char *seg, size_t len, bool root)
{
    size_t need = w->len + 1 + len;
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
    memcpy(w->buf + w->len, seg, len);
    w->len += len;
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

static void walk__emit(struct walk *w, struct pos p)
{
    const struct store_entry *e = pos__entry(p);
    if (e == NULL || w->stop)
        return;
    if (w->after && store_key_cmp(w->buf, w->len, w->after, w->alen) <= 0)
        return;
    if (w->filter != NULL && !w->filter->keep(w->filter->arg, w->buf, w->len))
        return; /* neither visited nor counted: the cursor stays a kept key */
    if (w->count == w->limit) {
        w->more = true;
        w->stop = true;
        return;
    }
    w->count++;
    if (!w->visit(w->arg, w->buf, w->len, e)) {
        w->more = true;
        w->stop = true;
    }
}

static void walk__at(struct walk *w, struct pos p, size_t pi, bool root);

struct walk__kids_ctx {
    struct walk *w;
    size_t pi; /* as for walk__at; SIZE_MAX: the whole subtree ('#') */
    bool root;
    size_t saved;
};

static void walk__kid(void *arg, struct pos kid, const char *seg, size_t len);

static void walk__kids(struct walk *w, struct pos p, size_t pi, bool root)
{
    struct walk__kids_ctx k = {w, pi, root, w->len};
    if (!w->stop && pos__kids(w->t, p, walk__kid, &k) != 0)
        w->stop = true;
}

static void walk__kid(void *arg, struct pos kid, const char *seg, size_t len)
{
    struct walk__kids_ctx *k = arg;
    struct walk *w = k->w;
    if (w->stop || (k->root && len > 0 && seg[0] == '$'))
        return; /* a wildcard never matches a $-key (key.c, rule 5) */
    if (walk__push(w, seg, len, k->root) != 0) {
        w->stop = true;
        return;
    }
    if (walk__reaches_cursor(w)) {
        if (k->pi == SIZE_MAX) {
            walk__emit(w, kid);
            walk__kids(w, kid, SIZE_MAX, false);
        } else
            walk__at(w, kid, k->pi, false);
    }
    w->len = k->saved;
}

/* `p` matched the pattern up to the segment at `pi` (> plen: all of it). */
static void walk__at(struct walk *w, struct pos p, size_t pi, bool root)
{
    if (w->stop)
        return;
    if (pi > w->plen) {
        walk__emit(w, p);
        return;
    }
    size_t pe = seg_end(w->pat, w->plen, pi);
    if (pe - pi == 1 && w->pat[pi] == '#') {
        if (!root)
            walk__emit(w, p); /* "a/#" matches "a" */
        walk__kids(w, p, SIZE_MAX, root);
    } else if (pe - pi == 1 && w->pat[pi] == '+') {
        walk__kids(w, p, pe + 1, root);
    } else {
        struct pos c;
        size_t saved = w->len;
        if (!pos__child(p, w->pat + pi, pe - pi, &c))
            return;
        if (walk__push(w, w->pat + pi, pe - pi, root) != 0) {
            w->stop = true;
            return;
        }
        if (walk__reaches_cursor(w))
            walk__at(w, c, pe + 1, false);
        w->len = saved;
    }
}

void tree__walk(const struct tree *t, const char *pat, size_t plen,
                const struct store_filter *filter, const char *after, size_t alen, size_t limit,
                store_visit_fn visit, void *arg, bool *more)
{
    struct walk w = {
        .t = t,
        .pat = pat,
        .plen = plen,
        .filter = filter,
        .after = after,
        .alen = alen,
        .limit = limit,
        .visit = visit,
        .arg = arg,
    };
    walk__at(&w, (struct pos){t->root, 0}, 0, true);
    free(w.buf);
    *more = w.more;
}

struct ls_ctx {
    store_child_fn child;
    void *arg;
};

static void ls__kid(void *arg, struct pos kid, const char *seg, size_t len)
{
    struct ls_ctx *l = arg;
    /* Inside a name, below the position are the node's entry and its own. */
    uint64_t below = node__below(kid.n) + (pos__at_node(kid) ? 0 : kid.n->entry != NULL);
    l->child(l->arg, seg, len, pos__entry(kid) != NULL, pos__has_kids(kid), below);
}

int tree__ls(const struct tree *t, bool root, const char *key, size_t klen, store_child_fn child,
             void *arg)
{
    struct pos p = {t->root, 0};
    struct ls_ctx l = {child, arg};
    if (!root && !tree__pos(t, key, klen, &p))
        return STORE_ENOTFOUND;
    return pos__kids(t, p, ls__kid, &l) == 0 ? STORE_OK : STORE_EINTERNAL;
}
