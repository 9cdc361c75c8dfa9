/*
 * store.h — the public interface of almanac's store: keys and patterns, the
 * in-memory key tree, revisions, and the commit pipeline to SQLite.
 *
 * Every transport (HTTP, sessions, the MQTT bridge) is a client of this API
 * and nothing else of store/.
 *
 * Ownership, as in jansson: a function that returns `struct store_entry *`
 * says whether the reference is new (the caller unrefs it) or borrowed.
 * Entries are immutable once they are in the tree and are reference-counted,
 * so any thread may hold one after the tree's lock is released.
 */
#ifndef ALMANAC_STORE_H
#define ALMANAC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One error enum for every module and transport; 0 is success. The names and
 * HTTP statuses are the table of API.md ("Errors"). */
enum store_err {
    STORE_OK = 0,
    STORE_EKEY,       /* invalid_key, 400 */
    STORE_EPATTERN,   /* invalid_pattern, 400 */
    STORE_EBODY,      /* invalid_body, 400 */
    STORE_EBADREQ,    /* bad_request, 400 */
    STORE_EUNAUTH,    /* unauthorized, 401 */
    STORE_EFORBIDDEN, /* forbidden, 403 */
    STORE_EREADONLY,  /* read_only, 403 */
    STORE_ENOTFOUND,  /* not_found, 404 */
    STORE_EMETHOD,    /* method_not_allowed, 405 */
    STORE_EGONE,      /* history_gone, 410 */
    STORE_EREV,       /* rev_mismatch, 412 */
    STORE_ETOOLARGE,  /* too_large, 413 */
    STORE_ERATE,      /* rate_limited, 429 */
    STORE_EINTERNAL,  /* internal, 500 */
    STORE_EUNAVAIL,   /* unavailable, 503 */
    STORE_EFULL,      /* storage_full, 507 */
    STORE_EPROTO,     /* protocol_unsupported */
    STORE_ESLOW,      /* too_slow */
    STORE_EHOST,      /* misdirected, 421: a Host that is not this server's */
    STORE_ELOCKED,    /* locked, 409: another session holds the lock */
    STORE_ERR_COUNT
};

/* The wire name of an error ("invalid_key"); never NULL. */
const char *store_err_name(int err);
/* The HTTP status of an error (400 for invalid_key). */
unsigned store_err_status(int err);
/* A sentence for a client when nothing more precise is known; never NULL. */
const char *store_err_text(int err);

/* ---- keys and patterns (key.c) ------------------------------------------ */

/* Checks `key` (not NUL-terminated, `len` bytes) against the key rules of
 * API.md. Returns STORE_OK, or STORE_EKEY with a sentence in `why`. */
int store_key_check(const char *key, size_t len, size_t max_len, char *why, size_t why_len);
/* Checks a pattern (MQTT topic filter). `*wild` tells whether it holds a
 * wildcard; a pattern without one is a key. Returns STORE_OK or
 * STORE_EPATTERN with a sentence in `why`. */
int store_pattern_check(const char *pat, size_t len, size_t max_len, bool *wild, char *why,
                        size_t why_len);
/* Whether a valid key matches a valid pattern (MQTT's rules, `$` included). */
bool store_pattern_match(const char *pat, size_t plen, const char *key, size_t klen);
/* Whether pattern `q` matches every key that pattern `p` matches (MQTT's
 * rules, `$` included): "a/#" covers "a/+/b" and "a", "+" does not cover
 * "$SYS/x". Both valid. */
bool store_pattern_covers(const char *q, size_t qlen, const char *p, size_t plen);
/* Whether some key matches both patterns (MQTT's rules, `$` included):
 * "a/+" meets "+/b", "#" does not meet "$SYS/x". Both valid. */
bool store_pattern_intersects(const char *a, size_t alen, const char *b, size_t blen);
/* Whether a key is reserved for the server (first segment starts with `$`). */
bool store_key_reserved(const char *key, size_t len);
/* Compares two keys in the store's order: segment by segment, each segment
 * by its bytes, so a key sorts right before its children. <0, 0, >0. */
int store_key_cmp(const char *a, size_t alen, const char *b, size_t blen);

/* ---- entries (entry.c) --------------------------------------------------- */

enum store_origin {
    STORE_ORIGIN_HTTP = 0,
    STORE_ORIGIN_WS,
    STORE_ORIGIN_TCP,
    STORE_ORIGIN_UNIX,
    STORE_ORIGIN_MQTT,
    STORE_ORIGIN_SYS,
    STORE_ORIGIN_COUNT
};
const char *store_origin_name(enum store_origin o);

struct store_entry; /* a value with its type, labels, rev, ts and origin */

#define STORE_LABELS_MAX 16384 /* bytes of labels JSON in one entry */

/* A new entry holding a copy of `value`. `type` NULL or "" sniffs the type
 * (JSON, else UTF-8 text, else bytes); a type is at most 255 bytes.
 * `labels_json` is NULL or a compact JSON object of strings, at most
 * STORE_LABELS_MAX bytes. A JSON type (store_type_is_json) must hold valid
 * JSON. Returns STORE_OK with a new reference in `*out`, STORE_EBODY when
 * the value is not of its type, STORE_EINTERNAL when out of memory. */
int store_entry_new(const void *value, size_t len, const char *type, const char *labels_json,
                    enum store_origin origin, struct store_entry **out);
/* A value of a known length written straight to a blob file as it arrives
 * (an HTTP body), never held in memory whole: open it (STORE_ENOTFOUND
 * when `len` is under blob_min_bytes or there are no blob files, then take
 * the bytes as usual; STORE_EFULL), write its bytes in order, then make
 * the entry of it as store_entry_new would (STORE_EBODY: not the JSON its
 * type says; STORE_EBADREQ: fewer bytes than opened), or abort it. Either
 * ends `w`; the bytes of an aborted one are referenced by nothing. */
struct store;
struct store_blob;
int store_blob_open(struct store *s, size_t len, struct store_blob **out);
int store_blob_write(struct store_blob *w, const void *data, size_t len);
int store_blob_entry(struct store_blob *w, const char *type, const char *labels_json,
                     enum store_origin origin, struct store_entry **out);
void store_blob_abort(struct store_blob *w);
/* store_entry_new, with a value of at least blob_min_bytes written to a blob
 * file at once (no copy of it in memory): for values that arrive whole. */
int store_entry_make(struct store *s, const void *value, size_t len, const char *type,
                     const char *labels_json, enum store_origin origin, struct store_entry **out);
void store_entry_ref(struct store_entry *e);
void store_entry_unref(struct store_entry *e);
const void *store_entry_value(const struct store_entry *e, size_t *len);
const char *store_entry_type(const struct store_entry *e);
/* The labels as a compact JSON object, or NULL when there are none. */
const char *store_entry_labels(const struct store_entry *e);
int64_t store_entry_rev(const struct store_entry *e);
int64_t store_entry_ts(const struct store_entry *e);
enum store_origin store_entry_origin(const struct store_entry *e);
/* When the entry expires (µs since the epoch), or 0: never. */
int64_t store_entry_expires(const struct store_entry *e);
/* Makes a new, unshared entry expire at `expires` (µs; 0: never).
 * STORE_OK or STORE_EINTERNAL (out of memory: `*e` is as it was). */
int store_entry_expire_at(struct store_entry **e, int64_t expires);
/* The sniffed content type of `len` bytes (a static string). */
const char *store_sniff_type(const void *value, size_t len);
/* Whether `type` is JSON: application/json or application/...+json, with or
 * without parameters. */
bool store_type_is_json(const char *type);
/* Whether `len` bytes are valid UTF-8 (RFC 3629). */
bool store_utf8_valid(const void *buf, size_t len);
/* Whether `len` bytes are one JSON value (RFC 8259). */
bool store_json_valid(const void *value, size_t len);

/* ---- the store (store.c) ------------------------------------------------- */

enum store_durability { STORE_DURABLE_COMMIT = 0, STORE_DURABLE_FSYNC };

struct store_limits {
    size_t max_key_bytes;   /* default 1024 */
    size_t max_value_bytes; /* default 1 MiB */
};

/* The outbox (for the MQTT bridge): the changes that go out, kept in SQLite
 * with the change itself until the broker has them. */
struct store_outbox_hooks {
    /* Called on the committer's thread for each change before its commit:
     * the topic it goes out to (a new malloc'd string the store frees), or
     * NULL when it does not go out. `origin` is where the change came from. */
    char *(*topic)(void *arg, const char *key, size_t klen, enum store_origin origin);
    /* Called on the committer's thread after a commit that added to the
     * outbox. Must not block. */
    void (*ready)(void *arg);
    /* Called on the committer's thread with a transient message (store_publish)
     * whose key has a topic: it goes out now or never. Must not block. */
    void (*publish)(void *arg, const char *topic, const struct store_entry *e);
    void *arg;
};

struct store_config {
    const char *data_dir; /* almanac.db lives here; created if missing */
    enum store_durability durability;
    uint64_t max_db_bytes; /* 0: no cap; beyond it writes fail with STORE_EFULL */
    struct store_limits limits;
    /* Values of at least `blob_min_bytes` live in blob files under
     * data_dir/blobs, each of at most `blob_file_bytes` (0: no blob files). */
    size_t blob_min_bytes, blob_file_bytes;
    struct store_outbox_hooks outbox; /* topic NULL: nothing goes to the outbox */
    /* History: the changes of keys matching one of `history_keys` (none
     * given: "#") are kept, for `history_retention_us` (0: no history) and
     * at most about `history_max_bytes` (0: no cap), oldest first out. */
    char *const *history_keys;
    size_t nhistory_keys;
    int64_t history_retention_us;
    uint64_t history_max_bytes;
};

struct store;

/* Opens (creating and migrating) the database and loads every entry.
 * On failure returns an error and a sentence in `why`. */
int store_open(const struct store_config *cfg, struct store **out, char *why, size_t why_len);
/* Refuses new writes (STORE_EUNAVAIL), commits what is queued and answers
 * its writers. Called before the transports stop; store_close follows. */
void store_drain(struct store *s);
/* Drains, stops the committer and closes the database. */
void store_close(struct store *s);

const struct store_limits *store_limits(const struct store *s);

/* The current entry of `key` (checked by the caller). Waits until every change
 * the answer may reflect is committed. Returns STORE_OK with a new reference in
 * `*out`, or STORE_ENOTFOUND. */
int store_get(struct store *s, const char *key, size_t klen, struct store_entry **out);

/* Called for each entry of a pattern get, in key order, with a borrowed key
 * and entry (valid during the call only). False: no more, however many the
 * limit allows (the walk then says more may follow). */
typedef bool (*store_visit_fn)(void *arg, const char *key, size_t klen,
                               const struct store_entry *e);
/* Which keys a walk may return: those `keep` says yes to (under the tree's
 * read lock: it must not call the store). */
struct store_filter {
    bool (*keep)(void *arg, const char *key, size_t klen);
    void *arg;
};
/* Visits at most `limit` entries matching `pat` (and `filter`, if not NULL)
 * whose key sorts after `after` (NULL: from the start). `*more` tells
 * whether further entries follow. The visit runs under the tree's read
 * lock: it must not call the store. */
int store_pget(struct store *s, const char *pat, size_t plen, const struct store_filter *filter,
               const char *after, size_t alen, size_t limit, store_visit_fn visit, void *arg,
               bool *more);

/* Called for each child of a node in name order: its name, whether it holds
 * a value, whether it has children, and how many keys are below it (not
 * counting its own; STORE_BELOW_UNKNOWN when the caller may not know). */
#define STORE_BELOW_UNKNOWN UINT64_MAX
typedef void (*store_child_fn)(void *arg, const char *name, size_t nlen, bool value, bool children,
                               uint64_t below);
/* Lists the children of `key` (NULL or klen 0 with `root` for the root).
 * STORE_ENOTFOUND when no key starts with `key/` and `key` holds nothing.
 * `*rev` (unless NULL) gets the rev the answer is of: every change up to it
 * is in it, and committed; none after it. */
int store_ls(struct store *s, bool root, const char *key, size_t klen, store_child_fn child,
             void *arg, int64_t *rev);

enum store_op_kind { STORE_OP_SET, STORE_OP_DELETE, STORE_OP_GET };

#define STORE_ANY_REV    (-1)
#define STORE_EXISTS_REV (-2) /* if_rev: the key must exist, any rev */

/* One operation of a transaction. The caller fills the request part; the
 * store fills the result part before calling `done`. */
struct store_op {
    enum store_op_kind kind;
    const char *key; /* borrowed; lives until `done` has run */
    size_t klen;
    bool pattern;              /* DELETE: `key` is a pattern with wildcards */
    bool must_exist;           /* DELETE: a missing key is STORE_ENOTFOUND */
    bool sys;                  /* DELETE: by the server, so $-keys may go */
    bool if_expired;           /* DELETE of a key: only when its entry has expired
                                  (nothing, and no error, otherwise) */
    enum store_origin origin;  /* DELETE: where it came from (SET: the entry's) */
    bool if_changed;           /* SET: a no-op (rev 0) when the key holds the same
                                  value, type and labels */
    bool memory_only;          /* by the server, on its $-keys: changed in memory
                                  (a rev, events) but never written to the
                                  database, nor kept in history (keys that a
                                  restart drops anyway: the open sessions'); so
                                  no $-pattern is replayed from history */
    struct store_entry *entry; /* SET: the store takes this reference, always */
    int64_t if_rev;            /* STORE_ANY_REV, STORE_EXISTS_REV, 0 (absent) or a rev */

    int err;                 /* STORE_OK or why this op failed the transaction */
    int64_t rev, ts;         /* SET, DELETE of a key: the change's rev and ts */
    bool created;            /* SET: the key did not exist before */
    size_t deleted;          /* DELETE: how many keys */
    struct store_entry *got; /* GET: a new reference, or NULL when absent */
};

struct store_txn {
    struct store_op *ops;
    size_t n;
    int err;     /* STORE_OK, or the first failure; then nothing was applied */
    size_t fail; /* the index of the op that failed */
};

/* Called once a submitted transaction is committed (t->err == STORE_OK) or
 * has failed; on the committer's thread or, for an error found before
 * queueing, not at all (see store_submit). Must not block. */
typedef void (*store_done_fn)(void *arg, struct store_txn *t);

/* Applies every op of `t` all-or-nothing and queues the changes for commit.
 * Returns STORE_OK when `done` will be called after the commit, or an error
 * (also in t->err) when nothing was applied and `done` will not be called. */
int store_submit(struct store *s, struct store_txn *t, store_done_fn done, void *arg);
/* store_submit, then waits for the commit. Returns t->err. */
int store_apply(struct store *s, struct store_txn *t);
/* Releases the `got` references of a finished transaction. */
void store_txn_clear(struct store_txn *t);

/* A transient message: nothing stored, no rev of its own; handed to the
 * subscribers in order with the changes around it. Takes `e`. */
int store_publish(struct store *s, const char *key, size_t klen, struct store_entry *e);

/* ---- the outbox (outbox.c, store.c) --------------------------------------- */

/* One change waiting for the broker: the latest of its topic. */
struct store_outbox_msg {
    char *topic; /* owned */
    int64_t rev;
    struct store_entry *entry; /* a new reference; NULL for a deletion */
};
/* Fills at most `max` messages of the outbox whose rev is above `after`, in
 * rev order. Returns how many; release each with store_outbox_msg_clear. */
size_t store_outbox_next(struct store *s, int64_t after, struct store_outbox_msg *out, size_t max);
void store_outbox_msg_clear(struct store_outbox_msg *m);
/* The rev of the committed change waiting for (or sent to, not yet
 * acknowledged by) the broker on `topic`, or 0 when none waits. */
int64_t store_outbox_waiting(struct store *s, const char *topic);
/* The broker has `topic` at `rev`: its row goes in the next commit, unless a
 * newer change of the topic waits. Any thread; does not block on SQLite. */
void store_outbox_ack(struct store *s, const char *topic, int64_t rev);

/* ---- label filters (entry.c) --------------------------------------------- */

#define STORE_LABELS_FILTERS_MAX 16 /* filters of each kind (match, exclude) */

/* The label filters of a history query or a feed: an entry passes when it
 * has every `match` label with its value and no `exclude` label with its
 * value. An entry without labels passes no match filter and every exclude
 * filter. A deletion carries no labels: it is judged by the value it
 * deleted, so a client filtering on labels learns that a key it was shown
 * is gone (and when that value is no longer known, pruned from history, it
 * passes). Strings borrowed. */
struct store_labels {
    const char *match_names[STORE_LABELS_FILTERS_MAX];
    const char *match_values[STORE_LABELS_FILTERS_MAX];
    size_t nmatch;
    const char *exclude_names[STORE_LABELS_FILTERS_MAX];
    const char *exclude_values[STORE_LABELS_FILTERS_MAX];
    size_t nexclude;
};
/* Whether `f` filters anything. */
bool store_labels_any(const struct store_labels *f);
/* Whether labels `json` (`len` bytes of a JSON object of strings, as
 * store_entry_labels gives them; NULL: none) pass `f`. */
bool store_labels_pass(const struct store_labels *f, const char *json, size_t len);
/* The same for the labels of `e` (not NULL). */
bool store_labels_pass_entry(const struct store_labels *f, const struct store_entry *e);

/* ---- history (history.c) ------------------------------------------------- */

/* One change as history keeps it. */
struct store_record {
    const char *key; /* borrowed, NUL-terminated */
    size_t klen;
    const struct store_entry *entry; /* borrowed; NULL: a deletion */
    int64_t rev, ts;
};

struct store_history_query {
    const char *pattern; /* a key or a pattern, checked by the caller */
    size_t plen;
    int64_t start, stop; /* µs, the range [start, stop) */
    size_t limit;        /* records at most */
    bool desc;           /* newest first */
    int64_t after;       /* the cursor of the page before (a rev), or 0 */
    int64_t every;       /* µs: the last record of each key in each bucket; 0: all */
    /* label filters (a deletion is judged by the record before it: see
     * store_labels); applied before `limit` and the cursor count */
    struct store_labels labels;
    /* the keys the reader may see (keep NULL: all); applied before `limit`
     * and the cursor count, so a page says nothing of the others */
    struct store_filter filter;
};

struct store_history;
/* Starts a query. Records come in time order (with `every` and a pattern,
 * grouped by key, each key's in time order). STORE_OK with `*out`,
 * STORE_EINTERNAL, or STORE_EUNAVAIL when there is no history. */
int store_history_open(struct store *s, const struct store_history_query *q,
                       struct store_history **out);
/* The next record (valid until the next call): 1, 0 at the end, or a
 * negative store error. */
int store_history_next(struct store_history *h, struct store_record *rec);
/* Ends a query; `*next` (if not NULL) is the cursor of the next page, or 0
 * when nothing follows. */
void store_history_close(struct store_history *h, int64_t *next);
/* The first rev at or after the time `ts` (µs), for a replay from that
 * time (a replay after `*rev - 1`): every change history holds below
 * `*rev` is before `ts`, and every one from `*rev` on is at or after it
 * (ts grows with rev). STORE_OK; STORE_EGONE when history does not reach
 * back to `ts` (it holds no change before `ts`, and changes at or below
 * its floor are gone, so their times are unknown); STORE_EUNAVAIL when
 * there is no history; STORE_EINTERNAL. */
int store_history_first_rev(struct store *s, int64_t ts, int64_t *rev);

/* ---- subscriptions (subs.c, store.c) ---------------------------------- */

/* One change as subscribers see it: on the committer's thread, after the
 * commit, in rev order. Everything is borrowed for the call. */
struct store_event {
    const char *key;
    size_t klen;
    const struct store_entry *entry; /* NULL: a deletion */
    const struct store_entry *old;   /* what it replaced, or NULL */
    int64_t rev, ts;
    bool transient; /* a publish: nothing stored; rev is the last committed */
    /* Scratch for the subscribers of this one event (its text, say, made by
     * the first and reused by the rest); the store frees it afterwards. */
    char *cache;
    size_t cache_len;
};

struct store_sub;
/* Called for each matching event, with the store's subscription lock held:
 * it must not block, nor subscribe or unsubscribe. */
typedef void (*store_event_fn)(void *arg, struct store_sub *sub, struct store_event *ev);

/* The state a subscription starts from: the matching entries in key order
 * (keys copied, entries new references); or, for a replay, the changes
 * after `since` in rev order, where a NULL entry is a deletion of rev
 * revs[i] at tss[i]. */
struct store_snapshot {
    char **keys;
    size_t *klens;
    struct store_entry **entries;
    int64_t *revs, *tss; /* each change's */
    size_t n, cap;
    bool failed; /* out of memory while filling it */
};
void store_snapshot_free(struct store_snapshot *snap);

/* Subscribes to `pat` (checked by the caller). Every change with a rev above
 * `*sync_rev` is handed to `fn`, none at or below it; with `snap` non-NULL it
 * receives the state at exactly `*sync_rev`, all of it committed. `unique`
 * drops events whose value and type equal what they replace. Returns
 * STORE_OK with the subscription in `*out`. */
int store_subscribe(struct store *s, const char *pat, size_t plen, bool unique, store_event_fn fn,
                    void *arg, struct store_snapshot *snap, int64_t *sync_rev,
                    struct store_sub **out);
/* The same, with `snap` filled with every change of a matching key after
 * rev `since` up to `*sync_rev`, from history. STORE_EGONE (nothing
 * subscribed) when history does not hold all of them: `since` is older than
 * the kept history, history does not cover the pattern (history_keys, and
 * never a $-pattern: memory-only changes), or `since` is ahead of the store. */
int store_subscribe_since(struct store *s, const char *pat, size_t plen, bool unique,
                          store_event_fn fn, void *arg, int64_t since, struct store_snapshot *snap,
                          int64_t *sync_rev, struct store_sub **out);
/* After it returns, `fn` is not called for `sub` again; `sub` is freed. */
void store_unsubscribe(struct store *s, struct store_sub *sub);
/* Whether two entries hold the same value and type. */
bool store_entry_same(const struct store_entry *a, const struct store_entry *b);

/* ---- access tokens (tokens.c) --------------------------------------------- */

/* A token as stored: its secret only as a SHA-256 hash. */
struct store_token {
    const char *name;
    unsigned char hash[32];
    const char *read, *write; /* JSON arrays of patterns */
    bool admin;
    int64_t created, expires; /* µs; expires 0: never */
};
/* Adds a token. STORE_OK, STORE_EREV when the name is taken, or an error
 * with a sentence in `why`. Any thread; a connection of its own. */
int store_token_add(struct store *s, const struct store_token *t, char *why, size_t why_len);
/* Removes the token `name`: STORE_OK or STORE_ENOTFOUND. */
int store_token_remove(struct store *s, const char *name);
/* Calls `fn` for every stored token (borrowed for the call). */
int store_tokens(struct store *s, void (*fn)(void *arg, const struct store_token *t), void *arg);

struct store_stats {
    uint64_t keys;
    int64_t rev;           /* the last rev assigned */
    int64_t committed_rev; /* the last rev committed */
    uint64_t commits;      /* SQLite transactions committed */
    uint64_t changes;      /* changes committed */
    uint64_t commit_failures;
    uint64_t publishes;
    uint64_t subscriptions; /* live now */
    uint64_t events;        /* handed to subscribers */
    int schema_version;
    bool writable; /* the last commit (if any) succeeded */
    bool draining;
    int64_t db_bytes, wal_bytes;
    uint64_t outbox;       /* changes waiting for the MQTT broker */
    bool history;          /* history is kept */
    int64_t history_floor; /* history holds every change after this rev */
    uint64_t history_bytes, history_records, history_pruned;
    uint64_t blob_files, blob_bytes; /* blob files and the bytes they hold */
    const char *db_path;
    enum store_durability durability;
};
void store_stats(struct store *s, struct store_stats *out);

#endif
