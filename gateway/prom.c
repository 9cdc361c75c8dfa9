/*
 * prom.c — numeric values as Prometheus gauges (GET /api/v1/prometheus and
 * the metrics_keys of /metrics), in the conventions mqtt2prometheus users
 * know:
 *   - a JSON object gives one gauge per number or boolean field, named by
 *     the field (nested objects joined with '_': {"a":{"b":1}} is a_b),
 *     with labels topic (the key) and sensor (the key's last level);
 *   - a plain number or boolean (JSON, or text that is only a number) is
 *     one gauge named by the key's last level, with labels topic and
 *     sensor (the level before the last);
 *   - every sample also carries level1..levelN (the key's levels) and the
 *     entry's labels;
 *   - booleans are 1 and 0; strings, arrays and non-JSON values give none.
 * Names are made valid (a character outside [a-zA-Z0-9_:] becomes '_', a
 * leading digit gets a '_' before it; an empty one is "value"); an entry
 * label whose name starts with "__" (Prometheus's own) or clashes with a
 * label before it gets "label_" before it, and one that still clashes is
 * left out (a series with a label twice would fail the whole scrape).
 * Samples are sorted by name, so each family is together under one
 * "# TYPE name gauge", as the text format requires; the same series seen
 * twice (two patterns matching one key) is written once.
 */
#include "prom.h"
#include "envelope.h"
#include "ops.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PROM_DEPTH 8 /* levels of nested objects followed */

struct prom {
    char **lines; /* "name{labels} value" */
    size_t n, cap, max;
    size_t bytes; /* of the lines: at most PROM_BYTES_MAX */
    const char *prefix;
    const char *skip; /* names that start so are left out (NULL: none) */
    int64_t min_ts;
    bool oom, too_many;
};

struct prom *prom_new(const char *prefix, int64_t min_ts, size_t max)
{
    struct prom *p = calloc(1, sizeof *p);
    if (p != NULL) {
        p->prefix = prefix ? prefix : "";
        p->min_ts = min_ts;
        p->max = max;
    }
    return p;
}

void prom_skip(struct prom *p, const char *name_start)
{
    p->skip = name_start;
}

void prom_free(struct prom *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->lines[i]);
    free(p->lines);
    free(p);
}

bool prom_name_ok(const char *s)
{
    for (size_t i = 0; s[i]; i++)
        if (!(isalpha((unsigned char)s[i]) || s[i] == '_' || s[i] == ':' ||
              (i > 0 && isdigit((unsigned char)s[i]))))
            return false;
    return true;
}

/* Appends `s` (len bytes) as a valid name: [a-zA-Z_:][a-zA-Z0-9_:]*, or
 * [a-zA-Z_][a-zA-Z0-9_]* for a label (`label`). */
static void prom__name(struct buf *b, const char *s, size_t len, bool label, bool first)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (first && i == 0 && isdigit((unsigned char)c))
            buf_add(b, "_", 1);
        bool ok = isalnum((unsigned char)c) || c == '_' || (c == ':' && !label);
        buf_add(b, ok ? &c : "_", 1);
    }
}

static void prom__value(struct buf *b, const char *s, size_t len)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        const char *esc = s[i] == '\\'   ? "\\\\"
                          : s[i] == '"'  ? "\\\""
                          : s[i] == '\n' ? "\\n"
                                         : NULL;
        if (esc == NULL)
            continue;
        buf_add(b, s + run, i - run);
        buf_adds(b, esc);
        run = i + 1;
    }
    buf_add(b, s + run, len - run);
}

static void prom__label(struct buf *b, const char *name, const char *value, size_t vlen)
{
    buf_adds(b, b->p[b->len - 1] == '{' ? "" : ",");
    buf_adds(b, name);
    buf_adds(b, "=\"");
    prom__value(b, value, vlen);
    buf_adds(b, "\"");
}

/* Whether the labels in `b` (from "{" on) have one named `name`. */
static bool prom__has(const struct buf *b, const char *name, size_t len)
{
    for (size_t i = 0; i + len + 2 <= b->len; i++)
        if ((b->p[i] == '{' || b->p[i] == ',') && memcmp(b->p + i + 1, name, len) == 0 &&
            b->p[i + 1 + len] == '=')
            return true;
    return false;
}

/* The labels every sample of `key` carries, from "{" on, without the "}". */
static void prom__labels(struct buf *b, const char *key, size_t klen, const char *sensor,
                         size_t slen, const json_t *labels)
{
    char name[32];
    buf_adds(b, "{");
    prom__label(b, "topic", key, klen);
    if (sensor != NULL)
        prom__label(b, "sensor", sensor, slen);
    size_t start = 0;
    for (unsigned level = 1; start <= klen; level++) {
        const char *end = memchr(key + start, '/', klen - start);
        size_t len = end ? (size_t)(end - key) - start : klen - start;
        snprintf(name, sizeof name, "level%u", level);
        prom__label(b, name, key + start, len);
        start += len + 1;
    }
    const char *lname;
    json_t *v;
    json_object_foreach((json_t *)labels, lname, v)
    {
        size_t nlen = strlen(lname);
        struct buf n = {0};
        prom__name(&n, lname, nlen, true, true);
        /* "__" as made valid ("-_name__", "é" are "__name__", "__") */
        if (n.len == 0 || (n.len >= 2 && memcmp(n.p, "__", 2) == 0)) {
            buf_free(&n);
            buf_adds(&n, "label_");
            prom__name(&n, lname, nlen, true, false);
        }
        if (prom__has(b, n.p, n.len)) { /* ours, or one made the same by the rules */
            buf_free(&n);
            buf_adds(&n, "label_");
            prom__name(&n, lname, nlen, true, false);
        }
        buf_add(&n, "", 1);
        if (!n.oom && !prom__has(b, n.p, n.len - 1))
            prom__label(b, n.p, json_string_value(v), strlen(json_string_value(v)));
        b->oom |= n.oom;
        buf_free(&n);
    }
}

static void prom__sample(struct prom *p, const struct buf *name, const struct buf *labels,
                         const char *value)
{
    if (p->n == p->max) {
        p->too_many = true;
        return;
    }
    struct buf b = {0};
    buf_adds(&b, p->prefix);
    if (name->len > 0)
        buf_add(&b, name->p, name->len);
    else
        buf_adds(&b, "value"); /* a key or a field with an empty name */
    if (p->skip != NULL && !b.oom && b.len >= strlen(p->skip) &&
        memcmp(b.p, p->skip, strlen(p->skip)) == 0) {
        buf_free(&b);
        return;
    }
    buf_add(&b, labels->p, labels->len);
    buf_adds(&b, "} ");
    buf_adds(&b, value);
    buf_add(&b, "", 1);
    if (!b.oom && b.len > PROM_BYTES_MAX - p->bytes) { /* each sample repeats the labels */
        buf_free(&b);
        p->too_many = true;
        return;
    }
    if (b.oom || (p->n == p->cap && !(p->cap = p->cap ? 2 * p->cap : 256,
                                      p->lines = realloc(p->lines, p->cap * sizeof *p->lines)))) {
        buf_free(&b);
        p->oom = true;
        return;
    }
    p->lines[p->n++] = b.p;
    p->bytes += b.len;
}

/* A number or a boolean of `v` as a sample named `name`. */
static void prom__json(struct prom *p, struct buf *name, const struct buf *labels, const json_t *v,
                       int depth)
{
    if (json_is_boolean(v)) {
        prom__sample(p, name, labels, json_is_true(v) ? "1" : "0");
    } else if (json_is_number(v)) {
        char *text = envelope_dump_json(v);
        if (text == NULL)
            p->oom = true;
        else
            prom__sample(p, name, labels, text);
        free(text);
    } else if (json_is_object(v) && depth < PROM_DEPTH) {
        const char *field;
        json_t *x;
        size_t at = name->len;
        json_object_foreach((json_t *)v, field, x)
        {
            if (at > 0)
                buf_add(name, "_", 1);
            prom__name(name, field, strlen(field), false, at == 0);
            prom__json(p, name, labels, x, depth + 1);
            name->len = at;
        }
    }
}

static bool prom__visit(struct prom *p, const char *key, size_t klen, const struct store_entry *e)
{
    size_t vlen;
    const char *value = store_entry_value(e, &vlen), *type = store_entry_type(e);
    if (store_entry_ts(e) < p->min_ts || vlen > PROM_VALUE_MAX)
        return !p->oom && !p->too_many;
    json_t *v = NULL;
    if (store_type_is_json(type)) {
        v = json_loadb(value, vlen, JSON_DECODE_ANY, NULL);
        if (v == NULL) /* an integer beyond 64 bits */
            v = json_loadb(value, vlen, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
    } else if (strncasecmp(type, "text/", 5) == 0 && vlen > 0 && vlen < 64 &&
               memchr(value, '\0', vlen) == NULL) {
        char text[64], *end;
        memcpy(text, value, vlen);
        text[vlen] = '\0';
        double d = strtod(text, &end);
        while (isspace((unsigned char)*end))
            end++;
        if (end != text && *end == '\0')
            v = json_real(d); /* NaN and infinities: jansson refuses them */
    }
    if (v == NULL || !(json_is_object(v) || json_is_number(v) || json_is_boolean(v))) {
        json_decref(v);
        return !p->oom && !p->too_many;
    }
    const char *labels_text = store_entry_labels(e);
    json_t *labels = labels_text ? json_loads(labels_text, 0, NULL) : NULL;
    /* the last level, and the one before it */
    const char *last = key + klen, *before = NULL;
    while (last > key && last[-1] != '/')
        last--;
    if (last > key) {
        before = last - 1;
        while (before > key && before[-1] != '/')
            before--;
    }
    struct buf name = {0}, lb = {0};
    if (json_is_object(v)) {
        prom__labels(&lb, key, klen, last, (size_t)(key + klen - last), labels);
        prom__json(p, &name, &lb, v, 0);
    } else {
        prom__labels(&lb, key, klen, before, before ? (size_t)(last - 1 - before) : 0, labels);
        prom__name(&name, last, (size_t)(key + klen - last), false, true);
        prom__json(p, &name, &lb, v, 0);
    }
    p->oom |= name.oom || lb.oom;
    buf_free(&name);
    buf_free(&lb);
    json_decref(labels);
    json_decref(v);
    return !p->oom && !p->too_many;
}

/* The walk of prom_collect: where a page ended, for the next. */
struct prom__walk {
    struct prom *p;
    struct buf last;
};

static bool prom__walk_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct prom__walk *w = arg;
    w->last.len = 0;
    buf_add(&w->last, key, klen);
    w->p->oom |= w->last.oom;
    return prom__visit(w->p, key, klen, e);
}

int prom_collect(struct prom *p, struct ops *o, const struct caller *c, const char *pat,
                 size_t plen, char *why, size_t why_len)
{
    struct prom__walk w = {.p = p};
    bool more = true;
    int err = STORE_OK;
    /* pages of 1,000: the tree's read lock is let go between them */
    while (more && err == STORE_OK && !p->oom && !p->too_many)
        err = ops_pget(o, c, pat, plen, w.last.len ? w.last.p : NULL, w.last.len, NULL, 1000,
                       prom__walk_visit, &w, &more, why, why_len);
    buf_free(&w.last);
    return err;
}

static int prom__cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int prom_write(struct prom *p, struct buf *b)
{
    if (p->oom)
        return STORE_EINTERNAL;
    if (p->too_many)
        return STORE_ETOOLARGE;
    if (p->n > 1) /* lines is NULL when there are none */
        qsort(p->lines, p->n, sizeof *p->lines, prom__cmp);
    size_t family = 0; /* the length of the last name written */
    for (size_t i = 0; i < p->n; i++) {
        const char *line = p->lines[i];
        /* one series once: the same line twice (two patterns matching one
         * key), or two fields made the same name ({"a_b":1,"a":{"b":2}},
         * "a-b" and "a.b"), whose second value would be a duplicate sample
         * (the first in sort order is kept) */
        size_t series = (size_t)(strrchr(line, ' ') - line);
        if (i > 0 && strncmp(line, p->lines[i - 1], series + 1) == 0)
            continue;
        size_t nlen = strcspn(line, "{");
        if (i == 0 || nlen != family || strncmp(line, p->lines[i - 1], nlen) != 0) {
            buf_adds(b, "# TYPE ");
            buf_add(b, line, nlen);
            buf_adds(b, " gauge\n");
            family = nlen;
        }
        buf_adds(b, line);
        buf_add(b, "\n", 1);
    }
    return b->oom ? STORE_EINTERNAL : STORE_OK;
}
