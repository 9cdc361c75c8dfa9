/*
 * snapshot.c — snapshots: the entries a walk visits, or the changes a
 * history replay reads, with their keys copied (the start of a
 * subscription, and the keys a pattern delete removes).
 * Invariant: snap->n entries are whole (key, klen, entry, rev, ts); a
 * failed add leaves the snapshot as it was, with the entry released.
 */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

void store_snapshot_free(struct store_snapshot *snap)
{
    for (size_t i = 0; i < snap->n; i++) {
        free(snap->keys[i]);
        store_entry_unref(snap->entries[i]);
    }
    free(snap->keys);
    free(snap->klens);
    free(snap->entries);
    free(snap->revs);
    free(snap->tss);
    memset(snap, 0, sizeof *snap);
}

int snapshot__add(struct store_snapshot *snap, const char *key, size_t klen, struct store_entry *e,
                  int64_t rev, int64_t ts)
{
    if (snap->n == snap->cap) {
        size_t cap = snap->cap ? snap->cap * 2 : 64;
        char **keys = realloc(snap->keys, cap * sizeof *keys);
        if (keys)
            snap->keys = keys;
        size_t *klens = realloc(snap->klens, cap * sizeof *klens);
        if (klens)
            snap->klens = klens;
        struct store_entry **entries = realloc(snap->entries, cap * sizeof *entries);
        if (entries)
            snap->entries = entries;
        int64_t *revs = realloc(snap->revs, cap * sizeof *revs);
        if (revs)
            snap->revs = revs;
        int64_t *tss = realloc(snap->tss, cap * sizeof *tss);
        if (tss)
            snap->tss = tss;
        if (!keys || !klens || !entries || !revs || !tss)
            goto oom;
        snap->cap = cap;
    }
    if ((snap->keys[snap->n] = malloc(klen + 1)) == NULL)
        goto oom;
    memcpy(snap->keys[snap->n], key, klen);
    snap->keys[snap->n][klen] = '\0';
    snap->klens[snap->n] = klen;
    snap->entries[snap->n] = e;
    snap->revs[snap->n] = rev;
    snap->tss[snap->n] = ts;
    snap->n++;
    return STORE_OK;
oom:
    store_entry_unref(e);
    return STORE_EINTERNAL;
}
