/*
 * http_keys.c — the key routes of the HTTP API: GET, HEAD, PUT and DELETE
 * of keys/{key or pattern}, publish, ls and batch. Each parses its request
 * (path, headers, body) into a call of the operations layer and writes the
 * answer; a write's answer is written once its commit resumed the
 * connection (http.c, invariant 1).
 */
#include "http_int.h"
#include "strict.h"

#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
 * sniffed one), its X-Almanac-Label-* headers and a PUT's X-Almanac-TTL.
 * Returns 0, or -1 after answering. */
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
    if (r->blob != NULL) { /* its bytes are in a blob file already */
        err = store_blob_entry(r->blob, type, labels, r->caller.transport, out);
        r->blob = NULL;
        if (err == STORE_EBADREQ) {
            *answer = http__error(r, err, "the body ended before its Content-Length");
            goto fail;
        }
        if (err == STORE_EFULL) {
            *answer = http__error(r, err, "%s", store_err_text(err));
            goto fail;
        }
    } else
        err = store_entry_new(r->body ? r->body : "", r->blen, type, labels, r->caller.transport,
                              out);
    if (err == STORE_EBODY) {
        *answer = http__error(r, STORE_EBODY, "the body is not valid JSON, as Content-Type %s says",
                              type);
        goto fail;
    }
    if (err != STORE_OK)
        goto oom;
    const char *ttl = http__header(r, "X-Almanac-TTL"); /* a PUT's (strictness) */
    if (ttl != NULL &&
        (err = envelope_ttl(out, NULL, ttl, "X-Almanac-TTL", why, sizeof why)) != STORE_OK) {
        store_entry_unref(*out);
        *out = NULL;
        *answer = http__error(r, err, "%s", why);
        goto fail;
    }
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

/* ---- the answers of writes ---- */

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
            buf_addf(b, "{\"error\":\"%s\"}", store_err_name(STORE_ENOTFOUND));
        break;
    }
}

enum MHD_Result http__answer_write(struct req *r)
{
    struct buf b = {0};
    const struct store_txn *t = &r->w.txn;
    const struct store_op *op = &t->ops[0];
    unsigned status = 200;

    assert(atomic_load(&r->committed)); /* invariant 2 of http.c */
    if (r->err != STORE_OK)             /* refused before it was submitted */
        return http__error(r, r->err, "%s", r->why);
    if (t->err != STORE_OK) {
        char msg[512];
        envelope_failure(msg, sizeof msg, t, r->route == ROUTE_BATCH);
        return http__error(r, t->err, "%s", msg);
    }
    if (r->route == ROUTE_BATCH) {
        buf_adds(&b, "{\"results\":[");
        for (size_t i = 0; i < t->n; i++) {
            if (i)
                buf_adds(&b, ",");
            http__add_op_result(&b, &t->ops[i]);
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
    char num[32], why[512];

    int err = ops_get(r->h->ops, &r->caller, r->path, r->plen, &e, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
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
        /* A value in a blob file is its file's mapped pages: sent from there
         * as any value, with no copy (the response holds the entry, so the
         * map stays). MHD's descriptor responses (sendfile) measured slower:
         * 0.69x nginx against 1.16x (tests/bench blobget). */
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
            if (store_entry_expires(e) > 0) {
                snprintf(num, sizeof num, "%lld", (long long)store_entry_expires(e));
                MHD_add_response_header(resp, "X-Almanac-Expires", num);
            }
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
    bool more = false;
    const char *after = http__arg(r, "after");

    if (http__limit(r, &limit, &answer) != 0)
        return answer;
    buf_adds(&b, "{\"entries\":[");
    struct envelope_list l = {.b = &b, .type_field = "type"};
    char why[512];
    int err =
        ops_pget(r->h->ops, &r->caller, r->path, r->plen, after, after ? strlen(after) : 0,
                 http__arg(r, "contains"), limit, envelope_list_visit, &l, &more, why, sizeof why);
    envelope_list_end(&l, more);
    if (err != STORE_OK) {
        buf_free(&b);
        return http__error(r, err, "%s", why);
    }
    buf_adds(&b, "}");
    return http__json(r, 200, &b);
}

enum MHD_Result http__keys(struct req *r)
{
    enum MHD_Result answer;
    char why[512];
    int64_t if_rev;
    bool wild;
    int err;

    if (r->method == M_GET || r->method == M_HEAD) {
        err = ops_pattern(r->h->ops, &r->caller, r->path, r->plen, &wild, why, sizeof why);
        if (err != STORE_OK)
            return http__error(r, err, "%s", why);
        /* http.c took the options of both; each applies to one of them. */
        if (wild && http__arg(r, "envelope") != NULL)
            return http__error(r, STORE_EBADREQ,
                               "envelope is for a key: %s is a pattern, answered with envelopes",
                               r->path);
        const char *list = http__arg(r, "limit")      ? "limit"
                           : http__arg(r, "after")    ? "after"
                           : http__arg(r, "contains") ? "contains"
                                                      : NULL;
        if (!wild && list != NULL)
            return http__error(r, STORE_EBADREQ, "%s is for a pattern, and %s is a key", list,
                               r->path);
        return wild ? http__get_pattern(r) : http__get_key(r);
    }
    if (http__precondition(r, &if_rev, &answer) != 0)
        return answer;
    if (r->method == M_PUT) {
        struct store_entry *e;
        if (r->too_large)
            return http__error(r, STORE_ETOOLARGE,
                               "the value is more than max_value_bytes (%zu bytes)", r->body_max);
        if (http__body_entry(r, &e, &answer) != 0)
            return answer;
        http__suspend(r);
        err = ops_set(r->h->ops, &r->caller, &r->w, r->path, r->plen, e, if_rev, http__done, r,
                      r->why, sizeof r->why);
        return http__submitted(r, err);
    }
    /* DELETE: of a key (which must exist), or of every key of a pattern */
    http__suspend(r);
    err = ops_delete(r->h->ops, &r->caller, &r->w, r->path, r->plen, if_rev, true, http__done, r,
                     r->why, sizeof r->why);
    return http__submitted(r, err);
}

enum MHD_Result http__publish(struct req *r)
{
    enum MHD_Result answer;
    struct store_entry *e;
    char why[512];

    if (r->too_large)
        return http__error(r, STORE_ETOOLARGE, "the value is more than max_value_bytes (%zu bytes)",
                           r->body_max);
    if (http__body_entry(r, &e, &answer) != 0)
        return answer;
    int err = ops_publish(r->h->ops, &r->caller, r->path, r->plen, e, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
    struct buf b = {0};
    buf_adds(&b, "{\"key\":");
    buf_add_jstr(&b, r->path, r->plen);
    buf_adds(&b, ",\"published\":true}");
    return http__json(r, 202, &b);
}

enum MHD_Result http__ls(struct req *r)
{
    bool root = r->path == NULL || r->plen == 0;
    struct buf b = {0};
    struct envelope_children l = {.b = &b};
    char why[512];
    buf_adds(&b, "{\"children\":[");
    int err = ops_ls(r->h->ops, &r->caller, root ? NULL : r->path, root ? 0 : r->plen,
                     envelope_child, &l, NULL, why, sizeof why);
    if (err != STORE_OK) {
        buf_free(&b);
        return http__error(r, err, "%s", why);
    }
    buf_adds(&b, "]}");
    return http__json(r, 200, &b);
}

/* The fields of a batch op by its kind (API.md "HTTP", batch); any other
 * is refused, naming it (API.md "Strictness"). A new field of an op goes
 * in its list (ttl on set), read by http__batch_op or envelope_entry. */
static const char *const http__batch_set[] = {"op",     "key",    "if_rev", "value",
                                              "text",   "base64", "type",   "content_type",
                                              "labels", "ttl",    NULL};
static const char *const http__batch_delete[] = {"op", "key", "if_rev", NULL};
static const char *const http__batch_get[] = {"op", "key", NULL};

/* Builds one batch op from its JSON (the checks of keys and patterns are
 * the operations layer's); returns 0 or -1 after answering. */
static int http__batch_op(struct req *r, size_t i, json_t *jop, struct store_op *op,
                          enum MHD_Result *answer)
{
    const struct store_limits *lim = store_limits(r->h->store);
    const char *kind = json_string_value(json_object_get(jop, "op"));
    json_t *jkey = json_object_get(jop, "key"), *jrev = json_object_get(jop, "if_rev");
    char why[256];

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
    if (strcmp(kind, "delete") == 0)
        op->kind = STORE_OP_DELETE;
    else if (strcmp(kind, "set") == 0 || strcmp(kind, "get") == 0)
        op->kind = kind[0] == 's' ? STORE_OP_SET : STORE_OP_GET;
    else {
        *answer = http__error(r, STORE_EBODY, "ops[%zu]: unknown op '%s': use set, delete or get",
                              i, kind);
        return -1;
    }
    const char *const *fields = op->kind == STORE_OP_SET      ? http__batch_set
                                : op->kind == STORE_OP_DELETE ? http__batch_delete
                                                              : http__batch_get;
    const char *bad = strict_unknown(jop, fields, NULL);
    if (bad != NULL) {
        char quoted[96], takes[256];
        strict_quote(quoted, sizeof quoted, bad);
        strict_list(takes, sizeof takes, fields);
        *answer =
            http__error(r, STORE_EBODY, "ops[%zu]: unknown field '%s' in a %s op (it takes %s)", i,
                        quoted, kind, takes);
        return -1;
    }
    if (op->kind == STORE_OP_SET) {
        int err = envelope_entry(jop, lim->max_value_bytes, true, r->caller.transport, &op->entry,
                                 why, sizeof why);
        json_t *ttl = json_object_get(jop, "ttl");
        if (err == STORE_OK && ttl != NULL &&
            (err = envelope_ttl(&op->entry, ttl, NULL, "ttl", why, sizeof why)) != STORE_OK) {
            store_entry_unref(op->entry);
            op->entry = NULL;
        }
        if (err != STORE_OK) {
            *answer = http__error(r, err, "ops[%zu]: %s", i, why);
            return -1;
        }
    }
    return 0;
}

enum MHD_Result http__batch(struct req *r)
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
    static const char *const body_fields[] = {"ops", NULL};
    const char *bad = strict_unknown(r->batch, body_fields, NULL);
    if (bad != NULL) {
        char quoted[96];
        strict_quote(quoted, sizeof quoted, bad);
        return http__error(r, STORE_EBODY, "unknown field '%s' in the body: it takes only ops",
                           quoted);
    }
    struct store_op *v = calloc(n, sizeof *v);
    if (v == NULL)
        return http__error(r, STORE_EINTERNAL, "out of memory");
    r->batch_ops = v;
    for (size_t i = 0; i < n; i++) {
        if (http__batch_op(r, i, json_array_get(ops, i), &v[i], &answer) != 0) {
            for (size_t k = 0; k <= i; k++)
                store_entry_unref(v[k].entry);
            return answer;
        }
    }
    http__suspend(r);
    int err = ops_batch(r->h->ops, &r->caller, &r->w, v, n, http__done, r, r->why, sizeof r->why);
    return http__submitted(r, err);
}
