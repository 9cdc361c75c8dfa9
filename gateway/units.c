/*
 * units.c — the values of options that are more than a word: sizes with
 * units (64KiB), durations (15s, 7d), times (µs or RFC 3339) and
 * HOST:PORT listen addresses. One parser of each for every option, the
 * CLI and history queries.
 */
#include "gateway.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct units__unit {
    const char *suffix;
    unsigned long long mult;
};

/* A decimal number followed by one of `units` (exactly), times its
 * multiplier, at most `max`. 0, or -1 when malformed or too large. */
static int units__number(const char *text, const struct units__unit *units, size_t n,
                         unsigned long long max, unsigned long long *out)
{
    char *end;
    if (!isdigit((unsigned char)text[0]))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        if (v > max / units[i].mult)
            return -1;
        *out = v * units[i].mult;
        return 0;
    }
    return -1;
}

int config_parse_size(const char *text, size_t *out)
{
    static const struct units__unit units[] = {
        {"", 1},
        {"B", 1},
        {"KiB", 1ull << 10},
        {"MiB", 1ull << 20},
        {"GiB", 1ull << 30},
        {"KB", 1000},
        {"MB", 1000000},
        {"GB", 1000000000},
    };
    unsigned long long v;
    if (units__number(text, units, sizeof units / sizeof units[0], SIZE_MAX, &v) != 0)
        return -1;
    *out = (size_t)v;
    return 0;
}

int config_parse_duration(const char *text, int64_t *us)
{
    static const struct units__unit units[] = {{"us", 1},
                                               {"ms", 1000},
                                               {"s", 1000000},
                                               {"m", 60000000},
                                               {"h", 3600000000ull},
                                               {"d", 86400000000ull},
                                               {"w", 604800000000ull}};
    unsigned long long v;
    if (units__number(text, units, sizeof units / sizeof units[0], INT64_MAX, &v) != 0)
        return -1;
    *us = (int64_t)v;
    return 0;
}

int config_parse_time(const char *text, int64_t *us)
{
    char *end;
    errno = 0;
    long long n = strtoll(text, &end, 10);
    if (text[0] != '\0' && *end == '\0' && errno == 0) { /* µs since the epoch */
        *us = n;
        return 0;
    }
    /* RFC 3339: 2026-11-23T10:00:00[.123456](Z|+01:00) */
    struct tm tm = {0};
    const char *p = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        p = strptime(text, "%Y-%m-%dt%H:%M:%S", &tm);
    if (p == NULL)
        return -1;
    int64_t frac = 0, scale = 100000;
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p))
            return -1;
        for (; isdigit((unsigned char)*p); p++, scale /= 10)
            frac += scale > 0 ? (*p - '0') * scale : 0;
    }
    int64_t offset = 0;
    if (*p == 'Z' || *p == 'z')
        p++;
    else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) &&
             isdigit((unsigned char)p[2]) && p[3] == ':' && isdigit((unsigned char)p[4]) &&
             isdigit((unsigned char)p[5])) {
        offset =
            ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
        if (*p == '+')
            offset = -offset;
        p += 6;
    } else
        return -1;
    if (*p != '\0')
        return -1;
    *us = ((int64_t)timegm(&tm) + offset) * 1000000 + frac;
    return 0;
}

int config_resolve(const char *option, const char *spec, struct addrinfo **ai, char *host,
                   size_t host_len, char *why, size_t why_len)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    const char *colon = strrchr(spec, ':');
    size_t hlen = colon ? (size_t)(colon - spec) : 0;

    if (colon == NULL || hlen >= host_len) {
        snprintf(why, why_len, "%s %s: not HOST:PORT", option, spec);
        return -1;
    }
    memcpy(host, spec, hlen);
    host[hlen] = '\0';
    if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']') { /* [::1]:8480 */
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    int gai = getaddrinfo(host, colon + 1, &hints, ai);
    if (gai != 0) {
        snprintf(why, why_len, "%s %s: %s", option, spec, gai_strerror(gai));
        return -1;
    }
    return 0;
}
