/*
 * test_c.c — libalmanac (clients/c/almanac.h) against the real daemon,
 * started here on free ports with a fresh data folder (as
 * tests/integration/harness.py does), and restarted where a test needs a
 * dropped connection: get/set/delete, pattern get across pages, ls,
 * subscriptions (snapshot, sync, live; callbacks and almanac_next_event),
 * `since` resumption after a killed socket and after a restart with no
 * gap and no duplicate, a fresh snapshot after history_gone, history,
 * tokens with limited privileges, the Unix socket, HTTP.
 *
 * Usage: test_c --binary PATH/TO/almanac
 */
#include "almanac.h"

#include <setjmp.h> /* cmocka needs these first */
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ADMIN "test-admin-token-0123456789abcdef"

static const char *binary;

struct daemon {
    pid_t pid;
    char dir[64];
    char log[96];
    char unix_path[128];
    char tcp[32], http[32]; /* 127.0.0.1:PORT */
};

static int free_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
        fail_msg("no free port");
    close(fd);
    return ntohs(sin.sin_port);
}

static bool log_says_ready(const struct daemon *d, long from)
{
    char buf[8192];
    FILE *f = fopen(d->log, "r");
    bool ready = false;
    if (f == NULL)
        return false;
    fseek(f, from, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    ready = strstr(buf, " ready") != NULL;
    fclose(f);
    return ready;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts (or starts again, on the same ports and data) the daemon, with
 * `extra` flags (NULL-terminated, may be NULL); waits for "ready". */
static void daemon_start(struct daemon *d, const char *const *extra)
{
    if (d->dir[0] == '\0') {
        snprintf(d->dir, sizeof d->dir, "/tmp/almanac-c-XXXXXX");
        assert_non_null(mkdtemp(d->dir));
        snprintf(d->log, sizeof d->log, "%s.log", d->dir);
        snprintf(d->unix_path, sizeof d->unix_path, "%s/session.sock", d->dir);
        snprintf(d->tcp, sizeof d->tcp, "127.0.0.1:%d", free_port());
        snprintf(d->http, sizeof d->http, "127.0.0.1:%d", free_port());
    }
    int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    long from = lseek(log, 0, SEEK_END);
    const char *argv[32] = {binary,          "serve",      "--http_listen", d->http,
                            "--tcp_listen",  d->tcp,       "--data_dir",    d->dir,
                            "--unix_socket", d->unix_path, "--admin_token", ADMIN};
    size_t n = 12;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    d->pid = fork();
    assert_true(d->pid >= 0);
    if (d->pid == 0) {
        dup2(log, 1);
        dup2(log, 2);
        execv(binary, (char *const *)argv);
        _exit(127);
    }
    close(log);
    for (int i = 0; i < 1500 && !log_says_ready(d, from); i++) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            fail_msg("almanac exited at start; see %s", d->log);
        }
        sleep_ms(10);
    }
    if (!log_says_ready(d, from)) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
        fail_msg("almanac was not ready in 15 s; see %s", d->log);
    }
}

static void daemon_stop(struct daemon *d)
{
    int status = 0;
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    assert_int_equal(waitpid(d->pid, &status, 0), d->pid);
    d->pid = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void daemon_cleanup(struct daemon *d)
{
    char cmd[256];
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
    }
    d->pid = 0;
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", d->dir, d->log);
    if (d->dir[0] != '\0' && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", d->dir);
    d->dir[0] = '\0';
}

static struct daemon main_daemon;
static struct daemon restart_daemon; /* test_resume_after_a_restart's own */

static struct almanac *client_as(const struct daemon *d, const char *token)
{
    struct almanac *a;
    struct almanac_options o = {.token = token, .http = d->http, .timeout_ms = 20000};
    int rc = almanac_connect(&a, d->tcp, &o);
    if (rc != ALMANAC_OK)
        fail_msg("connect: %s", almanac_errmsg(a));
    return a;
}

static struct almanac *client(void)
{
    return client_as(&main_daemon, ADMIN);
}

static int64_t set_text(struct almanac *a, const char *key, const char *value)
{
    int64_t rev = 0;
    int rc = almanac_set(a, key, value, strlen(value), NULL, &rev);
    if (rc != ALMANAC_OK)
        fail_msg("set %s: %s", key, almanac_errmsg(a));
    assert_true(rev > 0);
    return rev;
}

/* The next event, within 10 s. */
static const struct almanac_event *next(struct almanac *a)
{
    const struct almanac_event *ev;
    int rc = almanac_next_event(a, 10000, &ev);
    if (rc != ALMANAC_OK)
        fail_msg("next event: %s (%s)", almanac_strerror(rc), almanac_errmsg(a));
    return ev;
}

static void expect_put(struct almanac *a, const char *key, const char *value, int64_t rev)
{
    const struct almanac_event *ev = next(a);
    assert_int_equal(ev->type, ALMANAC_EVENT_PUT);
    assert_string_equal(ev->entry->key, key);
    assert_string_equal((const char *)ev->entry->value, value);
    if (rev > 0)
        assert_int_equal(ev->entry->rev, rev);
}

static int64_t expect_sync(struct almanac *a)
{
    const struct almanac_event *ev = next(a);
    assert_int_equal(ev->type, ALMANAC_EVENT_SYNC);
    return ev->rev;
}

static void expect_quiet(struct almanac *a)
{
    const struct almanac_event *ev;
    assert_int_equal(almanac_next_event(a, 200, &ev), ALMANAC_ETIMEDOUT);
}

/* ---- get, set, delete ---- */

static void test_get_set_delete(void **state)
{
    (void)state;
    struct almanac *a = client();
    struct almanac_entry *e;
    int64_t rev = set_text(a, "c/kitchen/temp", "21.5");

    assert_int_equal(almanac_get(a, "c/kitchen/temp", &e), ALMANAC_OK);
    assert_string_equal(e->key, "c/kitchen/temp");
    assert_int_equal(e->value_len, 4);
    assert_memory_equal(e->value, "21.5", 4);
    assert_string_equal(e->content_type, "application/json");
    assert_true(e->is_text);
    assert_int_equal(e->rev, rev);
    assert_true(e->ts > 1700000000000000LL);
    assert_string_equal(e->origin, "tcp");
    assert_int_equal(e->nlabels, 0);
    assert_false(e->deleted);
    assert_non_null(strstr(e->json, "\"type\":\"application/json\""));
    assert_null(strstr(e->json, "content_type"));
    almanac_entry_free(e);

    /* Compare-and-set with a type and labels. */
    struct almanac_label labels[] = {{"unit", "C"}, {"room", "kitchen"}};
    struct almanac_set_options o = {
        .content_type = "text/plain; charset=utf-8", .labels = labels, .nlabels = 2, .if_rev = rev};
    int64_t rev2 = 0;
    assert_int_equal(almanac_set(a, "c/kitchen/temp", "22", 2, &o, &rev2), ALMANAC_OK);
    assert_true(rev2 > rev);
    assert_int_equal(almanac_set(a, "c/kitchen/temp", "23", 2, &o, NULL), ALMANAC_EREVMISMATCH);
    assert_string_equal(almanac_server_error(a), "rev_mismatch");
    assert_true(strlen(almanac_errmsg(a)) > 0);
    o.if_rev = ALMANAC_IF_ABSENT;
    assert_int_equal(almanac_set(a, "c/kitchen/temp", "23", 2, &o, NULL), ALMANAC_EREVMISMATCH);
    assert_int_equal(almanac_get(a, "c/kitchen/temp", &e), ALMANAC_OK);
    assert_memory_equal(e->value, "22", 3);
    assert_string_equal(e->content_type, "text/plain; charset=utf-8");
    assert_int_equal(e->nlabels, 2);
    for (size_t i = 0; i < 2; i++) /* as an object, in any order */
        assert_string_equal(e->labels[i].value,
                            strcmp(e->labels[i].name, "unit") == 0 ? "C" : "kitchen");
    almanac_entry_free(e);
    o.if_rev = ALMANAC_IF_ABSENT;
    assert_int_equal(almanac_set(a, "c/new", "1", 1, &o, NULL), ALMANAC_OK);

    /* Any bytes round-trip; a 30-digit integer keeps its digits. */
    unsigned char bytes[256];
    for (int i = 0; i < 256; i++)
        bytes[i] = (unsigned char)i;
    assert_int_equal(almanac_set(a, "c/bin", bytes, sizeof bytes, NULL, NULL), ALMANAC_OK);
    assert_int_equal(almanac_get(a, "c/bin", &e), ALMANAC_OK);
    assert_int_equal(e->value_len, 256);
    assert_memory_equal(e->value, bytes, 256);
    assert_false(e->is_text);
    assert_string_equal(e->content_type, "application/octet-stream");
    almanac_entry_free(e);
    set_text(a, "c/big", "123456789012345678901234567890");
    assert_int_equal(almanac_get(a, "c/big", &e), ALMANAC_OK);
    assert_string_equal((const char *)e->value, "123456789012345678901234567890");
    assert_non_null(strstr(e->json, "\"value\":123456789012345678901234567890"));
    almanac_entry_free(e);
    set_text(a, "c/text", "h\xc3\xa9llo \"q\"\n\\");
    assert_int_equal(almanac_get(a, "c/text", &e), ALMANAC_OK);
    assert_string_equal((const char *)e->value, "h\xc3\xa9llo \"q\"\n\\");
    almanac_entry_free(e);

    /* Delete, then it is gone. */
    uint64_t deleted = 0;
    assert_int_equal(almanac_delete(a, "c/kitchen/temp", ALMANAC_ANY_REV, &deleted), ALMANAC_OK);
    assert_int_equal(deleted, 1);
    assert_int_equal(almanac_get(a, "c/kitchen/temp", &e), ALMANAC_ENOTFOUND);
    assert_null(e);
    assert_string_equal(almanac_server_error(a), "not_found");
    /* Deleting what is absent is no error over a session: nothing deleted. */
    assert_int_equal(almanac_delete(a, "c/kitchen/temp", ALMANAC_ANY_REV, &deleted), ALMANAC_OK);
    assert_int_equal(deleted, 0);
    assert_int_equal(almanac_delete(a, "c/#", ALMANAC_ANY_REV, &deleted), ALMANAC_OK);
    assert_int_equal(deleted, 4); /* new, bin, big, text */

    /* The server's refusals, by code. */
    assert_int_equal(almanac_set(a, "c/+", "1", 1, NULL, NULL), ALMANAC_EINVALIDKEY);
    assert_int_equal(almanac_set(a, "$SYS/x", "1", 1, NULL, NULL), ALMANAC_EREADONLY);
    assert_int_equal(almanac_get(a, "c/#", &e), ALMANAC_EINVALIDKEY);
    assert_int_equal(almanac_ping(a), ALMANAC_OK);
    assert_null(almanac_server_error(a));
    almanac_close(a);
}

/* ---- pattern get and ls ---- */

struct seen {
    int count;
    char last[64];
    bool sorted;
    int stop_at;
};

static int count_entry(void *arg, const struct almanac_entry *e)
{
    struct seen *s = arg;
    if (s->count > 0 && strcmp(s->last, e->key) >= 0)
        s->sorted = false;
    snprintf(s->last, sizeof s->last, "%s", e->key);
    s->count++;
    return s->stop_at > 0 && s->count == s->stop_at;
}

struct children {
    char names[8][32];
    bool value[8], kids[8];
    int64_t keys[8];
    int n;
};

static int collect_child(void *arg, const struct almanac_child *c)
{
    struct children *l = arg;
    if (l->n < 8) {
        snprintf(l->names[l->n], sizeof l->names[0], "%s", c->name);
        l->value[l->n] = c->value;
        l->kids[l->n] = c->children;
        l->keys[l->n] = c->keys;
    }
    l->n++;
    return 0;
}

static void test_pget_and_ls(void **state)
{
    (void)state;
    struct almanac *a = client();
    char key[64];
    for (int i = 0; i < 1500; i++) { /* more than one page of 1,000 */
        snprintf(key, sizeof key, "p/k%04d", i);
        set_text(a, key, i % 2 ? "odd" : "even");
    }
    struct seen s = {.sorted = true};
    assert_int_equal(almanac_pget(a, "p/#", NULL, count_entry, &s), ALMANAC_OK);
    assert_int_equal(s.count, 1500);
    assert_true(s.sorted);
    assert_string_equal(s.last, "p/k1499");
    s = (struct seen){.sorted = true};
    assert_int_equal(almanac_pget(a, "p/+", "k14", count_entry, &s), ALMANAC_OK);
    assert_int_equal(s.count, 100); /* k1400..k1499 */
    s = (struct seen){.sorted = true, .stop_at = 10};
    assert_int_equal(almanac_pget(a, "p/#", NULL, count_entry, &s), ALMANAC_ESTOPPED);
    assert_int_equal(s.count, 10);
    s = (struct seen){.sorted = true};
    assert_int_equal(almanac_pget(a, "nothing/#", NULL, count_entry, &s), ALMANAC_OK);
    assert_int_equal(s.count, 0);
    assert_int_equal(almanac_pget(a, "p/#/x", NULL, count_entry, &s), ALMANAC_EINVALIDPATTERN);

    set_text(a, "l/a/x", "1");
    set_text(a, "l/a/y", "2");
    set_text(a, "l/b", "3");
    struct children l = {0};
    int64_t rev = 0;
    assert_int_equal(almanac_ls(a, "l", collect_child, &l, &rev), ALMANAC_OK);
    assert_true(rev > 1500);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.names[0], "a");
    assert_true(l.kids[0] && !l.value[0]);
    assert_int_equal(l.keys[0], 2);
    assert_string_equal(l.names[1], "b");
    assert_true(l.value[1] && !l.kids[1]);
    l = (struct children){0};
    assert_int_equal(almanac_ls(a, NULL, collect_child, &l, NULL), ALMANAC_OK);
    bool found = false;
    for (int i = 0; i < l.n && i < 8; i++)
        found = found || strcmp(l.names[i], "l") == 0;
    assert_true(found);
    assert_int_equal(almanac_delete(a, "p/#", ALMANAC_ANY_REV, NULL), ALMANAC_OK);
    almanac_close(a);
}

/* ---- subscriptions ---- */

struct calls {
    int puts, syncs;
    char last[64];
};

static void on_event(void *arg, const struct almanac_event *ev)
{
    struct calls *c = arg;
    if (ev->type == ALMANAC_EVENT_PUT) {
        c->puts++;
        snprintf(c->last, sizeof c->last, "%s", ev->entry->key);
    } else if (ev->type == ALMANAC_EVENT_SYNC)
        c->syncs++;
}

static void test_subscribe_snapshot_sync_live(void **state)
{
    (void)state;
    struct almanac *a = client(), *w = client();
    unsigned sub, other;
    int64_t r1 = set_text(w, "s/1", "one"), r2 = set_text(w, "s/2", "two");
    assert_int_equal(almanac_subscribe(a, "s/#", NULL, &sub), ALMANAC_OK);
    expect_put(a, "s/1", "one", r1); /* the snapshot, by key */
    expect_put(a, "s/2", "two", r2);
    int64_t sync = expect_sync(a);
    assert_true(sync >= r2);
    assert_int_equal(almanac_sub_rev(a, sub), sync);

    /* A second subscription with a callback: almanac_dispatch gives it its
     * events, almanac_next_event leaves them. */
    struct calls calls = {0};
    struct almanac_subscribe_options cb = {.live_only = true, .callback = on_event, .arg = &calls};
    assert_int_equal(almanac_subscribe(a, "s/3", &cb, &other), ALMANAC_OK);
    assert_int_not_equal(sub, other);

    int64_t r3 = set_text(w, "s/3", "three");
    uint64_t deleted;
    assert_int_equal(almanac_delete(w, "s/1", ALMANAC_ANY_REV, &deleted), ALMANAC_OK);
    const struct almanac_event *ev = next(a);
    assert_int_equal(ev->type, ALMANAC_EVENT_PUT);
    assert_int_equal(ev->sub, sub);
    assert_string_equal(ev->entry->key, "s/3");
    assert_int_equal(ev->entry->rev, r3);
    assert_true(ev->entry->created);
    assert_true(ev->entry->rev > sync);
    ev = next(a);
    assert_int_equal(ev->type, ALMANAC_EVENT_DELETE);
    assert_string_equal(ev->entry->key, "s/1");
    assert_true(ev->entry->deleted);
    assert_null(ev->entry->value);
    assert_true(ev->entry->rev > r3);
    assert_int_equal(almanac_sub_rev(a, sub), ev->entry->rev);

    unsigned n = 0;
    assert_int_equal(almanac_dispatch(a, 5000, &n), ALMANAC_OK);
    while (calls.puts < 1 && almanac_dispatch(a, 5000, &n) == ALMANAC_OK && n > 0)
        ;
    assert_int_equal(calls.syncs, 1);
    assert_int_equal(calls.puts, 1);
    assert_string_equal(calls.last, "s/3");

    /* A transient publish reaches subscribers, and is not stored. */
    assert_int_equal(almanac_publish(w, "s/p", "hello", 5, NULL), ALMANAC_OK);
    ev = next(a);
    assert_string_equal(ev->entry->key, "s/p");
    assert_true(ev->entry->transient);
    struct almanac_entry *e;
    assert_int_equal(almanac_get(w, "s/p", &e), ALMANAC_ENOTFOUND);

    /* unique: no event for a value that did not change. */
    unsigned uniq;
    struct almanac_subscribe_options u = {.live_only = true, .unique = true};
    assert_int_equal(almanac_unsubscribe(a, sub), ALMANAC_OK);
    assert_int_equal(almanac_unsubscribe(a, other), ALMANAC_OK);
    assert_int_equal(almanac_subscribe(a, "s/2", &u, &uniq), ALMANAC_OK);
    expect_sync(a);
    set_text(w, "s/2", "two");
    int64_t r4 = set_text(w, "s/2", "TWO");
    expect_put(a, "s/2", "TWO", r4);
    expect_quiet(a);
    assert_int_equal(almanac_unsubscribe(a, 999), ALMANAC_EINVAL);
    almanac_close(a);
    almanac_close(w);
}

/* Reads the replay after a resumption: `count` puts of `prefix`N in rev
 * order, each rev one of `revs`, then the sync. */
static void expect_replay(struct almanac *a, const char *prefix, const int64_t *revs, int count)
{
    char key[64], value[16];
    for (int i = 0; i < count; i++) {
        snprintf(key, sizeof key, "%s%d", prefix, i);
        snprintf(value, sizeof value, "v%d", i);
        expect_put(a, key, value, revs[i]); /* no gap, no duplicate, in order */
    }
    assert_true(expect_sync(a) >= revs[count - 1]);
}

static void test_resume_after_a_killed_socket(void **state)
{
    (void)state;
    struct almanac *a = client(), *w = client();
    unsigned sub;
    int64_t revs[5];
    char key[32], value[16];
    assert_int_equal(almanac_subscribe(a, "k/#", NULL, &sub), ALMANAC_OK);
    int64_t sync = expect_sync(a);
    int64_t before = set_text(w, "k/before", "b");
    expect_put(a, "k/before", "b", before);
    /* The network drops: the subscriber's socket is cut. */
    assert_int_equal(shutdown(almanac_fd(a), SHUT_RDWR), 0);
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "k/%d", i);
        snprintf(value, sizeof value, "v%d", i);
        revs[i] = set_text(w, key, value);
    }
    assert_true(almanac_sub_rev(a, sub) == before && before > sync);
    expect_replay(a, "k/", revs, 5);
    int64_t live = set_text(w, "k/live", "l");
    expect_put(a, "k/live", "l", live);
    expect_quiet(a);
    assert_int_equal(almanac_sub_rev(a, sub), live);
    /* The handle's requests work on the new connection too. */
    struct almanac_entry *e;
    assert_int_equal(almanac_get(a, "k/3", &e), ALMANAC_OK);
    almanac_entry_free(e);
    almanac_close(a);
    almanac_close(w);
}

static void test_resume_after_a_restart(void **state)
{
    (void)state;
    struct daemon *d = &restart_daemon; /* static: teardown stops it if this test fails */
    daemon_start(d, NULL);
    struct almanac *a = client_as(d, ADMIN), *w = client_as(d, ADMIN);
    unsigned sub;
    int64_t revs[4];
    char key[32], value[16];
    set_text(w, "r/old", "o");
    assert_int_equal(almanac_subscribe(a, "r/#", NULL, &sub), ALMANAC_OK);
    expect_put(a, "r/old", "o", 0);
    expect_sync(a);
    daemon_stop(d);
    daemon_start(d, NULL);
    /* The writer's handle reconnects for its next request by itself. */
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "r/%d", i);
        snprintf(value, sizeof value, "v%d", i);
        revs[i] = set_text(w, key, value);
    }
    expect_replay(a, "r/", revs, 4);
    int64_t live = set_text(w, "r/live", "l");
    expect_put(a, "r/live", "l", live);
    expect_quiet(a);

    /* Without reconnection, the drop is the caller's to handle. */
    struct almanac *b;
    struct almanac_options o = {.token = ADMIN, .no_reconnect = true};
    assert_int_equal(almanac_connect(&b, d->tcp, &o), ALMANAC_OK);
    assert_int_equal(almanac_subscribe(b, "r/live", NULL, &sub), ALMANAC_OK);
    expect_put(b, "r/live", "l", live);
    expect_sync(b);
    daemon_stop(d);
    const struct almanac_event *ev;
    assert_int_equal(almanac_next_event(b, 5000, &ev), ALMANAC_ECLOSED);
    struct almanac_entry *e;
    assert_int_equal(almanac_get(b, "r/live", &e), ALMANAC_ECLOSED);
    assert_int_equal(almanac_resume(b), ALMANAC_ECONNECT);
    daemon_start(d, NULL);
    int64_t later = set_text(w, "r/live", "again");
    assert_int_equal(almanac_resume(b), ALMANAC_OK);
    expect_put(b, "r/live", "again", later);
    expect_sync(b);
    almanac_close(b);

    /* history_gone: history no longer covers the pattern, so the resumed
     * subscription starts again from a fresh snapshot, after a RESET. */
    daemon_stop(d);
    const char *const other[] = {"--history_keys", "elsewhere/#", NULL};
    daemon_start(d, other);
    ev = next(a);
    assert_int_equal(ev->type, ALMANAC_EVENT_RESET);
    assert_int_equal(ev->sub, 1);
    int entries = 0;
    while ((ev = next(a))->type == ALMANAC_EVENT_PUT)
        entries++;
    assert_int_equal(ev->type, ALMANAC_EVENT_SYNC);
    assert_int_equal(entries, 6); /* r/old, r/0..r/3, r/live: each key once */
    almanac_close(a);
    almanac_close(w);
    daemon_stop(d);
    daemon_cleanup(d);
}

/* ---- history ---- */

struct records {
    int n;
    char values[16][16];
    bool deleted[16];
    int64_t revs[16];
};

static int collect_record(void *arg, const struct almanac_entry *e)
{
    struct records *r = arg;
    if (r->n < 16) {
        snprintf(r->values[r->n], sizeof r->values[0], "%s", e->value ? (char *)e->value : "");
        r->deleted[r->n] = e->deleted;
        r->revs[r->n] = e->rev;
    }
    r->n++;
    return 0;
}

static void test_history(void **state)
{
    (void)state;
    struct almanac *a = client();
    int64_t revs[5];
    char value[8];
    for (int i = 0; i < 5; i++) {
        snprintf(value, sizeof value, "%d", i);
        revs[i] = set_text(a, "h/a", value);
    }
    set_text(a, "h/b", "b");
    assert_int_equal(almanac_delete(a, "h/a", ALMANAC_ANY_REV, NULL), ALMANAC_OK);

    struct records r = {0};
    assert_int_equal(almanac_history(a, "h/a", NULL, collect_record, &r), ALMANAC_OK);
    assert_int_equal(r.n, 6);
    for (int i = 0; i < 5; i++) {
        snprintf(value, sizeof value, "%d", i);
        assert_string_equal(r.values[i], value);
        assert_int_equal(r.revs[i], revs[i]);
    }
    assert_true(r.deleted[5]);
    r = (struct records){0};
    struct almanac_history_query q = {.limit = 2, .desc = true};
    assert_int_equal(almanac_history(a, "h/a", &q, collect_record, &r), ALMANAC_OK);
    assert_int_equal(r.n, 2);
    assert_true(r.deleted[0]);
    assert_string_equal(r.values[1], "4");
    r = (struct records){0};
    assert_int_equal(almanac_history(a, "h/#", NULL, collect_record, &r), ALMANAC_OK);
    assert_int_equal(r.n, 7);
    q = (struct almanac_history_query){.start = "2000-01-01T00:00:00Z",
                                       .stop = "2001-01-01T00:00:00Z"};
    r = (struct records){0};
    assert_int_equal(almanac_history(a, "h/#", &q, collect_record, &r), ALMANAC_OK);
    assert_int_equal(r.n, 0);
    q = (struct almanac_history_query){.start = "yesterday"};
    assert_int_equal(almanac_history(a, "h/#", &q, collect_record, &r), ALMANAC_EBADREQUEST);

    /* A subscription from a rev replays the changes after it. */
    unsigned sub;
    struct almanac_subscribe_options o = {.since = revs[2]};
    assert_int_equal(almanac_subscribe(a, "h/a", &o, &sub), ALMANAC_OK);
    expect_put(a, "h/a", "3", revs[3]);
    expect_put(a, "h/a", "4", revs[4]);
    assert_int_equal(next(a)->type, ALMANAC_EVENT_DELETE);
    expect_sync(a);
    almanac_close(a);
}

/* ---- tokens ---- */

static void test_tokens(void **state)
{
    (void)state;
    struct almanac *admin = client(), *http, *r, *bad;
    struct almanac_options o = {.token = ADMIN, .http = main_daemon.http};
    assert_int_equal(almanac_connect(&http, NULL, &o), ALMANAC_OK);
    const char *read[] = {"t/#"};
    struct almanac_token_spec spec = {.name = "reader", .read = read, .nread = 1};
    char *secret = NULL;
    assert_int_equal(almanac_token_create(http, &spec, &secret), ALMANAC_OK);
    assert_non_null(secret);
    assert_true(strncmp(secret, "alm_", 4) == 0);
    set_text(admin, "t/x", "visible");
    set_text(admin, "w/x", "hidden");

    r = client_as(&main_daemon, secret);
    struct almanac_entry *e;
    assert_int_equal(almanac_get(r, "t/x", &e), ALMANAC_OK);
    assert_string_equal((const char *)e->value, "visible");
    almanac_entry_free(e);
    assert_int_equal(almanac_set(r, "t/x", "no", 2, NULL, NULL), ALMANAC_EFORBIDDEN);
    assert_string_equal(almanac_server_error(r), "forbidden");
    assert_non_null(strstr(almanac_errmsg(r), "t/x"));
    assert_int_equal(almanac_get(r, "w/x", &e), ALMANAC_EFORBIDDEN);
    assert_int_equal(almanac_delete(r, "t/x", ALMANAC_ANY_REV, NULL), ALMANAC_EFORBIDDEN);
    unsigned sub;
    assert_int_equal(almanac_subscribe(r, "w/#", NULL, &sub), ALMANAC_EFORBIDDEN);
    struct seen s = {.sorted = true};
    assert_int_equal(almanac_pget(r, "+/x", NULL, count_entry, &s), ALMANAC_OK);
    assert_int_equal(s.count, 1); /* filtered to what it may read */
    assert_string_equal(s.last, "t/x");

    /* The token as an admin's: refused over HTTP too. */
    struct almanac *weak;
    struct almanac_options wo = {.token = secret, .http = main_daemon.http};
    assert_int_equal(almanac_connect(&weak, NULL, &wo), ALMANAC_OK);
    assert_int_equal(almanac_token_revoke(weak, "reader"), ALMANAC_EFORBIDDEN);
    almanac_close(weak);

    /* A wrong token gets unauthorized at once. */
    struct almanac_options bo = {.token = "alm_wrong"};
    assert_int_equal(almanac_connect(&bad, main_daemon.tcp, &bo), ALMANAC_EUNAUTHORIZED);
    assert_string_equal(almanac_server_error(bad), "unauthorized");
    almanac_close(bad);

    /* Revoked: the subscription ends with unauthorized, and resuming is
     * refused for good. */
    assert_int_equal(almanac_subscribe(r, "t/#", NULL, &sub), ALMANAC_OK);
    expect_put(r, "t/x", "visible", 0);
    expect_sync(r);
    assert_int_equal(almanac_token_revoke(http, "reader"), ALMANAC_OK);
    const struct almanac_event *ev = next(r);
    assert_int_equal(ev->type, ALMANAC_EVENT_END);
    assert_int_equal(ev->sub, sub);
    assert_int_equal(ev->error, ALMANAC_EUNAUTHORIZED);
    assert_int_equal(almanac_get(r, "t/x", &e), ALMANAC_EUNAUTHORIZED);
    assert_int_equal(almanac_token_revoke(http, "reader"), ALMANAC_ENOTFOUND);
    memset(secret, 0, strlen(secret));
    free(secret);
    almanac_close(r);
    almanac_close(http);
    almanac_close(admin);
}

/* ---- transports and HTTP ---- */

static int to_memory(void *arg, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, arg) == len ? 0 : -1;
}

static void test_unix_socket_http_and_errors(void **state)
{
    (void)state;
    struct almanac *a;
    char address[160];
    struct almanac_options o = {.token = ADMIN, .http = main_daemon.http};
    snprintf(address, sizeof address, "unix:%s", main_daemon.unix_path);
    assert_int_equal(almanac_connect(&a, address, &o), ALMANAC_OK);
    assert_non_null(almanac_client_id(a));
    set_text(a, "u/x", "over unix");
    struct almanac_entry *e;
    assert_int_equal(almanac_get(a, "u/x", &e), ALMANAC_OK);
    assert_string_equal(e->origin, "unix");
    almanac_entry_free(e);

    char *text = NULL;
    size_t len = 0;
    int status = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_int_equal(almanac_http(a, "GET", "/api/v1/export", NULL, NULL, to_memory, mem, &status),
                     ALMANAC_OK);
    fclose(mem);
    assert_int_equal(status, 200);
    assert_non_null(strstr(text, "\"key\":\"u/x\""));
    free(text);
    assert_int_equal(almanac_http(a, "GET", "/api/v1/keys/u/none", NULL, NULL, NULL, NULL, &status),
                     ALMANAC_ENOTFOUND);
    assert_int_equal(status, 404);
    almanac_close(a);

    assert_int_equal(almanac_connect(&a, "127.0.0.1:1", NULL), ALMANAC_ECONNECT);
    assert_non_null(strstr(almanac_errmsg(a), "cannot connect"));
    almanac_close(a);
    assert_int_equal(almanac_connect(&a, "no-port", NULL), ALMANAC_EINVAL);
    almanac_close(a);
    /* The HTTP port does not speak the session protocol. */
    o.timeout_ms = 2000;
    assert_int_not_equal(almanac_connect(&a, main_daemon.http, &o), ALMANAC_OK);
    almanac_close(a);
}

static int setup(void **state)
{
    (void)state;
    daemon_start(&main_daemon, NULL);
    return 0;
}

/* Also after a failed test: no daemon outlives the run. */
static int teardown(void **state)
{
    (void)state;
    daemon_cleanup(&restart_daemon);
    daemon_stop(&main_daemon);
    daemon_cleanup(&main_daemon);
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--binary") == 0)
            binary = argv[i + 1];
    if (binary == NULL) {
        fprintf(stderr, "usage: test_c --binary PATH/TO/almanac\n");
        return 2;
    }
    signal(SIGPIPE, SIG_DFL); /* the library must not need it ignored */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_set_delete),
        cmocka_unit_test(test_pget_and_ls),
        cmocka_unit_test(test_subscribe_snapshot_sync_live),
        cmocka_unit_test(test_resume_after_a_killed_socket),
        cmocka_unit_test(test_resume_after_a_restart),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_unix_socket_http_and_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
