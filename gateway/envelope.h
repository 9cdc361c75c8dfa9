/*
 * envelope.h — entries as the JSON text of API.md, and entries from the JSON clients send
 * (envelope.c).
 */
#ifndef ALMANAC_ENVELOPE_H
#define ALMANAC_ENVELOPE_H

#include "buf.h"
#include "store.h"

#include <jansson.h>

/* Appends the envelope of API.md for `key` and `e`. A JSON value is copied
 * as stored (minified), so its numbers keep every digit. */
void envelope_add(struct buf *b, const char *key, size_t klen, const struct store_entry *e);
/* The same with the content type named `type_field`: session messages have
 * a "type" of their own, so there it is "content_type", as in `set`. */
void envelope_add_as(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                     const char *type_field);
/* The fields of that envelope and its closing brace, for a message that
 * opens with fields of its own ({"type":"event","sub":1, ...). */
void envelope_add_fields(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                         const char *type_field);
/* The same in three parts, for a streamed answer that writes a large value
 * a piece at a time from where it lies (a blob's mapped pages) instead of
 * copying it whole into the buffer: the fields up to the value
 * (envelope_add_head, which sets up `v`), the value (envelope_value_more,
 * at most `max` of its bytes a call, true while more remain; the entry must
 * stay alive until the last), then the rest (envelope_add_tail). */
struct envelope_value {
    const char *p;
    size_t len, off;
    char how;                /* 'j' JSON (minified), 't' text, 'b' base64 */
    bool in_string, escaped; /* where the JSON's last piece ended */
};
void envelope_add_head(struct buf *b, const char *key, size_t klen, const struct store_entry *e,
                       const char *type_field, struct envelope_value *v);
bool envelope_value_more(struct buf *b, struct envelope_value *v, size_t max);
void envelope_add_tail(struct buf *b, const struct store_entry *e);
/* Appends the deletion form. */
void envelope_add_deleted(struct buf *b, const char *key, size_t klen, int64_t rev, int64_t ts);
/* An entry from a JSON object carrying exactly one of `value`, `text`,
 * `base64`, and optionally `content_type` and `labels`; with `type_alias`
 * (envelopes, batch ops) `type` names the content type too. Returns
 * STORE_OK with a new entry in `*out`, or STORE_EBODY or STORE_ETOOLARGE
 * with a sentence in `why`. */
int envelope_entry(const json_t *obj, size_t max_value, bool type_alias, enum store_origin origin,
                   struct store_entry **out, char *why, size_t why_len);
/* Checks a labels object (string values, names 1..255 bytes) and writes it
 * as compact JSON with sorted names into `*out` (malloc'd; NULL when empty).
 * STORE_OK or STORE_EBODY with a sentence in `why`. */
int envelope_labels(const json_t *labels, char **out, char *why, size_t why_len);
/* Makes the new entry `*e` expire `ttl` from now: a duration ("30s", "5m",
 * "1h"; `ttl_text`) or, from JSON, that or a number of seconds (`ttl`),
 * more than 0 and at most ten years. STORE_OK, or STORE_EBADREQ with a
 * sentence naming `what` (the field or header). */
int envelope_ttl(struct store_entry **e, const json_t *ttl, const char *ttl_text, const char *what,
                 char *why, size_t why_len);
/* Checks a content type: 1..255 bytes of visible ASCII and spaces. */
bool envelope_type_ok(const char *type);
/* Appends the end of an error object: "error":"<code>","message":"..."}.
 * The caller has written the opening brace and any fields of its own. */
void envelope_add_error(struct buf *b, int err, const char *message);
/* Why the transaction `t` failed, in a sentence naming the key, for HTTP and
 * sessions alike; with `index`, prefixed with the op's place (ops[2]: ). */
void envelope_failure(char *out, size_t len, const struct store_txn *t, bool index);
/* Compact JSON text for `v` with the fewest digits that give its reals back
 * exactly (jansson alone writes 0.1 as 0.10000000000000001). malloc'd. */
char *envelope_dump_json(const json_t *v);

/* The pieces of list answers, shared by HTTP and sessions. `envelope_list`
 * is the store_pget visitor writing envelopes (with `type_field`) and
 * keeping the last key as the next cursor; `envelope_child` the
 * store_ls visitor writing {"name","value","children"} objects, with
 * "keys" (how many are below) on a folder whose keys the caller may all
 * read. */
struct envelope_list {
    struct buf *b;
    const char *type_field;
    size_t n;
    struct buf last;
};
/* A page ends once it holds ENVELOPE_LIST_BYTES (large values: a page of
 * 1000 would not fit in memory), with a cursor to the next. */
#define ENVELOPE_LIST_BYTES (16u << 20)
bool envelope_list_visit(void *arg, const char *key, size_t klen, const struct store_entry *e);
/* Appends `],"next":<cursor or null>` after the entries and frees `last`. */
void envelope_list_end(struct envelope_list *l, bool more);
struct envelope_children {
    struct buf *b;
    size_t n;
};
void envelope_child(void *arg, const char *name, size_t nlen, bool value, bool children,
                    uint64_t below);

/* History: a query from a transport's arguments (HTTP's query string,
 * a session message's fields): start, stop, limit (at most `max_limit`),
 * order, after, every; the caller adds the label filters. 0, or -1 with a
 * sentence in `why`. */
typedef const char *(*envelope_arg_fn)(void *arg, const char *name);
int envelope_history_query(struct store_history_query *q, envelope_arg_fn get, void *arg,
                           size_t max_limit, char *why, size_t why_len);
/* The time `text` (µs since the epoch, or RFC 3339) of the field or
 * parameter `name` (start, stop) into `*us`. 0, or -1 with a sentence
 * naming `name` in `why`. */
int envelope_time(const char *name, const char *text, int64_t *us, char *why, size_t why_len);
/* The label filters of a session message (history, subscribe): `labels`
 * (must match) and `exclude_labels` (must not), each an object of at most
 * STORE_LABELS_FILTERS_MAX names with string values, into `f` (the
 * strings borrowed from `msg`). 0, or -1 with a sentence naming the field. */
int envelope_label_filters(json_t *msg, struct store_labels *f, char *why, size_t why_len);
/* One line of an import: an envelope as export writes it, as a change made
 * through `origin` (the line's own "origin" is not trusted). Returns
 * STORE_OK with `op` filled: its key points into `*owner` (a new reference,
 * NULL for a blank line, whose op->key is NULL), its entry a new reference;
 * or an error with a sentence in `why`. */
int envelope_import_line(const char *text, size_t len, const struct store_limits *lim,
                         enum store_origin origin, struct store_op *op, json_t **owner, char *why,
                         size_t why_len);
/* Appends a history record: its envelope, or the deletion form. */
void envelope_add_record(struct buf *b, const struct store_record *rec, const char *type_field);

#endif
