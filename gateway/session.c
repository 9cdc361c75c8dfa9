/*
 * session.c — the session protocol of API.md, the same on every transport
 * (WebSocket, TCP, the Unix socket): the welcome, hello and version
 * negotiation, requests and their replies, subscriptions.
 *
 * The loop (loop.c) carries the bytes and calls session__handler; a
 * request is parsed here into a call of the operations layer (ops.c), and
 * the reply written from what it returns. A subscription is a feed
 * (feed.c) whose sink writes events to the connection. Each major protocol
 * version has its own request handler (session__v1); hello picks one.
 * Every request names the fields it takes (session__v1_requests, and
 * session__hello_fields); a field it does not take is refused with
 * bad_request naming it, and nothing is done (API.md "Strictness").
 * Writes are answered from the committer's thread once committed, holding
 * a reference to the connection meanwhile.
 * Invariants:
 *   1. the `ok` of a subscribe is queued before its snapshot, its sync and
 *      its events (feed_start follows it);
 *   2. session__free closes every feed before freeing: no sink call runs
 *      on freed memory;
 *   3. a reply the connection's queue refuses ends the session with
 *      too_slow, as a feed's event would (the policy of feed.c);
 *   4. session__free releases the session's locks and forgets its waits
 *      before it is freed, so no lock is granted to freed memory; its will
 *      and grave goods are applied there, however the session ended.
 */
#include "clock.h"
#include "envelope.h"
#include "gateway.h"
#include "lifetime.h"
#include "loop.h"
#include "ops.h"
#include "strict.h"
#include "sys.h"
#include "version.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SESSION_LIST_DEFAULT 1000
#define SESSION_LIST_MAX     10000
#define SESSION_CHUNK        65536 /* snapshot bytes a write on a line transport */
#define SESSION_AUTH_GRACE   10    /* seconds to authenticate when anonymous may do nothing */

struct csub {
    struct csub *next;
    struct session *session;
    uint64_t id;
    struct feed *feed;
    size_t plen;
    char pattern[]; /* for a change of principal */
};

struct session {
    struct ops *ops;
    struct conn *conn;
    struct caller caller;
    uint64_t number; /* its client_id: "c" and the number (session__id) */
    int major;
    unsigned nsubs;
    struct csub *subs; /* the loop thread's only */
    uint64_t next_sub;
    struct will will; /* its last will and grave goods (lifetime.c) */
    int64_t auth_by;  /* mono_s: anonymous may do nothing, so a credential by then; 0: none */
    bool bye;         /* it ended cleanly: the will is not set */
};

/* A session's client_id, from its number: kept as the number, as there is
 * one session for each client (the text lives to the end of the expression
 * that asks for it). */
struct session__id {
    char text[24];
};

static struct session__id session__id(const struct session *s)
{
    struct session__id id;
    snprintf(id.text, sizeof id.text, "c%llu", (unsigned long long)s->number);
    return id;
}

typedef int (*session_handler)(struct session *s, const char *type, json_int_t id, json_t *msg);
static int session__v1(struct session *s, const char *type, json_int_t id, json_t *msg);

/* The protocol versions served: one handler per major version, with the
 * highest minor of each (the welcome's "protocols"). */
static const struct {
    int major, minor;
    session_handler handle;
} session__protocols[] = {{1, 0, session__v1}};

/* ---- replies ---- */

/* Ends the session on `c` with an error message that says why. */
static void session__end(struct conn *c, int err, const char *message)
{
    struct buf b = {0};
    buf_adds(&b, "{\"type\":\"error\",\"id\":null,");
    envelope_add_error(&b, err, message);
    conn_close_with(c, &b);
}

/* Queues a reply (taken over); invariant 3. */
static void session__send_on(struct conn *c, struct buf *b)
{
    if (!conn_send_buf(c, b))
        session__end(c, STORE_ESLOW, feed_too_slow);
}

static void session__send(struct session *s, struct buf *b)
{
    session__send_on(s->conn, b);
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

static void session__ok(struct session *s, json_int_t id)
{
    struct buf b = {0};
    buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld}", (long long)id);
    session__send(s, &b);
}

/* ---- the connection's life, as the loop calls it ---- */

static void *session__open(void *arg, struct conn *c)
{
    struct ops *o = arg;
    const struct config *cfg = ops_config(o);
    struct buf b = {0};

    if (ops_sessions(o) >= cfg->max_sessions) {
        session__end(c, STORE_EUNAVAIL, "max_sessions sessions are open");
        return NULL;
    }
    struct session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    enum conn_transport t = conn_transport(c);
    s->ops = o;
    s->conn = c;
    s->caller = (struct caller){.transport = t == CONN_TCP    ? STORE_ORIGIN_TCP
                                             : t == CONN_UNIX ? STORE_ORIGIN_UNIX
                                                              : STORE_ORIGIN_WS,
                                .address = conn_address(c)};
    char why[256];
    ops_authenticate(o, s->caller.address, NULL, &s->caller.principal, why, sizeof why);
    s->major =
        session__protocols[sizeof session__protocols / sizeof session__protocols[0] - 1].major;
    s->number = ops_next_id(o);
    buf_adds(&b,
             "{\"type\":\"welcome\",\"server\":\"almanac/" ALMANAC_VERSION "\",\"protocols\":[");
    for (size_t i = 0; i < sizeof session__protocols / sizeof session__protocols[0]; i++)
        buf_addf(&b, "%s\"%d.%d\"", i ? "," : "", session__protocols[i].major,
                 session__protocols[i].minor);
    bool required = ops_auth_required(o, s->caller.address);
    buf_addf(&b, "],\"client_id\":\"%s\",\"auth_required\":%s}", session__id(s).text,
             required ? "true" : "false");
    if (required)
        s->auth_by = mono_s() + SESSION_AUTH_GRACE;
    session__send(s, &b);
    ops_session_open(o, &s->caller, session__id(s).text);
    return s;
}

/* Ends a subscription taken off s->subs: no sink call after it. */
static void csub__free(struct session *s, struct csub *cs)
{
    ops_unsubscribe(s->ops, cs->feed); /* invariant 2 */
    free(cs);
}

static void session__free(void *state)
{
    struct session *s = state;
    while (s->subs != NULL) {
        struct csub *cs = s->subs;
        s->subs = cs->next;
        csub__free(s, cs);
    }
    lock_release_all(ops_locks(s->ops), s); /* invariant 4 */
    will_apply(ops_store(s->ops), s->caller.transport, session__id(s).text, &s->will, s->bye);
    will_clear(&s->will);
    ops_session_close(s->ops, session__id(s).text);
    auth_release(s->caller.principal); /* after its feeds (invariant 2) */
    free(s);
}

static void session__oversize(void *state)
{
    struct session *s = state;
    session__error(s, NULL, STORE_ETOOLARGE, "a message is longer than max_message_bytes");
}

static void session__tick(void *arg)
{
    sys_tick(ops_sys(arg));
}

/* The lock waits whose time is up; ms until the next. */
static int64_t session__timers(void *arg)
{
    return lock_timers(ops_locks(arg));
}

/* A session whose token was revoked or whose JWT expired ends at once; one
 * that may do nothing ends if it has not presented a credential within
 * SESSION_AUTH_GRACE seconds (so idle strangers hold no max_sessions slot). */
static void session__check(void *state)
{
    struct session *s = state;
    char why[256];
    if (ops_caller_live(&s->caller, why, sizeof why) != STORE_OK)
        session__end(s->conn, STORE_EUNAUTH, why);
    else if (s->auth_by != 0 && !s->caller.principal->authenticated && mono_s() >= s->auth_by)
        session__end(s->conn, STORE_EUNAUTH,
                     "no credential came in time: send hello with a token, or auth, first");
}

/* The principal the token `token` names replaces the session's; a
 * subscription it may no longer read ends with an error carrying its sub.
 * Returns 0, or -1 after answering unauthorized (nothing changed). */
static int session__auth(struct session *s, const json_int_t *id, json_t *token)
{
    const struct principal *p;
    char why[512];
    if (!json_is_string(token)) {
        session__error(s, id, STORE_EBADREQ, "\"token\" must be a string");
        return -1;
    }
    int err =
        ops_authenticate(s->ops, s->caller.address, json_string_value(token), &p, why, sizeof why);
    if (err != STORE_OK) {
        session__error(s, id, err, "%s", why);
        return -1;
    }
    const struct principal *old = s->caller.principal;
    s->caller.principal = p;
    for (struct csub **cp = &s->subs; *cp != NULL;) {
        struct csub *cs = *cp;
        if (ops_resubscribe(s->ops, &s->caller, cs->feed, cs->pattern, cs->plen, why, sizeof why) ==
            STORE_OK) {
            cp = &cs->next;
            continue;
        }
        struct buf b = {0};
        buf_addf(&b, "{\"type\":\"error\",\"id\":null,\"sub\":%llu,", (unsigned long long)cs->id);
        envelope_add_error(&b, STORE_EFORBIDDEN, why);
        *cp = cs->next;
        s->nsubs--;
        csub__free(s, cs);
        session__send(s, &b);
    }
    auth_release(old); /* no feed filters by it now */
    return 0;
}

/* ---- strictness: the fields a request takes ---- */

/* Refuses a request `type` holding a field other than "type", "id" and
 * `fields`, naming it and the fields it takes (API.md "Strictness": a
 * misspelt filter must not return unfiltered data). 0, or -1 after
 * answering bad_request (nothing done). */
static int session__known_fields(struct session *s, const json_int_t *id, json_t *msg,
                                 const char *type, const char *const *fields)
{
    static const char *const always[] = {"type", "id", NULL};
    const char *name = strict_unknown(msg, fields, always);
    if (name == NULL)
        return 0;
    char quoted[96], takes[256];
    strict_quote(quoted, sizeof quoted, name);
    strict_list(takes, sizeof takes, fields);
    session__error(s, id, STORE_EBADREQ, "unknown field '%s' in %s (it takes %s)", quoted, type,
                   takes);
    return -1;
}

/* The fields of hello besides "type" and "id" (API.md "Session protocol").
 * A new field of hello goes here (last_will and grave_goods, say), with its
 * reading in session__hello. */
static int session__declare(struct session *s, const json_int_t *id, json_t *will, json_t *graves,
                            struct buf *reply);

static const char *const session__hello_fields[STRICT_NAMES_MAX] = {"protocol", "token",
                                                                    "last_will", "grave_goods"};

static int session__hello(struct session *s, json_t *msg)
{
    json_t *jid = json_object_get(msg, "id");
    json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : 0;
    const json_int_t *pid = json_is_integer(jid) ? &id : NULL;
    const char *want = json_string_value(json_object_get(msg, "protocol"));
    int major = -1, minor = -1, end = 0;
    size_t i = 0, n = sizeof session__protocols / sizeof session__protocols[0];

    if (session__known_fields(s, pid, msg, "hello", session__hello_fields) != 0)
        return 0;
    if (want == NULL || sscanf(want, "%d.%d%n", &major, &minor, &end) != 2 || want[end] != '\0' ||
        major < 0 || minor < 0) {
        session__error(s, pid, STORE_EBADREQ, "hello needs \"protocol\": \"MAJOR.MINOR\"");
        return 0;
    }
    while (i < n && session__protocols[i].major != major)
        i++;
    if (i == n) {
        session__error(s, pid, STORE_EPROTO,
                       "protocol %s is not served; see the welcome's protocols", want);
        return -1; /* API.md: the connection closes */
    }
    /* A higher minor may send what this server does not know. */
    if (minor > session__protocols[i].minor) {
        session__error(s, pid, STORE_EPROTO,
                       "protocol %s is not served: of major %d this server speaks up to %d.%d",
                       want, major, major, session__protocols[i].minor);
        return -1;
    }
    json_t *token = json_object_get(msg, "token");
    if (token != NULL && session__auth(s, pid, token) != 0)
        return 0; /* answered: unauthorized, and the protocol stays as it was */
    struct buf b = {0};
    buf_adds(&b, "{\"type\":\"ok\",");
    if (pid)
        buf_addf(&b, "\"id\":%lld,", (long long)id);
    buf_addf(&b, "\"protocol\":\"%d.%d\",\"client_id\":\"%s\"}", major, session__protocols[i].minor,
             session__id(s).text);
    json_t *will = json_object_get(msg, "last_will"), *graves = json_object_get(msg, "grave_goods");
    if ((will != NULL || graves != NULL) && session__declare(s, pid, will, graves, &b) != 0)
        return 0; /* answered: nothing changed */
    s->major = major;
    if (b.len > 0) /* else the will's commit answers */
        session__send(s, &b);
    return 0;
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

static int session__input(void *state, const char *text, size_t len)
{
    struct session *s = state;
    json_error_t jerr;
    json_t *msg = NULL;
    int rc = 0;

    if (s->caller.transport != STORE_ORIGIN_WS && session__http_line(text, len)) {
        log_warn("session %s: an HTTP request on the session port: closed (a web page's "
                 "cross-protocol request?)",
                 session__id(s).text);
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

static const struct loop_handler session__handler = {.open = session__open,
                                                     .input = session__input,
                                                     .oversize = session__oversize,
                                                     .close = session__free,
                                                     .tick = session__tick,
                                                     .check = session__check,
                                                     .timers = session__timers};

int session_serve(struct ops *ops, const struct config *cfg, struct loop **out, char *why,
                  size_t why_len)
{
    return loop_start(cfg, &session__handler, ops, out, why, why_len);
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

/* A string field of a request; NULL after answering an error. */
static const char *session__field(struct session *s, json_int_t id, json_t *msg, const char *name,
                                  size_t *len)
{
    const char *v = session__str(msg, name, len);
    if (v == NULL)
        session__error(s, &id, STORE_EBADREQ, "\"%s\" must be a string", name);
    return v;
}

static int session__get(struct session *s, json_int_t id, json_t *msg)
{
    size_t klen;
    struct store_entry *e;
    char why[512];
    const char *key = session__field(s, id, msg, "key", &klen);
    if (key == NULL)
        return 0;
    int err = ops_get(s->ops, &s->caller, key, klen, &e, why, sizeof why);
    if (err != STORE_OK) {
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    struct buf b = {0};
    char head[64];
    snprintf(head, sizeof head, "{\"type\":\"entry\",\"id\":%lld,", (long long)id);
    buf_adds(&b, head);
    envelope_add_fields(&b, key, klen, e, "content_type");
    store_entry_unref(e);
    session__send(s, &b);
    return 0;
}

static int session__pget(struct session *s, json_int_t id, json_t *msg)
{
    size_t plen, alen = 0;
    bool more = false;
    char why[512];
    const char *pat = session__field(s, id, msg, "pattern", &plen);
    json_t *jlimit = json_object_get(msg, "limit");
    const char *after = session__str(msg, "after", &alen);
    const char *contains = NULL;
    json_int_t limit = SESSION_LIST_DEFAULT;
    if (pat == NULL)
        return 0;
    size_t clen; /* no NUL: a session's JSON may not hold one */
    if (json_object_get(msg, "contains") != NULL &&
        (contains = session__field(s, id, msg, "contains", &clen)) == NULL)
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
    int err = ops_pget(s->ops, &s->caller, pat, plen, after, alen, contains, (size_t)limit,
                       envelope_list_visit, &l, &more, why, sizeof why);
    envelope_list_end(&l, more);
    if (err != STORE_OK) {
        buf_free(&b);
        session__error(s, &id, err, "%s", why);
        return 0;
    }
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
    char why[512];
    const char *pat = session__field(s, id, msg, "pattern", &plen);
    struct store_history_query q = {.pattern = pat, .plen = plen};
    struct session__args args = {.msg = msg};

    if (pat == NULL)
        return 0;
    if (envelope_history_query(&q, session__arg, &args, SESSION_LIST_MAX, why, sizeof why) != 0 ||
        envelope_label_filters(msg, &q.labels, why, sizeof why) != 0) {
        session__error(s, &id, STORE_EBADREQ, "%s", why);
        return 0;
    }
    struct store_history *h;
    int err = ops_history(s->ops, &s->caller, &q, &h, why, sizeof why);
    if (err != STORE_OK) {
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    struct buf b = {0};
    struct store_record rec;
    int64_t next;
    buf_addf(&b, "{\"type\":\"records\",\"id\":%lld,\"records\":[", (long long)id);
    /* A page ends early once it holds ENVELOPE_LIST_BYTES (large values). */
    for (size_t n = 0; b.len < ENVELOPE_LIST_BYTES && (err = store_history_next(h, &rec)) == 1;
         n++) {
        if (n > 0)
            buf_add(&b, ",", 1);
        envelope_add_record(&b, &rec, "content_type");
    }
    if (err == 1)
        err = 0; /* stopped early: `next` says where to go on */
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
    char why[512];
    const char *key = NULL;
    if (json_object_get(msg, "key") != NULL &&
        (key = session__field(s, id, msg, "key", &klen)) == NULL)
        return 0;
    struct buf b = {0};
    struct envelope_children l = {.b = &b};
    buf_addf(&b, "{\"type\":\"children\",\"id\":%lld,\"children\":[", (long long)id);
    int64_t rev = 0;
    int err = ops_ls(s->ops, &s->caller, key, klen, envelope_child, &l, &rev, why, sizeof why);
    if (err != STORE_OK) {
        buf_free(&b);
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    /* The rev the answer is of: a client counting keys from events skips
     * the ones at or below it (they are in the answer). */
    buf_addf(&b, "],\"rev\":%lld}", (long long)rev);
    session__send(s, &b);
    return 0;
}

/* ---- writes ---- */

struct session__write {
    struct conn *conn; /* a reference, for the answer */
    json_int_t id;
    json_t *msg; /* keeps the key alive */
    struct ops_write w;
};

static void session__write_done(void *arg, struct store_txn *t)
{
    struct session__write *sw = arg;
    struct store_op *op = &sw->w.one;
    struct buf b = {0};

    if (t->err == STORE_OK) {
        buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld", (long long)sw->id);
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
        buf_addf(&b, "{\"type\":\"error\",\"id\":%lld,", (long long)sw->id);
        envelope_add_error(&b, t->err, msg);
    }
    session__send_on(sw->conn, &b);
    conn_unref(sw->conn);
    json_decref(sw->msg);
    free(sw);
}

/* A write under way for request `id`, whose key lives in `msg`; NULL after
 * answering (and releasing `e`). */
static struct session__write *session__write_new(struct session *s, json_int_t id, json_t *msg,
                                                 struct store_entry *e)
{
    struct session__write *sw = calloc(1, sizeof *sw);
    if (sw == NULL) {
        store_entry_unref(e);
        session__error(s, &id, STORE_EINTERNAL, "out of memory");
        return NULL;
    }
    sw->id = id;
    sw->msg = json_incref(msg);
    conn_ref(s->conn);
    sw->conn = s->conn;
    return sw;
}

/* After ops_set or ops_delete: an error is answered here, and `sw` freed;
 * otherwise session__write_done answers. */
static void session__submitted(struct session *s, struct session__write *sw, int err,
                               const char *why)
{
    if (err == STORE_OK)
        return;
    session__error(s, &sw->id, err, "%s", why);
    conn_unref(sw->conn);
    json_decref(sw->msg);
    free(sw);
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

/* set, or with `publish` a transient publish (which takes no if_rev). */
static int session__value(struct session *s, json_int_t id, json_t *msg, bool publish)
{
    size_t klen;
    char why[512];
    struct store_entry *e;
    int64_t if_rev = STORE_ANY_REV;
    const char *key = session__field(s, id, msg, "key", &klen);
    if (key == NULL || (!publish && session__if_rev(s, id, msg, &if_rev) != 0))
        return 0;
    int err = envelope_entry(msg, store_limits(ops_store(s->ops))->max_value_bytes, false,
                             s->caller.transport, &e, why, sizeof why);
    json_t *ttl = json_object_get(msg, "ttl");
    if (err == STORE_OK && ttl != NULL &&
        (err = envelope_ttl(&e, ttl, NULL, "ttl", why, sizeof why)) != STORE_OK)
        store_entry_unref(e);
    if (err != STORE_OK) {
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    if (publish) {
        err = ops_publish(s->ops, &s->caller, key, klen, e, why, sizeof why);
        if (err != STORE_OK)
            session__error(s, &id, err, "%s", why);
        else
            session__ok(s, id);
        return 0;
    }
    struct session__write *sw = session__write_new(s, id, msg, e);
    if (sw == NULL)
        return 0;
    err = ops_set(s->ops, &s->caller, &sw->w, key, klen, e, if_rev, session__write_done, sw, why,
                  sizeof why);
    session__submitted(s, sw, err, why);
    return 0;
}

static int session__set(struct session *s, json_int_t id, json_t *msg)
{
    return session__value(s, id, msg, false);
}

static int session__publish(struct session *s, json_int_t id, json_t *msg)
{
    return session__value(s, id, msg, true);
}

static int session__delete(struct session *s, json_int_t id, json_t *msg)
{
    size_t len;
    int64_t if_rev;
    char why[512];
    const char *key = session__field(s, id, msg, "key", &len);
    if (key == NULL || session__if_rev(s, id, msg, &if_rev) != 0)
        return 0;
    struct session__write *sw = session__write_new(s, id, msg, NULL);
    if (sw == NULL)
        return 0;
    int err = ops_delete(s->ops, &s->caller, &sw->w, key, len, if_rev, false, session__write_done,
                         sw, why, sizeof why);
    session__submitted(s, sw, err, why);
    return 0;
}

/* ---- subscriptions: a feed each, written to the connection ---- */

static void session__add_event(void *arg, struct buf *b, const struct feed_event *ev)
{
    struct csub *cs = arg;
    char head[64];
    if (b->len > 0) /* a snapshot's chunk: one message a line */
        buf_add(b, "\n", 1);
    snprintf(head, sizeof head, "{\"type\":\"event\",\"sub\":%llu,", (unsigned long long)cs->id);
    feed_add_envelope(b, ev, "content_type", head);
}

static void session__add_sync(void *arg, struct buf *b, int64_t rev)
{
    struct csub *cs = arg;
    buf_addf(b, "{\"type\":\"sync\",\"sub\":%llu,\"rev\":%lld}", (unsigned long long)cs->id,
             (long long)rev);
}

static bool session__write(void *arg, struct buf *b)
{
    struct csub *cs = arg;
    return conn_send_buf(cs->session->conn, b);
}

static void session__fail(void *arg, int err, const char *message)
{
    struct csub *cs = arg;
    session__end(cs->session->conn, err, message);
}

/* Over a line transport the snapshot goes in chunks of many lines; a
 * WebSocket takes one message a frame. */
static const struct feed_sink session__lines_sink = {.add_event = session__add_event,
                                                     .add_sync = session__add_sync,
                                                     .write = session__write,
                                                     .fail = session__fail,
                                                     .chunk = SESSION_CHUNK};
static const struct feed_sink session__ws_sink = {.add_event = session__add_event,
                                                  .add_sync = session__add_sync,
                                                  .write = session__write,
                                                  .fail = session__fail};

static int session__subscribe(struct session *s, json_int_t id, json_t *msg)
{
    size_t plen;
    char why[512];
    const char *pat = session__field(s, id, msg, "pattern", &plen);
    json_t *live = json_object_get(msg, "live_only"), *unique = json_object_get(msg, "unique");
    json_t *jsince = json_object_get(msg, "since"), *jstart = json_object_get(msg, "start");
    struct session__args args = {.msg = msg};
    const char *start = session__arg(&args, "start"); /* µs (a number) or RFC 3339 */
    struct store_labels labels;
    int64_t start_us = 0;
    if (pat == NULL)
        return 0;
    if ((live && !json_is_boolean(live)) || (unique && !json_is_boolean(unique))) {
        session__error(s, &id, STORE_EBADREQ, "live_only and unique are true or false");
        return 0;
    }
    if (jsince != NULL && (!json_is_integer(jsince) || json_integer_value(jsince) < 0)) {
        session__error(s, &id, STORE_EBADREQ, "since is a rev (0 or more)");
        return 0;
    }
    if (start != NULL && !json_is_integer(jstart) && !json_is_string(jstart)) {
        session__error(s, &id, STORE_EBADREQ,
                       "start is a time: µs since the epoch (a number) or RFC 3339 (a string)");
        return 0;
    }
    if ((start != NULL && envelope_time("start", start, &start_us, why, sizeof why) != 0) ||
        envelope_label_filters(msg, &labels, why, sizeof why) != 0) {
        session__error(s, &id, STORE_EBADREQ, "%s", why);
        return 0;
    }
    unsigned max = ops_config(s->ops)->max_subscriptions;
    if (s->nsubs >= max) {
        session__error(s, &id, STORE_EBADREQ, "a session has at most %u subscriptions", max);
        return 0;
    }
    struct csub *cs = calloc(1, sizeof *cs + plen + 1);
    if (cs == NULL) {
        session__error(s, &id, STORE_EINTERNAL, "out of memory");
        return 0;
    }
    cs->session = s;
    cs->id = s->next_sub + 1;
    memcpy(cs->pattern, pat, plen);
    cs->pattern[plen] = '\0';
    cs->plen = plen;
    struct feed_request rq = {.pattern = pat,
                              .plen = plen,
                              .unique = json_is_true(unique),
                              .live_only = json_is_true(live),
                              .since = jsince ? json_integer_value(jsince) : -1,
                              .from_start = start != NULL,
                              .start = start_us,
                              .labels = &labels};
    int err = ops_subscribe(s->ops, &s->caller, &rq,
                            s->caller.transport == STORE_ORIGIN_WS ? &session__ws_sink
                                                                   : &session__lines_sink,
                            cs, &cs->feed, why, sizeof why);
    if (err != STORE_OK) {
        free(cs);
        session__error(s, &id, err, "%s", why);
        return 0;
    }
    s->next_sub++;
    cs->next = s->subs;
    s->subs = cs;
    s->nsubs++;
    struct buf b = {0};
    buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld,\"sub\":%llu}", (long long)id,
             (unsigned long long)cs->id);
    session__send(s, &b);
    feed_start(cs->feed); /* invariant 1 */
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
    csub__free(s, cs);
    session__ok(s, id);
    return 0;
}

static int session__auth_request(struct session *s, json_int_t id, json_t *msg)
{
    if (session__auth(s, &id, json_object_get(msg, "token")) == 0) {
        struct buf b = {0};
        buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld,\"principal\":", (long long)id);
        buf_add_jstr(&b, s->caller.principal->name, strlen(s->caller.principal->name));
        buf_adds(&b, "}");
        session__send(s, &b);
    }
    return 0;
}

static int session__ping(struct session *s, json_int_t id, json_t *msg)
{
    struct buf b = {0};
    (void)msg;
    buf_addf(&b, "{\"type\":\"pong\",\"id\":%lld}", (long long)id);
    session__send(s, &b);
    return 0;
}

/* ---- lifetime: will, bye, locks (lifetime.c) ---- */

/* A will's answer, once its record is committed. */
struct session__declared {
    struct conn *conn; /* a reference */
    json_int_t id;
    bool has_id;
    struct buf reply; /* hello's ok, or empty: a plain ok */
};

static void session__declared(void *arg, int err)
{
    struct session__declared *d = arg;
    struct buf b = {0};
    if (err != STORE_OK) {
        if (d->has_id)
            buf_addf(&b, "{\"type\":\"error\",\"id\":%lld,", (long long)d->id);
        else
            buf_adds(&b, "{\"type\":\"error\",\"id\":null,");
        envelope_add_error(&b, err, "the will could not be kept; nothing was declared");
        buf_free(&d->reply);
    } else if (d->reply.len > 0)
        b = d->reply;
    else
        buf_addf(&b, "{\"type\":\"ok\",\"id\":%lld}", (long long)d->id);
    session__send_on(d->conn, &b);
    conn_unref(d->conn);
    free(d);
}

static int session__check_write(void *arg, struct store_op *op, char *why, size_t why_len)
{
    struct session *s = arg;
    return ops_check(s->ops, &s->caller, op, why, why_len);
}

/* Declares the session's will (either part NULL: kept as it was); `reply`
 * (taken over; empty: a plain ok) goes out once it is kept. Returns 0, or
 * -1 after answering an error. */
static int session__declare(struct session *s, const json_int_t *id, json_t *will, json_t *graves,
                            struct buf *reply)
{
    char why[512];
    struct session__declared *d = calloc(1, sizeof *d);
    if (d == NULL) {
        buf_free(reply);
        session__error(s, id, STORE_EINTERNAL, "out of memory");
        return -1;
    }
    d->conn = s->conn;
    d->has_id = id != NULL;
    d->id = id ? *id : 0;
    d->reply = *reply;
    *reply = (struct buf){0};
    conn_ref(s->conn);
    int err =
        will_declare(ops_store(s->ops), s->caller.transport, session__id(s).text, &s->will, will,
                     graves, session__check_write, s, session__declared, d, why, sizeof why);
    if (err != STORE_OK) {
        conn_unref(d->conn);
        buf_free(&d->reply);
        free(d);
        session__error(s, id, err, "%s", why);
        return -1;
    }
    return 0;
}

static int session__will(struct session *s, json_int_t id, json_t *msg)
{
    struct buf none = {0};
    json_t *will = json_object_get(msg, "last_will"), *graves = json_object_get(msg, "grave_goods");
    if (will == NULL && graves == NULL) {
        session__error(s, &id, STORE_EBADREQ, "will takes last_will, grave_goods or both");
        return 0;
    }
    session__declare(s, &id, will, graves, &none);
    return 0;
}

/* A clean end: the will is not set (grave goods still go); the connection
 * closes once the ok is written. */
static int session__bye(struct session *s, json_int_t id, json_t *msg)
{
    (void)msg;
    s->bye = true;
    will_apply(ops_store(s->ops), s->caller.transport, session__id(s).text, &s->will, true);
    will_clear(&s->will); /* done: not again when the socket closes */
    session__ok(s, id);
    return -1;
}

/* A lock granted after a wait, or not in time. */
static void session__granted(void *holder, int64_t id, int err, const char *key)
{
    struct session *s = holder;
    json_int_t jid = (json_int_t)id;
    if (err == STORE_OK)
        session__ok(s, jid);
    else
        session__error(s, &jid, err, "another session held the lock on %s for all of wait_ms", key);
}

static int session__lock(struct session *s, json_int_t id, json_t *msg)
{
    size_t klen;
    char why[512];
    json_t *wait = json_object_get(msg, "wait_ms");
    const char *key = session__field(s, id, msg, "key", &klen);
    if (key == NULL)
        return 0;
    if (wait != NULL && (!json_is_integer(wait) || json_integer_value(wait) < 0 ||
                         json_integer_value(wait) > 3600000)) {
        session__error(s, &id, STORE_EBADREQ, "wait_ms is a number of ms from 0 to 3600000");
        return 0;
    }
    /* A lock needs the right to write its key (as a delete of it would). */
    struct store_op op = {
        .kind = STORE_OP_DELETE, .key = key, .klen = klen, .if_rev = STORE_ANY_REV};
    int err =
        store_key_check(key, klen, store_limits(ops_store(s->ops))->max_key_bytes, why, sizeof why);
    if (err == STORE_OK)
        err = ops_check(s->ops, &s->caller, &op, why, sizeof why);
    bool waiting = false;
    if (err == STORE_OK)
        err = lock_take(ops_locks(s->ops), s, session__id(s).text, key, klen,
                        wait ? json_integer_value(wait) : 0, id, session__granted, &waiting, why,
                        sizeof why);
    if (err != STORE_OK)
        session__error(s, &id, err, "%s", why);
    else if (!waiting)
        session__ok(s, id);
    return 0;
}

static int session__unlock(struct session *s, json_int_t id, json_t *msg)
{
    size_t klen;
    const char *key = session__field(s, id, msg, "key", &klen);
    if (key == NULL)
        return 0;
    if (lock_release(ops_locks(s->ops), s, key, klen) == STORE_OK)
        session__ok(s, id);
    else
        session__error(s, &id, STORE_ENOTFOUND, "this session holds no lock on %.*s", (int)klen,
                       key);
    return 0;
}

/* The requests of protocol 1 (API.md "Session protocol") and the fields
 * each takes besides "type" and "id"; session__v1 refuses any other field
 * before the handler runs. A new field of a request is a name in its row
 * (ttl on set; labels, exclude_labels and start on subscribe), read by its
 * handler; a new request is a row of its own. */
static const struct {
    const char *type;
    int (*handle)(struct session *s, json_int_t id, json_t *msg);
    const char *fields[STRICT_NAMES_MAX]; /* NULL-terminated when fewer */
} session__v1_requests[] = {
    {"get", session__get, {"key"}},
    {"pget", session__pget, {"pattern", "limit", "after", "contains"}},
    {"set",
     session__set,
     {"key", "value", "text", "base64", "content_type", "labels", "if_rev", "ttl"}},
    {"publish", session__publish, {"key", "value", "text", "base64", "content_type", "labels"}},
    {"delete", session__delete, {"key", "if_rev"}},
    {"ls", session__ls, {"key"}},
    {"history",
     session__history,
     {"pattern", "start", "stop", "limit", "order", "after", "every", "labels", "exclude_labels"}},
    {"subscribe",
     session__subscribe,
     {"pattern", "live_only", "unique", "since", "start", "labels", "exclude_labels"}},
    {"unsubscribe", session__unsubscribe, {"sub"}},
    {"auth", session__auth_request, {"token"}},
    {"ping", session__ping, {NULL}},
    {"will", session__will, {"last_will", "grave_goods"}},
    {"bye", session__bye, {NULL}},
    {"lock", session__lock, {"key", "wait_ms"}},
    {"unlock", session__unlock, {"key"}},
};

static int session__v1(struct session *s, const char *type, json_int_t id, json_t *msg)
{
    for (size_t i = 0; i < sizeof session__v1_requests / sizeof session__v1_requests[0]; i++) {
        if (strcmp(type, session__v1_requests[i].type) != 0)
            continue;
        if (session__known_fields(s, &id, msg, type, session__v1_requests[i].fields) != 0)
            return 0;
        return session__v1_requests[i].handle(s, id, msg);
    }
    session__error(s, &id, STORE_EBADREQ, "unknown request type '%s'", type);
    return 0;
}
