/*
 * loop.c — the one event loop (epoll) that carries the bytes of every
 * message connection: TCP (with OpenSSL's TLS when tcp_tls_cert is set),
 * the Unix socket, and WebSockets handed over by the HTTP server. It frames
 * messages (lines, or WebSocket frames through wslay) and knows nothing of
 * what they say: a table of callbacks (struct loop_handler: open, input,
 * close, tick, check, timers), as Redis's ae.c takes an aeFileProc, gets
 * each connection's messages.
 *
 * Other threads (the committer delivering events and answering writes)
 * never touch a socket: conn_send appends to the connection's queue under
 * its lock and marks it dirty; the loop, woken through an eventfd, writes.
 * Invariants:
 *   1. only the loop thread reads, writes or closes a connection's fd, and
 *      calls the handler's open, input, close, tick, check and timers;
 *   2. a queue holds at most session_queue_bytes: conn_send refuses a
 *      message past it, and what the client is told then is the handler's
 *      choice (conn_close_with drops the queue, but for a message partly
 *      written, and queues a last one); a closing connection closes once its
 *      queue is written, or after LOOP_CLOSE_GRACE seconds if the client
 *      does not read it;
 *   3. a conn is freed when its last reference goes: the loop holds one from
 *      accept to close, each write in flight one more; after close, sends
 *      are dropped;
 *   4. the handler's close runs once for each open that returned a state,
 *      before the socket is closed;
 *   5. TLS (tcp_tls_cert, TCP only): every event of a TLS connection runs
 *      its read path, then its flush. Reads drive the handshake (a client
 *      that fails it is closed; one that has not ended it within
 *      LOOP_HANDSHAKE_GRACE seconds too; the handler opens a session only
 *      once it is done, so silent clients hold no session) and read until SSL wants more
 *      input, so no decrypted byte waits inside SSL unseen by epoll. The
 *      flush writes nothing before the handshake is done (the welcome
 *      waits), and SSL_write gets bytes copied off the queue (c->tls)
 *      until they are all written, so a retry has the same bytes. EPOLLOUT
 *      is on exactly when the last SSL call waits for room to write: on a
 *      wait for input it would only spin.
 */
#include "loop_int.h"
#include "clock.h"
#include "gateway.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
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

/* epoll data: listeners and the eventfd are told apart by these. */
static char loop__tcp_tag, loop__unix_tag, loop__wake_tag;

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
    atomic_fetch_sub(&l->conns, 1);
    l->churn++;
    l->churn_s = mono_s();
    if (c->state != NULL)
        l->handler->close(c->state); /* invariant 4 */
    c->state = NULL;
    if (c->ws != NULL)
        wslay_event_context_free(c->ws);
    if (c->tls != NULL)
        SSL_free(c->tls->ssl);
    free(c->tls);
    if (c->ws_closed != NULL)
        c->ws_closed(c->ws_closed_arg, c->fd, c->address); /* HTTP closes an upgraded socket */
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

/* ---- line transports (TCP, Unix) ---- */

/* The reason OpenSSL gives for a failure (`otherwise` if none), its error
 * queue emptied. */
static const char *loop__tls_error(const char *otherwise)
{
    unsigned long e = ERR_get_error();
    const char *reason =
        ERR_SYSTEM_ERROR(e) ? strerror(ERR_GET_REASON(e)) : ERR_reason_error_string(e);
    ERR_clear_error();
    return reason ? reason : otherwise;
}

/* What an SSL call's result (1 done, else failed) means for connection `c`:
 * 1 done, 0 wait (c->tls_wants_out says for what), -1 the connection is
 * over. The caller empties the error queue before the call. */
static int loop__tls_result(struct conn *c, int ok)
{
    c->tls_wants_out = false;
    if (ok == 1)
        return 1;
    switch (SSL_get_error(c->tls->ssl, ok)) {
    case SSL_ERROR_WANT_WRITE:
        c->tls_wants_out = true;
        return 0;
    case SSL_ERROR_WANT_READ:
        return 0;
    case SSL_ERROR_ZERO_RETURN: /* the peer's close_notify */
        return -1;
    default: /* plain text, a certificate the client refused, a reset */
        log_debug("connection %s: TLS: %s", c->address, loop__tls_error("the connection ended"));
        return -1;
    }
}

/* Takes `done` bytes, written or copied for writing, off the queue; the
 * caller holds c->lock. */
static void loop__consume(struct conn *c, size_t done)
{
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

/* Writes the queue to the socket; the caller holds c->lock. 1 all written,
 * 0 the socket is full, -1 the connection must close. */
static int loop__write_plain(struct conn *c)
{
    struct iovec iov[64];
    while (c->head != NULL) {
        int n = 0;
        size_t off = c->head_off;
        for (struct msg *m = c->head; m != NULL && n < 64; m = m->next, off = 0)
            iov[n++] = (struct iovec){m->data + off, m->len - off};
        ssize_t w = writev(c->fd, iov, n);
        if (w < 0) /* a closing client has LOOP_CLOSE_GRACE to read the rest */
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        loop__consume(c, (size_t)w);
    }
    return 1;
}

/* Writes the queue through TLS (invariant 5); the caller holds c->lock.
 * 1 all written, 0 wait, -1 the connection must close. */
static int loop__write_tls(struct conn *c)
{
    if (!SSL_is_init_finished(c->tls->ssl))
        return 0; /* the read path drives the handshake */
    for (;;) {
        struct conn_tls *o = c->tls;
        if (o->off == o->len) {
            o->off = o->len = 0;
            while (c->head != NULL && o->len < LOOP_TLS_CHUNK) {
                size_t n = c->head->len - c->head_off, room = LOOP_TLS_CHUNK - o->len;
                n = n < room ? n : room;
                memcpy(o->data + o->len, c->head->data + c->head_off, n);
                o->len += n;
                loop__consume(c, n);
            }
            if (o->len == 0)
                return 1;
        }
        size_t w = 0;
        ERR_clear_error();
        int rc =
            loop__tls_result(c, SSL_write_ex(c->tls->ssl, o->data + o->off, o->len - o->off, &w));
        if (rc <= 0)
            return rc;
        o->off += w;
    }
}

/* Writes what is queued. Returns -1 when the connection must close. */
static int loop__flush_lines(struct loop *l, struct conn *c)
{
    pthread_mutex_lock(&c->lock);
    int rc = c->tls != NULL ? loop__write_tls(c) : loop__write_plain(c);
    bool closing = c->closing;
    pthread_mutex_unlock(&c->lock);
    if (rc < 0)
        return -1;
    conn__want_out(l, c, c->tls != NULL ? c->tls_wants_out : rc == 0);
    if (rc == 1 && closing && !c->shut) {
        /* All is written: end our side, and let the peer end its own, so
         * unread input does not turn the close into a reset that loses the
         * last answer. The sweep ends it after LOOP_CLOSE_GRACE anyway. */
        if (c->tls != NULL) {
            ERR_clear_error();
            SSL_shutdown(c->tls->ssl); /* close_notify, if the socket takes it now */
            ERR_clear_error();
        }
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
        if (len > 0 && l->handler->input(c->state, line, len) != 0) {
            conn__close_soon(c); /* after its last answer is written */
            break;
        }
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->in_len > l->cfg->max_message_bytes) {
        l->handler->oversize(c->state);
        conn__close_soon(c); /* once the handler's answer is written */
    }
    return 0;
}

/* Hands `c` to the handler. One it refuses (open returns NULL) is closed
 * once what open queued (its reason) is written. */
static void loop__hand_over(struct loop *l, struct conn *c)
{
    c->opened = true;
    c->state = l->handler->open(l->arg, c);
    if (c->state == NULL)
        conn__close_soon(c);
}

/* read(2) through TLS when `c` has it: bytes, 0 at the end, or -1 with
 * errno (EAGAIN: wait). */
static ssize_t loop__recv(struct conn *c, char *buf, size_t len)
{
    if (c->tls == NULL)
        return read(c->fd, buf, len);
    size_t n = 0;
    ERR_clear_error();
    int rc = loop__tls_result(c, SSL_read_ex(c->tls->ssl, buf, len, &n));
    if (rc == 0)
        errno = EAGAIN;
    return rc == 1 ? (ssize_t)n : rc == 0 ? -1 : 0;
}

static int loop__read_lines(struct loop *l, struct conn *c)
{
    if (c->tls != NULL && !SSL_is_init_finished(c->tls->ssl)) {
        ERR_clear_error();
        int rc = loop__tls_result(c, SSL_do_handshake(c->tls->ssl));
        if (rc <= 0)
            return rc;
    }
    if (!c->opened) /* a TLS client, its handshake done */
        loop__hand_over(l, c);
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            char *p = realloc(c->in, cap);
            if (p == NULL)
                return -1;
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t n = loop__recv(c, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0)
            return -1;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->in_len == 0) { /* an idle session keeps no buffer */
                free(c->in);
                c->in = NULL;
                c->in_cap = 0;
            }
            return 0;
        }
        if (n < 0)
            return -1;
        if (c->closing || c->state == NULL)
            continue; /* the connection is over: what comes is dropped */
        c->in_len += (size_t)n;
        if (loop__lines(l, c) != 0)
            return -1;
        if (c->closing)
            return 0;
    }
}

/* ---- connections ---- */

/* Messages go out as soon as they are queued: the loop writes what waits
 * at once, so Nagle's algorithm would only hold a message back until the
 * peer's delayed ACK (up to 40 ms). MHD turns it off at an upgrade. A Unix
 * socket (or wss's socket pair) does not take it: nothing to do. */
static void loop__nodelay(struct conn *c)
{
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
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
    atomic_fetch_add(&l->conns, 1);
    l->churn++;
    l->churn_s = mono_s();
}

static int loop__watch(struct loop *l, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void loop__flush(struct loop *l, struct conn *c)
{
    int rc = c->transport == CONN_WS ? ws__flush(l, c) : loop__flush_lines(l, c);
    if (rc != 0)
        loop__close(l, c);
}

/* Watches a new connection (loop__add'ed) and hands it to the handler: at
 * once, or a TLS one when its handshake is done (invariant 5). */
static int loop__open(struct loop *l, struct conn *c)
{
    if (loop__watch(l, c) != 0) {
        loop__close(l, c);
        return -1;
    }
    if (c->tls == NULL)
        loop__hand_over(l, c);
    loop__flush(l, c);
    return 0;
}

/* Puts TLS on a new TCP connection: its handshake starts with the client's
 * first bytes. 0 or -1. */
static int loop__tls_new(struct loop *l, struct conn *c)
{
    if ((c->tls = calloc(1, sizeof *c->tls)) == NULL || (c->tls->ssl = SSL_new(l->tls)) == NULL ||
        SSL_set_fd(c->tls->ssl, c->fd) != 1) {
        ERR_clear_error();
        return -1;
    }
    SSL_set_accept_state(c->tls->ssl);
    c->close_by = mono_s() + LOOP_HANDSHAKE_GRACE; /* invariant 5 */
    return 0;
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
            if (mono_s() - l->emfile_logged >= 10) { /* seconds: one warning in ten */
                l->emfile_logged = mono_s();
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
        struct conn *c = conn__new(l, fd, t, address);
        if (c == NULL) {
            close(fd);
            continue;
        }
        loop__add(l, c);
        if (t == CONN_TCP)
            loop__nodelay(c);
        if (t == CONN_TCP && l->tls != NULL && loop__tls_new(l, c) != 0) {
            loop__close(l, c);
            continue;
        }
        loop__open(l, c);
    }
}

/* A WebSocket handed over, until the loop thread makes it a connection. */
struct loop__adoption {
    struct loop__adoption *next;
    int fd;
    loop_closed_fn closed;
    void *closed_arg;
    size_t extra_len;
    char *address; /* in `text`, after the extra bytes */
    char text[];
};

int loop_adopt_ws(struct loop *l, int fd, const char *extra, size_t extra_len, const char *address,
                  loop_closed_fn closed, void *closed_arg)
{
    size_t alen = strlen(address) + 1;
    struct loop__adoption *a = malloc(sizeof *a + extra_len + alen);
    if (a == NULL)
        return -1;
    *a = (struct loop__adoption){
        .fd = fd, .closed = closed, .closed_arg = closed_arg, .extra_len = extra_len};
    if (extra_len > 0)
        memcpy(a->text, extra, extra_len);
    a->address = memcpy(a->text + extra_len, address, alen);
    /* Invariant 1: the loop thread takes it from here (loop__take_adopted). */
    pthread_mutex_lock(&l->lock);
    if (l->closed) { /* stopping: the caller closes the socket */
        pthread_mutex_unlock(&l->lock);
        free(a);
        return -1;
    }
    a->next = l->adopted;
    l->adopted = a;
    pthread_mutex_unlock(&l->lock);
    loop__wake(l);
    return 0;
}

/* The connection of adoption `a` (freed), or NULL after closing its socket. */
static struct conn *loop__adopted_conn(struct loop *l, struct loop__adoption *a)
{
    struct conn *c = conn__new(l, a->fd, CONN_WS, a->address);
    if (c != NULL && a->extra_len > 0) {
        if ((c->in = malloc(a->extra_len)) != NULL) {
            memcpy(c->in, a->text, a->extra_len);
            c->in_len = c->in_cap = a->extra_len;
        } else {
            conn_unref(c);
            c = NULL;
        }
    }
    if (c != NULL) {
        c->ws_closed = a->closed;
        c->ws_closed_arg = a->closed_arg;
    } else
        a->closed(a->closed_arg, a->fd, a->address);
    free(a);
    return c;
}

static void loop__take_adopted(struct loop *l)
{
    pthread_mutex_lock(&l->lock);
    struct loop__adoption *list = l->adopted;
    l->adopted = NULL;
    pthread_mutex_unlock(&l->lock);
    while (list != NULL) {
        struct loop__adoption *a = list;
        list = a->next;
        struct conn *c = loop__adopted_conn(l, a);
        if (c == NULL)
            continue;
        loop__add(l, c);
        loop__nodelay(c);
        if (loop__open(l, c) != 0 || c->state == NULL)
            continue;
        /* Bytes that came with the upgrade are read now: epoll won't say. */
        if (c->in_len > 0 && ws__read(l, c) != 0)
            loop__close(l, c);
    }
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

/* Closes the closing connections whose clients did not read in time, and
 * lets the handler check the others. */
static void loop__sweep(struct loop *l)
{
    int64_t now = mono_s();
    struct conn *c = l->all;
    while (c != NULL) {
        struct conn *next = c->next;
        pthread_mutex_lock(&c->lock);
        bool closing = c->closing;
        bool handshaking = c->tls != NULL && !SSL_is_init_finished(c->tls->ssl);
        bool late = (closing || handshaking) && now >= c->close_by;
        pthread_mutex_unlock(&c->lock);
        if (late)
            loop__close(l, c);
        else if (!closing && c->state != NULL && l->handler->check != NULL)
            l->handler->check(c->state);
        c = next;
    }
}

/* Gives the heap's free pages back to the system once connections stopped
 * coming and going (a second without any), or every LOOP_TRIM_EVERY
 * seconds while they keep doing so. Opening a session leaves holes between
 * what it keeps (its handshake, welcome and subscription answer are freed
 * around it, on several threads' arenas): on 10,000 idle WebSocket
 * sessions they were about a third of the resident memory. */
static void loop__trim(struct loop *l, int64_t now)
{
    if (l->churn == 0 || (now - l->churn_s < 2 && now - l->trimmed_s < LOOP_TRIM_EVERY))
        return;
#ifdef __GLIBC__
    malloc_trim(0); /* glibc's: other allocators give pages back themselves */
#endif
    l->churn = 0;
    l->trimmed_s = now;
}

static void *loop__run(void *arg)
{
    struct loop *l = arg;
    struct epoll_event events[64];
    int64_t swept = mono_s();

    while (!atomic_load(&l->stop)) {
        int64_t next = l->handler->timers != NULL ? l->handler->timers(l->arg) : -1;
        int n = epoll_wait(l->epfd, events, 64, next < 0 || next > 1000 ? 1000 : (int)next);
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
            if ((e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) || c->tls != NULL) /* inv. 5 */
                rc = c->transport == CONN_WS ? ws__read(l, c) : loop__read_lines(l, c);
            if (rc == 0 && !c->dead)
                rc = c->transport == CONN_WS ? ws__flush(l, c) : loop__flush_lines(l, c);
            if (rc != 0)
                loop__close(l, c);
        }
        for (int i = 0; i < n; i++)
            if (loop__is_conn(events[i].data.ptr))
                conn_unref(events[i].data.ptr);
        if (mono_s() != swept) {
            swept = mono_s();
            loop__sweep(l);
            loop__trim(l, swept);
            if (l->handler->tick != NULL)
                l->handler->tick(l->arg);
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
    log_info("sessions: listening on tcp://%s:%u/%s", host, l->tcp_port,
             l->tls != NULL ? " with TLS" : "");
    return 0;
}

/* TLS on tcp_listen when tcp_tls_cert and tcp_tls_key are set (TLS 1.2 at
 * least). Returns 0, or -1 with a sentence in `why`. */
static int loop__tls_start(struct loop *l, const struct config *cfg, char *why, size_t why_len)
{
    if ((cfg->tcp_tls_cert == NULL) != (cfg->tcp_tls_key == NULL)) {
        snprintf(why, why_len, "tcp_tls_cert and tcp_tls_key go together: give both");
        return -1;
    }
    if (cfg->tcp_tls_cert == NULL)
        return 0;
    ERR_clear_error();
    if ((l->tls = SSL_CTX_new(TLS_server_method())) == NULL) {
        snprintf(why, why_len, "cannot start TLS: %s", loop__tls_error("no reason given"));
        return -1;
    }
    SSL_CTX_set_min_proto_version(l->tls, TLS1_2_VERSION);
    SSL_CTX_set_mode(l->tls, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(l->tls, cfg->tcp_tls_cert) != 1) {
        snprintf(why, why_len, "tcp_tls_cert %s: cannot use it as a PEM certificate (%s)",
                 cfg->tcp_tls_cert, loop__tls_error("no reason given"));
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(l->tls, cfg->tcp_tls_key, SSL_FILETYPE_PEM) != 1) {
        snprintf(why, why_len,
                 "tcp_tls_key %s: cannot use it as the PEM private key of tcp_tls_cert (%s)",
                 cfg->tcp_tls_key, loop__tls_error("no reason given"));
        return -1;
    }
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

int loop_start(const struct config *cfg, const struct loop_handler *handler, void *arg,
               struct loop **out, char *why, size_t why_len)
{
    struct loop *l = calloc(1, sizeof *l);
    *out = NULL;
    if (l == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    l->handler = handler;
    l->arg = arg;
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
        (loop__tls_start(l, cfg, why, why_len) != 0 ||
         loop__listen_tcp(l, cfg->tcp_listen, why, why_len) != 0 ||
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
        struct loop__adoption *a = l->adopted;
        l->adopted = a->next;
        a->closed(a->closed_arg, a->fd, a->address);
        free(a);
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
    SSL_CTX_free(l->tls);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

unsigned loop_connections(const struct loop *l)
{
    return atomic_load(&l->conns);
}
