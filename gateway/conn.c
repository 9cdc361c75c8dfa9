/*
 * conn.c — a connection as the loop carries it: its outbound queue, which
 * any thread fills (conn_send) and only the loop thread writes out, and its
 * life (references, closing). The invariants are loop.c's (2 and 3).
 */
#include "loop_int.h"
#include "clock.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

struct conn *conn__new(struct loop *l, int fd, enum conn_transport t, const char *address)
{
    size_t alen = strlen(address) + 1;
    struct conn *c = calloc(1, sizeof *c + alen);
    if (c == NULL)
        return NULL;
    atomic_init(&c->refs, 1);
    c->loop = l;
    c->fd = fd;
    c->transport = t;
    memcpy(c->address, address, alen);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void conn_ref(struct conn *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void msg__free(struct msg *m)
{
    if (m->data != m->own)
        free(m->data);
    free(m);
}

void conn__drop_queue(struct conn *c)
{
    while (c->head != NULL) {
        struct msg *next = c->head->next;
        msg__free(c->head);
        c->head = next;
    }
    c->tail = NULL;
    c->queued = c->head_off = 0;
}

void conn_unref(struct conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    conn__drop_queue(c);
    pthread_mutex_destroy(&c->lock);
    free(c->in);
    free(c->ws_ctl);
    free(c);
}

void loop__wake(struct loop *l)
{
    uint64_t one = 1;
    if (write(l->efd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_warn("%s: eventfd: %s", __func__, strerror(errno));
}

/* Marks `c` for the loop to write; the caller holds c->lock. */
static void conn__mark(struct conn *c)
{
    if (c->dirty)
        return;
    c->dirty = true;
    conn_ref(c);
    pthread_mutex_lock(&c->loop->lock);
    c->dirty_next = c->loop->dirty;
    c->loop->dirty = c;
    pthread_mutex_unlock(&c->loop->lock);
    loop__wake(c->loop);
}

static struct msg *msg__new(const char *data, size_t len, bool newline)
{
    struct msg *m = malloc(sizeof *m + len + 1);
    if (m == NULL)
        return NULL;
    m->next = NULL;
    m->data = m->own;
    memcpy(m->data, data, len);
    if (newline)
        m->data[len++] = '\n';
    m->len = len;
    return m;
}

static void conn__append(struct conn *c, struct msg *m)
{
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    c->queued += m->len;
}

/* Closes `c` once what is queued is written; the caller holds c->lock. */
static void conn__set_closing(struct conn *c)
{
    if (c->closing)
        return; /* marked when it began */
    c->closing = true;
    c->close_by = mono_s() + LOOP_CLOSE_GRACE;
    conn__mark(c);
}

void conn__close_soon(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    conn__set_closing(c);
    pthread_mutex_unlock(&c->lock);
}

/* Keeps a message partly written, so the stream stays whole. */
void conn__drop_unsent(struct conn *c)
{
    struct msg *partial = NULL;
    size_t off = c->head_off;
    if (c->head != NULL && off > 0) {
        partial = c->head;
        c->head = partial->next;
        partial->next = NULL;
    }
    conn__drop_queue(c);
    if (partial != NULL) {
        conn__append(c, partial);
        c->head_off = off;
    }
}

/* Queues `data`: copied, or taken over (a malloc'd buffer with a spare byte
 * for the newline) when `take`. False when the queue is full (invariant 2):
 * nothing was queued. */
static bool conn__send(struct conn *c, char *data, size_t len, bool take)
{
    bool queued = true;
    pthread_mutex_lock(&c->lock);
    if (c->dead || c->closing)
        goto out;
    if (c->queued + len > c->loop->cfg->session_queue_bytes) {
        queued = false;
        goto out;
    }
    struct msg *m;
    if (take && (m = malloc(sizeof *m)) != NULL) {
        m->next = NULL;
        m->data = data;
        if (c->transport != CONN_WS)
            data[len++] = '\n';
        m->len = len;
        take = false;
    } else
        m = msg__new(data, len, c->transport != CONN_WS);
    if (m != NULL) {
        conn__append(c, m);
        conn__mark(c);
    }
out:
    pthread_mutex_unlock(&c->lock);
    if (take)
        free(data);
    return queued;
}

bool conn_send(struct conn *c, const char *data, size_t len)
{
    return conn__send(c, (char *)data, len, false);
}

bool conn_send_buf(struct conn *c, struct buf *b)
{
    bool queued = true;
    if (!b->oom && buf_reserve(b, 1)) /* room for the newline */
        queued = conn__send(c, b->p, b->len, true);
    else
        buf_free(b);
    *b = (struct buf){0};
    return queued;
}

void conn_close_with(struct conn *c, struct buf *last)
{
    pthread_mutex_lock(&c->lock);
    if (!c->dead && !c->closing) {
        conn__drop_unsent(c);
        struct msg *m = last->oom ? NULL : msg__new(last->p, last->len, c->transport != CONN_WS);
        if (m != NULL)
            conn__append(c, m);
        log_info("connection %s: closed: %.*s", c->address,
                 (int)(last->len < 200 ? last->len : 200), last->p ? last->p : "");
        conn__set_closing(c);
    }
    pthread_mutex_unlock(&c->lock);
    buf_free(last);
}

const char *conn_address(const struct conn *c)
{
    return c->address;
}

enum conn_transport conn_transport(const struct conn *c)
{
    return c->transport;
}

void conn__want_out(struct loop *l, struct conn *c, bool on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}
