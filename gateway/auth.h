/*
 * auth.h — who is asking, and what they may do (auth.c): principals, their
 * privileges compiled from MQTT-style patterns, and the credentials that
 * name them.
 */
#ifndef ALMANAC_AUTH_H
#define ALMANAC_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct config;

/* Patterns compiled into a tree (one node per segment, as the subscription
 * tree): whether a key matches one of them costs the key's depth, not the
 * number of patterns. */
struct privs;

/* A principal: immutable once made, and living as long as the auth that
 * made it. */
struct principal {
    const char *name;    /* "anonymous", "local", "admin" */
    bool admin;          /* everything, $SYS reads included */
    bool authenticated;  /* a credential named it: refusals are forbidden */
    struct privs *read;  /* NULL: none */
    struct privs *write; /* NULL: none */
};

struct auth;

/* The principals of `cfg`: anonymous (anonymous_read, anonymous_write),
 * and admin (admin_token). Returns NULL with a sentence in `why`. */
struct auth *auth_new(const struct config *cfg, char *why, size_t why_len);
void auth_free(struct auth *a);
/* Who a client at `address` ("host:port", or "unix") presenting `token`
 * (NULL: none) is. STORE_OK with `*out`, STORE_EUNAUTH for a token that
 * names nobody, or STORE_ERATE after too many of those from its host this
 * second. Without any credential configured, loopback and Unix-socket
 * clients are "local" (everything) and the rest anonymous. */
int auth_principal(struct auth *a, const char *address, const char *token,
                   const struct principal **out);
/* Whether anonymous clients at `address` may do nothing at all. */
bool auth_required(struct auth *a, const char *address);

/* Whether the privileges `p` (NULL: none) hold a pattern matching `key`. */
bool privs_match(const struct privs *p, const char *key, size_t klen);
/* Whether some key matches both `pat` and one of `p`'s patterns. */
bool privs_meet(const struct privs *p, const char *pat, size_t plen);
/* Whether one of `p`'s patterns matches every key `pat` matches. */
bool privs_cover(const struct privs *p, const char *pat, size_t plen);

#endif
