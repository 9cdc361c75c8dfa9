/*
 * envelope.c — entries as the JSON envelope of API.md, and entries from the
 * JSON that clients send (batch ops, and later session `set` and import).
 *
 * Envelopes are written as text, not built as jansson trees: a stored JSON
 * value is copied as it is (minus insignificant white space), so 0.1 stays
 * 0.1 and a 30-digit integer keeps every digit. That relies on the store's
 * rule that an entry of a JSON type holds valid JSON (store_entry_new).
 */
#include "envelope.h"
#include "clock.h"
#include "gateway.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Appends a piece of valid JSON without the white space outside its
 * strings; `v` carries where the last piece ended (in a string, after a
 * backslash). */
static void envelope__minify(struct buf *b, struct envelope_value *v, const char *s, size_t len)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (v->escaped)
            v->escaped = false;
        else if (v->in_string) {
            if (c == '\\')
                v->escaped = true;
            else if (c == '"')
                v->in_string = false;
        } else if (c == '"')
            v->in_string = true;
        else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            buf_add(b, s + run, i - run);
            run = i + 1;
        }
    }
    buf_add(b, s + run, len - run);
}

static bool envelope__is_text(const char *type)
{
    return strncasecmp(type, "text/", 5) == 0 || strcasestr(type, "charset=utf-8") != NULL;
}

static void envelope__add_base64(struct buf *b, const void *data, size_t len)
{
    size_t out = 4 * ((len + 2) / 3);
    if (buf_reserve(b, out)) {
        EVP_EncodeBlock((unsigned char *)b->p + b->len, data, (int)len);
        b->len += out;
    }
}

void envelope_add(struct buf *b, const char *key, size_t klen, const struct store_entry *e)
{
    envelope_add_as(b, key, klen, e, "type");
}

void envelope_add_as(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                     const char *type_field)
{
    buf_add(b, "{", 1);
    envelope_add_fields(b, key, klen, e, type_field);
}

void envelope_add_fields(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                         const char *type_field)
{
    struct envelope_value v;
    envelope_add_head(b, key, klen, e, type_field, &v);
    while (envelope_value_more(b, &v, SIZE_MAX))
        ;
    envelope_add_tail(b, e);
}

void envelope_add_head(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                       const char *type_field, struct envelope_value *v)
{
    const char *type = store_entry_type(e);
    size_t len;
    const char *value = store_entry_value(e, &len);
    *v = (struct envelope_value){.p = value, .len = len};
    buf_adds(b, "\"key\":");
    buf_add_jstr(b, key, klen);
    buf_adds(b, ",\"rev\":");
    buf_add_i64(b, store_entry_rev(e));
    buf_adds(b, ",\"ts\":");
    buf_add_i64(b, store_entry_ts(e));
    buf_adds(b, ",\"");
    buf_adds(b, type_field);
    buf_adds(b, "\":");
    buf_add_jstr(b, type, strlen(type));
    if (store_type_is_json(type)) {
        v->how = 'j';
        buf_adds(b, ",\"value\":");
    } else if (envelope__is_text(type) && store_utf8_valid(v->p, v->len)) {
        v->how = 't';
        buf_adds(b, ",\"text\":\"");
    } else {
        v->how = 'b';
        buf_adds(b, ",\"base64\":\"");
    }
}

bool envelope_value_more(struct buf *b, struct envelope_value *v, size_t max)
{
    size_t n = v->len - v->off;
    /* base64: whole groups of 3 until the last (so at least 3 a piece) */
    size_t piece = v->how != 'b' ? max : max < 3 ? 3 : max / 3 * 3;
    if (n > piece)
        n = piece;
    const char *p = v->p + v->off;
    if (v->how == 'j')
        envelope__minify(b, v, p, n);
    else if (v->how == 't')
        buf_add_jstr_inner(b, p, n);
    else
        envelope__add_base64(b, p, n);
    v->off += n;
    if (v->off < v->len)
        return true;
    if (v->how != 'j')
        buf_add(b, "\"", 1);
    return false;
}

void envelope_add_tail(struct buf *b, const struct store_entry *e)
{
    const char *labels = store_entry_labels(e);
    buf_adds(b, ",\"labels\":");
    buf_adds(b, labels ? labels : "{}");
    buf_adds(b, ",\"origin\":\"");
    buf_adds(b, store_origin_name(store_entry_origin(e)));
    buf_adds(b, "\"");
    if (store_entry_expires(e) > 0) {
        buf_adds(b, ",\"expires\":");
        buf_add_i64(b, store_entry_expires(e));
    }
    buf_adds(b, "}");
}

void envelope_add_deleted(struct buf *b, const char *key, size_t klen, int64_t rev, int64_t ts)
{
    buf_adds(b, "{\"key\":");
    buf_add_jstr(b, key, klen);
    buf_addf(b, ",\"rev\":%lld,\"ts\":%lld,\"deleted\":true}", (long long)rev, (long long)ts);
}

bool envelope_type_ok(const char *type)
{
    size_t len = strlen(type);
    if (len == 0 || len > 255)
        return false;
    for (size_t i = 0; i < len; i++)
        if (type[i] < 0x20 || type[i] > 0x7e)
            return false;
    return true;
}

int envelope_labels(const json_t *labels, char **out, char *why, size_t why_len)
{
    const char *name;
    size_t nlen;
    json_t *value;

    *out = NULL;
    if (!json_is_object(labels)) {
        snprintf(why, why_len, "labels must be an object of strings");
        return STORE_EBODY;
    }
    if (json_object_size(labels) == 0)
        return STORE_OK;
    if (json_object_size(labels) > 64) {
        snprintf(why, why_len, "at most 64 labels are allowed");
        return STORE_EBODY;
    }
    json_object_keylen_foreach((json_t *)labels, name, nlen, value)
    {
        if (nlen == 0 || nlen > 255 || strlen(name) != nlen) {
            snprintf(why, why_len, "a label name must be 1 to 255 bytes, without NUL");
            return STORE_EBODY;
        }
        if (!json_is_string(value) || json_string_length(value) > 4096 ||
            strlen(json_string_value(value)) != json_string_length(value)) {
            snprintf(why, why_len, "label '%s' must be a string of at most 4096 bytes, without NUL",
                     name);
            return STORE_EBODY;
        }
    }
    *out = json_dumps(labels, JSON_COMPACT | JSON_SORT_KEYS);
    if (*out == NULL) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    if (strlen(*out) > STORE_LABELS_MAX) {
        free(*out);
        *out = NULL;
        snprintf(why, why_len, "the labels take more than %d bytes as JSON", STORE_LABELS_MAX);
        return STORE_EBODY;
    }
    return STORE_OK;
}

/* JSON text for `v`, with the fewest digits that give its reals back
 * exactly (jansson alone writes 0.1 as 0.10000000000000001). */
char *envelope_dump_json(const json_t *v)
{
    for (unsigned precision = 15; precision <= 17; precision++) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(precision));
        if (s == NULL || precision == 17)
            return s;
        json_t *back = json_loads(s, JSON_DECODE_ANY, NULL);
        bool same = back != NULL && json_equal(back, (json_t *)v);
        json_decref(back);
        if (same)
            return s;
        free(s);
    }
    return NULL;
}

/* Decodes standard base64 (padding optional) into a new buffer. */
static int envelope__unbase64(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    size_t padded = (len + 3) / 4 * 4;
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        bool pad = c == '=' && i >= len - 2 && (i == len - 1 || in[len - 1] == '=');
        if (!(c >= 'A' && c <= 'Z') && !(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') &&
            c != '+' && c != '/' && !pad)
            return -1;
    }
    char *copy = malloc(padded + 1);
    *out = malloc(padded / 4 * 3 + 1);
    if (copy == NULL || *out == NULL) {
        free(copy);
        free(*out);
        return -1;
    }
    memcpy(copy, in, len);
    memset(copy + len, '=', padded - len);
    int n = EVP_DecodeBlock(*out, (const unsigned char *)copy, (int)padded);
    size_t pad = 0;
    while (pad < 2 && padded > pad && copy[padded - 1 - pad] == '=')
        pad++;
    free(copy);
    if (n < 0) {
        free(*out);
        return -1;
    }
    *out_len = (size_t)n - pad;
    return 0;
}

/* The entry of an envelope; `raw`, when not NULL, is the text of its
 * "value" as written, kept instead of jansson's reading of it. */
static int envelope__entry(const json_t *obj, const char *raw, size_t raw_len, size_t max_value,
                           bool type_alias, enum store_origin origin, struct store_entry **out,
                           char *why, size_t why_len)
{
    json_t *value = json_object_get(obj, "value"), *text = json_object_get(obj, "text"),
           *b64 = json_object_get(obj, "base64"), *jtype = json_object_get(obj, "content_type");
    char *bytes = NULL, *labels = NULL;
    unsigned char *decoded = NULL;
    const char *data, *type = NULL;
    size_t len = 0;
    int err = STORE_EBODY;

    *out = NULL;
    if ((value != NULL) + (text != NULL) + (b64 != NULL) != 1) {
        snprintf(why, why_len, "give exactly one of value, text or base64");
        return STORE_EBODY;
    }
    if (jtype == NULL && type_alias)
        jtype = json_object_get(obj, "type");
    if (jtype != NULL) {
        if (!json_is_string(jtype) || !envelope_type_ok(json_string_value(jtype)) ||
            strlen(json_string_value(jtype)) != json_string_length(jtype)) {
            snprintf(why, why_len, "content_type must be 1 to 255 printable ASCII characters");
            return STORE_EBODY;
        }
        type = json_string_value(jtype);
    }
    if (value != NULL && raw != NULL) {
        struct buf b = {0};
        envelope__minify(&b, &(struct envelope_value){0}, raw, raw_len);
        buf_add(&b, "", 1);
        if (b.oom) {
            buf_free(&b);
            snprintf(why, why_len, "out of memory");
            return STORE_EINTERNAL;
        }
        data = bytes = b.p;
        len = b.len - 1;
        if (type == NULL)
            type = "application/json";
    } else if (value != NULL) {
        if ((bytes = envelope_dump_json(value)) == NULL) {
            snprintf(why, why_len, "out of memory");
            return STORE_EINTERNAL;
        }
        data = bytes;
        len = strlen(bytes);
        if (type == NULL)
            type = "application/json";
    } else if (text != NULL) {
        if (!json_is_string(text)) {
            snprintf(why, why_len, "text must be a string");
            return STORE_EBODY;
        }
        data = json_string_value(text);
        len = json_string_length(text);
        if (type == NULL)
            type = "text/plain; charset=utf-8";
    } else {
        if (!json_is_string(b64) ||
            envelope__unbase64(json_string_value(b64), json_string_length(b64), &decoded, &len) !=
                0) {
            snprintf(why, why_len, "base64 must be a string of standard base64");
            return STORE_EBODY;
        }
        data = (const char *)decoded;
    }
    if (len > max_value) {
        snprintf(why, why_len, "the value is %zu bytes, more than max_value_bytes (%zu)", len,
                 max_value);
        err = STORE_ETOOLARGE;
        goto out;
    }
    json_t *jlabels = json_object_get(obj, "labels");
    if (jlabels != NULL && (err = envelope_labels(jlabels, &labels, why, why_len)) != STORE_OK)
        goto out;
    err = store_entry_new(data, len, type, labels, origin, out);
    if (err == STORE_EBODY)
        snprintf(why, why_len, "the value is not valid JSON, as its type %s requires", type);
    else if (err != STORE_OK)
        snprintf(why, why_len, "out of memory");
out:
    free(bytes);
    free(decoded);
    free(labels);
    return err;
}

int envelope_ttl(struct store_entry **e, const json_t *ttl, const char *ttl_text, const char *what,
                 char *why, size_t why_len)
{
    const int64_t most = 10 * 366 * 86400 * 1000000ll;
    int64_t us = -1;
    if (ttl_text == NULL && json_is_string(ttl))
        ttl_text = json_string_value(ttl);
    if (ttl_text != NULL) {
        if (config_parse_duration(ttl_text, &us) != 0)
            us = -1;
    } else if (json_is_number(ttl) && json_number_value(ttl) > 0 &&
               json_number_value(ttl) <= 10 * 366 * 86400.0)
        us = (int64_t)(json_number_value(ttl) * 1e6);
    if (us <= 0 || us > most) {
        snprintf(why, why_len,
                 "%s is a duration (\"30s\", \"5m\", \"1h\") or seconds, above 0 and at most "
                 "ten years",
                 what);
        return STORE_EBADREQ;
    }
    if (store_entry_expire_at(e, now_us() + us) != STORE_OK) {
        snprintf(why, why_len, "out of memory");
        return STORE_EINTERNAL;
    }
    return STORE_OK;
}

int envelope_entry(const json_t *obj, size_t max_value, bool type_alias, enum store_origin origin,
                   struct store_entry **out, char *why, size_t why_len)
{
    return envelope__entry(obj, NULL, 0, max_value, type_alias, origin, out, why, why_len);
}

bool envelope_list_visit(void *arg, const char *key, size_t klen, const struct store_entry *e)
{
    struct envelope_list *l = arg;
    if (l->n++)
        buf_add(l->b, ",", 1);
    envelope_add_as(l->b, key, klen, e, l->type_field);
    l->last.len = 0;
    buf_add(&l->last, key, klen);
    return l->b->len < ENVELOPE_LIST_BYTES;
}

void envelope_list_end(struct envelope_list *l, bool more)
{
    buf_adds(l->b, "],\"next\":");
    if (more && l->n > 0)
        buf_add_jstr(l->b, l->last.p, l->last.len);
    else
        buf_adds(l->b, "null");
    l->b->oom |= l->last.oom;
    buf_free(&l->last);
}

void envelope_child(void *arg, const char *name, size_t nlen, bool value, bool children,
                    uint64_t below)
{
    struct envelope_children *l = arg;
    buf_adds(l->b, l->n++ ? ",{\"name\":" : "{\"name\":");
    buf_add_jstr(l->b, name, nlen);
    buf_adds(l->b, value ? ",\"value\":true" : ",\"value\":false");
    buf_adds(l->b, children ? ",\"children\":true" : ",\"children\":false");
    if (children && below != STORE_BELOW_UNKNOWN)
        buf_addf(l->b, ",\"keys\":%llu", (unsigned long long)below);
    buf_adds(l->b, "}");
}

void envelope_add_error(struct buf *b, int err, const char *message)
{
    buf_adds(b, "\"error\":\"");
    buf_adds(b, store_err_name(err));
    buf_adds(b, "\",\"message\":");
    buf_add_jstr(b, message, strlen(message));
    buf_adds(b, "}");
}

void envelope_failure(char *out, size_t len, const struct store_txn *t, bool index)
{
    const struct store_op *op = &t->ops[t->fail];
    char where[32] = "";
    int k = (int)op->klen;

    if (index)
        snprintf(where, sizeof where, "ops[%zu]: ", t->fail);
    if (t->err == STORE_EREV && op->if_rev == 0)
        snprintf(out, len, "%skey %.*s exists already", where, k, op->key);
    else if (t->err == STORE_EREV && op->if_rev == STORE_EXISTS_REV)
        snprintf(out, len, "%skey %.*s does not exist", where, k, op->key);
    else if (t->err == STORE_EREV)
        snprintf(out, len, "%skey %.*s is no longer at rev %lld", where, k, op->key,
                 (long long)op->if_rev);
    else if (t->err == STORE_ENOTFOUND)
        snprintf(out, len, "%skey %.*s does not exist", where, k, op->key);
    else if (t->err == STORE_EREADONLY)
        snprintf(out, len, "%s%s", where, store_err_text(t->err));
    else
        snprintf(out, len, "%s", store_err_text(t->err)); /* the whole transaction */
}

/* ---- history ---- */

void envelope_add_record(struct buf *b, const struct store_record *rec, const char *type_field)
{
    if (rec->entry == NULL)
        envelope_add_deleted(b, rec->key, rec->klen, rec->rev, rec->ts);
    else
        envelope_add_as(b, rec->key, rec->klen, rec->entry, type_field);
}

int envelope_history_query(struct store_history_query *q, envelope_arg_fn get, void *arg,
                           size_t max_limit, char *why, size_t why_len)
{
    const char *v;
    char *end;
    q->start = INT64_MIN;
    q->stop = INT64_MAX;
    q->limit = 1000;
    if ((v = get(arg, "start")) != NULL && envelope_time("start", v, &q->start, why, why_len) != 0)
        return -1;
    if ((v = get(arg, "stop")) != NULL && envelope_time("stop", v, &q->stop, why, why_len) != 0)
        return -1;
    if ((v = get(arg, "limit")) != NULL) {
        unsigned long long n = strtoull(v, &end, 10);
        if (!isdigit((unsigned char)v[0]) || *end != '\0' || n < 1 || n > max_limit) {
            snprintf(why, why_len, "limit must be a number from 1 to %zu", max_limit);
            return -1;
        }
        q->limit = (size_t)n;
    }
    if ((v = get(arg, "order")) != NULL) {
        if (strcmp(v, "asc") != 0 && strcmp(v, "desc") != 0) {
            snprintf(why, why_len, "order is asc or desc");
            return -1;
        }
        q->desc = strcmp(v, "desc") == 0;
    }
    if ((v = get(arg, "after")) != NULL) {
        long long n = strtoll(v, &end, 10);
        if (!isdigit((unsigned char)v[0]) || *end != '\0' || n < 1) {
            snprintf(why, why_len, "after is the \"next\" of the page before");
            return -1;
        }
        q->after = n;
    }
    if ((v = get(arg, "every")) != NULL &&
        (config_parse_duration(v, &q->every) != 0 || q->every <= 0)) {
        snprintf(why, why_len, "every is a duration: a number with ms, s, m, h, d or w (10s, 5m)");
        return -1;
    }
    return 0;
}

int envelope_time(const char *name, const char *text, int64_t *us, char *why, size_t why_len)
{
    if (config_parse_time(text, us) == 0)
        return 0;
    snprintf(why, why_len,
             "%s is a time: µs since the epoch, or RFC 3339 (2026-11-23T10:00:00Z); not '%.64s'",
             name, text);
    return -1;
}

/* The filters of the member `field` of `msg` into names[] and values[]. */
static int envelope__label_filter(json_t *msg, const char *field, const char **names,
                                  const char **values, size_t *n, char *why, size_t why_len)
{
    json_t *obj = json_object_get(msg, field), *v;
    const char *name;
    if (obj == NULL || json_is_null(obj))
        return 0;
    if (!json_is_object(obj) || json_object_size(obj) > STORE_LABELS_FILTERS_MAX) {
        snprintf(why, why_len, "%s is an object of at most %d label names, each with a string",
                 field, STORE_LABELS_FILTERS_MAX);
        return -1;
    }
    json_object_foreach(obj, name, v)
    {
        if (!json_is_string(v)) {
            snprintf(why, why_len, "%s: the value of label %.64s is not a string", field, name);
            return -1;
        }
        names[*n] = name;
        values[(*n)++] = json_string_value(v);
    }
    return 0;
}

int envelope_label_filters(json_t *msg, struct store_labels *f, char *why, size_t why_len)
{
    f->nmatch = f->nexclude = 0;
    if (envelope__label_filter(msg, "labels", f->match_names, f->match_values, &f->nmatch, why,
                               why_len) != 0)
        return -1;
    return envelope__label_filter(msg, "exclude_labels", f->exclude_names, f->exclude_values,
                                  &f->nexclude, why, why_len);
}

/* The end of the JSON value at `p` (well-formed: jansson read it). */
static const char *envelope__skip(const char *p, const char *end)
{
    if (*p == '"' || *p == '{' || *p == '[') {
        int depth = 0;
        bool in_string = false;
        for (; p < end; p++) {
            if (in_string) {
                if (*p == '\\')
                    p++;
                else if (*p == '"') {
                    in_string = false;
                    if (depth == 0)
                        return p + 1;
                }
            } else if (*p == '"')
                in_string = true;
            else if (*p == '{' || *p == '[')
                depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0)
                return p + 1;
        }
        return end;
    }
    while (p < end && strchr(",}] \t\r\n", *p) == NULL)
        p++;
    return p;
}

static const char *envelope__ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* The text of the member "value" of the JSON object `text` (well-formed;
 * the last one, as jansson keeps the last of duplicate names), or NULL when
 * it has none written plainly. */
static const char *envelope__raw_value(const char *text, size_t len, size_t *raw_len)
{
    const char *p = envelope__ws(text, text + len), *end = text + len;
    if (p == end || *p != '{')
        return NULL;
    const char *found = NULL;
    p = envelope__ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *name = p, *name_end = envelope__skip(p, end);
        p = envelope__ws(name_end, end);
        if (p == end || *p != ':')
            return NULL;
        const char *v = envelope__ws(p + 1, end), *v_end = envelope__skip(v, end);
        if (name_end - name == 7 && memcmp(name, "\"value\"", 7) == 0) {
            *raw_len = (size_t)(v_end - v);
            found = v;
        }
        p = envelope__ws(v_end, end);
        if (p < end && *p == ',')
            p = envelope__ws(p + 1, end);
    }
    return found;
}

int envelope_import_line(const char *text, size_t len, const struct store_limits *lim,
                         enum store_origin origin, struct store_op *op, json_t **owner, char *why,
                         size_t why_len)
{
    json_error_t jerr;
    *op = (struct store_op){.if_rev = STORE_ANY_REV};
    *owner = NULL;
    while (len > 0 && isspace((unsigned char)*text)) {
        text++;
        len--;
    }
    if (len == 0)
        return STORE_OK;
    /* Integers beyond 64 bits are read as reals here, and the value's own
     * text is kept (export writes stored JSON as it is: 2.50 stays 2.50). */
    json_t *obj = json_loadb(text, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
    json_t *jkey = json_object_get(obj, "key");
    if (!json_is_object(obj) || !json_is_string(jkey)) {
        snprintf(why, why_len, "%s", obj ? "an envelope is an object with a \"key\"" : jerr.text);
        json_decref(obj);
        return STORE_EBODY;
    }
    const char *key = json_string_value(jkey);
    size_t klen = json_string_length(jkey);
    int err = STORE_OK;
    if (strlen(key) != klen) {
        snprintf(why, why_len, "the key holds a NUL byte");
        err = STORE_EKEY;
    } else if ((err = store_key_check(key, klen, lim->max_key_bytes, why, why_len)) != STORE_OK)
        ;
    else if (store_key_reserved(key, klen)) {
        snprintf(why, why_len, "%s is the server's own", key);
        err = STORE_EREADONLY;
    } else if (json_is_true(json_object_get(obj, "deleted")))
        op->kind = STORE_OP_DELETE;
    else {
        size_t raw_len = 0;
        const char *raw = envelope__raw_value(text, len, &raw_len);
        op->kind = STORE_OP_SET;
        err = envelope__entry(obj, raw, raw_len, lim->max_value_bytes, true, origin, &op->entry,
                              why, why_len);
        json_t *expires = json_object_get(obj, "expires");
        /* As export writes it: µs (read as a real here, as every number). */
        double x = json_number_value(expires);
        if (err == STORE_OK && expires != NULL) {
            if (!json_is_number(expires) || !(x >= 1 && x < 9.0e18) || x != (double)(int64_t)x) {
                snprintf(why, why_len, "expires is a time in µs since the epoch");
                err = STORE_EBODY;
            } else if (store_entry_expire_at(&op->entry, (int64_t)x) != STORE_OK) {
                snprintf(why, why_len, "out of memory");
                err = STORE_EINTERNAL;
            }
            if (err != STORE_OK) {
                store_entry_unref(op->entry);
                op->entry = NULL;
            }
        }
    }
    if (err != STORE_OK) {
        json_decref(obj);
        return err;
    }
    op->key = key;
    op->klen = klen;
    *owner = obj;
    return STORE_OK;
}
