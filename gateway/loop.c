/*
 * loop.c — the one event loop (epoll) that owns every session connection:
 * TCP, the Unix socket, and WebSockets handed over by the HTTP server.
 *
 * Other threads (the committer delivering events and answering writes)
 * never touch a socket: conn_send appends to the connection's queue under
 * its lock and marks it dirty; the loop, woken through an eventfd, writes.
 * Invariants:
 *   1. only the loop thread reads, writes or closes a connection's fd;
 *   2. a queue holds at most session_queue_bytes; one that would grow past
 *      it is dropped (but for a message partly written) and replaced by a
 *      too_slow error, and the connection closes once that is written, or
 *      after LOOP_CLOSE_GRACE seconds if the client does not read it;
 *   3. a conn is freed when its last reference goes: the loop holds one from
 *      accept to close, each write in flight one more; after close, sends
 *      are dropped.
 */
#include "gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <wslay/wslay.h>

#define LOOP_CLOSE_GRACE 5

struct msg {
    struct msg *next;
    size_t len;
    char *data; /* `own` for a copied message, or a buffer taken over */
    char own[];
};

struct conn {
    _Atomic int refs;
    struct loop *loop;
    int fd;
    enum conn_transport transport;
    struct session *session;
    char address[128];

    pthread_mutex_t lock; /* the queue and the flags below */
    struct msg *head, *tail;
    size_t queued, head_off;
    bool closing;     /* close once the queue is written, or at close_by */
    int64_t close_by; /* CLOCK_MONOTONIC seconds; 0 until closing */
    bool dead;        /* closed: sends are dropped */
    bool dirty;       /* on the loop's dirty list */
    struct conn *dirty_next;

    struct conn *prev, *next; /* the loop's list of open connections */
    char *in;                 /* bytes read, not yet a whole message */
    size_t in_len, in_cap;
    bool want_out; /* EPOLLOUT is on */
    bool shut;     /* our side is shut: only waiting for the peer's end */

    wslay_event_context_ptr ws;
    void (*ws_closed)(void *);
    void *ws_closed_arg;
};

struct loop {
    struct store *store;
    struct sys *sys;
    const struct config *cfg;
    int epfd, efd, tcp_fd, unix_fd;
    int spare_fd; /* held for refusing a connection when descriptors run out */
    int64_t emfile_logged;
    unsigned short tcp_port;
    pthread_t thread;
    bool started;
    _Atomic bool stop;
    _Atomic unsigned sessions;
    _Atomic uint64_t next_id;

    pthread_mutex_t lock; /* dirty list, adoptions and `closed` */
    struct conn *dirty;
    struct conn *adopted; /* WebSockets from HTTP, for the loop to take */
    bool closed;          /* loop_stop ran: no more adoptions */
    struct conn *all;
};

/* epoll data: listeners and the eventfd are told apart by these. */
static char loop__tcp_tag, loop__unix_tag, loop__wake_tag;

void conn_ref(struct conn *c)
{
    atomic_fetch_add(&c->refs, 1);
}

static void msg__free(struct msg *m)
{
    if (m->data != m->own)
        free(m->data);
    free(m);
}

static void conn__drop_queue(struct conn *c)
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
    free(c);
}

static void loop__wake(struct loop *l)
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

static int64_t loop__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

/* Closes `c` once what is queued is written; the caller holds c->lock. */
static void conn__set_closing(struct conn *c)
{
    if (c->closing)
        return; /* marked when it began */
    c->closing = true;
    c->close_by = loop__now() + LOOP_CLOSE_GRACE;
    conn__mark(c);
}

static void conn__close_soon(struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    conn__set_closing(c);
    pthread_mutex_unlock(&c->lock);
}

/* Queues `data`: copied, or taken over (a malloc'd buffer with a spare byte
 * for the newline) when `take`. */
static void conn__send(struct conn *c, char *data, size_t len, bool take)
{
    pthread_mutex_lock(&c->lock);
    if (c->dead || c->closing) {
        pthread_mutex_unlock(&c->lock);
        if (take)
            free(data);
        return;
    }
    if (c->queued + len > c->loop->cfg->session_queue_bytes) {
        /* Invariant 2: the client reads too slowly. Drop what waits, but
         * for a message already partly written: the stream stays whole. */
        static const char slow[] = "{\"type\":\"error\",\"id\":null,\"error\":\"too_slow\","
                                   "\"message\":\"the session's outbound queue is full: the "
                                   "client reads too slowly\"}";
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
        struct msg *m = msg__new(slow, sizeof slow - 1, c->transport != CONN_WS);
        if (m != NULL)
            conn__append(c, m);
        log_info("session %s: closed: too slow", c->address);
        conn__set_closing(c);
        pthread_mutex_unlock(&c->lock);
        if (take)
            free(data);
        return;
    }
    struct msg *m;
    if (take && (m = malloc(sizeof *m)) != NULL) {
        m->next = NULL;
        m->data = data;
        if (c->transport != CONN_WS)
            data[len++] = '\n';
        m->len = len;
    } else {
        m = msg__new(data, len, c->transport != CONN_WS);
        if (take)
            free(data);
    }
    if (m != NULL) {
        conn__append(c, m);
        conn__mark(c);
    }
    pthread_mutex_unlock(&c->lock);
}

void conn_send(struct conn *c, const char *data, size_t len)
{
    conn__send(c, (char *)data, len, false);
}

void conn_send_buf(struct conn *c, struct buf *b)
{
    if (!b->oom && buf_reserve(b, 1)) /* room for the newline */
        conn__send(c, b->p, b->len, true);
    else
        buf_free(b);
    *b = (struct buf){0};
}

/* Sends an error that ends the session, then closes it. */
static void loop__error_close(struct conn *c, int err, const char *text)
{
    struct buf b = {0};
    buf_adds(&b, "{\"type\":\"error\",\"id\":null,");
    envelope_add_error(&b, err, text);
    conn_send_buf(c, &b);
    conn__close_soon(c);
}

/* ---- closing ---- */

static void loop__close(struct loop *l, struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->dead) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    c->dead = true;
    conn__drop_queue(c);
    pthread_mutex_unlock(&c->lock);
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    atomic_fetch_sub(&l->sessions, 1);
    if (c->session != NULL)
        session_free(c->session);
    c->session = NULL;
    if (c->ws != NULL)
        wslay_event_context_free(c->ws);
    if (c->ws_closed != NULL)
        c->ws_closed(c->ws_closed_arg); /* MHD closes an upgraded socket */
    else
        close(c->fd);
    pthread_mutex_lock(&l->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        l->all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&l->lock);
    conn_unref(c);
}

static void loop__want_out(struct loop *l, struct conn *c, bool on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(l->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* ---- line transports (TCP, Unix) ---- */

/* Writes what is queued. Returns -1 when the connection must close. */
static int loop__flush_lines(struct loop *l, struct conn *c)
{
    struct iovec iov[64];
    pthread_mutex_lock(&c->lock);
    while (c->head != NULL) {
        int n = 0;
        size_t off = c->head_off;
        for (struct msg *m = c->head; m != NULL && n < 64; m = m->next, off = 0)
            iov[n++] = (struct iovec){m->data + off, m->len - off};
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) {
            bool again = errno == EAGAIN || errno == EWOULDBLOCK;
            pthread_mutex_unlock(&c->lock);
            if (!again)
                return -1;
            loop__want_out(l, c, true);
            return 0; /* a closing client has LOOP_CLOSE_GRACE to read the rest */
        }
        size_t done = (size_t)w;
        while (done > 0) {
            struct msg *m = c->head;
            size_t left = m->len - c->head_off;
            if (done < left) {
                c->head_off += done;
                break;
            }
            done -= left;
            c->queued -= m->len;
            c->head = m->next;
            c->head_off = 0;
            msg__free(m);
        }
        if (c->head == NULL)
            c->tail = NULL;
    }
    bool closing = c->closing;
    pthread_mutex_unlock(&c->lock);
    loop__want_out(l, c, false);
    if (closing && !c->shut) {
        /* All is written: end our side, and let the peer end its own, so
         * unread input does not turn the close into a reset that loses the
         * last answer. The sweep ends it after LOOP_CLOSE_GRACE anyway. */
        shutdown(c->fd, SHUT_WR);
        c->shut = true;
    }
    return 0;
}

/* Handles the whole lines in c->in; keeps the start of the next one. */
static int loop__lines(struct loop *l, struct conn *c)
{
    size_t start = 0;
    for (;;) {
        char *nl = memchr(c->in + start, '\n', c->in_len - start);
        if (nl == NULL)
            break;
        const char *line = c->in + start;
        size_t len = (size_t)(nl - line);
        start += len + 1;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len > 0 && session_input(c->session, line, len) != 0) {
            conn__close_soon(c); /* after its last answer is written */
            break;
        }
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len > l->cfg->max_message_bytes)
        loop__error_close(c, STORE_ETOOLARGE, "a message is longer than max_message_bytes");
    return 0;
}

static int loop__read_lines(struct loop *l, struct conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            char *p = realloc(c->in, cap);
            if (p == NULL)
                return -1;
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0)
            return -1;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        if (c->closing) {
            continue; /* the session is over: what comes is dropped */
        }
        c->in_len += (size_t)n;
        if (loop__lines(l, c) != 0)
            return -1;
        if (c->closing)
            return 0;
    }
}

/* ---- WebSocket transport (wslay) ---- */

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
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        if (session_input(c->session, (const char *)arg->msg, arg->msg_length) != 0)
            conn__close_soon(c);
    } else if (arg->opcode == WSLAY_BINARY_FRAME) {
        static const char reason[] = "almanac.v1 takes text frames";
        wslay_event_queue_close(ctx, WSLAY_CODE_UNSUPPORTED_DATA, (const uint8_t *)reason,
                                sizeof reason - 1);
    }
}

/* Moves queued messages into wslay and lets it write. -1: close now. */
static int loop__flush_ws(struct loop *l, struct conn *c)
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
    loop__want_out(l, c, wslay_event_want_write(c->ws) || !drained);
    return 0;
}

static int loop__read_ws(struct loop *l, struct conn *c)
{
    if (wslay_event_recv(c->ws) != 0)
        return -1;
    return loop__flush_ws(l, c);
}

/* ---- connections ---- */

static struct conn *conn__new(struct loop *l, int fd, enum conn_transport t, const char *address)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    atomic_init(&c->refs, 1);
    c->loop = l;
    c->fd = fd;
    c->transport = t;
    snprintf(c->address, sizeof c->address, "%s", address);
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

/* Makes `c` one of the loop's open connections (the loop thread only). */
static void loop__add(struct loop *l, struct conn *c)
{
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    pthread_mutex_lock(&l->lock);
    c->next = l->all;
    if (l->all)
        l->all->prev = c;
    l->all = c;
    pthread_mutex_unlock(&l->lock);
    atomic_fetch_add(&l->sessions, 1);
}

static int loop__watch(struct loop *l, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void loop__accept(struct loop *l, int lfd, enum conn_transport t)
{
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int fd = accept4(lfd, (struct sockaddr *)&sa, &salen, SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && l->spare_fd >= 0) {
            /* Out of descriptors: a connection left pending would wake the
             * loop forever, so free the spare one to take it and close it
             * (libuv's way). */
            close(l->spare_fd);
            fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                close(fd);
            l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (loop__now() - l->emfile_logged >= 1000) {
                l->emfile_logged = loop__now();
                log_warn("session: out of file descriptors: connections are refused");
            }
            continue;
        }
        if (fd < 0)
            return;
        char address[128] = "unix";
        if (t == CONN_TCP) {
            char host[64] = "?", port[16] = "?";
            getnameinfo((struct sockaddr *)&sa, salen, host, sizeof host, port, sizeof port,
                        NI_NUMERICHOST | NI_NUMERICSERV);
            snprintf(address, sizeof address, "%s:%s", host, port);
        }
        if (atomic_load(&l->sessions) >= l->cfg->max_sessions) {
            static const char full[] = "{\"type\":\"error\",\"id\":null,\"error\":\"unavailable\","
                                       "\"message\":\"max_sessions sessions are open\"}\n";
            if (write(fd, full, sizeof full - 1) < 0)
                log_debug("session %s: refused", address);
            close(fd);
            continue;
        }
        struct conn *c = conn__new(l, fd, t, address);
        if (c == NULL) {
            close(fd);
            continue;
        }
        loop__add(l, c);
        c->session = session_new(l, l->store, l->sys, l->cfg, c, t, address);
        if (c->session == NULL || loop__watch(l, c) != 0)
            loop__close(l, c);
    }
}

int loop_adopt_ws(struct loop *l, int fd, const char *extra, size_t extra_len, const char *address,
                  void (*closed)(void *), void *closed_arg)
{
    struct conn *c = conn__new(l, fd, CONN_WS, address);
    if (c == NULL)
        return -1;
    if (extra_len > 0) {
        if ((c->in = malloc(extra_len)) == NULL) {
            conn_unref(c);
            return -1;
        }
        memcpy(c->in, extra, extra_len);
        c->in_len = c->in_cap = extra_len;
    }
    c->ws_closed = closed;
    c->ws_closed_arg = closed_arg;
    /* Invariant 1: the loop thread takes it from here (loop__take_adopted). */
    pthread_mutex_lock(&l->lock);
    if (l->closed) { /* stopping: the caller closes the socket */
        pthread_mutex_unlock(&l->lock);
        conn_unref(c);
        return -1;
    }
    c->next = l->adopted;
    l->adopted = c;
    pthread_mutex_unlock(&l->lock);
    loop__wake(l);
    return 0;
}

static void loop__take_adopted(struct loop *l)
{
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = ws__recv, .send_callback = ws__send, .on_msg_recv_callback = ws__on_msg};
    pthread_mutex_lock(&l->lock);
    struct conn *list = l->adopted;
    l->adopted = NULL;
    pthread_mutex_unlock(&l->lock);
    while (list != NULL) {
        struct conn *c = list;
        list = c->next;
        c->next = NULL;
        loop__add(l, c);
        if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
            c->ws = NULL;
            loop__close(l, c);
            continue;
        }
        wslay_event_config_set_max_recv_msg_length(c->ws, l->cfg->max_message_bytes);
        c->session = session_new(l, l->store, l->sys, l->cfg, c, CONN_WS, c->address);
        if (c->session == NULL || loop__watch(l, c) != 0) {
            loop__close(l, c);
            continue;
        }
        /* Bytes that came with the upgrade are read now: epoll won't say. */
        if (c->in_len > 0 && loop__read_ws(l, c) != 0)
            loop__close(l, c);
    }
}

static void loop__flush(struct loop *l, struct conn *c)
{
    int rc = c->transport == CONN_WS ? loop__flush_ws(l, c) : loop__flush_lines(l, c);
    if (rc != 0)
        loop__close(l, c);
}

static void loop__dirty(struct loop *l)
{
    uint64_t n;
    if (read(l->efd, &n, sizeof n) < 0 && errno != EAGAIN)
        log_warn("%s: eventfd: %s", __func__, strerror(errno));
    loop__take_adopted(l);
    pthread_mutex_lock(&l->lock);
    struct conn *list = l->dirty;
    l->dirty = NULL;
    pthread_mutex_unlock(&l->lock);
    while (list != NULL) {
        struct conn *c = list, *next = c->dirty_next;
        pthread_mutex_lock(&c->lock);
        c->dirty = false;
        bool dead = c->dead;
        pthread_mutex_unlock(&c->lock);
        if (!dead)
            loop__flush(l, c);
        conn_unref(c);
        list = next;
    }
}

static bool loop__is_conn(const void *p)
{
    return p != &loop__wake_tag && p != &loop__tcp_tag && p != &loop__unix_tag;
}

/* Closes the closing connections whose clients did not read in time. */
static void loop__sweep(struct loop *l)
{
    int64_t now = loop__now();
    struct conn *c = l->all;
    while (c != NULL) {
        struct conn *next = c->next;
        pthread_mutex_lock(&c->lock);
        bool late = c->closing && now >= c->close_by;
        pthread_mutex_unlock(&c->lock);
        if (late)
            loop__close(l, c);
        c = next;
    }
}

static void *loop__run(void *arg)
{
    struct loop *l = arg;
    struct epoll_event events[64];
    int64_t swept = loop__now();

    while (!atomic_load(&l->stop)) {
        int n = epoll_wait(l->epfd, events, 64, 1000);
        /* Handling one event may close a connection another event of the
         * batch names: each holds a reference until the batch is done. */
        for (int i = 0; i < n; i++)
            if (loop__is_conn(events[i].data.ptr))
                conn_ref(events[i].data.ptr);
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &loop__wake_tag) {
                loop__dirty(l);
                continue;
            }
            if (p == &loop__tcp_tag || p == &loop__unix_tag) {
                loop__accept(l, p == &loop__tcp_tag ? l->tcp_fd : l->unix_fd,
                             p == &loop__tcp_tag ? CONN_TCP : CONN_UNIX);
                continue;
            }
            struct conn *c = p;
            if (c->dead)
                continue;
            uint32_t e = events[i].events;
            int rc = 0;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                rc = c->transport == CONN_WS ? loop__read_ws(l, c) : loop__read_lines(l, c);
            if (rc == 0 && !c->dead)
                rc = c->transport == CONN_WS ? loop__flush_ws(l, c) : loop__flush_lines(l, c);
            if (rc != 0)
                loop__close(l, c);
        }
        for (int i = 0; i < n; i++)
            if (loop__is_conn(events[i].data.ptr))
                conn_unref(events[i].data.ptr);
        if (loop__now() != swept) {
            swept = loop__now();
            loop__sweep(l);
            sys_tick(l->sys);
        }
    }
    /* Stop: write what is queued (answers of the last writes), then close. */
    loop__dirty(l);
    while (l->all != NULL)
        loop__close(l, l->all);
    return NULL;
}

/* ---- start and stop ---- */

static int loop__listen_tcp(struct loop *l, const char *spec, char *why, size_t why_len)
{
    char host[256];
    struct addrinfo *ai = NULL;
    if (config_resolve("tcp_listen", spec, &ai, host, sizeof host, why, why_len) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 512) != 0) {
        snprintf(why, why_len, "cannot listen on %s: %s", spec, strerror(errno));
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &salen);
    l->tcp_port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    l->tcp_fd = fd;
    log_info("sessions: listening on tcp://%s:%u/", host, l->tcp_port);
    return 0;
}

static int loop__listen_unix(struct loop *l, const char *path, char *why, size_t why_len)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(why, why_len, "unix_socket %s: the path is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    /* A socket left by a killed almanac is replaced; any other file is not. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(why, why_len, "unix_socket %s exists and is not a socket", path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 512) != 0) {
        snprintf(why, why_len, "cannot listen on unix_socket %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    l->unix_fd = fd;
    log_info("sessions: listening on unix:%s", path);
    return 0;
}

static int loop__add_fd(struct loop *l, int fd, void *tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int loop_start(struct store *store, struct sys *sys, const struct config *cfg, struct loop **out,
               char *why, size_t why_len)
{
    struct loop *l = calloc(1, sizeof *l);
    *out = NULL;
    if (l == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    l->store = store;
    l->sys = sys;
    l->cfg = cfg;
    l->tcp_fd = l->unix_fd = -1;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pthread_mutex_init(&l->lock, NULL);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->epfd < 0 || l->efd < 0 || loop__add_fd(l, l->efd, &loop__wake_tag) != 0) {
        snprintf(why, why_len, "cannot start the session loop: %s", strerror(errno));
        goto fail;
    }
    if (strcmp(cfg->tcp_listen, "off") != 0 &&
        (loop__listen_tcp(l, cfg->tcp_listen, why, why_len) != 0 ||
         loop__add_fd(l, l->tcp_fd, &loop__tcp_tag) != 0))
        goto fail;
    if (cfg->unix_socket != NULL && (loop__listen_unix(l, cfg->unix_socket, why, why_len) != 0 ||
                                     loop__add_fd(l, l->unix_fd, &loop__unix_tag) != 0))
        goto fail;
    if (pthread_create(&l->thread, NULL, loop__run, l) != 0) {
        snprintf(why, why_len, "cannot start the session loop thread");
        goto fail;
    }
    l->started = true;
    *out = l;
    return 0;
fail:
    loop_stop(l);
    loop_free(l);
    return -1;
}

void loop_quiesce(struct loop *l)
{
    if (l == NULL)
        return;
    /* The loop thread may be in epoll_wait on them: removing first. */
    if (l->tcp_fd >= 0) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->tcp_fd, NULL);
        close(l->tcp_fd);
        l->tcp_fd = -1;
    }
    if (l->unix_fd >= 0) {
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->unix_fd, NULL);
        close(l->unix_fd);
        unlink(l->cfg->unix_socket);
        l->unix_fd = -1;
    }
}

void loop_stop(struct loop *l)
{
    if (l == NULL)
        return;
    loop_quiesce(l);
    pthread_mutex_lock(&l->lock);
    l->closed = true;
    pthread_mutex_unlock(&l->lock);
    if (l->started) {
        atomic_store(&l->stop, true);
        loop__wake(l);
        pthread_join(l->thread, NULL);
    }
    while (l->dirty != NULL) {
        struct conn *next = l->dirty->dirty_next;
        conn_unref(l->dirty);
        l->dirty = next;
    }
    while (l->adopted != NULL) {
        struct conn *next = l->adopted->next;
        l->adopted->ws_closed(l->adopted->ws_closed_arg);
        conn_unref(l->adopted);
        l->adopted = next;
    }
    l->started = false;
}

void loop_free(struct loop *l)
{
    if (l == NULL)
        return;
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->efd >= 0)
        close(l->efd);
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

uint64_t loop_next_id(struct loop *l)
{
    return atomic_fetch_add(&l->next_id, 1) + 1;
}

unsigned loop_sessions(const struct loop *l)
{
    return atomic_load(&l->sessions);
}
