/*
 * fuzz_server.h — what the harnesses share: a clean environment, and the
 * real server (store, $SYS, the session loop, HTTP) started once in the
 * fuzzing process, as gateway/main.c starts it, on a temporary directory.
 */
#ifndef ALMANAC_FUZZ_SERVER_H
#define ALMANAC_FUZZ_SERVER_H

#include <stdbool.h>
#include <stddef.h>

/* Removes every ALMANAC_* variable, so only what a harness gives counts. */
void fuzz_clear_env(void);

struct fuzz_server {
    char dir[128];         /* the data directory, removed at exit */
    char unix_socket[160]; /* "" without the Unix socket */
    unsigned short port;   /* HTTP's port, 0 without HTTP */
};

/* Starts the server once (later calls return the same one), its data in
 * FUZZ_TMPDIR, else /dev/shm, else TMPDIR, else /tmp, with the Unix
 * socket and/or HTTP on 127.0.0.1:0, no TCP, no $SYS ticks, no bridge;
 * stopped and removed at exit, in main.c's stop order. Aborts on failure. */
const struct fuzz_server *fuzz_server_start(bool unix_socket, bool http);

/* Writes `len` bytes to `fd` and reads what comes back into `*reply`
 * (malloc'd, NUL-terminated) until `done` (may be NULL) says the answer is
 * complete or the peer closes: 0. With `shut`, our side is shut once
 * everything is written. Returns 1 when nothing came for `idle_ms` (0: no
 * limit) after everything was written, -1 when `timeout_ms` passed. */
int fuzz_exchange(int fd, const void *data, size_t len, bool shut,
                  bool (*done)(const char *reply, size_t len), char **reply, size_t *reply_len,
                  int idle_ms, int timeout_ms);

#endif
