/*
 * import.c — an import of any size: JSON lines (envelopes, as export writes
 * them) checked whole before any is applied, in bounded memory.
 *
 * The transport feeds the body in pieces as they arrive; each complete line
 * is checked at once and, if good, written to a spool file (unlinked, in
 * data_dir); the first bad line stops the check and is reported with its
 * number. At the end, when every line was good, the spool is read back and
 * applied in commits of at most IMPORT_COMMIT_OPS changes or
 * IMPORT_COMMIT_BYTES of values.
 * Invariants:
 *   1. nothing is applied unless every line was checked good;
 *   2. memory holds at most one line (bounded by max_line) and one commit's
 *      changes, whatever the size of the body;
 *   3. an imported change is the importer's: its origin is the transport's,
 *      never the line's "origin" (so it is mirrored to MQTT like any other);
 *   4. a line holds only the fields of an envelope (API.md "Strictness"):
 *      one the import would not apply is refused by name, never ignored.
 */
#include "import.h"
#include "envelope.h"
#include "strict.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define IMPORT_COMMIT_OPS   1000
#define IMPORT_COMMIT_BYTES (16u << 20)

struct import {
    struct store *store;
    enum store_origin origin;
    import_check_fn check;
    void *check_arg; /* owned */
    FILE *spool;
    struct buf line; /* the part of a line not yet ended by '\n' */
    size_t max_line;
    size_t lineno, checked;
    int err; /* the first error, STORE_OK while every line is good */
    char why[640];
};

int import_new(struct store *store, const char *data_dir, enum store_origin origin,
               import_check_fn check, void *check_arg, struct import **out)
{
    struct import *im = calloc(1, sizeof *im);
    *out = NULL;
    if (im == NULL) {
        free(check_arg);
        return STORE_EINTERNAL;
    }
    int fd = open(data_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    im->spool = fd >= 0 ? fdopen(fd, "w+") : tmpfile();
    if (im->spool == NULL) {
        if (fd >= 0)
            close(fd);
        free(check_arg);
        free(im);
        return STORE_EINTERNAL;
    }
    const struct store_limits *lim = store_limits(store);
    im->store = store;
    im->origin = origin;
    im->check = check;
    im->check_arg = check_arg;
    /* The longest envelope of a valid entry: every byte of the value
     * escaped as \u00XX, the key likewise, and the labels. */
    im->max_line = 6 * (lim->max_value_bytes + lim->max_key_bytes) + STORE_LABELS_MAX * 6 + 4096;
    *out = im;
    return STORE_OK;
}

void import_free(struct import *im)
{
    if (im == NULL)
        return;
    if (im->spool)
        fclose(im->spool);
    buf_free(&im->line);
    free(im->check_arg);
    free(im);
}

static void import__fail(struct import *im, int err, const char *why)
{
    im->err = err;
    snprintf(im->why, sizeof im->why, "line %zu: %s", im->lineno, why);
}

/* The fields of an envelope as export writes it (API.md "Keys, patterns,
 * entries"), by form; rev, ts and origin are the exporter's, read by no
 * import (the change gets its own, invariant 3), but they are known. A new
 * envelope field goes here once envelope_import_line applies it. */
static const char *const import__entry_fields[] = {
    "key",    "rev",    "ts",     "type",    "content_type", "value", "text",
    "base64", "labels", "origin", "expires", "deleted",      NULL};
static const char *const import__deleted_fields[] = {"key", "rev", "ts", "origin", "deleted", NULL};

/* Invariant 4: STORE_OK, or STORE_EBODY naming the first unknown field. */
static int import__known_fields(const json_t *obj, bool deleted, char *why, size_t why_len)
{
    const char *const *fields = deleted ? import__deleted_fields : import__entry_fields;
    const char *bad = strict_unknown(obj, fields, NULL);
    if (bad == NULL)
        return STORE_OK;
    char quoted[96], takes[256];
    strict_quote(quoted, sizeof quoted, bad);
    strict_list(takes, sizeof takes, fields);
    snprintf(why, why_len, "unknown field '%s' in %s envelope (it has %s)", quoted,
             deleted ? "a deletion's" : "an entry's", takes);
    return STORE_EBODY;
}

/* Checks one complete line and spools it. */
static void import__check(struct import *im, const char *text, size_t len)
{
    struct store_op op;
    json_t *owner = NULL;
    char why[512];
    im->lineno++;
    int err = envelope_import_line(text, len, store_limits(im->store), im->origin, &op, &owner, why,
                                   sizeof why);
    if (err == STORE_OK && op.key != NULL)
        err = import__known_fields(owner, op.kind == STORE_OP_DELETE, why, sizeof why);
    if (err == STORE_OK && op.key != NULL && im->check != NULL)
        err = im->check(im->check_arg, &op, why, sizeof why);
    store_entry_unref(op.entry);
    json_decref(owner);
    if (err != STORE_OK) {
        import__fail(im, err, why);
        return;
    }
    if (op.key == NULL) /* a blank line */
        return;
    if (fwrite(text, 1, len, im->spool) != len || fputc('\n', im->spool) == EOF) {
        import__fail(im, STORE_EFULL, "the import cannot be spooled to data_dir (disk full?)");
        return;
    }
    im->checked++;
}

void import_feed(struct import *im, const char *data, size_t len)
{
    while (im->err == STORE_OK && len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t piece = nl ? (size_t)(nl - data) : len;
        if (im->line.len + piece > im->max_line) {
            im->lineno++;
            im->err = STORE_ETOOLARGE;
            snprintf(im->why, sizeof im->why,
                     "line %zu: longer than %zu bytes, more than any valid envelope", im->lineno,
                     im->max_line);
            return;
        }
        if (nl == NULL) {
            buf_add(&im->line, data, len);
            if (im->line.oom)
                import__fail(im, STORE_EINTERNAL, "out of memory");
            return;
        }
        if (im->line.len == 0)
            import__check(im, data, piece);
        else {
            buf_add(&im->line, data, piece);
            if (im->line.oom)
                import__fail(im, STORE_EINTERNAL, "out of memory");
            else
                import__check(im, im->line.p, im->line.len);
            im->line.len = 0;
        }
        data += piece + 1;
        len -= piece + 1;
    }
}

/* Applies one commit's changes; they are taken (entries) and cleared. */
static int import__commit(struct import *im, struct store_op *ops, json_t **owners, size_t n,
                          size_t *imported, char *why, size_t why_len)
{
    struct store_txn t = {.ops = ops, .n = n};
    int err = store_apply(im->store, &t);
    for (size_t i = 0; i < n; i++) {
        ops[i].entry = NULL; /* taken by the store */
        json_decref(owners[i]);
        owners[i] = NULL;
    }
    if (err != STORE_OK) {
        char detail[400];
        envelope_failure(detail, sizeof detail, &t, false);
        snprintf(why, why_len, "after %zu imported: %s", *imported, detail);
        return err;
    }
    *imported += n;
    return STORE_OK;
}

int import_finish(struct import *im, size_t *imported, char *why, size_t why_len)
{
    struct store_op *ops = calloc(IMPORT_COMMIT_OPS, sizeof *ops);
    json_t **owners = calloc(IMPORT_COMMIT_OPS, sizeof *owners);
    char *line = NULL;
    size_t cap = 0, n = 0, bytes = 0;
    int err = STORE_OK;

    *imported = 0;
    if (im->err == STORE_OK && im->line.len > 0) { /* the last line, without '\n' */
        import__check(im, im->line.p, im->line.len);
        im->line.len = 0;
    }
    if (im->err != STORE_OK) {
        snprintf(why, why_len, "%s; nothing was imported", im->why);
        err = im->err;
        goto out;
    }
    if (ops == NULL || owners == NULL || fflush(im->spool) != 0 || fseek(im->spool, 0, SEEK_SET)) {
        snprintf(why, why_len, "out of memory, or the spool cannot be read back");
        err = STORE_EINTERNAL;
        goto out;
    }
    assert(im->err == STORE_OK); /* invariant 1: every line was checked good */
    ssize_t len;
    while ((len = getline(&line, &cap, im->spool)) > 0) {
        err = envelope_import_line(line, (size_t)len - 1, store_limits(im->store), im->origin,
                                   &ops[n], &owners[n], why, why_len);
        if (err == STORE_OK && im->check != NULL)
            err = im->check(im->check_arg, &ops[n], why, why_len);
        if (err != STORE_OK) /* it was good a moment ago: the spool is damaged */
            goto out;
        size_t vlen = 0;
        if (ops[n].entry != NULL)
            store_entry_value(ops[n].entry, &vlen);
        bytes += vlen;
        if (++n == IMPORT_COMMIT_OPS || bytes >= IMPORT_COMMIT_BYTES) {
            if ((err = import__commit(im, ops, owners, n, imported, why, why_len)) != STORE_OK)
                goto out;
            n = bytes = 0;
        }
    }
    if (n > 0 && (err = import__commit(im, ops, owners, n, imported, why, why_len)) == STORE_OK)
        n = 0;
out:
    for (size_t i = 0; i < n; i++) {
        store_entry_unref(ops[i].entry);
        json_decref(owners[i]);
    }
    free(line);
    free(ops);
    free(owners);
    return err;
}
