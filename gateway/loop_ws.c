/*
 * loop_ws.c — the WebSocket transport of the loop (RFC 6455) on connections
 * HTTP upgraded and handed over: a text message is a message of the session
 * protocol; the close waits for the last queued message (loop.c's
 * invariant 2).
 *
 * wslay reads: it checks the client's frames (masking, opcodes, control
 * frames, fragments, max_message_bytes, close codes), answers pings and
 * closes, and fails the connection with the close code RFC 6455 asks for.
 * A wslay context holds two buffers of 4 KiB: kept for a session's whole
 * life, they would be most of what an idle session costs. So a context
 * lives only while frames are read: it is given whole frames (the start of
 * one not yet whole waits in c->in), and freed once it holds nothing (no
 * message came only in part, no close under way).
 *
 * Writing is ours: a message goes out from the connection's queue as it
 * is, after a frame header made when it is written (writev, no copy); what
 * wslay sends (pongs, closes) goes into c->ws_ctl, written between two data
 * frames.
 * Invariants:
 *   1. wslay reads whole frames only (ws__whole): when wslay_event_recv
 *      returns, no byte of a frame waits in its context, and a context
 *      holding no message in part, no close and nothing to send is freed;
 *   2. c->head_off counts the bytes of the head message written, its header
 *      included; a control frame goes out between two data frames, never
 *      inside one;
 *   3. once a close is in ws_ctl no data frame follows it (what waits is
 *      dropped, but a message partly written) and no other frame is added;
 *      the connection ends when both closes are through (or at the peer's
 *      end of the stream), or LOOP_CLOSE_GRACE after ours.
 */
#include "loop_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define WS_OP_TEXT  0x1
#define WS_OP_CLOSE 0x8

#define WS_IOV 64 /* iovecs of one writev: a header and a payload a message */

/* ---- writing ---- */

/* The header of a server's (unmasked) frame of `len` bytes of text, in
 * `h`; returns its length. */
static size_t ws__header(uint8_t h[10], size_t len)
{
    h[0] = 0x80 | WS_OP_TEXT;
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static size_t ws__framed_len(const struct msg *m)
{
    uint8_t h[10];
    return ws__header(h, m->len) + m->len;
}

/* The rest of message `m`'s frame from byte `off` (header included) as
 * iovecs at iov[*n]; `h` holds its header. */
static void ws__add_frame(struct iovec *iov, int *n, uint8_t h[10], const struct msg *m, size_t off)
{
    size_t hl = ws__header(h, m->len);
    if (off < hl) {
        iov[(*n)++] = (struct iovec){h + off, hl - off};
        off = hl;
    }
    if (m->len > off - hl)
        iov[(*n)++] = (struct iovec){m->data + (off - hl), m->len - (off - hl)};
}

static void ws__pop(struct conn *c)
{
    struct msg *m = c->head;
    c->queued -= m->len;
    c->head = m->next;
    c->head_off = 0;
    if (c->head == NULL)
        c->tail = NULL;
    msg__free(m);
}

/* Takes up to `*done` bytes written off the head message (its frame);
 * false when they end inside it. */
static bool ws__consume_head(struct conn *c, size_t *done)
{
    size_t left = ws__framed_len(c->head) - c->head_off;
    if (*done < left) {
        c->head_off += *done;
        return false;
    }
    *done -= left;
    ws__pop(c);
    return true;
}

/* Takes `done` bytes written off what ws__write gave writev, in its order:
 * the rest of a frame partly written (if `partial`), control frames, data
 * frames. The caller holds c->lock. */
static void ws__consume(struct conn *c, size_t done, bool partial)
{
    if (partial && !ws__consume_head(c, &done))
        return;
    struct ws_ctl *ctl = c->ws_ctl;
    if (ctl != NULL) {
        size_t left = ctl->len - ctl->off, n = done < left ? done : left;
        ctl->off += n;
        done -= n;
        if (ctl->off < ctl->len)
            return;
        free(ctl);
        c->ws_ctl = NULL;
        if (c->ws_close_queued)
            c->ws_close_sent = true;
    }
    while (done > 0 && ws__consume_head(c, &done))
        ;
}

/* Writes what waits (invariant 2); the caller holds c->lock. 1 all written,
 * 0 the socket is full, -1 the connection must close. */
static int ws__write(struct conn *c)
{
    struct iovec iov[WS_IOV];
    uint8_t h[WS_IOV / 2][10];
    for (;;) {
        int n = 0, nh = 0;
        struct msg *m = c->head;
        bool partial = m != NULL && c->head_off > 0;
        if (partial) {
            ws__add_frame(iov, &n, h[nh++], m, c->head_off);
            m = m->next;
        }
        if (c->ws_ctl != NULL)
            iov[n++] =
                (struct iovec){c->ws_ctl->data + c->ws_ctl->off, c->ws_ctl->len - c->ws_ctl->off};
        for (; m != NULL && !c->ws_close_queued && n + 2 <= WS_IOV; m = m->next)
            ws__add_frame(iov, &n, h[nh++], m, 0);
        if (n == 0)
            return 1;
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) /* a closing client has LOOP_CLOSE_GRACE to read the rest */
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        ws__consume(c, (size_t)w, partial);
    }
}

/* Appends the bytes of control frames to c->ws_ctl (invariant 2); the
 * caller holds c->lock. False when out of memory: nothing appended. */
static bool ws__add_ctl(struct conn *c, const uint8_t *data, size_t len)
{
    struct ws_ctl *p = c->ws_ctl;
    if (p != NULL && p->off > 0) { /* what is written goes: `len` is what waits */
        memmove(p->data, p->data + p->off, p->len - p->off);
        p->len -= p->off;
        p->off = 0;
    }
    size_t had = p != NULL ? p->len : 0;
    p = realloc(p, sizeof *p + had + len);
    if (p == NULL)
        return false;
    if (had == 0)
        p->off = 0;
    memcpy(p->data + had, data, len);
    p->len = had + len;
    c->ws_ctl = p;
    return true;
}

/* Drops the data not yet begun once a close is in ws_ctl (invariant 3);
 * the caller holds c->lock. */
static void ws__close_queued(struct conn *c)
{
    if (c->ws_close_queued)
        return;
    conn__drop_unsent(c);
    c->ws_close_queued = true;
}

/* Queues our close (1008, policy violation: too_slow, or a session that
 * ended), after the last message; the caller holds c->lock. */
static void ws__queue_close(struct conn *c)
{
    static const uint8_t close[] = {0x80 | WS_OP_CLOSE, 2, 1008 >> 8, 1008 & 0xff};
    ws__close_queued(c);
    /* Out of memory, none goes: the connection ends all the same. */
    if (!ws__add_ctl(c, close, sizeof close) && c->ws_ctl == NULL)
        c->ws_close_sent = true;
}

int ws__flush(struct loop *l, struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    int rc = ws__write(c);
    if (rc == 1 && c->closing && !c->ws_close_queued && c->head == NULL) {
        ws__queue_close(c);
        rc = ws__write(c);
    }
    bool close_sent = c->ws_close_sent;
    pthread_mutex_unlock(&c->lock);
    if (rc < 0)
        return -1;
    if (close_sent) {
        if (c->ws_close_recvd)
            return -1; /* the closing handshake is done */
        /* Wait for the peer's close (what else comes is dropped) a bounded
         * time: the sweep ends it after LOOP_CLOSE_GRACE. */
        conn__close_soon(c);
    }
    conn__want_out(l, c, rc == 0);
    return 0;
}

/* ---- reading, through wslay ---- */

/* wslay reads the whole frames handed to it (c->ws_feed), then waits. */
static ssize_t ws__recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                        void *user)
{
    struct conn *c = user;
    (void)flags;
    struct ws_feed *f = c->ws_feed;
    if (f == NULL || f->len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = f->len < len ? f->len : len;
    memcpy(buf, f->p, n);
    f->p += n;
    f->len -= n;
    return (ssize_t)n;
}

/* What wslay sends (pongs, closes) goes into ws_ctl; nothing after a close
 * (invariant 3). It waits no more than data does (session_queue_bytes): a
 * client that pings and does not read is closed, not given all it asks. */
static ssize_t ws__send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                        void *user)
{
    struct conn *c = user;
    (void)flags;
    pthread_mutex_lock(&c->lock);
    size_t waiting = c->ws_ctl != NULL ? c->ws_ctl->len - c->ws_ctl->off : 0;
    bool ok = c->ws_close_queued ||
              (waiting + len <= c->loop->cfg->session_queue_bytes && ws__add_ctl(c, data, len));
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws__on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                       void *user)
{
    struct conn *c = user;
    if (c->state == NULL || c->closing) /* refused by open, or over: dropped */
        return;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        if (c->loop->handler->input(c->state, (const char *)arg->msg, arg->msg_length) != 0)
            conn__close_soon(c);
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        static const char reason[] = "almanac.v1 takes text frames";
        wslay_event_queue_close(ctx, WSLAY_CODE_UNSUPPORTED_DATA, (const uint8_t *)reason,
                                sizeof reason - 1);
    }
}

/* A context for reading frames; false when out of memory. */
static bool ws__context(struct conn *c)
{
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = ws__recv, .send_callback = ws__send, .on_msg_recv_callback = ws__on_msg};
    if (c->ws != NULL)
        return true;
    if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
        c->ws = NULL;
        return false;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, c->loop->cfg->max_message_bytes);
    return true;
}

/* The bytes of the whole frames at the start of p[0..n), and whether a
 * message is then under way in part (c->ws_in_msg). Only lengths are read
 * here: wslay checks the frames. A frame longer than max_message_bytes
 * goes to wslay as it is, which refuses it at its header. */
static size_t ws__whole(struct conn *c, const uint8_t *p, size_t n, size_t max)
{
    size_t used = 0;
    while (n - used >= 2) {
        const uint8_t *f = p + used;
        size_t avail = n - used, hl = 2;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            hl = 10;
        }
        if (len > max)
            return n;
        hl += (f[1] & 0x80) ? 4 : 0; /* the mask */
        if (avail < hl + len)
            break;
        int op = f[0] & 0x0f;
        bool fin = (f[0] & 0x80) != 0;
        if (op < WS_OP_CLOSE) /* a data frame: a message begins, goes on or ends */
            c->ws_in_msg = !fin;
        used += hl + (size_t)len;
    }
    return used;
}

/* Hands wslay the whole frames p[0..n), and what it sends back to ws_ctl;
 * frees the context if it holds nothing then (invariant 1). -1: close now. */
static int ws__frames(struct conn *c, const uint8_t *p, size_t n)
{
    if (!ws__context(c))
        return -1;
    struct ws_feed feed = {p, n};
    c->ws_feed = &feed;
    int rc = wslay_event_recv(c->ws);
    c->ws_feed = NULL;
    if (rc != 0 || wslay_event_send(c->ws) != 0)
        return -1;
    if (wslay_event_get_close_received(c->ws))
        c->ws_close_recvd = true;
    if (wslay_event_get_close_sent(c->ws)) {
        pthread_mutex_lock(&c->lock);
        ws__close_queued(c);
        pthread_mutex_unlock(&c->lock);
        conn__close_soon(c);
        return 0; /* the context stays: it knows the close */
    }
    if (!c->ws_in_msg && !c->ws_close_recvd && wslay_event_get_read_enabled(c->ws) &&
        !wslay_event_want_write(c->ws)) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    return 0;
}

/* Keeps p[0..n), the start of a frame not yet whole, in c->in (freed when
 * nothing is left). */
static int ws__keep(struct conn *c, const uint8_t *p, size_t n)
{
    if (n == 0) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
        return 0;
    }
    if ((const char *)p != c->in || n > c->in_cap) {
        char *q = malloc(n);
        if (q == NULL)
            return -1;
        memcpy(q, p, n);
        free(c->in);
        c->in = q;
        c->in_cap = n;
    }
    c->in_len = n;
    return 0;
}

int ws__read(struct loop *l, struct conn *c)
{
    ssize_t got = read(c->fd, l->rbuf, sizeof l->rbuf);
    if (got == 0)
        return -1;
    if (got < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        got = 0;
    }
    /* The peer's close came, or wslay failed the connection: what else
     * comes is dropped (invariant 3). */
    if (c->ws_close_recvd || (c->ws != NULL && !wslay_event_get_read_enabled(c->ws))) {
        ws__keep(c, NULL, 0);
        return ws__flush(l, c);
    }
    const uint8_t *p = (const uint8_t *)l->rbuf;
    size_t n = (size_t)got;
    if (c->in_len > 0) { /* the start of a frame from before (or bytes of the upgrade) */
        if (n > 0) {
            char *q = realloc(c->in, c->in_len + n);
            if (q == NULL)
                return -1;
            memcpy(q + c->in_len, l->rbuf, n);
            c->in = q;
            c->in_cap = c->in_len += n;
        }
        p = (const uint8_t *)c->in;
        n = c->in_len;
    }
    size_t whole = ws__whole(c, p, n, l->cfg->max_message_bytes);
    if (whole > 0 && ws__frames(c, p, whole) != 0)
        return -1;
    /* What is left moves to the start of c->in, or into it from rbuf. */
    if ((const char *)p == c->in && whole > 0) {
        memmove(c->in, c->in + whole, n - whole);
        p = (const uint8_t *)c->in;
    } else
        p += whole;
    if (ws__keep(c, p, n - whole) != 0)
        return -1;
    return ws__flush(l, c);
}
