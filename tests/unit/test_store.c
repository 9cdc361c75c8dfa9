/*
 * test_store.c — the store against a real SQLite database in a temporary
 * folder: writes, compare-and-set, batches, deletes, pattern walks and
 * paging, ls, reloads, migrations, the data_dir lock, the outbox, label
 * filters and the first rev of a time in history.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store.h"

struct fixture {
    char dir[64];
    struct store *s;
};

static struct store *open_store(const char *dir)
{
    struct store_config cfg = {.data_dir = dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20}};
    struct store *s = NULL;
    char why[512];
    if (store_open(&cfg, &s, why, sizeof why) != STORE_OK)
        fail_msg("store_open: %s", why);
    return s;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/almanac-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->s = open_store(f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    store_close(f->s);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static struct store_entry *entry(const char *value, const char *type)
{
    struct store_entry *e;
    assert_int_equal(store_entry_new(value, strlen(value), type, NULL, STORE_ORIGIN_HTTP, &e),
                     STORE_OK);
    return e;
}

/* Sets `key`; returns the store's error, and the rev in *rev. */
static int set(struct store *s, const char *key, const char *value, int64_t if_rev, int64_t *rev)
{
    struct store_op op = {.kind = STORE_OP_SET,
                          .key = key,
                          .klen = strlen(key),
                          .entry = entry(value, NULL),
                          .if_rev = if_rev};
    struct store_txn t = {.ops = &op, .n = 1};
    int err = store_apply(s, &t);
    if (rev)
        *rev = op.rev;
    return err;
}

static int del(struct store *s, const char *key, bool pattern, size_t *deleted)
{
    struct store_op op = {.kind = STORE_OP_DELETE,
                          .key = key,
                          .klen = strlen(key),
                          .pattern = pattern,
                          .must_exist = !pattern,
                          .if_rev = STORE_ANY_REV};
    struct store_txn t = {.ops = &op, .n = 1};
    int err = store_apply(s, &t);
    if (deleted)
        *deleted = op.deleted;
    return err;
}

/* The value of `key` as a string, or NULL when absent (caller frees). */
static char *get(struct store *s, const char *key)
{
    struct store_entry *e;
    if (store_get(s, key, strlen(key), &e) != STORE_OK)
        return NULL;
    size_t len;
    const char *v = store_entry_value(e, &len);
    char *copy = strndup(v, len);
    store_entry_unref(e);
    return copy;
}

static void test_set_get(void **state)
{
    struct fixture *f = *state;
    int64_t r1, r2;
    struct store_entry *e;

    assert_int_equal(set(f->s, "home/kitchen/temp", "21.5", STORE_ANY_REV, &r1), STORE_OK);
    assert_int_equal(set(f->s, "home/kitchen/temp", "22", STORE_ANY_REV, &r2), STORE_OK);
    assert_true(r2 == r1 + 1);
    assert_int_equal(store_get(f->s, "home/kitchen/temp", 17, &e), STORE_OK);
    assert_string_equal(store_entry_type(e), "application/json");
    assert_true(store_entry_rev(e) == r2);
    assert_true(store_entry_ts(e) > 1700000000000000);
    store_entry_unref(e);
    assert_int_equal(store_get(f->s, "home/kitchen", 12, &e), STORE_ENOTFOUND);
    assert_int_equal(store_get(f->s, "home", 4, &e), STORE_ENOTFOUND);
}

static void test_sniff_and_types(void **state)
{
    struct store_entry *e;
    (void)state;
    assert_string_equal(store_sniff_type("{\"a\":1}", 7), "application/json");
    assert_string_equal(store_sniff_type("hello", 5), "text/plain; charset=utf-8");
    assert_string_equal(store_sniff_type("", 0), "text/plain; charset=utf-8");
    assert_string_equal(store_sniff_type("\xff\x00\x01", 3), "application/octet-stream");
    assert_true(store_type_is_json("application/json; charset=utf-8"));
    assert_true(store_type_is_json("application/vnd.x+json"));
    assert_false(store_type_is_json("text/json5"));
    assert_int_equal(store_entry_new("{bad", 4, "application/json", NULL, STORE_ORIGIN_HTTP, &e),
                     STORE_EBODY);
    assert_null(e);
    assert_int_equal(
        store_entry_new("<a/>", 4, "application/xml", "{\"k\":\"v\"}", STORE_ORIGIN_MQTT, &e),
        STORE_OK);
    assert_string_equal(store_entry_type(e), "application/xml");
    assert_string_equal(store_entry_labels(e), "{\"k\":\"v\"}");
    assert_string_equal(store_origin_name(store_entry_origin(e)), "mqtt");
    store_entry_unref(e);
}

static void test_compare_and_set(void **state)
{
    struct fixture *f = *state;
    int64_t rev, rev2;

    assert_int_equal(set(f->s, "k", "1", 0, &rev), STORE_OK);   /* create only */
    assert_int_equal(set(f->s, "k", "2", 0, NULL), STORE_EREV); /* exists now */
    assert_int_equal(set(f->s, "k", "3", rev + 5, NULL), STORE_EREV);
    assert_int_equal(set(f->s, "k", "4", rev, &rev2), STORE_OK);
    assert_int_equal(set(f->s, "k", "5", rev, NULL), STORE_EREV); /* stale */
    assert_int_equal(set(f->s, "nope", "6", STORE_EXISTS_REV, NULL), STORE_EREV);
    char *v = get(f->s, "k");
    assert_string_equal(v, "4");
    free(v);
    assert_null(get(f->s, "nope"));
}

static void test_batch_all_or_nothing(void **state)
{
    struct fixture *f = *state;
    struct store_stats before, after;
    int64_t rev;

    assert_int_equal(set(f->s, "b", "old", STORE_ANY_REV, &rev), STORE_OK);
    store_stats(f->s, &before);
    struct store_op ops[3] = {
        {.kind = STORE_OP_SET,
         .key = "a",
         .klen = 1,
         .entry = entry("1", NULL),
         .if_rev = STORE_ANY_REV},
        {.kind = STORE_OP_DELETE, .key = "b", .klen = 1, .if_rev = STORE_ANY_REV},
        {.kind = STORE_OP_SET,
         .key = "b",
         .klen = 1,
         .entry = entry("x", NULL),
         .if_rev = rev}, /* b was just deleted above: fails */
    };
    struct store_txn t = {.ops = ops, .n = 3};
    assert_int_equal(store_apply(f->s, &t), STORE_EREV);
    assert_int_equal(t.fail, 2);
    store_stats(f->s, &after);
    assert_true(after.rev == before.rev);
    assert_null(get(f->s, "a"));
    char *v = get(f->s, "b");
    assert_string_equal(v, "old");
    free(v);

    /* The same batch in a working order, with a get seeing its own write. */
    struct store_op ok[3] = {
        {.kind = STORE_OP_SET,
         .key = "a",
         .klen = 1,
         .entry = entry("1", NULL),
         .if_rev = STORE_ANY_REV},
        {.kind = STORE_OP_GET, .key = "a", .klen = 1},
        {.kind = STORE_OP_DELETE, .key = "b", .klen = 1, .if_rev = rev},
    };
    struct store_txn t2 = {.ops = ok, .n = 3};
    assert_int_equal(store_apply(f->s, &t2), STORE_OK);
    assert_non_null(ok[1].got);
    assert_true(store_entry_rev(ok[1].got) == ok[0].rev);
    assert_true(ok[2].rev == ok[0].rev + 1);
    assert_int_equal(ok[2].deleted, 1);
    store_txn_clear(&t2);
    assert_null(get(f->s, "b"));
}

static void test_delete(void **state)
{
    struct fixture *f = *state;
    size_t n;
    const char *keys[] = {"d/1", "d/2", "d/2/x", "d", "e/1"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(set(f->s, keys[i], "v", STORE_ANY_REV, NULL), STORE_OK);
    assert_int_equal(del(f->s, "d/9", false, &n), STORE_ENOTFOUND);
    assert_int_equal(del(f->s, "d/1", false, &n), STORE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(del(f->s, "d/#", true, &n), STORE_OK);
    assert_int_equal(n, 3); /* d, d/2, d/2/x */
    assert_int_equal(del(f->s, "d/#", true, &n), STORE_OK);
    assert_int_equal(n, 0);
    char *v = get(f->s, "e/1");
    assert_non_null(v);
    free(v);
    struct store_stats st;
    store_stats(f->s, &st);
    assert_int_equal(st.keys, 1);
}

static void test_reserved(void **state)
{
    struct fixture *f = *state;
    struct store_entry *e = entry("1.0", NULL);
    assert_int_equal(set(f->s, "$SYS/version", "1", STORE_ANY_REV, NULL), STORE_EREADONLY);
    struct store_op op = {.kind = STORE_OP_SET, .key = "$SYS/x", .klen = 6, .if_rev = -1};
    assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_SYS, &op.entry), STORE_OK);
    struct store_txn t = {.ops = &op, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
    assert_int_equal(store_publish(f->s, "$SYS/y", 6, e), STORE_EREADONLY);
    assert_int_equal(set(f->s, "plain", "1", STORE_ANY_REV, NULL), STORE_OK);
    size_t n;
    assert_int_equal(del(f->s, "#", true, &n), STORE_OK); /* '#' skips $-keys */
    assert_int_equal(n, 1);
    assert_int_equal(del(f->s, "$SYS/#", true, &n), STORE_EREADONLY);
    char *v = get(f->s, "$SYS/x");
    assert_string_equal(v, "1");
    free(v);
}

struct collected {
    char keys[512][32];
    size_t n;
};

static bool collect(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct collected *c = arg;
    (void)e;
    assert_true(klen < 32 && c->n < 512);
    memcpy(c->keys[c->n], key, klen);
    c->keys[c->n++][klen] = '\0';
    return true;
}

static int cmp_keys(const void *a, const void *b)
{
    return store_key_cmp(a, strlen(a), b, strlen(b));
}

/* Keeps the keys whose second segment is odd (s/1/t, s/3/t, ...). */
static bool keep_odd(void *arg, const char *key, size_t klen)
{
    (void)arg;
    const char *slash = memchr(key + 2, '/', klen - 2);
    size_t end = slash ? (size_t)(slash - key) : klen;
    return (key[end - 1] - '0') % 2 == 1;
}

static void test_pattern_paging(void **state)
{
    struct fixture *f = *state;
    static char expect[512][32];
    size_t n = 0;

    /* 300 keys in a shuffled order, some nested under others. */
    for (unsigned i = 0; i < 300; i++) {
        unsigned k = (i * 7919u) % 300u;
        snprintf(expect[n], 32, k % 3 ? "s/%u/t" : "s/%u", k / 3);
        if (k % 3 == 2)
            snprintf(expect[n], 32, "s/%u!", k / 3);
        assert_int_equal(set(f->s, expect[n], "1", STORE_ANY_REV, NULL), STORE_OK);
        n++;
    }
    assert_int_equal(set(f->s, "$SYS/z", "1", -1, NULL), STORE_EREADONLY);
    qsort(expect, n, 32, cmp_keys);

    /* Pages of 7 with the cursor give every key once, in order. */
    struct collected all = {0};
    char after[32] = "";
    bool more = true;
    while (more) {
        struct collected page = {0};
        store_pget(f->s, "#", 1, NULL, after[0] ? after : NULL, strlen(after), 7, collect, &page,
                   &more);
        assert_true(page.n <= 7);
        assert_true(page.n == 7 || !more);
        for (size_t i = 0; i < page.n; i++)
            memcpy(all.keys[all.n++], page.keys[i], 32);
        if (page.n)
            strcpy(after, page.keys[page.n - 1]);
    }
    assert_int_equal(all.n, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(all.keys[i], expect[i]);

    /* '+' patterns, and '#' matching the parent. */
    struct collected c = {0};
    store_pget(f->s, "s/+/t", 5, NULL, NULL, 0, 1000, collect, &c, &more);
    assert_int_equal(c.n, 100);
    assert_false(more);
    struct collected d = {0};
    store_pget(f->s, "s/7/#", 5, NULL, NULL, 0, 1000, collect, &d, &more);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.keys[0], "s/7");
    assert_string_equal(d.keys[1], "s/7/t");
    struct collected e = {0};
    store_pget(f->s, "s/7", 3, NULL, NULL, 0, 1000, collect, &e, &more);
    assert_int_equal(e.n, 1);

    /* A filter: pages hold only kept keys, are full while more follow, and
     * the cursor moves past what was left out. */
    struct store_filter odd = {.keep = keep_odd};
    struct collected kept = {0};
    after[0] = '\0';
    for (more = true; more;) {
        struct collected page = {0};
        store_pget(f->s, "s/+/t", 5, &odd, after[0] ? after : NULL, strlen(after), 3, collect,
                   &page, &more);
        assert_true(page.n == 3 || !more);
        for (size_t i = 0; i < page.n; i++) {
            assert_true(keep_odd(NULL, page.keys[i], strlen(page.keys[i])));
            memcpy(kept.keys[kept.n++], page.keys[i], 32);
        }
        if (page.n)
            strcpy(after, page.keys[page.n - 1]);
    }
    assert_int_equal(kept.n, 50);
}

struct children {
    char names[16][16];
    bool value[16], kids[16];
    uint64_t below[16];
    size_t n;
};

static void on_child(void *arg, const char *name, size_t nlen, bool value, bool kids,
                     uint64_t below)
{
    struct children *c = arg;
    memcpy(c->names[c->n], name, nlen);
    c->names[c->n][nlen] = '\0';
    c->value[c->n] = value;
    c->below[c->n] = below;
    c->kids[c->n++] = kids;
}

static void test_ls(void **state)
{
    struct fixture *f = *state;
    struct children c = {0};
    assert_int_equal(set(f->s, "h/k/t", "1", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "h/b", "1", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "h/k", "1", -1, NULL), STORE_OK);
    assert_int_equal(store_ls(f->s, false, "h", 1, on_child, &c, NULL), STORE_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.names[0], "b");
    assert_true(c.value[0] && !c.kids[0]);
    assert_string_equal(c.names[1], "k");
    assert_true(c.value[1] && c.kids[1]);
    assert_int_equal(c.below[0], 0);
    assert_int_equal(c.below[1], 1); /* h/k/t, not h/k itself */
    assert_int_equal(store_ls(f->s, false, "x", 1, on_child, &c, NULL), STORE_ENOTFOUND);
    struct children r = {0};
    assert_int_equal(store_ls(f->s, true, NULL, 0, on_child, &r, NULL), STORE_OK);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.below[0], 3);
    /* Deleting the last key under a node prunes it. */
    size_t n;
    assert_int_equal(del(f->s, "h/#", true, &n), STORE_OK);
    struct children empty = {0};
    assert_int_equal(store_ls(f->s, true, NULL, 0, on_child, &empty, NULL), STORE_OK);
    assert_int_equal(empty.n, 0);
}

static void test_reload(void **state)
{
    struct fixture *f = *state;
    int64_t rev;
    struct store_entry *e;

    assert_int_equal(set(f->s, "keep", "\"v\"", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "gone", "1", -1, &rev), STORE_OK);
    assert_int_equal(del(f->s, "gone", false, NULL), STORE_OK); /* rev + 1 */
    store_close(f->s);
    f->s = open_store(f->dir);
    assert_int_equal(store_get(f->s, "keep", 4, &e), STORE_OK);
    assert_string_equal(store_entry_type(e), "application/json");
    store_entry_unref(e);
    assert_null(get(f->s, "gone"));
    /* The deletion's rev is not handed out again. */
    int64_t next;
    assert_int_equal(set(f->s, "new", "1", -1, &next), STORE_OK);
    assert_true(next == rev + 2);
}

static void test_newer_schema_refused(void **state)
{
    struct fixture *f = *state;
    char path[128], why[512];
    sqlite3 *db;

    store_close(f->s);
    f->s = NULL;
    snprintf(path, sizeof path, "%s/almanac.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO schema_version VALUES (99, 0)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    struct store_config cfg = {.data_dir = f->dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1024}};
    assert_int_not_equal(store_open(&cfg, &f->s, why, sizeof why), STORE_OK);
    assert_null(f->s);
    assert_non_null(strstr(why, "version 99"));
    assert_non_null(strstr(why, "up to 6"));
}

static void test_lock(void **state)
{
    struct fixture *f = *state;
    struct store *second = NULL;
    char why[512];
    struct store_config cfg = {.data_dir = f->dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1024}};
    assert_int_not_equal(store_open(&cfg, &second, why, sizeof why), STORE_OK);
    assert_non_null(strstr(why, "in use"));
}

struct writer {
    struct store *s;
    int id;
};

static void *write_many(void *arg)
{
    struct writer *w = arg;
    for (int i = 0; i < 200; i++) {
        char key[32];
        snprintf(key, sizeof key, "w/%d/%d", w->id, i);
        if (set(w->s, key, "1", -1, NULL) != STORE_OK)
            return (void *)1;
    }
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    struct fixture *f = *state;
    pthread_t th[8];
    struct writer w[8];
    struct store_stats st;
    store_stats(f->s, &st);
    int64_t rev0 = st.rev;
    for (int i = 0; i < 8; i++) {
        w[i] = (struct writer){f->s, i};
        pthread_create(&th[i], NULL, write_many, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
        void *rc;
        pthread_join(th[i], &rc);
        assert_null(rc);
    }
    store_stats(f->s, &st);
    assert_int_equal(st.keys, 1600);
    assert_true(st.committed_rev == rev0 + 1600 && st.rev == rev0 + 1600);
    /* Group commit: fewer transactions than changes. */
    assert_true(st.commits <= st.changes);
}

struct events {
    pthread_mutex_t m;
    char keys[4096][32];
    int64_t revs[4096];
    bool deleted[4096], transient[4096];
    size_t n;
};

static void on_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    struct events *e = arg;
    (void)sub;
    pthread_mutex_lock(&e->m);
    assert_true(e->n < 4096 && ev->klen < 32);
    memcpy(e->keys[e->n], ev->key, ev->klen);
    e->keys[e->n][ev->klen] = '\0';
    e->revs[e->n] = ev->rev;
    e->deleted[e->n] = ev->entry == NULL;
    e->transient[e->n++] = ev->transient;
    pthread_mutex_unlock(&e->m);
}

static void test_subscriptions(void **state)
{
    struct fixture *f = *state;
    struct store_snapshot snap = {0};
    struct store_sub *a, *b, *c, *d;
    int64_t sync, rev;
    static struct events ea, eb, ec, ed;
    pthread_mutex_init(&ea.m, NULL);

    assert_int_equal(set(f->s, "h/k/t", "1", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "h/b/t", "1", -1, &rev), STORE_OK);
    assert_int_equal(store_subscribe(f->s, "h/+/t", 5, false, on_event, &ea, &snap, &sync, &a),
                     STORE_OK);
    assert_true(sync == rev);
    assert_int_equal(snap.n, 2);
    assert_string_equal(snap.keys[0], "h/b/t"); /* in key order */
    store_snapshot_free(&snap);
    assert_int_equal(store_subscribe(f->s, "#", 1, true, on_event, &eb, NULL, &sync, &b), STORE_OK);
    assert_int_equal(store_subscribe(f->s, "h/#", 3, false, on_event, &ec, NULL, &sync, &c),
                     STORE_OK);
    assert_int_equal(store_subscribe(f->s, "$SYS/#", 6, false, on_event, &ed, NULL, &sync, &d),
                     STORE_OK);

    assert_int_equal(set(f->s, "h/k/t", "2", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "h/k/t", "2", -1, NULL), STORE_OK); /* same value */
    assert_int_equal(set(f->s, "h", "x", -1, NULL), STORE_OK);
    assert_int_equal(set(f->s, "other", "x", -1, NULL), STORE_OK);
    struct store_entry *e;
    assert_int_equal(store_entry_new("p", 1, NULL, NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
    assert_int_equal(store_publish(f->s, "h/z/t", 5, e), STORE_OK);
    assert_int_equal(del(f->s, "h/k/t", false, NULL), STORE_OK);
    struct store_op sys = {.kind = STORE_OP_SET, .key = "$SYS/v", .klen = 6, .if_rev = -1};
    assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_SYS, &sys.entry), STORE_OK);
    struct store_txn t = {.ops = &sys, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
    /* A get that waits for the last commit: by then all is delivered. */
    free(get(f->s, "other"));

    /* h/+/t: both sets, the publish, the delete, in rev order. */
    assert_int_equal(ea.n, 4);
    assert_string_equal(ea.keys[2], "h/z/t");
    assert_true(ea.transient[2]);
    assert_true(ea.deleted[3]);
    assert_true(ea.revs[0] < ea.revs[1] && ea.revs[1] <= ea.revs[2] && ea.revs[2] < ea.revs[3]);
    /* '#' with unique: the repeated value is dropped; $SYS is not matched. */
    assert_int_equal(eb.n, 5); /* set, h, other, publish, delete */
    /* 'h/#' matches h itself. */
    assert_int_equal(ec.n, 5); /* set, set, h, publish, delete */
    assert_string_equal(ec.keys[2], "h");
    assert_int_equal(ed.n, 1);
    assert_string_equal(ed.keys[0], "$SYS/v");

    store_unsubscribe(f->s, a);
    store_unsubscribe(f->s, b);
    store_unsubscribe(f->s, c);
    store_unsubscribe(f->s, d);
    assert_int_equal(set(f->s, "h/k/t", "3", -1, NULL), STORE_OK);
    assert_int_equal(ea.n, 4);
    struct store_stats st;
    store_stats(f->s, &st);
    assert_int_equal(st.subscriptions, 0);
}

/* ---- the outbox ---- */

struct hooks {
    int ready;
    char published[64];
};

/* out/X goes to t/X, unless it came from MQTT. */
static char *outbox_topic(void *arg, const char *key, size_t klen, enum store_origin origin)
{
    (void)arg;
    if (origin == STORE_ORIGIN_MQTT || klen < 4 || memcmp(key, "out/", 4) != 0)
        return NULL;
    char *t = malloc(klen - 4 + 3);
    sprintf(t, "t/%.*s", (int)(klen - 4), key + 4);
    return t;
}

static void outbox_ready(void *arg)
{
    ((struct hooks *)arg)->ready++;
}

static void outbox_publish(void *arg, const char *topic, const struct store_entry *e)
{
    (void)e;
    snprintf(((struct hooks *)arg)->published, 64, "%s", topic);
}

static struct store *open_outbox_store(const char *dir, struct hooks *h)
{
    struct store_config cfg = {.data_dir = dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20},
                               .outbox = {outbox_topic, outbox_ready, outbox_publish, h}};
    struct store *s = NULL;
    char why[512];
    if (store_open(&cfg, &s, why, sizeof why) != STORE_OK)
        fail_msg("store_open: %s", why);
    return s;
}

static void test_outbox(void **state)
{
    struct fixture *f = *state;
    struct hooks h = {0};
    struct store_outbox_msg m[8];
    int64_t a1, a2, b1;
    size_t len;

    store_close(f->s);
    f->s = open_outbox_store(f->dir, &h);
    assert_int_equal(set(f->s, "out/a", "1", -1, &a1), STORE_OK);
    assert_int_equal(set(f->s, "out/b", "2", -1, &b1), STORE_OK);
    assert_int_equal(set(f->s, "out/a", "3", -1, &a2), STORE_OK);
    assert_int_equal(set(f->s, "in/x", "4", -1, NULL), STORE_OK); /* no topic */
    struct store_op op = {.kind = STORE_OP_SET, .key = "out/m", .klen = 5, .if_rev = -1};
    assert_int_equal(store_entry_new("5", 1, NULL, NULL, STORE_ORIGIN_MQTT, &op.entry), STORE_OK);
    struct store_txn t = {.ops = &op, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK); /* from MQTT: not back out */
    assert_int_equal(del(f->s, "out/b", false, NULL), STORE_OK);
    assert_true(h.ready >= 1);

    /* The latest change per topic, in rev order; b's is its deletion. */
    assert_int_equal(store_outbox_next(f->s, 0, m, 8), 2);
    assert_string_equal(m[0].topic, "t/a");
    assert_true(m[0].rev == a2);
    assert_memory_equal(store_entry_value(m[0].entry, &len), "3", 1);
    assert_string_equal(m[1].topic, "t/b");
    assert_null(m[1].entry);
    int64_t b2 = m[1].rev;
    assert_true(b2 > a2);
    store_outbox_msg_clear(&m[0]);
    store_outbox_msg_clear(&m[1]);
    assert_int_equal(store_outbox_next(f->s, a2, m, 8), 1); /* after a cursor */
    store_outbox_msg_clear(&m[0]);

    /* A stale acknowledgement removes nothing; a current one removes its row. */
    store_outbox_ack(f->s, "t/a", a1);
    store_outbox_ack(f->s, "t/b", b1);
    struct store_stats st;
    store_stats(f->s, &st);
    assert_int_equal(st.outbox, 2);
    store_outbox_ack(f->s, "t/a", a2);
    store_stats(f->s, &st);
    assert_int_equal(st.outbox, 1);

    /* The outbox survives a restart, acknowledgements included. */
    store_close(f->s);
    f->s = open_outbox_store(f->dir, &h);
    assert_int_equal(store_outbox_next(f->s, 0, m, 8), 1);
    assert_string_equal(m[0].topic, "t/b");
    assert_true(m[0].rev == b2);
    store_outbox_msg_clear(&m[0]);
    store_outbox_ack(f->s, "t/b", b2);
    store_close(f->s);
    f->s = open_outbox_store(f->dir, &h);
    assert_int_equal(store_outbox_next(f->s, 0, m, 8), 0);

    /* A transient message goes to the publish hook, not the outbox. */
    assert_int_equal(store_publish(f->s, "out/bell", 8, entry("1", NULL)), STORE_OK);
    for (int i = 0; i < 200 && h.published[0] == '\0'; i++)
        usleep(5000);
    assert_string_equal(h.published, "t/bell");
    assert_int_equal(store_outbox_next(f->s, 0, m, 8), 0);
}

static void test_if_changed(void **state)
{
    struct fixture *f = *state;
    int64_t rev;
    assert_int_equal(set(f->s, "same", "1", -1, &rev), STORE_OK);
    struct store_op op = {
        .kind = STORE_OP_SET, .key = "same", .klen = 4, .if_rev = -1, .if_changed = true};
    op.entry = entry("1", NULL);
    struct store_txn t = {.ops = &op, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
    assert_true(op.rev == 0); /* nothing changed */
    struct store_entry *e;
    assert_int_equal(store_get(f->s, "same", 4, &e), STORE_OK);
    assert_true(store_entry_rev(e) == rev);
    store_entry_unref(e);
    op.entry = entry("2", NULL);
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
    assert_true(op.rev == rev + 1);
}

static void no_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    (void)arg, (void)sub, (void)ev;
}

/* A `since` replay is served only for patterns history_keys covers. */
static void test_since_coverage(void **state)
{
    struct fixture *f = *state;
    char *keys[] = {"a/#", "b/+/c"};
    struct store_config cfg = {.data_dir = f->dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20},
                               .history_keys = keys,
                               .nhistory_keys = 2,
                               .history_retention_us = 3600000000};
    char why[512];
    int64_t rev, r1, r2;

    store_close(f->s);
    assert_int_equal(store_open(&cfg, &f->s, why, sizeof why), STORE_OK);
    assert_int_equal(set(f->s, "a/x", "1", -1, &r1), STORE_OK);
    assert_int_equal(set(f->s, "b/y/c", "2", -1, &r2), STORE_OK);
    struct {
        const char *pattern;
        int err;
        size_t n; /* changes replayed since r1 - 1 */
    } cases[] = {{"a/#", STORE_OK, 1},      {"a", STORE_OK, 0},     {"a/x/+", STORE_OK, 0},
                 {"b/y/c", STORE_OK, 1},    {"b/+/c", STORE_OK, 1}, {"b/#", STORE_EGONE, 0},
                 {"+/x", STORE_EGONE, 0},   {"#", STORE_EGONE, 0},  {"b/y/c/d", STORE_EGONE, 0},
                 {"$SYS/#", STORE_EGONE, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct store_snapshot snap = {0};
        struct store_sub *sub = NULL;
        int err = store_subscribe_since(f->s, cases[i].pattern, strlen(cases[i].pattern), false,
                                        no_event, NULL, r1 - 1, &snap, &rev, &sub);
        if (err != cases[i].err || snap.n != cases[i].n)
            fail_msg("%s: error %d, %zu changes", cases[i].pattern, err, snap.n);
        if (sub != NULL)
            store_unsubscribe(f->s, sub);
        store_snapshot_free(&snap);
    }
    /* Ahead of the store: gone too. */
    struct store_snapshot snap = {0};
    struct store_sub *sub = NULL;
    assert_int_equal(
        store_subscribe_since(f->s, "a/#", 3, false, no_event, NULL, r2 + 5, &snap, &rev, &sub),
        STORE_EGONE);
    assert_null(sub);
}

/* Label filters: every match label with its value, no exclude label with
 * its value; an entry without labels passes exclusions only. */
static void test_label_filters(void **state)
{
    static const char hall[] = "{\"room\":\"hall\",\"unit\":\"C\"}",
                      attic[] = "{\"room\":\"attic\",\"unit\":\"C\"}", fahr[] = "{\"unit\":\"F\"}";
    struct store_labels f = {.match_names = {"unit"},
                             .match_values = {"C"},
                             .nmatch = 1,
                             .exclude_names = {"room"},
                             .exclude_values = {"attic"},
                             .nexclude = 1};
    struct store_labels not_f = {.exclude_names = {"unit"}, .exclude_values = {"F"}, .nexclude = 1};
    struct store_labels none = {0};
    struct store_entry *e;
    (void)state;
    assert_true(store_labels_pass(&f, hall, strlen(hall)));
    assert_false(store_labels_pass(&f, attic, strlen(attic)));
    assert_false(store_labels_pass(&f, fahr, strlen(fahr)));
    assert_false(store_labels_pass(&f, NULL, 0));
    assert_true(store_labels_pass(&not_f, NULL, 0));
    assert_true(store_labels_pass(&not_f, hall, strlen(hall)));
    assert_false(store_labels_pass(&not_f, fahr, strlen(fahr)));
    assert_false(store_labels_any(&none));
    assert_true(store_labels_pass(&none, fahr, strlen(fahr)));
    assert_int_equal(store_entry_new("1", 1, NULL, hall, STORE_ORIGIN_HTTP, &e), STORE_OK);
    assert_true(store_labels_pass_entry(&f, e));
    assert_true(store_labels_pass_entry(&not_f, e));
    store_entry_unref(e);
}

/* The first rev at or after a time; history_gone once history cannot tell
 * (its floor rose: history_keys changed). */
static void test_history_first_rev(void **state)
{
    struct fixture *f = *state;
    char *keys[] = {"a/#"};
    struct store_config cfg = {.data_dir = f->dir,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20},
                               .history_retention_us = 3600000000};
    struct store_entry *e;
    char why[512];
    int64_t rev, r1, r2, ts1, ts2;

    assert_int_equal(store_history_first_rev(f->s, 0, &rev), STORE_EUNAVAIL); /* history off */
    store_close(f->s);
    assert_int_equal(store_open(&cfg, &f->s, why, sizeof why), STORE_OK);
    assert_int_equal(set(f->s, "a/1", "1", -1, &r1), STORE_OK);
    usleep(2000);
    assert_int_equal(set(f->s, "a/2", "2", -1, &r2), STORE_OK);
    assert_int_equal(store_get(f->s, "a/1", 3, &e), STORE_OK);
    ts1 = store_entry_ts(e);
    store_entry_unref(e);
    assert_int_equal(store_get(f->s, "a/2", 3, &e), STORE_OK);
    ts2 = store_entry_ts(e);
    store_entry_unref(e);
    assert_true(ts1 < ts2);
    struct {
        int64_t ts, rev;
    } cases[] = {{0, r1}, {ts1, r1}, {ts1 + 1, r2}, {ts2, r2}, {ts2 + 1, r2 + 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(store_history_first_rev(f->s, cases[i].ts, &rev), STORE_OK);
        if (rev != cases[i].rev)
            fail_msg("at %lld: rev %lld, not %lld", (long long)cases[i].ts, (long long)rev,
                     (long long)cases[i].rev);
    }
    /* Complete only from r2 on now: a time before r2's is beyond it. */
    store_close(f->s);
    cfg.history_keys = keys;
    cfg.nhistory_keys = 1;
    assert_int_equal(store_open(&cfg, &f->s, why, sizeof why), STORE_OK);
    assert_int_equal(store_history_first_rev(f->s, 0, &rev), STORE_EGONE);
    assert_int_equal(store_history_first_rev(f->s, ts1 + 1, &rev), STORE_EGONE);
    assert_int_equal(store_history_first_rev(f->s, ts2 + 1, &rev), STORE_OK);
    assert_true(rev == r2 + 1);
}

/* Sets `key` to expire `in_us` from now. */
static int set_expiring(struct store *s, const char *key, const char *value, int64_t in_us)
{
    struct store_entry *e = entry(value, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    assert_int_equal(store_entry_expire_at(&e, now + in_us), STORE_OK);
    assert_true(store_entry_expires(e) == now + in_us);
    struct store_op op = {
        .kind = STORE_OP_SET, .key = key, .klen = strlen(key), .entry = e, .if_rev = -1};
    struct store_txn t = {.ops = &op, .n = 1};
    return store_apply(s, &t);
}

static bool has(struct store *s, const char *key)
{
    char *v = get(s, key);
    free(v);
    return v != NULL;
}

static void test_expiry(void **state)
{
    struct fixture *f = *state;
    struct store_snapshot snap = {0};
    struct store_sub *sub;
    int64_t sync;
    static struct events ev;
    pthread_mutex_init(&ev.m, NULL);
    assert_int_equal(store_subscribe(f->s, "x/#", 3, false, on_event, &ev, &snap, &sync, &sub),
                     STORE_OK);
    store_snapshot_free(&snap);

    assert_int_equal(set_expiring(f->s, "x/soon", "1", 300000), STORE_OK);
    assert_int_equal(set_expiring(f->s, "x/again", "1", 300000), STORE_OK);
    assert_int_equal(set(f->s, "x/again", "2", -1, NULL), STORE_OK); /* no ttl now */
    assert_int_equal(set_expiring(f->s, "x/later", "1", 300000), STORE_OK);
    assert_int_equal(set_expiring(f->s, "x/later", "2", 60000000), STORE_OK); /* a later one */
    assert_int_equal(set_expiring(f->s, "x/kept", "1", 60000000), STORE_OK);
    assert_true(has(f->s, "x/soon"));
    usleep(1300000); /* deleted within a second of its time */
    assert_false(has(f->s, "x/soon"));
    assert_true(has(f->s, "x/again"));
    assert_true(has(f->s, "x/later"));
    /* A delete like any other, by the server: an event for subscribers. */
    pthread_mutex_lock(&ev.m);
    bool seen = false;
    for (size_t i = 0; i < ev.n; i++)
        seen |= strcmp(ev.keys[i], "x/soon") == 0 && ev.deleted[i];
    pthread_mutex_unlock(&ev.m);
    assert_true(seen);
    store_unsubscribe(f->s, sub);

    /* Across a restart: kept with its time, and one that expired while the
     * store was closed goes at the next start. */
    assert_int_equal(set_expiring(f->s, "x/closed", "1", 200000), STORE_OK);
    store_close(f->s);
    usleep(400000);
    f->s = open_store(f->dir);
    struct store_entry *e;
    assert_int_equal(store_get(f->s, "x/kept", 6, &e), STORE_OK);
    assert_true(store_entry_expires(e) > 0);
    store_entry_unref(e);
    usleep(800000);
    assert_false(has(f->s, "x/closed"));
    assert_true(has(f->s, "x/kept"));
}

/* A memory-only change (the open sessions' $SYS keys) is read as any key
 * but writes no row: the database holds none, a restart drops it, and its
 * rev is not handed out again. */
static void test_memory_only(void **state)
{
    struct fixture *f = *state;
    struct store_op op = {.kind = STORE_OP_SET,
                          .key = "$SYS/sessions/s1/transport",
                          .klen = strlen("$SYS/sessions/s1/transport"),
                          .if_rev = STORE_ANY_REV,
                          .memory_only = true};
    assert_int_equal(store_entry_new("ws", 2, NULL, NULL, STORE_ORIGIN_SYS, &op.entry), STORE_OK);
    struct store_txn t = {.ops = &op, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
    char *got = get(f->s, "$SYS/sessions/s1/transport");
    assert_string_equal(got, "ws");
    free(got);
    char path[128];
    sqlite3 *db;
    sqlite3_stmt *st;
    snprintf(path, sizeof path, "%s/almanac.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM entries WHERE key LIKE '$SYS/%'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    store_close(f->s);
    f->s = open_store(f->dir);
    assert_null(get(f->s, "$SYS/sessions/s1/transport"));
    int64_t next;
    assert_int_equal(set(f->s, "after", "1", -1, &next), STORE_OK);
    assert_true(next == op.rev + 1);
}

static size_t count_blob_files(const char *dir)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "ls %s/blobs | wc -l", dir);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    assert_non_null(p);
    assert_int_equal(fscanf(p, "%zu", &n), 1);
    pclose(p);
    return n;
}

/* Values written at once go to different blob files (writes to one file
 * take its inode's lock in turn), one writer at a time keeps to one file,
 * and with durability fsync (a sync per file written, each commit) all go
 * to one; every value reads back after a restart. */
static void test_blob_lanes(void **state)
{
    struct fixture *f = *state;
    char value[4][4096];
    for (int fsync = 0; fsync < 2; fsync++) {
        char dir[80];
        snprintf(dir, sizeof dir, "%s/%d", f->dir, fsync);
        struct store_config cfg = {.data_dir = dir,
                                   .durability = fsync ? STORE_DURABLE_FSYNC : STORE_DURABLE_COMMIT,
                                   .blob_min_bytes = 1024,
                                   .blob_file_bytes = 1 << 20,
                                   .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20}};
        struct store *s = NULL;
        char why[512];
        assert_int_equal(mkdir(dir, 0700), 0);
        assert_int_equal(store_open(&cfg, &s, why, sizeof why), STORE_OK);
        struct store_blob *w[4];
        for (int i = 0; i < 4; i++) { /* four at once */
            memset(value[i], 'a' + i, sizeof value[i]);
            assert_int_equal(store_blob_open(s, sizeof value[i], &w[i]), STORE_OK);
        }
        for (int i = 0; i < 4; i++) {
            char key[16];
            struct store_entry *e;
            assert_int_equal(store_blob_write(w[i], value[i], sizeof value[i]), STORE_OK);
            assert_int_equal(store_blob_entry(w[i], NULL, NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
            snprintf(key, sizeof key, "lane/%d", i);
            struct store_op op = {.kind = STORE_OP_SET,
                                  .key = key,
                                  .klen = strlen(key),
                                  .entry = e,
                                  .if_rev = STORE_ANY_REV};
            struct store_txn t = {.ops = &op, .n = 1};
            assert_int_equal(store_apply(s, &t), STORE_OK);
        }
        assert_int_equal(count_blob_files(dir), fsync ? 1 : 4);
        for (int i = 0; i < 8; i++) { /* one at a time: the first lane's file */
            struct store_entry *e;
            assert_int_equal(
                store_entry_make(s, value[0], sizeof value[0], NULL, NULL, STORE_ORIGIN_HTTP, &e),
                STORE_OK);
            store_entry_unref(e);
        }
        assert_int_equal(count_blob_files(dir), fsync ? 1 : 4);
        store_close(s);
        assert_int_equal(store_open(&cfg, &s, why, sizeof why), STORE_OK);
        for (int i = 0; i < 4; i++) {
            char key[16];
            snprintf(key, sizeof key, "lane/%d", i);
            char *got = get(s, key);
            assert_non_null(got);
            assert_memory_equal(got, value[i], sizeof value[i]);
            free(got);
        }
        store_close(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_get, setup, teardown),
        cmocka_unit_test(test_sniff_and_types),
        cmocka_unit_test_setup_teardown(test_compare_and_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_all_or_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pattern_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscriptions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox, setup, teardown),
        cmocka_unit_test_setup_teardown(test_if_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_since_coverage, setup, teardown),
        cmocka_unit_test(test_label_filters),
        cmocka_unit_test_setup_teardown(test_history_first_rev, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blob_lanes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_only, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
