/*
 * db.c — SQLite persistence: opening, migrations, loading, and writing the
 * committer's transactions.
 *
 * `data_dir/almanac.db` in WAL mode. One connection, owned by the thread that
 * opened it until the committer starts, then by the committer alone.
 * Invariants:
 *   1. `schema_version` has one row per applied migration; migrations run in
 *      order, each in its own transaction; a database whose highest version
 *      is above DB_SCHEMA_VERSION is refused, never touched;
 *   2. meta('rev') is the highest rev ever committed, deletions included, so
 *      revs never repeat across restarts;
 *   3. db__write writes a whole list of commits in one transaction or
 *      nothing.
 * A lock file (flock) keeps a second almanac off the same data_dir.
 * WAL checkpoints run on a worker (worker.c) with its own connection
 * (PASSIVE, once a second), not inside a commit: a writer never waits for
 * one.
 */
#include "store_int.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct db {
    sqlite3 *conn;
    sqlite3 *ckpt_conn; /* the checkpointer's */
    struct worker ckpt;
    sqlite3_stmt *put, *del, *rev, *obx_put, *obx_del, *hist_put, *hist_count;
    int schema_version;
    int lock_fd;
    char *path;
};

/* Migration N brings the schema from version N-1 to N. Each keeps its SQL
 * forever: a database of any older version is brought up step by step. */
static const char *const db__migrations[DB_SCHEMA_VERSION + 1] = {
    [1] = "CREATE TABLE entries ("
          "  key TEXT PRIMARY KEY, rev INTEGER NOT NULL, ts INTEGER NOT NULL,"
          "  type TEXT NOT NULL, labels TEXT, origin INTEGER NOT NULL, value BLOB NOT NULL"
          ") WITHOUT ROWID;"
          "CREATE TABLE history ("
          "  rev INTEGER PRIMARY KEY, key TEXT NOT NULL, ts INTEGER NOT NULL,"
          "  type TEXT, labels TEXT, origin INTEGER NOT NULL, value BLOB,"
          "  deleted INTEGER NOT NULL DEFAULT 0);"
          "CREATE INDEX history_key_rev ON history(key, rev);"
          "CREATE INDEX history_ts ON history(ts);"
          "CREATE TABLE outbox ("
          "  topic TEXT PRIMARY KEY, rev INTEGER NOT NULL, type TEXT, labels TEXT,"
          "  value BLOB, deleted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
          "CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;"
          "INSERT INTO meta(name, value) VALUES ('rev', 0);",
    /* History queries by key and time (across keys, rev order is time
     * order); what history holds, and from where it is complete: a database
     * of schema 1 never wrote history. */
    [2] = "DROP INDEX history_key_rev;"
          "DROP INDEX history_ts;"
          "CREATE INDEX history_key_ts ON history(key, ts);"
          "INSERT INTO meta(name, value) SELECT 'history_bytes', coalesce(sum(" HISTORY_ROW_SIZE_SQL
          "), 0) FROM history;"
          "INSERT INTO meta(name, value) SELECT 'history_records', count(*) FROM history;"
          "INSERT INTO meta(name, value) SELECT 'history_floor', value FROM meta WHERE name = "
          "'rev';",
};

static int64_t db__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int db__exec(struct db *db, const char *sql, char *why, size_t why_len)
{
    char *msg = NULL;
    if (sqlite3_exec(db->conn, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    snprintf(why, why_len, "%s: %s", db->path, msg ? msg : sqlite3_errmsg(db->conn));
    sqlite3_free(msg);
    return -1;
}

/* The highest applied migration, 0 for a new database, -1 on error. */
static int db__current_version(struct db *db, char *why, size_t why_len)
{
    sqlite3_stmt *st = NULL;
    int version = -1;
    const char *sql = "SELECT count(*) FROM sqlite_master WHERE name = 'schema_version'";

    if (sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto fail;
    if (sqlite3_column_int(st, 0) == 0) {
        version = 0;
        goto out;
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db->conn, "SELECT coalesce(max(version), 0) FROM schema_version", -1,
                           &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto fail;
    version = sqlite3_column_int(st, 0);
    goto out;
fail:
    snprintf(why, why_len, "%s: cannot read the schema version: %s", db->path,
             sqlite3_errmsg(db->conn));
out:
    sqlite3_finalize(st);
    return version;
}

static int db__migrate(struct db *db, char *why, size_t why_len)
{
    int version = db__current_version(db, why, why_len);
    if (version < 0)
        return STORE_EINTERNAL;
    if (version > DB_SCHEMA_VERSION) {
        snprintf(why, why_len,
                 "%s has schema version %d, newer than this almanac, which knows versions up to "
                 "%d: run a newer almanac",
                 db->path, version, DB_SCHEMA_VERSION);
        return STORE_EINTERNAL;
    }
    if (version == 0 && db__exec(db,
                                 "CREATE TABLE IF NOT EXISTS schema_version ("
                                 " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                                 why, why_len) != 0)
        return STORE_EINTERNAL;
    for (int v = version + 1; v <= DB_SCHEMA_VERSION; v++) {
        char record[128];
        snprintf(record, sizeof record, "INSERT INTO schema_version VALUES (%d, %lld)", v,
                 (long long)db__now_us());
        if (db__exec(db, "BEGIN IMMEDIATE", why, why_len) != 0)
            return STORE_EINTERNAL;
        if (db__exec(db, db__migrations[v], why, why_len) != 0 ||
            db__exec(db, record, why, why_len) != 0 || db__exec(db, "COMMIT", why, why_len) != 0) {
            char ignore[8];
            db__exec(db, "ROLLBACK", ignore, sizeof ignore);
            return STORE_EINTERNAL;
        }
        log_info("store: applied schema migration %d to %s", v, db->path);
    }
    db->schema_version = DB_SCHEMA_VERSION;
    return STORE_OK;
}

static int db__lock(struct db *db, const char *dir, char *why, size_t why_len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/almanac.lock", dir);
    db->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (db->lock_fd < 0) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(db->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(why, why_len, "%s is in use by another almanac (%s is locked)", dir, path);
        return -1;
    }
    return 0;
}

static bool db__checkpoint(void *arg)
{
    struct db *db = arg;
    int rc = sqlite3_wal_checkpoint_v2(db->ckpt_conn, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        log_warn("store: checkpoint of %s: %s", db->path, sqlite3_errmsg(db->ckpt_conn));
    return false;
}

static int db__start_checkpointer(struct db *db, char *why, size_t why_len)
{
    if (db__exec(db, "PRAGMA wal_autocheckpoint=0", why, why_len) != 0)
        return -1;
    if (sqlite3_open_v2(db->path, &db->ckpt_conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(why, why_len, "cannot open %s for checkpoints", db->path);
        return -1;
    }
    sqlite3_busy_timeout(db->ckpt_conn, 1000);
    if (worker__start(&db->ckpt, db__checkpoint, db) != 0) {
        snprintf(why, why_len, "cannot start the checkpoint thread");
        return -1;
    }
    return 0;
}

int db__open(const char *dir, enum store_durability durability, uint64_t max_bytes, struct db **out,
             char *why, size_t why_len)
{
    struct db *db = calloc(1, sizeof *db);
    int err = STORE_EINTERNAL;
    size_t plen = strlen(dir) + sizeof "/almanac.db";

    *out = NULL;
    if (db == NULL || (db->path = malloc(plen)) == NULL) {
        snprintf(why, why_len, "out of memory");
        free(db);
        return STORE_EINTERNAL;
    }
    db->lock_fd = -1;
    snprintf(db->path, plen, "%s/almanac.db", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create data_dir %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (db__lock(db, dir, why, why_len) != 0)
        goto fail;
    if (sqlite3_open_v2(db->path, &db->conn,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(why, why_len, "cannot open %s: %s", db->path,
                 db->conn ? sqlite3_errmsg(db->conn) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(db->conn, 5000);
    if (db__exec(db, "PRAGMA journal_mode=WAL", why, why_len) != 0 ||
        db__exec(db,
                 durability == STORE_DURABLE_FSYNC ? "PRAGMA synchronous=FULL"
                                                   : "PRAGMA synchronous=NORMAL",
                 why, why_len) != 0)
        goto fail;
    if ((err = db__migrate(db, why, why_len)) != STORE_OK)
        goto fail;
    /* Pages through the map and a larger cache: an insert into a big index
     * then costs no read system call. */
    if (db__exec(db, "PRAGMA mmap_size = 1073741824", why, why_len) != 0 ||
        db__exec(db, "PRAGMA cache_size = -65536", why, why_len) != 0)
        goto fail;
    if (max_bytes > 0) {
        /* SQLite refuses to grow the file past it: SQLITE_FULL, as a full
         * disk would, and db__write answers STORE_EFULL. */
        char pragma[64];
        snprintf(pragma, sizeof pragma, "PRAGMA max_page_count = %llu",
                 (unsigned long long)(max_bytes / 4096 > 0 ? max_bytes / 4096 : 1));
        if (db__exec(db, "PRAGMA page_size = 4096", why, why_len) != 0 ||
            db__exec(db, pragma, why, why_len) != 0)
            goto fail;
    }
    err = STORE_EINTERNAL;
    if (db__start_checkpointer(db, why, why_len) != 0)
        goto fail;
    if (sqlite3_prepare_v3(db->conn,
                           "INSERT OR REPLACE INTO entries(key, rev, ts, type, labels, origin, "
                           "value) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "DELETE FROM entries WHERE key = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "UPDATE meta SET value = ? WHERE name = 'rev'", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->rev, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn,
                           "INSERT OR REPLACE INTO outbox(topic, rev, type, labels, value, "
                           "deleted) VALUES (?, ?, ?, ?, ?, ?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->obx_put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "DELETE FROM outbox WHERE topic = ? AND rev = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->obx_del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn,
                           "INSERT INTO history(rev, key, ts, type, labels, origin, value, "
                           "deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->hist_put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn,
                           "UPDATE meta SET value = value + (CASE name WHEN 'history_bytes' "
                           "THEN ?1 ELSE ?2 END) WHERE name IN ('history_bytes', "
                           "'history_records')",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->hist_count, NULL) != SQLITE_OK) {
        snprintf(why, why_len, "%s: %s", db->path, sqlite3_errmsg(db->conn));
        goto fail;
    }
    *out = db;
    return STORE_OK;
fail:
    db__close(db);
    return err;
}

void db__close(struct db *db)
{
    if (db == NULL)
        return;
    worker__stop(&db->ckpt);
    if (db->ckpt_conn != NULL)
        sqlite3_close(db->ckpt_conn);
    sqlite3_finalize(db->put);
    sqlite3_finalize(db->del);
    sqlite3_finalize(db->rev);
    sqlite3_finalize(db->obx_put);
    sqlite3_finalize(db->obx_del);
    sqlite3_finalize(db->hist_put);
    sqlite3_finalize(db->hist_count);
    if (db->conn != NULL && sqlite3_close(db->conn) != SQLITE_OK)
        log_warn("store: closing %s: %s", db->path, sqlite3_errmsg(db->conn));
    if (db->lock_fd >= 0)
        close(db->lock_fd);
    free(db->path);
    free(db);
}

int db__schema_version(const struct db *db)
{
    return db->schema_version;
}

const char *db__path(const struct db *db)
{
    return db->path;
}

int db__load(struct db *db, db_load_fn fn, void *arg, int64_t *rev, char *why, size_t why_len)
{
    sqlite3_stmt *st = NULL;
    int rc, err = STORE_EINTERNAL;

    *rev = 0;
    if (sqlite3_prepare_v2(db->conn, "SELECT coalesce(max(value), 0) FROM meta WHERE name = 'rev'",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW)
        goto fail;
    *rev = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db->conn,
                           "SELECT key, rev, ts, type, labels, origin, value FROM entries", -1, &st,
                           NULL) != SQLITE_OK)
        goto fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        size_t klen = (size_t)sqlite3_column_bytes(st, 0);
        int64_t erev = sqlite3_column_int64(st, 1);
        const void *value = sqlite3_column_blob(st, 6);
        size_t vlen = (size_t)sqlite3_column_bytes(st, 6);
        struct store_entry *e = entry__load(value, vlen, (const char *)sqlite3_column_text(st, 3),
                                            (const char *)sqlite3_column_text(st, 4),
                                            (enum store_origin)sqlite3_column_int(st, 5), erev,
                                            sqlite3_column_int64(st, 2));
        if (e == NULL || fn(arg, key, klen, e) != STORE_OK) {
            snprintf(why, why_len, "out of memory while loading %s", db->path);
            sqlite3_finalize(st);
            return STORE_EINTERNAL;
        }
        if (erev > *rev)
            *rev = erev;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    err = STORE_OK;
    goto out;
fail:
    snprintf(why, why_len, "cannot load %s: %s", db->path, sqlite3_errmsg(db->conn));
out:
    sqlite3_finalize(st);
    return err;
}

int64_t db__meta(struct db *db, const char *name)
{
    return db__meta_of(db->conn, name);
}

int64_t db__meta_of(sqlite3 *conn, const char *name)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    if (sqlite3_prepare_v2(conn, "SELECT value FROM meta WHERE name = ?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

char *db__meta_text(struct db *db, const char *name)
{
    sqlite3_stmt *st = NULL;
    char *v = NULL;
    if (sqlite3_prepare_v2(db->conn, "SELECT value FROM meta WHERE name = ?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            v = strdup((const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return v;
}

int db__set_meta(struct db *db, const char *name, const char *text, int64_t value)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db->conn, "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (text != NULL)
            sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC);
        else
            sqlite3_bind_int64(st, 2, value);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? STORE_OK : STORE_EINTERNAL;
}

int db__load_outbox(struct db *db, struct outbox *ob, char *why, size_t why_len)
{
    sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(db->conn,
                           "SELECT topic, rev, type, labels, value, deleted FROM outbox "
                           "ORDER BY rev",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_entry *e = NULL;
        int64_t rev = sqlite3_column_int64(st, 1);
        if (!sqlite3_column_int(st, 5)) {
            e = entry__load(sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4),
                            (const char *)sqlite3_column_text(st, 2),
                            (const char *)sqlite3_column_text(st, 3), STORE_ORIGIN_HTTP, rev, 0);
            if (e == NULL)
                goto oom;
        }
        int err = outbox__put(ob, (const char *)sqlite3_column_text(st, 0), rev, e);
        store_entry_unref(e);
        if (err != STORE_OK)
            goto oom;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    return STORE_OK;
oom:
    sqlite3_finalize(st);
    snprintf(why, why_len, "out of memory while loading the outbox of %s", db->path);
    return STORE_EINTERNAL;
fail:
    snprintf(why, why_len, "cannot load the outbox of %s: %s", db->path, sqlite3_errmsg(db->conn));
    sqlite3_finalize(st);
    return STORE_EINTERNAL;
}

static int db__step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int db__write_outbox(struct db *db, const struct change *c)
{
    sqlite3_stmt *st = db->obx_put;
    sqlite3_bind_text(st, 1, c->topic, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->rev);
    if (c->entry != NULL) {
        size_t vlen;
        const void *value = store_entry_value(c->entry, &vlen);
        sqlite3_bind_text(st, 3, store_entry_type(c->entry), -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, store_entry_labels(c->entry), -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 5, vlen ? value : "", (int)vlen, SQLITE_STATIC);
    }
    sqlite3_bind_int(st, 6, c->entry == NULL);
    return db__step(st);
}

/* The history record of `c`; adds its size to `*bytes`. */
static int db__write_history(struct db *db, const struct change *c, uint64_t *bytes)
{
    sqlite3_stmt *st = db->hist_put;
    size_t vlen = 0, tlen = 0, llen = 0;
    sqlite3_bind_int64(st, 1, c->rev);
    sqlite3_bind_text(st, 2, c->key, (int)c->klen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, c->ts);
    if (c->entry != NULL) {
        const void *value = store_entry_value(c->entry, &vlen);
        const char *type = store_entry_type(c->entry), *labels = store_entry_labels(c->entry);
        tlen = strlen(type);
        llen = labels ? strlen(labels) : 0;
        sqlite3_bind_text(st, 4, type, (int)tlen, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, labels, (int)llen, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, (int)store_entry_origin(c->entry));
        sqlite3_bind_blob(st, 7, vlen ? value : "", (int)vlen, SQLITE_STATIC);
    } else
        sqlite3_bind_int(st, 6, (int)c->origin);
    sqlite3_bind_int(st, 8, c->entry == NULL);
    *bytes += c->klen + vlen + tlen + llen + HISTORY_ROW_BYTES;
    return db__step(st);
}

static int db__write_change(struct db *db, const struct change *c)
{
    if (c->topic != NULL) {
        int rc = db__write_outbox(db, c);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (c->entry == NULL) {
        sqlite3_bind_text(db->del, 1, c->key, (int)c->klen, SQLITE_STATIC);
        return db__step(db->del);
    }
    size_t vlen;
    const void *value = store_entry_value(c->entry, &vlen);
    sqlite3_stmt *st = db->put;
    sqlite3_bind_text(st, 1, c->key, (int)c->klen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->rev);
    sqlite3_bind_int64(st, 3, c->ts);
    sqlite3_bind_text(st, 4, store_entry_type(c->entry), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, store_entry_labels(c->entry), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, (int)store_entry_origin(c->entry));
    sqlite3_bind_blob(st, 7, vlen ? value : "", (int)vlen, SQLITE_STATIC);
    return db__step(st);
}

int db__write(struct db *db, const struct commit *list, const struct outbox_ack *acks, size_t nacks,
              uint64_t *hist_bytes, uint64_t *hist_records)
{
    int rc = sqlite3_exec(db->conn, "BEGIN", NULL, NULL, NULL);
    int64_t last = 0;

    *hist_bytes = *hist_records = 0;
    for (size_t i = 0; i < nacks && rc == SQLITE_OK; i++) {
        sqlite3_bind_text(db->obx_del, 1, acks[i].topic, -1, SQLITE_STATIC);
        sqlite3_bind_int64(db->obx_del, 2, acks[i].rev);
        rc = db__step(db->obx_del);
    }
    for (const struct commit *c = list; c != NULL && rc == SQLITE_OK; c = c->next) {
        for (size_t i = 0; i < c->n && rc == SQLITE_OK; i++) {
            if (c->changes[i].transient)
                continue;
            rc = db__write_change(db, &c->changes[i]);
            if (rc == SQLITE_OK && c->changes[i].history) {
                rc = db__write_history(db, &c->changes[i], hist_bytes);
                ++*hist_records;
            }
            last = c->last_rev;
        }
    }
    if (rc == SQLITE_OK && *hist_records > 0) {
        sqlite3_bind_int64(db->hist_count, 1, (int64_t)*hist_bytes);
        sqlite3_bind_int64(db->hist_count, 2, (int64_t)*hist_records);
        rc = db__step(db->hist_count);
    }
    if (rc == SQLITE_OK && last > 0) {
        sqlite3_bind_int64(db->rev, 1, last);
        rc = db__step(db->rev);
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db->conn, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        return STORE_OK;
    log_error("store: commit to %s failed: %s", db->path, sqlite3_errmsg(db->conn));
    int full = rc == SQLITE_FULL || sqlite3_extended_errcode(db->conn) == SQLITE_FULL;
    if (!sqlite3_get_autocommit(db->conn))
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    return full ? STORE_EFULL : STORE_EINTERNAL;
}
