/*
 * fuzz_guard.c — libFuzzer harness of what a browser sends that guard.c
 * judges: Host headers (the DNS-rebinding allow-list) and Origin and
 * Sec-Fetch-Site headers (cross-site writes and WebSockets).
 *
 * Input: three header values separated by '\n' (Host, Origin,
 * Sec-Fetch-Site), each may be absent. Checks, besides memory safety:
 *   - a Host that is allowed stays allowed with any configured http_host
 *     added (the list only widens), and "*" allows everything;
 *   - an Origin allowed for a write is allowed for a WebSocket, and the
 *     server's own origin (http://<Host>) is always allowed for an allowed
 *     Host that is a plain authority.
 */
#include "guard.h"
#include "gateway.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *field[3] = {NULL, NULL, NULL};
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char *p = text;
    for (int i = 0; i < 3 && p != NULL; i++) {
        field[i] = p;
        p = strchr(p, '\n');
        if (p != NULL)
            *p++ = '\0';
    }
    const char *host = field[0], *origin = field[1], *site = field[2];
    if (origin != NULL && origin[0] == '\0')
        origin = NULL;

    struct config none = {0};
    char *names[] = {"almanac.example.com"}, *star[] = {"*"};
    struct config named = {.http_hosts = names, .nhttp_hosts = 1};
    struct config all = {
        .http_hosts = star, .nhttp_hosts = 1, .cors_origins = star, .ncors_origins = 1};

    bool ok = guard_host_ok(&none, host);
    if (ok && !guard_host_ok(&named, host))
        abort(); /* http_host only adds names */
    if (!guard_host_ok(&all, host) || !guard_write_ok(&all, origin, site, host) ||
        (origin != NULL && !guard_origin_ok(&all, origin, host)))
        abort(); /* "*" allows everything */
    if (origin != NULL &&
        guard_write_ok(&none, origin, site, host) != guard_origin_ok(&none, origin, host))
        abort(); /* with an Origin, writes and WebSockets are judged alike */
    if (ok && host != NULL && host[0] != '\0' && strlen(host) < 200) {
        char own[256];
        snprintf(own, sizeof own, "http://%s", host);
        if (!guard_origin_ok(&none, own, host))
            abort(); /* a page of the server's own origin */
    }
    free(text);
    return 0;
}
