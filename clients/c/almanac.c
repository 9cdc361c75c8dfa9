/*
 * almanac.c — libalmanac: the session protocol of API.md from the client's
 * side, over a TCP socket (with TLS when asked) or a Unix socket, and the
 * HTTP routes the session protocol does not carry.
 *
 * A handle holds one connection, read one line (one message) at a time.
 * A request is sent with the next id and its reply is the message with that
 * id; whatever else arrives meanwhile (events, syncs, a subscription's end)
 * is made into events and queued, in order, for almanac_next_event() and
 * almanac_dispatch().
 *
 * Messages are read with a small reader of our own (almanac__j*), not
 * jansson: an envelope's "value" is the stored JSON's own text, which must
 * reach the user as it is (jansson would reformat numbers, and refuses an
 * integer beyond 64 bits that the server happily stores). Requests are
 * built with jansson; a value always travels as base64, so every byte
 * arrives as it was given.
 *
 * Invariants:
 *   1. one request is in flight at a time (the calls are synchronous), so
 *      a reply is found by its id alone; a late reply to a request that
 *      timed out is dropped;
 *   2. queued events keep the server's order; a subscription's events are
 *      never reordered by the callback/next_event split (each consumer
 *      takes its own in order);
 *   3. a subscription's `last_rev` only moves while its events are in rev
 *      order (after its sync, or during a `since`/`start` replay), and
 *      never for a transient publish, so resuming with `since = last_rev`
 *      repeats nothing and skips nothing (API.md: after the sync every
 *      event has a higher rev and none is skipped);
 *   4. the link is closed (fd -1) exactly when the connection is lost or
 *      the handle has none; a lost connection is reopened only at the start
 *      of a call, never inside the reading of a reply.
 */
#include "almanac.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

#define ALMANAC__CONNECT_MS  15000 /* the welcome and hello, when no timeout_ms is set */
#define ALMANAC__PAGE        1000  /* entries a pget page */
#define ALMANAC__HISTORY_MAX 10000 /* records a history page, the session's limit */
#define ALMANAC__BACKOFF_MAX 5000  /* ms between reconnection attempts, at most */

/* ---- the reader of server messages ---- */

/* A JSON value's text: p[0..n). */
struct almanac__j {
    const char *p;
    size_t n;
};

static size_t almanac__jws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return i;
}

/* The index past the value that starts at s[i], or SIZE_MAX when it is not
 * one. Strings are skipped escape by escape, so a bracket inside one does
 * not count. */
static size_t almanac__jskip(const char *s, size_t n, size_t i)
{
    size_t depth = 0;
    if (i >= n)
        return SIZE_MAX;
    if (s[i] != '"' && s[i] != '{' && s[i] != '[') {
        size_t j = i;
        while (j < n && s[j] != ',' && s[j] != '}' && s[j] != ']' && s[j] != ' ' && s[j] != '\n' &&
               s[j] != '\r' && s[j] != '\t' && s[j] != ':')
            j++;
        return j > i ? j : SIZE_MAX;
    }
    for (; i < n; i++) {
        if (s[i] == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            if (i >= n)
                return SIZE_MAX;
            if (depth == 0)
                return i + 1;
        } else if (s[i] == '{' || s[i] == '[')
            depth++;
        else if ((s[i] == '}' || s[i] == ']') && --depth == 0)
            return i + 1; /* the first character opened it: depth was at least 1 */
    }
    return SIZE_MAX;
}

/* Walks an object's members or an array's items. */
struct almanac__jit {
    const char *s;
    size_t n, i;
    bool done;
};

static bool almanac__jopen(struct almanac__jit *it, struct almanac__j v, char open)
{
    it->s = v.p;
    it->n = v.n;
    it->i = 1;
    it->done = v.n < 2 || v.p[0] != open;
    return !it->done;
}

/* The next member (`name` with its quotes) or item (`name` NULL). */
static bool almanac__jnext(struct almanac__jit *it, struct almanac__j *name,
                           struct almanac__j *value)
{
    const char *s = it->s;
    size_t i = almanac__jws(s, it->n, it->i);
    if (it->done || i >= it->n || s[i] == '}' || s[i] == ']') {
        it->done = true;
        return false;
    }
    if (name != NULL) {
        size_t end = s[i] == '"' ? almanac__jskip(s, it->n, i) : SIZE_MAX;
        if (end == SIZE_MAX)
            goto bad;
        *name = (struct almanac__j){s + i, end - i};
        i = almanac__jws(s, it->n, end);
        if (i >= it->n || s[i] != ':')
            goto bad;
        i = almanac__jws(s, it->n, i + 1);
    }
    size_t end = almanac__jskip(s, it->n, i);
    if (end == SIZE_MAX)
        goto bad;
    *value = (struct almanac__j){s + i, end - i};
    i = almanac__jws(s, it->n, end);
    if (i < it->n && s[i] == ',')
        i++;
    it->i = i;
    return true;
bad:
    it->done = true;
    return false;
}

/* The member `name` (plain ASCII, no escapes) of object `obj`. */
static bool almanac__jget(struct almanac__j obj, const char *name, struct almanac__j *out)
{
    struct almanac__jit it;
    struct almanac__j k, v;
    size_t len = strlen(name);
    almanac__jopen(&it, obj, '{');
    while (almanac__jnext(&it, &k, &v))
        if (k.n == len + 2 && memcmp(k.p + 1, name, len) == 0) {
            *out = v;
            return true;
        }
    return false;
}

static bool almanac__jis(struct almanac__j v, const char *literal)
{
    return v.n == strlen(literal) && memcmp(v.p, literal, v.n) == 0;
}

static bool almanac__jint(struct almanac__j v, int64_t *out)
{
    char num[32];
    char *end;
    if (v.n == 0 || v.n >= sizeof num || (v.p[0] != '-' && (v.p[0] < '0' || v.p[0] > '9')))
        return false;
    memcpy(num, v.p, v.n);
    num[v.n] = '\0';
    errno = 0;
    long long x = strtoll(num, &end, 10);
    if (*end != '\0' || errno != 0)
        return false;
    *out = x;
    return true;
}

static void almanac__utf8(char *out, size_t *o, unsigned long cp)
{
    if (cp < 0x80)
        out[(*o)++] = (char)cp;
    else if (cp < 0x800) {
        out[(*o)++] = (char)(0xc0 | (cp >> 6));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xe0 | (cp >> 12));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*o)++] = (char)(0xf0 | (cp >> 18));
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*o)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static bool almanac__hex4(const char *p, unsigned long *out)
{
    char h[5];
    char *end;
    memcpy(h, p, 4);
    h[4] = '\0';
    *out = strtoul(h, &end, 16);
    return *end == '\0';
}

/* A JSON string's text, unescaped: a new NUL-terminated string (it may hold
 * NULs of its own: `len`), or NULL when `v` is not a string or memory ran
 * out. */
static char *almanac__jstr(struct almanac__j v, size_t *len)
{
    if (v.n < 2 || v.p[0] != '"')
        return NULL;
    char *out = malloc(v.n);
    size_t o = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 1; i + 1 < v.n; i++) {
        char c = v.p[i];
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        if (++i + 1 >= v.n)
            goto bad;
        switch (v.p[i]) {
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            unsigned long cp, lo;
            if (i + 5 > v.n - 1 || !almanac__hex4(v.p + i + 1, &cp))
                goto bad;
            i += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && i + 7 <= v.n - 1 && v.p[i + 1] == '\\' &&
                v.p[i + 2] == 'u' && almanac__hex4(v.p + i + 3, &lo) && lo >= 0xdc00 &&
                lo < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
            almanac__utf8(out, &o, cp);
            break;
        }
        default:
            out[o++] = v.p[i];
            break; /* " \ / */
        }
    }
    out[o] = '\0';
    if (len != NULL)
        *len = o;
    return out;
bad:
    free(out);
    return NULL;
}

/* A string member of `obj` as a new string, or NULL. */
static char *almanac__jstr_of(struct almanac__j obj, const char *name)
{
    struct almanac__j v;
    return almanac__jget(obj, name, &v) ? almanac__jstr(v, NULL) : NULL;
}

static int64_t almanac__jint_of(struct almanac__j obj, const char *name)
{
    struct almanac__j v;
    int64_t x = 0;
    if (almanac__jget(obj, name, &v))
        almanac__jint(v, &x);
    return x;
}

static bool almanac__jtrue_of(struct almanac__j obj, const char *name)
{
    struct almanac__j v;
    return almanac__jget(obj, name, &v) && almanac__jis(v, "true");
}

/* ---- errors ---- */

static const struct {
    const char *name;
    int err;
} almanac__server_codes[] = {
    {"invalid_key", ALMANAC_EINVALIDKEY},    {"invalid_pattern", ALMANAC_EINVALIDPATTERN},
    {"invalid_body", ALMANAC_EINVALIDBODY},  {"bad_request", ALMANAC_EBADREQUEST},
    {"unauthorized", ALMANAC_EUNAUTHORIZED}, {"forbidden", ALMANAC_EFORBIDDEN},
    {"read_only", ALMANAC_EREADONLY},        {"not_found", ALMANAC_ENOTFOUND},
    {"rev_mismatch", ALMANAC_EREVMISMATCH},  {"history_gone", ALMANAC_EHISTORYGONE},
    {"too_large", ALMANAC_ETOOLARGE},        {"rate_limited", ALMANAC_ERATELIMITED},
    {"unavailable", ALMANAC_EUNAVAILABLE},   {"storage_full", ALMANAC_ESTORAGEFULL},
    {"internal", ALMANAC_EINTERNAL},         {"protocol_unsupported", ALMANAC_EPROTOCOL},
    {"too_slow", ALMANAC_ETOOSLOW},          {"locked", ALMANAC_ELOCKED},
};

API const char *almanac_strerror(int err)
{
    static const char *const client[] = {
        [ALMANAC_OK] = "done",
        [ALMANAC_EINVAL] = "invalid argument",
        [ALMANAC_ENOMEM] = "out of memory",
        [ALMANAC_ECONNECT] = "cannot connect",
        [ALMANAC_ETLS] = "TLS failed",
        [ALMANAC_ECLOSED] = "the connection closed",
        [ALMANAC_ETIMEDOUT] = "timed out",
        [ALMANAC_EPROTO] = "the server's message was not understood",
        [ALMANAC_ESTOPPED] = "stopped by the callback",
        [ALMANAC_ESERVER] = "the server refused",
    };
    if (err >= 0 && err < (int)(sizeof client / sizeof client[0]))
        return client[err];
    for (size_t i = 0; i < sizeof almanac__server_codes / sizeof almanac__server_codes[0]; i++)
        if (almanac__server_codes[i].err == err)
            return almanac__server_codes[i].name;
    return "unknown error";
}

static int almanac__code(const char *name)
{
    for (size_t i = 0; i < sizeof almanac__server_codes / sizeof almanac__server_codes[0]; i++)
        if (name != NULL && strcmp(almanac__server_codes[i].name, name) == 0)
            return almanac__server_codes[i].err;
    return ALMANAC_ESERVER;
}

/* ---- the handle ---- */

struct almanac__link {
    int fd; /* -1: none */
    SSL *ssl;
};

/* Bytes read and not yet taken: p[start..end). */
struct almanac__in {
    char *p;
    size_t start, end, cap, scanned;
};

/* An entry and the memory behind its pointers (pub first: the user's
 * pointer is this struct's). */
struct almanac__entry {
    struct almanac_entry pub;
    char *key, *content_type, *origin, *json;
    char *value;
    struct almanac_label *labels;
};

struct almanac__event {
    struct almanac__event *next;
    struct almanac_event pub;
    struct almanac__entry *entry;
    char *message;
    almanac_event_fn callback; /* the subscription's, when it was queued */
    void *arg;
};

struct almanac__sub {
    struct almanac__sub *next;
    unsigned id;        /* the user's number, the same across connections */
    int64_t server_id;  /* its number on this connection; 0: none */
    json_t *base;       /* the subscribe request but for id, since and start */
    int64_t orig_since; /* what the user asked */
    char *orig_start;
    almanac_event_fn callback;
    void *arg;
    bool synced;  /* has had its sync since its last snapshot began */
    bool ordered; /* its events now come in rev order (invariant 3) */
    bool shown;   /* it delivered entries since its last snapshot began */
    int64_t last_rev;
};

struct almanac {
    char *address; /* NULL: no session */
    bool unix_socket;
    char host[256], port[32], path[108];
    char *token, *cafile, *http;
    bool tls;
    int timeout_ms;
    bool no_reconnect;

    struct almanac__link link;
    struct almanac__in in;
    int64_t next_id;
    char client_id[64];
    bool dead; /* resubscribing failed for good: calls fail with dead_err */
    int dead_err;
    char closing[512]; /* what the server said as it ended the connection */
    int closing_err;

    struct almanac__sub *subs;
    unsigned next_sub;
    struct almanac__event *head, *tail;
    struct almanac__event *current; /* the last almanac_next_event's */

    int err;
    char msg[512];
    char server_err[64];
};

static int almanac__fail(struct almanac *a, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int almanac__fail(struct almanac *a, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->msg, sizeof a->msg, fmt, ap);
    va_end(ap);
    a->err = err;
    return err;
}

/* Records the server's refusal in `msg` (an error message). */
static int almanac__refused(struct almanac *a, struct almanac__j msg)
{
    char *code = almanac__jstr_of(msg, "error"), *text = almanac__jstr_of(msg, "message");
    snprintf(a->server_err, sizeof a->server_err, "%s", code ? code : "internal");
    int err = almanac__fail(a, almanac__code(code), "%s", text ? text : "");
    free(code);
    free(text);
    return err;
}

static void almanac__clear(struct almanac *a)
{
    a->err = ALMANAC_OK;
    a->msg[0] = '\0';
    a->server_err[0] = '\0';
}

static int64_t almanac__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The deadline of a wait of `ms` (negative: none, -1 returned). */
static int64_t almanac__deadline(int ms)
{
    return ms < 0 ? -1 : almanac__now_ms() + ms;
}

static int64_t almanac__request_deadline(const struct almanac *a)
{
    return a->timeout_ms > 0 ? almanac__deadline(a->timeout_ms) : -1;
}

/* ---- entries ---- */

API void almanac_entry_free(struct almanac_entry *pub)
{
    struct almanac__entry *e = (struct almanac__entry *)pub;
    if (e == NULL)
        return;
    free(e->key);
    free(e->content_type);
    free(e->origin);
    free(e->json);
    free(e->value);
    for (size_t i = 0; i < e->pub.nlabels; i++) {
        free((char *)e->labels[i].name);
        free((char *)e->labels[i].value);
    }
    free(e->labels);
    free(e);
}

/* The API envelope of a session envelope: its members in their order and
 * text, but for the message's own "type", "id" and "sub", with
 * "content_type" named "type" again (API.md). */
static char *almanac__api_json(struct almanac__j env, size_t *len)
{
    struct almanac__jit it;
    struct almanac__j k, v;
    char *out = malloc(env.n + 2), *o = out;
    if (out == NULL)
        return NULL;
    *o++ = '{';
    almanac__jopen(&it, env, '{');
    while (almanac__jnext(&it, &k, &v)) {
        if (almanac__jis(k, "\"type\"") || almanac__jis(k, "\"id\"") || almanac__jis(k, "\"sub\""))
            continue;
        if (o > out + 1)
            *o++ = ',';
        if (almanac__jis(k, "\"content_type\"")) {
            memcpy(o, "\"type\"", 6);
            o += 6;
        } else {
            memcpy(o, k.p, k.n);
            o += k.n;
        }
        *o++ = ':';
        memcpy(o, v.p, v.n);
        o += v.n;
    }
    *o++ = '}';
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
}

static int almanac__labels(struct almanac__entry *e, struct almanac__j obj)
{
    struct almanac__jit it;
    struct almanac__j k, v;
    size_t n = 0;
    almanac__jopen(&it, obj, '{');
    while (almanac__jnext(&it, &k, &v))
        n++;
    if (n == 0)
        return 0;
    if ((e->labels = calloc(n, sizeof *e->labels)) == NULL)
        return -1;
    almanac__jopen(&it, obj, '{');
    while (e->pub.nlabels < n && almanac__jnext(&it, &k, &v)) {
        struct almanac_label *l = &e->labels[e->pub.nlabels++];
        l->name = almanac__jstr(k, NULL);
        l->value = almanac__jstr(v, NULL);
        if (l->name == NULL || l->value == NULL)
            return -1;
    }
    e->pub.labels = e->labels;
    return 0;
}

/* The value of an envelope, decoded into e->value. */
static int almanac__value(struct almanac__entry *e, struct almanac__j env)
{
    struct almanac__j v;
    size_t len = 0;
    if (almanac__jget(env, "value", &v)) { /* JSON: its own text */
        if ((e->value = malloc(v.n + 1)) == NULL)
            return -1;
        memcpy(e->value, v.p, v.n);
        len = v.n;
        e->pub.is_text = true;
    } else if (almanac__jget(env, "text", &v)) {
        if ((e->value = almanac__jstr(v, &len)) == NULL)
            return -1;
        e->pub.is_text = true;
    } else if (almanac__jget(env, "base64", &v)) {
        size_t n;
        char *b64 = almanac__jstr(v, &n);
        if (b64 == NULL || n % 4 != 0 || n > INT32_MAX ||
            (e->value = malloc(n / 4 * 3 + 1)) == NULL) {
            free(b64);
            return -1;
        }
        int got = EVP_DecodeBlock((unsigned char *)e->value, (unsigned char *)b64, (int)n);
        if (got < 0) {
            free(b64);
            return -1;
        }
        len = (size_t)got - (size_t)((n > 0 && b64[n - 1] == '=') + (n > 1 && b64[n - 2] == '='));
        free(b64);
    } else
        return 0; /* a deletion */
    e->value[len] = '\0';
    e->pub.value = e->value;
    e->pub.value_len = len;
    return 0;
}

/* An entry made from the envelope `env` (a session's): a new one, or NULL
 * when memory ran out or it is not an envelope. */
static struct almanac__entry *almanac__entry_new(struct almanac__j env)
{
    struct almanac__entry *e = calloc(1, sizeof *e);
    struct almanac__j v;
    if (e == NULL)
        return NULL;
    e->key = almanac__jstr_of(env, "key");
    e->content_type = almanac__jstr_of(env, "content_type");
    e->origin = almanac__jstr_of(env, "origin");
    e->json = almanac__api_json(env, &e->pub.json_len);
    if (e->key == NULL || e->json == NULL || almanac__value(e, env) != 0 ||
        (almanac__jget(env, "labels", &v) && almanac__labels(e, v) != 0)) {
        almanac_entry_free(&e->pub);
        return NULL;
    }
    e->pub.key = e->key;
    e->pub.content_type = e->content_type;
    e->pub.origin = e->origin;
    e->pub.json = e->json;
    e->pub.rev = almanac__jint_of(env, "rev");
    e->pub.ts = almanac__jint_of(env, "ts");
    e->pub.expires = almanac__jint_of(env, "expires");
    e->pub.deleted = almanac__jtrue_of(env, "deleted");
    e->pub.created = almanac__jtrue_of(env, "created");
    e->pub.transient = almanac__jtrue_of(env, "transient");
    return e;
}

/* Gives each envelope of the array `list` to `fn`; `*left` (when not
 * NULL) counts down and ends the walk at 0. */
static int almanac__each(struct almanac *a, struct almanac__j list, almanac_entry_fn fn, void *arg,
                         uint64_t *left)
{
    struct almanac__jit it;
    struct almanac__j v;
    almanac__jopen(&it, list, '[');
    while ((left == NULL || *left > 0) && almanac__jnext(&it, NULL, &v)) {
        struct almanac__entry *e = almanac__entry_new(v);
        if (e == NULL)
            return almanac__fail(a, ALMANAC_ENOMEM, "out of memory, or an entry not understood");
        int stop = fn(arg, &e->pub);
        almanac_entry_free(&e->pub);
        if (left != NULL)
            (*left)--;
        if (stop != 0)
            return almanac__fail(a, ALMANAC_ESTOPPED, "stopped by the callback");
    }
    return ALMANAC_OK;
}

/* ---- the link: a socket, with TLS over it ---- */

/* Waits for `events` on `fd` until `deadline` (-1: none): 1 ready, 0 the
 * time passed, -1 an error. */
static int almanac__wait(int fd, short events, int64_t deadline)
{
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - almanac__now_ms();
            ms = left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
        if (r == 0 && deadline >= 0 && almanac__now_ms() >= deadline)
            return 0;
    }
}

static void almanac__link_close(struct almanac__link *k)
{
    SSL_free(k->ssl); /* no close_notify: the peer may be gone, and a write could fail */
    if (k->fd >= 0)
        close(k->fd);
    k->ssl = NULL;
    k->fd = -1;
}

/* Reads into `buf`: the bytes read, 0 at the end, -1 on an error, -2 when
 * the deadline passed. */
static ssize_t almanac__link_read(struct almanac__link *k, char *buf, size_t cap, int64_t deadline)
{
    for (;;) {
        short want = POLLIN;
        if (k->ssl != NULL) {
            size_t n = 0;
            ERR_clear_error();
            int r = SSL_read_ex(k->ssl, buf, cap, &n);
            if (r == 1)
                return (ssize_t)n;
            int e = SSL_get_error(k->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN)
                return 0;
            if (e == SSL_ERROR_WANT_WRITE)
                want = POLLOUT;
            else if (e != SSL_ERROR_WANT_READ)
                return e == SSL_ERROR_SYSCALL && errno == 0 ? 0 : -1;
        } else {
            ssize_t r = recv(k->fd, buf, cap, 0);
            if (r >= 0)
                return r;
            if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
        }
        int w = almanac__wait(k->fd, want, deadline);
        if (w <= 0)
            return w == 0 ? -2 : -1;
    }
}

/* Writes all of `buf`: 0, -1 on an error, -2 when the deadline passed. */
static int almanac__link_write(struct almanac__link *k, const char *buf, size_t len,
                               int64_t deadline)
{
    int rc = 0;
    sigset_t sigpipe, old, pending;
    bool was_pending = false;
    if (k->ssl != NULL) { /* OpenSSL writes with write(2): no MSG_NOSIGNAL */
        sigemptyset(&sigpipe);
        sigaddset(&sigpipe, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &sigpipe, &old);
        was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    }
    while (len > 0 && rc == 0) {
        short want = POLLOUT;
        if (k->ssl != NULL) {
            size_t n = 0;
            ERR_clear_error();
            int r = SSL_write_ex(k->ssl, buf, len, &n);
            if (r == 1) {
                buf += n;
                len -= n;
                continue;
            }
            int e = SSL_get_error(k->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                want = POLLIN;
            else if (e != SSL_ERROR_WANT_WRITE) {
                rc = -1;
                break;
            }
        } else {
            ssize_t w = send(k->fd, buf, len, MSG_NOSIGNAL);
            if (w >= 0) {
                buf += w;
                len -= (size_t)w;
                continue;
            }
            if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
                rc = -1;
                break;
            }
        }
        int r = almanac__wait(k->fd, want, deadline);
        if (r <= 0)
            rc = r == 0 ? -2 : -1;
    }
    if (k->ssl != NULL) {
        if (!was_pending) { /* take back a SIGPIPE of ours, then unblock */
            struct timespec zero = {0, 0};
            while (sigtimedwait(&sigpipe, NULL, &zero) == SIGPIPE)
                ;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return rc;
}

/* Splits "HOST:PORT", "[V6]:PORT" (after a scheme) into host and port. */
static int almanac__host_port(const char *spec, char *host, size_t hlen, char *port, size_t plen)
{
    const char *colon = strrchr(spec, ':');
    const char *h = spec;
    size_t n;
    if (colon == NULL || colon[1] == '\0')
        return -1;
    n = (size_t)(colon - spec);
    if (spec[0] == '[') {
        if (n < 2 || spec[n - 1] != ']')
            return -1;
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hlen || strlen(colon + 1) >= plen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    snprintf(port, plen, "%s", colon + 1);
    return 0;
}

/* TLS over k->fd to `host`: the certificate must verify against `cafile`
 * (else the system's trust store) and name `host`, an IP literal as an
 * address, a name as a name (also sent as SNI). */
static int almanac__tls(struct almanac *a, struct almanac__link *k, const char *host,
                        const char *server)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (ctx == NULL)
        return almanac__fail(a, ALMANAC_ETLS, "TLS: cannot start TLS to %s", server);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* A peer that closes without close_notify has ended, not failed: a
     * session's messages end with a newline and an HTTP/1.1 answer has a
     * length or chunks, so a cut is seen anyway. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    if (a->cafile != NULL ? SSL_CTX_load_verify_locations(ctx, a->cafile, NULL) != 1
                          : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        almanac__fail(a, ALMANAC_ETLS, "TLS: cannot read the certificates of %s",
                      a->cafile ? a->cafile : "the system's trust store");
        goto fail;
    }
    if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, k->fd) != 1 ||
        (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1 &&
         (SSL_set1_host(ssl, host) != 1 || SSL_set_tlsext_host_name(ssl, host) != 1))) {
        almanac__fail(a, ALMANAC_ETLS, "TLS: cannot start TLS to %s", server);
        goto fail;
    }
    ERR_clear_error(); /* what set1_ip_asc said of a name */
    if (SSL_connect(ssl) != 1) {
        long verify = SSL_get_verify_result(ssl);
        const char *reason = ERR_reason_error_string(ERR_get_error());
        if (verify != X509_V_OK)
            almanac__fail(a, ALMANAC_ETLS, "TLS: certificate verify failed for %s: %s", server,
                          X509_verify_cert_error_string(verify));
        else
            almanac__fail(a, ALMANAC_ETLS, "TLS: no TLS connection to %s: %s", server,
                          reason ? reason : "the server closed the connection");
        goto fail;
    }
    SSL_CTX_free(ctx); /* the SSL holds it */
    k->ssl = ssl;
    return ALMANAC_OK;
fail:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return a->err;
}

/* Connects `k` to a Unix socket `path`, or to host:port (with TLS when
 * `tls`); `server` names it in messages. Blocking until connected, then
 * non-blocking. */
static int almanac__dial(struct almanac *a, struct almanac__link *k, const char *path,
                         const char *host, const char *port, bool tls, const char *server)
{
    k->fd = -1;
    k->ssl = NULL;
    if (path != NULL) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
        k->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (k->fd < 0 || connect(k->fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
            almanac__fail(a, ALMANAC_ECONNECT, "cannot connect to %s: %s", server, strerror(errno));
            almanac__link_close(k);
            return a->err;
        }
    } else {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        int gai = getaddrinfo(host, port, &hints, &ai), saved = 0;
        if (gai != 0)
            return almanac__fail(a, ALMANAC_ECONNECT, "%s: %s", server, gai_strerror(gai));
        for (struct addrinfo *p = ai; p != NULL && k->fd < 0; p = p->ai_next) {
            k->fd = socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (k->fd >= 0 && connect(k->fd, p->ai_addr, p->ai_addrlen) != 0) {
                saved = errno;
                close(k->fd);
                k->fd = -1;
            }
        }
        freeaddrinfo(ai);
        if (k->fd < 0)
            return almanac__fail(a, ALMANAC_ECONNECT, "cannot connect to %s: %s", server,
                                 strerror(saved ? saved : errno));
        int one = 1; /* a request is one small write: no Nagle delay */
        setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (tls && almanac__tls(a, k, host, server) != ALMANAC_OK) {
            almanac__link_close(k);
            return a->err;
        }
    }
    fcntl(k->fd, F_SETFL, fcntl(k->fd, F_GETFL) | O_NONBLOCK);
    return ALMANAC_OK;
}

/* ---- input: lines and bytes ---- */

/* Reads more into `in`: >0, 0 at the end, -1 an error, -2 the time passed. */
static ssize_t almanac__fill(struct almanac__link *k, struct almanac__in *in, int64_t deadline)
{
    if (in->start == in->end) {
        in->start = in->end = in->scanned = 0;
    } else if (in->start > 0 && in->cap - in->end < 4096) {
        memmove(in->p, in->p + in->start, in->end - in->start);
        in->end -= in->start;
        in->scanned = in->scanned > in->start ? in->scanned - in->start : 0;
        in->start = 0;
    }
    if (in->cap - in->end < 4096) {
        size_t cap = in->cap ? in->cap * 2 : 65536;
        char *p = realloc(in->p, cap);
        if (p == NULL)
            return -1;
        in->p = p;
        in->cap = cap;
    }
    ssize_t n = almanac__link_read(k, in->p + in->end, in->cap - in->end, deadline);
    if (n > 0)
        in->end += (size_t)n;
    return n;
}

/* The next line, without its newline, in a new string (`*len` bytes): 1,
 * or 0 at the end, -1 on an error, -2 when the time passed. */
static int almanac__line(struct almanac__link *k, struct almanac__in *in, int64_t deadline,
                         char **line, size_t *len)
{
    for (;;) {
        if (in->scanned < in->start)
            in->scanned = in->start;
        char *nl =
            in->end > in->scanned ? memchr(in->p + in->scanned, '\n', in->end - in->scanned) : NULL;
        if (nl != NULL) {
            size_t n = (size_t)(nl - (in->p + in->start));
            if (n > 0 && in->p[in->start + n - 1] == '\r')
                n--;
            if ((*line = malloc(n + 1)) == NULL)
                return -1;
            memcpy(*line, in->p + in->start, n);
            (*line)[n] = '\0';
            *len = n;
            in->start = in->scanned = (size_t)(nl - in->p) + 1;
            return 1;
        }
        in->scanned = in->end;
        ssize_t r = almanac__fill(k, in, deadline);
        if (r <= 0)
            return (int)r;
    }
}

/* Whether a whole line waits in `in`, or TLS holds decrypted bytes. */
static bool almanac__buffered(const struct almanac__link *k, const struct almanac__in *in)
{
    return (in->end > in->start && memchr(in->p + in->start, '\n', in->end - in->start) != NULL) ||
           (k->ssl != NULL && SSL_pending(k->ssl) > 0);
}

/* ---- events ---- */

static struct almanac__sub *almanac__sub_by_server(struct almanac *a, int64_t id)
{
    for (struct almanac__sub *s = a->subs; s != NULL; s = s->next)
        if (s->server_id == id && id > 0)
            return s;
    return NULL;
}

static struct almanac__sub *almanac__sub_by_id(const struct almanac *a, unsigned id)
{
    for (struct almanac__sub *s = a->subs; s != NULL; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void almanac__event_free(struct almanac__event *q)
{
    if (q == NULL)
        return;
    almanac_entry_free(q->entry ? &q->entry->pub : NULL);
    free(q->message);
    free(q);
}

/* Queues an event of `s` (taking `entry`); 0, or -1 out of memory. */
static int almanac__queue(struct almanac *a, struct almanac__sub *s, enum almanac_event_type type,
                          struct almanac__entry *entry, int64_t rev, int err, const char *message)
{
    struct almanac__event *q = calloc(1, sizeof *q);
    if (q == NULL || (message != NULL && (q->message = strdup(message)) == NULL)) {
        free(q);
        almanac_entry_free(entry ? &entry->pub : NULL);
        return -1;
    }
    q->pub.type = type;
    q->pub.sub = s->id;
    q->entry = entry;
    q->pub.entry = entry ? &entry->pub : NULL;
    q->pub.rev = rev;
    q->pub.error = err;
    q->pub.message = q->message;
    q->callback = s->callback;
    q->arg = s->arg;
    if (a->tail != NULL)
        a->tail->next = q;
    else
        a->head = q;
    a->tail = q;
    return 0;
}

/* The first queued event for a callback (`with_callback`) or for
 * almanac_next_event, taken off the queue; NULL when none (invariant 2). */
static struct almanac__event *almanac__take(struct almanac *a, bool with_callback)
{
    struct almanac__event *prev = NULL;
    for (struct almanac__event *q = a->head; q != NULL; prev = q, q = q->next) {
        if ((q->callback != NULL) != with_callback)
            continue;
        if (prev != NULL)
            prev->next = q->next;
        else
            a->head = q->next;
        if (a->tail == q)
            a->tail = prev;
        q->next = NULL;
        return q;
    }
    return NULL;
}

static void almanac__sub_free(struct almanac__sub *s)
{
    if (s == NULL)
        return;
    json_decref(s->base);
    free(s->orig_start);
    free(s);
}

static void almanac__sub_remove(struct almanac *a, struct almanac__sub *s)
{
    for (struct almanac__sub **p = &a->subs; *p != NULL; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            almanac__sub_free(s);
            return;
        }
}

/* An event, a sync or a subscription's end: queued (invariant 3 kept). */
static void almanac__async(struct almanac *a, struct almanac__j msg, struct almanac__j type)
{
    struct almanac__sub *s = almanac__sub_by_server(a, almanac__jint_of(msg, "sub"));
    if (almanac__jis(type, "\"event\"") && s != NULL) {
        struct almanac__entry *e = almanac__entry_new(msg);
        if (e == NULL)
            return;
        if (s->ordered && !e->pub.transient && e->pub.rev > s->last_rev)
            s->last_rev = e->pub.rev;
        s->shown = true;
        almanac__queue(a, s, e->pub.deleted ? ALMANAC_EVENT_DELETE : ALMANAC_EVENT_PUT, e,
                       e->pub.rev, 0, NULL);
    } else if (almanac__jis(type, "\"sync\"") && s != NULL) {
        int64_t rev = almanac__jint_of(msg, "rev");
        s->synced = s->ordered = true;
        if (rev > s->last_rev)
            s->last_rev = rev;
        almanac__queue(a, s, ALMANAC_EVENT_SYNC, NULL, rev, 0, NULL);
    } else if (almanac__jis(type, "\"error\"")) {
        char *code = almanac__jstr_of(msg, "error"), *text = almanac__jstr_of(msg, "message");
        if (s != NULL) { /* that subscription ended (a new principal may not read it) */
            almanac__queue(a, s, ALMANAC_EVENT_END, NULL, 0, almanac__code(code), text);
            almanac__sub_remove(a, s);
        } else { /* the session ends: too_slow, unauthorized, unavailable */
            snprintf(a->closing, sizeof a->closing, "%s: %s", code ? code : "error",
                     text ? text : "");
            a->closing_err = almanac__code(code);
        }
        free(code);
        free(text);
    } /* else: a late reply, or a message of a newer protocol: dropped */
}

/* The connection is gone (invariant 4). */
static int almanac__lost(struct almanac *a)
{
    almanac__link_close(&a->link);
    a->in.start = a->in.end = a->in.scanned = 0;
    for (struct almanac__sub *s = a->subs; s != NULL; s = s->next)
        s->server_id = 0;
    if (a->closing[0] != '\0')
        return almanac__fail(a, ALMANAC_ECLOSED, "the server closed the connection: %s",
                             a->closing);
    return almanac__fail(a, ALMANAC_ECLOSED, "the server closed the connection");
}

/* Reads one message: the reply to request `id` (*line, *reply: the
 * caller's to free) returns 1; anything else is handled and returns 0;
 * otherwise an error code (negated): the connection lost, the time
 * passed. */
static int almanac__read(struct almanac *a, int64_t id, int64_t deadline, char **out,
                         struct almanac__j *reply)
{
    char *line;
    size_t len;
    int r = almanac__line(&a->link, &a->in, deadline, &line, &len);
    if (r == -2)
        return -almanac__fail(a, ALMANAC_ETIMEDOUT, "no answer in time");
    if (r <= 0)
        return -almanac__lost(a);
    struct almanac__j msg = {line, len}, type, jid;
    int64_t got = -1;
    if (!almanac__jget(msg, "type", &type)) {
        free(line);
        return 0;
    }
    if (id > 0 && almanac__jget(msg, "id", &jid) && almanac__jint(jid, &got) && got == id &&
        !almanac__jis(type, "\"event\"")) {
        *out = line;
        *reply = msg;
        return 1;
    }
    almanac__async(a, msg, type);
    free(line);
    return 0;
}

/* ---- requests ---- */

static int almanac__reconnect(struct almanac *a);

/* Reads what already waits on the connection (events, or the end of a
 * connection the server closed while the handle was idle), so that a
 * request is not sent into a connection known to be gone. */
static void almanac__drain(struct almanac *a)
{
    while (a->link.fd >= 0 && (almanac__buffered(&a->link, &a->in) ||
                               almanac__wait(a->link.fd, POLLIN, almanac__now_ms()) == 1)) {
        char *line = NULL;
        struct almanac__j reply;
        int r = almanac__read(a, 0, almanac__now_ms(), &line, &reply);
        free(line);
        if (r == -ALMANAC_ETIMEDOUT)
            break;
    }
}

/* A connection for a request: reopened when lost (unless no_reconnect). */
static int almanac__ready(struct almanac *a)
{
    if (a->address == NULL)
        return almanac__fail(a, ALMANAC_EINVAL, "this handle has no session (address NULL)");
    almanac__drain(a);
    if (a->link.fd >= 0) {
        almanac__clear(a);
        return ALMANAC_OK;
    }
    if (a->dead)
        return almanac__fail(a, a->dead_err, "the connection ended for good: %s", a->closing);
    if (a->no_reconnect)
        return almanac__fail(a, ALMANAC_ECLOSED,
                             "the connection is closed (almanac_resume() reconnects)");
    int rc = almanac__reconnect(a);
    if (rc == ALMANAC_OK)
        almanac__clear(a); /* the loss that led here is mended */
    return rc;
}

/* Sends `req` (taken) with the next id, with `b64` (when not NULL) as its
 * "base64" field, and waits for the reply: ALMANAC_OK with *line (the
 * caller's to free) and *reply, or an error (a refusal recorded). */
static int almanac__send(struct almanac *a, json_t *req, const char *b64, size_t b64len,
                         char **line, struct almanac__j *reply)
{
    int64_t id = ++a->next_id, deadline = almanac__request_deadline(a);
    char *text;
    *line = NULL;
    if (req == NULL || json_object_set_new(req, "id", json_integer(id)) != 0 ||
        (text = json_dumps(req, JSON_COMPACT)) == NULL) {
        json_decref(req);
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    }
    json_decref(req);
    size_t tlen = strlen(text);
    if (b64 != NULL) { /* spliced in: a large value is not copied into a jansson tree */
        char *whole = malloc(tlen + b64len + 16);
        if (whole == NULL) {
            free(text);
            return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
        }
        memcpy(whole, text, tlen - 1);
        tlen--;
        memcpy(whole + tlen, ",\"base64\":\"", 11);
        tlen += 11;
        memcpy(whole + tlen, b64, b64len);
        tlen += b64len;
        memcpy(whole + tlen, "\"}", 2);
        tlen += 2;
        free(text);
        text = whole;
    }
    text[tlen] = '\n'; /* over the NUL: the line is sent with its length */
    int w = almanac__link_write(&a->link, text, tlen + 1, deadline);
    free(text);
    if (w == -2)
        return almanac__fail(a, ALMANAC_ETIMEDOUT, "the request could not be sent in time");
    if (w != 0)
        return almanac__lost(a);
    for (;;) {
        int r = almanac__read(a, id, deadline, line, reply);
        if (r < 0)
            return -r;
        if (r == 1)
            break;
    }
    struct almanac__j type;
    if (almanac__jget(*reply, "type", &type) && almanac__jis(type, "\"error\"")) {
        int err = almanac__refused(a, *reply);
        free(*line);
        *line = NULL;
        return err;
    }
    return ALMANAC_OK;
}

/* A request from the public calls: the connection made ready first. */
static int almanac__request(struct almanac *a, json_t *req, const char *b64, size_t b64len,
                            char **line, struct almanac__j *reply)
{
    int rc = almanac__ready(a);
    if (rc != ALMANAC_OK) {
        json_decref(req);
        *line = NULL;
        return rc;
    }
    return almanac__send(a, req, b64, b64len, line, reply);
}

/* A request whose reply only says ok. */
static int almanac__simple(struct almanac *a, json_t *req)
{
    char *line;
    struct almanac__j reply;
    int rc = almanac__request(a, req, NULL, 0, &line, &reply);
    free(line);
    return rc;
}

/* ---- connecting ---- */

/* Dials, reads the welcome and says hello with the token. */
static int almanac__open(struct almanac *a)
{
    char *line = NULL;
    size_t len;
    int64_t deadline = almanac__deadline(a->timeout_ms > 0 ? a->timeout_ms : ALMANAC__CONNECT_MS);
    struct almanac__j msg, v;
    a->closing[0] = '\0';
    a->closing_err = 0;
    int rc = almanac__dial(a, &a->link, a->unix_socket ? a->path : NULL, a->host, a->port, a->tls,
                           a->address);
    if (rc != ALMANAC_OK)
        return rc;
    int r = almanac__line(&a->link, &a->in, deadline, &line, &len);
    if (r <= 0) {
        almanac__lost(a);
        return almanac__fail(a, r == -2 ? ALMANAC_ETIMEDOUT : ALMANAC_ECLOSED,
                             "%s did not welcome a session (is it almanac's session port?)",
                             a->address);
    }
    msg = (struct almanac__j){line, len};
    if (almanac__jget(msg, "type", &v) && almanac__jis(v, "\"error\"")) {
        rc = almanac__refused(a, msg); /* max_sessions, say */
        free(line);
        almanac__lost(a);
        return rc;
    }
    bool v1 = false;
    struct almanac__jit it;
    if (!almanac__jget(msg, "type", &v) || !almanac__jis(v, "\"welcome\"") ||
        !almanac__jget(msg, "protocols", &v)) {
        free(line);
        almanac__lost(a);
        return almanac__fail(a, ALMANAC_EPROTO, "%s did not welcome a session", a->address);
    }
    almanac__jopen(&it, v, '[');
    struct almanac__j p;
    while (almanac__jnext(&it, NULL, &p))
        v1 = v1 || (p.n > 3 && memcmp(p.p, "\"1.", 3) == 0);
    char *cid = almanac__jstr_of(msg, "client_id");
    snprintf(a->client_id, sizeof a->client_id, "%s", cid ? cid : "");
    free(cid);
    free(line);
    if (!v1) {
        almanac__lost(a);
        return almanac__fail(a, ALMANAC_EPROTOCOL, "%s does not speak protocol 1", a->address);
    }
    json_t *hello = json_pack("{s:s,s:s}", "type", "hello", "protocol", "1.0");
    if (hello != NULL && a->token != NULL)
        json_object_set_new(hello, "token", json_string(a->token));
    rc = almanac__send(a, hello, NULL, 0, &line, &msg);
    if (rc != ALMANAC_OK) {
        if (a->link.fd >= 0)
            almanac__link_close(&a->link);
        return rc;
    }
    free(line);
    return ALMANAC_OK;
}

/* How a subscription is sent: as the user asked it, from a fresh snapshot,
 * or resuming after a rev. */
enum almanac__how { ALMANAC__ORIGINAL, ALMANAC__FRESH, ALMANAC__SINCE };

/* Subscribes `s` on this connection. */
static int almanac__sub_send(struct almanac *a, struct almanac__sub *s, enum almanac__how how)
{
    char *line;
    struct almanac__j reply;
    json_t *req = json_deep_copy(s->base);
    bool original = how == ALMANAC__ORIGINAL;
    if (req != NULL && how == ALMANAC__SINCE)
        json_object_set_new(req, "since", json_integer(s->last_rev));
    else if (req != NULL && original && s->orig_since > 0)
        json_object_set_new(req, "since", json_integer(s->orig_since));
    else if (req != NULL && original && s->orig_start != NULL)
        json_object_set_new(req, "start", json_string(s->orig_start));
    int rc = almanac__send(a, req, NULL, 0, &line, &reply);
    if (rc != ALMANAC_OK)
        return rc;
    s->server_id = almanac__jint_of(reply, "sub");
    /* a replay comes in rev order; a snapshot does not (invariant 3) */
    s->ordered =
        how == ALMANAC__SINCE || (original && (s->orig_since > 0 || s->orig_start != NULL));
    free(line);
    return ALMANAC_OK;
}

/* Starts `s` again from a fresh snapshot, telling its reader to forget. */
static int almanac__sub_reset(struct almanac *a, struct almanac__sub *s)
{
    if (s->shown || s->synced)
        almanac__queue(a, s, ALMANAC_EVENT_RESET, NULL, 0, 0, NULL);
    s->shown = s->synced = s->ordered = false;
    s->last_rev = 0;
    return almanac__sub_send(a, s, ALMANAC__FRESH);
}

/* Resubscribes every subscription on a new connection (invariant 3). */
static int almanac__resubscribe(struct almanac *a)
{
    for (struct almanac__sub *s = a->subs, *next; s != NULL; s = next) {
        next = s->next;
        int rc;
        if (s->synced || (s->ordered && s->last_rev > 0))
            rc = almanac__sub_send(a, s, ALMANAC__SINCE);
        else if (!s->shown)
            rc = almanac__sub_send(a, s, ALMANAC__ORIGINAL);
        else
            rc = almanac__sub_reset(a, s);
        if (rc == ALMANAC_EHISTORYGONE)
            rc = almanac__sub_reset(a, s);
        if (rc == ALMANAC_OK)
            continue;
        if (a->link.fd < 0 || rc == ALMANAC_ETIMEDOUT || rc == ALMANAC_ENOMEM)
            return rc; /* the connection's trouble: try again later */
        almanac__queue(a, s, ALMANAC_EVENT_END, NULL, 0, rc, a->msg);
        almanac__sub_remove(a, s);
    }
    return ALMANAC_OK;
}

static bool almanac__for_good(int err)
{
    return err == ALMANAC_EUNAUTHORIZED || err == ALMANAC_EFORBIDDEN || err == ALMANAC_EPROTOCOL ||
           err == ALMANAC_ETLS || err == ALMANAC_EPROTO || err == ALMANAC_EBADREQUEST ||
           err == ALMANAC_EINVAL;
}

/* Opens a new connection and resumes the subscriptions. A refusal that
 * will not change by trying again (a revoked token, say) ends every
 * subscription (an END event each) and the handle stays closed. */
static int almanac__reconnect(struct almanac *a)
{
    if (a->link.fd >= 0)
        almanac__link_close(&a->link);
    a->in.start = a->in.end = a->in.scanned = 0;
    int rc = almanac__open(a);
    if (rc == ALMANAC_OK)
        rc = almanac__resubscribe(a);
    if (rc != ALMANAC_OK && almanac__for_good(rc)) {
        snprintf(a->closing, sizeof a->closing, "%s", a->msg);
        a->dead = true;
        a->dead_err = rc;
        while (a->subs != NULL) {
            almanac__queue(a, a->subs, ALMANAC_EVENT_END, NULL, 0, rc, a->msg);
            almanac__sub_remove(a, a->subs);
        }
        if (a->link.fd >= 0)
            almanac__link_close(&a->link);
    }
    return rc;
}

static char *almanac__dup(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

static int almanac__parse_address(struct almanac *a, const char *address)
{
    const char *rest = address;
    if (strncmp(address, "unix:", 5) == 0 || address[0] == '/' || address[0] == '.') {
        const char *path = strncmp(address, "unix:", 5) == 0 ? address + 5 : address;
        if (strncmp(path, "//", 2) == 0)
            path += 2;
        if (path[0] == '\0' || strlen(path) >= sizeof a->path)
            return almanac__fail(a, ALMANAC_EINVAL, "not a Unix socket's path: '%s'", address);
        snprintf(a->path, sizeof a->path, "%s", path);
        a->unix_socket = true;
        return ALMANAC_OK;
    }
    if (strncmp(address, "tcp://", 6) == 0)
        rest = address + 6;
    else if (strncmp(address, "tls://", 6) == 0) {
        rest = address + 6;
        a->tls = true;
    }
    if (almanac__host_port(rest, a->host, sizeof a->host, a->port, sizeof a->port) != 0)
        return almanac__fail(a, ALMANAC_EINVAL,
                             "the server is HOST:PORT, tls://HOST:PORT or unix:PATH, not '%s'",
                             address);
    return ALMANAC_OK;
}

API int almanac_connect(struct almanac **out, const char *address,
                        const struct almanac_options *opts)
{
    struct almanac_options none = {0};
    struct almanac *a = calloc(1, sizeof *a);
    *out = a;
    if (a == NULL)
        return ALMANAC_ENOMEM;
    if (opts == NULL)
        opts = &none;
    a->link.fd = -1;
    a->tls = opts->tls || opts->cafile != NULL;
    a->timeout_ms = opts->timeout_ms;
    a->no_reconnect = opts->no_reconnect;
    a->address = almanac__dup(address);
    a->token = almanac__dup(opts->token);
    a->cafile = almanac__dup(opts->cafile);
    a->http = strdup(opts->http ? opts->http : "127.0.0.1:8480");
    if (a->http == NULL || (address && !a->address) || (opts->token && !a->token) ||
        (opts->cafile && !a->cafile))
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    if (address == NULL)
        return ALMANAC_OK;
    int rc = almanac__parse_address(a, address);
    if (rc == ALMANAC_OK)
        rc = almanac__open(a);
    return rc;
}

API void almanac_close(struct almanac *a)
{
    if (a == NULL)
        return;
    almanac__link_close(&a->link);
    while (a->subs != NULL)
        almanac__sub_remove(a, a->subs);
    for (struct almanac__event *q = a->head, *next; q != NULL; q = next) {
        next = q->next;
        almanac__event_free(q);
    }
    almanac__event_free(a->current);
    if (a->token != NULL) /* a secret: wiped before it is freed */
        OPENSSL_cleanse(a->token, strlen(a->token));
    free(a->token);
    free(a->cafile);
    free(a->http);
    free(a->address);
    free(a->in.p);
    free(a);
}

API int almanac_errcode(const struct almanac *a)
{
    return a ? a->err : ALMANAC_ENOMEM;
}

API const char *almanac_errmsg(const struct almanac *a)
{
    return a ? a->msg : "out of memory";
}

API const char *almanac_server_error(const struct almanac *a)
{
    return a && a->server_err[0] != '\0' ? a->server_err : NULL;
}

API const char *almanac_client_id(const struct almanac *a)
{
    return a->link.fd >= 0 && a->client_id[0] != '\0' ? a->client_id : NULL;
}

API int almanac_fd(const struct almanac *a)
{
    return a->link.fd;
}

API bool almanac_pending(const struct almanac *a)
{
    return a->head != NULL || (a->link.fd >= 0 && almanac__buffered(&a->link, &a->in));
}

/* ---- the requests ---- */

API int almanac_get(struct almanac *a, const char *key, struct almanac_entry **out)
{
    char *line;
    struct almanac__j reply;
    almanac__clear(a);
    *out = NULL;
    int rc = almanac__request(a, json_pack("{s:s,s:s}", "type", "get", "key", key), NULL, 0, &line,
                              &reply);
    if (rc != ALMANAC_OK)
        return rc;
    struct almanac__entry *e = almanac__entry_new(reply);
    free(line);
    if (e == NULL)
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    *out = &e->pub;
    return ALMANAC_OK;
}

/* The base64 of `len` bytes: a new string (`*b64len`), or NULL. */
static char *almanac__base64(const void *value, size_t len, size_t *b64len)
{
    if (len > (size_t)INT32_MAX / 4 * 3)
        return NULL;
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (b64 != NULL)
        *b64len = (size_t)EVP_EncodeBlock((unsigned char *)b64, value, (int)len);
    return b64;
}

static json_t *almanac__labels_json(const struct almanac_label *labels, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, labels[i].name, json_string(labels[i].value));
    return o;
}

/* set, or (`publish`) a transient publish. */
static int almanac__value_request(struct almanac *a, const char *type, const char *key,
                                  const void *value, size_t len,
                                  const struct almanac_set_options *o, int64_t *rev)
{
    char *line;
    struct almanac__j reply;
    size_t b64len = 0;
    char *b64 = almanac__base64(value, len, &b64len);
    json_t *req = json_pack("{s:s,s:s}", "type", type, "key", key);
    if (b64 == NULL || req == NULL) {
        free(b64);
        json_decref(req);
        return almanac__fail(a,
                             len > (size_t)INT32_MAX / 4 * 3 ? ALMANAC_ETOOLARGE : ALMANAC_ENOMEM,
                             "the value cannot be sent (too large, or out of memory)");
    }
    if (o != NULL && o->content_type != NULL)
        json_object_set_new(req, "content_type", json_string(o->content_type));
    if (o != NULL && o->nlabels > 0)
        json_object_set_new(req, "labels", almanac__labels_json(o->labels, o->nlabels));
    if (o != NULL && o->if_rev != ALMANAC_ANY_REV)
        json_object_set_new(req, "if_rev",
                            json_integer(o->if_rev == ALMANAC_IF_ABSENT ? 0 : o->if_rev));
    if (o != NULL && o->ttl != NULL)
        json_object_set_new(req, "ttl", json_string(o->ttl));
    int rc = almanac__request(a, req, b64, b64len, &line, &reply);
    free(b64);
    if (rc == ALMANAC_OK && rev != NULL)
        *rev = almanac__jint_of(reply, "rev");
    free(line);
    return rc;
}

API int almanac_set(struct almanac *a, const char *key, const void *value, size_t len,
                    const struct almanac_set_options *opts, int64_t *rev)
{
    almanac__clear(a);
    if (opts != NULL && opts->if_rev < ALMANAC_IF_ABSENT)
        return almanac__fail(a, ALMANAC_EINVAL, "if_rev is a rev, 0 or ALMANAC_IF_ABSENT");
    return almanac__value_request(a, "set", key, value, len, opts, rev);
}

API int almanac_publish(struct almanac *a, const char *key, const void *value, size_t len,
                        const char *content_type)
{
    struct almanac_set_options o = {.content_type = content_type};
    almanac__clear(a);
    return almanac__value_request(a, "publish", key, value, len, &o, NULL);
}

API int almanac_delete(struct almanac *a, const char *key_or_pattern, int64_t if_rev,
                       uint64_t *deleted)
{
    char *line;
    struct almanac__j reply;
    almanac__clear(a);
    json_t *req = json_pack("{s:s,s:s}", "type", "delete", "key", key_or_pattern);
    if (req != NULL && if_rev != ALMANAC_ANY_REV)
        json_object_set_new(req, "if_rev", json_integer(if_rev == ALMANAC_IF_ABSENT ? 0 : if_rev));
    int rc = almanac__request(a, req, NULL, 0, &line, &reply);
    if (rc == ALMANAC_OK && deleted != NULL)
        *deleted = (uint64_t)almanac__jint_of(reply, "deleted");
    free(line);
    return rc;
}

API int almanac_pget(struct almanac *a, const char *pattern, const char *contains,
                     almanac_entry_fn fn, void *arg)
{
    char *after = NULL;
    almanac__clear(a);
    for (;;) {
        char *line;
        struct almanac__j reply, list, next;
        json_t *req =
            json_pack("{s:s,s:s,s:i}", "type", "pget", "pattern", pattern, "limit", ALMANAC__PAGE);
        if (req != NULL && contains != NULL)
            json_object_set_new(req, "contains", json_string(contains));
        if (req != NULL && after != NULL)
            json_object_set_new(req, "after", json_string(after));
        free(after);
        after = NULL;
        int rc = almanac__request(a, req, NULL, 0, &line, &reply);
        if (rc != ALMANAC_OK)
            return rc;
        if (almanac__jget(reply, "entries", &list))
            rc = almanac__each(a, list, fn, arg, NULL);
        if (rc == ALMANAC_OK && almanac__jget(reply, "next", &next) && !almanac__jis(next, "null"))
            after = next.p[0] == '"' ? almanac__jstr(next, NULL) : strndup(next.p, next.n);
        free(line);
        if (rc != ALMANAC_OK || after == NULL)
            return rc;
    }
}

API int almanac_ls(struct almanac *a, const char *key, almanac_child_fn fn, void *arg, int64_t *rev)
{
    char *line;
    struct almanac__j reply, list, v;
    struct almanac__jit it;
    almanac__clear(a);
    json_t *req = json_pack("{s:s}", "type", "ls");
    if (req != NULL && key != NULL)
        json_object_set_new(req, "key", json_string(key));
    int rc = almanac__request(a, req, NULL, 0, &line, &reply);
    if (rc != ALMANAC_OK)
        return rc;
    if (rev != NULL)
        *rev = almanac__jint_of(reply, "rev");
    if (!almanac__jget(reply, "children", &list))
        list = (struct almanac__j){"[]", 2};
    almanac__jopen(&it, list, '[');
    while (rc == ALMANAC_OK && almanac__jnext(&it, NULL, &v)) {
        struct almanac_child c = {.value = almanac__jtrue_of(v, "value"),
                                  .children = almanac__jtrue_of(v, "children"),
                                  .keys = -1};
        struct almanac__j keys;
        char *name = almanac__jstr_of(v, "name");
        if (almanac__jget(v, "keys", &keys))
            almanac__jint(keys, &c.keys);
        c.name = name;
        if (name == NULL)
            rc = almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
        else if (fn(arg, &c) != 0)
            rc = almanac__fail(a, ALMANAC_ESTOPPED, "stopped by the callback");
        free(name);
    }
    free(line);
    return rc;
}

API int almanac_history(struct almanac *a, const char *pattern,
                        const struct almanac_history_query *q, almanac_entry_fn fn, void *arg)
{
    struct almanac_history_query none = {0};
    int64_t after = 0;
    uint64_t left;
    almanac__clear(a);
    if (q == NULL)
        q = &none;
    left = q->limit > 0 ? q->limit : UINT64_MAX;
    while (left > 0) {
        char *line;
        struct almanac__j reply, list, next;
        json_t *req =
            json_pack("{s:s,s:s,s:I}", "type", "history", "pattern", pattern, "limit",
                      (json_int_t)(left < ALMANAC__HISTORY_MAX ? left : ALMANAC__HISTORY_MAX));
        if (req != NULL && q->start != NULL)
            json_object_set_new(req, "start", json_string(q->start));
        if (req != NULL && q->stop != NULL)
            json_object_set_new(req, "stop", json_string(q->stop));
        if (req != NULL && q->desc)
            json_object_set_new(req, "order", json_string("desc"));
        if (req != NULL && q->every != NULL)
            json_object_set_new(req, "every", json_string(q->every));
        if (req != NULL && after > 0)
            json_object_set_new(req, "after", json_integer(after));
        int rc = almanac__request(a, req, NULL, 0, &line, &reply);
        if (rc != ALMANAC_OK)
            return rc;
        if (almanac__jget(reply, "records", &list))
            rc = almanac__each(a, list, fn, arg, &left);
        after = 0;
        if (almanac__jget(reply, "next", &next))
            almanac__jint(next, &after);
        free(line);
        if (rc != ALMANAC_OK || after <= 0)
            return rc;
    }
    return ALMANAC_OK;
}

API int almanac_auth(struct almanac *a, const char *token)
{
    almanac__clear(a);
    if (token == NULL)
        return almanac__fail(a, ALMANAC_EINVAL, "auth needs a token");
    char *copy = strdup(token);
    if (copy == NULL)
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    int rc = almanac__simple(a, json_pack("{s:s,s:s}", "type", "auth", "token", token));
    if (rc != ALMANAC_OK) {
        free(copy);
        return rc;
    }
    if (a->token != NULL)
        OPENSSL_cleanse(a->token, strlen(a->token));
    free(a->token);
    a->token = copy;
    return ALMANAC_OK;
}

API int almanac_ping(struct almanac *a)
{
    almanac__clear(a);
    return almanac__simple(a, json_pack("{s:s}", "type", "ping"));
}

/* ---- subscriptions ---- */

API int almanac_subscribe(struct almanac *a, const char *pattern,
                          const struct almanac_subscribe_options *opts, unsigned *sub)
{
    struct almanac_subscribe_options none = {0};
    almanac__clear(a);
    if (opts == NULL)
        opts = &none;
    if (opts->since < 0 || (opts->since > 0 && opts->start != NULL))
        return almanac__fail(a, ALMANAC_EINVAL, "since is a rev above 0, and not with start");
    int rc = almanac__ready(a);
    if (rc != ALMANAC_OK)
        return rc;
    struct almanac__sub *s = calloc(1, sizeof *s);
    if (s == NULL ||
        (s->base = json_pack("{s:s,s:s}", "type", "subscribe", "pattern", pattern)) == NULL ||
        (opts->start != NULL && (s->orig_start = strdup(opts->start)) == NULL)) {
        almanac__sub_free(s);
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    }
    if (opts->live_only)
        json_object_set_new(s->base, "live_only", json_true());
    if (opts->unique)
        json_object_set_new(s->base, "unique", json_true());
    if (opts->nlabels > 0)
        json_object_set_new(s->base, "labels", almanac__labels_json(opts->labels, opts->nlabels));
    if (opts->nexclude_labels > 0)
        json_object_set_new(s->base, "exclude_labels",
                            almanac__labels_json(opts->exclude_labels, opts->nexclude_labels));
    s->orig_since = opts->since;
    s->callback = opts->callback;
    s->arg = opts->arg;
    s->id = ++a->next_sub;
    if ((rc = almanac__sub_send(a, s, ALMANAC__ORIGINAL)) != ALMANAC_OK) {
        almanac__sub_free(s);
        return rc;
    }
    s->next = a->subs; /* before any event of it is read (the ok comes first) */
    a->subs = s;
    if (sub != NULL)
        *sub = s->id;
    return ALMANAC_OK;
}

API int almanac_unsubscribe(struct almanac *a, unsigned sub)
{
    struct almanac__sub *s = almanac__sub_by_id(a, sub);
    almanac__clear(a);
    if (s == NULL)
        return almanac__fail(a, ALMANAC_EINVAL, "no subscription %u", sub);
    int rc = ALMANAC_OK;
    if (s->server_id > 0 && a->link.fd >= 0)
        rc = almanac__simple(
            a, json_pack("{s:s,s:I}", "type", "unsubscribe", "sub", (json_int_t)s->server_id));
    almanac__sub_remove(a, s); /* also when the connection is gone: nothing to resume */
    for (struct almanac__event **p = &a->head; *p != NULL;) {
        struct almanac__event *q = *p;
        if (q->pub.sub != sub) {
            p = &q->next;
            continue;
        }
        *p = q->next;
        almanac__event_free(q);
    }
    a->tail = NULL;
    for (struct almanac__event *q = a->head; q != NULL; q = q->next)
        a->tail = q;
    return rc == ALMANAC_ECLOSED ? ALMANAC_OK : rc;
}

API int64_t almanac_sub_rev(const struct almanac *a, unsigned sub)
{
    const struct almanac__sub *s = almanac__sub_by_id(a, sub);
    return s != NULL && (s->synced || s->ordered) ? s->last_rev : 0;
}

API int almanac_resume(struct almanac *a)
{
    almanac__clear(a);
    if (a->address == NULL)
        return almanac__fail(a, ALMANAC_EINVAL, "this handle has no session (address NULL)");
    if (a->link.fd >= 0)
        return ALMANAC_OK;
    a->dead = false;
    return almanac__reconnect(a);
}

/* Waits for events until `deadline`, reconnecting with backoff when the
 * connection is lost: ALMANAC_OK once one for the caller (`with_callback`
 * or not) is queued, else why not. */
static int almanac__await(struct almanac *a, bool with_callback, int64_t deadline)
{
    int64_t backoff = 100;
    for (;;) {
        for (struct almanac__event *q = a->head; q != NULL; q = q->next)
            if ((q->callback != NULL) == with_callback)
                return ALMANAC_OK;
        if (a->address == NULL)
            return almanac__fail(a, ALMANAC_EINVAL, "this handle has no session (address NULL)");
        if (a->link.fd < 0) {
            if (a->dead)
                return almanac__fail(a, a->dead_err, "the connection ended for good: %s",
                                     a->closing);
            if (a->no_reconnect)
                return almanac__fail(a, ALMANAC_ECLOSED,
                                     "the connection is closed (almanac_resume() reconnects)");
            int rc = almanac__reconnect(a);
            if (rc == ALMANAC_OK || a->dead) {
                backoff = 100;
                continue;
            }
            int64_t now = almanac__now_ms();
            if (deadline >= 0 && now >= deadline)
                return almanac__fail(a, ALMANAC_ETIMEDOUT, "not reconnected in time: %s", a->msg);
            int64_t ms = deadline >= 0 && deadline - now < backoff ? deadline - now : backoff;
            struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            backoff = backoff * 2 > ALMANAC__BACKOFF_MAX ? ALMANAC__BACKOFF_MAX : backoff * 2;
            continue;
        }
        char *line = NULL;
        struct almanac__j reply;
        int r = almanac__read(a, 0, deadline, &line, &reply);
        free(line);
        if (r == -ALMANAC_ETIMEDOUT)
            return ALMANAC_ETIMEDOUT;
        if (r < 0 && a->no_reconnect)
            return -r;
    }
}

API int almanac_next_event(struct almanac *a, int timeout_ms, const struct almanac_event **ev)
{
    almanac__clear(a);
    almanac__event_free(a->current);
    a->current = NULL;
    *ev = NULL;
    int rc = almanac__await(a, false, almanac__deadline(timeout_ms));
    if (rc != ALMANAC_OK)
        return rc;
    a->current = almanac__take(a, false);
    *ev = &a->current->pub;
    return ALMANAC_OK;
}

API int almanac_dispatch(struct almanac *a, int timeout_ms, unsigned *count)
{
    unsigned n = 0;
    int64_t deadline = almanac__deadline(timeout_ms);
    almanac__clear(a);
    for (;;) {
        int rc = almanac__await(a, true, n > 0 ? almanac__now_ms() : deadline);
        if (rc == ALMANAC_ETIMEDOUT)
            break;
        if (rc != ALMANAC_OK) {
            if (count != NULL)
                *count = n;
            return rc;
        }
        struct almanac__event *q = almanac__take(a, true);
        q->callback(q->arg, &q->pub);
        almanac__event_free(q);
        n++;
    }
    almanac__clear(a);
    if (count != NULL)
        *count = n;
    return ALMANAC_OK;
}

/* ---- HTTP ---- */

/* Reads `n` bytes of the answer, or to its end (`n` SIZE_MAX), into
 * `answer` (NULL: dropped): 0, or -1 when the connection failed first. */
static int almanac__http_bytes(struct almanac__link *k, struct almanac__in *in, size_t n,
                               almanac_write_fn answer, void *arg, bool *stopped)
{
    while (n > 0) {
        if (in->start == in->end) {
            ssize_t r = almanac__fill(k, in, -1);
            if (r == 0 && n == SIZE_MAX)
                return 0;
            if (r <= 0)
                return -1;
        }
        size_t take = in->end - in->start < n ? in->end - in->start : n;
        if (answer != NULL && !*stopped && answer(arg, in->p + in->start, take) != 0)
            *stopped = true;
        in->start += take;
        if (n != SIZE_MAX)
            n -= take;
    }
    return 0;
}

/* The body of an answer, chunked or not, to `answer`. */
static int almanac__http_body(struct almanac__link *k, struct almanac__in *in, bool chunked,
                              int64_t length, almanac_write_fn answer, void *arg, bool *stopped)
{
    if (!chunked)
        return almanac__http_bytes(k, in, length >= 0 ? (size_t)length : SIZE_MAX, answer, arg,
                                   stopped);
    for (;;) {
        char *line;
        size_t len;
        if (almanac__line(k, in, -1, &line, &len) != 1)
            return -1;
        unsigned long long size = strtoull(line, NULL, 16);
        free(line);
        if (size == 0)
            break;
        if (almanac__http_bytes(k, in, (size_t)size, answer, arg, stopped) != 0 ||
            almanac__line(k, in, -1, &line, &len) != 1)
            return -1;
        free(line);
    }
    for (;;) { /* trailers, to the empty line */
        char *line;
        size_t len;
        if (almanac__line(k, in, -1, &line, &len) != 1)
            return 0;
        free(line);
        if (len == 0)
            return 0;
    }
}

static int almanac__mem_write(void *arg, const void *buf, size_t len)
{
    FILE *f = arg;
    return fwrite(buf, 1, len, f) == len ? 0 : -1;
}

/* Sends the head and the body of a request. */
static int almanac__http_send(struct almanac *a, struct almanac__link *k, const char *method,
                              const char *path, almanac_read_fn body, void *body_arg)
{
    char *head = NULL;
    size_t hlen = 0;
    FILE *h = open_memstream(&head, &hlen);
    if (h == NULL)
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    fprintf(h, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, a->http);
    if (a->token != NULL)
        fprintf(h, "Authorization: Bearer %s\r\n", a->token);
    fputs(body != NULL ? "Transfer-Encoding: chunked\r\n\r\n" : "\r\n", h);
    fclose(h);
    int w = head ? almanac__link_write(k, head, hlen, -1) : -1;
    if (head != NULL)
        OPENSSL_cleanse(head, hlen); /* it held the token */
    free(head);
    if (body != NULL && w == 0) {
        char chunk[65536], size[32];
        for (;;) {
            ssize_t n = body(body_arg, chunk, sizeof chunk);
            if (n < 0)
                return almanac__fail(a, ALMANAC_EINVAL, "the request body could not be read");
            int sl = snprintf(size, sizeof size, "%zx\r\n", (size_t)n);
            if ((w = almanac__link_write(k, size, (size_t)sl, -1)) != 0 ||
                (w = almanac__link_write(k, chunk, (size_t)n, -1)) != 0 ||
                (w = almanac__link_write(k, "\r\n", 2, -1)) != 0 || n == 0)
                break;
        }
    }
    if (w != 0)
        return almanac__fail(a, ALMANAC_ECLOSED, "%s closed the connection", a->http);
    return ALMANAC_OK;
}

API int almanac_http(struct almanac *a, const char *method, const char *path, almanac_read_fn body,
                     void *body_arg, almanac_write_fn answer, void *answer_arg, int *status)
{
    char host[256], port[32], *line = NULL;
    size_t len;
    struct almanac__link k = {.fd = -1};
    struct almanac__in in = {0};
    int code = 0;
    bool chunked = false, stopped = false;
    int64_t length = -1;
    almanac__clear(a);
    if (status != NULL)
        *status = 0;
    if (almanac__host_port(a->http, host, sizeof host, port, sizeof port) != 0)
        return almanac__fail(a, ALMANAC_EINVAL, "the HTTP server is HOST:PORT, not '%s'", a->http);
    int rc = almanac__dial(a, &k, NULL, host, port, a->tls, a->http);
    if (rc == ALMANAC_OK)
        rc = almanac__http_send(a, &k, method, path, body, body_arg);
    if (rc != ALMANAC_OK)
        goto done;
    if (almanac__line(&k, &in, -1, &line, &len) != 1 || sscanf(line, "HTTP/%*s %d", &code) != 1) {
        rc = almanac__fail(a, ALMANAC_EPROTO, "%s did not answer over HTTP", a->http);
        goto done;
    }
    for (;;) {
        free(line);
        line = NULL;
        if (almanac__line(&k, &in, -1, &line, &len) != 1) {
            rc = almanac__fail(a, ALMANAC_ECLOSED, "%s closed the connection", a->http);
            goto done;
        }
        if (len == 0)
            break;
        if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 && strcasestr(line, "chunked"))
            chunked = true;
        else if (strncasecmp(line, "Content-Length:", 15) == 0)
            length = strtoll(line + 15, NULL, 10);
    }
    if (status != NULL)
        *status = code;
    if (code >= 200 && code < 300) {
        if (almanac__http_body(&k, &in, chunked, length, answer, answer_arg, &stopped) != 0)
            rc = almanac__fail(a, ALMANAC_ECLOSED, "%s closed the connection mid-answer", a->http);
        else if (stopped)
            rc = almanac__fail(a, ALMANAC_ESTOPPED, "stopped by the callback");
        goto done;
    }
    /* An error: {"error","message"}, kept as the server's refusal. */
    char *text = NULL;
    size_t tlen = 0;
    FILE *mem = open_memstream(&text, &tlen);
    if (mem != NULL) {
        almanac__http_body(&k, &in, chunked, length, almanac__mem_write, mem, &stopped);
        fclose(mem);
    }
    struct almanac__j err = {text ? text : "", text ? tlen : 0}, v;
    if (almanac__jget(err, "error", &v))
        rc = almanac__refused(a, err);
    else
        rc = almanac__fail(a, ALMANAC_ESERVER, "HTTP %d: %.200s", code, text ? text : "");
    free(text);
done:
    free(line);
    free(in.p);
    almanac__link_close(&k);
    return rc;
}

/* A request without a body whose answer is JSON: *out a new reference (or
 * NULL). */
static int almanac__http_json(struct almanac *a, const char *method, const char *path, json_t **out)
{
    char *text = NULL;
    size_t tlen = 0;
    FILE *mem = open_memstream(&text, &tlen);
    int rc = mem != NULL ? almanac_http(a, method, path, NULL, NULL, almanac__mem_write, mem, NULL)
                         : almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    if (mem != NULL)
        fclose(mem);
    *out = rc == ALMANAC_OK && text ? json_loadb(text, tlen, 0, NULL) : NULL;
    free(text);
    return rc;
}

static ssize_t almanac__string_read(void *arg, void *buf, size_t cap)
{
    const char **p = arg;
    size_t n = strlen(*p);
    if (n > cap)
        n = cap;
    memcpy(buf, *p, n);
    *p += n;
    return (ssize_t)n;
}

API int almanac_token_create(struct almanac *a, const struct almanac_token_spec *spec,
                             char **secret)
{
    char *text = NULL, *body;
    size_t tlen = 0;
    *secret = NULL;
    almanac__clear(a);
    json_t *req =
        json_pack("{s:s,s:[],s:[],s:b}", "name", spec->name, "read", "write", "admin", spec->admin);
    if (req == NULL)
        return almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    for (size_t i = 0; i < spec->nread; i++)
        json_array_append_new(json_object_get(req, "read"), json_string(spec->read[i]));
    for (size_t i = 0; i < spec->nwrite; i++)
        json_array_append_new(json_object_get(req, "write"), json_string(spec->write[i]));
    if (spec->expires != NULL)
        json_object_set_new(req, "expires", json_string(spec->expires));
    body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    FILE *mem = open_memstream(&text, &tlen);
    const char *cursor = body;
    int rc = body && mem ? almanac_http(a, "POST", "/api/v1/tokens", almanac__string_read, &cursor,
                                        almanac__mem_write, mem, NULL)
                         : almanac__fail(a, ALMANAC_ENOMEM, "out of memory");
    if (mem != NULL)
        fclose(mem);
    free(body);
    if (rc == ALMANAC_OK) {
        struct almanac__j answer = {text ? text : "", text ? tlen : 0};
        if ((*secret = almanac__jstr_of(answer, "token")) == NULL)
            rc = almanac__fail(a, ALMANAC_EPROTO, "the answer holds no token");
    }
    if (text != NULL)
        OPENSSL_cleanse(text, tlen);
    free(text);
    return rc;
}

API int almanac_token_revoke(struct almanac *a, const char *name)
{
    char path[1024];
    size_t o = (size_t)snprintf(path, sizeof path, "/api/v1/tokens/");
    json_t *reply = NULL;
    almanac__clear(a);
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        if (o + 4 >= sizeof path)
            return almanac__fail(a, ALMANAC_EINVAL, "the token's name is too long");
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~')
            path[o++] = (char)*p;
        else
            o += (size_t)snprintf(path + o, sizeof path - o, "%%%02X", *p);
    }
    path[o] = '\0';
    int rc = almanac__http_json(a, "DELETE", path, &reply);
    json_decref(reply);
    return rc;
}
