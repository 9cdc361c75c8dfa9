/*
 * http_stream.c — the HTTP routes that stream: Server-Sent Events (a feed
 * through a sink of their own), the WebSocket upgrade (the loop takes the
 * socket), history and export (read as the client reads), and import.
 *
 * An SSE stream's events gather in `q`, bounded by session_queue_bytes
 * (past it, feed.c's too_slow policy ends the stream with an error event);
 * MHD's content reader takes them and, when there are none, suspends the
 * connection, which the next event resumes.
 * Invariants:
 *   1. `q` changes only under the stream's lock, and a suspended stream is
 *      resumed by whoever queues to it (the feed, the heartbeat, the stop);
 *   2. a stream is on h->streams from its answer to sse__free, which closes
 *      its feed first: no sink call after it.
 */
#include "http_int.h"
#include "import.h"
#include "loop.h"
#include "strict.h"

#include <ctype.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- Server-Sent Events ---- */

struct sse {
    struct http *h;
    struct MHD_Connection *conn;
    struct feed *feed;
    struct caller caller; /* its principal held till sse__free */
    char address[64];
    pthread_mutex_t lock;
    struct buf q;
    size_t off; /* bytes of q already handed to MHD */
    bool suspended, ended;
    struct sse *prev, *next;
};

/* Wakes a stream that waits for bytes; the caller holds s->lock. */
static void sse__wake(struct sse *s)
{
    if (s->suspended) {
        s->suspended = false;
        MHD_resume_connection(s->conn);
    }
}

static void sse__add_event(void *arg, struct buf *b, const struct feed_event *ev)
{
    (void)arg;
    if (ev->entry == NULL)
        buf_addf(b, "event: delete\nid: %lld\ndata: ", (long long)ev->rev);
    else if (ev->transient) /* no rev of its own: no id to resume from */
        buf_adds(b, "event: put\ndata: ");
    else
        buf_addf(b, "event: put\nid: %lld\ndata: ", (long long)ev->rev);
    feed_add_envelope(b, ev, "type", "{");
    buf_adds(b, "\n\n");
}

static void sse__add_sync(void *arg, struct buf *b, int64_t rev)
{
    (void)arg;
    buf_addf(b, "event: sync\nid: %lld\ndata: {\"rev\":%lld}\n\n", (long long)rev, (long long)rev);
}

static bool sse__write(void *arg, struct buf *b)
{
    struct sse *s = arg;
    bool queued = true; /* an ended stream drops what comes */
    pthread_mutex_lock(&s->lock);
    if (!s->ended) {
        queued = s->q.len - s->off + b->len <= s->h->cfg->session_queue_bytes;
        if (queued) {
            buf_add(&s->q, b->p, b->len);
            sse__wake(s);
        }
    }
    pthread_mutex_unlock(&s->lock);
    buf_free(b);
    return queued;
}

/* The stream's last event: an error, after what MHD already has. */
static void sse__fail(void *arg, int err, const char *message)
{
    struct sse *s = arg;
    pthread_mutex_lock(&s->lock);
    s->q.len = s->off = 0;
    buf_adds(&s->q, "event: error\ndata: {");
    envelope_add_error(&s->q, err, message);
    buf_adds(&s->q, "\n\n");
    s->ended = true;
    sse__wake(s);
    pthread_mutex_unlock(&s->lock);
}

static const struct feed_sink sse__sink = {.add_event = sse__add_event,
                                           .add_sync = sse__add_sync,
                                           .write = sse__write,
                                           .fail = sse__fail,
                                           .chunk = 65536};

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
    /* Nothing to send: sleep until a write resumes us. */
    s->suspended = true;
    MHD_suspend_connection(s->conn);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static void sse__free(void *cls)
{
    struct sse *s = cls;
    struct http *h = s->h;
    ops_unsubscribe(h->ops, s->feed); /* invariant 2 */
    pthread_mutex_lock(&h->sse_lock);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    pthread_mutex_unlock(&h->sse_lock);
    auth_release(s->caller.principal); /* after its feed: it filters by it */
    buf_free(&s->q);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- label filters of the query string (events, history) ---- */

struct http__label_args {
    struct store_labels *f;
    const char *bad; /* the first argument refused */
    bool no_value;   /* why: it has no value (else: one too many) */
};

/* One `label.<name>=<value>` (must match) or `exclude.<name>=<value>`
 * (must not) argument into the filters. */
static enum MHD_Result http__label_arg(void *cls, enum MHD_ValueKind kind, const char *name,
                                       const char *value)
{
    struct http__label_args *a = cls;
    const char **names, **values;
    size_t *n, prefix;
    (void)kind;
    if (strncmp(name, "label.", 6) == 0) {
        names = a->f->match_names;
        values = a->f->match_values;
        n = &a->f->nmatch;
        prefix = 6;
    } else if (strncmp(name, "exclude.", 8) == 0) {
        names = a->f->exclude_names;
        values = a->f->exclude_values;
        n = &a->f->nexclude;
        prefix = 8;
    } else
        return MHD_YES;
    if (value == NULL || *n == STORE_LABELS_FILTERS_MAX) {
        a->bad = name;
        a->no_value = value == NULL;
        return MHD_NO;
    }
    names[*n] = name + prefix;
    values[(*n)++] = value;
    return MHD_YES;
}

/* The label filters of the query string (history, events) into `f`. 0,
 * or -1 with a sentence naming the argument in `why`. */
static int http__label_filters(struct req *r, struct store_labels *f, char *why, size_t why_len)
{
    struct http__label_args a = {.f = f};
    char quoted[96];
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, http__label_arg, &a);
    if (a.bad == NULL)
        return 0;
    strict_quote(quoted, sizeof quoted, a.bad);
    if (a.no_value)
        snprintf(why, why_len,
                 "'%s' has no value: a label filter is label.<name>=<value> or "
                 "exclude.<name>=<value>",
                 quoted);
    else
        snprintf(why, why_len, "'%s' is one filter too many: at most %d label. and %d exclude.",
                 quoted, STORE_LABELS_FILTERS_MAX, STORE_LABELS_FILTERS_MAX);
    return -1;
}

enum MHD_Result http__events(struct req *r)
{
    const char *live = http__arg(r, "live_only"), *start = http__arg(r, "start");
    struct store_labels labels = {0};
    struct feed_request rq = {.pattern = r->path,
                              .plen = r->plen,
                              .live_only = live != NULL && strcmp(live, "0") != 0 &&
                                           strcmp(live, "false") != 0,
                              .since = -1,
                              .labels = &labels};
    char why[512];
    /* Last-Event-ID (an EventSource reconnecting) or ?since= replay the
     * changes after that rev from history instead of the snapshot, and
     * ?start= those from that time. A reconnect repeats the URL: its
     * Last-Event-ID, after what it saw, wins over ?start= as over ?since=. */
    const char *since_text = http__header(r, "Last-Event-ID");
    if (since_text != NULL)
        start = NULL;
    else
        since_text = http__arg(r, "since");
    if (since_text != NULL) {
        char *end;
        rq.since = strtoll(since_text, &end, 10);
        if (!isdigit((unsigned char)since_text[0]) || *end != '\0')
            return http__error(r, STORE_EBADREQ, "since (or Last-Event-ID) is a rev: '%s'",
                               since_text);
    }
    if (start != NULL && envelope_time("start", start, &rq.start, why, sizeof why) != 0)
        return http__error(r, STORE_EBADREQ, "%s", why);
    rq.from_start = start != NULL;
    if (http__label_filters(r, &labels, why, sizeof why) != 0)
        return http__error(r, STORE_EBADREQ, "%s", why);
    struct sse *s = calloc(1, sizeof *s);
    if (s == NULL)
        return MHD_NO;
    s->h = r->h;
    s->conn = r->conn;
    snprintf(s->address, sizeof s->address, "%s", r->caller.address);
    s->caller = (struct caller){.transport = r->caller.transport,
                                .address = s->address,
                                .principal = auth_hold(r->caller.principal)};
    pthread_mutex_init(&s->lock, NULL);
    int err = ops_subscribe(r->h->ops, &s->caller, &rq, &sse__sink, s, &s->feed, why, sizeof why);
    if (err != STORE_OK) {
        auth_release(s->caller.principal);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return http__error(r, err, "%s", why);
    }
    feed_start(s->feed); /* into q, before MHD reads */

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

/* Ends the streams whose token was revoked or whose JWT expired; with
 * `beat`, writes a comment line on every idle one: proxies keep it, and a
 * stream whose client went away fails to send it and is closed. */
void http__sse_tick(struct http *h, bool beat)
{
    static const char keepalive[] = ": keepalive\n\n";
    char why[256];
    pthread_mutex_lock(&h->sse_lock);
    for (struct sse *s = h->streams; s != NULL; s = s->next) {
        if (ops_caller_live(&s->caller, why, sizeof why) != STORE_OK) {
            pthread_mutex_lock(&s->lock);
            bool ended = s->ended;
            pthread_mutex_unlock(&s->lock);
            if (!ended)
                sse__fail(s, STORE_EUNAUTH, why);
            continue;
        }
        pthread_mutex_lock(&s->lock);
        if (beat && !s->ended && s->q.len == s->off) {
            buf_add(&s->q, keepalive, sizeof keepalive - 1);
            sse__wake(s);
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&h->sse_lock);
}

void http__sse_end_all(struct http *h)
{
    pthread_mutex_lock(&h->sse_lock);
    for (struct sse *s = h->streams; s != NULL; s = s->next) {
        pthread_mutex_lock(&s->lock);
        s->ended = true;
        sse__wake(s);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&h->sse_lock);
}

/* ---- WebSocket upgrade (RFC 6455); the loop takes the socket over ----
 *
 * Without TLS the loop gets a descriptor of its own (a dup of MHD's) and
 * MHD's connection is closed at once: its memory pool (MHD's
 * connection_memory_limit, 32 KiB) would otherwise stay with every session
 * for its whole life. MHD takes the socket out of its epoll set before the
 * upgrade callback runs, and closes its descriptor without shutdown()
 * (MHD_USE_TURBO, http.c: without it MHD would shut the socket down under
 * the loop), so the socket lives on in the loop's descriptor. Such sessions are
 * no longer MHD's connections, so they are counted here by client address
 * against http_max_connections_per_ip (and bounded in all by max_sessions).
 * With TLS, MHD carries the session's TLS through a socket pair and keeps
 * the connection, as MHD's own limits count it. */

struct http__ws {
    struct http *h;
    char address[64];
};

struct http__ws_host {
    struct http__ws_host *next;
    unsigned n; /* sessions open from `host` */
    char host[];
};

/* The host part of "host:port" (the address of a caller), in `out`. */
static void http__host_of(const char *address, char *out, size_t len)
{
    const char *colon = strrchr(address, ':');
    size_t n = colon != NULL ? (size_t)(colon - address) : strlen(address);
    snprintf(out, len, "%.*s", (int)n, address);
}

static struct http__ws_host **http__ws_slot(struct http *h, const char *host)
{
    uint32_t hash = 2166136261u; /* FNV-1a */
    for (const char *p = host; *p; p++)
        hash = (hash ^ (uint8_t)*p) * 16777619u;
    struct http__ws_host **pp = &h->ws_hosts[hash % HTTP_WS_HOST_BUCKETS];
    while (*pp != NULL && strcmp((*pp)->host, host) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* Sessions open from `host` on descriptors of their own. */
static unsigned http__ws_count(struct http *h, const char *host)
{
    pthread_mutex_lock(&h->ws_lock);
    struct http__ws_host *e = *http__ws_slot(h, host);
    unsigned n = e != NULL ? e->n : 0;
    pthread_mutex_unlock(&h->ws_lock);
    return n;
}

/* Counts one more session from `host` (+1) or one fewer (-1). False when
 * out of memory: nothing counted. */
static bool http__ws_add(struct http *h, const char *host, int delta)
{
    bool ok = true;
    pthread_mutex_lock(&h->ws_lock);
    struct http__ws_host **pp = http__ws_slot(h, host), *e = *pp;
    if (e == NULL && delta > 0) {
        size_t len = strlen(host) + 1;
        if ((e = malloc(sizeof *e + len)) == NULL) {
            ok = false;
            goto out;
        }
        e->next = NULL;
        e->n = 0;
        memcpy(e->host, host, len);
        *pp = e;
    }
    if (e == NULL)
        goto out;
    e->n = delta > 0 ? e->n + 1 : e->n - 1;
    if (e->n == 0) {
        *pp = e->next;
        free(e);
    }
out:
    pthread_mutex_unlock(&h->ws_lock);
    return ok;
}

void http__ws_hosts_free(struct http *h)
{
    for (size_t i = 0; i < HTTP_WS_HOST_BUCKETS; i++) {
        while (h->ws_hosts[i] != NULL) {
            struct http__ws_host *next = h->ws_hosts[i]->next;
            free(h->ws_hosts[i]);
            h->ws_hosts[i] = next;
        }
    }
}

/* The loop is done with a session MHD holds: MHD closes its socket. */
static void http__ws_closed(void *arg, int fd, const char *address)
{
    (void)fd;
    (void)address;
    MHD_upgrade_action(arg, MHD_UPGRADE_ACTION_CLOSE);
}

/* The loop is done with a session on a descriptor of its own. */
static void http__ws_own_closed(void *arg, int fd, const char *address)
{
    char host[64];
    close(fd);
    http__host_of(address, host, sizeof host);
    http__ws_add(arg, host, -1);
}

/* Hands `sock` to the loop on a descriptor of its own and lets MHD close
 * the connection. False when it cannot (the caller hands MHD's over). */
static bool http__ws_adopt_own(struct http__ws *ws, const char *extra, size_t extra_len,
                               MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    char host[64];
    http__host_of(ws->address, host, sizeof host);
    int fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return false;
    if (!http__ws_add(ws->h, host, +1)) {
        close(fd);
        return false;
    }
    int rc =
        loop_adopt_ws(ws->h->loop, fd, extra, extra_len, ws->address, http__ws_own_closed, ws->h);
    if (rc != 0) /* the loop is stopping, or out of memory */
        http__ws_own_closed(ws->h, fd, ws->address);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE); /* MHD's descriptor and pool */
    return true;
}

static void http__ws_upgraded(void *cls, struct MHD_Connection *conn, void *req_cls,
                              const char *extra, size_t extra_len, MHD_socket sock,
                              struct MHD_UpgradeResponseHandle *urh)
{
    struct http__ws *ws = cls;
    (void)conn;
    (void)req_cls;
    if ((ws->h->tls_cert != NULL || !http__ws_adopt_own(ws, extra, extra_len, sock, urh)) &&
        loop_adopt_ws(ws->h->loop, sock, extra, extra_len, ws->address, http__ws_closed, urh) != 0)
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

enum MHD_Result http__ws(struct req *r)
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
    if (ops_sessions(r->h->ops) >= r->h->cfg->max_sessions)
        return http__error(r, STORE_EUNAVAIL, "max_sessions sessions are open");
    char host[64];
    http__host_of(r->caller.address, host, sizeof host);
    unsigned per_ip = r->h->cfg->http_max_connections_per_ip;
    if (per_ip > 0 && r->h->tls_cert == NULL && http__ws_count(r->h, host) >= per_ip)
        return http__error(r, STORE_EUNAVAIL,
                           "http_max_connections_per_ip WebSocket sessions are open from this "
                           "address");

    char text[128], accept[64];
    unsigned char digest[SHA_DIGEST_LENGTH];
    snprintf(text, sizeof text, "%s%s", key, magic);
    SHA1((const unsigned char *)text, strlen(text), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);

    struct http__ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        return MHD_NO;
    ws->h = r->h;
    snprintf(ws->address, sizeof ws->address, "%s", r->caller.address);
    struct MHD_Response *resp = MHD_create_response_for_upgrade(http__ws_upgraded, ws);
    if (resp == NULL) {
        free(ws);
        return MHD_NO;
    }
    http__conn_handed_over(r); /* the loop's now: no header timeout */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
    MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
    if (protocols != NULL)
        MHD_add_response_header(resp, "Sec-WebSocket-Protocol", "almanac.v1");
    return http__queue(r, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
}

/* ---- history, export and import ---- */

/* A streamed answer: `fill` appends the next part to `b` and says whether
 * more follows; MHD takes the bytes as the client reads them. A fill stops
 * once STREAM_PIECE bytes wait unread, and a value goes out at most
 * STREAM_PIECE of its bytes a fill, from where it lies (a large value's
 * mapped pages): an answer holds about two pieces of heap, whatever the
 * size of the values. */
#define STREAM_PIECE 65536u

struct stream {
    struct buf b;
    size_t off;
    bool done;
    bool (*fill)(struct stream *st);
    void (*end)(struct stream *st);
    struct ops *ops;
    struct caller caller; /* whose reads these are */
    /* the envelope whose value is being written (NULL: none), and whether
     * the stream holds a reference to it (else its source keeps it) */
    const struct store_entry *entry;
    bool held;
    struct envelope_value val;
    /* history */
    struct store_history *it;
    bool first;
    /* export */
    char *after;
    bool more; /* pages follow */
};

/* The next piece of the value in progress, and once it is whole the end of
 * its envelope (and a line's end after export's): true while some remains. */
static bool http__value_more(struct stream *st)
{
    if (st->entry == NULL)
        return false;
    if (envelope_value_more(&st->b, &st->val, STREAM_PIECE))
        return true;
    envelope_add_tail(&st->b, st->entry);
    if (st->held) {
        buf_add(&st->b, "\n", 1);
        store_entry_unref((struct store_entry *)st->entry);
    }
    st->entry = NULL;
    st->held = false;
    return false;
}

/* Starts the envelope of `e`: its fields up to the value, and the value's
 * first piece. */
static void http__value_start(struct stream *st, const char *key, size_t klen,
                              const struct store_entry *e, bool hold)
{
    buf_add(&st->b, "{", 1);
    envelope_add_head(&st->b, key, klen, e, "type", &st->val);
    st->entry = e;
    st->held = hold;
    if (hold)
        store_entry_ref((struct store_entry *)e);
    http__value_more(st);
}

static ssize_t http__stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    struct stream *st = cls;
    (void)pos;
    /* A fill makes progress only while less than a piece waits unread: MHD
     * may ask for more (its write buffer), it gets a piece at most. */
    if (max > STREAM_PIECE)
        max = STREAM_PIECE;
    if (st->off > 0 && st->b.len - st->off < max) { /* what is unread to the front */
        memmove(st->b.p, st->b.p + st->off, st->b.len - st->off);
        st->b.len -= st->off;
        st->off = 0;
    }
    while (st->b.len - st->off < max && !st->done && !st->b.oom)
        st->done = !st->fill(st);
    if (st->b.oom)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = st->b.len - st->off < max ? st->b.len - st->off : max;
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    memcpy(out, st->b.p + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void http__stream_free(void *cls)
{
    struct stream *st = cls;
    if (st->held)
        store_entry_unref((struct store_entry *)st->entry);
    if (st->end)
        st->end(st);
    buf_free(&st->b);
    free(st);
}

static enum MHD_Result http__stream(struct req *r, struct stream *st, const char *type)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, STREAM_PIECE, http__stream_read, st, http__stream_free);
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
    /* the iterator keeps the record's entry until the next record */
    if (http__value_more(st))
        return true;
    while (st->b.len - st->off < STREAM_PIECE) {
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
        if (rec.entry == NULL)
            envelope_add_deleted(&st->b, rec.key, rec.klen, rec.rev, rec.ts);
        else
            http__value_start(st, rec.key, rec.klen, rec.entry, false);
        if (st->entry != NULL)
            return true;
    }
    return true;
}

static void http__history_end(struct stream *st)
{
    if (st->it != NULL)
        store_history_close(st->it, NULL);
}

static const char *http__query_arg(void *arg, const char *name)
{
    return http__arg(arg, name);
}

enum MHD_Result http__history(struct req *r)
{
    char why[512];
    struct store_history_query q = {.pattern = r->path, .plen = r->plen};

    if (envelope_history_query(&q, http__query_arg, r, HTTP_HISTORY_MAX, why, sizeof why) != 0 ||
        http__label_filters(r, &q.labels, why, sizeof why) != 0)
        return http__error(r, STORE_EBADREQ, "%s", why);
    struct stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return MHD_NO;
    int err = ops_history(r->h->ops, &r->caller, &q, &st->it, why, sizeof why);
    if (err != STORE_OK) {
        free(st);
        return http__error(r, err, "%s", why);
    }
    st->fill = http__history_fill;
    st->end = http__history_end;
    st->first = true;
    buf_adds(&st->b, "{\"records\":[");
    return http__stream(r, st, "application/json");
}

/* export: every entry but the $-keys, one envelope a line, a page at a time
 * (a page ends at a value not written whole: the fills write the rest). */
static bool http__export_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct stream *st = arg;
    free(st->after);
    st->after = strndup(key, klen);
    if (st->after == NULL)
        st->b.oom = true;
    http__value_start(st, key, klen, e, true);
    return st->entry == NULL && st->b.len - st->off < STREAM_PIECE;
}

/* The next page of the export into st->b. */
static int http__export_page(struct stream *st, char *why, size_t why_len)
{
    char *after = st->after; /* the walk's cursor; the visits set the next one */
    st->after = NULL;
    int err = ops_export(st->ops, &st->caller, after, after ? strlen(after) : 0, 1000,
                         http__export_visit, st, &st->more, why, why_len);
    free(after);
    return err;
}

static bool http__export_fill(struct stream *st)
{
    char why[256];
    if (http__value_more(st))
        return true;
    if (!st->more)
        return false;
    if (http__export_page(st, why, sizeof why) != STORE_OK)
        st->b.oom = true; /* ends the answer short: the client sees it broken */
    return st->more || st->entry != NULL;
}

static void http__export_end(struct stream *st)
{
    free(st->after);
}

enum MHD_Result http__export(struct req *r)
{
    struct stream *st = calloc(1, sizeof *st);
    char why[256];
    if (st == NULL)
        return MHD_NO;
    st->ops = r->h->ops;
    st->caller = r->caller;
    st->fill = http__export_fill;
    st->end = http__export_end;
    /* The first page before the answer: a refusal is an error, not a 200
     * cut short. */
    int err = http__export_page(st, why, sizeof why);
    if (err != STORE_OK) {
        http__stream_free(st);
        return http__error(r, err, "%s", why);
    }
    st->done = !st->more && st->entry == NULL;
    return http__stream(r, st, "application/x-ndjson");
}

/* import: JSON lines as export writes them, of any size: import.c checked
 * each line as the body came in; now it applies them. */
enum MHD_Result http__import(struct req *r)
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
