/*
 * loop.h — the event loop that carries the bytes of message connections
 * (loop.c): TCP, the Unix socket, and WebSockets handed over by HTTP.
 */
#ifndef ALMANAC_LOOP_H
#define ALMANAC_LOOP_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct loop;
struct conn;

enum conn_transport { CONN_TCP, CONN_UNIX, CONN_WS };

/* What the loop calls, on its own thread, for the connections it carries. */
struct loop_handler {
    /* A new connection: returns the state that input, oversize and close
     * get, or NULL to refuse it (what open queued on `c` is written, then
     * it closes). */
    void *(*open)(void *arg, struct conn *c);
    /* One whole message. Returns 0, or -1 to close the connection once
     * what is queued is written. */
    int (*input)(void *state, const char *msg, size_t len);
    /* A line transport's message grew past max_message_bytes: what the
     * client is told; the connection closes after it. */
    void (*oversize)(void *state);
    /* The connection is closed: once, and no call for `state` follows. */
    void (*close)(void *state);
    /* About once a second (NULL: none). */
    void (*tick)(void *arg);
    /* About once a second for each open connection that is not closing
     * (NULL: none): a time to end it (conn_close_with), say. */
    void (*check)(void *state);
    /* Runs the handler's timers that are due; returns the ms until the next
     * one, or -1 for none (NULL: no timers). The loop waits no longer. */
    int64_t (*timers)(void *arg);
};

/* Starts the loop thread with the TCP and Unix listeners of `cfg`; every
 * connection goes to `handler` with `arg`. Returns 0, or -1 with a sentence
 * in `why`. */
int loop_start(const struct config *cfg, const struct loop_handler *handler, void *arg,
               struct loop **out, char *why, size_t why_len);
/* loop_quiesce, loop_stop and loop_free: gateway.h. */
/* Connections open now. */
unsigned loop_connections(const struct loop *l);
/* Hands over an upgraded WebSocket connection (fd, and bytes already read);
 * `closed(closed_arg, fd, address)` closes the socket when the loop is done
 * with it (at once, when the loop cannot take it). The connection is made
 * on the loop's thread: what lives as long as the session is allocated
 * there, not on the caller's. Returns -1 when the loop is stopping (the
 * caller closes the socket) or out of memory. */
typedef void (*loop_closed_fn)(void *arg, int fd, const char *address);
int loop_adopt_ws(struct loop *l, int fd, const char *extra, size_t extra_len, const char *address,
                  loop_closed_fn closed, void *closed_arg);

/* Queues one message (without framing) to `c`, from any thread. False when
 * the queue would pass session_queue_bytes: nothing was queued. */
bool conn_send(struct conn *c, const char *msg, size_t len);
/* The same, taking over the text of `b` (left empty) instead of copying. */
bool conn_send_buf(struct conn *c, struct buf *b);
/* Drops what waits to be sent (but a message partly written), queues the
 * text of `last` (taken over) and closes `c` once it is written. */
void conn_close_with(struct conn *c, struct buf *last);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* "host:port", or "unix". */
const char *conn_address(const struct conn *c);
enum conn_transport conn_transport(const struct conn *c);

#endif
