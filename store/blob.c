/*
 * blob.c — values of at least blob_min_bytes, out of memory and out of
 * SQLite's pages (ARCHITECTURE.md "Large values"): append-only files
 * data_dir/blobs/NNNNNNNN.blob, each mapped read-only whole, so an entry's
 * value is a pointer into a map (file-backed pages, not the heap) that HTTP
 * sends from with no copy. A blob is written once and
 * shared by the entry, its history record and its outbox row, which hold
 * (file, offset, length, checksum).
 *
 * Writing: a writer reserves a range of a current file under the lock and
 * copies its bytes outside it (pwrite), before the change that references
 * them is submitted. There are BLOB_LANES current files, and a writer takes
 * the one fewest others are writing to: writes to one file take its inode's
 * lock in turn (ext4), so writers on two HTTP threads sharing a file spent a
 * fifth of their time spinning on it. With durability fsync the committer syncs the files
 * written since the last sync before its commit (blobs__sync). So a
 * committed reference always finds its bytes, and a crash leaves only bytes
 * nothing references: at start (blobs__trim) each file is cut after the
 * last byte a row references, and a file no row references is removed.
 *
 * Space: a sealed file (no longer written to) that no row references and no
 * entry in memory maps is removed by the collector (a worker that looks
 * every few seconds while the database changes, else once a minute). A sealed file whose live bytes
 * (those rows reference) fall under half is compacted: its live blobs are copied to a current
 * file and synced, the rows are pointed at the copies in one transaction, and the store swaps the
 * entries in memory (`relocate`); the file then holds nothing and goes as above. Invariants:
 *   1. `lock` guards the file list, `lanes`, `total` (the sum of the files'
 *      `end`), each file's `end`, `gone` and `pending`; no I/O or SQLite
 *      call is made while holding it;
 *   2. a file's `refs` counts the list (while not gone) and every entry that
 *      references it; the map and descriptor go with the last reference;
 *   3. a row referencing file F is written only by a commit that holds F
 *      (`pending` > 0 from blobs__hold to blobs__release, which also bumps
 *      `writes`); the collector removes F only when, before and after it
 *      found no row, F had no pending commit, the same `writes` and no
 *      reference but the list's — so no row it could not see refers to F;
 *   4. only the lanes' files (`current`) get new blobs; bytes past a file's `end` are never read;
 *   5. a reader's read transaction may outlive the rows it sees (a history
 *      query streamed over minutes while the pruner deletes them, or
 *      compaction points them at copies): a file the collector finds
 *      unreferenced is first doomed at a new `epoch`, and removed at a later
 *      look only if it is still unreferenced and no reader (`readers`) that
 *      began before that epoch is still open (blob__collect).
 */
#include "store_int.h"
#include "clock.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct blob_file {
    struct blob_file *next;
    uint32_t id;
    int fd;
    char *map;
    size_t cap;   /* bytes mapped: the most the file may hold */
    uint64_t end; /* bytes reserved (invariant 1) */
    _Atomic uint32_t refs;
    _Atomic bool dirty;       /* written since the last sync */
    uint32_t pending;         /* commits writing rows that reference it (invariant 3) */
    uint64_t writes;          /* such commits done */
    bool gone;                /* removed: no longer found by id */
    uint64_t doomed;          /* the epoch it was found unreferenced (0: not) */
    bool current;             /* a lane's: takes new blobs (invariant 4) */
    _Atomic uint32_t writers; /* reservations whose bytes are being written */
};

#define BLOB_LANES 4

struct blobs {
    char *dir;
    size_t file_max;
    uint64_t max_bytes; /* 0: no cap on the files' total (max_db_bytes) */
    uint64_t total;     /* the files' bytes (invariant 1) */
    bool fsync;
    pthread_mutex_t lock;
    struct blob_file *files; /* newest first */
    struct blob_file **byid; /* the files by id (NULL: none, or gone), `nbyid` long */
    uint32_t nbyid;
    struct blob_file *lanes[BLOB_LANES]; /* current files (NULL: the next blob opens one) */
    uint32_t next_id;
    sqlite3 *conn; /* the collector's */
    struct worker collector;
    blob_relocate_fn relocate; /* the store's, for the entries in memory */
    void *relocate_arg;
    int64_t seen_version;        /* the database's data_version at the last scan */
    int64_t seen_at;             /* and when (µs) */
    uint64_t epoch;              /* invariant 5, under `lock` */
    struct blob_reader *readers; /* open, under `lock` */
};

/* ---- CRC-32C: SSE 4.2's instruction where the CPU has it ---- */

static uint32_t crc__table[256];

static void crc__init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc__table[i] = c;
    }
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc__hw(uint32_t c, const unsigned char *p,
                                                          size_t len)
{
    uint64_t c64 = c;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
    }
    c = (uint32_t)c64;
    for (; len > 0; p++, len--)
        c = __builtin_ia32_crc32qi(c, *p);
    return c;
}
#endif

uint32_t blob__crc_more(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc__hw(c, p, len);
#endif
    for (size_t i = 0; i < len; i++)
        c = crc__table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return ~c;
}

uint32_t blob__crc(const void *data, size_t len)
{
    return blob__crc_more(0, data, len);
}

/* ---- files ---- */

static void blob__path(const struct blobs *b, uint32_t id, char *out, size_t len)
{
    snprintf(out, len, "%s/%08" PRIu32 ".blob", b->dir, id);
}

void blob__ref(struct blob_file *f)
{
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

void blob__unref(struct blob_file *f)
{
    if (f == NULL || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
        return;
    munmap(f->map, f->cap);
    close(f->fd);
    free(f);
}

const void *blob__data(const struct blob_file *f, uint64_t off)
{
    return f->map + off;
}

uint32_t blob__id(const struct blob_file *f)
{
    return f->id;
}

/* Opens (creating when `create`) file `id`, mapped for `cap` bytes (at
 * least its size). NULL with `why` on failure. */
static struct blob_file *blob__open_file(struct blobs *b, uint32_t id, size_t cap, bool create,
                                         char *why, size_t why_len)
{
    char path[4096];
    struct stat sb;
    blob__path(b, id, path, sizeof path);
    struct blob_file *f = calloc(1, sizeof *f);
    if (f == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    f->fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
    if (f->fd < 0 || fstat(f->fd, &sb) != 0) {
        snprintf(why, why_len, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    f->id = id;
    f->end = (uint64_t)sb.st_size;
    f->cap = cap > (size_t)sb.st_size ? cap : (size_t)sb.st_size;
    if (f->cap == 0)
        f->cap = 1;
    f->map = mmap(NULL, f->cap, PROT_READ, MAP_SHARED, f->fd, 0);
    if (f->map == MAP_FAILED) {
        snprintf(why, why_len, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    atomic_init(&f->refs, 1); /* the list's */
    return f;
fail:
    if (f->fd >= 0)
        close(f->fd);
    free(f);
    return NULL;
}

static struct blob_file *blob__find(const struct blobs *b, uint32_t id)
{
    return id < b->nbyid ? b->byid[id] : NULL;
}

/* Puts file `f` at the head of the list and in `byid`; -1 when out of
 * memory (the caller still owns f). The caller holds the lock, or is alone. */
static int blob__add(struct blobs *b, struct blob_file *f)
{
    if (f->id >= b->nbyid) {
        uint32_t n = b->nbyid ? b->nbyid : 64;
        while (n <= f->id)
            n *= 2;
        struct blob_file **v = realloc(b->byid, n * sizeof *v);
        if (v == NULL)
            return -1;
        memset(v + b->nbyid, 0, (n - b->nbyid) * sizeof *v);
        b->byid = v;
        b->nbyid = n;
    }
    b->byid[f->id] = f;
    f->next = b->files;
    b->files = f;
    b->total += f->end;
    return 0;
}

struct blob_file *blobs__file(struct blobs *b, uint32_t id)
{
    pthread_mutex_lock(&b->lock);
    struct blob_file *f = blob__find(b, id);
    if (f != NULL && !f->gone)
        blob__ref(f);
    else
        f = NULL;
    pthread_mutex_unlock(&b->lock);
    return f;
}

/* The lanes in use: with durability fsync each commit syncs every file
 * written since the last, one after the other, so one lane there. */
static size_t blob__lanes(const struct blobs *b)
{
    return b->fsync ? 1 : BLOB_LANES;
}

static uint32_t blob__writers(struct blob_file *f)
{
    return f == NULL ? 0 : atomic_load(&f->writers);
}

void blob__written(struct blob_file *f)
{
    atomic_fetch_sub(&f->writers, 1);
}

int blobs__reserve(struct blobs *b, size_t len, struct blob_file **out, uint64_t *off)
{
    char why[512];
    *out = NULL;
    pthread_mutex_lock(&b->lock);
    if (b->max_bytes > 0 && b->total + len > b->max_bytes) {
        pthread_mutex_unlock(&b->lock);
        return STORE_EFULL; /* max_db_bytes holds for the blob files too */
    }
    size_t lane = 0; /* the first with the fewest writers */
    for (size_t i = 1; i < blob__lanes(b); i++)
        if (blob__writers(b->lanes[i]) < blob__writers(b->lanes[lane]))
            lane = i;
    struct blob_file *f = b->lanes[lane];
    if (f == NULL || f->end + len > f->cap) {
        /* Sealed (invariant 4); a value larger than a file gets one of its own. */
        f = blob__open_file(b, b->next_id, len > b->file_max ? len : b->file_max, true, why,
                            sizeof why);
        if (f == NULL) {
            pthread_mutex_unlock(&b->lock);
            log_error("store: blobs: %s", why);
            return STORE_EINTERNAL;
        }
        b->next_id++;
        if (blob__add(b, f) != 0) {
            pthread_mutex_unlock(&b->lock);
            blob__unref(f);
            return STORE_EINTERNAL;
        }
        if (b->lanes[lane] != NULL)
            b->lanes[lane]->current = false;
        b->lanes[lane] = f;
        f->current = true;
    }
    *off = f->end;
    f->end += len;
    b->total += len;
    blob__ref(f);
    atomic_fetch_add(&f->writers, 1);
    pthread_mutex_unlock(&b->lock);
    *out = f;
    return STORE_OK;
}

int blob__pwrite(struct blob_file *f, const void *data, size_t len, uint64_t at)
{
    const char *p = data;
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(f->fd, p + done, len - done, (off_t)(at + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : ENOSPC;
            log_error("store: blobs: writing %zu bytes to file %" PRIu32 ": %s", len, f->id,
                      strerror(e));
            return e == ENOSPC || e == EDQUOT ? STORE_EFULL : STORE_EINTERNAL;
        }
        done += (size_t)n;
    }
    atomic_store(&f->dirty, true);
    return STORE_OK;
}

int blobs__write(struct blobs *b, const void *data, size_t len, struct blob_file **out,
                 uint64_t *off, uint32_t *crc)
{
    int err = blobs__reserve(b, len, out, off);
    if (err == STORE_OK) {
        err = blob__pwrite(*out, data, len, *off);
        blob__written(*out);
    }
    if (err != STORE_OK && *out != NULL) {
        blob__unref(*out); /* the range stays, referenced by nothing */
        *out = NULL;
    }
    if (err == STORE_OK)
        *crc = blob__crc(data, len);
    return err;
}

int blobs__sync(struct blobs *b)
{
    if (!b->fsync)
        return STORE_OK;
    struct blob_file *dirty[64];
    size_t n = 0;
    pthread_mutex_lock(&b->lock);
    for (struct blob_file *f = b->files; f != NULL && n < 64; f = f->next)
        if (atomic_exchange(&f->dirty, false)) {
            blob__ref(f);
            dirty[n++] = f;
        }
    pthread_mutex_unlock(&b->lock);
    int err = STORE_OK;
    for (size_t i = 0; i < n; i++) {
        if (fdatasync(dirty[i]->fd) != 0 && err == STORE_OK) {
            log_error("store: blobs: syncing file %" PRIu32 ": %s", dirty[i]->id, strerror(errno));
            atomic_store(&dirty[i]->dirty, true);
            err = STORE_EINTERNAL;
        }
        blob__unref(dirty[i]);
    }
    return err;
}

bool blobs__holds(struct blobs *b, const struct blob_file *f, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&b->lock);
    bool ok = off <= f->end && len <= f->end - off;
    pthread_mutex_unlock(&b->lock);
    return ok;
}

void blobs__hold(struct blobs *b, struct blob_file *f)
{
    pthread_mutex_lock(&b->lock);
    f->pending++;
    pthread_mutex_unlock(&b->lock);
}

void blobs__release(struct blobs *b, struct blob_file *f)
{
    pthread_mutex_lock(&b->lock);
    f->pending--;
    f->writes++;
    pthread_mutex_unlock(&b->lock);
}

void blobs__reader_begin(struct blobs *b, struct blob_reader *r)
{
    pthread_mutex_lock(&b->lock);
    r->epoch = b->epoch;
    r->next = b->readers;
    b->readers = r;
    pthread_mutex_unlock(&b->lock);
}

void blobs__reader_end(struct blobs *b, struct blob_reader *r)
{
    pthread_mutex_lock(&b->lock);
    struct blob_reader **p = &b->readers;
    while (*p != NULL && *p != r)
        p = &(*p)->next;
    if (*p != NULL)
        *p = r->next;
    pthread_mutex_unlock(&b->lock);
}

/* ---- the collector ---- */

/* Whether a reader that began before `epoch` is open (the caller holds
 * the lock). */
static bool blob__read_before(const struct blobs *b, uint64_t epoch)
{
    for (const struct blob_reader *r = b->readers; r != NULL; r = r->next)
        if (r->epoch < epoch)
            return true;
    return false;
}

/* Whether any row references file `id`, in the collector's connection;
 * true also when it cannot tell. */
static bool blob__referenced(struct blobs *b, uint32_t id)
{
    static const char sql[] = "SELECT EXISTS (SELECT 1 FROM entries WHERE blob_file = ?1)"
                              " OR EXISTS (SELECT 1 FROM history WHERE blob_file = ?1)"
                              " OR EXISTS (SELECT 1 FROM outbox WHERE blob_file = ?1)";
    sqlite3_stmt *st = NULL;
    bool found = true;
    if (sqlite3_prepare_v2(b->conn, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW)
            found = sqlite3_column_int(st, 0) != 0;
    }
    sqlite3_finalize(st);
    return found;
}

/* Removes file `f` from the list and the disk (the caller holds the lock). */
static void blob__remove(struct blobs *b, struct blob_file *f)
{
    char path[4096];
    blob__path(b, f->id, path, sizeof path);
    f->gone = true;
    b->total -= f->end;
    b->byid[f->id] = NULL;
    struct blob_file **p = &b->files;
    while (*p != f)
        p = &(*p)->next;
    *p = f->next;
    unlink(path);
}

/* ---- compaction ---- */

/* The bytes of file `id` that rows reference (each blob once), or -1. */
static int64_t blob__live(struct blobs *b, uint32_t id)
{
    static const char sql[] =
        "SELECT coalesce(sum(blob_len), 0) FROM (SELECT DISTINCT blob_off, blob_len FROM ("
        " SELECT blob_off, blob_len FROM entries WHERE blob_file = ?1"
        " UNION ALL SELECT blob_off, blob_len FROM history WHERE blob_file = ?1"
        " UNION ALL SELECT blob_off, blob_len FROM outbox WHERE blob_file = ?1))";
    sqlite3_stmt *st = NULL;
    int64_t live = -1;
    if (sqlite3_prepare_v2(b->conn, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW)
            live = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return live;
}

/* One live blob of a file being compacted: where it was, where it goes. */
struct blob__move {
    uint64_t off, len, to;
    uint32_t crc;
    char *key; /* the key whose entry maps it, or NULL (history's alone) */
};

/* The key of the entries row of blob (`id`, `off`), or NULL. */
static char *blob__key_of(struct blobs *b, uint32_t id, uint64_t off)
{
    sqlite3_stmt *st = NULL;
    char *key = NULL;
    if (sqlite3_prepare_v2(b->conn,
                           "SELECT key FROM entries WHERE blob_file = ?1 AND blob_off = ?2", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, (int64_t)off);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
            key = strdup((const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return key;
}

/* Copies the live blobs of `f` (a reference the caller holds) to the
 * current file, points the rows at the copies, and has the store swap its
 * entries. Whether it did. */
static bool blob__compact(struct blobs *b, struct blob_file *f)
{
    static const char *const tables[] = {"entries", "history", "outbox"};
    struct blob__move *moves = NULL;
    size_t n = 0, cap = 0;
    uint64_t total = 0;
    struct blob_file *to = NULL;
    sqlite3_stmt *st = NULL;
    bool done = false;
    char sql[256];

    if (sqlite3_prepare_v2(b->conn,
                           "SELECT DISTINCT blob_off, blob_len, blob_crc FROM ("
                           " SELECT blob_off, blob_len, blob_crc FROM entries WHERE blob_file = ?1"
                           " UNION ALL SELECT blob_off, blob_len, blob_crc FROM history"
                           "  WHERE blob_file = ?1 UNION ALL SELECT blob_off, blob_len, blob_crc"
                           "  FROM outbox WHERE blob_file = ?1) ORDER BY blob_off",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, f->id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            struct blob__move *v = realloc(moves, (cap = cap ? cap * 2 : 64) * sizeof *v);
            if (v == NULL)
                goto out;
            moves = v;
        }
        moves[n] = (struct blob__move){.key = NULL,
                                       .off = (uint64_t)sqlite3_column_int64(st, 0),
                                       .len = (uint64_t)sqlite3_column_int64(st, 1),
                                       .crc = (uint32_t)sqlite3_column_int64(st, 2)};
        if (!blobs__holds(b, f, moves[n].off, moves[n].len))
            goto out; /* rows that do not fit their file: left alone */
        total += moves[n++].len;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* One reservation for all of them: they stay together, in order. */
    uint64_t base;
    if (n == 0 || blobs__reserve(b, total, &to, &base) != STORE_OK)
        goto out;
    for (size_t i = 0, at = 0; i < n; at += moves[i++].len) {
        moves[i].to = base + at;
        if (blob__pwrite(to, f->map + moves[i].off, moves[i].len, moves[i].to) != STORE_OK)
            goto out;
    }
    if (fdatasync(to->fd) != 0)
        goto out;
    if (sqlite3_exec(b->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < n; i++)
        moves[i].key = blob__key_of(b, f->id, moves[i].off);
    for (size_t t = 0; t < 3; t++) {
        snprintf(sql, sizeof sql,
                 "UPDATE %s SET blob_file = ?1, blob_off = ?2 WHERE blob_file = ?3 AND "
                 "blob_off = ?4",
                 tables[t]);
        if (sqlite3_prepare_v2(b->conn, sql, -1, &st, NULL) != SQLITE_OK)
            goto rollback;
        for (size_t i = 0; i < n; i++) {
            sqlite3_bind_int64(st, 1, to->id);
            sqlite3_bind_int64(st, 2, (int64_t)moves[i].to);
            sqlite3_bind_int64(st, 3, f->id);
            sqlite3_bind_int64(st, 4, (int64_t)moves[i].off);
            if (sqlite3_step(st) != SQLITE_DONE)
                goto rollback;
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (sqlite3_exec(b->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto rollback;
    for (size_t i = 0; i < n; i++)
        if (moves[i].key != NULL)
            b->relocate(b->relocate_arg, moves[i].key, f, moves[i].off, to, moves[i].to);
    log_info("store: blobs: file %" PRIu32 " compacted: %zu live values (%" PRIu64
             " bytes) moved to file %" PRIu32,
             f->id, n, total, to->id);
    done = true;
    goto out;
rollback:
    log_warn("store: blobs: compacting file %" PRIu32 ": %s", f->id, sqlite3_errmsg(b->conn));
    sqlite3_finalize(st);
    st = NULL;
    sqlite3_exec(b->conn, "ROLLBACK", NULL, NULL, NULL);
out:
    sqlite3_finalize(st);
    if (to != NULL)
        blob__written(to); /* its lane is free again (the reservation's writer) */
    blob__unref(to); /* the copies not pointed at stay, referenced by nothing */
    for (size_t i = 0; i < n; i++)
        free(moves[i].key);
    free(moves);
    return done;
}

/* Compacts the first sealed file whose live bytes are under half of it. */
static void blob__compact_one(struct blobs *b)
{
    uint32_t ids[256];
    uint64_t ends[256];
    size_t n = 0;
    pthread_mutex_lock(&b->lock);
    for (struct blob_file *f = b->files; f != NULL && n < 256; f = f->next)
        if (!f->current && f->pending == 0 && f->end > 0) {
            ids[n] = f->id;
            ends[n++] = f->end;
        }
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t live = blob__live(b, ids[i]);
        if (live <= 0 || (uint64_t)live * 2 >= ends[i])
            continue; /* nothing (the removal's), or mostly live */
        struct blob_file *f = blobs__file(b, ids[i]);
        bool done = f != NULL && blob__compact(b, f);
        blob__unref(f);
        if (done) {
            b->seen_at = 0; /* our own change: the next tick looks again */
            return;
        }
    }
}

/* Whether the files are worth a look (each costs a query or two per
 * sealed file): the database changed since the last one (PRAGMA
 * data_version) and BLOB_SCAN_SECONDS went by, or a minute did (readers
 * let go of entries without any change). */
#define BLOB_SCAN_SECONDS 5
static bool blob__worth_a_scan(struct blobs *b)
{
    sqlite3_stmt *st = NULL;
    int64_t version = -1, now = now_us();
    if (sqlite3_prepare_v2(b->conn, "PRAGMA data_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    int64_t since = now - b->seen_at;
    if (since < BLOB_SCAN_SECONDS * 1000000ll ||
        (version == b->seen_version && since < 60 * 1000000ll))
        return false;
    b->seen_version = version;
    b->seen_at = now;
    return true;
}

static bool blob__collect(void *arg)
{
    struct blobs *b = arg;
    if (!blob__worth_a_scan(b))
        return false;
    uint32_t ids[256];
    uint64_t writes[256];
    size_t n = 0;
    /* Candidates: sealed, unmapped by entries, no commit under way. */
    pthread_mutex_lock(&b->lock);
    for (struct blob_file *f = b->files; f != NULL && n < 256; f = f->next)
        if (!f->current && f->pending == 0 && atomic_load(&f->refs) == 1) {
            ids[n] = f->id;
            writes[n++] = f->writes;
        }
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        bool referenced = blob__referenced(b, ids[i]);
        pthread_mutex_lock(&b->lock);
        struct blob_file *f = blob__find(b, ids[i]);
        bool unused = !referenced && f != NULL && !f->current && f->pending == 0 &&
                      f->writes == writes[i] && atomic_load(&f->refs) == 1; /* invariant 3 */
        if (f != NULL && !unused)
            f->doomed = 0;
        else if (unused && f->doomed == 0) { /* invariant 5: removed at a later look */
            f->doomed = ++b->epoch;
            b->seen_at = 0;
            unused = false;
        } else if (unused && blob__read_before(b, f->doomed))
            unused = false;
        if (unused)
            blob__remove(b, f);
        pthread_mutex_unlock(&b->lock);
        if (unused) {
            log_debug("store: blobs: file %" PRIu32 " holds nothing any more: removed", ids[i]);
            blob__unref(f);
        }
    }
    if (b->relocate != NULL)
        blob__compact_one(b);
    return false;
}

/* ---- start and end ---- */

static int blob__cmp_files(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int blobs__open(const char *data_dir, const char *db_path, size_t file_max, uint64_t max_bytes,
                bool fsync, struct blobs **out, char *why, size_t why_len)
{
    struct blobs *b = calloc(1, sizeof *b);
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    DIR *d = NULL;
    *out = NULL;
    if (b == NULL || asprintf(&b->dir, "%s/blobs", data_dir) < 0) {
        free(b);
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc__init);
    b->file_max = file_max;
    b->max_bytes = max_bytes;
    b->fsync = fsync;
    b->next_id = 1;
    pthread_mutex_init(&b->lock, NULL);
    if (mkdir(b->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create %s: %s", b->dir, strerror(errno));
        goto fail;
    }
    if ((d = opendir(b->dir)) == NULL) {
        snprintf(why, why_len, "cannot read %s: %s", b->dir, strerror(errno));
        goto fail;
    }
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        unsigned id;
        char tail;
        if (sscanf(de->d_name, "%8u.blo%c", &id, &tail) != 2 || tail != 'b' ||
            strlen(de->d_name) != 13 || id == 0)
            continue;
        if (n == cap) {
            uint32_t *v = realloc(ids, (cap = cap ? cap * 2 : 16) * sizeof *v);
            if (v == NULL) {
                snprintf(why, why_len, "out of memory");
                goto fail;
            }
            ids = v;
        }
        ids[n++] = id;
    }
    closedir(d);
    d = NULL;
    if (n > 0)
        qsort(ids, n, sizeof *ids, blob__cmp_files);
    for (size_t i = 0; i < n; i++) { /* the list newest first */
        struct blob_file *f = blob__open_file(b, ids[i], file_max, false, why, why_len);
        if (f == NULL)
            goto fail;
        if (blob__add(b, f) != 0) {
            blob__unref(f);
            snprintf(why, why_len, "out of memory");
            goto fail;
        }
        b->next_id = ids[i] + 1;
    }
    if (sqlite3_open_v2(db_path, &b->conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(why, why_len, "cannot open %s for the blob collector", db_path);
        goto fail;
    }
    sqlite3_busy_timeout(b->conn, 5000);
    free(ids);
    *out = b;
    return STORE_OK;
fail:
    if (d != NULL)
        closedir(d);
    free(ids);
    blobs__close(b);
    return STORE_EINTERNAL;
}

/* One referenced end per file, from the rows (blobs__trim). */
struct blob__end {
    uint32_t id;
    uint64_t end;
};

int blobs__trim(struct blobs *b, blob_relocate_fn relocate, void *arg, char *why, size_t why_len)
{
    static const char sql[] =
        "SELECT blob_file, max(blob_off + blob_len) FROM ("
        " SELECT blob_file, blob_off, blob_len FROM entries WHERE blob_file IS NOT NULL"
        " UNION ALL SELECT blob_file, blob_off, blob_len FROM history WHERE blob_file IS NOT NULL"
        " UNION ALL SELECT blob_file, blob_off, blob_len FROM outbox WHERE blob_file IS NOT NULL"
        ") GROUP BY blob_file";
    sqlite3_stmt *st = NULL;
    struct blob__end *ends = NULL;
    size_t n = 0, cap = 0;
    int err = STORE_EINTERNAL;
    if (sqlite3_prepare_v2(b->conn, sql, -1, &st, NULL) != SQLITE_OK) {
        snprintf(why, why_len, "cannot read the blob references: %s", sqlite3_errmsg(b->conn));
        return STORE_EINTERNAL;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            struct blob__end *v = realloc(ends, (cap = cap ? cap * 2 : 16) * sizeof *v);
            if (v == NULL) {
                snprintf(why, why_len, "out of memory");
                goto out;
            }
            ends = v;
        }
        ends[n].id = (uint32_t)sqlite3_column_int64(st, 0);
        ends[n++].end = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (rc != SQLITE_DONE) {
        snprintf(why, why_len, "cannot read the blob references: %s", sqlite3_errmsg(b->conn));
        goto out;
    }
    pthread_mutex_lock(&b->lock);
    for (struct blob_file *f = b->files, *next; f != NULL; f = next) {
        next = f->next;
        uint64_t end = 0;
        bool used = false;
        for (size_t i = 0; i < n && !used; i++)
            if (ends[i].id == f->id) {
                used = true;
                end = ends[i].end;
            }
        if (!used) {
            log_info("store: blobs: file %" PRIu32 " is referenced by nothing: removed", f->id);
            blob__remove(b, f);
            blob__unref(f);
        } else if (end < f->end) {
            /* A crash between a blob's write and its commit. */
            log_warn("store: blobs: file %" PRIu32 ": %" PRIu64
                     " bytes after the last referenced one cut (a write the crash interrupted)",
                     f->id, f->end - end);
            if (ftruncate(f->fd, (off_t)end) == 0) {
                b->total -= f->end - end;
                f->end = end;
            }
        }
    }
    b->relocate = relocate;
    b->relocate_arg = arg;
    /* The newest file takes new blobs while it has room. */
    if (b->files != NULL && b->files->end < b->files->cap) {
        b->lanes[0] = b->files;
        b->files->current = true;
    }
    pthread_mutex_unlock(&b->lock);
    if (worker__start(&b->collector, blob__collect, b) != 0) {
        snprintf(why, why_len, "cannot start the blob collector");
        goto out;
    }
    err = STORE_OK;
out:
    sqlite3_finalize(st);
    free(ends);
    return err;
}

void blobs__stats(struct blobs *b, uint64_t *files, uint64_t *bytes)
{
    *files = *bytes = 0;
    if (b == NULL)
        return;
    pthread_mutex_lock(&b->lock);
    for (const struct blob_file *f = b->files; f != NULL; f = f->next)
        (*files)++;
    *bytes = b->total;
    pthread_mutex_unlock(&b->lock);
}

void blobs__close(struct blobs *b)
{
    if (b == NULL)
        return;
    worker__stop(&b->collector);
    sqlite3_close(b->conn);
    for (struct blob_file *f = b->files, *next; f != NULL; f = next) {
        next = f->next;
        blob__unref(f); /* entries still held keep theirs */
    }
    pthread_mutex_destroy(&b->lock);
    free(b->byid);
    free(b->dir);
    free(b);
}
