/*
 * fuzz_key.c — libFuzzer harness of the one parser of keys and patterns
 * (store/key.c): store_key_check, store_pattern_check, store_pattern_match
 * and store_key_cmp.
 *
 * Input: PATTERN NUL KEY (no NUL: the whole input is both). Besides memory
 * and UB errors it checks what API.md promises:
 *   1. a valid key is a valid pattern without wildcards, and vice versa;
 *   2. store_pattern_match agrees with a plain segment-by-segment matcher
 *      written from MQTT's rules (+, # as the last segment matching none
 *      too, $-keys never matched by a leading wildcard);
 *   3. a pattern without wildcards matches exactly the key of its bytes;
 *   4. store_key_cmp is antisymmetric and orders by segments.
 */
#include "store.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_KEY 1024

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t seg_end(const char *s, size_t len, size_t from)
{
    while (from < len && s[from] != '/')
        from++;
    return from;
}

/* MQTT 5, 4.7: the reference matcher, one segment at a time. */
static bool ref_match(const char *p, size_t plen, const char *k, size_t klen)
{
    size_t pi = 0, ki = 0;
    bool key_more = true; /* a key segment starts at ki */

    if (klen > 0 && k[0] == '$' && (p[0] == '+' || p[0] == '#'))
        return false;
    for (;;) {
        size_t pe = seg_end(p, plen, pi);
        bool last = pe == plen;
        if (pe - pi == 1 && p[pi] == '#')
            return true;
        if (!key_more)
            return false;
        size_t ke = seg_end(k, klen, ki);
        if (!(pe - pi == 1 && p[pi] == '+') &&
            (pe - pi != ke - ki || memcmp(p + pi, k + ki, pe - pi) != 0))
            return false;
        key_more = ke < klen;
        if (last)
            return !key_more;
        pi = pe + 1;
        ki = ke + 1;
    }
}

static int sign(int v)
{
    return (v > 0) - (v < 0);
}

/* Segment-by-segment byte order: the order store_key_cmp promises. */
static int ref_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t ai = 0, bi = 0;
    for (;;) {
        size_t ae = seg_end(a, alen, ai), be = seg_end(b, blen, bi);
        size_t n = ae - ai < be - bi ? ae - ai : be - bi;
        int c = memcmp(a + ai, b + bi, n);
        if (c != 0)
            return sign(c);
        if (ae - ai != be - bi)
            return ae - ai < be - bi ? -1 : 1;
        bool amore = ae < alen, bmore = be < blen;
        if (!amore || !bmore)
            return amore - bmore;
        ai = ae + 1;
        bi = be + 1;
    }
}

static void check_one(const char *s, size_t len, bool *key_ok, bool *pat_ok, bool *wild)
{
    char why[128];
    why[0] = '\0';
    *key_ok = store_key_check(s, len, FUZZ_MAX_KEY, why, sizeof why) == STORE_OK;
    if (!*key_ok && (why[0] == '\0' || strlen(why) >= sizeof why))
        abort(); /* an error must say why */
    why[0] = '\0';
    *pat_ok = store_pattern_check(s, len, FUZZ_MAX_KEY, wild, why, sizeof why) == STORE_OK;
    if (!*pat_ok && why[0] == '\0')
        abort();
    /* 1. */
    if (*key_ok != (*pat_ok && !*wild)) {
        fprintf(stderr, "key_check %d but pattern_check %d wild %d\n", *key_ok, *pat_ok, *wild);
        abort();
    }
    /* A tiny `why` is truncated, never overrun. */
    char tiny[4];
    bool w2;
    store_key_check(s, len, FUZZ_MAX_KEY, tiny, sizeof tiny);
    store_pattern_check(s, len, FUZZ_MAX_KEY, &w2, tiny, sizeof tiny);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copies of exactly the bytes, so ASan sees any read past the end. */
    const uint8_t *nul = memchr(data, 0, size);
    size_t plen = nul ? (size_t)(nul - data) : size;
    size_t klen = nul ? size - plen - 1 : size;
    char *whole = malloc(size ? size : 1);
    char *pat = malloc(plen ? plen : 1);
    char *key = malloc(klen ? klen : 1);
    bool key_ok, pat_ok, wild, kkey_ok, kpat_ok, kwild;

    memcpy(whole, data, size);
    memcpy(pat, data, plen);
    memcpy(key, nul ? nul + 1 : data, klen);
    check_one(whole, size, &key_ok, &pat_ok, &wild);
    check_one(pat, plen, &key_ok, &pat_ok, &wild);
    check_one(key, klen, &kkey_ok, &kpat_ok, &kwild);

    if (pat_ok && kkey_ok) {
        bool got = store_pattern_match(pat, plen, key, klen);
        bool want = ref_match(pat, plen, key, klen);
        if (got != want) { /* 2. */
            fprintf(stderr, "pattern '%.*s' key '%.*s': store_pattern_match %d, MQTT %d\n",
                    (int)plen, pat, (int)klen, key, got, want);
            abort();
        }
        if (!wild && got != (plen == klen && memcmp(pat, key, klen) == 0)) /* 3. */
            abort();
    }
    if (key_ok && kkey_ok) { /* 4. */
        int ab = store_key_cmp(pat, plen, key, klen), ba = store_key_cmp(key, klen, pat, plen);
        if (sign(ab) != -sign(ba) || sign(ab) != ref_cmp(pat, plen, key, klen)) {
            fprintf(stderr, "store_key_cmp('%.*s', '%.*s') = %d, reversed %d, by segments %d\n",
                    (int)plen, pat, (int)klen, key, ab, ba, ref_cmp(pat, plen, key, klen));
            abort();
        }
        if (store_key_cmp(key, klen, key, klen) != 0)
            abort();
    }
    if (kkey_ok)
        (void)store_key_reserved(key, klen);
    free(whole);
    free(pat);
    free(key);
    return 0;
}
