/*
 * tokens.c — access tokens in SQLite (table `tokens`, schema 3): added,
 * removed and read back at start, on a connection of their own (they are
 * rare, and the committer's connection is the committer's). SQLite's busy
 * timeout waits out a commit under way.
 * Invariant: a token's secret never reaches this file, only its SHA-256.
 */
#include "store_int.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

static sqlite3 *tokens__open(struct store *s)
{
    sqlite3 *c = NULL;
    if (sqlite3_open_v2(store__db_path(s), &c, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        sqlite3_close(c);
        return NULL;
    }
    sqlite3_busy_timeout(c, 10000);
    return c;
}

int store_token_add(struct store *s, const struct store_token *t, char *why, size_t why_len)
{
    sqlite3 *c = tokens__open(s);
    sqlite3_stmt *st = NULL;
    int rc = SQLITE_ERROR;
    if (c != NULL &&
        sqlite3_prepare_v2(c,
                           "INSERT INTO tokens(name, hash, read, write, admin, created, expires) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, t->hash, sizeof t->hash, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, t->read, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, t->write, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, t->admin);
        sqlite3_bind_int64(st, 6, t->created);
        sqlite3_bind_int64(st, 7, t->expires);
        rc = sqlite3_step(st);
    }
    int err = rc == SQLITE_DONE         ? STORE_OK
              : rc == SQLITE_CONSTRAINT ? STORE_EREV
              : rc == SQLITE_FULL       ? STORE_EFULL
                                        : STORE_EINTERNAL;
    if (err == STORE_EREV)
        snprintf(why, why_len, "a token named %s exists: remove it first", t->name);
    else if (err != STORE_OK)
        snprintf(why, why_len, "the token cannot be stored: %s",
                 c ? sqlite3_errmsg(c) : "no database connection");
    sqlite3_finalize(st);
    sqlite3_close(c);
    return err;
}

int store_token_remove(struct store *s, const char *name)
{
    sqlite3 *c = tokens__open(s);
    sqlite3_stmt *st = NULL;
    int err = STORE_EINTERNAL;
    if (c != NULL &&
        sqlite3_prepare_v2(c, "DELETE FROM tokens WHERE name = ?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_DONE)
            err = sqlite3_changes(c) > 0 ? STORE_OK : STORE_ENOTFOUND;
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    return err;
}

int store_tokens(struct store *s, void (*fn)(void *arg, const struct store_token *t), void *arg)
{
    sqlite3 *c = tokens__open(s);
    sqlite3_stmt *st = NULL;
    int err = STORE_EINTERNAL;
    if (c != NULL && sqlite3_prepare_v2(c,
                                        "SELECT name, hash, read, write, admin, created, expires "
                                        "FROM tokens ORDER BY name",
                                        -1, &st, NULL) == SQLITE_OK) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            struct store_token t = {
                .name = (const char *)sqlite3_column_text(st, 0),
                .read = (const char *)sqlite3_column_text(st, 2),
                .write = (const char *)sqlite3_column_text(st, 3),
                .admin = sqlite3_column_int(st, 4) != 0,
                .created = sqlite3_column_int64(st, 5),
                .expires = sqlite3_column_int64(st, 6),
            };
            const void *hash = sqlite3_column_blob(st, 1);
            if (t.name == NULL || t.read == NULL || t.write == NULL || hash == NULL ||
                sqlite3_column_bytes(st, 1) != (int)sizeof t.hash)
                continue; /* a damaged row names no one */
            memcpy(t.hash, hash, sizeof t.hash);
            fn(arg, &t);
        }
        err = rc == SQLITE_DONE ? STORE_OK : STORE_EINTERNAL;
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    return err;
}
