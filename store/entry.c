/*
 * entry.c — values with their type, labels, rev, ts, origin and expiry;
 * and the label filters of history queries and feeds (store_labels).
 *
 * An entry is one allocation: a fixed header, then the value bytes (or,
 * for a value kept in a blob file, the reference `struct entry_blob`),
 * then a custom content type and the labels JSON (each NUL-terminated, each
 * only when present), then the expiry time (8 bytes, only when `expiring`,
 * so an entry that never expires pays nothing for it). The three common
 * types are a two-bit id instead. The header is 25 bytes, so a reading of up
 * to 15 bytes ({"v":21.5}) fits malloc's 48-byte chunk; the lengths of the
 * type and the labels are not kept (strlen finds them, off the hot paths).
 * Entries of up to ENTRY_SLAB_MAX bytes come from pages carved in multiples
 * of 8 bytes, each size with its free list (as tree.c's nodes, but under a
 * mutex: any thread may drop the last reference), so a reading costs 40
 * bytes, not malloc's 48 or 64; an entry's size, found from its fields,
 * tells where it came from. The pages live as long as the process, as
 * malloc's arena does; the free lists are reused by entries of their size.
 * Up to 96 bytes: an open session's $SYS key (about 71) too.
 * Invariants:
 *   1. after entry__stamp and before it is shared, an entry never changes;
 *   2. `refs` counts every holder (tree, change records, readers), and the
 *      last unref frees it;
 *   3. an entry's allocation is entry__mem_size(its fields): what
 *      entry__mem_alloc was given for it.
 */
#include "store_int.h"

#include <assert.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { TYPE_CUSTOM = 0, TYPE_JSON, TYPE_TEXT, TYPE_BYTES, TYPE_COUNT };

static const char *const entry__types[TYPE_COUNT] = {
    [TYPE_CUSTOM] = NULL,
    [TYPE_JSON] = "application/json",
    [TYPE_TEXT] = "text/plain; charset=utf-8",
    [TYPE_BYTES] = "application/octet-stream",
};

static const char *const entry__origins[STORE_ORIGIN_COUNT] = {
    "http", "ws", "tcp", "unix", "mqtt", "sys",
};

struct store_entry {
    int64_t rev;
    int64_t ts;
    _Atomic uint32_t refs;
    uint32_t vlen;
    unsigned type_id : 2;  /* TYPE_CUSTOM: the type follows the value */
    unsigned origin : 3;   /* enum store_origin */
    unsigned expiring : 1; /* the data ends with the expiry time (µs) */
    unsigned blob : 1;     /* the value is in a blob file: data starts with entry_blob */
    unsigned labels : 1;   /* labels JSON follows the value (and type) */
    char data[];           /* value, [type NUL], [labels NUL], [expires];
                              allocated from offsetof */
};

_Static_assert(TYPE_COUNT <= 4 && STORE_ORIGIN_COUNT <= 8, "type_id and origin fit their bits");
_Static_assert(offsetof(struct store_entry, data) == 25, "a 25-byte header");

/* Where a blob entry's value is (blob.c): the file holds a reference. */
struct entry_blob {
    struct blob_file *file;
    uint64_t off;
    uint32_t crc;
};

#define ENTRY_SLAB_MAX  96
#define ENTRY_SLAB_PAGE (64 * 1024)

/* The sanitizer build sees a freed or never-given slab entry as freed. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ENTRY_POISON(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define ENTRY_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define ENTRY_POISON(p, n)   ((void)(p), (void)(n))
#define ENTRY_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct entry_free {
    struct entry_free *next;
};

struct entry_page {
    struct entry_page *next; /* so every page stays reachable (LeakSanitizer) */
    char mem[];
};

/* The one allocator of small entries, shared by every store in the process
 * (entries outlive the store that made them in readers' hands). */
static struct {
    pthread_mutex_t lock;
    struct entry_free *free[ENTRY_SLAB_MAX / 8 + 1];
    struct entry_page *pages;
    char *bump; /* the free end of the newest page */
    size_t left;
} entry__slab = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* What an entry of `size` bytes takes from its allocator. */
static size_t entry__mem_size(size_t size)
{
    return (size + 7) & ~(size_t)7;
}

/* Room for an entry of `size` bytes, or NULL. Free with entry__mem_free. */
static void *entry__mem_alloc(size_t size)
{
    size_t m = entry__mem_size(size);
    void *p = NULL;
    if (m > ENTRY_SLAB_MAX)
        return malloc(size);
    pthread_mutex_lock(&entry__slab.lock);
    if (entry__slab.free[m / 8] != NULL) {
        p = entry__slab.free[m / 8];
        ENTRY_UNPOISON(p, m);
        entry__slab.free[m / 8] = entry__slab.free[m / 8]->next;
    } else {
        if (entry__slab.left < m) {
            /* The page's tail (under ENTRY_SLAB_MAX bytes) is left. */
            struct entry_page *page = malloc(ENTRY_SLAB_PAGE);
            if (page != NULL) {
                page->next = entry__slab.pages;
                entry__slab.pages = page;
                entry__slab.bump = page->mem;
                entry__slab.left = ENTRY_SLAB_PAGE - offsetof(struct entry_page, mem);
                ENTRY_POISON(entry__slab.bump, entry__slab.left);
            }
        }
        if (entry__slab.left >= m) {
            p = entry__slab.bump;
            ENTRY_UNPOISON(p, m);
            entry__slab.bump += m;
            entry__slab.left -= m;
        }
    }
    pthread_mutex_unlock(&entry__slab.lock);
    return p;
}

static void entry__mem_free(void *p, size_t size)
{
    size_t m = entry__mem_size(size);
    if (m > ENTRY_SLAB_MAX) {
        free(p);
        return;
    }
    struct entry_free *f = p;
    pthread_mutex_lock(&entry__slab.lock);
    f->next = entry__slab.free[m / 8];
    entry__slab.free[m / 8] = f;
    ENTRY_POISON(f, m);
    pthread_mutex_unlock(&entry__slab.lock);
}

/* The bytes data[] gives the value: the value, or its reference. */
static size_t entry__vsize(const struct store_entry *e)
{
    return e->blob ? sizeof(struct entry_blob) : e->vlen;
}

const char *store_origin_name(enum store_origin o)
{
    return (unsigned)o < STORE_ORIGIN_COUNT ? entry__origins[o] : "sys";
}

bool store_json_valid(const void *value, size_t len)
{
    json_error_t jerr;
    /* jansson stops at a NUL byte as at the end; JSON never holds one. */
    if (memchr(value, '\0', len) != NULL)
        return false;
    /* As reals, integers of any length are valid JSON, as RFC 8259 says. */
    json_t *j = json_loadb(value, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

const char *store_sniff_type(const void *value, size_t len)
{
    if (store_json_valid(value, len))
        return entry__types[TYPE_JSON];
    if (store__utf8_check(value, len) == len)
        return entry__types[TYPE_TEXT];
    return entry__types[TYPE_BYTES];
}

bool store_type_is_json(const char *type)
{
    size_t len = strcspn(type, ";");
    while (len > 0 && type[len - 1] == ' ')
        len--;
    if (len == 16 && strncasecmp(type, "application/json", 16) == 0)
        return true;
    return len > 17 && strncasecmp(type, "application/", 12) == 0 &&
           strncasecmp(type + len - 5, "+json", 5) == 0;
}

static struct store_entry *entry__alloc(const void *value, size_t len, const char *type,
                                        const char *labels, enum store_origin origin,
                                        const struct entry_blob *blob)
{
    uint8_t type_id = TYPE_CUSTOM;
    size_t tlen = strlen(type), llen = labels ? strlen(labels) : 0;

    for (int i = 1; i < TYPE_COUNT; i++)
        if (strcmp(type, entry__types[i]) == 0)
            type_id = (uint8_t)i;
    if (len > UINT32_MAX || (type_id == TYPE_CUSTOM && tlen > UINT8_MAX) || llen > UINT16_MAX)
        return NULL;
    size_t vsize = blob ? sizeof *blob : len, tsize = type_id == TYPE_CUSTOM ? tlen + 1 : 0;
    size_t size = offsetof(struct store_entry, data) + vsize + tsize + (llen ? llen + 1 : 0);
    struct store_entry *e = entry__mem_alloc(size);
    if (e == NULL)
        return NULL;
    atomic_init(&e->refs, 1);
    e->vlen = (uint32_t)len;
    e->rev = 0;
    e->ts = 0;
    e->type_id = type_id & 3u;
    e->origin = (unsigned)origin & 7u;
    e->expiring = 0;
    e->blob = blob != NULL;
    e->labels = llen > 0;
    if (blob)
        memcpy(e->data, blob, sizeof *blob);
    else if (len)
        memcpy(e->data, value, len);
    memcpy(e->data + vsize, type, tsize);
    if (llen)
        memcpy(e->data + vsize + tsize, labels, llen + 1);
    return e;
}

int store_entry_new(const void *value, size_t len, const char *type, const char *labels_json,
                    enum store_origin origin, struct store_entry **out)
{
    *out = NULL;
    if (type == NULL || type[0] == '\0')
        type = store_sniff_type(value, len);
    else if (store_type_is_json(type) && !store_json_valid(value, len))
        return STORE_EBODY;
    if (labels_json != NULL && strcmp(labels_json, "{}") == 0)
        labels_json = NULL;
    *out = entry__alloc(value, len, type, labels_json, origin, NULL);
    return *out ? STORE_OK : STORE_EINTERNAL;
}

/* The bytes of the custom type (with its NUL) after the value, or 0. */
static size_t entry__tsize(const struct store_entry *e)
{
    return e->type_id == TYPE_CUSTOM ? strlen(e->data + entry__vsize(e)) + 1 : 0;
}

/* The bytes of `e` before its expiry time. */
static size_t entry__size(const struct store_entry *e)
{
    size_t size = offsetof(struct store_entry, data) + entry__vsize(e) + entry__tsize(e);
    return e->labels ? size + strlen(e->data + (size - offsetof(struct store_entry, data))) + 1
                     : size;
}

/* All the bytes of `e` (invariant 3). */
static size_t entry__full_size(const struct store_entry *e)
{
    return entry__size(e) + (e->expiring ? sizeof(int64_t) : 0);
}

int store_entry_expire_at(struct store_entry **e, int64_t expires)
{
    assert(atomic_load(&(*e)->refs) == 1); /* not shared yet */
    if (expires <= 0)
        return STORE_OK;
    size_t size = entry__size(*e);
    struct store_entry *n = *e;
    if (!n->expiring) {
        if ((n = entry__mem_alloc(size + sizeof expires)) == NULL)
            return STORE_EINTERNAL;
        memcpy(n, *e, size);
        entry__mem_free(*e, size);
    }
    n->expiring = 1;
    memcpy(n->data + (size - offsetof(struct store_entry, data)), &expires, sizeof expires);
    *e = n;
    return STORE_OK;
}

int64_t store_entry_expires(const struct store_entry *e)
{
    int64_t expires = 0;
    if (e->expiring)
        memcpy(&expires, e->data + (entry__size(e) - offsetof(struct store_entry, data)),
               sizeof expires);
    return expires;
}

struct store_entry *entry__load(const void *value, size_t len, const char *type,
                                const char *labels_json, enum store_origin origin, int64_t rev,
                                int64_t ts, int64_t expires)
{
    struct store_entry *e = entry__alloc(value, len, type, labels_json, origin, NULL);
    if (e != NULL && store_entry_expire_at(&e, expires) != STORE_OK) {
        entry__mem_free(e, entry__full_size(e));
        return NULL;
    }
    if (e != NULL)
        entry__stamp(e, rev, ts);
    return e;
}

struct store_entry *entry__blob(struct blob_file *file, uint64_t off, size_t len, uint32_t crc,
                                const char *type, const char *labels_json, enum store_origin origin,
                                int64_t expires)
{
    struct entry_blob ref = {.file = file, .off = off, .crc = crc};
    struct store_entry *e = entry__alloc(NULL, len, type, labels_json, origin, &ref);
    if (e != NULL && store_entry_expire_at(&e, expires) != STORE_OK) {
        entry__mem_free(e, entry__full_size(e));
        e = NULL;
    }
    if (e == NULL)
        blob__unref(file);
    return e;
}

bool entry__blob_ref(const struct store_entry *e, struct blob_file **file, uint64_t *off,
                     uint32_t *crc)
{
    if (!e->blob)
        return false;
    struct entry_blob ref;
    memcpy(&ref, e->data, sizeof ref);
    *file = ref.file;
    *off = ref.off;
    *crc = ref.crc;
    return true;
}

int entry__to_blob(struct blobs *b, size_t min, struct store_entry **e)
{
    struct store_entry *in = *e;
    if (b == NULL || in->blob || in->vlen < min || in->vlen == 0)
        return STORE_OK;
    struct blob_file *f;
    uint64_t off;
    uint32_t crc;
    int err = blobs__write(b, in->data, in->vlen, &f, &off, &crc);
    if (err != STORE_OK)
        return err;
    struct store_entry *out =
        entry__blob(f, off, in->vlen, crc, store_entry_type(in), store_entry_labels(in),
                    (enum store_origin)in->origin, store_entry_expires(in));
    if (out == NULL)
        return STORE_EINTERNAL;
    store_entry_unref(in);
    *e = out;
    return STORE_OK;
}

struct store_entry *entry__moved(const struct store_entry *e, struct blob_file *file, uint64_t off)
{
    size_t size = entry__full_size(e);
    struct store_entry *n = entry__mem_alloc(size);
    if (n == NULL)
        return NULL;
    memcpy(n, e, size);
    atomic_init(&n->refs, 1);
    struct entry_blob ref;
    memcpy(&ref, n->data, sizeof ref);
    ref.file = file;
    ref.off = off;
    memcpy(n->data, &ref, sizeof ref);
    blob__ref(file);
    return n;
}

void entry__stamp(struct store_entry *e, int64_t rev, int64_t ts)
{
    e->rev = rev;
    e->ts = ts;
}

void store_entry_ref(struct store_entry *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void store_entry_unref(struct store_entry *e)
{
    if (e == NULL || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    struct blob_file *f;
    uint64_t off;
    uint32_t crc;
    if (entry__blob_ref(e, &f, &off, &crc))
        blob__unref(f);
    entry__mem_free(e, entry__full_size(e));
}

const void *store_entry_value(const struct store_entry *e, size_t *len)
{
    struct blob_file *f;
    uint64_t off;
    uint32_t crc;
    *len = e->vlen;
    return entry__blob_ref(e, &f, &off, &crc) ? blob__data(f, off) : e->data;
}

const char *store_entry_type(const struct store_entry *e)
{
    return e->type_id == TYPE_CUSTOM ? e->data + entry__vsize(e) : entry__types[e->type_id];
}

const char *store_entry_labels(const struct store_entry *e)
{
    return e->labels ? e->data + entry__vsize(e) + entry__tsize(e) : NULL;
}

int64_t store_entry_rev(const struct store_entry *e)
{
    return e->rev;
}

int64_t store_entry_ts(const struct store_entry *e)
{
    return e->ts;
}

enum store_origin store_entry_origin(const struct store_entry *e)
{
    return (enum store_origin)e->origin;
}

bool store_entry_same(const struct store_entry *a, const struct store_entry *b)
{
    size_t alen, blen;
    const void *av = store_entry_value(a, &alen), *bv = store_entry_value(b, &blen);
    struct blob_file *f;
    uint64_t off;
    uint32_t ac, bc;
    /* Two blobs with other checksums differ: no need to read them. */
    if (entry__blob_ref(a, &f, &off, &ac) && entry__blob_ref(b, &f, &off, &bc) && ac != bc)
        return false;
    return alen == blen && a->type_id == b->type_id &&
           strcmp(store_entry_type(a), store_entry_type(b)) == 0 && memcmp(av, bv, alen) == 0;
}

/* ---- label filters ---- */

bool store_labels_any(const struct store_labels *f)
{
    return f != NULL && (f->nmatch > 0 || f->nexclude > 0);
}

bool store_labels_pass(const struct store_labels *f, const char *json, size_t len)
{
    if (!store_labels_any(f))
        return true;
    if (json == NULL) /* no labels: no match filter holds, no exclude filter */
        return f->nmatch == 0;
    json_t *obj = json_loadb(json, len, 0, NULL);
    bool ok = json_is_object(obj);
    for (size_t i = 0; i < f->nmatch && ok; i++) {
        const char *v = json_string_value(json_object_get(obj, f->match_names[i]));
        ok = v != NULL && strcmp(v, f->match_values[i]) == 0;
    }
    for (size_t i = 0; i < f->nexclude && ok; i++) {
        const char *v = json_string_value(json_object_get(obj, f->exclude_names[i]));
        ok = v == NULL || strcmp(v, f->exclude_values[i]) != 0;
    }
    json_decref(obj);
    return ok;
}

bool store_labels_pass_entry(const struct store_labels *f, const struct store_entry *e)
{
    const char *labels = store_entry_labels(e);
    return store_labels_pass(f, labels, labels ? strlen(labels) : 0);
}
