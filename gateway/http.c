/*
 * http.c — the HTTP API of API.md on libmicrohttpd.
 *
 * MHD runs a pool of threads, each with its own epoll loop. A request's
 * handler is called once with the headers, once per piece of body, and once
 * more at the end; reads are answered in that last call. A write is handed
 * to the store and its connection suspended; the committer's `done` resumes
 * it, and MHD calls the handler again to send the answer. So a writer waits
 * for its commit without holding a thread, and one commit serves every write
 * that arrived while the previous one ran.
 * Invariants:
 *   1. a connection is suspended before store_submit can call `done`, which
 *      resumes it (MHD forbids resuming a connection that is not suspended);
 *   2. a write is answered only once `committed` is set, by http__done or
 *      by a submit that failed at once;
 *   3. nothing is changed in the store for a request that gets a 4xx.
 */
#include "gateway.h"
#include "version.h"
#include "web.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define HTTP_PREFIX       "/api/v1/"
#define HTTP_LIST_DEFAULT 1000
#define HTTP_LIST_MAX     10000
#define HTTP_HISTORY_MAX  10000000 /* records of one history answer (streamed) */
#define HTTP_MAX_STATUS   600

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
    _Atomic int64_t since_us; /* waiting for a request's headers since; 0: not */
    struct http__conn *prev, *next;
};

static struct http__conn *http__conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

struct http {
    struct store *store;
    struct bridge *bridge; /* NULL: off */
    const struct config *cfg;
    struct loop *loop;
    pthread_mutex_t sse_lock; /* the open SSE streams, to end them at stop */
    struct sse *streams;
    pthread_mutex_t conn_lock; /* the connections, for the header timeout */
    struct http__conn *conns;
    pthread_t timer;
    pthread_mutex_t timer_lock;
    pthread_cond_t timer_cond;
    bool timer_started, stopping;
    struct MHD_Daemon *daemon;
    unsigned short port;
    int64_t started_us;
    _Atomic int64_t active; /* requests between their first call and completion */
    _Atomic uint64_t status_count[HTTP_MAX_STATUS];
};

struct req {
    struct http *h;
    struct MHD_Connection *conn;
    enum route route;
    enum method method;
    char *path; /* the decoded {key} part, or NULL */
    size_t plen;
    char *body;
    size_t blen, bcap, body_max;
    bool too_large;
    _Atomic bool committed; /* a write's `done` ran: its answer is ready */
    /* a write under way */
    struct store_txn txn;
    struct store_op one;
    struct store_op *ops;  /* batch ops, or &one */
    json_t *batch;         /* owns the keys the batch ops point into */
    struct import *import; /* an import's body, checked as it comes */
};

static int64_t http__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- answers ---- */

static const char *http__header(struct req *r, const char *name);

static enum MHD_Result http__queue(struct req *r, unsigned status, struct MHD_Response *resp)
{
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Server", "almanac/" ALMANAC_VERSION);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    const char *origin = http__header(r, "Origin");
    if (guard_cors_allowed(r->h->cfg, origin)) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", "*");
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (status < HTTP_MAX_STATUS)
        atomic_fetch_add_explicit(&r->h->status_count[status], 1, memory_order_relaxed);
    enum MHD_Result rc = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* Answers with the text of `b` (taken over) as `type`. */
static enum MHD_Result http__text(struct req *r, unsigned status, struct buf *b, const char *type)
{
    if (b->oom) {
        buf_free(b);
        return MHD_NO;
    }
    buf_add(b, "", 0); /* never NULL, even when empty */
    struct MHD_Response *resp =
        b->oom ? NULL : MHD_create_response_from_buffer_with_free_callback(b->len, b->p, free);
    if (resp == NULL) {
        buf_free(b);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    return http__queue(r, status, resp);
}

static enum MHD_Result http__json(struct req *r, unsigned status, struct buf *b)
{
    buf_add(b, "\n", 1);
    return http__text(r, status, b, "application/json");
}

static enum MHD_Result http__error(struct req *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result http__error(struct req *r, int err, const char *fmt, ...)
{
    char msg[1024];
    struct buf b = {0};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_add(&b, "{", 1);
    envelope_add_error(&b, err, msg);
    return http__json(r, store_err_status(err), &b);
}

static enum MHD_Result http__not_allowed(struct req *r, const char *allow)
{
    struct buf b = {0};
    buf_adds(&b, "{\"error\":\"method_not_allowed\",\"message\":\"this path allows ");
    buf_adds(&b, allow);
    buf_adds(&b, "\"}\n");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(b.len, b.p, free);
    if (resp == NULL) {
        buf_free(&b);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return http__queue(r, 405, resp);
}

/* ---- requests: routing and the pieces of a request ---- */

static enum method http__method(const char *m)
{
    static const struct {
        const char *name;
        enum method m;
    } methods[] = {{"GET", M_GET},   {"HEAD", M_HEAD},     {"PUT", M_PUT},
                   {"POST", M_POST}, {"DELETE", M_DELETE}, {"OPTIONS", M_OPTIONS}};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(m, methods[i].name) == 0)
            return methods[i].m;
    return M_OTHER;
}

static const struct {
    enum route route;
    const char *path; /* exact, or a prefix when it ends in '/' (but "/") */
    unsigned methods;
    const char *allow;
} http__routes[] = {
    {ROUTE_KEYS, HTTP_PREFIX "keys/", M_GET | M_HEAD | M_PUT | M_DELETE, "GET, HEAD, PUT, DELETE"},
    {ROUTE_PUBLISH, HTTP_PREFIX "publish/", M_POST, "POST"},
    {ROUTE_LS, HTTP_PREFIX "ls/", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_LS, HTTP_PREFIX "ls", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_BATCH, HTTP_PREFIX "batch", M_POST, "POST"},
    {ROUTE_INFO, HTTP_PREFIX "info", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_WS, HTTP_PREFIX "ws", M_GET, "GET"},
    {ROUTE_EVENTS, HTTP_PREFIX "events/", M_GET, "GET"},
    {ROUTE_HISTORY, HTTP_PREFIX "history/", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_EXPORT, HTTP_PREFIX "export", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_IMPORT, HTTP_PREFIX "import", M_POST, "POST"},
    {ROUTE_HEALTH, "/health", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_READY, "/ready", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_METRICS, "/metrics", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_WEB, "/web/", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_WEB, "/", M_GET | M_HEAD, "GET, HEAD"},
};

/* Finds the route of `url`; sets r->path for the routes that carry a key.
 * Returns the index in http__routes, or -1. */
static int http__route(struct req *r, const char *url)
{
    for (size_t i = 0; i < sizeof http__routes / sizeof http__routes[0]; i++) {
        const char *p = http__routes[i].path;
        size_t len = strlen(p);
        bool prefix = len > 1 && p[len - 1] == '/'; /* "/" itself is exact */
        if (prefix ? strncmp(url, p, len) != 0 : strcmp(url, p) != 0)
            continue;
        r->route = http__routes[i].route;
        if (prefix) {
            r->plen = strlen(url + len);
            if ((r->path = strdup(url + len)) == NULL)
                return -1;
        }
        return (int)i;
    }
    return -1;
}

static const char *http__arg(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

static const char *http__header(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* Parses `"123"` (an ETag of ours) into *rev; -1 when it is not one. */
static int http__etag_rev(const char *s, int64_t *rev)
{
    char *end;
    if (strncmp(s, "W/", 2) == 0)
        s += 2;
    if (s[0] != '"' || !isdigit((unsigned char)s[1]))
        return -1;
    long long n = strtoll(s + 1, &end, 10);
    if (end[0] != '"' || end[1] != '\0' || n <= 0)
        return -1;
    *rev = n;
    return 0;
}

/* The precondition headers of a write: If-Match "<rev>" or *, If-None-Match *.
 * Returns 0, or -1 after answering 400. */
static int http__precondition(struct req *r, int64_t *if_rev, enum MHD_Result *answer)
{
    const char *match = http__header(r, MHD_HTTP_HEADER_IF_MATCH);
    const char *none = http__header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);

    *if_rev = STORE_ANY_REV;
    if (match != NULL && none != NULL) {
        *answer = http__error(r, STORE_EBADREQ, "give If-Match or If-None-Match, not both");
        return -1;
    }
    if (match != NULL) {
        if (strcmp(match, "*") == 0)
            *if_rev = STORE_EXISTS_REV;
        else if (http__etag_rev(match, if_rev) != 0) {
            *answer = http__error(r, STORE_EBADREQ,
                                  "If-Match must be * or a rev in quotes, as ETag gives it");
            return -1;
        }
    } else if (none != NULL) {
        if (strcmp(none, "*") != 0 || r->method == M_DELETE) {
            *answer = http__error(r, STORE_EBADREQ, "a write takes only If-None-Match: *");
            return -1;
        }
        *if_rev = 0;
    }
    return 0;
}

struct http__labels {
    json_t *obj;
    const char *bad; /* a header whose value is not UTF-8 */
};

static enum MHD_Result http__label_header(void *cls, enum MHD_ValueKind kind, const char *name,
                                          const char *value)
{
    static const char prefix[] = "X-Almanac-Label-";
    struct http__labels *l = cls;
    (void)kind;
    if (strncasecmp(name, prefix, sizeof prefix - 1) != 0)
        return MHD_YES;
    char lname[256];
    size_t n = strlen(name + sizeof prefix - 1);
    if (n == 0 || n >= sizeof lname || !store_utf8_valid(value, strlen(value))) {
        l->bad = name;
        return MHD_NO;
    }
    for (size_t i = 0; i <= n; i++)
        lname[i] = (char)tolower((unsigned char)name[sizeof prefix - 1 + i]);
    json_object_set_new(l->obj, lname, json_string(value));
    return MHD_YES;
}

/* The entry a PUT or publish carries: the body, its Content-Type (or a
 * sniffed one) and its X-Almanac-Label-* headers. Returns 0, or -1 after
 * answering. */
static int http__body_entry(struct req *r, struct store_entry **out, enum MHD_Result *answer)
{
    const char *type = http__header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    struct http__labels l = {.obj = json_object()};
    char *labels = NULL, why[256];
    int err;

    /* curl -d sends a form type for any data: it says nothing of the value. */
    if (type != NULL && strncasecmp(type, "application/x-www-form-urlencoded", 33) == 0)
        type = NULL;
    if (type != NULL && !envelope_type_ok(type)) {
        *answer = http__error(r, STORE_EBADREQ,
                              "Content-Type must be 1 to 255 printable ASCII characters");
        goto fail;
    }
    if (l.obj == NULL)
        goto oom;
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, http__label_header, &l);
    if (l.bad != NULL) {
        *answer = http__error(r, STORE_EBADREQ,
                              "header %s: a label needs a name of 1 to 255 bytes and a UTF-8 "
                              "value",
                              l.bad);
        goto fail;
    }
    if ((err = envelope_labels(l.obj, &labels, why, sizeof why)) != STORE_OK) {
        *answer = http__error(r, STORE_EBADREQ, "%s", why);
        goto fail;
    }
    err = store_entry_new(r->body ? r->body : "", r->blen, type, labels, STORE_ORIGIN_HTTP, out);
    if (err == STORE_EBODY) {
        *answer = http__error(r, STORE_EBODY, "the body is not valid JSON, as Content-Type %s says",
                              type);
        goto fail;
    }
    if (err != STORE_OK)
        goto oom;
    json_decref(l.obj);
    free(labels);
    return 0;
oom:
    *answer = http__error(r, STORE_EINTERNAL, "out of memory");
fail:
    json_decref(l.obj);
    free(labels);
    return -1;
}

/* ---- writes: submit, suspend, answer after the commit ---- */

static void http__done(void *arg, struct store_txn *t)
{
    struct req *r = arg;
    (void)t;
    atomic_store(&r->committed, true);
    MHD_resume_connection(r->conn);
}

static enum MHD_Result http__submit(struct req *r, struct store_op *ops, size_t n)
{
    r->ops = ops;
    r->txn.ops = ops;
    r->txn.n = n;
    MHD_suspend_connection(r->conn); /* invariant 1 */
    if (store_submit(r->h->store, &r->txn, http__done, r) != STORE_OK) {
        atomic_store(&r->committed, true);
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

static enum MHD_Result http__answer_failure(struct req *r)
{
    char msg[512];
    envelope_failure(msg, sizeof msg, &r->txn, r->route == ROUTE_BATCH);
    return http__error(r, r->txn.err, "%s", msg);
}

static void http__add_op_result(struct buf *b, const struct store_op *op)
{
    switch (op->kind) {
    case STORE_OP_SET:
        buf_addf(b, "{\"key\":");
        buf_add_jstr(b, op->key, op->klen);
        buf_addf(b, ",\"rev\":%lld,\"ts\":%lld,\"created\":%s}", (long long)op->rev,
                 (long long)op->ts, op->created ? "true" : "false");
        break;
    case STORE_OP_DELETE:
        buf_addf(b, "{\"deleted\":%zu", op->deleted);
        if (!op->pattern && op->deleted)
            buf_addf(b, ",\"rev\":%lld", (long long)op->rev);
        buf_adds(b, "}");
        break;
    case STORE_OP_GET:
        if (op->got)
            envelope_add(b, op->key, op->klen, op->got);
        else
            buf_adds(b, "{\"error\":\"not_found\"}");
        break;
    }
}

static enum MHD_Result http__answer_write(struct req *r)
{
    struct buf b = {0};
    const struct store_op *op = &r->ops[0];
    unsigned status = 200;

    if (r->txn.err != STORE_OK)
        return http__answer_failure(r);
    if (r->route == ROUTE_BATCH) {
        buf_adds(&b, "{\"results\":[");
        for (size_t i = 0; i < r->txn.n; i++) {
            if (i)
                buf_adds(&b, ",");
            http__add_op_result(&b, &r->ops[i]);
        }
        buf_adds(&b, "]}");
        return http__json(r, 200, &b);
    }
    if (op->kind == STORE_OP_SET) {
        status = op->created ? 201 : 200;
        buf_adds(&b, "{\"key\":");
        buf_add_jstr(&b, op->key, op->klen);
        buf_addf(&b, ",\"rev\":%lld,\"ts\":%lld}", (long long)op->rev, (long long)op->ts);
    } else
        http__add_op_result(&b, op);
    return http__json(r, status, &b);
}

/* ---- the routes ---- */

static int http__check_key(struct req *r, enum MHD_Result *answer)
{
    char why[256];
    if (store_key_check(r->path, r->plen, store_limits(r->h->store)->max_key_bytes, why,
                        sizeof why) == STORE_OK)
        return 0;
    *answer = http__error(r, STORE_EKEY, "%s", why);
    return -1;
}

/* Checks r->path as a pattern; `*wild` tells whether it is one. */
static int http__check_pattern(struct req *r, bool *wild, enum MHD_Result *answer)
{
    char why[256];
    int err = store_pattern_check(r->path, r->plen, store_limits(r->h->store)->max_key_bytes, wild,
                                  why, sizeof why);
    if (err == STORE_OK)
        return 0;
    /* Without '+' or '#' it was meant as a key: say so. */
    bool meant_key = memchr(r->path, '+', r->plen) == NULL && memchr(r->path, '#', r->plen) == NULL;
    if (meant_key)
        store_key_check(r->path, r->plen, SIZE_MAX, why, sizeof why);
    *answer = http__error(r, meant_key ? STORE_EKEY : STORE_EPATTERN, "%s", why);
    return -1;
}

/* Whether a label can travel as an X-Almanac-Label-* header: the name an
 * HTTP token, the value free of control characters. Every label is in the
 * envelope either way. */
static bool http__label_header_ok(const char *name, const char *value)
{
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p))
            return false;
    for (const char *p = value; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    return name[0] != '\0';
}

static void http__unref_entry(void *cls)
{
    store_entry_unref(cls);
}

static enum MHD_Result http__get_key(struct req *r)
{
    struct store_entry *e;
    char num[32];

    if (store_get(r->h->store, r->path, r->plen, &e) != STORE_OK)
        return http__error(r, STORE_ENOTFOUND, "key %s does not exist", r->path);
    const char *env = http__arg(r, "envelope");
    bool envelope = env != NULL && strcmp(env, "0") != 0 && strcmp(env, "false") != 0;
    int64_t rev = store_entry_rev(e);
    char etag[32];
    snprintf(etag, sizeof etag, "\"%lld\"", (long long)rev);

    const char *inm = http__header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    bool not_modified = inm != NULL && (strcmp(inm, "*") == 0 || strstr(inm, etag) != NULL);
    struct MHD_Response *resp;
    if (not_modified) {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        store_entry_unref(e);
        e = NULL;
    } else if (envelope) {
        struct buf b = {0};
        envelope_add(&b, r->path, r->plen, e);
        buf_add(&b, "\n", 1);
        resp = b.oom ? NULL : MHD_create_response_from_buffer_with_free_callback(b.len, b.p, free);
        if (resp == NULL)
            buf_free(&b);
        else
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    } else {
        size_t len;
        const void *value = store_entry_value(e, &len);
        resp = MHD_create_response_from_buffer_with_free_callback_cls(len, (void *)value,
                                                                      http__unref_entry, e);
        if (resp != NULL) {
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, store_entry_type(e));
            /* A stored page or SVG is a client's bytes: shown, never run
             * with this origin's rights. */
            MHD_add_response_header(resp, "Content-Security-Policy",
                                    "sandbox; default-src 'none'; frame-ancestors 'none'");
            const char *labels = store_entry_labels(e);
            json_t *obj = labels ? json_loads(labels, 0, NULL) : NULL;
            const char *name;
            json_t *v;
            json_object_foreach(obj, name, v)
            {
                char header[300];
                if (!http__label_header_ok(name, json_string_value(v)))
                    continue;
                snprintf(header, sizeof header, "X-Almanac-Label-%s", name);
                MHD_add_response_header(resp, header, json_string_value(v));
            }
            json_decref(obj);
            snprintf(num, sizeof num, "%lld", (long long)store_entry_ts(e));
            MHD_add_response_header(resp, "X-Almanac-Ts", num);
            MHD_add_response_header(resp, "X-Almanac-Origin",
                                    store_origin_name(store_entry_origin(e)));
            e = NULL; /* the response holds it now */
        }
    }
    store_entry_unref(e);
    if (resp == NULL)
        return MHD_NO;
    snprintf(num, sizeof num, "%lld", (long long)rev);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(resp, "X-Almanac-Rev", num);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return http__queue(r, not_modified ? 304 : 200, resp);
}

static int http__limit(struct req *r, size_t *limit, enum MHD_Result *answer)
{
    const char *s = http__arg(r, "limit");
    char *end;
    *limit = HTTP_LIST_DEFAULT;
    if (s == NULL)
        return 0;
    long n = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || n < 1 || n > HTTP_LIST_MAX) {
        *answer =
            http__error(r, STORE_EBADREQ, "limit must be a number from 1 to %d", HTTP_LIST_MAX);
        return -1;
    }
    *limit = (size_t)n;
    return 0;
}

static enum MHD_Result http__get_pattern(struct req *r)
{
    struct buf b = {0};
    enum MHD_Result answer;
    size_t limit;
    bool more;
    const char *after = http__arg(r, "after");

    if (http__limit(r, &limit, &answer) != 0)
        return answer;
    buf_adds(&b, "{\"entries\":[");
    struct envelope_list l = {.b = &b, .type_field = "type"};
    store_pget(r->h->store, r->path, r->plen, after, after ? strlen(after) : 0, limit,
               envelope_list_visit, &l, &more);
    envelope_list_end(&l, more);
    buf_adds(&b, "}");
    return http__json(r, 200, &b);
}

static enum MHD_Result http__keys(struct req *r)
{
    enum MHD_Result answer;
    bool wild;

    if (r->method == M_GET || r->method == M_HEAD) {
        if (http__check_pattern(r, &wild, &answer) != 0)
            return answer;
        return wild ? http__get_pattern(r) : http__get_key(r);
    }
    if (r->method == M_PUT) {
        struct store_entry *e;
        int64_t if_rev;
        if (r->too_large)
            return http__error(r, STORE_ETOOLARGE,
                               "the value is more than max_value_bytes (%zu bytes)", r->body_max);
        if (http__check_key(r, &answer) != 0 || http__precondition(r, &if_rev, &answer) != 0 ||
            http__body_entry(r, &e, &answer) != 0)
            return answer;
        r->one = (struct store_op){
            .kind = STORE_OP_SET, .key = r->path, .klen = r->plen, .entry = e, .if_rev = if_rev};
        return http__submit(r, &r->one, 1);
    }
    /* DELETE */
    int64_t if_rev;
    if (http__check_pattern(r, &wild, &answer) != 0 || http__precondition(r, &if_rev, &answer) != 0)
        return answer;
    if (wild && if_rev != STORE_ANY_REV)
        return http__error(r, STORE_EBADREQ, "If-Match applies to a key, not a pattern");
    r->one = (struct store_op){.kind = STORE_OP_DELETE,
                               .key = r->path,
                               .klen = r->plen,
                               .pattern = wild,
                               .must_exist = !wild,
                               .if_rev = if_rev};
    return http__submit(r, &r->one, 1);
}

static enum MHD_Result http__publish(struct req *r)
{
    enum MHD_Result answer;
    struct store_entry *e;

    if (r->too_large)
        return http__error(r, STORE_ETOOLARGE, "the value is more than max_value_bytes (%zu bytes)",
                           r->body_max);
    if (http__check_key(r, &answer) != 0 || http__body_entry(r, &e, &answer) != 0)
        return answer;
    int err = store_publish(r->h->store, r->path, r->plen, e);
    if (err != STORE_OK)
        return http__error(r, err, "%s", store_err_text(err));
    struct buf b = {0};
    buf_adds(&b, "{\"key\":");
    buf_add_jstr(&b, r->path, r->plen);
    buf_adds(&b, ",\"published\":true}");
    return http__json(r, 202, &b);
}

static enum MHD_Result http__ls(struct req *r)
{
    enum MHD_Result answer;
    bool root = r->path == NULL || r->plen == 0;
    if (!root && http__check_key(r, &answer) != 0)
        return answer;
    struct buf b = {0};
    struct envelope_children l = {.b = &b};
    buf_adds(&b, "{\"children\":[");
    int err = store_ls(r->h->store, root, r->path, r->plen, envelope_child, &l);
    if (err != STORE_OK) {
        buf_free(&b);
        return http__error(r, err, "key %s does not exist", r->path);
    }
    buf_adds(&b, "]}");
    return http__json(r, 200, &b);
}

/* Builds one batch op from its JSON; returns 0 or -1 after answering. */
static int http__batch_op(struct req *r, size_t i, json_t *jop, struct store_op *op,
                          enum MHD_Result *answer)
{
    const struct store_limits *lim = store_limits(r->h->store);
    const char *kind = json_string_value(json_object_get(jop, "op"));
    json_t *jkey = json_object_get(jop, "key"), *jrev = json_object_get(jop, "if_rev");
    char why[256];
    bool wild = false;

    memset(op, 0, sizeof *op);
    op->if_rev = STORE_ANY_REV;
    if (!json_is_object(jop) || kind == NULL) {
        *answer = http__error(r, STORE_EBODY,
                              "ops[%zu]: an op is an object with \"op\" set to "
                              "set, delete or get",
                              i);
        return -1;
    }
    if (!json_is_string(jkey)) {
        *answer = http__error(r, STORE_EBODY, "ops[%zu]: \"key\" must be a string", i);
        return -1;
    }
    op->key = json_string_value(jkey);
    op->klen = json_string_length(jkey);
    if (jrev != NULL) {
        if (!json_is_integer(jrev) || json_integer_value(jrev) < 0) {
            *answer = http__error(r, STORE_EBODY, "ops[%zu]: if_rev must be a rev, or 0", i);
            return -1;
        }
        op->if_rev = json_integer_value(jrev);
    }
    int err;
    if (strcmp(kind, "delete") == 0) {
        op->kind = STORE_OP_DELETE;
        err = store_pattern_check(op->key, op->klen, lim->max_key_bytes, &wild, why, sizeof why);
        op->pattern = wild;
        if (err == STORE_OK && wild && jrev != NULL) {
            *answer = http__error(r, STORE_EBODY,
                                  "ops[%zu]: if_rev applies to a key, not a "
                                  "pattern",
                                  i);
            return -1;
        }
    } else if (strcmp(kind, "set") == 0 || strcmp(kind, "get") == 0) {
        op->kind = kind[0] == 's' ? STORE_OP_SET : STORE_OP_GET;
        err = store_key_check(op->key, op->klen, lim->max_key_bytes, why, sizeof why);
    } else {
        *answer = http__error(r, STORE_EBODY, "ops[%zu]: unknown op '%s': use set, delete or get",
                              i, kind);
        return -1;
    }
    if (err != STORE_OK) {
        *answer = http__error(r, err, "ops[%zu]: %s", i, why);
        return -1;
    }
    if (op->kind == STORE_OP_SET) {
        err = envelope_entry(jop, lim->max_value_bytes, true, STORE_ORIGIN_HTTP, &op->entry, why,
                             sizeof why);
        if (err != STORE_OK) {
            *answer = http__error(r, err, "ops[%zu]: %s", i, why);
            return -1;
        }
    }
    return 0;
}

static enum MHD_Result http__batch(struct req *r)
{
    json_error_t jerr;
    enum MHD_Result answer;

    if (r->too_large)
        return http__error(r, STORE_ETOOLARGE, "the body is more than max_body_bytes (%zu bytes)",
                           r->body_max);
    r->batch = json_loadb(r->body ? r->body : "", r->blen, 0, &jerr);
    if (r->batch == NULL)
        return http__error(r, STORE_EBODY, "the body is not valid JSON: %s (line %d, column %d)",
                           jerr.text, jerr.line, jerr.column);
    json_t *ops = json_object_get(r->batch, "ops");
    size_t n = json_array_size(ops);
    if (!json_is_array(ops) || n == 0)
        return http__error(r, STORE_EBODY, "the body must be {\"ops\":[...]} with at least one op");
    struct store_op *v = calloc(n, sizeof *v);
    if (v == NULL)
        return http__error(r, STORE_EINTERNAL, "out of memory");
    r->ops = v;
    for (size_t i = 0; i < n; i++) {
        if (http__batch_op(r, i, json_array_get(ops, i), &v[i], &answer) != 0) {
            for (size_t k = 0; k <= i; k++)
                store_entry_unref(v[k].entry);
            return answer;
        }
    }
    return http__submit(r, v, n);
}

/* The bridge's object of /api/v1/info. */
static void http__bridge_info(struct buf *b, struct bridge *bridge, uint64_t outbox)
{
    struct bridge_stats bs;
    bridge_stats(bridge, &bs);
    buf_addf(b, "{\"state\":\"%s\"", bs.state);
    if (bridge != NULL) {
        buf_adds(b, ",\"url\":");
        buf_add_jstr(b, bs.url, strlen(bs.url));
        buf_adds(b, ",\"client_id\":");
        buf_add_jstr(b, bs.client_id, strlen(bs.client_id));
        buf_adds(b, ",\"last_error\":");
        if (bs.last_error[0])
            buf_add_jstr(b, bs.last_error, strlen(bs.last_error));
        else
            buf_adds(b, "null");
        buf_addf(b,
                 ",\"connected_since\":%lld,\"messages_in\":%llu,\"messages_out\":%llu,"
                 "\"errors_in\":%llu,\"errors_out\":%llu,\"reconnects\":%llu",
                 (long long)bs.connected_since_us, (unsigned long long)bs.messages_in,
                 (unsigned long long)bs.messages_out, (unsigned long long)bs.errors_in,
                 (unsigned long long)bs.errors_out, (unsigned long long)bs.reconnects);
    }
    buf_addf(b, ",\"outbox\":%llu}", (unsigned long long)outbox);
}

static enum MHD_Result http__info(struct req *r)
{
    struct store_stats st;
    struct buf b = {0};
    store_stats(r->h->store, &st);
    buf_addf(&b,
             "{\"version\":\"%s\",\"uptime_s\":%lld,\"keys\":%llu,\"rev\":%lld,"
             "\"schema_version\":%d,\"protocols\":[\"1.0\"],\"sessions\":%u,"
             "\"subscriptions\":%llu,\"bridge\":",
             ALMANAC_VERSION, (long long)((http__now_us() - r->h->started_us) / 1000000),
             (unsigned long long)st.keys, (long long)st.rev, st.schema_version,
             loop_sessions(r->h->loop), (unsigned long long)st.subscriptions);
    http__bridge_info(&b, r->h->bridge, st.outbox);
    buf_addf(&b,
             ",\"history\":{\"enabled\":%s,\"records\":%llu,\"bytes\":%llu,"
             "\"since_rev\":%lld,\"pruned\":%llu}",
             st.history ? "true" : "false", (unsigned long long)st.history_records,
             (unsigned long long)st.history_bytes, (long long)st.history_floor,
             (unsigned long long)st.history_pruned);
    buf_adds(&b, ",\"storage\":{\"path\":");
    buf_add_jstr(&b, st.db_path, strlen(st.db_path));
    buf_addf(&b,
             ",\"durability\":\"%s\",\"db_bytes\":%lld,\"wal_bytes\":%lld,"
             "\"committed_rev\":%lld,\"commits\":%llu,\"writable\":%s}}",
             st.durability == STORE_DURABLE_FSYNC ? "fsync" : "commit", (long long)st.db_bytes,
             (long long)st.wal_bytes, (long long)st.committed_rev, (unsigned long long)st.commits,
             st.writable ? "true" : "false");
    return http__json(r, 200, &b);
}

static void http__metric(struct buf *b, const char *name, const char *type, const char *help,
                         unsigned long long value)
{
    buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name, value);
}

static enum MHD_Result http__metrics(struct req *r)
{
    struct store_stats st;
    struct buf b = {0};
    store_stats(r->h->store, &st);
    http__metric(&b, "almanac_keys", "gauge", "Keys in the store.", st.keys);
    http__metric(&b, "almanac_rev", "gauge", "The last rev assigned.", (unsigned long long)st.rev);
    http__metric(&b, "almanac_committed_rev", "gauge", "The last rev committed to storage.",
                 (unsigned long long)st.committed_rev);
    http__metric(&b, "almanac_commits_total", "counter", "SQLite transactions committed.",
                 st.commits);
    http__metric(&b, "almanac_changes_total", "counter", "Changes committed.", st.changes);
    http__metric(&b, "almanac_commit_failures_total", "counter",
                 "Commits that failed and were undone.", st.commit_failures);
    http__metric(&b, "almanac_publishes_total", "counter", "Transient messages published.",
                 st.publishes);
    http__metric(&b, "almanac_storage_writable", "gauge", "1 while the last commit succeeded.",
                 st.writable);
    http__metric(&b, "almanac_sessions", "gauge", "Open sessions (WebSocket, TCP, Unix).",
                 loop_sessions(r->h->loop));
    http__metric(&b, "almanac_subscriptions", "gauge", "Live subscriptions, SSE included.",
                 st.subscriptions);
    http__metric(&b, "almanac_events_total", "counter", "Changes handed to subscriptions.",
                 st.events);
    struct bridge_stats bs;
    bridge_stats(r->h->bridge, &bs);
    http__metric(&b, "almanac_bridge_connected", "gauge", "1 while the MQTT bridge is connected.",
                 strcmp(bs.state, "connected") == 0);
    http__metric(&b, "almanac_bridge_outbox", "gauge", "Changes waiting for the MQTT broker.",
                 st.outbox);
    http__metric(&b, "almanac_bridge_messages_in_total", "counter",
                 "MQTT messages received on mapped topics.", bs.messages_in);
    http__metric(&b, "almanac_bridge_messages_out_total", "counter",
                 "Publishes the MQTT broker acknowledged.", bs.messages_out);
    http__metric(&b, "almanac_bridge_errors_in_total", "counter",
                 "MQTT messages that could not become a change.", bs.errors_in);
    http__metric(&b, "almanac_bridge_errors_out_total", "counter",
                 "Publishes the MQTT broker refused for good.", bs.errors_out);
    http__metric(&b, "almanac_bridge_reconnects_total", "counter",
                 "Connection attempts after the first.", bs.reconnects);
    http__metric(&b, "almanac_history_records", "gauge", "Changes kept in history.",
                 st.history_records);
    http__metric(&b, "almanac_history_bytes", "gauge",
                 "Size of history as history_max_bytes counts it.", st.history_bytes);
    http__metric(&b, "almanac_history_pruned_total", "counter",
                 "History records removed by retention.", st.history_pruned);
    http__metric(&b, "almanac_uptime_seconds", "gauge", "Seconds since the start.",
                 (unsigned long long)((http__now_us() - r->h->started_us) / 1000000));
    buf_adds(&b, "# HELP almanac_storage_bytes Size of the database files.\n"
                 "# TYPE almanac_storage_bytes gauge\n");
    buf_addf(&b, "almanac_storage_bytes{file=\"db\"} %lld\n", (long long)st.db_bytes);
    buf_addf(&b, "almanac_storage_bytes{file=\"wal\"} %lld\n", (long long)st.wal_bytes);
    buf_adds(&b, "# HELP almanac_http_responses_total HTTP responses by status.\n"
                 "# TYPE almanac_http_responses_total counter\n");
    for (unsigned s = 100; s < HTTP_MAX_STATUS; s++) {
        uint64_t n = atomic_load_explicit(&r->h->status_count[s], memory_order_relaxed);
        if (n)
            buf_addf(&b, "almanac_http_responses_total{code=\"%u\"} %llu\n", s,
                     (unsigned long long)n);
    }
    return http__text(r, 200, &b, "text/plain; version=0.0.4");
}

/* ---- Server-Sent Events ----
 *
 * A stream is one subscription. Its events gather in `q` (bounded by
 * session_queue_bytes: past it the stream ends with a too_slow event); the
 * content reader hands them to MHD and, when there are none, suspends the
 * connection, which the next event resumes. As for sessions, events wait in
 * `pending` until the snapshot and the sync are in `q`. */

struct sse {
    struct http *h;
    struct MHD_Connection *conn;
    struct store_sub *sub;
    pthread_mutex_t lock;
    struct buf q, pending;
    size_t off; /* bytes of q already handed to MHD */
    bool active, suspended, ended;
    struct sse *prev, *next;
};

static void sse__add_event(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                           int64_t rev, int64_t ts, bool transient)
{
    if (e == NULL) {
        buf_addf(b, "event: delete\nid: %lld\ndata: ", (long long)rev);
        envelope_add_deleted(b, key, klen, rev, ts);
    } else {
        if (transient)
            buf_adds(b, "event: put\ndata: ");
        else
            buf_addf(b, "event: put\nid: %lld\ndata: ", (long long)rev);
        size_t at = b->len;
        envelope_add(b, key, klen, e);
        if (transient && !b->oom && b->len > at) {
            b->len--;
            buf_adds(b, ",\"transient\":true}");
        }
    }
    buf_adds(b, "\n\n");
}

/* Appends to the stream and wakes it; the caller holds s->lock. */
static void sse__push(struct sse *s, const char *text, size_t len)
{
    if (s->ended)
        return;
    if (s->q.len - s->off + len > s->h->cfg->session_queue_bytes) {
        static const char slow[] = "event: error\ndata: {\"error\":\"too_slow\",\"message\":"
                                   "\"the stream's queue is full: the client reads too slowly\"}"
                                   "\n\n";
        s->q.len = s->off = 0;
        buf_add(&s->q, slow, sizeof slow - 1);
        s->ended = true;
    } else
        buf_add(&s->q, text, len);
    if (s->suspended) {
        s->suspended = false;
        MHD_resume_connection(s->conn);
    }
}

static void sse__on_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    struct sse *s = arg;
    struct buf b = {0};
    (void)sub;
    sse__add_event(&b, ev->key, ev->klen, ev->entry, ev->rev, ev->ts, ev->transient);
    pthread_mutex_lock(&s->lock);
    if (!b.oom) {
        if (s->active)
            sse__push(s, b.p, b.len);
        else
            buf_add(&s->pending, b.p, b.len);
    }
    pthread_mutex_unlock(&s->lock);
    buf_free(&b);
}

static ssize_t sse__read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct sse *s = cls;
    (void)pos;
    pthread_mutex_lock(&s->lock);
    size_t avail = s->q.len - s->off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(out, s->q.p + s->off, n);
        s->off += n;
        if (s->off == s->q.len)
            s->q.len = s->off = 0;
        pthread_mutex_unlock(&s->lock);
        return (ssize_t)n;
    }
    if (s->ended) {
        pthread_mutex_unlock(&s->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send: sleep until sse__push resumes us. */
    s->suspended = true;
    MHD_suspend_connection(s->conn);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static void sse__free(void *cls)
{
    struct sse *s = cls;
    struct http *h = s->h;
    store_unsubscribe(h->store, s->sub); /* no event callback after this */
    pthread_mutex_lock(&h->sse_lock);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    pthread_mutex_unlock(&h->sse_lock);
    buf_free(&s->q);
    buf_free(&s->pending);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static enum MHD_Result http__events(struct req *r)
{
    enum MHD_Result answer;
    bool wild;
    if (http__check_pattern(r, &wild, &answer) != 0)
        return answer;
    const char *live = http__arg(r, "live_only");
    bool live_only = live != NULL && strcmp(live, "0") != 0 && strcmp(live, "false") != 0;
    /* Last-Event-ID (an EventSource reconnecting) or ?since= replay the
     * changes after that rev from history instead of the snapshot. */
    const char *since_text = http__header(r, "Last-Event-ID");
    if (since_text == NULL)
        since_text = http__arg(r, "since");
    int64_t since = -1;
    if (since_text != NULL) {
        char *end;
        since = strtoll(since_text, &end, 10);
        if (!isdigit((unsigned char)since_text[0]) || *end != '\0')
            return http__error(r, STORE_EBADREQ, "since (or Last-Event-ID) is a rev: '%s'",
                               since_text);
    }
    struct sse *s = calloc(1, sizeof *s);
    if (s == NULL)
        return MHD_NO;
    s->h = r->h;
    s->conn = r->conn;
    pthread_mutex_init(&s->lock, NULL);
    struct store_snapshot snap = {0};
    int64_t rev;
    int err = since >= 0 ? store_subscribe_since(r->h->store, r->path, r->plen, false,
                                                 sse__on_event, s, since, &snap, &rev, &s->sub)
                         : store_subscribe(r->h->store, r->path, r->plen, false, sse__on_event, s,
                                           live_only ? NULL : &snap, &rev, &s->sub);
    if (err != STORE_OK) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return err == STORE_EGONE
                   ? http__error(r, err,
                                 "history does not hold every change of %s after rev %lld: "
                                 "take a fresh snapshot (connect without since)",
                                 r->path, (long long)since)
                   : http__error(r, err, "%s", store_err_text(err));
    }
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < snap.n; i++) {
        struct buf b = {0};
        sse__add_event(&b, snap.keys[i], snap.klens[i], snap.entries[i], snap.revs[i], snap.tss[i],
                       false);
        sse__push(s, b.p, b.len);
        buf_free(&b);
    }
    store_snapshot_free(&snap);
    char sync[96];
    int n = snprintf(sync, sizeof sync, "event: sync\nid: %lld\ndata: {\"rev\":%lld}\n\n",
                     (long long)rev, (long long)rev);
    sse__push(s, sync, (size_t)n);
    if (s->pending.len > 0)
        sse__push(s, s->pending.p, s->pending.len);
    buf_free(&s->pending);
    s->active = true;
    pthread_mutex_unlock(&s->lock);

    pthread_mutex_lock(&r->h->sse_lock);
    s->next = r->h->streams;
    if (s->next)
        s->next->prev = s;
    r->h->streams = s;
    pthread_mutex_unlock(&r->h->sse_lock);

    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse__read, s, sse__free);
    if (resp == NULL) {
        sse__free(s);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return http__queue(r, 200, resp);
}

/* ---- WebSocket upgrade (RFC 6455); the loop takes the socket over ---- */

struct http__ws {
    struct http *h;
    char address[64];
};

static void http__ws_closed(void *arg)
{
    MHD_upgrade_action(arg, MHD_UPGRADE_ACTION_CLOSE);
}

static void http__ws_upgraded(void *cls, struct MHD_Connection *conn, void *req_cls,
                              const char *extra, size_t extra_len, MHD_socket sock,
                              struct MHD_UpgradeResponseHandle *urh)
{
    struct http__ws *ws = cls;
    (void)conn;
    (void)req_cls;
    if (loop_adopt_ws(ws->h->loop, sock, extra, extra_len, ws->address, http__ws_closed, urh) != 0)
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    free(ws);
}

/* Whether the comma-separated header value `list` holds `token`. */
static bool http__has_token(const char *list, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == n && strncasecmp(p, token, n) == 0)
            return true;
        p = strchr(p, ',');
    }
    return false;
}

static enum MHD_Result http__ws(struct req *r)
{
    static const char magic[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const char *upgrade = http__header(r, "Upgrade"), *connection = http__header(r, "Connection");
    const char *key = http__header(r, "Sec-WebSocket-Key");
    const char *version = http__header(r, "Sec-WebSocket-Version");
    const char *protocols = http__header(r, "Sec-WebSocket-Protocol");

    if (upgrade == NULL || !http__has_token(upgrade, "websocket") || connection == NULL ||
        !http__has_token(connection, "upgrade") || key == NULL || strlen(key) > 64)
        return http__error(r, STORE_EBADREQ, "this is a WebSocket endpoint: send an upgrade");
    if (version == NULL || strcmp(version, "13") != 0)
        return http__error(r, STORE_EBADREQ, "WebSocket version 13 is served");
    if (protocols != NULL && !http__has_token(protocols, "almanac.v1"))
        return http__error(r, STORE_EPROTO, "the subprotocol is almanac.v1");
    if (loop_sessions(r->h->loop) >= r->h->cfg->max_sessions)
        return http__error(r, STORE_EUNAVAIL, "max_sessions sessions are open");

    char text[128], accept[64];
    unsigned char digest[SHA_DIGEST_LENGTH];
    snprintf(text, sizeof text, "%s%s", key, magic);
    SHA1((const unsigned char *)text, strlen(text), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);

    struct http__ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        return MHD_NO;
    ws->h = r->h;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci != NULL && ci->client_addr != NULL) {
        char host[48] = "?", port[8] = "?";
        getnameinfo(ci->client_addr,
                    ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in),
                    host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
        snprintf(ws->address, sizeof ws->address, "%s:%s", host, port);
    }
    struct MHD_Response *resp = MHD_create_response_for_upgrade(http__ws_upgraded, ws);
    if (resp == NULL) {
        free(ws);
        return MHD_NO;
    }
    struct http__conn *c = http__conn_of(r->conn);
    if (c != NULL)
        atomic_store(&c->fd, -1); /* the loop's now: no header timeout */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
    MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
    if (protocols != NULL)
        MHD_add_response_header(resp, "Sec-WebSocket-Protocol", "almanac.v1");
    return http__queue(r, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
}

/* ---- history, export and import ---- */

/* A streamed answer: `fill` appends the next part to `b` and says whether
 * more follows; MHD takes the bytes as the client reads them. */
struct stream {
    struct buf b;
    size_t off;
    bool done;
    bool (*fill)(struct stream *st);
    void (*end)(struct stream *st);
    /* history */
    struct store_history *it;
    bool first;
    /* export */
    struct store *store;
    char *after;
};

static ssize_t http__stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *st = cls;
    (void)pos;
    while (st->b.len - st->off < max && !st->done && !st->b.oom)
        st->done = !st->fill(st);
    if (st->b.oom)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = st->b.len - st->off < max ? st->b.len - st->off : max;
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    memcpy(out, st->b.p + st->off, n);
    st->off += n;
    if (st->off == st->b.len)
        st->b.len = st->off = 0;
    return (ssize_t)n;
}

static void http__stream_free(void *cls)
{
    struct stream *st = cls;
    if (st->end)
        st->end(st);
    buf_free(&st->b);
    free(st);
}

static enum MHD_Result http__stream(struct req *r, struct stream *st, const char *type)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 65536, http__stream_read, st, http__stream_free);
    if (resp == NULL) {
        http__stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    return http__queue(r, 200, resp);
}

static bool http__history_fill(struct stream *st)
{
    struct store_record rec;
    for (int i = 0; i < 256; i++) {
        int rc = store_history_next(st->it, &rec);
        if (rc < 0) {
            st->b.oom = true; /* ends the answer short: the client sees it broken */
            return false;
        }
        if (rc == 0) {
            int64_t next;
            store_history_close(st->it, &next);
            st->it = NULL;
            if (next > 0)
                buf_addf(&st->b, "],\"next\":%lld}\n", (long long)next);
            else
                buf_adds(&st->b, "],\"next\":null}\n");
            return false;
        }
        if (!st->first)
            buf_add(&st->b, ",", 1);
        st->first = false;
        envelope_add_record(&st->b, &rec, "type");
    }
    return true;
}

static void http__history_end(struct stream *st)
{
    if (st->it != NULL)
        store_history_close(st->it, NULL);
}

/* The query string's `label.<name>=<value>` arguments. */
static enum MHD_Result http__label_arg(void *cls, enum MHD_ValueKind kind, const char *name,
                                       const char *value)
{
    struct store_history_query *q = cls;
    (void)kind;
    if (strncmp(name, "label.", 6) != 0 || value == NULL)
        return MHD_YES;
    if (q->nlabels == STORE_HISTORY_MAX_LABELS) {
        q->nlabels++; /* too many: refused by the caller */
        return MHD_NO;
    }
    q->label_names[q->nlabels] = name + 6;
    q->label_values[q->nlabels++] = value;
    return MHD_YES;
}

static const char *http__query_arg(void *arg, const char *name)
{
    return http__arg(arg, name);
}

static enum MHD_Result http__history(struct req *r)
{
    enum MHD_Result answer;
    bool wild;
    char why[256];
    struct store_history_query q = {.pattern = r->path, .plen = r->plen};

    if (http__check_pattern(r, &wild, &answer) != 0)
        return answer;
    if (envelope_history_query(&q, http__query_arg, r, HTTP_HISTORY_MAX, why, sizeof why) != 0)
        return http__error(r, STORE_EBADREQ, "%s", why);
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, http__label_arg, &q);
    if (q.nlabels > STORE_HISTORY_MAX_LABELS)
        return http__error(r, STORE_EBADREQ, "at most %d label filters", STORE_HISTORY_MAX_LABELS);
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return MHD_NO;
    int err = store_history_open(r->h->store, &q, &st->it);
    if (err != STORE_OK) {
        free(st);
        return http__error(r, err, "%s",
                           err == STORE_EUNAVAIL ? "history is off (history_retention 0)"
                                                 : store_err_text(err));
    }
    st->fill = http__history_fill;
    st->end = http__history_end;
    st->first = true;
    buf_adds(&st->b, "{\"records\":[");
    return http__stream(r, st, "application/json");
}

/* export: every entry but the $-keys, one envelope a line, a page at a time. */
static void http__export_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct stream *st = arg;
    envelope_add(&st->b, key, klen, e);
    buf_add(&st->b, "\n", 1);
    free(st->after);
    st->after = strndup(key, klen);
    if (st->after == NULL)
        st->b.oom = true;
}

static bool http__export_fill(struct stream *st)
{
    bool more = false;
    char *after = st->after; /* the walk's cursor; the visits set the next one */
    st->after = NULL;
    store_pget(st->store, "#", 1, after, after ? strlen(after) : 0, 1000, http__export_visit, st,
               &more);
    free(after);
    return more;
}

static void http__export_end(struct stream *st)
{
    free(st->after);
}

static enum MHD_Result http__export(struct req *r)
{
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return MHD_NO;
    st->store = r->h->store;
    st->fill = http__export_fill;
    st->end = http__export_end;
    return http__stream(r, st, "application/x-ndjson");
}

/* import: JSON lines as export writes them, of any size: import.c checked
 * each line as the body came in; now it applies them. */
static enum MHD_Result http__import(struct req *r)
{
    size_t imported;
    char why[1024];
    int err = import_finish(r->import, &imported, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
    struct buf b = {0};
    buf_addf(&b, "{\"imported\":%zu}", imported);
    return http__json(r, 200, &b);
}

/* The dashboard: `/` is web/index.html, `/web/<file>` the rest; from the
 * binary (web_files.c), with the build's version as ETag. */
static enum MHD_Result http__web(struct req *r)
{
    const char *name = r->path != NULL ? r->path : "index.html";
    const struct web_file *f = web_files;
    while (f->path != NULL && strcmp(f->path + 1, name) != 0)
        f++;
    if (f->path == NULL)
        return http__error(r, STORE_ENOTFOUND, "no such file: /web/%s", name);
    const char *inm = http__header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const char *etag = "\"" ALMANAC_VERSION "\"";
    struct MHD_Response *resp =
        inm != NULL && strcmp(inm, etag) == 0
            ? MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)
            : MHD_create_response_from_buffer(f->len, (void *)f->data, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, f->type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; connect-src 'self'; style-src 'self'; "
                            "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                            "form-action 'self'; frame-ancestors 'none'");
    return http__queue(r, inm != NULL && strcmp(inm, etag) == 0 ? 304 : 200, resp);
}

static enum MHD_Result http__dispatch(struct req *r)
{
    struct buf b = {0};
    switch (r->route) {
    case ROUTE_KEYS:
        return http__keys(r);
    case ROUTE_PUBLISH:
        return http__publish(r);
    case ROUTE_LS:
        return http__ls(r);
    case ROUTE_BATCH:
        return http__batch(r);
    case ROUTE_INFO:
        return http__info(r);
    case ROUTE_HEALTH:
        buf_adds(&b, "{\"status\":\"ok\"}");
        return http__json(r, 200, &b);
    case ROUTE_READY: {
        struct store_stats st;
        store_stats(r->h->store, &st);
        if (st.draining)
            return http__error(r, STORE_EUNAVAIL, "the server is shutting down");
        if (!st.writable)
            return http__error(r, STORE_EUNAVAIL, "the last commit to storage failed");
        buf_adds(&b, "{\"status\":\"ready\"}");
        return http__json(r, 200, &b);
    }
    case ROUTE_METRICS:
        return http__metrics(r);
    case ROUTE_WS:
        return http__ws(r);
    case ROUTE_EVENTS:
        return http__events(r);
    case ROUTE_HISTORY:
        return http__history(r);
    case ROUTE_EXPORT:
        return http__export(r);
    case ROUTE_IMPORT:
        return http__import(r);
    case ROUTE_WEB:
        return http__web(r);
    case ROUTE_NONE:
        break;
    }
    return http__error(r, STORE_ENOTFOUND, "no such route");
}

/* ---- the MHD callbacks ---- */

static void http__body_append(struct req *r, const char *data, size_t len)
{
    if (r->too_large || len > r->body_max - r->blen) {
        r->too_large = true;
        return;
    }
    if (r->blen + len > r->bcap) {
        size_t cap = r->bcap ? r->bcap : 4096;
        while (cap < r->blen + len)
            cap *= 2;
        char *p = realloc(r->body, cap);
        if (p == NULL) {
            r->too_large = true;
            return;
        }
        r->body = p;
        r->bcap = cap;
    }
    memcpy(r->body + r->blen, data, len);
    r->blen += len;
}

/* A CORS preflight: allowed origins get the methods and headers of
 * API.md, others a 403 the browser reports as a failed request. */
static enum MHD_Result http__preflight(struct req *r)
{
    const char *origin = http__header(r, "Origin");
    if (!guard_cors_allowed(r->h->cfg, origin))
        return http__error(r, STORE_EFORBIDDEN, "origin %s is not in cors_origin",
                           origin ? origin : "(none)");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", "GET, HEAD, PUT, POST, DELETE");
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", "*, Authorization");
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    return http__queue(r, 204, resp);
}

/* What a browser may not ask: a Host that is not ours (DNS rebinding), a
 * change or a WebSocket from another site's page. Returns 0, or -1 after
 * answering. */
static int http__guard(struct req *r, enum MHD_Result *answer)
{
    const char *host = http__header(r, MHD_HTTP_HEADER_HOST);
    if (!guard_host_ok(r->h->cfg, host)) {
        *answer = http__error(
            r, STORE_EHOST, "Host '%s' is not a name of this server: add it with http_host", host);
        return -1;
    }
    const char *origin = http__header(r, "Origin");
    bool changes = r->method != M_GET && r->method != M_HEAD && r->method != M_OPTIONS;
    if (r->route == ROUTE_WS && origin != NULL && !guard_origin_ok(r->h->cfg, origin, host)) {
        *answer = http__error(r, STORE_EFORBIDDEN,
                              "a page of %s may not open a session here: add it with cors_origin",
                              origin);
        return -1;
    }
    if (changes && !guard_write_ok(r->h->cfg, origin, http__header(r, "Sec-Fetch-Site"), host)) {
        *answer = http__error(r, STORE_EFORBIDDEN,
                              "a page of %s may not change anything here: add it with cors_origin",
                              origin ? origin : "another site");
        return -1;
    }
    return 0;
}

/* The first call of a request: route, method and declared size. */
static enum MHD_Result http__begin(struct req *r, const char *url)
{
    enum MHD_Result answer;
    int i = http__route(r, url);
    if (http__guard(r, &answer) != 0)
        return answer;
    if (r->method == M_OPTIONS)
        return http__preflight(r);
    if (i < 0)
        return r->route == ROUTE_NONE ? http__error(r, STORE_ENOTFOUND, "no such route: %s", url)
                                      : MHD_NO;
    if (r->method == M_OTHER || !(http__routes[i].methods & r->method))
        return http__not_allowed(r, http__routes[i].allow);
    if (r->route == ROUTE_IMPORT) { /* any size: checked line by line */
        if (import_new(r->h->store, r->h->cfg->data_dir, STORE_ORIGIN_HTTP, &r->import) != 0)
            return http__error(r, STORE_EINTERNAL, "cannot start an import: no spool file");
        return MHD_YES;
    }
    const struct store_limits *lim = store_limits(r->h->store);
    r->body_max = r->route == ROUTE_BATCH ? r->h->cfg->max_body_bytes : lim->max_value_bytes;
    const char *cl = http__header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > r->body_max)
        return http__error(r, STORE_ETOOLARGE, "the body is %s bytes, more than the limit of %zu",
                           cl, r->body_max);
    return MHD_YES;
}

static enum MHD_Result http__handle(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct http *h = cls;
    struct req *r = *con_cls;
    (void)version;

    if (r == NULL) {
        if ((r = calloc(1, sizeof *r)) == NULL)
            return MHD_NO;
        r->h = h;
        r->conn = conn;
        r->method = http__method(method);
        *con_cls = r;
        atomic_fetch_add(&h->active, 1);
        struct http__conn *c = http__conn_of(conn);
        if (c != NULL)
            atomic_store(&c->since_us, 0); /* the headers are in */
        return http__begin(r, url);
    }
    if (*upload_size > 0) {
        if (r->import != NULL)
            import_feed(r->import, upload_data, *upload_size);
        else
            http__body_append(r, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    /* After a write's commit resumed the connection, the answer is ready. */
    if (atomic_load(&r->committed))
        return http__answer_write(r);
    return http__dispatch(r);
}

static void http__completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                            enum MHD_RequestTerminationCode code)
{
    struct http *h = cls;
    struct req *r = *con_cls;
    (void)code;
    struct http__conn *c = http__conn_of(conn);
    if (c != NULL)
        atomic_store(&c->since_us, http__now_us()); /* the next request's headers */
    if (r == NULL)
        return;
    if (r->ops != NULL) {
        store_txn_clear(&r->txn);
        if (r->ops != &r->one)
            free(r->ops);
    }
    json_decref(r->batch);
    import_free(r->import);
    free(r->path);
    free(r->body);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&h->active, 1);
}

/* Decodes %XX in place. A NUL byte cannot live in a C string, so %00 turns
 * into "\xC0\x80", which the key checks refuse by name. */
static size_t http__unescape(void *cls, struct MHD_Connection *c, char *s)
{
    char *out = s;
    (void)cls;
    (void)c;
    for (const char *in = s; *in; in++) {
        if (in[0] == '%' && isxdigit((unsigned char)in[1]) && isxdigit((unsigned char)in[2])) {
            char hex[3] = {in[1], in[2], 0};
            char byte = (char)strtol(hex, NULL, 16);
            in += 2;
            if (byte == 0 && out + 1 < in) {
                *out++ = '\xC0';
                *out++ = '\x80';
                continue;
            }
            *out++ = byte;
        } else
            *out++ = *in;
    }
    *out = '\0';
    return (size_t)(out - s);
}

/* ---- connections: the header timeout, and the heartbeat of SSE ----
 *
 * MHD's own timeout counts idleness, so a client sending a header line every
 * few seconds would hold its connection forever (slowloris). Each connection
 * is tracked from MHD's notification: `since_us` is set when it opens and
 * when a request ends, cleared when a request's headers are in; the timer
 * shuts down those waiting longer than http_header_timeout, and MHD then
 * closes them. The list is unlinked under conn_lock before MHD closes the
 * socket (MHD notifies CLOSED first), so the timer never touches a
 * descriptor that was reused. */

static void http__notify_conn(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    struct http *h = cls;
    struct http__conn *c = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci == NULL || (c = calloc(1, sizeof *c)) == NULL)
            return;
        c->fd = ci->connect_fd;
        c->since_us = http__now_us();
        pthread_mutex_lock(&h->conn_lock);
        c->next = h->conns;
        if (c->next)
            c->next->prev = c;
        h->conns = c;
        pthread_mutex_unlock(&h->conn_lock);
        *socket_context = c;
        return;
    }
    if (c == NULL)
        return;
    pthread_mutex_lock(&h->conn_lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&h->conn_lock);
    free(c);
    *socket_context = NULL;
}

static void http__reap_slow_headers(struct http *h, int64_t now)
{
    int64_t limit = h->cfg->http_header_timeout_us;
    pthread_mutex_lock(&h->conn_lock);
    for (struct http__conn *c = h->conns; c != NULL; c = c->next) {
        int64_t since = atomic_load(&c->since_us);
        int fd = atomic_load(&c->fd);
        if (since > 0 && fd >= 0 && now - since > limit) {
            atomic_store(&c->since_us, 0);
            shutdown(fd, SHUT_RDWR);
        }
    }
    pthread_mutex_unlock(&h->conn_lock);
}

/* A comment line on every idle stream: proxies keep it, and a stream whose
 * client went away fails to send it and is closed. */
static void http__heartbeat(struct http *h)
{
    static const char beat[] = ": keepalive\n\n";
    pthread_mutex_lock(&h->sse_lock);
    for (struct sse *s = h->streams; s != NULL; s = s->next) {
        pthread_mutex_lock(&s->lock);
        if (s->active && s->q.len == s->off)
            sse__push(s, beat, sizeof beat - 1);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&h->sse_lock);
}

static void *http__timer(void *arg)
{
    struct http *h = arg;
    int64_t beat = h->cfg->sse_heartbeat_us, next_beat = http__now_us() + beat;
    int64_t tick = beat < 500000 ? beat : 500000;
    pthread_mutex_lock(&h->timer_lock);
    while (!h->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + tick * 1000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&h->timer_cond, &h->timer_lock, &ts);
        if (h->stopping)
            break;
        pthread_mutex_unlock(&h->timer_lock);
        int64_t now = http__now_us();
        http__reap_slow_headers(h, now);
        if (now >= next_beat) {
            http__heartbeat(h);
            next_beat = now + beat;
        }
        pthread_mutex_lock(&h->timer_lock);
    }
    pthread_mutex_unlock(&h->timer_lock);
    return NULL;
}

static void http__mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_debug("http: %s", msg);
}

static void http__free(struct http *h)
{
    pthread_mutex_destroy(&h->sse_lock);
    pthread_mutex_destroy(&h->conn_lock);
    pthread_mutex_destroy(&h->timer_lock);
    pthread_cond_destroy(&h->timer_cond);
    free(h);
}

int http_start(struct store *store, struct bridge *bridge, const struct config *cfg,
               struct loop *loop, struct http **out, char *why, size_t why_len)
{
    struct addrinfo *ai = NULL;
    char host[256];
    struct http *h = calloc(1, sizeof *h);

    *out = NULL;
    if (h == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    if (config_resolve("http_listen", cfg->http_listen, &ai, host, sizeof host, why, why_len) !=
        0) {
        free(h);
        return -1;
    }
    h->store = store;
    h->bridge = bridge;
    h->cfg = cfg;
    h->loop = loop;
    pthread_mutex_init(&h->sse_lock, NULL);
    pthread_mutex_init(&h->conn_lock, NULL);
    pthread_mutex_init(&h->timer_lock, NULL);
    pthread_cond_init(&h->timer_cond, NULL);
    h->started_us = http__now_us();
    unsigned threads = cfg->http_threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    /* Unset: half of the descriptors, the rest for sessions, SQLite and the
     * bridge. Past it MHD refuses new connections, instead of accept()
     * failing for every listener of the process. */
    unsigned max_conns = cfg->http_max_connections;
    struct rlimit rl;
    if (max_conns == 0) {
        rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
        rlim_t half = n > 128 ? (n - 64) / 2 : 32;
        max_conns = half > 65536 ? 65536 : (unsigned)half;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->daemon =
        MHD_start_daemon(flags, 0, NULL, NULL, http__handle, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                         MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_NOTIFY_COMPLETED,
                         http__completed, h, MHD_OPTION_UNESCAPE_CALLBACK, http__unescape, NULL,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_CONNECTION,
                         http__notify_conn, h, MHD_OPTION_CONNECTION_LIMIT, max_conns,
                         MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->http_max_connections_per_ip,
                         MHD_OPTION_EXTERNAL_LOGGER, http__mhd_log, NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (h->daemon == NULL) {
        snprintf(why, why_len, "cannot listen on %s (in use, or not an address of this host)",
                 cfg->http_listen);
        http__free(h);
        return -1;
    }
    if (pthread_create(&h->timer, NULL, http__timer, h) != 0) {
        snprintf(why, why_len, "cannot start the HTTP timer thread");
        MHD_stop_daemon(h->daemon);
        http__free(h);
        return -1;
    }
    h->timer_started = true;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    log_info("http: listening on http://%s:%u/ with %u threads, at most %u connections (%u per "
             "address)",
             host[0] ? host : "*", h->port, threads, max_conns, cfg->http_max_connections_per_ip);
    *out = h;
    return 0;
}

unsigned short http_port(const struct http *h)
{
    return h->port;
}

void http_quiesce(struct http *h)
{
    MHD_socket fd = MHD_quiesce_daemon(h->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void http_stop(struct http *h)
{
    if (h == NULL)
        return;
    if (h->timer_started) {
        pthread_mutex_lock(&h->timer_lock);
        h->stopping = true;
        pthread_cond_signal(&h->timer_cond);
        pthread_mutex_unlock(&h->timer_lock);
        pthread_join(h->timer, NULL);
    }
    /* End the event streams: a suspended connection must be resumed
     * before MHD stops. */
    pthread_mutex_lock(&h->sse_lock);
    for (struct sse *s = h->streams; s != NULL; s = s->next) {
        pthread_mutex_lock(&s->lock);
        s->ended = true;
        if (s->suspended) {
            s->suspended = false;
            MHD_resume_connection(s->conn);
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&h->sse_lock);
    /* Writers were answered by store_drain; give their answers time to go. */
    for (int i = 0; i < 300 && atomic_load(&h->active) > 0; i++)
        usleep(10000);
    MHD_stop_daemon(h->daemon);
    http__free(h);
}
