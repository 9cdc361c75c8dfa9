/*
 * strict.h — API.md "Strictness": a request carries only names the server
 * knows (strict.c). Each transport lists, per request, the fields, query
 * parameters or X-Almanac-* headers it takes; these find the first name a
 * request carries beyond its list, and write it into the message that
 * refuses it.
 */
#ifndef ALMANAC_STRICT_H
#define ALMANAC_STRICT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The longest list of names a request takes: a list is NULL-terminated, or
 * exactly this long. */
#define STRICT_NAMES_MAX 12

/* Whether the list `names` takes `name`. A listed name ending in '.' or '-'
 * is a family (label., X-Almanac-Label-): it takes every name it begins.
 * With `fold` the comparison ignores case (header names). */
bool strict_takes(const char *const *names, const char *name, bool fold);
/* The first member name of the JSON object `obj` that neither `names` nor
 * `also` (NULL: none) takes, borrowed from `obj`; NULL when there is none
 * (or `obj` is no object). */
const char *strict_unknown(const json_t *obj, const char *const *names, const char *const *also);
/* `name` as a message quotes it: at most 64 bytes, not cut inside a UTF-8
 * character, "..." after a cut; "(a name that is not UTF-8)" for one that
 * is not text. */
void strict_quote(char *out, size_t len, const char *name);
/* The list `names` for a message: "start, stop, label.<name>", or "none". */
void strict_list(char *out, size_t len, const char *const *names);

#endif
