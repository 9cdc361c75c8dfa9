/*
 * buf.h — a growable text buffer (buf.c).
 */
#ifndef ALMANAC_BUF_H
#define ALMANAC_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable text buffer. After a failed allocation `oom` is set and further
 * appends do nothing, so a caller checks once at the end. */
struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};
void buf_add(struct buf *b, const void *data, size_t len);
/* Makes room for `more` bytes; false when out of memory. */
bool buf_reserve(struct buf *b, size_t more);
void buf_add_i64(struct buf *b, int64_t n);
void buf_adds(struct buf *b, const char *s);
void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `len` bytes of UTF-8 as a quoted JSON string. */
void buf_add_jstr(struct buf *b, const char *s, size_t len);
/* The same without the quotes: a string written in pieces (escapes are
 * per byte, so a piece may end anywhere). */
void buf_add_jstr_inner(struct buf *b, const char *s, size_t len);
void buf_free(struct buf *b);

#endif
