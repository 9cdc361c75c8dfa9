/*
 * http_answer.c — what every HTTP route uses: the pieces of a request
 * (arguments, headers, its connection) and the answers, which all pass
 * http__queue (the headers every answer has, and the status counts of
 * /metrics); the three steps of a write (suspend, submit, resume).
 */
#include "http_int.h"
#include "guard.h"
#include "version.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

struct http__conn *http__conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void http__conn_handed_over(struct req *r)
{
    struct http__conn *c = http__conn_of(r->conn);
    if (c != NULL)
        atomic_store(&c->fd, -1);
}

/* ---- answers ---- */

enum MHD_Result http__queue(struct req *r, unsigned status, struct MHD_Response *resp)
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
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"almanac\"");
    if (status < HTTP_MAX_STATUS)
        atomic_fetch_add_explicit(&r->h->status_count[status], 1, memory_order_relaxed);
    if (r->deferring) {
        r->early = resp;
        r->early_status = status;
        return MHD_YES;
    }
    enum MHD_Result rc = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

enum MHD_Result http__text(struct req *r, unsigned status, struct buf *b, const char *type)
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

enum MHD_Result http__json(struct req *r, unsigned status, struct buf *b)
{
    buf_add(b, "\n", 1);
    return http__text(r, status, b, "application/json");
}

enum MHD_Result http__error(struct req *r, int err, const char *fmt, ...)
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

const char *http__arg(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http__header(struct req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* ---- writes: suspend, submit, answer after the commit ---- */

void http__suspend(struct req *r)
{
    MHD_suspend_connection(r->conn); /* invariant 1 */
}

void http__done(void *arg, struct store_txn *t)
{
    struct req *r = arg;
    (void)t;
    atomic_store(&r->committed, true);
    MHD_resume_connection(r->conn);
}

enum MHD_Result http__submitted(struct req *r, int err)
{
    if (err != STORE_OK) { /* refused: nothing was submitted (invariant 2) */
        r->err = err;
        atomic_store(&r->committed, true);
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}
