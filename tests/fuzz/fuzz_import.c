/*
 * fuzz_import.c — libFuzzer harness of one line of an import
 * (envelope_import_line, gateway/envelope.c), as POST /api/v1/import and
 * `almanac import` read them.
 *
 * Checks, besides memory safety: an error always comes with a sentence and
 * leaves nothing to free; an accepted line names a valid, non-reserved key
 * without NUL, whose entry's origin is the importer's (never the line's);
 * a set's envelope, written back with envelope_add and read again, gives
 * the same bytes (export then import changes nothing).
 */
#include "envelope.h"
#include "gateway.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct store_limits lim = {.max_key_bytes = 64, .max_value_bytes = 4096};
    struct store_op op, op2;
    json_t *owner = NULL, *owner2 = NULL;
    char why[512] = "";
    struct buf b1 = {0}, b2 = {0};

    int err = envelope_import_line((const char *)data, size, &lim, STORE_ORIGIN_HTTP, &op, &owner,
                                   why, sizeof why);
    if (err != STORE_OK) {
        if (why[0] == '\0' || owner != NULL || op.entry != NULL)
            abort();
        return 0;
    }
    if (op.key == NULL) { /* a blank line */
        if (owner != NULL || op.entry != NULL)
            abort();
        return 0;
    }
    char check[256];
    if (strlen(op.key) != op.klen ||
        store_key_check(op.key, op.klen, lim.max_key_bytes, check, sizeof check) != STORE_OK ||
        store_key_reserved(op.key, op.klen))
        abort();
    if (op.kind == STORE_OP_SET) {
        if (op.entry == NULL || store_entry_origin(op.entry) != STORE_ORIGIN_HTTP)
            abort();
        envelope_add(&b1, op.key, op.klen, op.entry);
        if (envelope_import_line(b1.p, b1.len, &lim, STORE_ORIGIN_HTTP, &op2, &owner2, why,
                                 sizeof why) != STORE_OK ||
            op2.entry == NULL)
            abort(); /* export's own line refused */
        envelope_add(&b2, op2.key, op2.klen, op2.entry);
        if (b1.len != b2.len || memcmp(b1.p, b2.p, b1.len) != 0)
            abort();
        store_entry_unref(op2.entry);
        json_decref(owner2);
    } else if (op.entry != NULL)
        abort();
    store_entry_unref(op.entry);
    json_decref(owner);
    buf_free(&b1);
    buf_free(&b2);
    return 0;
}
