/*
 * loop_ws.c — the WebSocket transport of the loop (RFC 6455 framing by
 * wslay) on connections HTTP upgraded and handed over: a text frame is a
 * message; the close waits for the last queued message (loop.c's
 * invariant 2).
 */
#include "loop_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t ws__recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                        void *user)
{
    struct conn *c = user;
    (void)flags;
    if (c->in_len > 0) { /* bytes read by MHD before the upgrade */
        size_t n = c->in_len < len ? c->in_len : len;
        memcpy(buf, c->in, n);
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
        return (ssize_t)n;
    }
    ssize_t n = read(c->fd, buf, len);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static ssize_t ws__send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                        void *user)
{
    struct conn *c = user;
    (void)flags;
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK
                                       ? WSLAY_ERR_WOULDBLOCK
                                       : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static void ws__on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                       void *user)
{
    struct conn *c = user;
    if (c->state == NULL) /* refused by open: only its reason goes out */
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

/* Moves queued messages into wslay and lets it write. -1: close now. */
int ws__flush(struct loop *l, struct conn *c)
{
    /* wslay's own queue is unbounded: it gets a little at a time, and the
     * rest waits in ours, which is bounded (invariant 2). */
    for (;;) {
        if (wslay_event_get_queued_msg_length(c->ws) >= 65536)
            break;
        pthread_mutex_lock(&c->lock);
        struct msg *m = c->head;
        if (m != NULL) {
            c->head = m->next;
            if (c->head == NULL)
                c->tail = NULL;
            c->queued -= m->len;
        }
        pthread_mutex_unlock(&c->lock);
        if (m == NULL)
            break;
        struct wslay_event_msg wm = {WSLAY_TEXT_FRAME, (const uint8_t *)m->data, m->len};
        wslay_event_queue_msg(c->ws, &wm); /* copies; refused once a close is queued */
        msg__free(m);
        if (wslay_event_send(c->ws) != 0)
            return -1;
    }
    pthread_mutex_lock(&c->lock);
    bool closing = c->closing, drained = c->head == NULL;
    pthread_mutex_unlock(&c->lock);
    if (wslay_event_send(c->ws) != 0)
        return -1;
    /* wslay sends control frames ahead of data: the close (1008: too_slow,
     * or a session that ended) waits until the last message is out. */
    if (closing && drained && !wslay_event_get_close_sent(c->ws) &&
        wslay_event_get_queued_msg_count(c->ws) == 0) {
        wslay_event_queue_close(c->ws, WSLAY_CODE_POLICY_VIOLATION, NULL, 0);
        if (wslay_event_send(c->ws) != 0)
            return -1;
    }
    if (wslay_event_get_close_sent(c->ws)) {
        if (wslay_event_get_close_received(c->ws))
            return -1; /* the closing handshake is done */
        /* Wait for the peer's close (wslay drops what else comes) a
         * bounded time: the sweep ends it after LOOP_CLOSE_GRACE. */
        conn__close_soon(c);
    }
    conn__want_out(l, c, wslay_event_want_write(c->ws) || !drained);
    return 0;
}

int ws__read(struct loop *l, struct conn *c)
{
    if (wslay_event_recv(c->ws) != 0)
        return -1;
    return ws__flush(l, c);
}

int ws__init(struct conn *c)
{
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = ws__recv, .send_callback = ws__send, .on_msg_recv_callback = ws__on_msg};
    if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
        c->ws = NULL;
        return -1;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, c->loop->cfg->max_message_bytes);
    return 0;
}
