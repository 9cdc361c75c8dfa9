/*
 * http_int.h — what the files of the HTTP server share, private to them:
 * http.c (the server: MHD, connections, routing, answers), http_keys.c
 * (keys, publish, ls, batch), http_stream.c (SSE, WebSocket upgrades,
 * history, export, import), http_admin.c (health, ready, info, metrics)
 * and http_web.c (the dashboard's files).
 */
#ifndef ALMANAC_HTTP_INT_H
#define ALMANAC_HTTP_INT_H

#include "envelope.h"
#include "gateway.h"
#include "ops.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#define HTTP_PREFIX       "/api/v1/"
#define HTTP_LIST_DEFAULT 1000
#define HTTP_LIST_MAX     10000
#define HTTP_HISTORY_MAX  10000000 /* records of one history answer (streamed) */
#define HTTP_MAX_STATUS   600
/* The most declared body (Content-Length) a refused request is read for
 * before its answer (larger ones are answered at once and the connection
 * closed). A body of unknown length (chunked) is read to its end: MHD
 * takes no answer while a body comes. Either is read within
 * http_header_timeout (http__handle). */
#define HTTP_DROP_MAX ((uint64_t)8 << 20)

#define HTTP_WS_HOST_BUCKETS 256 /* the WebSocket counts by address (struct http) */

enum route {
    ROUTE_NONE = 0,
    ROUTE_KEYS,
    ROUTE_PUBLISH,
    ROUTE_LS,
    ROUTE_BATCH,
    ROUTE_INFO,
    ROUTE_HEALTH,
    ROUTE_READY,
    ROUTE_METRICS,
    ROUTE_WS,
    ROUTE_EVENTS,
    ROUTE_HISTORY,
    ROUTE_EXPORT,
    ROUTE_IMPORT,
    ROUTE_WEB,
    ROUTE_TOKENS,
    ROUTE_PROMETHEUS,
};

enum method {
    M_GET = 1,
    M_HEAD = 2,
    M_PUT = 4,
    M_POST = 8,
    M_DELETE = 16,
    M_OPTIONS = 32,
    M_OTHER = 64
};

struct sse;

/* A connection as the header timeout sees it (MHD's socket context). */
struct http__conn {
    _Atomic int fd;           /* -1 once it is a WebSocket's */
    _Atomic int64_t since_us; /* waiting for a request's headers (or a refused
                                 one's body) since; 0: not */
    struct http__conn *prev, *next;
    char address[64]; /* the client's "host:port" */
};

struct http {
    struct ops *ops;
    struct store *store;
    const struct config *cfg;
    struct loop *loop;
    pthread_mutex_t sse_lock; /* the open SSE streams, to end them at stop */
    struct sse *streams;
    pthread_mutex_t conn_lock; /* the connections, for the header timeout */
    struct http__conn *conns;
    /* WebSockets the loop carries on a descriptor of their own (MHD's
     * connection let go at the upgrade), counted by client address for
     * http_max_connections_per_ip (http_stream.c). */
    pthread_mutex_t ws_lock;
    struct http__ws_host *ws_hosts[HTTP_WS_HOST_BUCKETS];
    pthread_t timer;
    pthread_mutex_t timer_lock;
    pthread_cond_t timer_cond;
    bool timer_started, stopping;
    struct MHD_Daemon *daemon;
    char *tls_cert, *tls_key; /* PEM text, while the daemon runs (the key wiped at the end) */
    unsigned short port;
    int64_t started_us;
    _Atomic int64_t active; /* requests between their first call and completion */
    _Atomic uint64_t status_count[HTTP_MAX_STATUS];
};

struct req {
    struct http *h;
    struct MHD_Connection *conn;
    struct caller caller;
    enum route route;
    enum method method;
    char *path; /* the decoded {key} part, or NULL */
    size_t plen;
    char *body;
    size_t blen, bcap, body_max;
    bool too_large;
    struct store_blob *blob; /* a large PUT body, written to a blob file as it comes */
    /* a write under way: answered once `committed` is set */
    _Atomic bool committed;
    struct ops_write w;
    struct store_op *batch_ops; /* a batch's */
    json_t *batch;              /* owns the keys the batch ops point into */
    int err;                    /* a write refused before it was submitted */
    char why[512];
    struct import *import; /* an import's body, checked as it comes */
    /* An answer given before the body (a refusal) waits until the body is
     * read and dropped: closing a socket with unread bytes resets it, and
     * the client loses the answer (http__handle). */
    bool deferring;             /* http__queue keeps the answer in `early` */
    struct MHD_Response *early; /* the answer kept */
    unsigned early_status;
};

/* ---- http_answer.c: answers and the pieces of a request ---- */

/* Queues `resp` (destroyed) with the headers every answer has. */
enum MHD_Result http__queue(struct req *r, unsigned status, struct MHD_Response *resp);
/* Answers with the text of `b` (taken over) as `type`. */
enum MHD_Result http__text(struct req *r, unsigned status, struct buf *b, const char *type);
enum MHD_Result http__json(struct req *r, unsigned status, struct buf *b);
/* An error of the one table (store/error.c), with a sentence. */
enum MHD_Result http__error(struct req *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *http__arg(struct req *r, const char *name);
const char *http__header(struct req *r, const char *name);
/* A write: http__suspend, then ops_set, ops_delete or ops_batch with
 * http__done and `r`, then http__submitted with what that returned. */
void http__suspend(struct req *r);
void http__done(void *arg, struct store_txn *t);
enum MHD_Result http__submitted(struct req *r, int err);
/* The connection's tracking (MHD's socket context), or NULL. */
struct http__conn *http__conn_of(struct MHD_Connection *conn);
/* Marks the connection of `r` as the loop's (no header timeout). */
void http__conn_handed_over(struct req *r);

/* ---- the routes ---- */

enum MHD_Result http__keys(struct req *r);
enum MHD_Result http__publish(struct req *r);
enum MHD_Result http__ls(struct req *r);
enum MHD_Result http__batch(struct req *r);
/* The answer of a write, after its commit resumed the connection. */
enum MHD_Result http__answer_write(struct req *r);
enum MHD_Result http__events(struct req *r);
enum MHD_Result http__ws(struct req *r);
/* Forgets the WebSocket counts by address (http_stop: the loop is done). */
void http__ws_hosts_free(struct http *h);
enum MHD_Result http__history(struct req *r);
enum MHD_Result http__export(struct req *r);
enum MHD_Result http__import(struct req *r);
enum MHD_Result http__health(struct req *r);
enum MHD_Result http__ready(struct req *r);
enum MHD_Result http__info(struct req *r);
enum MHD_Result http__metrics(struct req *r);
enum MHD_Result http__prometheus(struct req *r);
enum MHD_Result http__tokens(struct req *r);
enum MHD_Result http__web(struct req *r);

/* ---- http_stream.c: the SSE streams, for the timer and the stop ---- */

/* Ends the streams whose credential no longer holds; with `beat`, a
 * comment line on every idle stream. */
void http__sse_tick(struct http *h, bool beat);
/* Ends every stream (their connections resumed, as MHD requires at stop). */
void http__sse_end_all(struct http *h);

#endif
