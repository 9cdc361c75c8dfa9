/*
 * guard.h — what browsers may ask: Host names and origins (guard.c).
 */
#ifndef ALMANAC_GUARD_H
#define ALMANAC_GUARD_H

#include <stdbool.h>

struct config;

/* Whether `host_header` (NULL: absent) names this server: an IP literal,
 * localhost or a *.localhost name, or one of http_host. */
bool guard_host_ok(const struct config *cfg, const char *host_header);
/* Whether `origin` is one of cors_origin (or cors_origin is *). */
bool guard_cors_allowed(const struct config *cfg, const char *origin);
/* Whether a page of `origin` may open a WebSocket: the server's own origin
 * (the Host it was reached by) or one of cors_origin. */
bool guard_origin_ok(const struct config *cfg, const char *origin, const char *host_header);
/* Whether a state-changing request with these headers (each NULL when
 * absent) may go on: no Origin and no cross-site Sec-Fetch-Site, or an
 * Origin that guard_origin_ok allows. */
bool guard_write_ok(const struct config *cfg, const char *origin, const char *fetch_site,
                    const char *host_header);

#endif
