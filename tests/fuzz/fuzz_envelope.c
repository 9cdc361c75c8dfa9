/*
 * fuzz_envelope.c — libFuzzer harness of the JSON that clients send as
 * entries (gateway/envelope.c): envelope_entry, envelope_labels and
 * envelope_type_ok, on JSON that jansson parses from the input, and the
 * round trip through envelope_add.
 *
 * Input: one flags byte, then JSON text (or raw value bytes, flag 4).
 *   flag 1: `type` names the content type too (batch ops, import);
 *   flag 2: jansson may decode \u0000 in strings (import does);
 *   flag 4: the rest is a value as PUT stores it (store_entry_new, type
 *           sniffed), not an envelope;
 *   flag 8: max_value_bytes is 16 (STORE_ETOOLARGE), else 1 MiB.
 * The round trip: an accepted entry, written with envelope_add and parsed
 * back as import parses a line of export, gives an entry whose envelope is
 * the same bytes, with the same value, type and labels.
 */
#include "envelope.h"
#include "gateway.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_why(int err, const char *why)
{
    if (err != STORE_OK && why[0] == '\0') {
        fprintf(stderr, "error %s without a sentence\n", store_err_name(err));
        abort();
    }
}

static void round_trip(const struct store_entry *e, size_t max_value)
{
    struct buf b1 = {0}, b2 = {0};
    struct store_entry *e2 = NULL;
    const struct store_limits lim = {.max_key_bytes = 1024, .max_value_bytes = max_value};
    struct store_op op;
    json_t *owner = NULL;
    char why[512] = "";

    envelope_add(&b1, "fuzz/key", 8, e);
    if (b1.oom)
        goto out;
    /* As import reads a line of export. */
    int err = envelope_import_line(b1.p, b1.len, &lim, store_entry_origin(e), &op, &owner, why,
                                   sizeof why);
    json_decref(owner);
    if (err != STORE_OK || op.key == NULL || op.kind != STORE_OP_SET) {
        fprintf(stderr, "the envelope of an accepted entry is refused: %s: %s\n%.*s\n",
                store_err_name(err), why, (int)b1.len, b1.p);
        abort();
    }
    e2 = op.entry;
    envelope_add(&b2, "fuzz/key", 8, e2);
    if (b2.oom)
        goto out;
    if ((b1.len != b2.len || memcmp(b1.p, b2.p, b1.len) != 0)) {
        fprintf(stderr, "round trip changed the envelope:\n  %.*s\n  %.*s\n", (int)b1.len, b1.p,
                (int)b2.len, b2.p);
        abort();
    }
    size_t l1, l2;
    const void *v1 = store_entry_value(e, &l1), *v2 = store_entry_value(e2, &l2);
    const char *lab1 = store_entry_labels(e), *lab2 = store_entry_labels(e2);
    /* A JSON value is kept minified; other values byte for byte. */
    if (strcmp(store_entry_type(e), store_entry_type(e2)) != 0 ||
        (!store_type_is_json(store_entry_type(e)) && (l1 != l2 || memcmp(v1, v2, l1) != 0)) ||
        (lab1 == NULL) != (lab2 == NULL) || (lab1 && strcmp(lab1, lab2) != 0)) {
        fprintf(stderr, "round trip changed the entry (type, value or labels)\n");
        abort();
    }
out:
    store_entry_unref(e2);
    buf_free(&b1);
    buf_free(&b2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    bool type_alias = flags & 1;
    size_t max_value = flags & 8 ? 16 : (size_t)1 << 20;
    enum store_origin origin = (enum store_origin)((flags >> 4) % STORE_ORIGIN_COUNT);
    struct store_entry *e = NULL;
    char why[512] = "";
    data++, size--;

    if (flags & 4) { /* a raw value, its type sniffed */
        if (store_entry_new(data, size, NULL, NULL, origin, &e) == STORE_OK) {
            round_trip(e, (size_t)1 << 20);
            store_entry_unref(e);
        }
        return 0;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)data, size,
                           JSON_DECODE_ANY | (flags & 2 ? JSON_ALLOW_NUL : 0), &jerr);
    if (j == NULL)
        return 0;

    int err = envelope_entry(j, max_value, type_alias, origin, &e, why, sizeof why);
    check_why(err, why);
    if (err == STORE_OK) {
        if (e == NULL)
            abort();
        round_trip(e, max_value);
        store_entry_unref(e);
    } else if (e != NULL) {
        abort(); /* no entry on failure */
    }

    /* The labels and the content type on their own, wherever they are. */
    json_t *labels = json_is_object(j) ? json_object_get(j, "labels") : j;
    if (labels != NULL) {
        char *out = NULL;
        why[0] = '\0';
        err = envelope_labels(labels, &out, why, sizeof why);
        check_why(err, why);
        if (err == STORE_OK && out != NULL) {
            /* Sorted compact JSON of strings, which store_entry_new takes. */
            if (store_entry_new("x", 1, "text/plain", out, STORE_ORIGIN_HTTP, &e) != STORE_OK)
                abort();
            store_entry_unref(e);
        }
        if (err != STORE_OK && out != NULL)
            abort();
        free(out);
    }
    json_t *type = json_is_object(j) ? json_object_get(j, "content_type") : j;
    if (json_is_string(type))
        (void)envelope_type_ok(json_string_value(type));
    char *dump = envelope_dump_json(j);
    free(dump);
    json_decref(j);
    return 0;
}
