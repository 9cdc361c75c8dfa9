/*
 * session.c — the session protocol of API.md, the same on every transport:
 * the welcome, hello and version negotiation, requests and replies,
 * subscriptions with their snapshot, sync and live events.
 *
 * Each major protocol version has its own request handler (session__v1);
 * hello picks one. Writes go to the store asynchronously and are answered
 * from the committer's thread once committed, holding a reference to the
 * connection meanwhile.
 * Invariants:
 *   1. a subscription's events reach the client after its `ok` and after
 *      its snapshot and `sync`: until then they wait in `pending`, and the
 *      switch to direct delivery happens under the session's lock, which
 *      delivery also takes;
 *   2. every event after `sync` has a rev above the sync rev (the store
 *      filters), in rev order (the committer delivers in order);
 *   3. session_free unsubscribes everything before freeing: no event
 *      callback runs on freed memory.
 */
#include "gateway.h"
#include "version.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SESSION_LIST_DEFAULT 1000
#define SESSION_LIST_MAX     10000

struct pending {
    struct pending *next;
    size_t len;
    char data[];
};

struct csub {
    struct csub *next;
    struct session *session;
    uint64_t id;
    struct store_sub *sub;
    bool active; /* events go straight to the connection */
    struct pending *head, *tail;
};

struct session {
    struct loop *loop;
    struct store *store;
    struct sys *sys;
    const struct config *cfg;
    struct conn *conn;
    enum conn_transport transport;
    enum store_origin origin;
    char client_id[32];
    int major;
    pthread_mutex_t lock; /* the subscriptions' pending lists and states */
    struct csub *subs;
    unsigned nsubs;
    uint64_t next_sub;
};

typedef int (*session_handler)(struct session *s, const char *type, json_int_t id, json_t *msg);
static int session__v1(struct session *s, const char *type, json_int_t id, json_t *msg);

/* The protocol versions served: one handler per major version, with the
 * highest minor of each (the welcome's "protocols"). */
static const struct {
    int major, minor;
    session_handler handle;
} session__protocols[] = {{1, 0, session__v1}};

/* ---- replies ---- */

static void session__send(struct session *s, struct buf *b)
{
    conn_send_buf(s->conn, b);
}

static void session__error(struct session *s, const json_int_t *id, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void session__error(struct session *s, const json_int_t *id, int err, const char *fmt, ...)
{
    char msg[512];
    struct buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (id)
        buf_addf(&b, "{\"type\":\"error\",\"id\":%lld,", (long long)*id);
    else
        buf_adds(&b, "{\"type\":\"error\",\"id\":null,");
    envelope_add_error(&b, err, msg);
    session__send(s, &b);
}

/* Appends an envelope with `head` in front of its fields:
 * {"type":"entry","id":1,"key":...}. */
static void session__add_envelope(struct buf *b, const char *head, const char *key, size_t klen,
                                  const struct store_entry *e)
{
    buf_adds(b, head);
    envelope_add_fields(b, key, klen, e, "content_type");
}

/* ---- the start ---- */

struct session *session_new(struct loop *l, struct store *store, struct sys *sys,
                            const struct config *cfg, struct conn *c, enum conn_transport t,
                            const char *address)
{
    struct session *s = calloc(1, sizeof *s);
    struct buf b = {0};
    if (s == NULL)
        return NULL;
    s->loop = l;
    s->store = store;
    s->sys = sys;
    s->cfg = cfg;
    s->conn = c;
    s->transport = t;
    s->origin = t == CONN_TCP    ? STORE_ORIGIN_TCP
                : t == CONN_UNIX ? STORE_ORIGIN_UNIX
                                 : STORE_ORIGIN_WS;
    s->major =
        session__protocols[sizeof session__protocols / sizeof session__protocols[0] - 1].major;
    snprintf(s->client_id, sizeof s->client_id, "c%llu", (unsigned long long)loop_next_id(l));
    pthread_mutex_init(&s->lock, NULL);
    buf_adds(&b,
             "{\"type\":\"welcome\",\"server\":\"almanac/" ALMANAC_VERSION "\",\"protocols\":[");
    for (size_t i = 0; i < sizeof session__protocols / sizeof session__protocols[0]; i++)
        buf_addf(&b, "%s\"%d.%d\"", i ? "," : "", session__protocols[i].major,
                 session__protocols[i].minor);
    buf_addf(&b, "],\"client_id\":\"%s\",\"auth_required\":false}", s->client_id);
    session__send(s, &b);
    const char *transport = t == CONN_TCP ? "tcp" : t == CONN_UNIX ? "unix" : "ws";
    log_debug("session %s: %s from %s", s->client_id, transport, address);
    if (sys != NULL)
        sys_session_open(sys, s->client_id, transport, address, loop_sessions(l));
    return s;
}

static void csub__free_pending(struct csub *cs)
{
    while (cs->head != NULL) {
        struct pending *next = cs->head->next;
        free(cs->head);
        cs->head = next;
    }
    cs->tail = NULL;
}

void session_free(struct session *s)
{
    while (s->subs != NULL) {
        struct csub *cs = s->subs;
        s->subs = cs->next;
        store_unsubscribe(s->store, cs->sub); /* invariant 3 */
        csub__free_pending(cs);
        free(cs);
    }
    if (s->sys != NULL)
        sys_session_close(s->sys, s->client_id, loop_sessions(s->loop));
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static int session__hello(struct session *s, json_t *msg)
{
    json_t *jid = json_object_get(msg, "id");
    json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : 0;
    const json_int_t *pid = json_is_integer(jid) ? &id : NULL;
    const char *want = json_string_value(json_object_get(msg, "protocol"));
    int major = 0, minor = 0;

    if (want == NULL || sscanf(want, "%d.%d", &major, &minor) != 2) {
        session__error(s, pid, STORE_EBADREQ, "hello needs \"protocol\": \"MAJOR.MINOR\"");
        return 0;
    }
    for (size_t i = 0; i < sizeof session__protocols / sizeof session__protocols[0]; i++) {
        if (session__protocols[i].major != major)
            continue;
        s->major = major;
        struct buf b = {0};
        buf_adds(&b, "{\"type\":\"ok\",");
        if (pid)
            buf_addf(&b, "\"id\":%lld,", (long long)id);
        buf_addf(&b, "\"protocol\":\"%d.%d\",\"client_id\":\"%s\"}", major,
                 session__protocols[i].minor, s->client_id);
        session__send(s, &b);
        return 0;
    }
    session__error(s, pid, STORE_EPROTO, "protocol %s is not served; see the welcome's protocols",
                   want);
    return -1; /* API.md: the connection closes */
}

/* Whether a line of a TCP or Unix session is part of an HTTP request: a
 * request line ("POST / HTTP/1.1") or a Host or Origin header. A web page
 * can make a browser send those to any port (a form's text/plain body is
 * sent as it is), so without this check a page could smuggle session
 * requests in the body of a POST to tcp_listen (as Redis found). */
static bool session__http_line(const char *text, size_t len)
{
    if ((len >= 5 && strncasecmp(text, "Host:", 5) == 0) ||
        (len >= 7 && strncasecmp(text, "Origin:", 7) == 0))
        return true;
    size_t m = 0;
    while (m < len && text[m] >= 'A' && text[m] <= 'Z')
        m++;
    if (m == 0 || m == len || text[m] != ' ')
        return false;
    const char *v = memmem(text + m, len - m, " HTTP/", 6);
    return v != NULL;
}

int session_input(struct session *s, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *msg = NULL;
    int rc = 0;

    if (s->transport != CONN_WS && session__http_line(text, len)) {
        log_warn("session %s: an HTTP request on the session port: closed (a web page's "
                 "cross-protocol request?)",
                 s->client_id);
        session__error(s, NULL, STORE_EBADREQ,
                       "this port speaks the session protocol, not HTTP: use http_listen");
        return -1;
    }
    msg = json_loadb(text, len, 0, &jerr);
    if (msg == NULL) {
        session__error(s, NULL, STORE_EBADREQ, "the message is not valid JSON: %s", jerr.text);
        return 0;
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *jid = json_object_get(msg, "id");
    if (!json_is_object(msg) || type == NULL)
        session__error(s, NULL, STORE_EBADREQ, "a message is an object with a \"type\"");
    else if (strcmp(type, "hello") == 0)
        rc = session__hello(s, msg);
    else if (!json_is_integer(jid))
        session__error(s, NULL, STORE_EBADREQ, "a request needs a numeric \"id\"");
    else {
        for (size_t i = 0; i < sizeof session__protocols / sizeof session__protocols[0]; i++)
            if (session__protocols[i].major == s->major)
                rc = session__protocols[i].handle(s, type, json_integer_value(jid), msg);
    }
    json_decref(msg);
    return rc;
}

/* ---- protocol 1 ---- */

static const char *session__str(json_t *msg, const char *name, size_t *len)
{
    json_t *v = json_object_get(msg, name);
    if (!json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* The key of a request, checked; NULL after answering an error. */
static const char *session__key(struct session *s, json_int_t id, json_t *msg, const char *name,
                                size_t *len, bool optional)
{
    char why[256];
    const char *key = session__str(msg, name, len);
    if (key == NULL) {
        if (!optional)
            session__error(s, &id, STORE_EBADREQ, "\"%s\" must be a string", name);
        return NULL;
    }
    if (store_key_check(key, *len, store_limits(s->store)->max_key_bytes, why, sizeof why) !=
        STORE_OK) {
        session__error(s, &id, STORE_EKEY, "%s", why);
        return NULL;
    }
    return key;
}

static const char *session__pattern(struct session *s, json_int_t id, json_t *msg, const char *name,
                                    size_t *len, bool *wild)
{
    char why[256];
    const char *pat = session__str(msg, name, len);
    if (pat == NULL) {
        session__error(s, &id, STORE_EBADREQ, "\"%s\" must be a string", name);
        return NULL;
    }
    if (store_pattern_check(pat, *len, store_limits(s->store)->max_key_bytes, wild, why,
                            sizeof why) != STORE_OK) {
        session__error(s, &id, STORE_EPATTERN, "%s", why);
        return NULL;
    }
    return pat;
}

static int session__get(struct session *s, json_int_t id, json_t *msg)
{
    size_t klen;
    struct store_entry *e;
    const char *key = session__key(s, id, msg, "key", &klen, false);
    if (key == NULL)
        return 0;
    if (store_get(s->store, key, klen, &e) != STORE_OK) {
        session__error(s, &id, STORE_ENOTFOUND, "key %s does not exist", key);
        return 0;
    }
    struct buf b = {0};
    char head[64];
    snprintf(head, sizeof head, "{\"type\":\"entry\",\"id\":%lld,", (long long)id);
    session__add_envelope(&b, head, key, klen, e);
    store_entry_unref(e);
    session__send(s, &b);
    return 0;
}

static int session__pget(struct session *s, json_int_t id, json_t *msg)
{
    size_t plen, alen = 0;
    bool wild, more;
    const char *pat = session__pattern(s, id, msg, "pattern", &plen, &wild);
    json_t *jlimit = json_object_get(msg, "limit");
    const char *after = session__str(msg, "after", &alen);
    json_int_t limit = SESSION_LIST_DEFAULT;
    if (pat == NULL)
        return 0;
    if (jlimit != NULL) {
        limit = json_is_integer(jlimit) ? json_integer_value(jlimit) : 0;
        if (limit < 1 || limit > SESSION_LIST_MAX) {
            session__error(s, &id, STORE_EBADREQ, "limit must be a number from 1 to %d",
                           SESSION_LIST_MAX);
            return 0;
        }
    }
    struct buf b = {0};
    struct envelope_list l = {.b = &b, .type_field = "content_type"};
    buf_addf(&b, "{\"type\":\"entries\",\"id\":%lld,\"entries\":[", (long long)id);
    store_pget(s->store, pat, plen, after, alen, (size_t)limit, envelope_list_visit, &l, &more);
    envelope_list_end(&l, more);
    buf_adds(&b, "}");
    session__send(s, &b);
    return 0;
}

/* A history query's fields as text, for envelope_history_query. */
struct session__args {
    json_t *msg;
    char num[32];
};

static const char *session__arg(void *arg, const char *name)
{
    struct session__args *a = arg;
    json_t *v = json_object_get(a->msg, name);
    if (v == NULL || json_is_null(v))
        return NULL;
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(a->num, sizeof a->num, "%lld", (long long)json_integer_value(v));
        return a->num;
    }
    return "?"; /* of the wrong type: refused by the parser */
}

static int session__history(struct session *s, json_int_t id, json_t *msg)
{
    size_t plen;
    bool wild;
    char why[256];
    const char *pat = session__pattern(s, id, msg, "pattern", &plen, &wild);
    struct store_history_query q = {.pattern = pat, .plen = plen};
    struct session__args args = {.msg = msg};
    json_t *labels = json_object_get(msg, "labels"), *v;
    const char *name;

    if (pat == NULL)
        return 0;
    if (envelope_history_query(&q, session__arg, &args, SESSION_LIST_MAX, why, sizeof why) != 0) {
        session__error(s, &id, STORE_EBADREQ, "%s", why);
        return 0;
    }
    if (labels != NULL &&
        (!json_is_object(labels) || json_object_size(labels) > STORE_HISTORY_MAX_LABELS)) {
        session__error(s, &id, STORE_EBADREQ, "labels is an object of at most %d names",
                       STORE_HISTORY_MAX_LABELS);
        return 0;
    }
    json_object_foreach(labels, name, v)
    {
        if (!json_is_string(v)) {
            session__error(s, &id, STORE_EBADREQ, "the label filter %s is not a string", name);
            return 0;
        }
        q.label_names[q.nlabels] = name;
        q.label_values[q.nlabels++] = json_string_value(v);
    }
    struct store_history *h;
    int err = store_history_open(s->store, &q, &h);
    if (err != STORE_OK) {
        session__error(s, &id, err, "%s",
                       err == STORE_EUNAVAIL ? "history is off (history_retention 0)"
                                             : store_err_text(err));
        return 0;
    }
    struct buf b = {0};
    struct store_record rec;
    int64_t next;
    buf_addf(&b, "{\"type\":\"records\",\"id\":%lld,\"records\":[", (long long)id);
    for (size_t n = 0; (err = store_history_next(h, &rec)) == 1; n++) {
        if (n > 0)
            buf_add(&b, ",", 1);
        envelope_add_record(&b, &rec, "content_type");
    }
    store_history_close(h, &next);
    if (err < 0) {
        buf_free(&b);
        session__error(s, &id, -err, "%s", store_err_text(-err));
        return 0;
    }
    if (next > 0)
        buf_addf(&b, "],\"next\":%lld}", (long long)next);
    else
        buf_adds(&b, "],\"next\":null}");
    session__send(s, &b);
    return 0;
}

static int session__ls(struct session *s, json_int_t id, json_t *msg)
{
    size_t klen = 0;
    const char *key = NULL;
    if (json_object_get(msg, "key") != NULL &&
        (key = session__key(s, id, msg, "key", &klen, false)) == NULL)
        return 0;
    struct buf b = {0};
    struct envelope_children l = {.b = &b};
    buf_addf(&b, "{\"type\":\"children\",\"id\":%lld,\"children\":[", (long long)id);
    if (store_ls(s->store, key == NULL, key, klen, envelope_child, &l) != STORE_OK) {
        buf_free(&b);
        session__error(s, &id, STORE_ENOTFOUND, "key %s does not exist", key);
        return 0;
    }
    buf_adds(&b, "]}");
    session__send(s, &b);
    return 0;
}

/* ---- writes ---- */

struct session__write {
    struct conn *conn; /* a reference, for the answer */
    json_int_t id;
    json_t *msg; /* keeps the key alive */
    struct store_txn txn;
    struct store_op op;
};

static void session__write_done(void *arg, struct store_txn *t)
{
    struct session__write *w = arg;
    struct store_op *op = &w->op;
    struct buf b = {0};

    if (t->err == STORE_OK) {
        buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld", (long long)w->id);
        if (op->kind == STORE_OP_SET)
            buf_addf(&b, ",\"rev\":%lld,\"ts\":%lld,\"created\":%s", (long long)op->rev,
                     (long long)op->ts, op->created ? "true" : "false");
        else {
            buf_addf(&b, ",\"deleted\":%zu", op->deleted);
            if (!op->pattern && op->deleted)
                buf_addf(&b, ",\"rev\":%lld", (long long)op->rev);
        }
        buf_adds(&b, "}");
    } else {
        char msg[512];
        envelope_failure(msg, sizeof msg, t, false);
        buf_addf(&b, "{\"type\":\"error\",\"id\":%lld,", (long long)w->id);
        envelope_add_error(&b, t->err, msg);
    }
    if (!b.oom)
        conn_send(w->conn, b.p, b.len);
    buf_free(&b);
    conn_unref(w->conn);
    json_decref(w->msg);
    free(w);
}

/* Submits `op` (whose key lives in `msg`) and answers request `id` once it
 * is committed. The store takes op.entry whatever happens. */
static void session__submit(struct session *s, json_int_t id, json_t *msg, struct store_op op)
{
    struct session__write *w = calloc(1, sizeof *w);
    if (w == NULL) {
        store_entry_unref(op.entry);
        session__error(s, &id, STORE_EINTERNAL, "out of memory");
        return;
    }
    w->id = id;
    w->msg = json_incref(msg);
    w->op = op;
    w->txn.ops = &w->op;
    w->txn.n = 1;
    conn_ref(s->conn);
    w->conn = s->conn;
    if (store_submit(s->store, &w->txn, session__write_done, w) != STORE_OK)
        session__write_done(w, &w->txn);
}

/* if_rev of a request: absent (any), 0 (must not exist) or a rev. */
static int session__if_rev(struct session *s, json_int_t id, json_t *msg, int64_t *if_rev)
{
    json_t *v = json_object_get(msg, "if_rev");
    *if_rev = STORE_ANY_REV;
    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        session__error(s, &id, STORE_EBADREQ, "if_rev must be a rev, or 0 for a new key");
        return -1;
    }
    *if_rev = json_integer_value(v);
    return 0;
}

static int session__set(struct session *s, json_int_t id, json_t *msg, bool publish)
{
    size_t klen;
    char why[256];
    struct store_entry *e;
    int64_t if_rev;
    const char *key = session__key(s, id, msg, "key", &klen, false);
    if (key == NULL || session__if_rev(s, id, msg, &if_rev) != 0)
        return 0;
    int err = envelope_entry(msg, store_limits(s->store)->max_value_bytes, false, s->origin, &e,
                             why, sizeof why);
    if (err != STORE_OK) {
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    if (publish) {
        err = store_publish(s->store, key, klen, e);
        if (err != STORE_OK)
            session__error(s, &id, err, "%s", store_err_text(err));
        else {
            struct buf b = {0};
            buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld}", (long long)id);
            session__send(s, &b);
        }
        return 0;
    }
    session__submit(
        s, id, msg,
        (struct store_op){
            .kind = STORE_OP_SET, .key = key, .klen = klen, .entry = e, .if_rev = if_rev});
    return 0;
}

static int session__delete(struct session *s, json_int_t id, json_t *msg)
{
    size_t len;
    bool wild;
    int64_t if_rev;
    const char *key = session__pattern(s, id, msg, "key", &len, &wild);
    if (key == NULL || session__if_rev(s, id, msg, &if_rev) != 0)
        return 0;
    if (wild && if_rev != STORE_ANY_REV) {
        session__error(s, &id, STORE_EBADREQ, "if_rev applies to a key, not a pattern");
        return 0;
    }
    session__submit(s, id, msg,
                    (struct store_op){.kind = STORE_OP_DELETE,
                                      .key = key,
                                      .klen = len,
                                      .pattern = wild,
                                      .if_rev = if_rev,
                                      .origin = s->origin});
    return 0;
}

/* ---- subscriptions ---- */

/* The text of an event for subscription `sub`: {"type":"event","sub":S,...}.
 * The envelope part is made once per event and shared (ev->cache). */
static void session__event_text(struct buf *b, uint64_t sub, struct store_event *ev)
{
    if (ev->cache == NULL) {
        struct buf env = {0};
        if (ev->entry == NULL)
            envelope_add_deleted(&env, ev->key, ev->klen, ev->rev, ev->ts);
        else
            envelope_add_as(&env, ev->key, ev->klen, ev->entry, "content_type");
        if (ev->transient && !env.oom) {
            env.len--; /* the closing brace */
            buf_adds(&env, ",\"transient\":true}");
        }
        if (env.oom) {
            buf_free(&env);
            b->oom = true;
            return;
        }
        ev->cache = env.p;
        ev->cache_len = env.len;
    }
    buf_addf(b, "{\"type\":\"event\",\"sub\":%llu,", (unsigned long long)sub);
    buf_add(b, ev->cache + 1, ev->cache_len - 1);
}

static void csub__queue(struct csub *cs, const char *data, size_t len)
{
    struct pending *p = malloc(sizeof *p + len);
    if (p == NULL)
        return;
    p->next = NULL;
    p->len = len;
    memcpy(p->data, data, len);
    if (cs->tail)
        cs->tail->next = p;
    else
        cs->head = p;
    cs->tail = p;
}

static void session__on_event(void *arg, struct store_sub *sub, struct store_event *ev)
{
    struct csub *cs = arg;
    struct session *s = cs->session;
    struct buf b = {0};
    (void)sub;
    session__event_text(&b, cs->id, ev);
    if (b.oom) {
        buf_free(&b);
        return;
    }
    pthread_mutex_lock(&s->lock);
    if (cs->active)
        conn_send(s->conn, b.p, b.len);
    else
        csub__queue(cs, b.p, b.len); /* invariant 1 */
    pthread_mutex_unlock(&s->lock);
    buf_free(&b);
}

static int session__subscribe(struct session *s, json_int_t id, json_t *msg)
{
    size_t plen;
    bool wild;
    const char *pat = session__pattern(s, id, msg, "pattern", &plen, &wild);
    json_t *live = json_object_get(msg, "live_only"), *unique = json_object_get(msg, "unique");
    if (pat == NULL)
        return 0;
    if ((live && !json_is_boolean(live)) || (unique && !json_is_boolean(unique))) {
        session__error(s, &id, STORE_EBADREQ, "live_only and unique are true or false");
        return 0;
    }
    json_t *jsince = json_object_get(msg, "since");
    if (jsince != NULL && (!json_is_integer(jsince) || json_integer_value(jsince) < 0)) {
        session__error(s, &id, STORE_EBADREQ, "since is a rev (0 or more)");
        return 0;
    }
    if (s->nsubs >= s->cfg->max_subscriptions) {
        session__error(s, &id, STORE_EBADREQ, "a session has at most %u subscriptions",
                       s->cfg->max_subscriptions);
        return 0;
    }
    struct csub *cs = calloc(1, sizeof *cs);
    if (cs == NULL) {
        session__error(s, &id, STORE_EINTERNAL, "out of memory");
        return 0;
    }
    cs->session = s;
    cs->id = ++s->next_sub;
    struct store_snapshot snap = {0};
    int64_t rev;
    bool with_snapshot = !json_is_true(live);
    int err =
        jsince != NULL
            ? store_subscribe_since(s->store, pat, plen, json_is_true(unique), session__on_event,
                                    cs, json_integer_value(jsince), &snap, &rev, &cs->sub)
            : store_subscribe(s->store, pat, plen, json_is_true(unique), session__on_event, cs,
                              with_snapshot ? &snap : NULL, &rev, &cs->sub);
    if (err != STORE_OK) {
        free(cs);
        if (err == STORE_EGONE)
            session__error(s, &id, err,
                           "history does not hold every change of %s after rev %lld: take a "
                           "fresh snapshot (subscribe without since)",
                           pat, (long long)json_integer_value(jsince));
        else
            session__error(s, &id, err, "%s", store_err_text(err));
        return 0;
    }
    cs->next = s->subs;
    s->subs = cs;
    s->nsubs++;

    struct buf b = {0};
    buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld,\"sub\":%llu}", (long long)id,
             (unsigned long long)cs->id);
    session__send(s, &b);
    char head[64];
    snprintf(head, sizeof head, "{\"type\":\"event\",\"sub\":%llu,", (unsigned long long)cs->id);
    /* Over a line transport the snapshot goes in chunks of many lines; a
     * WebSocket takes one message a frame. */
    struct buf chunk = {0};
    for (size_t i = 0; i < snap.n; i++) {
        if (chunk.len > 0)
            buf_add(&chunk, "\n", 1);
        else if (s->transport != CONN_WS)
            buf_reserve(&chunk, 80 * 1024);
        if (snap.entries[i] == NULL) { /* a deletion, from a replay */
            buf_adds(&chunk, head);
            struct buf d = {0};
            envelope_add_deleted(&d, snap.keys[i], snap.klens[i], snap.revs[i], snap.tss[i]);
            if (d.len > 1)
                buf_add(&chunk, d.p + 1, d.len - 1);
            buf_free(&d);
        } else
            session__add_envelope(&chunk, head, snap.keys[i], snap.klens[i], snap.entries[i]);
        if (s->transport == CONN_WS || chunk.len >= 65536) {
            session__send(s, &chunk);
            chunk = (struct buf){0};
        }
    }
    if (chunk.len > 0)
        session__send(s, &chunk);
    buf_free(&chunk);
    store_snapshot_free(&snap);
    buf_addf(&b, "{\"type\":\"sync\",\"sub\":%llu,\"rev\":%lld}", (unsigned long long)cs->id,
             (long long)rev);
    /* Invariant 1: what arrived meanwhile follows the sync, in order. */
    pthread_mutex_lock(&s->lock);
    session__send(s, &b);
    for (struct pending *p = cs->head; p != NULL; p = p->next)
        conn_send(s->conn, p->data, p->len);
    csub__free_pending(cs);
    cs->active = true;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int session__unsubscribe(struct session *s, json_int_t id, json_t *msg)
{
    json_t *v = json_object_get(msg, "sub");
    struct csub **p = &s->subs;
    if (!json_is_integer(v)) {
        session__error(s, &id, STORE_EBADREQ, "\"sub\" must be a subscription number");
        return 0;
    }
    while (*p != NULL && (json_int_t)(*p)->id != json_integer_value(v))
        p = &(*p)->next;
    if (*p == NULL) {
        session__error(s, &id, STORE_ENOTFOUND, "no subscription %lld in this session",
                       (long long)json_integer_value(v));
        return 0;
    }
    struct csub *cs = *p;
    *p = cs->next;
    s->nsubs--;
    store_unsubscribe(s->store, cs->sub);
    csub__free_pending(cs);
    free(cs);
    struct buf b = {0};
    buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld}", (long long)id);
    session__send(s, &b);
    return 0;
}

static int session__v1(struct session *s, const char *type, json_int_t id, json_t *msg)
{
    if (strcmp(type, "get") == 0)
        return session__get(s, id, msg);
    if (strcmp(type, "pget") == 0)
        return session__pget(s, id, msg);
    if (strcmp(type, "set") == 0)
        return session__set(s, id, msg, false);
    if (strcmp(type, "publish") == 0)
        return session__set(s, id, msg, true);
    if (strcmp(type, "delete") == 0)
        return session__delete(s, id, msg);
    if (strcmp(type, "history") == 0)
        return session__history(s, id, msg);
    if (strcmp(type, "ls") == 0)
        return session__ls(s, id, msg);
    if (strcmp(type, "subscribe") == 0)
        return session__subscribe(s, id, msg);
    if (strcmp(type, "unsubscribe") == 0)
        return session__unsubscribe(s, id, msg);
    if (strcmp(type, "ping") == 0) {
        struct buf b = {0};
        buf_addf(&b, "{\"type\":\"pong\",\"id\":%lld}", (long long)id);
        session__send(s, &b);
        return 0;
    }
    session__error(s, &id, STORE_EBADREQ, "unknown request type '%s'", type);
    return 0;
}
