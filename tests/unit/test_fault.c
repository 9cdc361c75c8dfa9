/*
 * test_fault.c — the store under faults, against a real SQLite database in a
 * temporary folder:
 *   - an SQLite VFS shim, registered as the default before any store opens
 *     and delegating to the real VFS, fails the Nth write (SQLITE_IOERR_WRITE,
 *     or SQLITE_FULL from then on, as a full disk) or the Nth fsync of the
 *     files it is told to, for every N a workload reaches. Then: a writer
 *     answered with success has its change in the database, one answered
 *     with an error has none of it (a batch is all or nothing, in entries
 *     and in history alike), what the store shows equals what a reopened
 *     store loads, and once the fault clears writes succeed again and the
 *     store is `writable`; the same after a crash (a child that _exits)
 *     right after the fault;
 *   - a database corrupted with the sqlite3 API (NULL or wrongly typed
 *     columns) is refused at open, or fails a history read, with an error
 *     and never undefined behaviour (the sanitizer build aborts on UB).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store.h"

/* ---- the VFS shim ---- */

struct shim_file {
    sqlite3_file base;
    int kind;           /* SQLITE_OPEN_MAIN_DB, SQLITE_OPEN_WAL, ... */
    sqlite3_file *real; /* the real VFS's file, right after this struct */
};

enum fault_op { FAULT_NONE, FAULT_WRITE, FAULT_SYNC };

static struct {
    _Atomic int op;      /* enum fault_op */
    _Atomic int kinds;   /* the files it applies to: SQLITE_OPEN_* flags */
    _Atomic long left;   /* writes (or syncs) of those files to let pass, plus 1 */
    _Atomic int rc;      /* what the failing call returns */
    _Atomic bool sticky; /* every call after the Nth fails too (a full disk) */
    _Atomic long failed; /* calls failed so far */
} fault;

static sqlite3_vfs *real_vfs;
static sqlite3_vfs shim_vfs;

/* Fails the `n`th write or sync (1: the next) of the files of `kinds`. */
static void fault_arm(enum fault_op op, int kinds, long n, int rc, bool sticky)
{
    atomic_store(&fault.op, FAULT_NONE);
    atomic_store(&fault.kinds, kinds);
    atomic_store(&fault.left, n);
    atomic_store(&fault.rc, rc);
    atomic_store(&fault.sticky, sticky);
    atomic_store(&fault.failed, 0);
    atomic_store(&fault.op, op);
}

static void fault_clear(void)
{
    atomic_store(&fault.op, FAULT_NONE);
}

static bool fault_hit(enum fault_op op, int kind)
{
    if (atomic_load(&fault.op) != (int)op || (atomic_load(&fault.kinds) & kind) == 0)
        return false;
    long left = atomic_fetch_sub(&fault.left, 1);
    if (left != 1 && !(left < 1 && atomic_load(&fault.sticky)))
        return false;
    atomic_fetch_add(&fault.failed, 1);
    return true;
}

#define REAL(f) (((struct shim_file *)(void *)(f))->real)
#define KIND(f) (((struct shim_file *)(void *)(f))->kind)

static int shim_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int shim_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}

static int shim_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    if (fault_hit(FAULT_WRITE, KIND(f)))
        return atomic_load(&fault.rc);
    return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}

static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int shim_sync(sqlite3_file *f, int flags)
{
    if (fault_hit(FAULT_SYNC, KIND(f)))
        return atomic_load(&fault.rc);
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int shim_lock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int shim_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int shim_check_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int shim_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int shim_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int shim_device_chars(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int shim_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}

static int shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void shim_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int shim_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int shim_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}

static int shim_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods shim_io = {
    .iVersion = 3,
    .xClose = shim_close,
    .xRead = shim_read,
    .xWrite = shim_write,
    .xTruncate = shim_truncate,
    .xSync = shim_sync,
    .xFileSize = shim_file_size,
    .xLock = shim_lock,
    .xUnlock = shim_unlock,
    .xCheckReservedLock = shim_check_reserved,
    .xFileControl = shim_file_control,
    .xSectorSize = shim_sector_size,
    .xDeviceCharacteristics = shim_device_chars,
    .xShmMap = shim_shm_map,
    .xShmLock = shim_shm_lock,
    .xShmBarrier = shim_shm_barrier,
    .xShmUnmap = shim_shm_unmap,
    .xFetch = shim_fetch,
    .xUnfetch = shim_unfetch,
};

static int shim_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                     int *out_flags)
{
    struct shim_file *sf = (struct shim_file *)(void *)f;
    (void)vfs;
    sf->real = (sqlite3_file *)(void *)(sf + 1);
    sf->kind = flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL |
                        SQLITE_OPEN_TEMP_DB | SQLITE_OPEN_TEMP_JOURNAL | SQLITE_OPEN_TRANSIENT_DB |
                        SQLITE_OPEN_SUBJOURNAL);
    int rc = real_vfs->xOpen(real_vfs, name, sf->real, flags, out_flags);
    sf->base.pMethods = rc == SQLITE_OK && sf->real->pMethods != NULL ? &shim_io : NULL;
    return rc;
}

/* Makes the shim the default VFS, in front of the one that was. 0, or -1. */
static int shim_register(void)
{
    if ((real_vfs = sqlite3_vfs_find(NULL)) == NULL)
        return -1;
    shim_vfs = *real_vfs; /* every other method, and pAppData, as they are */
    shim_vfs.szOsFile = (int)sizeof(struct shim_file) + real_vfs->szOsFile;
    shim_vfs.zName = "almanac-fault";
    shim_vfs.pNext = NULL;
    shim_vfs.xOpen = shim_open;
    return sqlite3_vfs_register(&shim_vfs, 1) == SQLITE_OK ? 0 : -1;
}

/* ---- the store and a model of what it must hold ---- */

#define NKEYS   24 /* f/0..f/15, g/0/x..g/7/x */
#define MAXREVS 4096

struct model {
    bool present[NKEYS];
    char value[NKEYS][32];
    int64_t rev[NKEYS];
    int64_t ok[MAXREVS], bad[MAXREVS]; /* revs of changes answered OK, and not */
    size_t nok, nbad, failures;
    int errs; /* test failures seen in a child, which cannot assert */
    char why[256];
};

static const char *key_name(int i)
{
    static char names[NKEYS][16];
    if (names[i][0] == '\0') {
        if (i < 16)
            snprintf(names[i], sizeof names[i], "f/%d", i);
        else
            snprintf(names[i], sizeof names[i], "g/%d/x", i - 16);
    }
    return names[i];
}

static int key_index(const char *key)
{
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(key_name(i), key) == 0)
            return i;
    return -1;
}

static struct store *open_store(const char *dir, enum store_durability durability)
{
    struct store_config cfg = {.data_dir = dir,
                               .durability = durability,
                               .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20},
                               .history_retention_us = 3600LL * 1000000};
    struct store *s = NULL;
    char why[512];
    if (store_open(&cfg, &s, why, sizeof why) != STORE_OK)
        fail_msg("store_open: %s", why);
    return s;
}

static void make_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/almanac-fault-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void remove_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A failed check: noted in the model (a child process cannot assert). */
#define CHECK(m, cond)                                                                             \
    do {                                                                                           \
        if (!(cond) && (m)->errs++ == 0)                                                           \
            snprintf((m)->why, sizeof(m)->why, "line %d: %s", __LINE__, #cond);                    \
    } while (0)

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int left;
};

static void on_done(void *arg, struct store_txn *t)
{
    struct waiter *w = arg;
    (void)t;
    pthread_mutex_lock(&w->lock);
    w->left--;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void op_set(struct store_op *op, int k, const char *value)
{
    struct store_entry *e;
    assert_int_equal(
        store_entry_new(value, strlen(value), "text/plain", NULL, STORE_ORIGIN_HTTP, &e), STORE_OK);
    *op = (struct store_op){.kind = STORE_OP_SET,
                            .key = key_name(k),
                            .klen = strlen(key_name(k)),
                            .entry = e,
                            .if_rev = STORE_ANY_REV};
}

static void op_del(struct store_op *op, const char *key, bool pattern)
{
    *op = (struct store_op){.kind = STORE_OP_DELETE,
                            .key = key,
                            .klen = strlen(key),
                            .pattern = pattern,
                            .if_rev = STORE_ANY_REV};
}

/* Applies the answer of `t` to the model: every change or none. */
static void model_apply(struct model *m, const struct store_txn *t, const char *const *values)
{
    bool ok = t->err == STORE_OK;
    CHECK(m, ok || t->err == STORE_EINTERNAL || t->err == STORE_EFULL);
    m->failures += !ok;
    for (size_t i = 0; i < t->n; i++) {
        const struct store_op *op = &t->ops[i];
        int64_t *revs = ok ? m->ok : m->bad;
        size_t *n = ok ? &m->nok : &m->nbad;
        if (op->kind == STORE_OP_SET) {
            int k = key_index(op->key);
            if (*n < MAXREVS)
                revs[(*n)++] = op->rev;
            if (ok) {
                m->present[k] = true;
                snprintf(m->value[k], sizeof m->value[k], "%s", values[i]);
                m->rev[k] = op->rev;
            }
        } else if (op->deleted > 0) {
            /* A pattern delete takes consecutive revs, ending at op->rev. */
            for (size_t d = 0; d < op->deleted && *n < MAXREVS; d++)
                revs[(*n)++] = op->rev - (int64_t)d;
            if (ok && !op->pattern)
                m->present[key_index(op->key)] = false;
            if (ok && op->pattern) {
                size_t gone = 0;
                for (int k = 16; k < NKEYS; k++) {
                    gone += m->present[k];
                    m->present[k] = false;
                }
                CHECK(m, gone == op->deleted);
            }
        }
    }
}

/* Submits `n` transactions back to back (one group commit when they meet
 * in the queue), waits for their answers and applies them to the model. */
static void run_txns(struct store *s, struct model *m, struct store_txn *t, size_t n,
                     const char *const (*values)[4])
{
    struct waiter w = {.left = (int)n};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    for (size_t i = 0; i < n; i++)
        if (store_submit(s, &t[i], on_done, &w) != STORE_OK)
            on_done(&w, &t[i]); /* refused before it was queued */
    pthread_mutex_lock(&w.lock);
    while (w.left > 0)
        pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cond);
    for (size_t i = 0; i < n; i++) {
        model_apply(m, &t[i], values[i]);
        store_txn_clear(&t[i]);
    }
}

/* Step `i` of the workload: sets, batches with deletes, two transactions in
 * one group commit, pattern deletes. Stops early when `stop_on_failure`. */
static void run_steps(struct store *s, struct model *m, int from, int to, bool stop_on_failure)
{
    for (int i = from; i < to && !(stop_on_failure && m->failures > 0); i++) {
        struct store_op ops[2][3];
        struct store_txn t[2] = {{.ops = ops[0]}, {.ops = ops[1]}};
        const char *values[2][4] = {{0}};
        char v[4][32];
        for (int j = 0; j < 4; j++)
            snprintf(v[j], sizeof v[j], "v%d.%d", i, j);
        size_t ntxn = 1;
        switch (i % 5) {
        case 0:
            op_set(&ops[0][0], i % 16, values[0][0] = v[0]);
            t[0].n = 1;
            break;
        case 1:
            op_set(&ops[0][0], (i + 1) % 16, values[0][0] = v[0]);
            op_set(&ops[0][1], 16 + i % 8, values[0][1] = v[1]);
            op_del(&ops[0][2], key_name((i + 5) % 16), false);
            t[0].n = 3;
            break;
        case 2:
            op_del(&ops[0][0], key_name((i + 3) % 16), false);
            t[0].n = 1;
            break;
        case 3:
            op_set(&ops[0][0], (i + 7) % 16, values[0][0] = v[0]);
            t[0].n = 1;
            op_set(&ops[1][0], 16 + (i + 2) % 8, values[1][0] = v[1]);
            op_del(&ops[1][1], key_name(16 + (i + 4) % 8), false);
            op_set(&ops[1][2], (i + 11) % 16, values[1][2] = v[2]);
            t[1].n = 3;
            ntxn = 2;
            break;
        default:
            if (i % 10 == 9)
                op_del(&ops[0][0], "g/#", true);
            else
                op_set(&ops[0][0], (i + 9) % 16, values[0][0] = v[0]);
            t[0].n = 1;
            break;
        }
        run_txns(s, m, t, ntxn, values);
    }
}

/* What the store shows equals the model: every key, value and rev. */
static void check_store(struct store *s, struct model *m)
{
    struct store_stats st;
    size_t present = 0;
    for (int k = 0; k < NKEYS; k++) {
        struct store_entry *e = NULL;
        int err = store_get(s, key_name(k), strlen(key_name(k)), &e);
        present += m->present[k];
        CHECK(m, (err == STORE_OK) == m->present[k]);
        if (err != STORE_OK || !m->present[k]) {
            store_entry_unref(e);
            continue;
        }
        size_t len;
        const char *v = store_entry_value(e, &len);
        CHECK(m, len == strlen(m->value[k]) && memcmp(v, m->value[k], len) == 0);
        CHECK(m, store_entry_rev(e) == m->rev[k]);
        store_entry_unref(e);
    }
    store_stats(s, &st);
    CHECK(m, st.keys == present);
}

static int rev_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* History holds the rev of every change answered OK and of none answered
 * with an error. */
static void check_history(struct store *s, struct model *m)
{
    struct store_history_query q = {
        .pattern = "#", .plen = 1, .start = INT64_MIN, .stop = INT64_MAX, .limit = SIZE_MAX};
    struct store_history *h;
    struct store_record rec;
    int64_t *revs = calloc(MAXREVS * 2, sizeof *revs);
    size_t n = 0;
    int rc;
    CHECK(m, store_history_open(s, &q, &h) == STORE_OK);
    while ((rc = store_history_next(h, &rec)) == 1)
        if (n < MAXREVS * 2)
            revs[n++] = rec.rev;
    CHECK(m, rc == 0);
    store_history_close(h, NULL);
    qsort(revs, n, sizeof *revs, rev_cmp);
    for (size_t i = 0; i < m->nok; i++)
        CHECK(m, bsearch(&m->ok[i], revs, n, sizeof *revs, rev_cmp) != NULL);
    for (size_t i = 0; i < m->nbad; i++)
        CHECK(m, bsearch(&m->bad[i], revs, n, sizeof *revs, rev_cmp) == NULL);
    CHECK(m, n == m->nok);
    free(revs);
}

#define STEPS 30

struct fault_case {
    enum store_durability durability;
    enum fault_op op;
    int kinds;
    long n;
    int rc;
    bool sticky;
};

/* The armed part of a case, on the store `s` of `dir`: the workload under
 * the fault, then (unless `crash`) the checks of the store while it runs
 * and after the fault clears. */
static void run_armed(struct store *s, const struct fault_case *c, struct model *m, bool crash)
{
    struct store_stats st;
    run_steps(s, m, 0, 5, false); /* before the fault */
    CHECK(m, m->failures == 0);
    fault_arm(c->op, c->kinds, c->n, c->rc, c->sticky);
    run_steps(s, m, 5, 5 + STEPS, crash);
    bool fired = atomic_load(&fault.failed) > 0;
    store_stats(s, &st);
    CHECK(m, (st.commit_failures > 0) == (m->failures > 0));
    if (c->sticky && fired)
        CHECK(m, !st.writable); /* still failing: the last commit failed */
    check_store(s, m);
    if (crash)
        return;
    fault_clear();
    run_steps(s, m, 5 + STEPS, 15 + STEPS, false);
    store_stats(s, &st);
    CHECK(m, st.writable);
    check_store(s, m);
}

/* One case: returns whether the fault fired (N within the workload). */
static bool run_case(const struct fault_case *c, bool crash)
{
    char dir[64];
    struct model *m = calloc(1, sizeof *m);
    bool fired;

    make_dir(dir, sizeof dir);
    if (!crash) {
        struct store *s = open_store(dir, c->durability);
        run_armed(s, c, m, false);
        fired = atomic_load(&fault.failed) > 0;
        store_close(s);
    } else {
        /* The child runs the store and dies (no close, no checkpoint) right
         * after the first failure; its model comes through a pipe. */
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            struct store *s = open_store(dir, c->durability);
            run_armed(s, c, m, true);
            fired = atomic_load(&fault.failed) > 0;
            ssize_t w = write(fds[1], m, sizeof *m);
            w += write(fds[1], &fired, sizeof fired);
            _exit(w == (ssize_t)(sizeof *m + sizeof fired) ? 0 : 1);
        }
        close(fds[1]);
        size_t got = 0;
        while (got < sizeof *m) {
            ssize_t r = read(fds[0], (char *)m + got, sizeof *m - got);
            assert_true(r > 0);
            got += (size_t)r;
        }
        assert_int_equal(read(fds[0], &fired, sizeof fired), (ssize_t)sizeof fired);
        close(fds[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    fault_clear();
    if (m->errs > 0)
        fail_msg("fault op %d on files %#x at N=%ld (rc %d%s%s), while running: %s", c->op,
                 c->kinds, c->n, c->rc, c->sticky ? ", sticky" : "", crash ? ", crash" : "",
                 m->why);
    /* Reopened without the fault: what the store showed is what it holds. */
    struct store *s = open_store(dir, c->durability);
    check_store(s, m);
    check_history(s, m);
    /* And it goes on from there. */
    size_t failures = m->failures;
    run_steps(s, m, 100, 110, false);
    CHECK(m, m->failures == failures);
    check_store(s, m);
    store_close(s);
    if (m->errs > 0)
        fail_msg("fault op %d on files %#x at N=%ld (rc %d%s%s), after reopening: %s", c->op,
                 c->kinds, c->n, c->rc, c->sticky ? ", sticky" : "", crash ? ", crash" : "",
                 m->why);
    free(m);
    remove_dir(dir);
    return fired;
}

/* Every N from 1 until the workload no longer reaches the Nth call. */
static void run_every_n(struct fault_case c, bool crash, long max)
{
    long fired = 0;
    for (c.n = 1; c.n <= max; c.n++) {
        if (!run_case(&c, crash))
            break;
        fired++;
    }
    print_message("fault op %d on files %#x: fired for N = 1..%ld%s\n", c.op, c.kinds, fired,
                  crash ? " (crash after it)" : "");
    assert_true(fired > 3);  /* the workload does reach the files */
    assert_true(c.n <= max); /* and N ran past the end of it */
}

static void test_write_faults(void **state)
{
    (void)state;
    run_every_n((struct fault_case){STORE_DURABLE_COMMIT, FAULT_WRITE, SQLITE_OPEN_WAL, 0,
                                    SQLITE_IOERR_WRITE, false},
                false, 1000);
    run_every_n((struct fault_case){STORE_DURABLE_FSYNC, FAULT_WRITE, SQLITE_OPEN_WAL, 0,
                                    SQLITE_IOERR_WRITE, false},
                false, 1000);
}

static void test_full_disk(void **state)
{
    (void)state;
    /* Full from the Nth write on, until space is freed. */
    for (long n = 1; n <= 40; n += 3) {
        struct fault_case c = {STORE_DURABLE_COMMIT, FAULT_WRITE, SQLITE_OPEN_WAL, n,
                               SQLITE_FULL,          true};
        assert_true(run_case(&c, false));
    }
}

static void test_sync_faults(void **state)
{
    (void)state;
    run_every_n((struct fault_case){STORE_DURABLE_FSYNC, FAULT_SYNC,
                                    SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_DB, 0, SQLITE_IOERR_FSYNC,
                                    false},
                false, 1000);
}

static void test_crash_after_fault(void **state)
{
    (void)state;
    run_every_n((struct fault_case){STORE_DURABLE_FSYNC, FAULT_SYNC,
                                    SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_DB, 0, SQLITE_IOERR_FSYNC,
                                    false},
                true, 1000);
    run_every_n((struct fault_case){STORE_DURABLE_FSYNC, FAULT_WRITE, SQLITE_OPEN_WAL, 0,
                                    SQLITE_IOERR_WRITE, false},
                true, 1000);
}

/* The checkpointer's writes and syncs of almanac.db fail for a while (it
 * runs about once a second): no writer notices, and nothing is lost. */
static void test_checkpoint_faults(void **state)
{
    (void)state;
    for (int op = FAULT_WRITE; op <= FAULT_SYNC; op++) {
        char dir[64];
        struct model *m = calloc(1, sizeof *m);
        make_dir(dir, sizeof dir);
        struct store *s = open_store(dir, STORE_DURABLE_COMMIT);
        fault_arm((enum fault_op)op, SQLITE_OPEN_MAIN_DB, 1,
                  op == FAULT_WRITE ? SQLITE_IOERR_WRITE : SQLITE_IOERR_FSYNC, true);
        /* The checkpointer runs about once a second. */
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int i = 0;
        do {
            run_steps(s, m, i, i + 5, false);
            i += 5;
            usleep(50 * 1000);
            clock_gettime(CLOCK_MONOTONIC, &now);
        } while (now.tv_sec - t0.tv_sec < 3 ||
                 (atomic_load(&fault.failed) == 0 && now.tv_sec - t0.tv_sec < 10));
        /* The checkpointer did write (it wrote nothing before it learnt of
         * WAL mode with a first read). */
        long failed = atomic_load(&fault.failed);
        fault_clear();
        assert_true(failed > 0);
        assert_int_equal(m->failures, 0);
        check_store(s, m);
        store_close(s);
        s = open_store(dir, STORE_DURABLE_COMMIT);
        check_store(s, m);
        check_history(s, m);
        store_close(s);
        if (m->errs > 0)
            fail_msg("checkpoint fault %d: %s", op, m->why);
        free(m);
        remove_dir(dir);
    }
}

/* ---- a corrupted database ---- */

/* Writes a few keys (with history) and closes the store. */
static void make_db(const char *dir)
{
    struct store *s = open_store(dir, STORE_DURABLE_COMMIT);
    struct model *m = calloc(1, sizeof *m);
    run_steps(s, m, 0, 10, false);
    assert_int_equal(m->errs, 0);
    store_close(s);
    free(m);
}

/* Runs `sql` on the database of `dir` with the sqlite3 API; `changed`:
 * it must change a row. */
static void run_sql(const char *dir, const char *sql, bool changed)
{
    char path[128], *msg = NULL;
    sqlite3 *db;
    snprintf(path, sizeof path, "%s/almanac.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    if (changed)
        assert_true(sqlite3_changes(db) > 0);
    sqlite3_close(db);
}

/* Damages rows of `table` (`set`: "column = value WHERE ..."), its NOT NULL
 * constraints first dropped from the schema, as a damaged file lacks them
 * (a new connection then reads the changed schema). */
static void corrupt(const char *dir, const char *table, const char *set)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "PRAGMA writable_schema = ON;"
             "UPDATE sqlite_schema SET sql = replace(sql, 'NOT NULL', '') WHERE name = '%s';"
             "PRAGMA writable_schema = OFF;",
             table);
    run_sql(dir, sql, false);
    snprintf(sql, sizeof sql, "UPDATE %s SET %s", table, set);
    run_sql(dir, sql, true);
}

static void test_corrupt_entries_refused(void **state)
{
    static const char *const damage[][2] = {
        {"entries", "value = NULL WHERE key = 'f/0'"},
        /* (a NULL key is beyond the API: WITHOUT ROWID keys are NOT NULL) */
        {"entries", "key = '' WHERE key = 'f/0'"},
        {"entries", "key = 'a/+' WHERE key = 'f/0'"},
        {"entries", "key = X'662F00' WHERE key = 'f/0'"},
        {"entries", "key = X'662F31' WHERE key = 'f/0'"}, /* a blob, however readable */
        {"entries", "type = NULL WHERE key = 'f/0'"},
        {"entries", "type = '' WHERE key = 'f/0'"},
        {"entries", "type = X'37' WHERE key = 'f/0'"},
        {"entries", "type = zeroblob(300) WHERE key = 'f/0'"},
        {"entries", "labels = 'not json' WHERE key = 'f/0'"},
        {"entries", "labels = 3 WHERE key = 'f/0'"},
        {"entries", "value = 1.5 WHERE key = 'f/0'"},
        {"entries", "rev = 'x' WHERE key = 'f/0'"},
        {"entries", "rev = NULL WHERE key = 'f/0'"},
        {"entries", "ts = NULL WHERE key = 'f/0'"},
        {"entries", "origin = 99 WHERE key = 'f/0'"},
        {"entries", "origin = NULL WHERE key = 'f/0'"},
        {"meta", "value = 'x' WHERE name = 'rev'"},
        {"meta", "value = NULL WHERE name = 'rev'"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        char dir[64], why[512];
        struct store *s = NULL;
        make_dir(dir, sizeof dir);
        make_db(dir);
        corrupt(dir, damage[i][0], damage[i][1]);
        struct store_config cfg = {.data_dir = dir,
                                   .limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20},
                                   .history_retention_us = 3600LL * 1000000};
        why[0] = '\0';
        int err = store_open(&cfg, &s, why, sizeof why);
        if (err == STORE_OK) {
            store_close(s);
            fail_msg("a database with %s SET %s was loaded", damage[i][0], damage[i][1]);
        }
        assert_null(s);
        if (strstr(why, "corrupt") == NULL)
            fail_msg("%s SET %s: %s", damage[i][0], damage[i][1], why);
        remove_dir(dir);
    }
}

static void no_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    (void)arg, (void)sub, (void)ev;
}

/* A history record with NULL or wrongly typed columns fails the query that
 * reaches it (and a replay), with an error. */
static void test_corrupt_history_read(void **state)
{
    static const char *const damage[] = {
        "value = NULL, type = NULL",
        "key = NULL",
        "key = ''",
        "key = X'662F32'", /* (a number would be stored as text: TEXT affinity) */
        "key = X'00'",
        "type = NULL",
        "type = X'35'",
        "labels = x'7b'",
        "value = 2.5",
        "origin = -1",
        "origin = 'x'",
        "ts = NULL",
        "ts = 'late'",
        "deleted = NULL",
        "deleted = 7",
    };
    (void)state;
    for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        char dir[64], sql[256];
        make_dir(dir, sizeof dir);
        make_db(dir);
        /* the second rev is the set of f/2 (step 1's batch) */
        snprintf(sql, sizeof sql, "%s WHERE rev = (SELECT min(rev) + 1 FROM history)", damage[i]);
        corrupt(dir, "history", sql);
        struct store *s = open_store(dir, STORE_DURABLE_COMMIT);
        static const char *const patterns[] = {"#", "f/+", "f/2"};
        bool failed = false;
        for (size_t p = 0; p < 3; p++) {
            struct store_history_query q = {.pattern = patterns[p],
                                            .plen = strlen(patterns[p]),
                                            .start = INT64_MIN,
                                            .stop = INT64_MAX,
                                            .limit = SIZE_MAX};
            struct store_history *h;
            struct store_record rec;
            int rc = -1;
            if (store_history_open(s, &q, &h) != STORE_OK) {
                failed = true;
                continue;
            }
            while ((rc = store_history_next(h, &rec)) == 1)
                assert_non_null(rec.key);
            store_history_close(h, NULL);
            failed |= rc < 0;
        }
        /* A key (f/2) or a wildcard over it meets the record: an error. */
        if (!failed)
            fail_msg("history with %s at rev 2 was read without an error", damage[i]);
        /* A replay from before it too. */
        struct store_snapshot snap = {0};
        struct store_sub *sub = NULL;
        int64_t sync_rev;
        int err =
            store_subscribe_since(s, "#", 1, false, no_event, NULL, 0, &snap, &sync_rev, &sub);
        if (err == STORE_OK) {
            store_unsubscribe(s, sub);
            store_snapshot_free(&snap);
            fail_msg("a replay over history with %s at rev 2 succeeded", damage[i]);
        }
        store_close(s);
        remove_dir(dir);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_faults),         cmocka_unit_test(test_full_disk),
        cmocka_unit_test(test_sync_faults),          cmocka_unit_test(test_crash_after_fault),
        cmocka_unit_test(test_checkpoint_faults),    cmocka_unit_test(test_corrupt_entries_refused),
        cmocka_unit_test(test_corrupt_history_read),
    };
    if (getenv("TEST_FILTER") != NULL) /* one test by name, when debugging */
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    if (shim_register() != 0) {
        fprintf(stderr, "cannot register the VFS shim\n");
        return 1;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
