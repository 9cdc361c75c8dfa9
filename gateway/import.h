/*
 * import.h — an import of any size, checked whole, then applied (import.c).
 */
#ifndef ALMANAC_IMPORT_H
#define ALMANAC_IMPORT_H

#include "store.h"

struct import;

/* Checks one op of an import (a line, as envelope_import_line reads it) as
 * the importer's; fills what follows from it. STORE_OK, or an error with a
 * sentence in `why`. */
typedef int (*import_check_fn)(void *arg, struct store_op *op, char *why, size_t why_len);

/* A new import through `origin`, spooling to `data_dir`; each line passes
 * `check` with `check_arg` (malloc'd; taken, freed with the import).
 * Returns STORE_OK with `*out`, or STORE_EINTERNAL. */
int import_new(struct store *store, const char *data_dir, enum store_origin origin,
               import_check_fn check, void *check_arg, struct import **out);
/* Checks the next piece of the body (any split); stops at the first bad line. */
void import_feed(struct import *im, const char *data, size_t len);
/* Applies every line if each was good, in bounded commits. Returns
 * STORE_OK with the count in `*imported`, or an error with a sentence. */
int import_finish(struct import *im, size_t *imported, char *why, size_t why_len);
void import_free(struct import *im);

#endif
