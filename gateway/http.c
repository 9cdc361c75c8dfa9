/*
 * http.c — the HTTP server of API.md on libmicrohttpd: the daemon, its
 * connections, routing, and the answers every route writes. The routes
 * live by job in http_keys.c, http_stream.c, http_admin.c and http_web.c
 * (http_int.h); each parses its request into a call of the operations
 * layer (ops.c) and writes the answer.
 *
 * MHD runs a pool of threads, each with its own epoll loop. A request's
 * handler is called once with the headers, once per piece of body, and once
 * more at the end; reads are answered in that last call. A write is handed
 * to the store and its connection suspended; the committer's `done` resumes
 * it, and MHD calls the handler again to send the answer. So a writer waits
 * for its commit without holding a thread, and one commit serves every write
 * that arrived while the previous one ran.
 * A request's query parameters and X-Almanac-* headers are checked against
 * what its route takes (http__options) before anything else is done with
 * it (API.md "Strictness").
 * Invariants:
 *   1. a connection is suspended before store_submit can call `done`, which
 *      resumes it (MHD forbids resuming a connection that is not suspended);
 *   2. a write is answered only once `committed` is set, by http__done or
 *      by a write refused before it was submitted;
 *   3. nothing is changed in the store for a request that gets a 4xx.
 */
#include "http_int.h"
#include "guard.h"
#include "import.h"
#include "strict.h"
#include "clock.h"
#include "version.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <ctype.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ---- answers of its own ---- */

static enum MHD_Result http__not_allowed(struct req *r, const char *allow)
{
    struct buf b = {0};
    char msg[128];
    snprintf(msg, sizeof msg, "this path allows %s", allow);
    buf_adds(&b, "{");
    envelope_add_error(&b, STORE_EMETHOD, msg);
    buf_adds(&b, "\n");
    struct MHD_Response *resp =
        b.oom ? NULL : MHD_create_response_from_buffer_with_free_callback(b.len, b.p, free);
    if (resp == NULL) {
        buf_free(&b);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return http__queue(r, store_err_status(STORE_EMETHOD), resp);
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
    {ROUTE_PROMETHEUS, HTTP_PREFIX "prometheus/", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_PROMETHEUS, HTTP_PREFIX "prometheus", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_TOKENS, HTTP_PREFIX "tokens/", M_DELETE, "DELETE"},
    {ROUTE_TOKENS, HTTP_PREFIX "tokens", M_GET | M_HEAD | M_POST, "GET, HEAD, POST"},
    {ROUTE_HEALTH, "/health", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_READY, "/ready", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_METRICS, "/metrics", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_WEB, "/web/", M_GET | M_HEAD, "GET, HEAD"},
    {ROUTE_WEB, "/favicon.ico", M_GET | M_HEAD, "GET, HEAD"}, /* web/favicon.ico */
    {ROUTE_WEB, "/", M_GET | M_HEAD, "GET, HEAD"},
};

/* Finds the route of `url`; sets r->path for the routes that carry a key (or
 * name a file of web/).
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
        } else if (r->route == ROUTE_WEB && len > 1) { /* "/favicon.ico": that file of web/ */
            r->plen = len - 1;
            if ((r->path = strdup(p + 1)) == NULL)
                return -1;
        }
        return (int)i;
    }
    return -1;
}

/* ---- strictness: the options a route takes ---- */

/* The query parameters and X-Almanac-* request headers each route takes
 * with a method (API.md "HTTP"), besides access_token, which every GET and
 * HEAD takes (http__authenticate); a route and method not listed take none.
 * A name ending in '.' or '-' is a family (label.<name>,
 * X-Almanac-Label-<name>). Anything else is refused with bad_request naming
 * it, before the request is authenticated or its body read (API.md
 * "Strictness"); standard headers are not options and are not looked at.
 * A new option is a name in its row (X-Almanac-TTL on PUT; label.,
 * exclude. and start on events), read by its route;
 * bodies are checked by their routes (http__batch_op, http__token_create,
 * import.c). */
static const struct {
    enum route route;
    unsigned methods;
    const char *args[STRICT_NAMES_MAX];
    const char *headers[STRICT_NAMES_MAX];
} http__options[] = {
    {ROUTE_KEYS, M_GET | M_HEAD, {"envelope", "limit", "after", "contains"}, {NULL}},
    {ROUTE_KEYS, M_PUT, {NULL}, {"X-Almanac-Label-", "X-Almanac-TTL"}},
    {ROUTE_PUBLISH, M_POST, {NULL}, {"X-Almanac-Label-"}},
    {ROUTE_EVENTS, M_GET, {"live_only", "since", "start", "label.", "exclude."}, {NULL}},
    {ROUTE_HISTORY,
     M_GET | M_HEAD,
     {"start", "stop", "limit", "order", "after", "every", "label.", "exclude."},
     {NULL}},
    {ROUTE_PROMETHEUS, M_GET | M_HEAD, {"pattern", "prefix", "max_age"}, {NULL}},
};

static const char *const http__get_args[] = {"access_token", NULL};
static const char *const http__none[] = {NULL};

struct http__strict {
    const char *const *takes; /* the route's */
    bool get;                 /* GET or HEAD: access_token too */
    const char *bad;          /* the first name refused */
};

static enum MHD_Result http__strict_arg(void *cls, enum MHD_ValueKind kind, const char *name,
                                        const char *value)
{
    struct http__strict *st = cls;
    (void)kind, (void)value;
    if (strict_takes(st->takes, name, false) ||
        (st->get && strict_takes(http__get_args, name, false)))
        return MHD_YES;
    st->bad = name;
    return MHD_NO;
}

static enum MHD_Result http__strict_header(void *cls, enum MHD_ValueKind kind, const char *name,
                                           const char *value)
{
    struct http__strict *st = cls;
    (void)kind, (void)value;
    if (strncasecmp(name, "X-Almanac-", 10) != 0 || strict_takes(st->takes, name, true))
        return MHD_YES;
    st->bad = name;
    return MHD_NO;
}

/* Refuses a query parameter or an X-Almanac-* header that route `i` does
 * not take with the request's method. Returns 0, or -1 after answering. */
static int http__strict(struct req *r, int i, const char *method, enum MHD_Result *answer)
{
    const char *const *args = http__none, *const *headers = http__none;
    char quoted[96], takes[256];
    for (size_t k = 0; k < sizeof http__options / sizeof http__options[0]; k++) {
        if (http__options[k].route == r->route && (http__options[k].methods & r->method)) {
            args = http__options[k].args;
            headers = http__options[k].headers;
            break;
        }
    }
    bool get = r->method == M_GET || r->method == M_HEAD;
    struct http__strict st = {.takes = args, .get = get};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, http__strict_arg, &st);
    if (st.bad != NULL) {
        const char *all[STRICT_NAMES_MAX + 1] = {NULL};
        size_t n = 0;
        for (; n < STRICT_NAMES_MAX && args[n] != NULL; n++)
            all[n] = args[n];
        if (get && n < STRICT_NAMES_MAX)
            all[n] = "access_token";
        strict_quote(quoted, sizeof quoted, st.bad);
        strict_list(takes, sizeof takes, all);
        if (strcmp(st.bad, "access_token") == 0) /* a write's URL is no place for a secret */
            *answer = http__error(r, STORE_EBADREQ,
                                  "the query parameter access_token is for GET and HEAD only: "
                                  "%s takes the token in Authorization: Bearer",
                                  method);
        else
            *answer = http__error(r, STORE_EBADREQ, "unknown query parameter '%s' (%s %s takes %s)",
                                  quoted, method, http__routes[i].path, takes);
        return -1;
    }
    st = (struct http__strict){.takes = headers};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, http__strict_header, &st);
    if (st.bad != NULL) {
        strict_quote(quoted, sizeof quoted, st.bad);
        strict_list(takes, sizeof takes, headers);
        *answer = http__error(r, STORE_EBADREQ,
                              "unknown header %s: of the X-Almanac-* headers, %s %s takes %s",
                              quoted, method, http__routes[i].path, takes);
        return -1;
    }
    return 0;
}

static enum MHD_Result http__dispatch(struct req *r)
{
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
        return http__health(r);
    case ROUTE_READY:
        return http__ready(r);
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
    case ROUTE_TOKENS:
        return http__tokens(r);
    case ROUTE_PROMETHEUS:
        return http__prometheus(r);
    case ROUTE_NONE:
        break;
    }
    return http__error(r, STORE_ENOTFOUND, "no such route");
}

/* ---- the MHD callbacks ---- */

static void http__body_append(struct req *r, const char *data, size_t len)
{
    if (r->blob != NULL) { /* store_blob_entry says what went wrong */
        store_blob_write(r->blob, data, len);
        r->blen += len;
        return;
    }
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

/* A PUT of a large value (Content-Length at least blob_min_bytes) goes to
 * a blob file as it arrives, never held whole in memory: so the key and the
 * privilege are checked first, before a byte is written (API.md "Large
 * values"). */
static enum MHD_Result http__begin_blob(struct req *r, size_t len)
{
    char why[512];
    int err = ops_may_write(r->h->ops, &r->caller, r->path, r->plen, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
    err = store_blob_open(r->h->store, len, &r->blob);
    if (err == STORE_OK || err == STORE_ENOTFOUND) /* ENOTFOUND: small, taken in memory */
        return MHD_YES;
    return http__error(r, err, "%s", store_err_text(err));
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

/* Who is asking: the token of `Authorization: Bearer`, or for a GET (an
 * EventSource, a download) of `?access_token=`. Returns 0, or -1 after
 * answering 401. */
static int http__authenticate(struct req *r, enum MHD_Result *answer)
{
    const char *auth = http__header(r, MHD_HTTP_HEADER_AUTHORIZATION), *token = NULL;
    char why[256];
    if (auth != NULL) {
        if (strncasecmp(auth, "Bearer ", 7) != 0) {
            *answer = http__error(r, STORE_EUNAUTH, "use Authorization: Bearer <token>");
            return -1;
        }
        for (token = auth + 7; *token == ' ';)
            token++;
        if (http__arg(r, "access_token") != NULL) {
            *answer = http__error(r, STORE_EBADREQ,
                                  "give the token once: in Authorization or in access_token");
            return -1;
        }
    } else if (r->method == M_GET || r->method == M_HEAD)
        token = http__arg(r, "access_token");
    int err = ops_authenticate(r->h->ops, r->caller.address, token, &r->caller.principal, why,
                               sizeof why);
    if (err == STORE_OK)
        return 0;
    *answer = http__error(r, err, "%s", why);
    return -1;
}

/* The first call of a request: route, method, options and declared size. */
static enum MHD_Result http__begin(struct req *r, const char *url, const char *method)
{
    enum MHD_Result answer;
    int i = http__route(r, url);
    if (http__guard(r, &answer) != 0)
        return answer;
    if (r->method == M_OPTIONS)
        return http__preflight(r);
    /* http__unescape hands on %00 as "\xC0\x80": no key holds a NUL. */
    if (r->path != NULL && memmem(r->path, r->plen, "\xC0\x80", 2) != NULL)
        return http__error(r, STORE_EKEY, "the key contains a NUL byte (%%00)");
    if (i < 0)
        return r->route == ROUTE_NONE ? http__error(r, STORE_ENOTFOUND, "no such route: %s", url)
                                      : MHD_NO;
    if (r->method == M_OTHER || !(http__routes[i].methods & r->method))
        return http__not_allowed(r, http__routes[i].allow);
    if (http__strict(r, i, method, &answer) != 0)
        return answer;
    bool open = r->route == ROUTE_HEALTH || r->route == ROUTE_READY || r->route == ROUTE_WEB;
    if (!open && http__authenticate(r, &answer) != 0)
        return answer;
    if (r->route == ROUTE_IMPORT) { /* any size: checked line by line */
        char why[256];
        int err = ops_import(r->h->ops, &r->caller, &r->import, why, sizeof why);
        return err == STORE_OK ? MHD_YES : http__error(r, err, "%s", why);
    }
    const struct store_limits *lim = store_limits(r->h->store);
    r->body_max = r->route == ROUTE_BATCH ? r->h->cfg->max_body_bytes : lim->max_value_bytes;
    const char *cl = http__header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > r->body_max)
        return http__error(r, STORE_ETOOLARGE, "the body is %s bytes, more than the limit of %zu",
                           cl, r->body_max);
    if (cl != NULL && r->route == ROUTE_KEYS && r->method == M_PUT)
        return http__begin_blob(r, (size_t)strtoull(cl, NULL, 10));
    return MHD_YES;
}

/* Whether an answer given with the headers waits for the body (struct
 * req): not when the client waits for 100 Continue before it sends one (it
 * never does then), nor for a declared body too large to read for nothing. */
static bool http__may_defer(struct req *r)
{
    const char *cl = http__header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return http__header(r, MHD_HTTP_HEADER_EXPECT) == NULL &&
           (cl == NULL || strtoull(cl, NULL, 10) <= HTTP_DROP_MAX);
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
        r->caller = (struct caller){.transport = STORE_ORIGIN_HTTP,
                                    .address = c != NULL ? c->address : "?"};
        if (c != NULL)
            atomic_store(&c->since_us, 0); /* the headers are in */
        r->deferring = http__may_defer(r);
        enum MHD_Result rc = http__begin(r, url, method);
        r->deferring = false;
        /* A refused request gets no more time for its body than for its
         * headers: a client trickling one would hold the connection. */
        if (r->early != NULL && c != NULL)
            atomic_store(&c->since_us, now_us());
        return rc;
    }
    if (r->early != NULL) {           /* refused: the body is dropped, then the answer goes */
        bool more = *upload_size > 0; /* MHD takes no answer while a body comes */
        *upload_size = 0;
        if (more)
            return MHD_YES;
        struct MHD_Response *resp = r->early;
        r->early = NULL;
        enum MHD_Result rc = MHD_queue_response(conn, r->early_status, resp);
        MHD_destroy_response(resp);
        return rc;
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
        atomic_store(&c->since_us, now_us()); /* the next request's headers */
    if (r == NULL)
        return;
    auth_release(r->caller.principal);
    store_txn_clear(&r->w.txn);
    free(r->batch_ops);
    json_decref(r->batch);
    import_free(r->import);
    free(r->path);
    free(r->body);
    store_blob_abort(r->blob);
    if (r->early != NULL)
        MHD_destroy_response(r->early);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&h->active, 1);
}

/* Decodes %XX in place. A NUL byte cannot live in a C string, so %00 turns
 * into "\xC0\x80" (never valid UTF-8), which http__begin refuses by name. */
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
 * when a request ends, cleared when a request's headers are in (but set
 * again for a refused request, whose body is dropped in that time); the timer
 * shuts down those waiting longer than http_header_timeout, and MHD then
 * closes them. The list is unlinked under conn_lock before MHD closes the
 * socket (MHD notifies CLOSED first), so the timer never touches a
 * descriptor that was reused. */

/* "host:port" of a client address. */
static void http__address(const struct sockaddr *sa, char *out, size_t len)
{
    char host[48] = "?", port[8] = "?";
    if (sa != NULL)
        getnameinfo(sa,
                    sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in),
                    host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(out, len, "%s:%s", host, port);
}

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
        c->since_us = now_us();
        const union MHD_ConnectionInfo *ai =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        http__address(ai ? ai->client_addr : NULL, c->address, sizeof c->address);
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

static void *http__timer(void *arg)
{
    struct http *h = arg;
    int64_t beat = h->cfg->sse_heartbeat_us, next_beat = now_us() + beat;
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
        int64_t now = now_us();
        http__reap_slow_headers(h, now);
        http__sse_tick(h, now >= next_beat);
        if (now >= next_beat)
            next_beat = now + beat;
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

/* The text of the PEM file `path` (malloc'd), or NULL with a sentence. */
static char *http__pem(const char *option, const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t len = 0;
    if (f != NULL) {
        text = calloc(1, 1 << 20);
        len = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
        fclose(f);
    }
    if (text == NULL || len == 0 || strstr(text, "-----BEGIN") == NULL) {
        snprintf(why, why_len, "%s %s: cannot read a PEM file there", option, path);
        free(text);
        return NULL;
    }
    return text;
}

static void http__free(struct http *h)
{
    if (h->tls_key != NULL)
        OPENSSL_cleanse(h->tls_key, strlen(h->tls_key));
    free(h->tls_key);
    free(h->tls_cert);
    pthread_mutex_destroy(&h->sse_lock);
    pthread_mutex_destroy(&h->conn_lock);
    http__ws_hosts_free(h);
    pthread_mutex_destroy(&h->ws_lock);
    pthread_mutex_destroy(&h->timer_lock);
    pthread_cond_destroy(&h->timer_cond);
    free(h);
}

int http_start(struct ops *ops, const struct config *cfg, struct loop *loop, struct http **out,
               char *why, size_t why_len)
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
    h->ops = ops;
    h->store = ops_store(ops);
    h->cfg = cfg;
    h->loop = loop;
    pthread_mutex_init(&h->sse_lock, NULL);
    pthread_mutex_init(&h->conn_lock, NULL);
    pthread_mutex_init(&h->ws_lock, NULL);
    pthread_mutex_init(&h->timer_lock, NULL);
    pthread_cond_init(&h->timer_cond, NULL);
    h->started_us = now_us();
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
    /* MHD_USE_TURBO: MHD closes a connection without shutdown(), which the
     * hand-over of an upgraded WebSocket relies on (http_stream.c). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TURBO |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* HTTPS (and wss: MHD carries the upgraded socket's TLS) with both. */
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};
    if ((cfg->http_tls_cert == NULL) != (cfg->http_tls_key == NULL)) {
        snprintf(why, why_len, "http_tls_cert and http_tls_key go together: give both");
        freeaddrinfo(ai);
        http__free(h);
        return -1;
    }
    if (cfg->http_tls_cert != NULL) {
        if ((h->tls_cert = http__pem("http_tls_cert", cfg->http_tls_cert, why, why_len)) == NULL ||
            (h->tls_key = http__pem("http_tls_key", cfg->http_tls_key, why, why_len)) == NULL) {
            freeaddrinfo(ai);
            http__free(h);
            return -1;
        }
        flags |= MHD_USE_TLS;
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key};
    }
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, http__handle, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_NOTIFY_COMPLETED, http__completed, h,
        MHD_OPTION_UNESCAPE_CALLBACK, http__unescape, NULL, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)120, MHD_OPTION_NOTIFY_CONNECTION, http__notify_conn, h,
        MHD_OPTION_CONNECTION_LIMIT, max_conns, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        cfg->http_max_connections_per_ip, MHD_OPTION_EXTERNAL_LOGGER, http__mhd_log, NULL,
        MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (h->daemon == NULL) {
        snprintf(why, why_len,
                 "cannot listen on %s (in use, not an address of this host, or a certificate "
                 "and key that do not go together)",
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
    log_info("http: listening on %s://%s:%u/ with %u threads, at most %u connections (%u per "
             "address)",
             h->tls_cert ? "https" : "http", host[0] ? host : "*", h->port, threads, max_conns,
             cfg->http_max_connections_per_ip);
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
    http__sse_end_all(h);
    /* Writers were answered by store_drain; give their answers time to go. */
    for (int i = 0; i < 300 && atomic_load(&h->active) > 0; i++)
        usleep(10000);
    MHD_stop_daemon(h->daemon);
    http__free(h);
}
