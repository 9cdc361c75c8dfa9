/*
 * prom.h — numeric values as Prometheus gauges (prom.c).
 */
#ifndef ALMANAC_PROM_H
#define ALMANAC_PROM_H

#include "buf.h"
#include "store.h"

#include <stdbool.h>
#include <stdint.h>

#define PROM_VALUE_MAX   65536       /* larger values are no metrics: skipped */
#define PROM_SAMPLES_MAX 100000u     /* samples of one answer at most */
#define PROM_BYTES_MAX   (64u << 20) /* and bytes of their lines */
#define PROM_LIMITS      "100,000 samples or 64 MiB"

struct prom;
/* Samples named with `prefix` (a valid name, or NULL) before each name,
 * of entries changed at or after `min_ts` (µs; 0: all), `max` at most. */
struct prom *prom_new(const char *prefix, int64_t min_ts, size_t max);
void prom_free(struct prom *p);
/* Leaves out the samples whose name starts with `name_start` (kept, not
 * copied): /metrics's own families, which a second TYPE line would break. */
void prom_skip(struct prom *p, const char *name_start);
struct ops;
struct caller;
/* Takes the samples of the entries of `pat` that caller `c` may read
 * (checked as a pattern get is). STORE_OK, or the pattern get's error with
 * a sentence in `why`. */
int prom_collect(struct prom *p, struct ops *o, const struct caller *c, const char *pat,
                 size_t plen, char *why, size_t why_len);
/* Appends the samples in the text format. STORE_OK; STORE_ETOOLARGE when
 * there were more than `max` (or PROM_BYTES_MAX bytes of them); STORE_EINTERNAL out of memory. */
int prom_write(struct prom *p, struct buf *b);
/* Whether `s` is a valid metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*). */
bool prom_name_ok(const char *s);

#endif
