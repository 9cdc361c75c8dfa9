/*
 * loop_int.h — what the files of the event loop share, private to them:
 * loop.c (the thread, listeners, line transports), conn.c (a connection's
 * queue, filled from any thread) and loop_ws.c (WebSocket framing).
 */
#ifndef ALMANAC_LOOP_INT_H
#define ALMANAC_LOOP_INT_H

#include "gateway.h"
#include "loop.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>
#include <wslay/wslay.h>

#define LOOP_CLOSE_GRACE     5
#define LOOP_HANDSHAKE_GRACE 10    /* seconds a TLS client has for its handshake */
#define LOOP_TLS_CHUNK       16384 /* bytes given to one SSL_write: a record's worth */
#define LOOP_TRIM_EVERY      60    /* seconds between heap trims while connections churn */
#define LOOP_READ_BYTES      65536 /* one read of a WebSocket, into the loop's buffer */

struct msg {
    struct msg *next;
    size_t len;
    char *data; /* `own` for a copied message, or a buffer taken over */
    char own[];
};

/* TLS on a TCP connection, and what SSL_write is given (the same bytes
 * again while it waits). */
struct conn_tls {
    SSL *ssl;
    size_t len, off;
    char data[LOOP_TLS_CHUNK];
};

/* The whole frames wslay is reading (ws__frames). */
struct ws_feed {
    const uint8_t *p;
    size_t len;
};

/* Control frames to send, `off` of them sent. */
struct ws_ctl {
    size_t len, off;
    char data[];
};

struct conn {
    _Atomic int refs;
    /* Flags, together (a bool each: those under c->lock and those of the
     * loop thread alone never share a memory location). */
    bool opened;          /* the handler's open ran (a TLS client's after its handshake) */
    bool closing;         /* close once the queue is written, or at close_by; c->lock */
    bool dead;            /* closed: sends are dropped; c->lock */
    bool dirty;           /* on the loop's dirty list; c->lock */
    bool want_out;        /* EPOLLOUT is on */
    bool shut;            /* our side is shut: only waiting for the peer's end */
    bool tls_wants_out;   /* the last SSL call waits for room to write */
    bool ws_in_msg;       /* a message came in part: wslay holds the rest so far */
    bool ws_close_queued; /* a close is in ws_ctl: no data frame follows; c->lock */
    bool ws_close_sent;   /* ... and written; c->lock */
    bool ws_close_recvd;  /* the peer's close came: its input is over */
    int fd;
    enum conn_transport transport;
    struct loop *loop;
    void *state; /* the handler's, from open to close */

    pthread_mutex_t lock; /* the queue, close_by, dirty_next and the flags marked c->lock */
    struct msg *head, *tail;
    size_t queued, head_off;
    int64_t close_by; /* CLOCK_MONOTONIC seconds; 0 until closing or a TLS handshake */
    struct conn *dirty_next;

    struct conn *prev, *next; /* the loop's list of open connections */
    char *in;                 /* bytes read, not yet a whole message */
    size_t in_len, in_cap;

    struct conn_tls *tls; /* TLS on a TCP connection (tcp_tls_cert), or NULL */

    /* WebSocket (loop_ws.c). `in` holds the start of a frame not yet whole,
     * and is freed when it holds nothing: an idle session keeps no buffer. */
    wslay_event_context_ptr ws; /* while frames are read; NULL: none */
    struct ws_feed *ws_feed;    /* while wslay reads */
    struct ws_ctl *ws_ctl;      /* control frames to send (pong, close), or NULL; c->lock */
    loop_closed_fn ws_closed;
    void *ws_closed_arg;
    char address[]; /* "host:port", or "unix": as long as it is (one per session) */
};

struct loop {
    const struct loop_handler *handler;
    void *arg;
    const struct config *cfg;
    int epfd, efd, tcp_fd, unix_fd;
    int spare_fd; /* held for refusing a connection when descriptors run out */
    SSL_CTX *tls; /* TLS on tcp_listen, or NULL */
    int64_t emfile_logged;
    unsigned short tcp_port;
    pthread_t thread;
    bool started;
    _Atomic bool stop;
    _Atomic unsigned conns;

    pthread_mutex_t lock; /* dirty list, adoptions and `closed` */
    struct conn *dirty;
    struct loop__adoption *adopted; /* WebSockets from HTTP, for the loop to take */
    bool closed;                    /* loop_stop ran: no more adoptions */
    struct conn *all;
    /* Connections opened or closed since the heap was last trimmed, the
     * second of the last one, and of the trim (loop.c, loop__trim). */
    unsigned churn;
    int64_t churn_s, trimmed_s;
    char rbuf[LOOP_READ_BYTES]; /* what a WebSocket read brought (the loop thread) */
};

/* ---- conn.c ---- */

/* A new connection on `fd` (not yet one of the loop's). */
struct conn *conn__new(struct loop *l, int fd, enum conn_transport t, const char *address);
/* Frees a message taken off a queue. */
void msg__free(struct msg *m);
/* Drops every queued message; the caller holds c->lock. */
void conn__drop_queue(struct conn *c);
/* Drops what waits to be sent but a message partly written; the caller
 * holds c->lock. */
void conn__drop_unsent(struct conn *c);
/* Closes `c` once what is queued is written (or after LOOP_CLOSE_GRACE). */
void conn__close_soon(struct conn *c);
/* Whether epoll also tells when `c` can be written (the loop thread). */
void conn__want_out(struct loop *l, struct conn *c, bool on);
/* Wakes the loop thread. */
void loop__wake(struct loop *l);

/* ---- loop_ws.c ---- */

/* Reads what came (then writes); -1: close now. */
int ws__read(struct loop *l, struct conn *c);
/* Writes queued messages as frames, and control frames; -1: close now. */
int ws__flush(struct loop *l, struct conn *c);

#endif
