/*
 * almanac.h — libalmanac, the C client of almanac: the session protocol of
 * API.md over TCP (optionally TLS) or a Unix socket, and the few HTTP
 * routes the session protocol does not carry (tokens, export, import).
 *
 * One handle is one connection (a session) plus its configuration:
 *
 *     struct almanac *a;
 *     struct almanac_options o = {.token = getenv("ALMANAC_TOKEN")};
 *     if (almanac_connect(&a, "127.0.0.1:8481", &o) != ALMANAC_OK)
 *         fprintf(stderr, "%s\n", almanac_errmsg(a));   // a is set even then
 *     almanac_set(a, "home/kitchen/temp", "21.5", 4, NULL, NULL);
 *     almanac_close(a);
 *
 * Errors. Every call returns an enum almanac_err (ALMANAC_OK is 0). When
 * the server refused a request, the code is the server's (ALMANAC_ENOTFOUND,
 * ALMANAC_EFORBIDDEN, ...; ALMANAC_ESERVER for a code this library does not
 * know), almanac_server_error() gives the server's code as text
 * ("not_found") and almanac_errmsg() its message. Both stay until the next
 * call on the handle.
 *
 * Memory. Strings and entries given to a callback are the library's and
 * valid during the callback only; an event from almanac_next_event() is
 * valid until the next call on the handle. What a function returns through
 * an out-parameter that the caller must free says so.
 *
 * Threads. A handle is not thread-safe: use it from one thread at a time
 * (its callbacks run in the thread that made the call that delivers them,
 * and must not call the handle, but for reading the entry). Different
 * handles share nothing: the library has no global state, so threads may
 * each use their own handle at once. On a TLS connection writes block
 * SIGPIPE for the calling thread while they run; plain sockets use
 * MSG_NOSIGNAL; a dropped connection is an error code, never a signal.
 *
 * Subscriptions. almanac_subscribe() sends the matching entries (the
 * snapshot), then an ALMANAC_EVENT_SYNC, then every later change in rev
 * order. Events are read by almanac_next_event() (blocking, with a
 * timeout) or given to the subscription's callback by almanac_dispatch().
 * Events that arrive while a request waits for its reply are kept, in
 * order, for those two. When the connection drops, the handle reconnects
 * (unless options.no_reconnect) at the next call and resubscribes each
 * subscription with `since` the last rev it delivered, so the changes made
 * meanwhile come next, with no gap and no duplicate; when the server no
 * longer holds that history (history_gone), or the drop came before the
 * subscription's sync, an ALMANAC_EVENT_RESET says "forget what this
 * subscription showed you" and a fresh snapshot and sync follow.
 */
#ifndef ALMANAC_H
#define ALMANAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ALMANAC_CLIENT_VERSION "0.1.0"

enum almanac_err {
    ALMANAC_OK = 0,
    /* the client's side */
    ALMANAC_EINVAL,    /* a bad argument (an address that is not one, say) */
    ALMANAC_ENOMEM,    /* out of memory */
    ALMANAC_ECONNECT,  /* could not connect (name, refused, unreachable) */
    ALMANAC_ETLS,      /* TLS failed: the certificate, the handshake */
    ALMANAC_ECLOSED,   /* the connection ended; a request under way may or may not have been done */
    ALMANAC_ETIMEDOUT, /* nothing within the time given */
    ALMANAC_EPROTO,    /* the server said something this library does not understand */
    ALMANAC_ESTOPPED,  /* a callback returned non-zero: stopped there */
    /* the server's refusals (API.md "Errors"), by their wire names */
    ALMANAC_ESERVER,         /* a code not below; see almanac_server_error() */
    ALMANAC_EINVALIDKEY,     /* invalid_key */
    ALMANAC_EINVALIDPATTERN, /* invalid_pattern */
    ALMANAC_EINVALIDBODY,    /* invalid_body */
    ALMANAC_EBADREQUEST,     /* bad_request */
    ALMANAC_EUNAUTHORIZED,   /* unauthorized */
    ALMANAC_EFORBIDDEN,      /* forbidden */
    ALMANAC_EREADONLY,       /* read_only */
    ALMANAC_ENOTFOUND,       /* not_found */
    ALMANAC_EREVMISMATCH,    /* rev_mismatch */
    ALMANAC_EHISTORYGONE,    /* history_gone */
    ALMANAC_ETOOLARGE,       /* too_large */
    ALMANAC_ERATELIMITED,    /* rate_limited */
    ALMANAC_EUNAVAILABLE,    /* unavailable */
    ALMANAC_ESTORAGEFULL,    /* storage_full */
    ALMANAC_EINTERNAL,       /* internal */
    ALMANAC_EPROTOCOL,       /* protocol_unsupported */
    ALMANAC_ETOOSLOW,        /* too_slow */
    ALMANAC_ELOCKED,         /* locked */
};

/* A sentence for a code ("the server refused: not found"); never NULL. */
const char *almanac_strerror(int err);

struct almanac_options {
    const char *token;  /* a token or JWT, sent in hello; NULL: anonymous */
    bool tls;           /* TLS on every connection (tls:// addresses imply it) */
    const char *cafile; /* PEM file of the CAs to trust; NULL: the system's; implies tls */
    const char *http;   /* HOST:PORT of the HTTP API (almanac_http, tokens); NULL: 127.0.0.1:8480 */
    int timeout_ms;     /* the longest wait for a reply; 0: no limit */
    bool no_reconnect;  /* a dropped connection stays dropped: see almanac_resume() */
};

struct almanac;

/* Connects to `address` and says hello (protocol 1.0, with the token):
 * "HOST:PORT", "[V6]:PORT", "tcp://HOST:PORT", "tls://HOST:PORT",
 * "unix:PATH" or a PATH starting with '/' or '.'. `address` NULL makes a
 * handle without a session, for almanac_http() and the token calls. The
 * options are copied; `opts` may be NULL. `*out` is set whenever memory
 * allows, even on failure (read almanac_errmsg(), then almanac_close()). */
int almanac_connect(struct almanac **out, const char *address, const struct almanac_options *opts);
/* Closes the connection and frees the handle, its queued events and
 * subscriptions. NULL is fine. */
void almanac_close(struct almanac *a);

/* The last call's code, its message (never NULL; "" after success), and
 * the server's code as text ("not_found"), NULL when the server did not
 * refuse. */
int almanac_errcode(const struct almanac *a);
const char *almanac_errmsg(const struct almanac *a);
const char *almanac_server_error(const struct almanac *a);
/* The server's name for this session ("c17"), NULL without one. */
const char *almanac_client_id(const struct almanac *a);
/* The socket, for poll(): readable when almanac_next_event() may have
 * something (call it with timeout 0); also check almanac_pending(). -1
 * when not connected. */
int almanac_fd(const struct almanac *a);
/* Whether events (or bytes of them) are already buffered. */
bool almanac_pending(const struct almanac *a);

/* ---- entries ---- */

struct almanac_label {
    const char *name;
    const char *value;
};

/* An entry, a history record or an event's change. For a deletion only
 * key, rev, ts and deleted are set (value NULL, content_type NULL). */
struct almanac_entry {
    const char *key;
    int64_t rev;
    int64_t ts;      /* µs since the epoch, the server's clock at commit */
    int64_t expires; /* µs; 0: does not expire */
    const char *content_type;
    const void *value; /* the bytes (a JSON value: its text, without white space) */
    size_t value_len;  /* value[value_len] is a NUL, not counted, for text's sake */
    bool is_text;      /* the value is JSON or UTF-8 text (the envelope's "value" or
                          "text"), else any bytes ("base64") */
    const struct almanac_label *labels;
    size_t nlabels;
    const char *origin; /* "http", "ws", "tcp", "unix", "mqtt", "sys" */
    bool deleted;
    bool created;     /* a live event that made its key */
    bool transient;   /* a publish: nothing stored, rev is the store's at the time */
    const char *json; /* the API envelope, as HTTP and SSE write it ("type", not
                         "content_type"), the server's digits kept */
    size_t json_len;
};

/* Frees an entry that almanac_get() returned. NULL is fine. */
void almanac_entry_free(struct almanac_entry *e);

/* Called for each entry of a list, in order; non-zero stops the call,
 * which then returns ALMANAC_ESTOPPED. The entry is valid during the call. */
typedef int (*almanac_entry_fn)(void *arg, const struct almanac_entry *e);

/* ---- requests: each waits for its reply ---- */

/* The entry of `key`: *out a new entry (almanac_entry_free), or
 * ALMANAC_ENOTFOUND. */
int almanac_get(struct almanac *a, const char *key, struct almanac_entry **out);

#define ALMANAC_ANY_REV   0    /* if_rev: whatever the key's rev */
#define ALMANAC_IF_ABSENT (-1) /* if_rev: only when the key does not exist */

struct almanac_set_options {
    const char *content_type; /* NULL: sniffed (JSON, UTF-8 text, else bytes) */
    const struct almanac_label *labels;
    size_t nlabels;
    int64_t if_rev;  /* ALMANAC_ANY_REV, ALMANAC_IF_ABSENT, or the rev the key must have
                        (else ALMANAC_EREVMISMATCH) */
    const char *ttl; /* "10s", "5m", ...; NULL: does not expire */
};

/* Sets `key` to `len` bytes of `value` (any bytes); returns once the change
 * is committed. `opts` may be NULL; `rev` (may be NULL) gets its rev. */
int almanac_set(struct almanac *a, const char *key, const void *value, size_t len,
                const struct almanac_set_options *opts, int64_t *rev);
/* Deletes a key or every key a pattern matches; `deleted` (may be NULL)
 * gets how many (0 when the key was absent: the session protocol answers
 * ok there, where HTTP answers 404); `if_rev` as for set. */
int almanac_delete(struct almanac *a, const char *key_or_pattern, int64_t if_rev,
                   uint64_t *deleted);
/* A transient message: subscribers and MQTT see it, nothing is stored.
 * `content_type` NULL: sniffed. */
int almanac_publish(struct almanac *a, const char *key, const void *value, size_t len,
                    const char *content_type);
/* Every entry matching `pattern`, sorted by key, page after page;
 * `contains` (NULL: any) keeps the keys holding that text. */
int almanac_pget(struct almanac *a, const char *pattern, const char *contains, almanac_entry_fn fn,
                 void *arg);

struct almanac_child {
    const char *name;
    bool value;    /* the key itself exists */
    bool children; /* keys exist below it */
    int64_t keys;  /* how many below it, -1 when the server did not say */
};
typedef int (*almanac_child_fn)(void *arg, const struct almanac_child *c);
/* The children of `key` (NULL: of the root), sorted by name; `rev` (may
 * be NULL) gets the rev the answer is of. */
int almanac_ls(struct almanac *a, const char *key, almanac_child_fn fn, void *arg, int64_t *rev);

struct almanac_history_query {
    const char *start; /* µs or RFC 3339; NULL: from the oldest kept */
    const char *stop;  /* the range is [start, stop); NULL: up to now */
    uint64_t limit;    /* at most this many records; 0: all of them */
    bool desc;         /* newest first */
    const char *every; /* "10s": the last record of each key in each bucket */
};
/* The changes history keeps of a key or pattern, deletions included
 * (entry->deleted), page after page. `q` may be NULL. */
int almanac_history(struct almanac *a, const char *pattern, const struct almanac_history_query *q,
                    almanac_entry_fn fn, void *arg);

/* Presents another credential for this session (not NULL); it is also
 * used when the handle reconnects. */
int almanac_auth(struct almanac *a, const char *token);
int almanac_ping(struct almanac *a);

/* ---- subscriptions ---- */

enum almanac_event_type {
    ALMANAC_EVENT_PUT,    /* entry: a set (or a transient publish) */
    ALMANAC_EVENT_DELETE, /* entry: a deletion */
    ALMANAC_EVENT_SYNC,   /* the snapshot or replay is complete, at `rev` */
    ALMANAC_EVENT_RESET,  /* forget this subscription's entries: a fresh snapshot follows */
    ALMANAC_EVENT_END,    /* the subscription ended: `error`, `message` say why */
};

struct almanac_event {
    enum almanac_event_type type;
    unsigned sub;                      /* the subscription, as almanac_subscribe gave it */
    const struct almanac_entry *entry; /* PUT and DELETE */
    int64_t rev;                       /* the entry's, or the sync's */
    int error;                         /* END: an enum almanac_err */
    const char *message;               /* END: why */
};

/* Runs in almanac_dispatch() for each event of its subscription. */
typedef void (*almanac_event_fn)(void *arg, const struct almanac_event *ev);

struct almanac_subscribe_options {
    bool live_only;    /* no snapshot: the sync, then live changes */
    bool unique;       /* no event when a value did not change */
    int64_t since;     /* > 0: replay every change after this rev instead of the snapshot */
    const char *start; /* a time (µs or RFC 3339): replay the changes from then */
    const struct almanac_label *labels; /* only entries with every one of these */
    size_t nlabels;
    const struct almanac_label *exclude_labels; /* and none of these */
    size_t nexclude_labels;
    almanac_event_fn callback; /* NULL: read the events with almanac_next_event() */
    void *arg;
};

/* Subscribes to `pattern`; `*sub` gets its number, which stays the same
 * across reconnections. `opts` may be NULL. */
int almanac_subscribe(struct almanac *a, const char *pattern,
                      const struct almanac_subscribe_options *opts, unsigned *sub);
int almanac_unsubscribe(struct almanac *a, unsigned sub);
/* The next event of a subscription without a callback: waits up to
 * `timeout_ms` (-1: no limit, 0: what is there) and reconnects and resumes
 * meanwhile if the connection dropped. ALMANAC_ETIMEDOUT when none came.
 * `*ev` is valid until the next call on the handle. */
int almanac_next_event(struct almanac *a, int timeout_ms, const struct almanac_event **ev);
/* Waits up to `timeout_ms` for events and gives each to its subscription's
 * callback; events of subscriptions without one stay for
 * almanac_next_event(). `*count` (may be NULL) gets how many were given. */
int almanac_dispatch(struct almanac *a, int timeout_ms, unsigned *count);
/* Reconnects now and resubscribes with `since` (what the handle does by
 * itself unless options.no_reconnect). ALMANAC_OK also when connected. */
int almanac_resume(struct almanac *a);
/* The last rev a subscription delivered (its sync's, or a later event's):
 * what `since` resumes from; 0 before its sync. */
int64_t almanac_sub_rev(const struct almanac *a, unsigned sub);

/* ---- HTTP: the routes the session protocol does not carry ---- */

/* Reads a request body into `buf` (at most `cap`): bytes read, 0 at its
 * end, -1 on an error. */
typedef ssize_t (*almanac_read_fn)(void *arg, void *buf, size_t cap);
/* Takes `len` bytes of an answer; non-zero stops. */
typedef int (*almanac_write_fn)(void *arg, const void *buf, size_t len);

/* One request to the HTTP API at options.http (TLS and token as for the
 * session): `path` is sent as it is ("/api/v1/export"); a body, when `body`
 * is not NULL, is streamed from it (chunked). A 2xx answer's body goes to
 * `answer` (may be NULL); any other status is returned as an error, the
 * server's code and message in almanac_server_error()/almanac_errmsg().
 * `status` (may be NULL) gets the HTTP status. */
int almanac_http(struct almanac *a, const char *method, const char *path, almanac_read_fn body,
                 void *body_arg, almanac_write_fn answer, void *answer_arg, int *status);

struct almanac_token_spec {
    const char *name;
    const char *const *read; /* patterns it may read */
    size_t nread;
    const char *const *write; /* patterns it may write */
    size_t nwrite;
    bool admin;
    const char *expires; /* a duration ("90d"); NULL: never */
};
/* Creates an access token (needs admin); `*secret` gets its secret, shown
 * once: a new string, the caller's to wipe and free. */
int almanac_token_create(struct almanac *a, const struct almanac_token_spec *spec, char **secret);
/* Revokes a token at once (its sessions end with unauthorized). */
int almanac_token_revoke(struct almanac *a, const char *name);

#ifdef __cplusplus
}
#endif
#endif
