/*
 * lifetime.h — what a session leaves behind and holds (lifetime.c): its
 * last will and grave goods, and its locks (API.md "Session lifetime").
 * Sessions call these from the loop thread.
 */
#ifndef ALMANAC_LIFETIME_H
#define ALMANAC_LIFETIME_H

#include "store.h"

#include <jansson.h>
#include <stdbool.h>

/* ---- last will and grave goods ---- */

/* A session's declaration, checked: the will's entries and the grave
 * goods' patterns as JSON arrays (owned; NULL: none). */
struct will {
    json_t *last_will;   /* [{key, value|text|base64, content_type?, labels?}] */
    json_t *grave_goods; /* [pattern] */
};

/* Checks one op as the session's write (the operations layer's check:
 * key, pattern, privilege); STORE_OK or an error with a sentence. */
typedef int (*will_check_fn)(void *arg, struct store_op *op, char *why, size_t why_len);

/* Checks `last_will` and `grave_goods` (either NULL: left as `w` has it)
 * with `check`, and keeps them in `w` and in the store ($wills/<client_id>)
 * so a crash does not lose them; `origin` is the session's transport.
 * `done(arg, err)` runs once that is committed (on the committer's
 * thread). STORE_OK, or an error with a sentence (nothing changed, `done`
 * not called). */
int will_declare(struct store *s, enum store_origin origin, const char *client_id, struct will *w,
                 json_t *last_will, json_t *grave_goods, will_check_fn check, void *check_arg,
                 void (*done)(void *arg, int err), void *arg, char *why, size_t why_len);
/* The session `client_id` ended: its grave goods go and, unless it said
 * bye, its will is set, in one commit with the removal of its record. */
void will_apply(struct store *s, enum store_origin origin, const char *client_id, struct will *w,
                bool bye);
/* At start: applies the wills of the sessions a crash left ($wills/+). */
void will_recover(struct store *s);
void will_clear(struct will *w);

/* ---- locks ---- */

struct locks;
/* $SYS/locks/<key> goes to `store`. */
struct locks *locks_new(struct store *store);
void locks_free(struct locks *l);

/* A lock granted after a wait (err STORE_OK) or not in time (STORE_ELOCKED);
 * `id` is the request's. */
typedef void (*lock_granted_fn)(void *holder, int64_t id, int err, const char *key);

/* Takes the lock on the valid key `key` (the caller checked the privilege
 * of a write of it) for `holder`, named `client_id` in $SYS/locks/<key>.
 * STORE_OK: held now; STORE_ELOCKED: another holds it (with a sentence);
 * or, with `wait_ms` > 0, `*waiting` and `granted` runs later, on the
 * thread that releases the lock or calls lock_timers, with `id`. */
int lock_take(struct locks *l, void *holder, const char *client_id, const char *key, size_t klen,
              int64_t wait_ms, int64_t id, lock_granted_fn granted, bool *waiting, char *why,
              size_t why_len);
/* Releases `holder`'s lock on `key`: STORE_OK or STORE_ENOTFOUND. */
int lock_release(struct locks *l, void *holder, const char *key, size_t klen);
/* Releases every lock of `holder` and forgets its waits (a session ends). */
void lock_release_all(struct locks *l, void *holder);
/* Ends the waits whose time is up; the ms until the next one ends, or -1. */
int64_t lock_timers(struct locks *l);

#endif
