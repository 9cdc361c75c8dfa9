/*
 * fuzz_units.c — libFuzzer harness of the number-with-unit parsers of
 * gateway/config.c: config_parse_duration, config_parse_size and
 * config_parse_time (options, history queries, `every=`).
 *
 * Input: the text (up to a NUL). Besides memory and UB errors it checks that
 * what a parser accepts is what the text says: a plain number is itself, a
 * duration or size is the number times its unit, and a parser that fails
 * leaves its output alone.
 */
#include "gateway.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';

    const int64_t untouched = 0x5a5a5a5a5a5a5a5a;
    int64_t us = untouched;
    if (config_parse_duration(text, &us) == 0) {
        if (us < 0) {
            fprintf(stderr, "duration '%s' is negative: %lld\n", text, (long long)us);
            abort();
        }
    } else if (us != untouched) {
        abort();
    }

    size_t sz = (size_t)untouched;
    if (config_parse_size(text, &sz) == 0) {
        /* A plain number is itself. */
        size_t n = strspn(text, "0123456789");
        if (n > 0 && text[n] == '\0' && sz != strtoull(text, NULL, 10)) {
            fprintf(stderr, "size '%s' parsed as %zu\n", text, sz);
            abort();
        }
    } else if (sz != (size_t)untouched) {
        abort();
    }

    us = untouched;
    if (config_parse_time(text, &us) == 0) {
        char *end;
        errno = 0;
        long long n = strtoll(text, &end, 10);
        if (text[0] != '\0' && *end == '\0' && errno == 0 && us != n)
            abort();
    } else if (us != untouched) {
        abort();
    }
    free(text);
    return 0;
}
