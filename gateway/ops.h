/*
 * ops.h — the operations of almanac, one entry point each (ops.c). Every
 * transport (HTTP, SSE, WebSocket, TCP, the Unix socket) parses its wire
 * into a call here and writes the answer; the checks of a request (keys,
 * patterns, and who may ask) are made here, once.
 *
 * Each returns STORE_OK, or an error with a sentence for the client in
 * `why` (nothing was changed).
 */
#ifndef ALMANAC_OPS_H
#define ALMANAC_OPS_H

#include "auth.h"
#include "feed.h"
#include "store.h"

struct bridge;
struct config;
struct import;
struct sys;

/* The caller of an operation: its transport (as the origin its changes
 * carry), its address and its principal. */
struct caller {
    enum store_origin transport;
    const char *address; /* "host:port", or "unix" */
    const struct principal *principal;
};

struct ops;

/* ops_new and ops_free: gateway.h. What an operation's transport may
 * need of the server around it: */
struct store *ops_store(const struct ops *o);
const struct config *ops_config(const struct ops *o);
struct bridge *ops_bridge(const struct ops *o);
struct sys *ops_sys(const struct ops *o);

/* ---- who is asking ---- */

/* The principal of a client at `address` presenting `token` (NULL: none),
 * held for the caller (auth_release it when done). STORE_OK, or
 * STORE_EUNAUTH or STORE_ERATE with a sentence (and `*out` anonymous). */
int ops_authenticate(struct ops *o, const char *address, const char *token,
                     const struct principal **out, char *why, size_t why_len);
/* Whether the caller's credential still holds: STORE_OK, or STORE_EUNAUTH
 * with a sentence once its token is revoked or it has expired (a session
 * or a stream that holds it ends then). */
int ops_caller_live(const struct caller *c, char *why, size_t why_len);
/* Whether anonymous clients at `address` may do nothing at all. */
bool ops_auth_required(struct ops *o, const char *address);
/* Whether the caller may see the server's state (info, metrics): read of
 * all of $SYS/#, or admin. */
int ops_server(struct ops *o, const struct caller *c, char *why, size_t why_len);

/* ---- reads ---- */

/* Checks `pat` as a key or a pattern of a read; `*wild` tells which. A
 * pattern without wildcards that is no valid key is reported as a key. */
int ops_pattern(struct ops *o, const struct caller *c, const char *pat, size_t plen, bool *wild,
                char *why, size_t why_len);
/* The entry of `key`: a new reference in `*out`. */
int ops_get(struct ops *o, const struct caller *c, const char *key, size_t klen,
            struct store_entry **out, char *why, size_t why_len);
/* Visits at most `limit` entries of `pat` after the key `after` (NULL:
 * from the start) whose key contains `contains` (NULL: any; ASCII letters
 * match in either case); `*more` tells whether more follow. */
int ops_pget(struct ops *o, const struct caller *c, const char *pat, size_t plen, const char *after,
             size_t alen, const char *contains, size_t limit, store_visit_fn visit, void *arg,
             bool *more, char *why, size_t why_len);
/* Whether `c` may write `key` (a valid key): STORE_OK, or the error of a
 * set refused for it, with `why`. */
int ops_may_write(struct ops *o, const struct caller *c, const char *key, size_t klen, char *why,
                  size_t why_len);
/* The children of `key` (NULL: of the root); `*rev` (unless NULL) the rev
 * the answer is of (store_ls). */
int ops_ls(struct ops *o, const struct caller *c, const char *key, size_t klen,
           store_child_fn child, void *arg, int64_t *rev, char *why, size_t why_len);
/* A history query of q->pattern, of the records the caller may read;
 * `*out` for store_history_next. */
int ops_history(struct ops *o, const struct caller *c, const struct store_history_query *q,
                struct store_history **out, char *why, size_t why_len);
/* A page of at most `limit` entries of the export (every key but the
 * $-keys) after `after`. */
int ops_export(struct ops *o, const struct caller *c, const char *after, size_t alen, size_t limit,
               store_visit_fn visit, void *arg, bool *more, char *why, size_t why_len);

/* ---- writes ----
 *
 * A write is checked whole, then submitted; STORE_OK means `done` will run
 * once, on the committer's thread, with the outcome in t->err. The store
 * takes every op's entry whatever the outcome. `w` is the caller's until
 * `done` has run, and so are the keys its ops point to. */

struct ops_write {
    struct store_txn txn;
    struct store_op one; /* the op of a set or a delete */
};

int ops_set(struct ops *o, const struct caller *c, struct ops_write *w, const char *key,
            size_t klen, struct store_entry *e, int64_t if_rev, store_done_fn done, void *arg,
            char *why, size_t why_len);
/* Deletes a key or, when `pat` has wildcards, every matching key; with
 * `must_exist` a missing key is not_found. */
int ops_delete(struct ops *o, const struct caller *c, struct ops_write *w, const char *pat,
               size_t plen, int64_t if_rev, bool must_exist, store_done_fn done, void *arg,
               char *why, size_t why_len);
/* All of `n` ops or none; each is named ops[i] in `why`. */
int ops_batch(struct ops *o, const struct caller *c, struct ops_write *w, struct store_op *ops,
              size_t n, store_done_fn done, void *arg, char *why, size_t why_len);
/* A transient message to the subscribers of `key` (and MQTT); takes `e`. */
int ops_publish(struct ops *o, const struct caller *c, const char *key, size_t klen,
                struct store_entry *e, char *why, size_t why_len);
/* An import of any size: fed with import_feed, applied by import_finish
 * (import.h); each line is checked as an op of a batch. */
int ops_import(struct ops *o, const struct caller *c, struct import **out, char *why,
               size_t why_len);

/* ---- live ---- */

/* A live feed of rq->pattern through `sink`, of the keys the caller may
 * read (and the labels rq->labels asks for); feed_start it once the
 * transport has said yes, ops_unsubscribe it when done. `since` and
 * `start` together are bad_request. */
int ops_subscribe(struct ops *o, const struct caller *c, const struct feed_request *rq,
                  const struct feed_sink *sink, void *sink_arg, struct feed **out, char *why,
                  size_t why_len);
/* After the caller's principal changed: the feed of `pat` goes on with
 * what it may read now, or is refused (and left to the caller to end). */
int ops_resubscribe(struct ops *o, const struct caller *c, struct feed *f, const char *pat,
                    size_t plen, char *why, size_t why_len);
void ops_unsubscribe(struct ops *o, struct feed *f);

/* ---- tokens: admin only ---- */

/* A new token (auth_token_add); its secret in `secret`, shown once. */
int ops_token_add(struct ops *o, const struct caller *c, const char *name, char *const *read,
                  size_t nread, char *const *write, size_t nwrite, bool admin, int64_t expires,
                  char secret[64], char *why, size_t why_len);
/* Revokes a token at once. */
int ops_token_remove(struct ops *o, const struct caller *c, const char *name, char *why,
                     size_t why_len);
/* Lists the tokens, never their secrets. */
int ops_tokens(struct ops *o, const struct caller *c,
               void (*fn)(void *arg, const struct auth_token_info *t), void *arg, char *why,
               size_t why_len);

/* ---- sessions ---- */

/* Checks one op as a write of `c` would be (its key, pattern, privilege);
 * fills a delete's `pattern`. The op's entry stays the caller's. */
int ops_check(struct ops *o, const struct caller *c, struct store_op *op, char *why,
              size_t why_len);
/* The sessions' locks (lifetime.c). */
struct locks *ops_locks(const struct ops *o);

/* A session opens or closes ($SYS/sessions); `client_id` names it. */
void ops_session_open(struct ops *o, const struct caller *c, const char *client_id);
void ops_session_close(struct ops *o, const char *client_id);
/* Sessions open now, and a new number for a client id. */
unsigned ops_sessions(const struct ops *o);
uint64_t ops_next_id(struct ops *o);

#endif
