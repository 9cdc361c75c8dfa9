/*
 * fuzz_history_query.c — libFuzzer harness of envelope_history_query
 * (gateway/envelope.c), the history query of HTTP's query string and of the
 * session `history` request.
 *
 * Input: name=value pairs separated by '&' or newlines, as a query string
 * without percent-decoding; the callback answers the first value of a name,
 * as MHD does. Besides memory and UB errors it checks that an accepted query
 * is within its bounds and that a refusal says why.
 */
#include "envelope.h"
#include "gateway.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_PAIRS 32
#define FUZZ_MAX_LIMIT 10000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct pairs {
    char *name[FUZZ_MAX_PAIRS], *value[FUZZ_MAX_PAIRS];
    size_t n;
};

static const char *arg_of(void *arg, const char *name)
{
    const struct pairs *p = arg;
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->name[i], name) == 0)
            return p->value[i];
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *save = NULL;
    struct pairs p = {0};
    memcpy(text, data, size);
    text[size] = '\0';
    for (char *tok = strtok_r(text, "&\n", &save); tok && p.n < FUZZ_MAX_PAIRS;
         tok = strtok_r(NULL, "&\n", &save)) {
        char *eq = strchr(tok, '=');
        p.name[p.n] = tok;
        p.value[p.n] = eq ? eq + 1 : tok + strlen(tok); /* "limit" alone: "" */
        if (eq)
            *eq = '\0';
        p.n++;
    }

    struct store_history_query q;
    char why[256] = "";
    memset(&q, 0, sizeof q);
    if (envelope_history_query(&q, arg_of, &p, FUZZ_MAX_LIMIT, why, sizeof why) == 0) {
        if (q.limit < 1 || q.limit > FUZZ_MAX_LIMIT || q.after < 0 || q.every < 0 ||
            (arg_of(&p, "every") && q.every == 0)) {
            fprintf(stderr, "accepted out of bounds: limit %zu after %lld every %lld\n", q.limit,
                    (long long)q.after, (long long)q.every);
            abort();
        }
    } else if (why[0] == '\0') {
        abort();
    }
    free(text);
    return 0;
}
