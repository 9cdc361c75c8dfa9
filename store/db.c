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
 *      nothing, and a failed one stays failed: after a failure it buries
 *      the frames the commit may have left in the WAL (db__bury) before it
 *      returns, so a crash cannot bring back a change refused to a writer.
 *   4. every column read back is checked (type, NULL, length) before use:
 *      a corrupt or hand-edited file gives an error naming the row, never a
 *      NULL pointer or a wrong length handed on (db__col_*).
 * The database file itself is locked (flock, held from before SQLite opens
 * it until after every connection to it is closed): a second almanac on the
 * same data_dir is refused, and no separate lock file can be deleted from
 * under the first. On Linux flock locks and SQLite's POSIX (fcntl) locks are
 * independent, so SQLite's own locking is undisturbed (not so on NFS, where
 * flock is emulated with fcntl: data_dir must be local). Closing any
 * descriptor of the file drops the process's POSIX locks on it, hence the
 * order in db__close.
 * WAL checkpoints run on a worker (worker.c) with its own connection
 * (PASSIVE, once a second), not inside a commit: a writer never waits for
 * one.
 */
#include "store_int.h"
#include "clock.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

struct db {
    sqlite3 *conn;
    sqlite3 *ckpt_conn; /* the checkpointer's */
    struct worker ckpt;
    sqlite3_stmt *put, *del, *rev, *obx_put, *obx_del, *hist_put, *hist_count;
    struct blobs *blobs; /* NULL: no blob files */
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
    [2] =
        "DROP INDEX history_key_rev;"
        "DROP INDEX history_ts;"
        "CREATE INDEX history_key_ts ON history(key, ts);"
        "INSERT INTO meta(name, value) SELECT 'history_bytes', coalesce(sum(" HISTORY_ROW_SIZE_SQL_2
        "), 0) FROM history;"
        "INSERT INTO meta(name, value) SELECT 'history_records', count(*) FROM history;"
        "INSERT INTO meta(name, value) SELECT 'history_floor', value FROM meta WHERE name = "
        "'rev';",
    /* Access tokens: the secret is kept only as its SHA-256. */
    [3] = "CREATE TABLE tokens ("
          "  name TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, read TEXT NOT NULL,"
          "  write TEXT NOT NULL, admin INTEGER NOT NULL, created INTEGER NOT NULL,"
          "  expires INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;",
    /* Keys that expire: when (µs), NULL for never. */
    [4] = "ALTER TABLE entries ADD COLUMN expires INTEGER;"
          "ALTER TABLE outbox ADD COLUMN expires INTEGER;",
    /* Values in blob files (blob.c): where, how long, their CRC-32C; the
     * value column then holds nothing. The indexes find a file's rows. */
    [5] = "ALTER TABLE entries ADD COLUMN blob_file INTEGER;"
          "ALTER TABLE entries ADD COLUMN blob_off INTEGER;"
          "ALTER TABLE entries ADD COLUMN blob_len INTEGER;"
          "ALTER TABLE entries ADD COLUMN blob_crc INTEGER;"
          "ALTER TABLE history ADD COLUMN blob_file INTEGER;"
          "ALTER TABLE history ADD COLUMN blob_off INTEGER;"
          "ALTER TABLE history ADD COLUMN blob_len INTEGER;"
          "ALTER TABLE history ADD COLUMN blob_crc INTEGER;"
          "ALTER TABLE outbox ADD COLUMN blob_file INTEGER;"
          "ALTER TABLE outbox ADD COLUMN blob_off INTEGER;"
          "ALTER TABLE outbox ADD COLUMN blob_len INTEGER;"
          "ALTER TABLE outbox ADD COLUMN blob_crc INTEGER;"
          "CREATE INDEX entries_blob ON entries(blob_file) WHERE blob_file IS NOT NULL;"
          "CREATE INDEX history_blob ON history(blob_file) WHERE blob_file IS NOT NULL;"
          "CREATE INDEX outbox_blob ON outbox(blob_file) WHERE blob_file IS NOT NULL;",
    /* Revs of their own: each database's jump forward by a random 1..2^20
     * times 2^30, so that two almanacs' revs (each fewer than 2^30 changes
     * apart) almost never meet. A client that resumes with a rev of another
     * almanac (a load balancer moved it) then finds it above this one's
     * rev (history_gone and a fresh snapshot), or below all of this one's
     * changes: a replay of every one of them, or history_gone when history
     * no longer holds them all. Never a replay from a rev that names
     * another change here. Revs stay under 2^51: exact in JavaScript. A
     * database that had changes keeps history from the jump on: a client
     * resuming with an older rev takes one fresh snapshot. A new one notes
     * its first rev (meta 'rev_first': no change was ever at or below it). */
    [6] = "INSERT INTO meta(name, value) VALUES "
          "  ('rev_jump', (abs(random() % 1048576) + 1) * 1073741824);"
          "UPDATE meta SET value = (SELECT value FROM meta WHERE name = 'rev') + "
          "  (SELECT value FROM meta WHERE name = 'rev_jump') "
          "WHERE name = 'history_floor' AND (SELECT value FROM meta WHERE name = 'rev') > 0;"
          "INSERT INTO meta(name, value) SELECT 'rev_first', 0 FROM meta "
          "  WHERE name = 'rev' AND value = 0;"
          "UPDATE meta SET value = value + (SELECT value FROM meta WHERE name = 'rev_jump') "
          "WHERE name IN ('rev', 'rev_first');"
          "DELETE FROM meta WHERE name = 'rev_jump';",
};

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
                 (long long)now_us());
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

/* The pid holding a flock on the file of `fd`, from /proc/locks; 0 when
 * unknown. */
static long db__lock_holder(int fd)
{
    struct stat st;
    char line[256];
    long pid = 0;
    FILE *f;

    if (fstat(fd, &st) != 0 || (f = fopen("/proc/locks", "re")) == NULL)
        return 0;
    /* "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (major:minor:inode, hex:hex:dec) */
    while (pid == 0 && fgets(line, sizeof line, f) != NULL) {
        char kind[16];
        long p;
        unsigned maj, min;
        unsigned long long ino;
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &p, &maj, &min, &ino) == 5 &&
            strcmp(kind, "FLOCK") == 0 && ino == (unsigned long long)st.st_ino &&
            maj == major(st.st_dev) && min == minor(st.st_dev))
            pid = p;
    }
    fclose(f);
    return pid;
}

/* Locks the database file (see the file head). 0, or -1 with `why`. */
static int db__lock(struct db *db, const char *dir, char *why, size_t why_len)
{
    db->lock_fd = open(db->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (db->lock_fd < 0) {
        snprintf(why, why_len, "cannot open %s: %s", db->path, strerror(errno));
        return -1;
    }
    if (flock(db->lock_fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno != EWOULDBLOCK) {
        snprintf(why, why_len, "cannot lock %s: %s", db->path, strerror(errno));
        return -1;
    }
    long pid = db__lock_holder(db->lock_fd);
    char holder[48] = "";
    if (pid > 0)
        snprintf(holder, sizeof holder, " (pid %ld)", pid);
    snprintf(why, why_len, "data_dir %s is in use by another almanac%s: %s is locked", dir, holder,
             db->path);
    return -1;
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
    /* A connection learns that the file is in WAL mode on its first read;
     * until then sqlite3_wal_checkpoint_v2 does nothing and says SQLITE_OK
     * (so the WAL grew until the store closed). */
    if (sqlite3_exec(db->ckpt_conn, "SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL) !=
        SQLITE_OK) {
        snprintf(why, why_len, "cannot read %s for checkpoints: %s", db->path,
                 sqlite3_errmsg(db->ckpt_conn));
        return -1;
    }
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
                           "value, expires, " DB_BLOB_COLUMNS ") "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "DELETE FROM entries WHERE key = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "UPDATE meta SET value = ? WHERE name = 'rev'", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->rev, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn,
                           "INSERT OR REPLACE INTO outbox(topic, rev, type, labels, value, "
                           "deleted, expires, " DB_BLOB_COLUMNS ") "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &db->obx_put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn, "DELETE FROM outbox WHERE topic = ? AND rev = ?", -1,
                           SQLITE_PREPARE_PERSISTENT, &db->obx_del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db->conn,
                           "INSERT INTO history(rev, key, ts, type, labels, origin, value, "
                           "deleted, " DB_BLOB_COLUMNS
                           ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    /* Last: closing it drops SQLite's POSIX locks on the file too, and the
     * store closes history's connections before this. */
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

/* ---- reading columns back (invariant 4) ---- */

bool db__col_int(sqlite3_stmt *st, int col, int64_t *v)
{
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
        return false;
    *v = sqlite3_column_int64(st, col);
    return true;
}

const char *db__col_text(sqlite3_stmt *st, int col, size_t max, size_t *len)
{
    if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        return NULL;
    /* The pointer first, then its length (sqlite3_column_bytes after a
     * conversion would be the length of something else). */
    const char *t = (const char *)sqlite3_column_text(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (t == NULL || n > max || memchr(t, '\0', n) != NULL)
        return NULL;
    *len = n;
    return t;
}

const char *db__col_key(sqlite3_stmt *st, int col, size_t *len)
{
    char why[128];
    const char *key = db__col_text(st, col, UINT16_MAX, len);
    if (key == NULL || store_key_check(key, *len, UINT16_MAX, why, sizeof why) != STORE_OK)
        return NULL;
    return key;
}

bool db__col_origin(sqlite3_stmt *st, int col, enum store_origin *origin)
{
    int64_t v;
    if (!db__col_int(st, col, &v) || v < 0 || v >= STORE_ORIGIN_COUNT)
        return false;
    *origin = (enum store_origin)v;
    return true;
}

void db__set_blobs(struct db *db, struct blobs *blobs)
{
    db->blobs = blobs;
}

/* Binds the blob columns from `col` on when `e`'s value is in a blob file
 * (the value column gets nothing then); whether it is. */
static bool db__bind_blob(sqlite3_stmt *st, int col, const struct store_entry *e)
{
    struct blob_file *f;
    uint64_t off;
    uint32_t crc;
    size_t len;
    if (!entry__blob_ref(e, &f, &off, &crc))
        return false;
    store_entry_value(e, &len);
    sqlite3_bind_int64(st, col, blob__id(f));
    sqlite3_bind_int64(st, col + 1, (int64_t)off);
    sqlite3_bind_int64(st, col + 2, (int64_t)len);
    sqlite3_bind_int64(st, col + 3, crc);
    return true;
}

/* The blob entry of the blob columns from `blob_col` on; STORE_ENOTFOUND
 * when they are NULL (the value is in the value column). */
static int db__col_blob(struct blobs *b, sqlite3_stmt *st, int blob_col, const char *type,
                        const char *labels, enum store_origin origin, int64_t expires,
                        struct store_entry **out, const char **bad)
{
    int64_t id, off, len, crc;
    if (sqlite3_column_type(st, blob_col) == SQLITE_NULL)
        return STORE_ENOTFOUND;
    if (b == NULL || !db__col_int(st, blob_col, &id) || id <= 0 || id > UINT32_MAX ||
        !db__col_int(st, blob_col + 1, &off) || off < 0 || !db__col_int(st, blob_col + 2, &len) ||
        len <= 0 || len > UINT32_MAX || !db__col_int(st, blob_col + 3, &crc) || crc < 0 ||
        crc > UINT32_MAX) {
        *bad = "blob";
        return STORE_EINTERNAL;
    }
    struct blob_file *f = blobs__file(b, (uint32_t)id);
    if (f == NULL || !blobs__holds(b, f, (uint64_t)off, (uint64_t)len)) {
        blob__unref(f);
        *bad = "blob (its file is missing or too short)";
        return STORE_EINTERNAL;
    }
    *out = entry__blob(f, (uint64_t)off, (size_t)len, (uint32_t)crc, type, labels, origin, expires);
    return *out != NULL ? STORE_OK : STORE_EINTERNAL;
}

int db__col_entry(sqlite3_stmt *st, struct blobs *blobs, int type_col, int labels_col,
                  int value_col, int blob_col, enum store_origin origin, int64_t rev, int64_t ts,
                  int64_t expires, struct store_entry **out, const char **bad)
{
    size_t tlen = 0, llen = 0, vlen;
    const char *type = db__col_text(st, type_col, UINT8_MAX, &tlen), *labels = NULL;
    int vtype = sqlite3_column_type(st, value_col);

    *out = NULL;
    *bad = NULL;
    /* An empty type would read back as no type at all (entry.c). */
    if (type == NULL || tlen == 0) {
        *bad = "type";
        return STORE_EINTERNAL;
    }
    if (sqlite3_column_type(st, labels_col) != SQLITE_NULL &&
        ((labels = db__col_text(st, labels_col, UINT16_MAX, &llen)) == NULL || llen < 2 ||
         labels[0] != '{' || labels[llen - 1] != '}')) {
        *bad = "labels";
        return STORE_EINTERNAL;
    }
    if (vtype != SQLITE_BLOB && vtype != SQLITE_TEXT) {
        *bad = "value";
        return STORE_EINTERNAL;
    }
    int err = db__col_blob(blobs, st, blob_col, type, labels, origin, expires, out, bad);
    if (err != STORE_ENOTFOUND) {
        if (err == STORE_OK)
            entry__stamp(*out, rev, ts);
        return err;
    }
    /* NULL for an empty blob, or when out of memory. */
    const void *value = sqlite3_column_blob(st, value_col);
    vlen = (size_t)sqlite3_column_bytes(st, value_col);
    if (value == NULL && vlen > 0)
        return STORE_EINTERNAL;
    if (vlen > UINT32_MAX) {
        *bad = "value";
        return STORE_EINTERNAL;
    }
    *out = entry__load(vlen ? value : "", vlen, type, labels, origin, rev, ts, expires);
    return *out != NULL ? STORE_OK : STORE_EINTERNAL;
}

/* The highest rev ever committed: meta('rev'), or a history record's when
 * that is higher (a commit reusing it would fail on history's key forever). */
static int db__load_rev(struct db *db, int64_t *rev, char *why, size_t why_len)
{
    sqlite3_stmt *st = NULL;
    int64_t hist = 0;
    int err = STORE_EINTERNAL;

    if (sqlite3_prepare_v2(db->conn, "SELECT value FROM meta WHERE name = 'rev'", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW || !db__col_int(st, 0, rev) || *rev < 0) {
        snprintf(why, why_len, "%s is corrupt: meta has no rev, or not a number (%s)", db->path,
                 sqlite3_errmsg(db->conn));
        goto out;
    }
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(db->conn, "SELECT coalesce(max(rev), 0) FROM history", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW || !db__col_int(st, 0, &hist)) {
        snprintf(why, why_len, "cannot load %s: %s", db->path, sqlite3_errmsg(db->conn));
        goto out;
    }
    if (hist > *rev) {
        log_warn("store: %s: history holds rev %lld, above the recorded rev %lld", db->path,
                 (long long)hist, (long long)*rev);
        *rev = hist;
    }
    err = STORE_OK;
out:
    sqlite3_finalize(st);
    return err;
}

/* db__load reads the rows on the calling thread and hands them, in batches,
 * to a thread of its own that calls `fn` (which builds the tree): a start
 * does SQLite's work and the tree's at once, on two cores. `fn` is called
 * from that one thread, in row order, one batch at a time. */
#define DB_LOAD_BATCH 4096

struct load_batch {
    char *keys; /* the keys, one after another */
    size_t used, cap, n;
    size_t klen[DB_LOAD_BATCH];
    struct store_entry *e[DB_LOAD_BATCH]; /* owned until handed to fn */
};

struct loader {
    db_load_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct load_batch *full; /* handed over and not yet done with; NULL: none */
    bool done;               /* no batch will come */
    bool failed;             /* fn failed: the rows after are dropped */
    struct load_batch batch[2];
};

static void *loader__main(void *arg)
{
    struct loader *l = arg;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (l->full == NULL && !l->done)
            pthread_cond_wait(&l->cond, &l->lock);
        struct load_batch *b = l->full;
        bool failed = l->failed;
        if (b == NULL)
            break;
        pthread_mutex_unlock(&l->lock);
        for (size_t i = 0, off = 0; i < b->n; off += b->klen[i], i++) {
            if (failed)
                store_entry_unref(b->e[i]);
            else if (l->fn(l->arg, b->keys + off, b->klen[i], b->e[i]) != STORE_OK)
                failed = true; /* it took e */
        }
        b->n = b->used = 0;
        pthread_mutex_lock(&l->lock);
        l->failed = failed;
        l->full = NULL;
        pthread_cond_broadcast(&l->cond);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

/* Adds a row to the batch being filled; hands it over when full. Returns
 * false when out of memory (e is released) or when fn failed. */
static bool loader__add(struct loader *l, struct load_batch **cur, const char *key, size_t klen,
                        struct store_entry *e)
{
    struct load_batch *b = *cur;
    if (b->used + klen > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64 * 1024;
        while (cap < b->used + klen)
            cap *= 2;
        char *keys = realloc(b->keys, cap);
        if (keys == NULL) {
            store_entry_unref(e);
            return false;
        }
        b->keys = keys;
        b->cap = cap;
    }
    memcpy(b->keys + b->used, key, klen);
    b->used += klen;
    b->klen[b->n] = klen;
    b->e[b->n++] = e;
    if (b->n < DB_LOAD_BATCH)
        return true;
    pthread_mutex_lock(&l->lock);
    while (l->full != NULL)
        pthread_cond_wait(&l->cond, &l->lock);
    l->full = b;
    pthread_cond_broadcast(&l->cond);
    bool ok = !l->failed;
    pthread_mutex_unlock(&l->lock);
    *cur = b == &l->batch[0] ? &l->batch[1] : &l->batch[0];
    return ok;
}

/* Hands over what is left (unless `drop`), waits for the thread to be done
 * and frees the batches. Whether fn succeeded for every row handed over. */
static bool loader__finish(struct loader *l, pthread_t thread, struct load_batch *cur, bool drop)
{
    pthread_mutex_lock(&l->lock);
    while (l->full != NULL)
        pthread_cond_wait(&l->cond, &l->lock);
    if (!drop && cur->n > 0) {
        l->full = cur;
        pthread_cond_broadcast(&l->cond);
        while (l->full != NULL)
            pthread_cond_wait(&l->cond, &l->lock);
    }
    l->done = true;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
    pthread_join(thread, NULL);
    for (size_t i = 0; i < cur->n; i++)
        store_entry_unref(cur->e[i]);
    free(l->batch[0].keys);
    free(l->batch[1].keys);
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->lock);
    return !l->failed;
}

int db__load(struct db *db, db_load_fn fn, void *arg, int64_t *rev, char *why, size_t why_len)
{
    sqlite3_stmt *st = NULL;
    int rc, err = STORE_EINTERNAL;
    uint64_t row = 0;
    struct loader *l = NULL;
    struct load_batch *cur = NULL;
    pthread_t thread;
    bool loading = false;

    *rev = 0;
    if ((err = db__load_rev(db, rev, why, why_len)) != STORE_OK)
        return err;
    err = STORE_EINTERNAL;
    if (sqlite3_prepare_v2(
            db->conn,
            "SELECT key, rev, ts, type, labels, origin, value, expires, " DB_BLOB_COLUMNS
            " FROM entries",
            -1, &st, NULL) != SQLITE_OK)
        goto fail;
    if ((l = calloc(1, sizeof *l)) == NULL)
        goto oom;
    l->fn = fn;
    l->arg = arg;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cond, NULL);
    if (pthread_create(&thread, NULL, loader__main, l) != 0) {
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->lock);
        snprintf(why, why_len, "cannot start the loader thread");
        goto out;
    }
    loading = true;
    cur = &l->batch[0];
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_entry *e = NULL;
        const char *bad = NULL;
        size_t klen = 0;
        int64_t erev = 0, ts = 0, expires = 0;
        enum store_origin origin = STORE_ORIGIN_HTTP;
        const char *key = db__col_key(st, 0, &klen);
        row++;
        if (key == NULL)
            bad = "key";
        else if (!db__col_int(st, 1, &erev) || erev <= 0)
            bad = "rev";
        else if (!db__col_int(st, 2, &ts))
            bad = "ts";
        else if (!db__col_origin(st, 5, &origin))
            bad = "origin";
        else if (sqlite3_column_type(st, 7) != SQLITE_NULL &&
                 (!db__col_int(st, 7, &expires) || expires <= 0))
            bad = "expires";
        else if (db__col_entry(st, db->blobs, 3, 4, 6, 8, origin, erev, ts, expires, &e, &bad) !=
                     STORE_OK &&
                 bad == NULL)
            goto oom;
        if (bad != NULL) {
            if (key != NULL)
                snprintf(why, why_len, "%s is corrupt: the entry of key %.*s has a bad %s column",
                         db->path, (int)(klen < 200 ? klen : 200), key, bad);
            else
                snprintf(why, why_len, "%s is corrupt: entry row %llu has a bad key column",
                         db->path, (unsigned long long)row);
            goto out;
        }
        if (!loader__add(l, &cur, key, klen, e)) /* it took `e` */
            goto oom;
        if (erev > *rev)
            *rev = erev;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    loading = false;
    if (!loader__finish(l, thread, cur, false))
        goto oom;
    err = STORE_OK;
    goto out;
oom:
    snprintf(why, why_len, "out of memory while loading %s", db->path);
    goto out;
fail:
    snprintf(why, why_len, "cannot load %s: %s", db->path, sqlite3_errmsg(db->conn));
out:
    if (loading)
        loader__finish(l, thread, cur, true);
    free(l);
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
        const char *text;
        if (sqlite3_step(st) == SQLITE_ROW &&
            (text = (const char *)sqlite3_column_text(st, 0)) != NULL)
            v = strdup(text);
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
    int rc, err = STORE_EINTERNAL;

    if (sqlite3_prepare_v2(
            db->conn,
            "SELECT topic, rev, type, labels, value, deleted, expires, " DB_BLOB_COLUMNS
            " FROM outbox ORDER BY rev",
            -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_entry *e = NULL;
        const char *bad = NULL;
        size_t tlen = 0;
        int64_t rev = 0, deleted = 0, expires = 0;
        const char *topic = db__col_text(st, 0, SIZE_MAX, &tlen);
        if (topic == NULL || tlen == 0)
            bad = "topic";
        else if (!db__col_int(st, 1, &rev) || rev <= 0)
            bad = "rev";
        else if (!db__col_int(st, 5, &deleted) || (deleted != 0 && deleted != 1))
            bad = "deleted";
        else if (sqlite3_column_type(st, 6) != SQLITE_NULL &&
                 (!db__col_int(st, 6, &expires) || expires <= 0))
            bad = "expires";
        else if (!deleted &&
                 db__col_entry(st, db->blobs, 2, 3, 4, 7, STORE_ORIGIN_HTTP, rev, 0, expires, &e,
                               &bad) != STORE_OK &&
                 bad == NULL)
            goto oom;
        if (bad != NULL) {
            snprintf(why, why_len, "%s is corrupt: an outbox row has a bad %s column", db->path,
                     bad);
            goto out;
        }
        int put = outbox__put(ob, topic, rev, e);
        store_entry_unref(e);
        if (put != STORE_OK)
            goto oom;
    }
    if (rc != SQLITE_DONE)
        goto fail;
    err = STORE_OK;
    goto out;
oom:
    snprintf(why, why_len, "out of memory while loading the outbox of %s", db->path);
    goto out;
fail:
    snprintf(why, why_len, "cannot load the outbox of %s: %s", db->path, sqlite3_errmsg(db->conn));
out:
    sqlite3_finalize(st);
    return err;
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
        if (db__bind_blob(st, 8, c->entry))
            vlen = 0;
        sqlite3_bind_blob(st, 5, vlen ? value : "", (int)vlen, SQLITE_STATIC);
        if (store_entry_expires(c->entry) > 0)
            sqlite3_bind_int64(st, 7, store_entry_expires(c->entry));
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
        bool blob = db__bind_blob(st, 9, c->entry);
        sqlite3_bind_blob(st, 7, vlen && !blob ? value : "", blob ? 0 : (int)vlen, SQLITE_STATIC);
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
    if (db__bind_blob(st, 9, c->entry))
        vlen = 0;
    sqlite3_bind_blob(st, 7, vlen ? value : "", (int)vlen, SQLITE_STATIC);
    int64_t expires = store_entry_expires(c->entry);
    if (expires > 0)
        sqlite3_bind_int64(st, 8, expires);
    else
        sqlite3_bind_null(st, 8);
    return db__step(st);
}

/* After a failed commit, before its writers hear of it (invariant 3). The
 * commit may have failed after all its frames reached the WAL (an fsync
 * error): this connection counts them as rolled back, but the recovery of
 * the next start (after a crash) would find them whole and commit them,
 * although every writer was told nothing changed. A commit of nothing
 * writes from the same place in the WAL and overwrites their first frame,
 * which breaks the checksum chain that recovery follows: it counts the
 * failure in meta('failed_commits'), as a row rewritten unchanged would
 * write no page at all. When even that
 * fails, the outcome stays open until a later commit succeeds. */
static void db__bury(struct db *db)
{
    if (sqlite3_exec(db->conn,
                     "BEGIN IMMEDIATE; INSERT INTO meta(name, value) VALUES ('failed_commits', 1) "
                     "ON CONFLICT(name) DO UPDATE SET value = value + 1; COMMIT",
                     NULL, NULL, NULL) == SQLITE_OK)
        return;
    log_error("store: %s: %s; a crash before the next successful commit may keep the failed one",
              db->path, sqlite3_errmsg(db->conn));
    if (!sqlite3_get_autocommit(db->conn))
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
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
            last = c->last_rev; /* invariant 2, memory-only changes too */
            if (c->changes[i].memory_only)
                continue;
            rc = db__write_change(db, &c->changes[i]);
            if (rc == SQLITE_OK && c->changes[i].history) {
                rc = db__write_history(db, &c->changes[i], hist_bytes);
                ++*hist_records;
            }
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
    db__bury(db);
    return full ? STORE_EFULL : STORE_EINTERNAL;
}
