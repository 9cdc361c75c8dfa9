/*
 * feed.h — one live feed of a pattern (feed.c): a snapshot or a history
 * replay (after a rev, or from a time), then `sync`, then live events,
 * written through a sink that each transport (SSE, sessions) supplies;
 * through two filters, the keys the client may read and the labels it
 * asked for.
 */
#ifndef ALMANAC_FEED_H
#define ALMANAC_FEED_H

#include "buf.h"
#include "store.h"

/* One event of a feed, borrowed for the call. */
struct feed_event {
    const char *key;
    size_t klen;
    const struct store_entry *entry; /* NULL: a deletion */
    int64_t rev, ts;
    bool transient;           /* a publish: nothing stored, no rev of its own */
    struct store_event *live; /* a live event (its text is cached there), or NULL */
};

/* How a transport writes a feed. The calls come from the thread that
 * started the feed and from the committer's; never two at once for one
 * feed, never after feed_close returns. */
struct feed_sink {
    /* Appends `ev` to `b` in the transport's framing. While the snapshot is
     * gathered `b` may already hold events (see chunk). */
    void (*add_event)(void *arg, struct buf *b, const struct feed_event *ev);
    /* Appends the sync message: every event after it has a rev above `rev`. */
    void (*add_sync)(void *arg, struct buf *b, int64_t rev);
    /* Queues the text of `b` (taken over). False when the client's queue is
     * full: nothing was queued. */
    bool (*write)(void *arg, struct buf *b);
    /* Ends the client: its last message says `err` and `message`. */
    void (*fail)(void *arg, int err, const char *message);
    /* Bytes of snapshot gathered into one write; 0: one event a write. */
    size_t chunk;
};

struct feed_request {
    const char *pattern; /* checked by the caller */
    size_t plen;
    bool unique;                       /* drop events that leave value and type as they were */
    bool live_only;                    /* no snapshot */
    int64_t since;                     /* replay the changes after this rev instead; -1: none */
    bool from_start;                   /* replay the changes from `start` instead (not with
                                          since) */
    int64_t start;                     /* µs since the epoch */
    const struct store_filter *filter; /* the keys the client may see; NULL: all */
    const struct store_labels *labels; /* the labels it asked for (copied); NULL: any */
};

struct feed;

/* What a client whose queue is full is told (with too_slow), by a feed and
 * by a transport whose reply is refused alike. */
extern const char feed_too_slow[];

/* Subscribes: live events wait until feed_start. Returns STORE_OK with
 * `*out`, or an error with a sentence in `why` (history_gone names the
 * pattern and the rev or the time). */
int feed_open(struct store *store, const struct feed_request *rq, const struct feed_sink *sink,
              void *arg, struct feed **out, char *why, size_t why_len);
/* Writes the snapshot (or replay), the sync and the events that came
 * meanwhile; then events go out as they come. */
void feed_start(struct feed *f);
/* Replaces the feed's key filter (NULL: every key), for the events that
 * follow; its label filters stay. */
void feed_refilter(struct feed *f, const struct store_filter *filter);
/* Unsubscribes and frees; no sink call follows. */
void feed_close(struct feed *f);

/* Appends the envelope of `ev` with its content type named `type_field`:
 * the entry's, the deletion form, or a publish's (with "transient":true).
 * `head` is written in place of its opening brace ("{" for the envelope
 * alone, or {"type":"event","sub":1, for a message of its own). */
void feed_add_envelope(struct buf *b, const struct feed_event *ev, const char *type_field,
                       const char *head);

#endif
