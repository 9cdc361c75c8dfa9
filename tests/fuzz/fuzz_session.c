/*
 * fuzz_session.c — libFuzzer harness of the session protocol (API.md
 * "Session protocol"; gateway/session.c and loop.c's line framing) through
 * the real server: store, $SYS and the session loop in this process, a
 * Unix socket, as a client sees it.
 *
 * Each input is sent on a new connection as it is (newline-delimited JSON
 * messages), followed by a ping; the replies are read until that ping is
 * answered or the server closes, then the connection closes, whatever is
 * still under way (writes waiting for their commit, subscriptions). A ping
 * not answered within FUZZ_TIMEOUT_MS while the connection stays open is a
 * hang, reported as a crash.
 */
#include "fuzz_server.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FUZZ_TIMEOUT_MS 5000
#define FUZZ_PING       "{\"type\":\"ping\",\"id\":918273645}\n"
#define FUZZ_PONG_ID    "\"id\":918273645"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct fuzz_server *srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    srv = fuzz_server_start(true, false);
    return 0;
}

/* Whether `reply` holds the answer to our ping (replies to writes may come
 * after it: they wait for their commit, the ping does not). */
static bool ponged(const char *reply, size_t len)
{
    static const char pong[] = "{\"type\":\"pong\"," FUZZ_PONG_ID "}";
    return memmem(reply, len, pong, sizeof pong - 1) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", srv->unix_socket);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("fuzz_session: connect");
        abort();
    }
    /* The input, a newline (it may end mid-line), then the ping. */
    size_t len = size + 1 + sizeof FUZZ_PING - 1;
    char *msg = malloc(len);
    memcpy(msg, data, size);
    msg[size] = '\n';
    memcpy(msg + size + 1, FUZZ_PING, sizeof FUZZ_PING - 1);

    char *reply;
    size_t reply_len;
    if (fuzz_exchange(fd, msg, len, false, ponged, &reply, &reply_len, 0, FUZZ_TIMEOUT_MS) != 0) {
        fprintf(stderr, "fuzz_session: no answer to the ping in %d ms; got:\n%.*s\n",
                FUZZ_TIMEOUT_MS, (int)(reply_len < 4096 ? reply_len : 4096), reply);
        abort();
    }
    if (getenv("FUZZ_ECHO"))
        fprintf(stderr, "%s", reply);
    free(reply);
    free(msg);
    close(fd);
    return 0;
}
