/*
 * fuzz_bridge.c — libFuzzer harness of the MQTT bridge's parsers
 * (bridge/bridge.c): bridge_map_check, bridge_url_check, and the rewrite of
 * names through a map in both directions.
 *
 * The rewrite (map__rewrite, bridge__in_map, bridge__topic) is static; the
 * public way in is the store's outbox hook of a bridge that is built but not
 * started (bridge_new, bridge_outbox_hooks): hook.topic(key) is the out
 * direction, key -> topic. The in direction, topic -> key as
 * bridge__arrived computes it, is the same rewrite with filter and pattern
 * swapped, so it goes through the hook of "out PATTERN FILTER".
 *
 * Input: a map spec, then a newline, then a key or topic. Whole input: the
 * map and URL checks. Checks memory, UB, leaks, and that:
 *   1. "dir F P" is valid exactly when "out P F" is (the rule is symmetric);
 *   2. a rewritten name is a valid key/topic matched by the other side,
 *      but for a $-name under a leading wildcard: "in a/# #" turns the
 *      topic a/$SYS/x into the key $SYS/x, which "#" does not match (the
 *      store refuses it: read_only; corpus/bridge/finding-dollar-key).
 */
#include "bridge.h"
#include "log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_KEY 1024

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    log_set_level(LOG_ERROR);
    return 0;
}

/* The name `name` becomes through the out side of `spec`: a new string, or
 * NULL (no map covers it, or the rewrite leaves nothing). */
static char *through(const char *spec, const char *name, size_t nlen, bool *made)
{
    struct bridge_config cfg = {0};
    struct store_limits limits = {FUZZ_MAX_KEY, 1 << 20};
    struct store_outbox_hooks h;
    struct bridge *b = NULL;
    char why[1024], *maps[1] = {(char *)spec}, *out = NULL;

    cfg.url = "mqtt://127.0.0.1:1";
    cfg.client_id = "fuzz";
    cfg.protocol = 5;
    cfg.qos = 1;
    cfg.maps = maps;
    cfg.nmaps = 1;
    *made = bridge_new(&cfg, &limits, &b, why, sizeof why) == 0;
    if (!*made)
        return NULL;
    bridge_outbox_hooks(b, &h);
    if (h.topic)
        out = h.topic(h.arg, name, nlen, STORE_ORIGIN_HTTP);
    /* A change that came from MQTT never goes back out (invariant 3). */
    if (h.topic && h.topic(h.arg, name, nlen, STORE_ORIGIN_MQTT) != NULL)
        abort();
    bridge_free(b);
    return out;
}

static void check_rewrite(const char *spec, const char *from_side, const char *to_side,
                          const char *name, size_t nlen)
{
    bool made, wild;
    char why[256];
    char *out = through(spec, name, nlen, &made);
    if (!made) {
        fprintf(stderr, "bridge_new refused '%s', which bridge_map_check took\n", spec);
        abort();
    }
    bool covered = store_pattern_match(from_side, strlen(from_side), name, nlen);
    if (out == NULL)
        return;
    size_t olen = strlen(out);
    if (!covered) {
        fprintf(stderr, "'%.*s' is not matched by '%s' but went out as '%s'\n", (int)nlen, name,
                from_side, out);
        abort();
    }
    /* 2. What the bridge turns a topic into is a key if it passes
     * store_key_check (bridge__arrived drops it otherwise); it must be
     * UTF-8 without wildcards whenever the name was, and be matched by the
     * map's other side. */
    bool dollar = store_key_reserved(out, olen) && (to_side[0] == '+' || to_side[0] == '#');
    if (store_pattern_check(out, olen, 65535, &wild, why, sizeof why) != STORE_OK || wild ||
        (!store_pattern_match(to_side, strlen(to_side), out, olen) && !dollar)) {
        fprintf(stderr, "map '%s': '%.*s' became '%s', which '%s' does not match\n", spec,
                (int)nlen, name, out, to_side);
        abort();
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), why[1024];
    memcpy(text, data, size);
    text[size] = '\0';

    (void)bridge_url_check(text, why, sizeof why);
    (void)bridge_map_check(text, why, sizeof why);

    char *nl = memchr(text, '\n', size);
    if (nl == NULL || strlen(text) != size)
        goto out;
    *nl = '\0';
    const char *spec = text, *name = nl + 1;
    size_t nlen = size - (size_t)(nl + 1 - text);
    char dir[16], filter[4096], pattern[4096], extra[2];
    int n = sscanf(spec, "%15s %4095s %4095s %1s", dir, filter, pattern, extra);
    if (n < 2 || n > 3)
        goto out;
    if (n == 2)
        strcpy(pattern, filter);

    why[0] = '\0';
    bool ok = bridge_map_check(spec, why, sizeof why) == 0;
    if (!ok && why[0] == '\0')
        abort();
    char swapped[8300];
    snprintf(swapped, sizeof swapped, "out %s %s", pattern, filter);
    bool dir_ok = strcmp(dir, "in") == 0 || strcmp(dir, "out") == 0 || strcmp(dir, "both") == 0;
    if (dir_ok && ok != (bridge_map_check(swapped, why, sizeof why) == 0)) { /* 1. */
        fprintf(stderr, "'%s' and '%s' are not both valid or both invalid\n", spec, swapped);
        abort();
    }
    if (!ok || store_key_check(name, nlen, FUZZ_MAX_KEY, why, sizeof why) != STORE_OK)
        goto out;
    /* Out: a key of `pattern` goes to a topic of `filter`. */
    char out_spec[8300];
    snprintf(out_spec, sizeof out_spec, "out %s %s", filter, pattern);
    check_rewrite(out_spec, pattern, filter, name, nlen);
    /* In: a topic of `filter` becomes a key of `pattern`. */
    check_rewrite(swapped, filter, pattern, name, nlen);
out:
    free(text);
    return 0;
}
