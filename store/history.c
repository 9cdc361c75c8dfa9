/*
 * history.c — every change of the keys history keeps (the `history` table,
 * written by db__write in the change's own commit): queries, the replay of a
 * subscription's `since` (or `start`: history__first_rev finds its
 * rev), and pruning by age and size.
 *
 * Readers use connections of their own from a small pool (WAL: they never
 * wait for the committer, nor it for them). The pruner has one more
 * connection and a worker (worker.c): it deletes the oldest records in
 * batches of HISTORY_BATCH, each its own short transaction, so the committer waits at
 * most for one batch.
 * Invariants:
 *   1. ts only grows with rev (store_submit), so rev order is time order: a
 *      key's records are found by time through the (key, ts) index, and a
 *      time range of all keys is a range of revs (history__rev_at);
 *   2. meta('history_floor') is a rev such that history holds every change
 *      after it: the pruner raises it in the transaction that deletes up to
 *      it, so a reader that reads it in its own transaction sees every
 *      record above it;
 *   3. meta('history_bytes') and ('history_records') are what the table
 *      holds (the estimate HISTORY_ROW_BYTES + the lengths), moved in the
 *      transactions that add or delete records;
 *   4. a query's label filters judge a deletion by the record of its key
 *      before it (the value it deleted), read in the query's transaction;
 *      when that record is pruned the deletion passes (store_labels).
 Rows are read through db.c's checked column readers: a corrupt record ends
 * a query or a replay with STORE_EINTERNAL and a log line naming its rev.
 */
#include "store_int.h"
#include "clock.h"
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HISTORY_POOL  8      /* idle read connections kept */
#define HISTORY_BATCH "2000" /* records deleted per pruning transaction */

struct history {
    char *path;
    struct blobs *blobs;
    int64_t retention_us;
    uint64_t max_bytes;

    pthread_mutex_t pool_lock;
    sqlite3 *idle[HISTORY_POOL];
    int nidle;

    sqlite3 *conn; /* the pruner's */
    struct worker pruner;

    _Atomic int64_t floor;
    _Atomic uint64_t bytes, records, pruned;
};

/* ---- the read pool ---- */

static sqlite3 *history__get(struct history *h)
{
    sqlite3 *c = NULL;
    pthread_mutex_lock(&h->pool_lock);
    if (h->nidle > 0)
        c = h->idle[--h->nidle];
    pthread_mutex_unlock(&h->pool_lock);
    if (c != NULL)
        return c;
    if (sqlite3_open_v2(h->path, &c, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        log_error("store: cannot open %s to read history: %s", h->path,
                  c ? sqlite3_errmsg(c) : "out of memory");
        sqlite3_close(c);
        return NULL;
    }
    sqlite3_busy_timeout(c, 5000);
    /* Long scans read pages through the map, not a pread each. */
    sqlite3_exec(c, "PRAGMA mmap_size = 1073741824", NULL, NULL, NULL);
    return c;
}

static void history__put(struct history *h, sqlite3 *c)
{
    pthread_mutex_lock(&h->pool_lock);
    if (h->nidle < HISTORY_POOL) {
        h->idle[h->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->pool_lock);
    sqlite3_close(c);
}

/* ---- pruning ---- */

/* Deletes one batch of the oldest records that are too old or over the size
 * cap. Whether it deleted any. */
static bool history__prune_batch(void *arg)
{
    struct history *h = arg;
    sqlite3_stmt *st = NULL;
    int64_t cutoff = h->retention_us > 0 ? now_us() - h->retention_us : INT64_MIN;
    uint64_t bytes = atomic_load(&h->bytes), gone_bytes = 0, gone = 0;
    int64_t upto = 0;
    char sql[512]; /* 256 cut the COMMIT off once revs had 16 digits */

    if (sqlite3_exec(h->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return false;
    if (sqlite3_prepare_v2(h->conn,
                           "SELECT rev, ts, " HISTORY_ROW_SIZE_SQL
                           " FROM history ORDER BY rev LIMIT " HISTORY_BATCH,
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t ts = sqlite3_column_int64(st, 1);
        bool over = h->max_bytes > 0 && bytes - gone_bytes > h->max_bytes;
        if (ts >= cutoff && !over)
            break;
        upto = sqlite3_column_int64(st, 0);
        gone_bytes += (uint64_t)sqlite3_column_int64(st, 2);
        gone++;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (gone == 0) {
        sqlite3_exec(h->conn, "ROLLBACK", NULL, NULL, NULL);
        return false;
    }
    snprintf(sql, sizeof sql,
             "DELETE FROM history WHERE rev <= %lld;"
             "UPDATE meta SET value = value - %llu WHERE name = 'history_bytes';"
             "UPDATE meta SET value = value - %llu WHERE name = 'history_records';"
             "UPDATE meta SET value = max(value, %lld) WHERE name = 'history_floor';"
             "COMMIT",
             (long long)upto, (unsigned long long)gone_bytes, (unsigned long long)gone,
             (long long)upto);
    if (sqlite3_exec(h->conn, sql, NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    atomic_fetch_sub(&h->bytes, gone_bytes);
    atomic_fetch_sub(&h->records, gone);
    atomic_fetch_add(&h->pruned, gone);
    if (upto > atomic_load(&h->floor))
        atomic_store(&h->floor, upto);
    return true;
fail:
    log_warn("store: pruning history: %s", sqlite3_errmsg(h->conn));
    sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(h->conn))
        sqlite3_exec(h->conn, "ROLLBACK", NULL, NULL, NULL);
    return false;
}

int history__open(const char *path, struct blobs *blobs, int64_t retention_us, uint64_t max_bytes,
                  struct history **out, char *why, size_t why_len)
{
    struct history *h = calloc(1, sizeof *h);
    *out = NULL;
    if (h == NULL || (h->path = strdup(path)) == NULL) {
        free(h);
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    h->blobs = blobs;
    h->retention_us = retention_us;
    h->max_bytes = max_bytes;
    pthread_mutex_init(&h->pool_lock, NULL);
    if (sqlite3_open_v2(path, &h->conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(why, why_len, "cannot open %s for history", path);
        history__close(h);
        return STORE_EINTERNAL;
    }
    sqlite3_busy_timeout(h->conn, 5000);
    atomic_store(&h->floor, db__meta_of(h->conn, "history_floor"));
    atomic_store(&h->bytes, (uint64_t)db__meta_of(h->conn, "history_bytes"));
    atomic_store(&h->records, (uint64_t)db__meta_of(h->conn, "history_records"));
    if (worker__start(&h->pruner, history__prune_batch, h) != 0) {
        snprintf(why, why_len, "cannot start the history pruner");
        history__close(h);
        return STORE_EINTERNAL;
    }
    *out = h;
    return STORE_OK;
}

void history__close(struct history *h)
{
    if (h == NULL)
        return;
    worker__stop(&h->pruner);
    sqlite3_close(h->conn);
    for (int i = 0; i < h->nidle; i++)
        sqlite3_close(h->idle[i]);
    pthread_mutex_destroy(&h->pool_lock);
    free(h->path);
    free(h);
}

void history__added(struct history *h, uint64_t bytes, uint64_t records)
{
    atomic_fetch_add(&h->bytes, bytes);
    atomic_fetch_add(&h->records, records);
}

void history__stats(struct history *h, struct store_stats *out)
{
    out->history_floor = atomic_load(&h->floor);
    out->history_bytes = atomic_load(&h->bytes);
    out->history_records = atomic_load(&h->records);
    out->history_pruned = atomic_load(&h->pruned);
}

/* ---- reading records ---- */

#define HISTORY_COLUMNS "rev, key, ts, type, labels, origin, value, deleted, " DB_BLOB_COLUMNS

/* Copies `klen` bytes of `key` and a NUL into `*buf`, grown as needed. */
static int history__copy_key(char **buf, size_t *cap, const char *key, size_t klen)
{
    if (klen + 1 > *cap) {
        char *k = realloc(*buf, klen + 1);
        if (k == NULL)
            return STORE_EINTERNAL;
        *buf = k;
        *cap = klen + 1;
    }
    memcpy(*buf, key, klen);
    (*buf)[klen] = '\0';
    return STORE_OK;
}

/* The record of the current row of `st`: the key into `*key` (grown as
 * needed), the entry a new reference (NULL: a deletion). STORE_OK, or
 * STORE_EINTERNAL with `*bad` naming a corrupt column (NULL: out of
 * memory). */
static int history__row(const struct history *h, sqlite3_stmt *st, char **key, size_t *kcap,
                        struct store_record *rec, struct store_entry **entry, const char **bad)
{
    size_t klen = 0;
    int64_t deleted = 0;
    enum store_origin origin;
    const char *k = db__col_key(st, 1, &klen);

    *entry = NULL;
    *bad = NULL;
    if (k == NULL)
        *bad = "key";
    else if (!db__col_int(st, 0, &rec->rev))
        *bad = "rev";
    else if (!db__col_int(st, 2, &rec->ts))
        *bad = "ts";
    else if (!db__col_int(st, 7, &deleted) || (deleted != 0 && deleted != 1))
        *bad = "deleted";
    else if (!db__col_origin(st, 5, &origin))
        *bad = "origin";
    if (*bad != NULL || history__copy_key(key, kcap, k, klen) != STORE_OK)
        return STORE_EINTERNAL;
    rec->key = *key;
    rec->klen = klen;
    if (!deleted && db__col_entry(st, h->blobs, 3, 4, 6, 8, origin, rec->rev, rec->ts, 0, entry,
                                  bad) != STORE_OK)
        return STORE_EINTERNAL;
    rec->entry = *entry;
    return STORE_OK;
}

/* Logs what is wrong with the row of `st` that history__row refused. */
static void history__log_row(const struct history *h, sqlite3_stmt *st, const char *bad)
{
    if (bad == NULL)
        log_error("store: out of memory reading history from %s", h->path);
    else
        log_error("store: %s is corrupt: the history record at rev %lld has a bad %s column",
                  h->path, (long long)sqlite3_column_int64(st, 0), bad);
}

/* Whether the key of the current row of `st` matches `pat`; -1 when the key
 * is corrupt. */
static int history__row_matches(const struct history *h, sqlite3_stmt *st, const char *pat,
                                size_t plen)
{
    size_t klen;
    const char *k = db__col_key(st, 1, &klen);
    if (k == NULL) {
        history__log_row(h, st, "key");
        return -1;
    }
    return store_pattern_match(pat, plen, k, klen);
}

int history__replay(struct history *h, const char *pat, size_t plen, int64_t since, int64_t upto,
                    struct store_snapshot *snap)
{
    sqlite3 *c = history__get(h);
    sqlite3_stmt *st = NULL;
    char *key = NULL;
    size_t kcap = 0;
    int err = STORE_EINTERNAL, rc;
    bool logged = false;

    struct blob_reader reader;
    if (c == NULL)
        return STORE_EINTERNAL;
    if (h->blobs != NULL)
        blobs__reader_begin(h->blobs, &reader); /* the files of the rows it sees stay */
    if (sqlite3_exec(c, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    /* Invariant 2: the floor and the records of one snapshot. */
    if (since < db__meta_of(c, "history_floor")) {
        err = STORE_EGONE;
        goto out;
    }
    if (sqlite3_prepare_v2(
            c, "SELECT " HISTORY_COLUMNS " FROM history WHERE rev > ?1 AND rev <= ?2 ORDER BY rev",
            -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, since);
    sqlite3_bind_int64(st, 2, upto);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int match = history__row_matches(h, st, pat, plen);
        if (match < 0) {
            logged = true;
            goto out;
        }
        if (!match)
            continue;
        struct store_record rec;
        struct store_entry *e;
        const char *bad;
        if (history__row(h, st, &key, &kcap, &rec, &e, &bad) != STORE_OK) {
            history__log_row(h, st, bad);
            logged = true;
            goto out;
        }
        /* snapshot__add takes `e`, even when it fails */
        if (snapshot__add(snap, rec.key, rec.klen, e, rec.rev, rec.ts) != STORE_OK)
            goto out;
    }
    err = rc == SQLITE_DONE ? STORE_OK : STORE_EINTERNAL;
out:
    if (err == STORE_EINTERNAL && !logged)
        log_error("store: reading history from %s: %s", h->path, sqlite3_errmsg(c));
    sqlite3_finalize(st);
    sqlite3_exec(c, "COMMIT", NULL, NULL, NULL);
    if (h->blobs != NULL)
        blobs__reader_end(h->blobs, &reader);
    history__put(h, c);
    free(key);
    return err;
}

/* ---- queries ---- */

struct store_history {
    struct history *h;
    sqlite3 *conn;
    struct blob_reader reader; /* while the transaction is open (blob.c) */
    bool reading;
    sqlite3_stmt *st;
    sqlite3_stmt *before; /* the record before a deletion (invariant 4) */
    struct store_history_query q;
    bool wild, grouped; /* grouped: a pattern with `every`, key by key */
    size_t emitted;
    int64_t last_rev; /* of the last record handed out */
    bool ended;       /* the statement is done */
    /* the record handed out */
    char *key;
    size_t kcap;
    struct store_entry *entry;
    /* `every`, oldest first: the last record of the group seen so far */
    bool have_cand;
    char *ckey;
    size_t ckcap;
    struct store_record cand;
    struct store_entry *centry;
    /* `every`, newest first: the group last handed out */
    char *gkey;
    size_t gkcap, gklen;
    int64_t gbucket;
    bool have_group;
};

static int64_t history__bucket(int64_t ts, int64_t every)
{
    int64_t b = ts / every;
    return ts < 0 && ts % every != 0 ? b - 1 : b;
}

/* Whether the deletion `rec` passes the label filters: judged by the
 * labels of its key's record before it, the value it deleted, or passed
 * when that record is gone (invariant 4). 1, 0, or a negative error. */
static int history__deletion_passes(struct store_history *it, const struct store_record *rec)
{
    sqlite3_stmt *st = it->before;
    int64_t deleted = 0;
    size_t len = 0;
    const char *labels = NULL;
    int pass = -STORE_EINTERNAL;

    /* (key, ts, rev) is the index: rev is the rowid. */
    if (st == NULL &&
        sqlite3_prepare_v2(it->conn,
                           "SELECT labels, deleted FROM history INDEXED BY history_key_ts "
                           "WHERE key = ?1 AND ts <= ?2 AND rev < ?3 "
                           "ORDER BY ts DESC, rev DESC LIMIT 1",
                           -1, &it->before, NULL) != SQLITE_OK) {
        log_error("store: querying history: %s", sqlite3_errmsg(it->conn));
        return -STORE_EINTERNAL;
    }
    st = it->before;
    sqlite3_bind_text(st, 1, rec->key, (int)rec->klen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, rec->ts);
    sqlite3_bind_int64(st, 3, rec->rev);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        pass = 1; /* pruned: the value it deleted is not known */
    else if (rc != SQLITE_ROW)
        log_error("store: querying history: %s", sqlite3_errmsg(it->conn));
    else if (!db__col_int(st, 1, &deleted) || (deleted != 0 && deleted != 1) ||
             (sqlite3_column_type(st, 0) != SQLITE_NULL &&
              (labels = db__col_text(st, 0, UINT16_MAX, &len)) == NULL))
        log_error("store: %s is corrupt: the history record of %s before rev %lld has a bad "
                  "labels or deleted column",
                  it->h->path, rec->key, (long long)rec->rev);
    else /* a deletion before a deletion deleted nothing known: it passes */
        pass = deleted ? 1 : store_labels_pass(&it->q.labels, labels, len);
    sqlite3_reset(st);
    return pass;
}

/* The (key, ts) of the record `rev` (the key a new string): 1, 0 when it
 * is gone, -1 when out of memory or corrupt. */
static int history__cursor(const struct history *h, sqlite3 *c, int64_t rev, char **key,
                           int64_t *ts)
{
    sqlite3_stmt *st = NULL;
    int found = -1;
    size_t klen;
    const char *k;
    if (sqlite3_prepare_v2(c, "SELECT rev, key, ts FROM history WHERE rev = ?", -1, &st, NULL) !=
        SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, rev);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        found = 0;
    if (rc != SQLITE_ROW)
        goto out;
    if ((k = db__col_key(st, 1, &klen)) == NULL || !db__col_int(st, 2, ts)) {
        history__log_row(h, st, k == NULL ? "key" : "ts");
        goto out;
    }
    if ((*key = strndup(k, klen)) != NULL)
        found = 1;
out:
    sqlite3_finalize(st);
    return found;
}

/* The smallest x such that every record of rev >= x has a ts >= `ts` and
 * every record below it a smaller one (invariant 1), by bisection over revs. */
static int64_t history__rev_at(sqlite3 *c, int64_t ts)
{
    sqlite3_stmt *st = NULL;
    int64_t lo = 0, hi = 0;
    if (sqlite3_prepare_v2(c, "SELECT coalesce(max(rev), 0) + 1 FROM history", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        hi = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(c, "SELECT ts FROM history WHERE rev >= ? ORDER BY rev LIMIT 1", -1, &st,
                           NULL) != SQLITE_OK)
        return 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        sqlite3_bind_int64(st, 1, mid);
        bool later = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int64(st, 0) >= ts;
        sqlite3_reset(st);
        if (later)
            hi = mid;
        else
            lo = mid + 1;
    }
    sqlite3_finalize(st);
    return lo;
}

/* The statement of a query:
 *   a key: the (key, ts) index, in time order;
 *   a pattern: the revs of the time range (rev order is time order), keys
 *     filtered in history__step;
 *   a pattern with `every`: the (key, ts) index, key by key.
 * A cursor resumes after the record it names. */
static int history__prepare(struct store_history *it)
{
    const struct store_history_query *q = &it->q;
    int64_t lo = q->start, hi = q->stop, crev = 0, cts = 0;
    char *ckey = NULL, sql[512];
    const char *where, *cursor = "", *order;

    if (q->after > 0) {
        int found = history__cursor(it->h, it->conn, q->after, &ckey, &cts);
        if (found < 0)
            return STORE_EINTERNAL;
        if (found == 0) {
            /* Pruned: so is all before it. Oldest first, the rest follows;
             * newest first, nothing does. */
            if (q->desc)
                it->ended = true;
        } else
            crev = q->after;
    }
    if (it->grouped) {
        where = "FROM history INDEXED BY history_key_ts WHERE ts >= ?2 AND ts < ?3";
        order = q->desc ? " ORDER BY key DESC, ts DESC, rev DESC" : " ORDER BY key, ts, rev";
        if (crev > 0)
            cursor = q->desc ? " AND (key < ?5 OR (key = ?5 AND ts < ?6))"
                             : " AND (key > ?5 OR (key = ?5 AND (ts > ?6 OR (ts = ?6 AND "
                               "rev > ?4))))";
    } else if (it->wild) {
        where = "FROM history WHERE rev >= ?2 AND rev < ?3";
        order = q->desc ? " ORDER BY rev DESC" : " ORDER BY rev";
        lo = lo == INT64_MIN ? 0 : history__rev_at(it->conn, lo);
        hi = hi == INT64_MAX ? INT64_MAX : history__rev_at(it->conn, hi);
        if (crev > 0)
            cursor = q->desc ? " AND rev < ?4" : " AND rev > ?4";
    } else {
        where = "FROM history WHERE key = ?1 AND ts >= ?2 AND ts < ?3";
        order = q->desc ? " ORDER BY ts DESC, rev DESC" : " ORDER BY ts, rev";
        if (crev > 0) {
            if (q->desc && q->every > 0) /* past the rest of the cursor's bucket */
                hi = hi < history__bucket(cts, q->every) * q->every
                         ? hi
                         : history__bucket(cts, q->every) * q->every;
            else if (q->desc) {
                hi = hi < cts + 1 ? hi : cts + 1;
                cursor = " AND rev < ?4";
            } else {
                lo = lo > cts ? lo : cts;
                cursor = " AND rev > ?4";
            }
        }
    }
    snprintf(sql, sizeof sql, "SELECT " HISTORY_COLUMNS " %s%s%s", where, cursor, order);
    if (sqlite3_prepare_v2(it->conn, sql, -1, &it->st, NULL) != SQLITE_OK) {
        free(ckey);
        return STORE_EINTERNAL;
    }
    if (!it->wild)
        sqlite3_bind_text(it->st, 1, q->pattern, (int)q->plen, SQLITE_TRANSIENT);
    sqlite3_bind_int64(it->st, 2, lo);
    sqlite3_bind_int64(it->st, 3, hi);
    if (crev > 0) {
        sqlite3_bind_int64(it->st, 4, crev);
        if (it->grouped) {
            sqlite3_bind_text(it->st, 5, ckey, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(it->st, 6,
                               q->desc ? history__bucket(cts, q->every) * q->every : cts);
        }
    }
    free(ckey);
    return STORE_OK;
}

int history__query(struct history *h, const struct store_history_query *q,
                   struct store_history **out)
{
    struct store_history *it = calloc(1, sizeof *it);
    *out = NULL;
    if (it == NULL)
        return STORE_EINTERNAL;
    it->h = h;
    it->q = *q;
    /* A key holds neither wildcard. */
    it->wild = memchr(q->pattern, '+', q->plen) != NULL || memchr(q->pattern, '#', q->plen) != NULL;
    it->grouped = it->wild && q->every > 0;
    if ((it->conn = history__get(h)) == NULL) {
        free(it);
        return STORE_EINTERNAL;
    }
    /* One read transaction: the pages of a long answer see one state, and
     * the blob files of its rows stay while it is open. */
    if (h->blobs != NULL) {
        blobs__reader_begin(h->blobs, &it->reader);
        it->reading = true;
    }
    if (sqlite3_exec(it->conn, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        history__prepare(it) != STORE_OK) {
        log_error("store: querying history: %s", sqlite3_errmsg(it->conn));
        store_history_close(it, NULL);
        return STORE_EINTERNAL;
    }
    *out = it;
    return STORE_OK;
}

/* The next row that passes the pattern and label filters: 1, 0 at the end,
 * or a negative error. */
static int history__step(struct store_history *it, struct store_record *rec)
{
    for (;;) {
        if (it->ended)
            return 0;
        int rc = sqlite3_step(it->st);
        if (rc == SQLITE_DONE) {
            it->ended = true;
            return 0;
        }
        if (rc != SQLITE_ROW)
            return -STORE_EINTERNAL;
        if (it->wild) {
            int match = history__row_matches(it->h, it->st, it->q.pattern, it->q.plen);
            if (match < 0)
                return -STORE_EINTERNAL;
            if (!match)
                continue;
        }
        store_entry_unref(it->entry);
        const char *bad;
        if (history__row(it->h, it->st, &it->key, &it->kcap, rec, &it->entry, &bad) != STORE_OK) {
            history__log_row(it->h, it->st, bad);
            return -STORE_EINTERNAL;
        }
        if (store_labels_any(&it->q.labels)) {
            int pass = it->entry != NULL ? store_labels_pass_entry(&it->q.labels, it->entry)
                                         : history__deletion_passes(it, rec);
            if (pass < 0)
                return pass;
            if (!pass)
                continue;
        }
        if (it->q.filter.keep != NULL && !it->q.filter.keep(it->q.filter.arg, rec->key, rec->klen))
            continue; /* not the reader's: neither handed out nor counted */
        return 1;
    }
}

static bool history__same_group(const struct store_record *a, const struct store_record *b,
                                int64_t every)
{
    return a->klen == b->klen && memcmp(a->key, b->key, a->klen) == 0 &&
           history__bucket(a->ts, every) == history__bucket(b->ts, every);
}

/* Keeps `rec` as the candidate of its group (oldest first, `every`). */
static int history__keep(struct store_history *it, const struct store_record *rec)
{
    if (history__copy_key(&it->ckey, &it->ckcap, rec->key, rec->klen) != STORE_OK)
        return -STORE_EINTERNAL;
    store_entry_unref(it->centry);
    it->centry = (struct store_entry *)rec->entry;
    if (it->centry)
        store_entry_ref(it->centry);
    it->cand = *rec;
    it->cand.key = it->ckey;
    it->have_cand = true;
    return 1;
}

/* The next record to hand out, not counting it against the limit. */
static int history__produce(struct store_history *it, struct store_record *rec)
{
    int rc;
    if (it->q.every <= 0)
        return history__step(it, rec);
    if (it->q.desc) {
        /* Newest first: the first record of a group is its last; the rest of
         * the group is skipped. */
        while ((rc = history__step(it, rec)) == 1) {
            int64_t b = history__bucket(rec->ts, it->q.every);
            if (it->have_group && b == it->gbucket && rec->klen == it->gklen &&
                memcmp(rec->key, it->gkey, rec->klen) == 0)
                continue;
            if (history__copy_key(&it->gkey, &it->gkcap, rec->key, rec->klen) != STORE_OK)
                return -STORE_EINTERNAL;
            it->gklen = rec->klen;
            it->gbucket = b;
            it->have_group = true;
            return 1;
        }
        return rc;
    }
    /* Oldest first: a group's last record is known when the next group
     * starts, or at the end. */
    while ((rc = history__step(it, rec)) == 1) {
        if (!it->have_cand || history__same_group(&it->cand, rec, it->q.every)) {
            if (history__keep(it, rec) < 0)
                return -STORE_EINTERNAL;
            continue;
        }
        /* Hand out the candidate; the new row becomes the next one. */
        struct store_record out = it->cand;
        struct store_entry *oe = it->centry;
        char *okey = it->ckey;
        size_t okcap = it->ckcap;
        it->ckey = NULL, it->ckcap = 0, it->centry = NULL;
        if (history__keep(it, rec) < 0) {
            free(okey);
            store_entry_unref(oe);
            return -STORE_EINTERNAL;
        }
        free(it->key);
        it->key = okey;
        it->kcap = okcap;
        store_entry_unref(it->entry);
        it->entry = oe;
        *rec = out;
        return 1;
    }
    if (rc < 0 || !it->have_cand)
        return rc;
    /* The end: the last group's candidate. */
    *rec = it->cand;
    free(it->key);
    it->key = it->ckey;
    it->kcap = it->ckcap;
    rec->key = it->key;
    store_entry_unref(it->entry);
    it->entry = it->centry;
    it->ckey = NULL, it->ckcap = 0, it->centry = NULL;
    it->have_cand = false;
    return 1;
}

int store_history_next(struct store_history *it, struct store_record *rec)
{
    if (it->emitted >= it->q.limit)
        return 0;
    int rc = history__produce(it, rec);
    if (rc == 1) {
        it->emitted++;
        it->last_rev = rec->rev;
    }
    return rc;
}

void store_history_close(struct store_history *it, int64_t *next)
{
    if (next != NULL) {
        struct store_record rec;
        /* A next page exists when one more record would follow (the
         * limit was reached, or the reader stopped before it). */
        *next = it->emitted > 0 && history__produce(it, &rec) == 1 ? it->last_rev : 0;
    }
    sqlite3_finalize(it->st);
    sqlite3_finalize(it->before);
    if (it->conn != NULL) {
        sqlite3_exec(it->conn, "COMMIT", NULL, NULL, NULL);
        history__put(it->h, it->conn);
    }
    if (it->reading)
        blobs__reader_end(it->h->blobs, &it->reader);
    store_entry_unref(it->entry);
    store_entry_unref(it->centry);
    free(it->key);
    free(it->ckey);
    free(it->gkey);
    free(it);
}

int history__first_rev(struct history *h, int64_t ts, int64_t *rev)
{
    /* A query of no key, never stepped, lends its read connection and
     * transaction: the floor and the records of one snapshot (invariant 2). */
    struct store_history_query q = {.pattern = "", .plen = 0, .start = 0, .stop = 0, .limit = 1};
    struct store_history *it;
    int err = history__query(h, &q, &it);
    if (err != STORE_OK)
        return err;
    int64_t floor = db__meta_of(it->conn, "history_floor");
    int64_t origin = db__meta_of(it->conn, "rev_first"); /* no change at or below */
    /* One past the last record before `ts` (invariant 1), 0 when none is. */
    int64_t first = history__rev_at(it->conn, ts);
    store_history_close(it, NULL);
    if (first == 0 && floor <= origin)
        first = origin + 1; /* history holds every change: the first there was */
    /* The changes up to the floor are gone: one of them may be at or after
     * `ts` unless a record before `ts` above the floor says otherwise. */
    if (first - 1 < floor)
        return STORE_EGONE;
    *rev = first;
    return STORE_OK;
}
