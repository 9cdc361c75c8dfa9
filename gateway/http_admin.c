/*
 * http_admin.c — what operators ask of the server: /health, /ready,
 * /api/v1/info, the Prometheus /metrics, and the access tokens.
 */
#include "http_int.h"
#include "prom.h"
#include "strict.h"
#include "clock.h"
#include "version.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

enum MHD_Result http__health(struct req *r)
{
    struct buf b = {0};
    buf_adds(&b, "{\"status\":\"ok\"}");
    return http__json(r, 200, &b);
}

enum MHD_Result http__ready(struct req *r)
{
    struct store_stats st;
    struct buf b = {0};
    store_stats(r->h->store, &st);
    if (st.draining)
        return http__error(r, STORE_EUNAVAIL, "the server is shutting down");
    if (!st.writable)
        return http__error(r, STORE_EUNAVAIL, "the last commit to storage failed");
    buf_adds(&b, "{\"status\":\"ready\"}");
    return http__json(r, 200, &b);
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
        buf_adds(b, ",\"node\":"); /* the URL connected to */
        if (bs.node[0])
            buf_add_jstr(b, bs.node, strlen(bs.node));
        else
            buf_adds(b, "null");
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

enum MHD_Result http__info(struct req *r)
{
    char why[256];
    int err = ops_server(r->h->ops, &r->caller, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
    struct store_stats st;
    struct buf b = {0};
    store_stats(r->h->store, &st);
    buf_addf(&b,
             "{\"version\":\"%s\",\"uptime_s\":%lld,\"keys\":%llu,\"rev\":%lld,"
             "\"schema_version\":%d,\"protocols\":[\"1.0\"],\"sessions\":%u,"
             "\"subscriptions\":%llu,\"bridge\":",
             ALMANAC_VERSION, (long long)((now_us() - r->h->started_us) / 1000000),
             (unsigned long long)st.keys, (long long)st.rev, st.schema_version,
             ops_sessions(r->h->ops), (unsigned long long)st.subscriptions);
    http__bridge_info(&b, ops_bridge(r->h->ops), st.outbox);
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

enum MHD_Result http__metrics(struct req *r)
{
    char why[256];
    int err = ops_server(r->h->ops, &r->caller, why, sizeof why);
    if (err != STORE_OK)
        return http__error(r, err, "%s", why);
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
                 ops_sessions(r->h->ops));
    http__metric(&b, "almanac_subscriptions", "gauge", "Live subscriptions, SSE included.",
                 st.subscriptions);
    http__metric(&b, "almanac_events_total", "counter", "Changes handed to subscriptions.",
                 st.events);
    struct bridge_stats bs;
    bridge_stats(ops_bridge(r->h->ops), &bs);
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
                 (unsigned long long)((now_us() - r->h->started_us) / 1000000));
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
    /* the numbers of the metrics_keys the caller may read, after ours, as
     * one exposition (a family split between two patterns' would have two
     * TYPE lines, which fails the whole scrape), none named as ours are; a
     * pattern that fails says why in a comment and spoils nothing else */
    if (r->h->cfg->nmetrics_keys > 0) {
        struct prom *p = prom_new(NULL, 0, PROM_SAMPLES_MAX);
        if (p == NULL) {
            buf_free(&b);
            return MHD_NO;
        }
        prom_skip(p, "almanac_");
        for (size_t i = 0; i < r->h->cfg->nmetrics_keys; i++) {
            const char *pat = r->h->cfg->metrics_keys[i];
            err = prom_collect(p, r->h->ops, &r->caller, pat, strlen(pat), why, sizeof why);
            if (err != STORE_OK)
                buf_addf(&b, "# metrics_keys %s: %s\n", pat,
                         err == STORE_EINTERNAL ? "out of memory" : why);
        }
        struct buf values = {0};
        err = prom_write(p, &values);
        if (err == STORE_OK)
            buf_add(&b, values.p, values.len);
        else
            buf_addf(&b, "# metrics_keys: %s\n",
                     err == STORE_ETOOLARGE ? "more than " PROM_LIMITS : "out of memory");
        buf_free(&values);
        prom_free(p);
    }
    return http__text(r, 200, &b, "text/plain; version=0.0.4");
}

/* ---- numeric values as Prometheus gauges: GET /api/v1/prometheus/{pattern}
 * or /api/v1/prometheus?pattern=P&pattern=Q (a scrape config's `params`),
 * with `prefix` before each name and `max_age` leaving out values older ---- */

struct http__patterns {
    const char *v[16];
    size_t n;
    bool too_many;
};

static enum MHD_Result http__pattern_arg(void *cls, enum MHD_ValueKind kind, const char *name,
                                         const char *value)
{
    struct http__patterns *ps = cls;
    (void)kind;
    if (strcmp(name, "pattern") != 0)
        return MHD_YES;
    if (ps->n == sizeof ps->v / sizeof ps->v[0]) {
        ps->too_many = true;
        return MHD_NO;
    }
    ps->v[ps->n++] = value ? value : "";
    return MHD_YES;
}

enum MHD_Result http__prometheus(struct req *r)
{
    char why[512];
    const char *prefix = http__arg(r, "prefix"), *age = http__arg(r, "max_age");
    int64_t max_age = 0;
    struct http__patterns ps = {.n = 0};
    if (prefix != NULL && (prefix[0] == '\0' || strlen(prefix) > 64 || !prom_name_ok(prefix)))
        return http__error(r, STORE_EBADREQ,
                           "prefix must be 1 to 64 letters, digits, '_' or ':', not a digit first");
    if (age != NULL && (config_parse_duration(age, &max_age) != 0 || max_age <= 0))
        return http__error(r, STORE_EBADREQ, "max_age must be a duration such as 90s, 10m or 2h");
    if (r->path != NULL)
        ps.v[ps.n++] = r->path;
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, http__pattern_arg, &ps);
    if (ps.too_many)
        return http__error(r, STORE_EBADREQ, "at most %zu patterns", sizeof ps.v / sizeof ps.v[0]);
    if (ps.n == 0)
        return http__error(r, STORE_EBADREQ,
                           "which keys? /api/v1/prometheus/{pattern} or ?pattern= (repeatable)");
    struct prom *p = prom_new(prefix, max_age ? now_us() - max_age : 0, PROM_SAMPLES_MAX);
    if (p == NULL)
        return MHD_NO;
    for (size_t i = 0; i < ps.n; i++) {
        int err = prom_collect(p, r->h->ops, &r->caller, ps.v[i], strlen(ps.v[i]), why, sizeof why);
        if (err != STORE_OK) {
            prom_free(p);
            return http__error(r, err, "%s", why);
        }
    }
    struct buf b = {0};
    int err = prom_write(p, &b);
    prom_free(p);
    if (err != STORE_OK) {
        buf_free(&b);
        if (err == STORE_ETOOLARGE)
            return http__error(r, err, "more than %s: narrow the pattern, or use max_age",
                               PROM_LIMITS);
        return MHD_NO;
    }
    return http__text(r, 200, &b, "text/plain; version=0.0.4");
}

/* ---- tokens: GET lists, POST creates (the secret shown once), DELETE
 * /tokens/{name} revokes ---- */

static void http__token_visit(void *arg, const struct auth_token_info *t)
{
    struct buf *b = arg;
    if (b->len > 0 && b->p[b->len - 1] == '}')
        buf_adds(b, ",");
    buf_adds(b, "{\"name\":");
    buf_add_jstr(b, t->name, strlen(t->name));
    buf_addf(b, ",\"read\":%s,\"write\":%s,\"admin\":%s,\"created\":%lld,\"expires\":", t->read,
             t->write, t->admin ? "true" : "false", (long long)t->created);
    if (t->expires)
        buf_add_i64(b, t->expires);
    else
        buf_adds(b, "null");
    buf_adds(b, ",\"last_used\":");
    if (t->last_used)
        buf_add_i64(b, t->last_used);
    else
        buf_adds(b, "null");
    buf_adds(b, "}");
}

/* The strings of a JSON array (borrowed from it) in `*out`; -1 when it is
 * not an array of strings. */
static int http__strings(json_t *arr, const char ***out, size_t *n)
{
    size_t i;
    json_t *v;
    *n = json_array_size(arr);
    *out = NULL;
    if (arr == NULL)
        return 0;
    if (!json_is_array(arr) || (*out = calloc(*n + 1, sizeof **out)) == NULL)
        return -1;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v))
            return -1;
        (*out)[i] = json_string_value(v);
    }
    return 0;
}

/* expires: a duration from now ("30d"), a time (µs or RFC 3339), or absent. */
static int http__expires(json_t *v, int64_t *out)
{
    int64_t d;
    *out = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v))
        return -1;
    if (config_parse_duration(json_string_value(v), &d) == 0 && d > 0) {
        *out = now_us() + d;
        return 0;
    }
    return config_parse_time(json_string_value(v), out) == 0 && *out > now_us() ? 0 : -1;
}

static void http__free_secret(void *cls)
{
    char *text = cls;
    OPENSSL_cleanse(text, strlen(text));
    free(text);
}

/* The fields of a token's body (API.md "Access control"); any other is
 * refused, naming it (API.md "Strictness"). */
static const char *const http__token_fields[] = {"name", "read", "write", "admin", "expires", NULL};

static enum MHD_Result http__token_create(struct req *r)
{
    json_error_t jerr;
    json_t *body = json_loadb(r->body ? r->body : "", r->blen, 0, &jerr);
    const char **read = NULL, **write = NULL;
    size_t nread, nwrite;
    int64_t expires;
    char why[512], secret[64];
    json_t *name = json_object_get(body, "name"), *admin = json_object_get(body, "admin");
    enum MHD_Result answer;
    const char *bad = strict_unknown(body, http__token_fields, NULL);

    if (bad != NULL) {
        char quoted[96];
        strict_quote(quoted, sizeof quoted, bad);
        answer = http__error(r, STORE_EBODY,
                             "unknown field '%s' in the body (a token takes name, read, write, "
                             "admin, expires)",
                             quoted);
        goto out;
    }
    if (!json_is_object(body) || !json_is_string(name) || (admin && !json_is_boolean(admin)) ||
        http__strings(json_object_get(body, "read"), &read, &nread) != 0 ||
        http__strings(json_object_get(body, "write"), &write, &nwrite) != 0 ||
        http__expires(json_object_get(body, "expires"), &expires) != 0) {
        answer = http__error(r, STORE_EBODY,
                             "the body is {\"name\", \"read\": [patterns], \"write\": [patterns], "
                             "\"admin\": bool, \"expires\": \"30d\" or a future time}");
        goto out;
    }
    int err = ops_token_add(r->h->ops, &r->caller, json_string_value(name), (char *const *)read,
                            nread, (char *const *)write, nwrite, json_is_true(admin), expires,
                            secret, why, sizeof why);
    if (err != STORE_OK) {
        answer = http__error(r, err, "%s", why);
        goto out;
    }
    struct buf b = {0};
    buf_adds(&b, "{\"name\":");
    buf_add_jstr(&b, json_string_value(name), json_string_length(name));
    buf_addf(&b, ",\"token\":\"%s\"}\n", secret);
    OPENSSL_cleanse(secret, sizeof secret);
    struct MHD_Response *resp = b.oom ? NULL
                                      : MHD_create_response_from_buffer_with_free_callback_cls(
                                            b.len, b.p, http__free_secret, b.p);
    if (resp == NULL) {
        if (b.p)
            OPENSSL_cleanse(b.p, b.len);
        buf_free(&b);
        answer = MHD_NO;
        goto out;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    answer = http__queue(r, 201, resp);
out:
    free(read);
    free(write);
    json_decref(body);
    return answer;
}

enum MHD_Result http__tokens(struct req *r)
{
    char why[512];
    int err;
    if (r->method == M_POST)
        return http__token_create(r);
    if (r->method == M_DELETE) {
        err = ops_token_remove(r->h->ops, &r->caller, r->path, why, sizeof why);
        if (err != STORE_OK)
            return http__error(r, err, "%s", why);
        struct buf b = {0};
        buf_adds(&b, "{\"deleted\":");
        buf_add_jstr(&b, r->path, r->plen);
        buf_adds(&b, "}");
        return http__json(r, 200, &b);
    }
    struct buf b = {0};
    buf_adds(&b, "{\"tokens\":[");
    err = ops_tokens(r->h->ops, &r->caller, http__token_visit, &b, why, sizeof why);
    if (err != STORE_OK) {
        buf_free(&b);
        return http__error(r, err, "%s", why);
    }
    buf_adds(&b, "]}");
    return http__json(r, 200, &b);
}
