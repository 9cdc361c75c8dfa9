/*
 * gateway.h — the public interface of gateway/: configuration, the JSON
 * envelope of entries, and the HTTP server. main.c ties them together.
 */
#ifndef ALMANAC_GATEWAY_H
#define ALMANAC_GATEWAY_H

#include "bridge.h"
#include "log.h"
#include "store.h"

#include <jansson.h>

/* ---- config.c ---- */

struct config {
    char *http_listen; /* "host:port" or "off" */
    char *data_dir;
    enum store_durability durability;
    enum log_level log_level;
    struct store_limits limits;
    size_t max_body_bytes;      /* batch and import bodies */
    size_t max_db_bytes;        /* 0: no cap on almanac.db */
    unsigned http_threads;      /* 0: one per core */
    char *tcp_listen;           /* "host:port" or "off" */
    char *unix_socket;          /* a path, or NULL */
    size_t max_message_bytes;   /* one session message */
    size_t session_queue_bytes; /* a session's outbound queue */
    unsigned max_sessions;
    unsigned max_subscriptions; /* per session */
    unsigned sys_interval;      /* seconds between $SYS updates; 0: none */
    struct bridge_config bridge;
    char **history_keys; /* patterns; none: "#" */
    size_t nhistory_keys;
    int64_t history_retention_us;         /* 0: no history */
    size_t history_max_bytes;             /* 0: no cap */
    int64_t sse_heartbeat_us;             /* a comment line on idle SSE streams */
    int64_t http_header_timeout_us;       /* a request's headers must be in by then */
    unsigned http_max_connections;        /* 0: derived from the descriptor limit */
    unsigned http_max_connections_per_ip; /* 0: no limit */
    char **http_hosts;                    /* Host names served besides IP literals and localhost */
    size_t nhttp_hosts;
    char **cors_origins; /* browser origins allowed besides the server's own */
    size_t ncors_origins;
    /* While loading: which source (file, environment, flags) is being read,
     * and which one gave the values of a repeatable option so far; a later
     * source's replace an earlier one's. */
    int source, maps_source, history_keys_source, http_hosts_source, cors_origins_source;
};

/* Fills `cfg` from the defaults, then the file of `-c FILE` (if any), the
 * environment (ALMANAC_<NAME>) and the flags `--name value` of `argv`, in
 * that order, so a flag wins. Returns 0, or -1 with a sentence in `why` that
 * names the file and line, the variable or the flag. */
int config_load(struct config *cfg, int argc, char **argv, char *why, size_t why_len);
void config_free(struct config *cfg);
/* Parses "1024", "64KiB", "1MiB", "1GiB", "10MB"; -1 when malformed. */
int config_parse_size(const char *text, size_t *out);
/* Parses a duration into µs: a number with us, ms, s, m, h, d or w. */
int config_parse_duration(const char *text, int64_t *us);
/* Parses a time into µs since the epoch: µs, or RFC 3339. */
int config_parse_time(const char *text, int64_t *us);
/* Resolves the HOST:PORT (or [V6]:PORT) of option `option`: the address
 * in `*ai` (freeaddrinfo it) and the bare host in `host`. Returns 0, or -1
 * with a sentence in `why`. */
struct addrinfo;
int config_resolve(const char *option, const char *spec, struct addrinfo **ai, char *host,
                   size_t host_len, char *why, size_t why_len);

/* ---- envelope.c: entries as JSON text ---- */

/* A growable text buffer. After a failed allocation `oom` is set and further
 * appends do nothing, so a caller checks once at the end. */
struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};
void buf_add(struct buf *b, const void *data, size_t len);
/* Makes room for `more` bytes; false when out of memory. */
bool buf_reserve(struct buf *b, size_t more);
void buf_add_i64(struct buf *b, int64_t n);
void buf_adds(struct buf *b, const char *s);
void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `len` bytes of UTF-8 as a quoted JSON string. */
void buf_add_jstr(struct buf *b, const char *s, size_t len);
void buf_free(struct buf *b);

/* Appends the envelope of API.md for `key` and `e`. A JSON value is copied
 * as stored (minified), so its numbers keep every digit. */
void envelope_add(struct buf *b, const char *key, size_t klen, const struct store_entry *e);
/* The same with the content type named `type_field`: session messages have
 * a "type" of their own, so there it is "content_type", as in `set`. */
void envelope_add_as(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                     const char *type_field);
/* The fields of that envelope and its closing brace, for a message that
 * opens with fields of its own ({"type":"event","sub":1, ...). */
void envelope_add_fields(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                         const char *type_field);
/* Appends the deletion form. */
void envelope_add_deleted(struct buf *b, const char *key, size_t klen, int64_t rev, int64_t ts);
/* An entry from a JSON object carrying exactly one of `value`, `text`,
 * `base64`, and optionally `content_type` and `labels`; with `type_alias`
 * (envelopes, batch ops) `type` names the content type too. Returns
 * STORE_OK with a new entry in `*out`, or STORE_EBODY or STORE_ETOOLARGE
 * with a sentence in `why`. */
int envelope_entry(const json_t *obj, size_t max_value, bool type_alias, enum store_origin origin,
                   struct store_entry **out, char *why, size_t why_len);
/* Checks a labels object (string values, names 1..255 bytes) and writes it
 * as compact JSON with sorted names into `*out` (malloc'd; NULL when empty).
 * STORE_OK or STORE_EBODY with a sentence in `why`. */
int envelope_labels(const json_t *labels, char **out, char *why, size_t why_len);
/* Checks a content type: 1..255 bytes of visible ASCII and spaces. */
bool envelope_type_ok(const char *type);
/* Appends the end of an error object: "error":"<code>","message":"..."}.
 * The caller has written the opening brace and any fields of its own. */
void envelope_add_error(struct buf *b, int err, const char *message);
/* Why the transaction `t` failed, in a sentence naming the key, for HTTP and
 * sessions alike; with `index`, prefixed with the op's place (ops[2]: ). */
void envelope_failure(char *out, size_t len, const struct store_txn *t, bool index);
/* Compact JSON text for `v` with the fewest digits that give its reals back
 * exactly (jansson alone writes 0.1 as 0.10000000000000001). malloc'd. */
char *envelope_dump_json(const json_t *v);

/* The pieces of list answers, shared by HTTP and sessions. `envelope_list`
 * is the store_pget visitor writing envelopes (with `type_field`) and
 * keeping the last key as the next cursor; `envelope_child` the
 * store_ls visitor writing {"name","value","children"} objects. */
struct envelope_list {
    struct buf *b;
    const char *type_field;
    size_t n;
    struct buf last;
};
void envelope_list_visit(void *arg, const char *key, size_t klen, const struct store_entry *e);
/* Appends `],"next":<cursor or null>` after the entries and frees `last`. */
void envelope_list_end(struct envelope_list *l, bool more);
struct envelope_children {
    struct buf *b;
    size_t n;
};
void envelope_child(void *arg, const char *name, size_t nlen, bool value, bool children);

/* History: a query from a transport's arguments (HTTP's query string,
 * a session message's fields): start, stop, limit (at most `max_limit`),
 * order, after, every; the caller adds the label filters. 0, or -1 with a
 * sentence in `why`. */
typedef const char *(*envelope_arg_fn)(void *arg, const char *name);
int envelope_history_query(struct store_history_query *q, envelope_arg_fn get, void *arg,
                           size_t max_limit, char *why, size_t why_len);
/* One line of an import: an envelope as export writes it, as a change made
 * through `origin` (the line's own "origin" is not trusted). Returns
 * STORE_OK with `op` filled: its key points into `*owner` (a new reference,
 * NULL for a blank line, whose op->key is NULL), its entry a new reference;
 * or an error with a sentence in `why`. */
int envelope_import_line(const char *text, size_t len, const struct store_limits *lim,
                         enum store_origin origin, struct store_op *op, json_t **owner, char *why,
                         size_t why_len);
/* Appends a history record: its envelope, or the deletion form. */
void envelope_add_record(struct buf *b, const struct store_record *rec, const char *type_field);

/* ---- guard.c: what browsers may ask (Host names, origins) ---- */

/* Whether `host_header` (NULL: absent) names this server: an IP literal,
 * localhost or a *.localhost name, or one of http_host. */
bool guard_host_ok(const struct config *cfg, const char *host_header);
/* Whether `origin` is one of cors_origin (or cors_origin is *). */
bool guard_cors_allowed(const struct config *cfg, const char *origin);
/* Whether a page of `origin` may open a WebSocket: the server's own origin
 * (the Host it was reached by) or one of cors_origin. */
bool guard_origin_ok(const struct config *cfg, const char *origin, const char *host_header);
/* Whether a state-changing request with these headers (each NULL when
 * absent) may go on: no Origin and no cross-site Sec-Fetch-Site, or an
 * Origin that guard_origin_ok allows. */
bool guard_write_ok(const struct config *cfg, const char *origin, const char *fetch_site,
                    const char *host_header);

/* ---- import.c: an import of any size, checked whole, then applied ---- */

struct import;
/* A new import through `origin`, spooling to `data_dir`. Returns STORE_OK
 * with `*out`, or STORE_EINTERNAL. */
int import_new(struct store *store, const char *data_dir, enum store_origin origin,
               struct import **out);
/* Checks the next piece of the body (any split); stops at the first bad line. */
void import_feed(struct import *im, const char *data, size_t len);
/* Applies every line if each was good, in bounded commits. Returns
 * STORE_OK with the count in `*imported`, or an error with a sentence. */
int import_finish(struct import *im, size_t *imported, char *why, size_t why_len);
void import_free(struct import *im);

/* ---- cli.c ---- */

/* The client commands (argv[0] is the program): get, set, del, ls, sub, pub,
 * info. Returns the exit code. */
int cli_main(int argc, char **argv);

struct sys; /* sys.c */

/* ---- loop.c: the event loop that owns every session connection ---- */

enum conn_transport { CONN_TCP, CONN_UNIX, CONN_WS };

struct loop;
struct conn;

/* Starts the loop thread with the TCP and Unix listeners of `cfg`. Returns
 * 0, or -1 with a sentence in `why`. */
int loop_start(struct store *store, struct sys *sys, const struct config *cfg, struct loop **out,
               char *why, size_t why_len);
/* Stops accepting; the sessions go on until loop_stop. */
void loop_quiesce(struct loop *l);
/* Closes every session (a WebSocket's through MHD, so before http_stop)
 * and stops the thread; WebSockets handed over later are refused. */
void loop_stop(struct loop *l);
/* Frees the loop, after loop_stop and http_stop. */
void loop_free(struct loop *l);
/* A new session number, for client ids. */
uint64_t loop_next_id(struct loop *l);
unsigned loop_sessions(const struct loop *l);
/* Hands over an upgraded WebSocket connection (fd, and bytes already read). */
int loop_adopt_ws(struct loop *l, int fd, const char *extra, size_t extra_len, const char *address,
                  void (*closed)(void *), void *closed_arg);

/* Queues one message (without framing) to `c`, from any thread. A queue over
 * its bound closes the session with too_slow. */
void conn_send(struct conn *c, const char *msg, size_t len);
/* The same, taking over the text of `b` (left empty) instead of copying. */
void conn_send_buf(struct conn *c, struct buf *b);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/* ---- session.c: the session protocol, the same on every transport ---- */

struct session;
struct session *session_new(struct loop *l, struct store *store, struct sys *sys,
                            const struct config *cfg, struct conn *c, enum conn_transport t,
                            const char *address);
/* Handles one message from the client. Returns 0, or -1 when the session
 * must close (after its last message is queued). */
int session_input(struct session *s, const char *msg, size_t len);
/* Unsubscribes everything; called once, when the connection closes. */
void session_free(struct session *s);

/* ---- sys.c: the server's own keys, $SYS/... ---- */

struct sys;
/* Writes $SYS/version, clears sessions a crash left, starts $SYS/uptime. */
struct sys *sys_start(struct store *store, struct bridge *bridge, unsigned interval);
void sys_stop(struct sys *sys);
/* $SYS/uptime, $SYS/store/keys and $SYS/bridge/outbox every `interval`
 * seconds, $SYS/bridge/state when it changes; the loop calls it about once
 * a second. */
void sys_tick(struct sys *sys);
/* $SYS/sessions/<client_id>/{transport,address,since} and the count. */
void sys_session_open(struct sys *sys, const char *client_id, const char *transport,
                      const char *address, unsigned count);
void sys_session_close(struct sys *sys, const char *client_id, unsigned count);

/* ---- http.c ---- */

struct http;
/* Starts serving `store` on cfg->http_listen. Returns 0, or -1 with a
 * sentence in `why`. */
int http_start(struct store *store, struct bridge *bridge, const struct config *cfg,
               struct loop *loop, struct http **out, char *why, size_t why_len);
/* The port it listens on (the one the system chose for port 0). */
unsigned short http_port(const struct http *h);
/* Stops accepting connections; requests under way go on. */
void http_quiesce(struct http *h);
/* Waits (a bounded time) for requests under way to be answered, then stops. */
void http_stop(struct http *h);

#endif
