/*
 * auth.h — who is asking, and what they may do (auth.c): principals, their
 * privileges compiled from MQTT-style patterns, and the credentials that
 * name them.
 */
#ifndef ALMANAC_AUTH_H
#define ALMANAC_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct store;

/* Patterns compiled into a tree (one node per segment, as the subscription
 * tree): whether a key matches one of them costs the key's depth, not the
 * number of patterns. */
struct privs;

/* A principal: immutable once made but for `revoked`, and living as long
 * as the auth that made it (a revoked token's too). */
struct principal {
    const char *name;    /* "anonymous", "local", "admin", or a token's name */
    bool admin;          /* everything, $SYS reads and tokens included */
    bool authenticated;  /* a credential named it: refusals are forbidden */
    struct privs *read;  /* NULL: none */
    struct privs *write; /* NULL: none */
    int64_t expires;     /* µs; 0: never */
    _Atomic bool revoked;
    /* A JWT's principal is made for it and freed when the last holder lets
     * go (auth_release); refs is -1 for the others, which live as long as
     * the auth. */
    _Atomic int refs;
};

struct auth;

/* The principals of `cfg`: anonymous (anonymous_read, anonymous_write),
 * and admin (admin_token). Returns NULL with a sentence in `why`. */
struct auth *auth_new(const struct config *cfg, char *why, size_t why_len);
void auth_free(struct auth *a);
/* Who a client at `address` ("host:port", or "unix") presenting `token`
 * (NULL: none; an access token, the admin token or a JWT) is. STORE_OK with
 * `*out`, held for the caller (auth_release it); STORE_EUNAUTH for a token
 * that names nobody, with a sentence in `why`; or STORE_ERATE after too
 * many of those from its host this second. Without any credential
 * configured, loopback and Unix-socket clients are "local" (everything)
 * and the rest anonymous. */
int auth_principal(struct auth *a, const char *address, const char *token,
                   const struct principal **out, char *why, size_t why_len);
/* One more holder of `p` (returned), and one less. NULL is let be. */
const struct principal *auth_hold(const struct principal *p);
void auth_release(const struct principal *p);
/* Whether anonymous clients at `address` may do nothing at all. */
bool auth_required(struct auth *a, const char *address);
/* Whether `p` may still act: not revoked, not expired. */
bool auth_live(const struct principal *p);

/* ---- tokens: kept in the store, checked from memory ---- */

/* Loads the stored tokens. STORE_OK or an error with a sentence. */
int auth_load(struct auth *a, struct store *s, char *why, size_t why_len);
/* A new token `name` with these privileges, expiring at `expires` (µs; 0:
 * never). Its secret goes to `secret` (shown once, never kept). STORE_OK,
 * STORE_EBODY for a bad name or pattern, STORE_EREV for a name in use. */
int auth_token_add(struct auth *a, struct store *s, const char *name, char *const *read,
                   size_t nread, char *const *write, size_t nwrite, bool admin, int64_t expires,
                   char secret[64], char *why, size_t why_len);
/* Revokes `name` at once: STORE_OK or STORE_ENOTFOUND. */
int auth_token_remove(struct auth *a, struct store *s, const char *name);
/* What a token list shows: never its secret. */
struct auth_token_info {
    const char *name, *read, *write; /* read, write: JSON arrays */
    bool admin;
    int64_t created, expires, last_used;
};
void auth_tokens(struct auth *a, void (*fn)(void *arg, const struct auth_token_info *t), void *arg);

/* Whether the privileges `p` (NULL: none) hold a pattern matching `key`. */
bool privs_match(const struct privs *p, const char *key, size_t klen);
/* Whether some key matches both `pat` and one of `p`'s patterns. */
bool privs_meet(const struct privs *p, const char *pat, size_t plen);
/* Whether one of `p`'s patterns matches every key `pat` matches. */
bool privs_cover(const struct privs *p, const char *pat, size_t plen);

#endif
