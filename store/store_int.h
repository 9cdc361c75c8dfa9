/*
 * store_int.h — what the files of store/ share with each other and with the
 * store's unit tests, and nobody else: the tree, the database and the
 * change records that travel from the tree to the committer.
 */
#ifndef ALMANAC_STORE_INT_H
#define ALMANAC_STORE_INT_H

#include "store.h"

#include <pthread.h>
#include <sqlite3.h>

size_t store__utf8_check(const void *buf, size_t len);
/* The path of the store's database file (store.c). */
const char *store__db_path(const struct store *s);

/* Sets the rev and ts of an entry that no other thread holds yet. */
void entry__stamp(struct store_entry *e, int64_t rev, int64_t ts);
/* The entry with a stored (not sniffed) type, as the loader needs it. */
struct store_entry *entry__load(const void *value, size_t len, const char *type,
                                const char *labels_json, enum store_origin origin, int64_t rev,
                                int64_t ts, int64_t expires);

/* ---- blob.c: values kept in blob files; see the file for its invariants ---- */

struct blobs;
struct blob_file;
/* Opens data_dir/blobs (creating it) and maps its files, each up to
 * `file_max` bytes (a larger value gets a file of its own), all together
 * at most `max_bytes` (0: no cap); `fsync`: the committer syncs them
 * before each commit (blobs__sync). The collector reads `db_path`. */
int blobs__open(const char *data_dir, const char *db_path, size_t file_max, uint64_t max_bytes,
                bool fsync, struct blobs **out, char *why, size_t why_len);
/* Compaction moved the blob at `off` of `from`, the value of `key`, to
 * `to_off` of `to`: the key's entry in memory, if it still maps the old
 * place, is swapped for one that maps the copy. */
typedef void (*blob_relocate_fn)(void *arg, const char *key, const struct blob_file *from,
                                 uint64_t off, struct blob_file *to, uint64_t to_off);
/* After the database is loaded: cuts each file after its last referenced
 * byte, removes files nothing references, starts the collector (which
 * compacts through `relocate`). */
int blobs__trim(struct blobs *b, blob_relocate_fn relocate, void *arg, char *why, size_t why_len);
void blobs__close(struct blobs *b);
/* Appends `len` bytes: `*file` (a new reference), `*off`, their checksum.
 * STORE_OK, STORE_EFULL (no space) or STORE_EINTERNAL. */
int blobs__write(struct blobs *b, const void *data, size_t len, struct blob_file **file,
                 uint64_t *off, uint32_t *crc);
/* Reserves `len` bytes of a current file: `*file` (a new reference) and
 * `*off`; the caller writes them (blob__pwrite), then says so once
 * (blob__written), written or not. */
int blobs__reserve(struct blobs *b, size_t len, struct blob_file **file, uint64_t *off);
void blob__written(struct blob_file *f);
/* Writes `len` bytes at `at` of `f`; STORE_OK, STORE_EFULL, STORE_EINTERNAL. */
int blob__pwrite(struct blob_file *f, const void *data, size_t len, uint64_t at);
/* Syncs the files written since the last sync (durability fsync). */
int blobs__sync(struct blobs *b);
/* A new reference to file `id`, or NULL when there is no such file. */
struct blob_file *blobs__file(struct blobs *b, uint32_t id);
/* Whether file `f` holds the bytes [off, off + len). */
bool blobs__holds(struct blobs *b, const struct blob_file *f, uint64_t off, uint64_t len);
/* A commit writes rows that reference `f` (invariant 3 of blob.c): around it. */
void blobs__hold(struct blobs *b, struct blob_file *f);
void blobs__release(struct blobs *b, struct blob_file *f);
/* A reader that holds a read transaction across calls (a history query's
 * pages): a file whose rows it may still see in its snapshot is not
 * removed before it ends (invariant 5 of blob.c). Begin before the
 * transaction's first read; end after its COMMIT. */
struct blob_reader {
    struct blob_reader *next;
    uint64_t epoch;
};
void blobs__reader_begin(struct blobs *b, struct blob_reader *r);
void blobs__reader_end(struct blobs *b, struct blob_reader *r);
/* The files and the bytes they hold. */
void blobs__stats(struct blobs *b, uint64_t *files, uint64_t *bytes);
void blob__ref(struct blob_file *f);
void blob__unref(struct blob_file *f);
const void *blob__data(const struct blob_file *f, uint64_t off);
uint32_t blob__id(const struct blob_file *f);
uint32_t blob__crc(const void *data, size_t len);
/* The CRC-32C of the bytes behind `crc` (0: none) followed by `data`. */
uint32_t blob__crc_more(uint32_t crc, const void *data, size_t len);

/* A blob entry: the value is `len` bytes at `off` of `file` (the entry
 * takes the reference, also on failure: NULL, out of memory). Not stamped. */
struct store_entry *entry__blob(struct blob_file *file, uint64_t off, size_t len, uint32_t crc,
                                const char *type, const char *labels_json, enum store_origin origin,
                                int64_t expires);
/* Whether `e` is a blob entry, and where its value is (borrowed). */
bool entry__blob_ref(const struct store_entry *e, struct blob_file **file, uint64_t *off,
                     uint32_t *crc);
/* Moves the value of an unshared entry of at least `min` bytes to a blob
 * file: `*e` becomes the blob entry. STORE_OK (also when nothing moves). */
int entry__to_blob(struct blobs *b, size_t min, struct store_entry **e);
/* A copy of blob entry `e` (rev, ts and all) whose value is at `off` of
 * `file` (a new reference taken), or NULL (out of memory). */
struct store_entry *entry__moved(const struct store_entry *e, struct blob_file *file, uint64_t off);

/* ---- expiry.c: keys that expire; see the file for its invariants ---- */

struct expiry;
/* Deletes go through `apply(arg, t)` (store_apply, waited for). */
struct expiry *expiry__new(int (*apply)(void *arg, struct store_txn *t), void *arg);
/* Starts the thread that deletes expired keys; STORE_OK or an error. */
int expiry__start(struct expiry *x);
/* Stops the thread (before the store drains); what is pending stays. */
void expiry__stop(struct expiry *x);
void expiry__free(struct expiry *x);
/* `key` expires at `when` (µs): an item for the thread (invariant 1). */
int expiry__push(struct expiry *x, const char *key, size_t klen, int64_t when);
/* Items waiting, expired keys' among them until they are deleted. */
size_t expiry__pending(struct expiry *x);

/* ---- tree.c: the key tree; the caller does the locking ---- */

struct tree;
struct tree *tree__new(void);
void tree__free(struct tree *t);
uint64_t tree__count(const struct tree *t);
/* Borrowed entry of `key`, or NULL. */
struct store_entry *tree__get(const struct tree *t, const char *key, size_t klen);
/* Stores `e` (the tree takes the reference) at `key`; `*old` gets the
 * previous reference or NULL. STORE_OK or STORE_EINTERNAL (out of memory). */
int tree__set(struct tree *t, const char *key, size_t klen, struct store_entry *e,
              struct store_entry **old);
/* Removes `key`; returns its reference (the caller owns it) or NULL. */
struct store_entry *tree__del(struct tree *t, const char *key, size_t klen);
/* Visits matching entries in key order after the cursor; see store_pget. */
void tree__walk(const struct tree *t, const char *pat, size_t plen,
                const struct store_filter *filter, const char *after, size_t alen, size_t limit,
                store_visit_fn visit, void *arg, bool *more);
int tree__ls(const struct tree *t, bool root, const char *key, size_t klen, store_child_fn child,
             void *arg);

/* ---- subs.c: the subscription tree; the caller holds the subs lock ---- */

struct subnode;
struct store_sub {
    struct store_sub *next, *prev; /* at its node */
    struct subnode *node;
    int64_t min_rev; /* events at or below it are in the snapshot */
    bool unique;
    store_event_fn fn;
    void *arg;
};
struct subnode *subs__new(void);
void subs__free(struct subnode *root);
int subs__add(struct subnode *root, struct store_sub *sub, const char *pat, size_t plen);
void subs__del(struct store_sub *sub);
/* Calls the `fn` of every subscription whose pattern matches ev->key. */
void subs__dispatch(const struct subnode *root, struct store_event *ev);

/* ---- the change records of one transaction, as the committer writes them ---- */

struct change {
    char *key; /* owned copy */
    size_t klen;
    struct store_entry *entry; /* new reference; NULL for a deletion */
    struct store_entry *old;   /* new reference to what it replaced, for undo */
    int64_t rev, ts;
    bool transient;           /* a publish: delivered, never written */
    enum store_origin origin; /* a deletion's; a set has its entry's */
    char *topic;              /* owned: the outbox topic, or NULL */
    bool history;             /* kept in history */
    bool memory_only;         /* no row written (store_op) */
};

struct commit {
    struct commit *next;
    struct store_txn *txn;
    store_done_fn done;
    void *arg;
    struct change *changes;
    size_t n, cap;
    int64_t last_rev; /* the highest rev of `changes`, or the store's rev then */
};

/* ---- outbox.c: the outbox in memory; see the file for its invariants ---- */

struct outbox;
struct outbox_ack {
    char *topic; /* owned */
    int64_t rev;
};
struct outbox *outbox__new(void);
void outbox__free(struct outbox *ob);
/* Adds the committed change (topic, rev, e) (e borrowed, NULL for a
 * deletion), replacing what waited for the topic. */
int outbox__put(struct outbox *ob, const char *topic, int64_t rev, struct store_entry *e);
size_t outbox__next(struct outbox *ob, int64_t after, struct store_outbox_msg *out, size_t max);
/* The rev of the change waiting for `topic`, or 0. */
int64_t outbox__waiting(struct outbox *ob, const char *topic);
/* Removes the item of `topic` if its rev is `rev`, remembering the row's
 * deletion for the committer. Whether it did. */
bool outbox__ack(struct outbox *ob, const char *topic, int64_t rev);
/* Hands over the deletions waiting (the caller frees them). */
size_t outbox__take_acks(struct outbox *ob, struct outbox_ack **acks);
size_t outbox__depth(struct outbox *ob);

/* Appends (key, e, rev, ts) to a snapshot (taking `e`; NULL: a deletion,
 * then with `rev` and `ts` kept). STORE_OK or STORE_EINTERNAL. */
int snapshot__add(struct store_snapshot *snap, const char *key, size_t klen, struct store_entry *e,
                  int64_t rev, int64_t ts);

/* ---- history.c; see the file for its invariants ---- */

/* What a history record counts for history_max_bytes: its lengths and this. */
#define HISTORY_ROW_BYTES 40
#define HISTORY_ROW_SIZE_SQL                                                                       \
    "(length(CAST(key AS BLOB)) + coalesce(length(value), 0) + coalesce(blob_len, 0) + "           \
    "coalesce(length(CAST(type AS BLOB)), 0) + coalesce(length(CAST(labels AS BLOB)), 0) + 40)"
/* The same before schema 5 (no blob files), as migration 2 wrote it. */
#define HISTORY_ROW_SIZE_SQL_2                                                                     \
    "(length(CAST(key AS BLOB)) + coalesce(length(value), 0) + "                                   \
    "coalesce(length(CAST(type AS BLOB)), 0) + coalesce(length(CAST(labels AS BLOB)), 0) + 40)"

struct history;
/* Records whose value is in a blob file are read through `blobs`. */
int history__open(const char *path, struct blobs *blobs, int64_t retention_us, uint64_t max_bytes,
                  struct history **out, char *why, size_t why_len);
void history__close(struct history *h);
/* A commit added `records` records of `bytes`. */
void history__added(struct history *h, uint64_t bytes, uint64_t records);
void history__stats(struct history *h, struct store_stats *out);
/* Fills `snap` with the changes of keys matching `pat` with a rev in
 * (since, upto], in rev order; STORE_EGONE when history lacks some. */
int history__replay(struct history *h, const char *pat, size_t plen, int64_t since, int64_t upto,
                    struct store_snapshot *snap);
int history__query(struct history *h, const struct store_history_query *q,
                   struct store_history **out);
/* The rev a replay from time `ts` starts after (store_history_first_rev). */
int history__first_rev(struct history *h, int64_t ts, int64_t *rev);

/* ---- worker.c: a task run about once a second on a thread of its own ---- */

struct worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool started, stop;
    bool (*task)(void *arg); /* true: more is waiting, run again soon */
    void *arg;
};
/* 0, or -1 when the thread cannot start. */
int worker__start(struct worker *w, bool (*task)(void *arg), void *arg);
/* Waits for a running task to end; nothing when never started. */
void worker__stop(struct worker *w);

/* ---- db.c: SQLite persistence ---- */

#define DB_SCHEMA_VERSION 6
/* The columns of a value kept in a blob file (schema 5), in this order. */
#define DB_BLOB_COLUMNS "blob_file, blob_off, blob_len, blob_crc"

struct db;
int db__open(const char *dir, enum store_durability durability, uint64_t max_bytes, struct db **out,
             char *why, size_t why_len);
void db__close(struct db *db);
int db__schema_version(const struct db *db);
const char *db__path(const struct db *db);
typedef int (*db_load_fn)(void *arg, const char *key, size_t klen, struct store_entry *e);
/* Calls `fn` for every stored entry (the callee takes the reference) and
 * sets `*rev` to the highest rev ever committed. */
int db__load(struct db *db, db_load_fn fn, void *arg, int64_t *rev, char *why, size_t why_len);
/* Puts every row of the outbox table into `ob`, in rev order. */
int db__load_outbox(struct db *db, struct outbox *ob, char *why, size_t why_len);
/* Writes every change of the list of commits (with its outbox row) and
 * deletes the acknowledged outbox rows, in one transaction.
 * STORE_OK, STORE_EFULL or STORE_EINTERNAL; on failure nothing is written. */
int db__write(struct db *db, const struct commit *list, const struct outbox_ack *acks, size_t nacks,
              uint64_t *hist_bytes, uint64_t *hist_records);
/* Reading a column of the current row of `st` back, checked (db.c,
 * invariant 4); each refuses what the schema never holds:
 * an INTEGER (false otherwise); */
bool db__col_int(sqlite3_stmt *st, int col, int64_t *v);
/* TEXT with no NUL of at most `max` bytes: borrowed until the next step,
 * and its length in `*len`; NULL otherwise; */
const char *db__col_text(sqlite3_stmt *st, int col, size_t max, size_t *len);
/* a valid key (store_key_check), as db__col_text; */
const char *db__col_key(sqlite3_stmt *st, int col, size_t *len);
/* an origin in range; */
bool db__col_origin(sqlite3_stmt *st, int col, enum store_origin *origin);
/* the entry made of the type, labels and value columns, or of the four
 * blob columns from `blob_col` on when they are not NULL (its file found
 * through `blobs`), stamped (rev, ts): STORE_OK with a new reference in
 * `*out`, or STORE_EINTERNAL with `*bad` naming the corrupt column (NULL:
 * out of memory). */
int db__col_entry(sqlite3_stmt *st, struct blobs *blobs, int type_col, int labels_col,
                  int value_col, int blob_col, enum store_origin origin, int64_t rev, int64_t ts,
                  int64_t expires, struct store_entry **out, const char **bad);
/* The blob files entries are read from (NULL: none). */
void db__set_blobs(struct db *db, struct blobs *blobs);
/* A meta value (0 when absent), and setting one; only before the committer
 * starts. */
int64_t db__meta(struct db *db, const char *name);
/* The same on any connection to the database (history's). */
int64_t db__meta_of(sqlite3 *conn, const char *name);
char *db__meta_text(struct db *db, const char *name);
int db__set_meta(struct db *db, const char *name, const char *text, int64_t value);

#endif
