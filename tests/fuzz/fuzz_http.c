/*
 * fuzz_http.c — libFuzzer harness of the HTTP API (gateway/http.c on
 * libmicrohttpd): request line, headers, query parameters and bodies (batch
 * and import bodies are parsed there), through the real server in this
 * process on 127.0.0.1 and a port the system chose.
 *
 * Each input is sent as the raw bytes of a connection, which is then shut
 * for writing; the answers are read until the server closes, or a WebSocket
 * upgrade or an event stream's `sync` is in, or nothing more comes for
 * FUZZ_IDLE_MS: libmicrohttpd may keep a keep-alive connection open after
 * our end until its connection timeout (it does not always see the end of
 * a connection it already answered). Then the server must still answer a
 * fresh GET /health within FUZZ_TIMEOUT_MS, else it hangs: a crash.
 */
#include "fuzz_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FUZZ_IDLE_MS    250
#define FUZZ_TIMEOUT_MS 5000
#define FUZZ_HEALTH     "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct fuzz_server *srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    srv = fuzz_server_start(false, true);
    return 0;
}

/* Whether the answer so far is one that stays open by design: a WebSocket
 * upgrade (101, done once its headers are in), or an event stream (done at
 * its `sync`, which must come). Other answers end when the server closes. */
static bool open_ended(const char *reply, size_t len)
{
    (void)len;
    const char *last = reply, *p;
    /* The last answer of a pipeline starts at its status line. */
    while ((p = strstr(last + 1, "HTTP/1.")) != NULL)
        last = p;
    const char *end = strstr(last, "\r\n\r\n");
    if (end == NULL)
        return false;
    if (strncmp(last, "HTTP/1.1 101", 12) == 0)
        return true;
    return strcasestr(last, "content-type: text/event-stream") != NULL &&
           strstr(end, "event: sync\n") != NULL;
}

static int connect_http(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(srv->port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("fuzz_http: connect");
        abort();
    }
    return fd;
}

/* Stacks of every thread, for a hang (FUZZ_GDB=1 and gdb installed). */
static void dump_threads(void)
{
    if (getenv("FUZZ_GDB") == NULL)
        return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "gdb -p %d -batch -ex 'thread apply all bt' 1>&2", (int)getpid());
    if (system(cmd) != 0)
        perror("gdb");
}

/* After an answer that did not end: the server must still serve. */
static void check_alive(const uint8_t *data, size_t size)
{
    char *reply;
    size_t reply_len;
    int fd = connect_http();
    int rc = fuzz_exchange(fd, FUZZ_HEALTH, sizeof FUZZ_HEALTH - 1, false, NULL, &reply, &reply_len,
                           0, FUZZ_TIMEOUT_MS);
    close(fd);
    if (rc != 0 || strncmp(reply, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "fuzz_http: GET /health unanswered %d ms after the request:\n%.*s\n",
                FUZZ_TIMEOUT_MS, (int)(size < 4096 ? size : 4096), (const char *)data);
        dump_threads();
        abort();
    }
    free(reply);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *reply;
    size_t reply_len;
    int fd = connect_http();
    int rc = fuzz_exchange(fd, data, size, true, open_ended, &reply, &reply_len, FUZZ_IDLE_MS,
                           FUZZ_TIMEOUT_MS);
    if (getenv("FUZZ_ECHO"))
        fprintf(stderr, "%s\n[%s]\n", reply, rc == 0 ? "end" : rc > 0 ? "idle" : "timeout");
    free(reply);
    close(fd);
    if (rc != 0)
        check_alive(data, size);
    return 0;
}
