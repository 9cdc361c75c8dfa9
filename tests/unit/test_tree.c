/*
 * test_tree.c — the path-compressed key tree against a plain model: random
 * sets and deletes over keys that share prefixes, hold empty segments and
 * $-segments; after each step every lookup, pattern walk (with paging) and
 * ls must give what brute force over the model gives. And the layout of
 * leaves, inner nodes and entries: what each holds, and what a key costs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>

#include <cmocka.h>

#include "store_int.h"

#define MAX_KEYS 400

static const char *const segs[] = {"a", "b", "ab", "", "$s", "x!", "a/b"};

struct model {
    char keys[MAX_KEYS][64];
    bool present[MAX_KEYS];
    struct store_entry *entries[MAX_KEYS];
    size_t n;
};

static void make_keys(struct model *m, unsigned seed)
{
    srand(seed);
    while (m->n < MAX_KEYS) {
        char key[64] = "";
        int depth = 1 + rand() % 4;
        for (int d = 0; d < depth; d++) {
            if (d)
                strcat(key, "/");
            strcat(key, segs[rand() % 7]);
        }
        if (key[0] == '\0')
            continue; /* keys are never empty */
        bool dup = false;
        for (size_t i = 0; i < m->n && !dup; i++)
            dup = strcmp(m->keys[i], key) == 0;
        if (!dup)
            strcpy(m->keys[m->n++], key);
    }
}

struct seen {
    char keys[MAX_KEYS][64];
    const struct store_entry *entries[MAX_KEYS];
    size_t n;
};

static bool on_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct seen *s = arg;
    assert_true(s->n < MAX_KEYS && klen < 64);
    memcpy(s->keys[s->n], key, klen);
    s->keys[s->n][klen] = '\0';
    s->entries[s->n++] = e;
    return true;
}

static int cmp_key(const void *a, const void *b)
{
    return store_key_cmp(a, strlen(a), b, strlen(b));
}

static void check_walk(struct tree *t, const struct model *m, const char *pat)
{
    static char want[MAX_KEYS][64];
    size_t nwant = 0;
    for (size_t i = 0; i < m->n; i++)
        if (m->present[i] && store_pattern_match(pat, strlen(pat), m->keys[i], strlen(m->keys[i])))
            strcpy(want[nwant++], m->keys[i]);
    qsort(want, nwant, 64, cmp_key);

    /* In pages of 3, resuming after the last key of each page. */
    struct seen all = {0};
    char after[64] = "";
    bool more = true, first = true;
    while (more) {
        struct seen page = {0};
        tree__walk(t, pat, strlen(pat), NULL, first ? NULL : after, strlen(after), 3, on_visit,
                   &page, &more);
        first = false;
        for (size_t i = 0; i < page.n; i++)
            strcpy(all.keys[all.n++], page.keys[i]);
        if (page.n)
            strcpy(after, page.keys[page.n - 1]);
        else
            assert_false(more);
    }
    if (all.n != nwant)
        fail_msg("pattern '%s': %zu keys, expected %zu", pat, all.n, nwant);
    for (size_t i = 0; i < nwant; i++)
        if (strcmp(all.keys[i], want[i]) != 0)
            fail_msg("pattern '%s' #%zu: '%s', expected '%s'", pat, i, all.keys[i], want[i]);
}

struct kids {
    char names[MAX_KEYS][64];
    bool value[MAX_KEYS], has_kids[MAX_KEYS];
    uint64_t below[MAX_KEYS];
    size_t n;
};

static void on_child(void *arg, const char *name, size_t nlen, bool value, bool children,
                     uint64_t below)
{
    struct kids *k = arg;
    k->below[k->n] = below;
    memcpy(k->names[k->n], name, nlen);
    k->names[k->n][nlen] = '\0';
    k->value[k->n] = value;
    k->has_kids[k->n++] = children;
}

/* ls of `prefix` (NULL: the root) against the model. */
static void check_ls(struct tree *t, const struct model *m, const char *prefix)
{
    struct kids got = {0}, want = {0};
    size_t plen = prefix ? strlen(prefix) : 0;
    bool exists = prefix == NULL;
    for (size_t i = 0; i < m->n; i++) {
        const char *k = m->keys[i];
        if (!m->present[i])
            continue;
        const char *rest;
        if (prefix == NULL)
            rest = k;
        else if (strncmp(k, prefix, plen) == 0 && (k[plen] == '/' || k[plen] == '\0')) {
            exists = true;
            if (k[plen] == '\0')
                continue;
            rest = k + plen + 1;
        } else
            continue;
        size_t seg = strcspn(rest, "/");
        size_t j = 0;
        while (j < want.n && (strlen(want.names[j]) != seg || strncmp(want.names[j], rest, seg)))
            j++;
        if (j == want.n) {
            memcpy(want.names[j], rest, seg);
            want.names[j][seg] = '\0';
            want.n++;
        }
        if (rest[seg] == '\0')
            want.value[j] = true;
        else {
            want.has_kids[j] = true;
            want.below[j]++; /* a key under the child: the child's count */
        }
    }
    int err = tree__ls(t, prefix == NULL, prefix, plen, on_child, &got);
    if (!exists) {
        assert_int_equal(err, STORE_ENOTFOUND);
        return;
    }
    assert_int_equal(err, STORE_OK);
    assert_int_equal(got.n, want.n);
    for (size_t i = 0; i < got.n; i++) {
        size_t j = 0;
        while (j < want.n && strcmp(want.names[j], got.names[i]) != 0)
            j++;
        if (j == want.n)
            fail_msg("ls '%s': unexpected child '%s'", prefix ? prefix : "", got.names[i]);
        assert_int_equal(got.value[i], want.value[j]);
        assert_int_equal(got.has_kids[i], want.has_kids[j]);
        assert_int_equal(got.below[i], want.below[j]);
        if (i > 0)
            assert_true(store_key_cmp(got.names[i - 1], strlen(got.names[i - 1]), got.names[i],
                                      strlen(got.names[i])) < 0);
    }
}

static void check_all(struct tree *t, const struct model *m)
{
    static const char *const patterns[] = {"#",   "+",    "a/#", "+/+",  "a/+/b", "/#",
                                           "+/b", "$s/#", "a",   "ab/+", "a/b/#", "+/+/+/+"};
    uint64_t count = 0;
    for (size_t i = 0; i < m->n; i++) {
        const struct store_entry *e = tree__get(t, m->keys[i], strlen(m->keys[i]));
        assert_ptr_equal(e, m->present[i] ? m->entries[i] : NULL);
        count += m->present[i];
    }
    assert_int_equal(tree__count(t), count);
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++)
        check_walk(t, m, patterns[i]);
    check_ls(t, m, NULL);
    for (size_t i = 0; i < m->n; i += 7)
        check_ls(t, m, m->keys[i]);
    check_ls(t, m, "a");
    check_ls(t, m, "nope");
}

static void test_random_model(void **state)
{
    (void)state;
    for (unsigned seed = 1; seed <= 6; seed++) {
        struct model *m = calloc(1, sizeof *m);
        struct tree *t = tree__new();
        make_keys(m, seed);
        for (int step = 0; step < 1500; step++) {
            size_t i = (size_t)rand() % m->n;
            if (rand() % 3) {
                struct store_entry *e, *old;
                assert_int_equal(store_entry_new("v", 1, NULL, NULL, STORE_ORIGIN_HTTP, &e),
                                 STORE_OK);
                assert_int_equal(tree__set(t, m->keys[i], strlen(m->keys[i]), e, &old), STORE_OK);
                assert_ptr_equal(old, m->present[i] ? m->entries[i] : NULL);
                store_entry_unref(old);
                m->present[i] = true;
                m->entries[i] = e;
            } else {
                struct store_entry *old = tree__del(t, m->keys[i], strlen(m->keys[i]));
                assert_ptr_equal(old, m->present[i] ? m->entries[i] : NULL);
                store_entry_unref(old);
                m->present[i] = false;
                m->entries[i] = NULL;
            }
            if (step % 50 == 0)
                check_all(t, m);
        }
        check_all(t, m);
        /* Delete everything: the tree ends empty. */
        for (size_t i = 0; i < m->n; i++)
            store_entry_unref(tree__del(t, m->keys[i], strlen(m->keys[i])));
        assert_int_equal(tree__count(t), 0);
        struct kids none = {0};
        assert_int_equal(tree__ls(t, true, NULL, 0, on_child, &none), STORE_OK);
        assert_int_equal(none.n, 0);
        tree__free(t);
        free(m);
    }
}

static void test_wide_node(void **state)
{
    /* Enough children to go from a chain to a growing bucket table. */
    struct tree *t = tree__new();
    char key[32];
    (void)state;
    for (int i = 0; i < 5000; i++) {
        struct store_entry *e, *old;
        snprintf(key, sizeof key, "w/%d/t", i);
        assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
        assert_int_equal(tree__set(t, key, strlen(key), e, &old), STORE_OK);
        assert_null(old);
    }
    /* Wide enough for the sorted-children cache: a walk fills it, deletes
     * must invalidate it. */
    struct seen *first = calloc(1, sizeof *first);
    bool more;
    tree__walk(t, "w/+/t", 5, NULL, NULL, 0, 100, on_visit, first, &more);
    assert_true(more);
    assert_string_equal(first->keys[0], "w/0/t");
    for (int i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "w/%d/t", i);
        store_entry_unref(tree__del(t, key, strlen(key)));
    }
    struct seen *again = calloc(1, sizeof *again);
    tree__walk(t, "w/+/t", 5, NULL, NULL, 0, 100, on_visit, again, &more);
    assert_string_equal(again->keys[0], "w/1/t");    /* not the deleted w/0/t */
    assert_string_equal(again->keys[1], "w/1001/t"); /* segment order */
    free(first);
    free(again);
    assert_int_equal(tree__count(t), 2500);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "w/%d/t", i);
        assert_true((tree__get(t, key, strlen(key)) != NULL) == (i % 2 == 1));
    }
    tree__free(t);
}

/* Bytes the heap holds, blocks mapped on their own included (glibc; under
 * ASan a constant, and LeakSanitizer checks the same thing at exit). Freed
 * chunks that glibc keeps in its per-thread cache still count, hence the
 * slack of the checks below. */
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static void set_key(struct tree *t, const char *key)
{
    struct store_entry *e, *old;
    assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
    assert_int_equal(tree__set(t, key, strlen(key), e, &old), STORE_OK);
    assert_null(old);
}

static void del_key(struct tree *t, const char *key)
{
    struct store_entry *old = tree__del(t, key, strlen(key));
    assert_non_null(old);
    store_entry_unref(old);
}

/* A node that had more than TREE_CHAIN_MAX children has a bucket table;
 * deleting down to one child merges it with that child, and the table must
 * go with it: DELETE a/# after a/k1..a/k10 leaked 64 bytes (LeakSanitizer
 * sees it), after 100,000 keys 512 KiB (the heap's size sees it). Both ways
 * to a merge: the node's last but one child goes, or its own entry does. */
static void test_merge_frees_tables(void **state)
{
    static const struct {
        int keys;
        bool entry_at_a;
    } rounds[] = {{10, false}, {10, true}, {100000, false}, {100000, true}};
    char key[32];
    (void)state;
    /* Small entries come from pages entry.c keeps: fill them first, so that
     * only what the tree holds shows in the heap. */
    struct store_entry **warm = calloc(100001, sizeof *warm);
    for (size_t i = 0; i < 100001; i++)
        assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_HTTP, &warm[i]),
                         STORE_OK);
    for (size_t i = 0; i < 100001; i++)
        store_entry_unref(warm[i]);
    free(warm);
    for (size_t r = 0; r < sizeof rounds / sizeof rounds[0]; r++) {
        size_t before = heap_in_use();
        struct tree *t = tree__new();
        int n = rounds[r].keys;
        for (int i = 1; i <= n; i++) {
            snprintf(key, sizeof key, "a/k%d", i);
            set_key(t, key);
        }
        if (rounds[r].entry_at_a)
            set_key(t, "a");          /* no merge while a holds an entry */
        for (int i = 1; i < n; i++) { /* as DELETE a/# does, one by one */
            snprintf(key, sizeof key, "a/k%d", i);
            del_key(t, key);
        }
        if (rounds[r].entry_at_a)
            del_key(t, "a"); /* now a has no entry and one child: merged */
        snprintf(key, sizeof key, "a/k%d", n);
        del_key(t, key);
        assert_int_equal(tree__count(t), 0);
        tree__free(t);
        assert_true(heap_in_use() < before + 16 * 1024);
    }
}

/* The number of keys below each node (ls's `keys`) for keys deeper than
 * the way tree.c keeps as it walks (TREE_WAY nodes): the deep path walks
 * again. Every level of a 40-segment chain with a branch at each. */
static void test_below_deep_keys(void **state)
{
    char key[256] = "";
    size_t len = 0;
    struct tree *t = tree__new();
    (void)state;
    for (int depth = 1; depth <= 40; depth++) {
        len += (size_t)snprintf(key + len, sizeof key - len, depth > 1 ? "/s%d" : "s%d", depth);
        char side[300];
        snprintf(side, sizeof side, "%s/x", key);
        set_key(t, side); /* a key beside the chain at every level */
    }
    set_key(t, key); /* the deepest */
    struct kids root = {0};
    assert_int_equal(tree__ls(t, true, NULL, 0, on_child, &root), STORE_OK);
    assert_int_equal(root.n, 1);
    assert_int_equal(root.below[0], 41);
    /* Below s1/…/s39: s40 (with its x and its own entry) and x. */
    char at[256];
    memcpy(at, key, len);
    at[strrchr(key, '/') - key] = '\0';
    struct kids k = {0};
    assert_int_equal(tree__ls(t, false, at, strlen(at), on_child, &k), STORE_OK);
    assert_int_equal(k.n, 2);
    assert_string_equal(k.names[0], "s40");
    assert_int_equal(k.below[0], 1);
    del_key(t, key);
    del_key(t, "s1/x");
    struct kids after = {0};
    assert_int_equal(tree__ls(t, true, NULL, 0, on_child, &after), STORE_OK);
    assert_int_equal(after.below[0], 39);
    /* s40 holds nothing now, so it was merged with its x ("s40/x"): ls
     * still shows s40, with its x below, from inside that node's name. */
    memset(&k, 0, sizeof k);
    assert_int_equal(tree__ls(t, false, at, strlen(at), on_child, &k), STORE_OK);
    assert_string_equal(k.names[0], "s40");
    assert_false(k.value[0]);
    assert_int_equal(k.below[0], 1);
    tree__free(t);
}

/* A leaf that gets a child is copied into an inner node in its place, and
 * a leaf split in the middle of its name gets an inner head: every key
 * keeps its entry, ls its counts, and a walk its order. */
static void test_leaf_grows(void **state)
{
    struct tree *t = tree__new();
    (void)state;
    set_key(t, "s/01/dev7/temp");               /* one leaf "s/01/dev7/temp" */
    set_key(t, "s/01/dev7/temp/raw");           /* the leaf takes a child */
    set_key(t, "s/01/dev7/hum");                /* a split: "s/01/dev7" + two */
    set_key(t, "s/01/dev7/temp/raw/x");         /* a leaf grows again */
    struct store_entry *temp = tree__get(t, "s/01/dev7/temp", 14);
    assert_non_null(temp);
    assert_non_null(tree__get(t, "s/01/dev7/temp/raw", 18));
    assert_non_null(tree__get(t, "s/01/dev7/hum", 13));
    assert_null(tree__get(t, "s/01/dev7", 9));
    assert_int_equal(tree__count(t), 4);
    struct kids k = {0};
    assert_int_equal(tree__ls(t, false, "s/01/dev7", 9, on_child, &k), STORE_OK);
    assert_int_equal(k.n, 2);
    assert_string_equal(k.names[0], "hum");
    assert_int_equal(k.below[0], 0);
    assert_string_equal(k.names[1], "temp");
    assert_true(k.value[1]);
    assert_int_equal(k.below[1], 2);
    struct seen *all = calloc(1, sizeof *all);
    bool more;
    tree__walk(t, "#", 1, NULL, NULL, 0, 100, on_visit, all, &more);
    assert_int_equal(all->n, 4);
    assert_string_equal(all->keys[0], "s/01/dev7/hum");
    assert_string_equal(all->keys[3], "s/01/dev7/temp/raw/x");
    free(all);
    /* Back down: the inner nodes left with one child merge, entries stay. */
    del_key(t, "s/01/dev7/temp/raw");
    del_key(t, "s/01/dev7/hum");
    assert_ptr_equal(tree__get(t, "s/01/dev7/temp", 14), temp);
    assert_non_null(tree__get(t, "s/01/dev7/temp/raw/x", 20));
    struct kids root = {0};
    assert_int_equal(tree__ls(t, true, NULL, 0, on_child, &root), STORE_OK);
    assert_int_equal(root.below[0], 2);
    tree__free(t);
}

/* The entry's fields back as they went in, for each shape of entry: a
 * builtin type or a custom one, labels or none, an expiry or none. */
static void test_entry_layout(void **state)
{
    static const char *const types[] = {NULL, "text/plain; charset=utf-8",
                                        "application/octet-stream", "application/x-thing"};
    static const char *const labels[] = {NULL, "{\"room\":\"kitchen\"}"};
    static const char *const values[] = {"21.5", "{\"v\":21.5}", "",
                                         "a reading long enough to go to malloc, not a slab"};
    (void)state;
    for (size_t ti = 0; ti < 4; ti++)
        for (size_t li = 0; li < 2; li++)
            for (size_t vi = 0; vi < 4; vi++)
                for (int64_t expires = 0; expires <= 1; expires++) {
                    struct store_entry *e;
                    size_t len;
                    const char *v = values[vi];
                    assert_int_equal(store_entry_new(v, strlen(v), types[ti], labels[li],
                                                     STORE_ORIGIN_MQTT, &e),
                                     STORE_OK);
                    assert_int_equal(store_entry_expire_at(&e, expires * 1700000000000000),
                                     STORE_OK);
                    entry__stamp(e, 42, 1700000000000001);
                    assert_memory_equal(store_entry_value(e, &len), v, strlen(v));
                    assert_int_equal(len, strlen(v));
                    if (types[ti] != NULL)
                        assert_string_equal(store_entry_type(e), types[ti]);
                    if (labels[li] != NULL)
                        assert_string_equal(store_entry_labels(e), labels[li]);
                    else
                        assert_null(store_entry_labels(e));
                    assert_int_equal(store_entry_expires(e), expires * 1700000000000000);
                    assert_int_equal(store_entry_rev(e), 42);
                    assert_int_equal(store_entry_ts(e), 1700000000000001);
                    assert_int_equal(store_entry_origin(e), STORE_ORIGIN_MQTT);
                    store_entry_unref(e);
                }
}

/* What a key of the shape site/NN/devN/temp costs the heap with a reading
 * of 10 bytes: a 32-byte leaf, a 40-byte entry and a share of its parent's
 * bucket table (once 112 bytes and more: a 48-byte node and a 64-byte
 * malloc'd entry). Not under ASan, whose heap the count does not see. */
static void test_bytes_per_key(void **state)
{
    enum { N = 20000 };
    char key[40];
    (void)state;
    size_t before = heap_in_use();
    struct tree *t = tree__new();
    for (int i = 0; i < N; i++) {
        struct store_entry *e, *old;
        snprintf(key, sizeof key, "site/%02d/dev%d/temp", i % 2, 1000 + i / 2);
        assert_int_equal(store_entry_new("{\"v\":21.5}", 10, NULL, NULL, STORE_ORIGIN_HTTP, &e),
                         STORE_OK);
        assert_int_equal(tree__set(t, key, strlen(key), e, &old), STORE_OK);
    }
    size_t after = heap_in_use();
    if (after != before) {
        double per_key = (double)(after - before) / N;
        print_message("heap per key: %.1f bytes\n", per_key);
        assert_true(per_key < 90); /* 85 with glibc */
    }
    tree__free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_model),
        cmocka_unit_test(test_wide_node),
        cmocka_unit_test(test_merge_frees_tables),
        cmocka_unit_test(test_below_deep_keys),
        cmocka_unit_test(test_leaf_grows),
        cmocka_unit_test(test_entry_layout),
        cmocka_unit_test(test_bytes_per_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
