/*
 * test_ops.c — the operations layer (ops.c) and the live feed (feed.c)
 * against a real store in a temporary folder, with a recording sink: the
 * checks every transport relies on, and the feed's order and too_slow
 * policy.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "envelope.h"
#include "gateway.h"
#include "import.h"
#include "ops.h"

struct fixture {
    char dir[64];
    struct config cfg;
    struct store *s;
    struct ops *o;
    struct caller caller;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    char why[512];
    snprintf(f->dir, sizeof f->dir, "/tmp/almanac-ops-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->cfg.data_dir = f->dir;
    struct store_config scfg = {.data_dir = f->dir,
                                .limits = {.max_key_bytes = 64, .max_value_bytes = 4096}};
    if (store_open(&scfg, &f->s, why, sizeof why) != STORE_OK)
        fail_msg("store_open: %s", why);
    f->o = ops_new(f->s, NULL, NULL, &f->cfg, why, sizeof why);
    f->caller = (struct caller){.transport = STORE_ORIGIN_TCP, .address = "127.0.0.1:1"};
    assert_int_equal(
        ops_authenticate(f->o, "127.0.0.1:1", NULL, &f->caller.principal, why, sizeof why),
        STORE_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];
    ops_free(f->o);
    store_close(f->s);
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        return -1;
    free(f);
    return 0;
}

static void put(struct fixture *f, const char *key, const char *value)
{
    struct store_entry *e;
    assert_int_equal(store_entry_new(value, strlen(value), NULL, NULL, STORE_ORIGIN_HTTP, &e),
                     STORE_OK);
    struct store_op op = {
        .kind = STORE_OP_SET, .key = key, .klen = strlen(key), .entry = e, .if_rev = -1};
    struct store_txn t = {.ops = &op, .n = 1};
    assert_int_equal(store_apply(f->s, &t), STORE_OK);
}

/* A write's `done`, for a test that waits on it. */
struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int err;
};

static void waiter_done(void *arg, struct store_txn *t)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    w->err = t->err;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static int waiter_wait(struct waiter *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    return w->err;
}

static void check_refused_whole(void **state)
{
    struct fixture *f = *state;
    struct ops_write w;
    struct store_entry *e;
    char why[512];

    put(f, "site/1/temp", "20");
    /* if_rev on a pattern means nothing: refused, nothing deleted */
    assert_int_equal(ops_delete(f->o, &f->caller, &w, "site/+/temp", 11, 5, false, waiter_done,
                                NULL, why, sizeof why),
                     STORE_EBADREQ);
    assert_non_null(strstr(why, "pattern"));
    assert_int_equal(ops_get(f->o, &f->caller, "site/1/temp", 11, &e, why, sizeof why), STORE_OK);
    store_entry_unref(e);

    /* a batch with one bad key is refused whole, naming the op */
    struct store_op ops[2] = {
        {.kind = STORE_OP_DELETE, .key = "site/1/temp", .klen = 11, .if_rev = STORE_ANY_REV},
        {.kind = STORE_OP_SET, .key = "a/+/b", .klen = 5, .if_rev = STORE_ANY_REV}};
    assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_TCP, &ops[1].entry),
                     STORE_OK);
    assert_int_equal(ops_batch(f->o, &f->caller, &w, ops, 2, waiter_done, NULL, why, sizeof why),
                     STORE_EKEY);
    assert_true(strncmp(why, "ops[1]: ", 8) == 0);
    assert_null(ops[1].entry); /* taken */
    assert_int_equal(ops_get(f->o, &f->caller, "site/1/temp", 11, &e, why, sizeof why), STORE_OK);
    store_entry_unref(e);

    /* a key that is not one, and a pattern that is a bad key */
    assert_int_equal(ops_get(f->o, &f->caller, "a/+", 3, &e, why, sizeof why), STORE_EKEY);
    bool wild;
    char long_key[80];
    memset(long_key, 'k', sizeof long_key);
    assert_int_equal(
        ops_pattern(f->o, &f->caller, long_key, sizeof long_key, &wild, why, sizeof why),
        STORE_EKEY);
    assert_non_null(strstr(why, "key"));
    assert_int_equal(ops_pattern(f->o, &f->caller, "a/#/b", 5, &wild, why, sizeof why),
                     STORE_EPATTERN);
    assert_int_equal(ops_get(f->o, &f->caller, "nope", 4, &e, why, sizeof why), STORE_ENOTFOUND);
    assert_non_null(strstr(why, "nope"));
}

static void delete_carries_the_callers_origin(void **state)
{
    struct fixture *f = *state;
    struct ops_write w;
    struct waiter wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
    char why[512];

    put(f, "k", "1");
    assert_int_equal(ops_delete(f->o, &f->caller, &w, "k", 1, STORE_ANY_REV, true, waiter_done, &wt,
                                why, sizeof why),
                     STORE_OK);
    assert_int_equal(waiter_wait(&wt), STORE_OK);
    assert_int_equal(w.one.origin, STORE_ORIGIN_TCP);
    assert_true(w.one.must_exist);
    assert_int_equal(w.one.deleted, 1);
}

/* API.md "MQTT bridge": an empty value of a key that maps out would be an
 * empty retained message, a delete to MQTT; refused, batch whole. */
static void empty_value_refused_where_it_maps_out(void **state)
{
    struct fixture *f = *state;
    char *maps[] = {"out out/#", "in in/#"};
    struct bridge_config bc = {
        .url = "mqtt://127.0.0.1:1", .qos = 1, .protocol = 5, .maps = maps, .nmaps = 2};
    struct bridge *b;
    struct ops_write w;
    struct store_entry *e;
    char why[512];

    assert_int_equal(bridge_new(&bc, store_limits(f->s), &b, why, sizeof why), 0);
    assert_true(bridge_maps_out(b, "out/a", 5));
    assert_false(bridge_maps_out(b, "in/a", 4));
    assert_false(bridge_maps_out(b, "else", 4));
    assert_false(bridge_maps_out(NULL, "out/a", 5)); /* the bridge is off */
    struct ops *o = ops_new(f->s, b, NULL, &f->cfg, why, sizeof why);
    assert_non_null(o);

    assert_int_equal(store_entry_new("", 0, NULL, NULL, STORE_ORIGIN_TCP, &e), STORE_OK);
    assert_int_equal(ops_set(o, &f->caller, &w, "out/a", 5, e, STORE_ANY_REV, waiter_done, NULL,
                             why, sizeof why),
                     STORE_EBODY);
    assert_non_null(strstr(why, "out/a"));
    assert_non_null(strstr(why, "MQTT"));
    assert_non_null(strstr(why, "delete the key"));
    assert_null(w.one.entry); /* taken */

    struct store_op ops[2] = {{.kind = STORE_OP_SET, .key = "out/b", .klen = 5, .if_rev = -1},
                              {.kind = STORE_OP_SET, .key = "out/c", .klen = 5, .if_rev = -1}};
    assert_int_equal(store_entry_new("1", 1, NULL, NULL, STORE_ORIGIN_TCP, &ops[0].entry),
                     STORE_OK);
    assert_int_equal(store_entry_new("", 0, NULL, NULL, STORE_ORIGIN_TCP, &ops[1].entry), STORE_OK);
    assert_int_equal(ops_batch(o, &f->caller, &w, ops, 2, waiter_done, NULL, why, sizeof why),
                     STORE_EBODY);
    assert_true(strncmp(why, "ops[1]: ", 8) == 0);
    assert_int_equal(ops_get(o, &f->caller, "out/b", 5, &e, why, sizeof why), STORE_ENOTFOUND);

    /* a transient publish is not retained: an empty one goes */
    assert_int_equal(store_entry_new("", 0, NULL, NULL, STORE_ORIGIN_TCP, &e), STORE_OK);
    assert_int_equal(ops_publish(o, &f->caller, "out/a", 5, e, why, sizeof why), STORE_OK);

    /* a key no out map covers, and any key with the bridge off, can be empty */
    const char *fine[][2] = {{"in/a", "bridge"}, {"else", "bridge"}, {"out/a", "off"}};
    for (size_t i = 0; i < 3; i++) {
        struct waiter wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0};
        assert_int_equal(store_entry_new("", 0, NULL, NULL, STORE_ORIGIN_TCP, &e), STORE_OK);
        struct ops *via = strcmp(fine[i][1], "off") == 0 ? f->o : o;
        assert_int_equal(ops_set(via, &f->caller, &w, fine[i][0], strlen(fine[i][0]), e,
                                 STORE_ANY_REV, waiter_done, &wt, why, sizeof why),
                         STORE_OK);
        assert_int_equal(waiter_wait(&wt), STORE_OK);
    }
    ops_free(o);
    bridge_free(b);
}

/* ---- the feed, through a sink that records what it is given ---- */

struct rec {
    pthread_mutex_t lock;
    char text[8192];
    size_t len;
    unsigned writes, refuse_after, fails;
    int fail_err;
};

static void rec_event(void *arg, struct buf *b, const struct feed_event *ev)
{
    (void)arg;
    feed_add_envelope(b, ev, "content_type", "{\"e\":1,");
    buf_adds(b, "\n");
}

static void rec_sync(void *arg, struct buf *b, int64_t rev)
{
    (void)arg;
    buf_addf(b, "{\"sync\":%lld}\n", (long long)rev);
}

static bool rec_write(void *arg, struct buf *b)
{
    struct rec *r = arg;
    pthread_mutex_lock(&r->lock);
    bool ok = r->refuse_after == 0 || r->writes < r->refuse_after;
    r->writes++;
    if (ok && r->len + b->len < sizeof r->text) {
        memcpy(r->text + r->len, b->p, b->len);
        r->len += b->len;
        r->text[r->len] = '\0';
    }
    pthread_mutex_unlock(&r->lock);
    buf_free(b);
    return ok;
}

static void rec_fail(void *arg, int err, const char *message)
{
    struct rec *r = arg;
    (void)message;
    pthread_mutex_lock(&r->lock);
    r->fails++;
    r->fail_err = err;
    pthread_mutex_unlock(&r->lock);
}

static const struct feed_sink rec_sink = {
    .add_event = rec_event, .add_sync = rec_sync, .write = rec_write, .fail = rec_fail};

/* Waits (at most 5 s) until the record holds `text`. */
static bool rec_has(struct rec *r, const char *text)
{
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&r->lock);
        bool has = strstr(r->text, text) != NULL;
        pthread_mutex_unlock(&r->lock);
        if (has)
            return true;
        usleep(10000);
    }
    return false;
}

static void feed_snapshot_sync_then_live(void **state)
{
    struct fixture *f = *state;
    struct rec r = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct feed_request rq = {.pattern = "site/#", .plen = 6, .since = -1};
    struct feed *feed;
    char why[512];

    put(f, "site/1/temp", "20");
    assert_int_equal(ops_subscribe(f->o, &f->caller, &rq, &rec_sink, &r, &feed, why, sizeof why),
                     STORE_OK);
    put(f, "site/2/temp", "21");   /* after the subscribe, before the start */
    assert_int_equal(r.writes, 0); /* invariant 1: nothing before feed_start */
    feed_start(feed);
    put(f, "site/3/temp", "22");
    assert_true(rec_has(&r, "site/3/temp"));
    ops_unsubscribe(f->o, feed);
    const char *a = strstr(r.text, "site/1/temp"), *sync = strstr(r.text, "{\"sync\":");
    const char *b = strstr(r.text, "site/2/temp"), *c = strstr(r.text, "site/3/temp");
    assert_non_null(a);
    assert_non_null(sync);
    assert_non_null(b);
    assert_true(a < sync && sync < b && b < c);
    assert_int_equal(strncmp(r.text, "{\"e\":1,\"key\":\"site/1/temp\"", 26), 0);
    assert_int_equal(r.fails, 0);
}

static void feed_too_slow_ends_it(void **state)
{
    struct fixture *f = *state;
    struct rec r = {.lock = PTHREAD_MUTEX_INITIALIZER, .refuse_after = 2};
    struct feed_request rq = {.pattern = "k/#", .plen = 3, .since = -1};
    struct feed *feed;
    char why[512];

    put(f, "k/1", "1");
    put(f, "k/2", "2");
    put(f, "k/3", "3");
    assert_int_equal(ops_subscribe(f->o, &f->caller, &rq, &rec_sink, &r, &feed, why, sizeof why),
                     STORE_OK);
    feed_start(feed); /* k/1, k/2 go; k/3 is refused */
    assert_int_equal(r.fails, 1);
    assert_int_equal(r.fail_err, STORE_ESLOW);
    unsigned writes = r.writes;
    put(f, "k/4", "4");
    put(f, "k/5", "5");
    usleep(50000);
    ops_unsubscribe(f->o, feed);
    assert_int_equal(r.writes, writes); /* invariant 3: nothing after the failure */
    assert_int_equal(r.fails, 1);
    assert_null(strstr(r.text, "k/4"));
}

static void feed_since_without_history_is_gone(void **state)
{
    struct fixture *f = *state;
    struct rec r = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct feed_request rq = {.pattern = "site/#", .plen = 6, .since = 1};
    struct feed *feed = (struct feed *)1;
    char why[512];

    put(f, "site/1", "1");
    put(f, "site/2", "2");
    assert_int_equal(ops_subscribe(f->o, &f->caller, &rq, &rec_sink, &r, &feed, why, sizeof why),
                     STORE_EGONE);
    assert_null(feed);
    assert_non_null(strstr(why, "site/#"));
    assert_non_null(strstr(why, "fresh snapshot"));
}

static void envelope_forms(void **state)
{
    struct store_entry *e;
    struct buf b = {0};
    (void)state;
    assert_int_equal(store_entry_new("7", 1, NULL, NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
    struct store_event live = {
        .key = "a/b", .klen = 3, .entry = e, .rev = 4, .ts = 5, .transient = true};
    struct feed_event ev = {
        .key = "a/b", .klen = 3, .entry = e, .rev = 4, .ts = 5, .transient = true, .live = &live};
    feed_add_envelope(&b, &ev, "content_type", "{\"sub\":1,");
    assert_non_null(strstr(b.p, "\"transient\":true}"));
    assert_true(strncmp(b.p, "{\"sub\":1,\"key\":\"a/b\"", 20) == 0);
    assert_non_null(live.cache); /* made once, for every subscriber of the event */
    struct buf again = {0};
    feed_add_envelope(&again, &ev, "content_type", "{\"sub\":1,");
    assert_string_equal(b.p, again.p);
    buf_free(&again);
    free(live.cache);
    buf_free(&b);
    struct feed_event del = {.key = "a/b", .klen = 3, .rev = 6, .ts = 7};
    feed_add_envelope(&b, &del, "type", "{");
    assert_non_null(strstr(b.p, "\"deleted\":true"));
    buf_free(&b);
    store_entry_unref(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(check_refused_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(delete_carries_the_callers_origin, setup, teardown),
        cmocka_unit_test_setup_teardown(empty_value_refused_where_it_maps_out, setup, teardown),
        cmocka_unit_test_setup_teardown(feed_snapshot_sync_then_live, setup, teardown),
        cmocka_unit_test_setup_teardown(feed_too_slow_ends_it, setup, teardown),
        cmocka_unit_test_setup_teardown(feed_since_without_history_is_gone, setup, teardown),
        cmocka_unit_test(envelope_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
