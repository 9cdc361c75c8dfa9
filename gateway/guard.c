/*
 * guard.c — what a browser may ask of this server: the Host names it
 * answers (against DNS rebinding) and the origins whose pages may change
 * state or open a WebSocket (against cross-site requests).
 *
 * Pure functions of the configuration and the header texts, so that the
 * fuzzers and unit tests call them without a server.
 * Invariants:
 *   1. an absent or unparsable header never widens what is allowed: a
 *      malformed Origin is foreign, a malformed Host is refused;
 *   2. "same origin" compares the Origin's host and port with the Host
 *      header's, the scheme's default port standing in for an absent one,
 *      so a TLS-terminating proxy that keeps Host keeps the dashboard
 *      working.
 */
#include "guard.h"
#include "gateway.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

/* The host and the port of an authority ("h", "h:p", "[v6]", "[v6]:p").
 * `*port` is NULL when there is none. Returns -1 when it is malformed. */
static int guard__authority(const char *a, size_t len, const char **host, size_t *hlen,
                            const char **port, size_t *plen)
{
    const char *colon = NULL;
    *port = NULL;
    *plen = 0;
    if (len == 0)
        return -1;
    if (a[0] == '[') {
        const char *close = memchr(a, ']', len);
        if (close == NULL)
            return -1;
        *host = a;
        *hlen = (size_t)(close - a) + 1;
        if (*hlen < len) {
            if (a[*hlen] != ':')
                return -1;
            colon = a + *hlen;
        }
    } else {
        colon = memchr(a, ':', len);
        *host = a;
        *hlen = colon ? (size_t)(colon - a) : len;
    }
    if (colon != NULL) {
        *port = colon + 1;
        *plen = len - (size_t)(*port - a);
        if (*plen == 0 || *plen > 5 || strspn(*port, "0123456789") < *plen)
            return -1;
    }
    return *hlen > 0 ? 0 : -1;
}

static bool guard__ip_literal(const char *host, size_t hlen)
{
    char text[64];
    unsigned char addr[16];
    if (hlen >= sizeof text)
        return false;
    if (host[0] == '[') { /* [v6] */
        if (hlen < 3)
            return false;
        memcpy(text, host + 1, hlen - 2);
        text[hlen - 2] = '\0';
        return inet_pton(AF_INET6, text, addr) == 1;
    }
    memcpy(text, host, hlen);
    text[hlen] = '\0';
    return inet_pton(AF_INET, text, addr) == 1;
}

static bool guard__is(const char *s, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(s, name, len) == 0;
}

bool guard_host_ok(const struct config *cfg, const char *host_header)
{
    const char *host, *port;
    size_t hlen, plen;
    for (size_t i = 0; i < cfg->nhttp_hosts; i++)
        if (strcmp(cfg->http_hosts[i], "*") == 0)
            return true;
    if (host_header == NULL) /* HTTP/1.0: no browser sends that */
        return true;
    if (guard__authority(host_header, strlen(host_header), &host, &hlen, &port, &plen) != 0)
        return false;
    /* An IP literal cannot be rebound: the browser's origin is that address. */
    if (guard__ip_literal(host, hlen) || guard__is(host, hlen, "localhost"))
        return true;
    if (hlen > 10 && guard__is(host + hlen - 10, 10, ".localhost"))
        return true;
    for (size_t i = 0; i < cfg->nhttp_hosts; i++)
        if (guard__is(host, hlen, cfg->http_hosts[i]))
            return true;
    return false;
}

bool guard_cors_allowed(const struct config *cfg, const char *origin)
{
    if (origin == NULL)
        return false;
    for (size_t i = 0; i < cfg->ncors_origins; i++)
        if (strcmp(cfg->cors_origins[i], "*") == 0 || strcasecmp(cfg->cors_origins[i], origin) == 0)
            return true;
    return false;
}

/* The port of an authority, the scheme's default when it names none. */
static bool guard__same_port(const char *p1, size_t l1, const char *p2, size_t l2,
                             const char *deflt)
{
    if (p1 == NULL) {
        p1 = deflt;
        l1 = strlen(deflt);
    }
    if (p2 == NULL) {
        p2 = deflt;
        l2 = strlen(deflt);
    }
    return l1 == l2 && memcmp(p1, p2, l1) == 0;
}

bool guard_origin_ok(const struct config *cfg, const char *origin, const char *host_header)
{
    if (guard_cors_allowed(cfg, origin))
        return true;
    if (origin == NULL || host_header == NULL)
        return false;
    const char *deflt, *auth;
    if (strncasecmp(origin, "http://", 7) == 0) {
        auth = origin + 7;
        deflt = "80";
    } else if (strncasecmp(origin, "https://", 8) == 0) {
        auth = origin + 8;
        deflt = "443";
    } else
        return false; /* "null" (sandboxed pages, file:), or another scheme */
    const char *oh, *op, *hh, *hp;
    size_t ohl, opl, hhl, hpl;
    if (guard__authority(auth, strlen(auth), &oh, &ohl, &op, &opl) != 0 ||
        guard__authority(host_header, strlen(host_header), &hh, &hhl, &hp, &hpl) != 0)
        return false;
    return ohl == hhl && strncasecmp(oh, hh, ohl) == 0 && guard__same_port(op, opl, hp, hpl, deflt);
}

bool guard_write_ok(const struct config *cfg, const char *origin, const char *fetch_site,
                    const char *host_header)
{
    if (origin != NULL)
        return guard_origin_ok(cfg, origin, host_header);
    /* No Origin: a script, curl, the CLI; or an old browser, whose
     * Sec-Fetch-Site still tells a request from another site (which
     * cors_origin * allows, as it allows any Origin). */
    return fetch_site == NULL || guard_cors_allowed(cfg, "*") ||
           (strcasecmp(fetch_site, "cross-site") != 0 && strcasecmp(fetch_site, "same-site") != 0);
}
