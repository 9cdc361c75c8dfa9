/*
 * key.c — the one parser of keys and patterns, and pattern matching.
 *
 * Keys are MQTT topic names and patterns MQTT topic filters (MQTT 5, 4.7):
 *   1. a key is 1..max bytes of UTF-8 with no NUL, '+' or '#';
 *   2. segments are split by '/', and may be empty ("a//b", "/a");
 *   3. '+' is a whole segment and matches exactly one segment;
 *   4. '#' is the whole last segment and matches any number of trailing
 *      segments, none included ("a/#" matches "a");
 *   5. a pattern whose first segment is a wildcard never matches a key whose
 *      first segment starts with '$'.
 * Every transport calls these functions; none re-implements them.
 */
#include "store_int.h"

#include <stdio.h>
#include <string.h>

/* Returns the offset of the first byte that is not valid UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or `len`. */
size_t store__utf8_check(const void *buf, size_t len)
{
    const unsigned char *s = buf;
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else
            return i;
        if (i + n >= len)
            return i;
        for (size_t k = 1; k <= n; k++) {
            unsigned char b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
                return i;
        }
        i += n + 1;
    }
    return len;
}

bool store_utf8_valid(const void *buf, size_t len)
{
    return store__utf8_check(buf, len) == len;
}

/* The checks shared by keys and patterns: length, NUL and UTF-8. */
static int key__check_text(const char *s, size_t len, size_t max_len, const char *what, char *why,
                           size_t why_len)
{
    if (len == 0) {
        snprintf(why, why_len, "the %s is empty", what);
        return -1;
    }
    if (len > max_len) {
        snprintf(why, why_len, "the %s is %zu bytes long, more than the limit of %zu", what, len,
                 max_len);
        return -1;
    }
    if (memchr(s, '\0', len) != NULL) {
        snprintf(why, why_len, "the %s contains a NUL byte", what);
        return -1;
    }
    size_t bad = store__utf8_check(s, len);
    if (bad != len) {
        snprintf(why, why_len, "the %s is not valid UTF-8 (at byte %zu)", what, bad);
        return -1;
    }
    return 0;
}

int store_key_check(const char *key, size_t len, size_t max_len, char *why, size_t why_len)
{
    if (key__check_text(key, len, max_len, "key", why, why_len) != 0)
        return STORE_EKEY;
    const char *w = memchr(key, '+', len);
    if (w == NULL)
        w = memchr(key, '#', len);
    if (w != NULL) {
        snprintf(why, why_len,
                 "the key contains '%c' at byte %zu: wildcards belong in patterns, not keys", *w,
                 (size_t)(w - key));
        return STORE_EKEY;
    }
    return STORE_OK;
}

int store_pattern_check(const char *pat, size_t len, size_t max_len, bool *wild, char *why,
                        size_t why_len)
{
    *wild = false;
    if (key__check_text(pat, len, max_len, "pattern", why, why_len) != 0)
        return STORE_EPATTERN;
    size_t seg = 0; /* start of the current segment */
    for (size_t i = 0; i <= len; i++) {
        if (i < len && pat[i] != '/')
            continue;
        for (size_t k = seg; k < i; k++) {
            if (pat[k] != '+' && pat[k] != '#')
                continue;
            if (i - seg != 1) {
                snprintf(why, why_len,
                         "'%c' at byte %zu must be a whole segment, between '/' or at an end",
                         pat[k], k);
                return STORE_EPATTERN;
            }
            if (pat[k] == '#' && i != len) {
                snprintf(why, why_len, "'#' at byte %zu must be the last segment", k);
                return STORE_EPATTERN;
            }
            *wild = true;
        }
        seg = i + 1;
    }
    return STORE_OK;
}

bool store_key_reserved(const char *key, size_t len)
{
    return len > 0 && key[0] == '$';
}

static size_t key__seg_end(const char *s, size_t len, size_t from)
{
    const char *slash = memchr(s + from, '/', len - from);
    return slash ? (size_t)(slash - s) : len;
}

bool store_pattern_match(const char *pat, size_t plen, const char *key, size_t klen)
{
    size_t pi = 0, ki = 0;
    bool key_done = false;

    if (store_key_reserved(key, klen) && plen > 0 && (pat[0] == '+' || pat[0] == '#'))
        return false;
    for (;;) {
        size_t pe = key__seg_end(pat, plen, pi);
        if (pe - pi == 1 && pat[pi] == '#')
            return true;
        if (key_done)
            return false;
        size_t ke = key__seg_end(key, klen, ki);
        bool plus = pe - pi == 1 && pat[pi] == '+';
        if (!plus && (pe - pi != ke - ki || memcmp(pat + pi, key + ki, pe - pi) != 0))
            return false;
        bool plast = pe == plen, klast = ke == klen;
        if (plast)
            return klast;
        pi = pe + 1;
        if (klast)
            key_done = true;
        else
            ki = ke + 1;
    }
}

bool store_pattern_covers(const char *q, size_t qlen, const char *p, size_t plen)
{
    size_t i = 0, j = 0; /* where the current segments start */
    for (bool first = true;; first = false) {
        const char *qs = memchr(q + i, '/', qlen - i), *ps = memchr(p + j, '/', plen - j);
        size_t qe = qs ? (size_t)(qs - q) : qlen, pe = ps ? (size_t)(ps - p) : plen;
        bool qhash = qe - i == 1 && q[i] == '#', qplus = qe - i == 1 && q[i] == '+';
        bool phash = pe - j == 1 && p[j] == '#', pplus = pe - j == 1 && p[j] == '+';
        bool pdollar = first && plen > 0 && p[0] == '$';
        if (qhash)
            return !pdollar;
        if (phash)
            return false;
        if (qplus ? pdollar : pplus || qe - i != pe - j || memcmp(q + i, p + j, qe - i) != 0)
            return false;
        if (qe == qlen || pe == plen) /* "a/#" covers "a" too */
            return qe == qlen ? pe == plen : qlen - qe == 2 && q[qe + 1] == '#';
        i = qe + 1, j = pe + 1;
    }
}

bool store_pattern_intersects(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i = 0, j = 0; /* where the current segments start */
    bool adone = false, bdone = false;
    for (bool first = true;; first = false) {
        if (adone && bdone)
            return true;
        size_t ae = adone ? i : key__seg_end(a, alen, i), be = bdone ? j : key__seg_end(b, blen, j);
        bool ahash = !adone && ae - i == 1 && a[i] == '#',
             bhash = !bdone && be - j == 1 && b[j] == '#';
        if (ahash || bhash) {
            /* '#' takes whatever the other has left ("a/#" meets "a" too),
             * but never a first segment starting with '$'. */
            const char *o = ahash ? b : a;
            size_t os = ahash ? j : i, oe = ahash ? be : ae;
            bool odone = ahash ? bdone : adone;
            return !first || odone || !(oe > os && o[os] == '$');
        }
        if (adone || bdone)
            return false;
        bool aplus = ae - i == 1 && a[i] == '+', bplus = be - j == 1 && b[j] == '+';
        if (aplus || bplus) {
            const char *lit = aplus ? b + j : a + i;
            size_t litlen = aplus ? be - j : ae - i;
            if (first && !(aplus && bplus) && litlen > 0 && lit[0] == '$')
                return false; /* a wildcard never matches a $-key */
        } else if (ae - i != be - j || memcmp(a + i, b + j, ae - i) != 0)
            return false;
        if (ae == alen)
            adone = true;
        else
            i = ae + 1;
        if (be == blen)
            bdone = true;
        else
            j = be + 1;
    }
}

int store_key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    if (i == n)
        return (alen > blen) - (alen < blen);
    /* '/' sorts below every other byte: segment-by-segment order. */
    int ca = a[i] == '/' ? 0 : (unsigned char)a[i] + 1;
    int cb = b[i] == '/' ? 0 : (unsigned char)b[i] + 1;
    return ca - cb;
}
