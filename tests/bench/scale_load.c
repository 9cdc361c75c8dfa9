/*
 * scale_load.c — the subscribers of tests/bench/scale.mjs: thousands of
 * clients in one process on one epoll, speaking either almanac's session
 * protocol over WebSocket (RFC 6455, subprotocol almanac.v1) or MQTT 3.1.1,
 * with the same code and the same cost per message for both, so that what
 * the benchmark compares is the servers, and so that a few of these
 * processes are not the limit (a client library's per-message work, or a
 * thread per client, would be).
 *
 *   scale_load ws|mqtt PORT FIRST COUNT PATTERN SITES SOURCES
 *       opens COUNT clients numbered FIRST .. FIRST+COUNT-1, each from the
 *       address 127.0.1.(1 + number % SOURCES) (0: 127.0.0.1), subscribing
 *       to PATTERN with its "%d" (if any) replaced by number % SITES; prints
 *       "ready COUNT" once every subscription is in place (a WebSocket
 *       client: its `sync`; MQTT: its SUBACK), or "fail WHY" and exits 1.
 *
 * Then it reads commands, one a line, on stdin, and answers each with one
 * line on stdout:
 *   go     forget what was counted: counting starts now  -> "go"
 *   stat   "stat EVENTS LAST_MS CLOSED": events since go, the wall-clock
 *          time (ms since the epoch) of the last one, clients the server
 *          closed
 *   hist   "hist US:N US:N ...": the latencies since go, as buckets (the
 *          bucket's lower bound in µs, and how many fell in it)
 *   quit   exits (closing every client).
 *
 * An event's latency is its receipt time less the time the writer stamped
 * in its value, {"t":MS} (ms since the epoch, with a fraction), found by the
 * first `"t":` of the message: almanac's event and MQTT's payload alike.
 * Every event is counted and its latency kept; nothing else is parsed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define INFLIGHT   256    /* clients connecting and subscribing at once */
#define READ_BYTES 262144 /* one read's buffer, shared by every client */
#define FINE_US    10     /* latency buckets: 10 µs wide up to 100 ms, */
#define FINE_N     10000
#define COARSE_US  1000 /* then 1 ms wide up to 100 s */
#define COARSE_N   100000

enum proto { PROTO_WS, PROTO_MQTT };
enum state { ST_CONNECTING, ST_HANDSHAKE, ST_SUBSCRIBING, ST_LIVE, ST_CLOSED };

struct client {
    int fd;
    enum state state;
    char *part; /* bytes of an unfinished frame or packet */
    size_t part_len;
};

static enum proto proto;
static struct sockaddr_in server;
static int epfd;
static struct client *clients;
static long first, count, sites, sources;
static const char *pattern;
static long next_to_open, opening, live, closed;
static unsigned long long events;
static double last_ms;
static uint32_t fine[FINE_N], coarse[COARSE_N], beyond;
static char rbuf[READ_BYTES];

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void fail(const char *fmt, const char *what)
{
    printf("fail ");
    printf(fmt, what);
    printf("\n");
    fflush(stdout);
    exit(1);
}

static void record(const char *msg, size_t len)
{
    double at = now_ms();
    events++;
    last_ms = at;
    const char *t = memmem(msg, len, "\"t\":", 4);
    if (t == NULL)
        return;
    double sent = strtod(t + 4, NULL), us = (at - sent) * 1e3;
    if (us < 0)
        us = 0;
    if (us < FINE_US * FINE_N)
        fine[(long)us / FINE_US]++;
    else if (us < (double)COARSE_US * COARSE_N)
        coarse[(long)us / COARSE_US]++;
    else
        beyond++;
}

static void send_all(struct client *c, const void *data, size_t len)
{
    /* Only the small messages of connecting: the socket's buffer takes them. */
    if (send(c->fd, data, len, MSG_NOSIGNAL) != (ssize_t)len)
        fail("a client could not send its %s", c->state == ST_HANDSHAKE ? "upgrade" : "request");
}

static void topic_of(long n, char *out, size_t size)
{
    const char *d = strstr(pattern, "%d");
    if (d == NULL)
        snprintf(out, size, "%s", pattern);
    else
        snprintf(out, size, "%.*s%ld%s", (int)(d - pattern), pattern, n % sites, d + 2);
}

/* ---- WebSocket ---- */

static void ws_send_text(struct client *c, const char *text)
{
    uint8_t frame[512];
    size_t len = strlen(text), h = 0;
    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    frame[h++] = 0x81; /* FIN, text */
    if (len < 126) {
        frame[h++] = (uint8_t)(0x80 | len);
    } else {
        frame[h++] = 0x80 | 126;
        frame[h++] = (uint8_t)(len >> 8);
        frame[h++] = (uint8_t)len;
    }
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        frame[h + i] = (uint8_t)text[i] ^ mask[i % 4];
    send_all(c, frame, h + len);
}

static void ws_start(struct client *c)
{
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: almanac.v1\r\n\r\n",
                     ntohs(server.sin_port));
    c->state = ST_HANDSHAKE;
    send_all(c, req, (size_t)n);
}

static void subscribed(struct client *c);

/* One whole text message of client `c`. */
static void ws_message(struct client *c, const char *msg, size_t len)
{
    if (c->state == ST_LIVE) {
        if (len > 15 && memcmp(msg, "{\"type\":\"event\"", 15) == 0)
            record(msg, len);
        return;
    }
    if (len > 15 && memcmp(msg, "{\"type\":\"error\"", 15) == 0)
        fail("the server refused a client: %s", strndup(msg, len < 300 ? len : 300));
    if (len > 14 && memcmp(msg, "{\"type\":\"sync\"", 14) == 0)
        subscribed(c);
}

/* Parses the frames in `p`; returns the bytes used (a partial frame stays). */
static size_t ws_frames(struct client *c, const char *p, size_t n)
{
    size_t used = 0;
    while (n - used >= 2) {
        const uint8_t *f = (const uint8_t *)p + used;
        size_t avail = n - used, h = 2;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            h = 10;
        }
        if (avail - h < len)
            break;
        int op = f[0] & 0x0f;
        if (op == 1 || op == 0)
            ws_message(c, (const char *)f + h, (size_t)len);
        else if (op == 8) {
            c->state = ST_CLOSED;
            return n;
        }
        used += h + (size_t)len;
    }
    return used;
}

/* ---- MQTT 3.1.1 ---- */

static size_t mqtt_remaining(uint8_t *out, size_t len)
{
    size_t n = 0;
    do {
        uint8_t b = len % 128;
        len /= 128;
        out[n++] = (uint8_t)(len ? b | 0x80 : b);
    } while (len);
    return n;
}

static void mqtt_start(struct client *c, long number)
{
    uint8_t pkt[512];
    char id[32], topic[256];
    size_t idlen = (size_t)snprintf(id, sizeof id, "scale%ld", number), n = 0;
    uint8_t body[512];
    size_t b = 0;
    /* CONNECT: MQTT 3.1.1, clean session, no keep-alive. */
    static const uint8_t head[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0};
    memcpy(body, head, sizeof head);
    b = sizeof head;
    body[b++] = (uint8_t)(idlen >> 8);
    body[b++] = (uint8_t)idlen;
    memcpy(body + b, id, idlen);
    b += idlen;
    pkt[n++] = 0x10;
    n += mqtt_remaining(pkt + n, b);
    memcpy(pkt + n, body, b);
    n += b;
    /* SUBSCRIBE, packet id 1, QoS 0: sent at once (MQTT allows it before
     * the CONNACK). */
    topic_of(number, topic, sizeof topic);
    size_t tlen = strlen(topic);
    b = 0;
    body[b++] = 0;
    body[b++] = 1;
    body[b++] = (uint8_t)(tlen >> 8);
    body[b++] = (uint8_t)tlen;
    memcpy(body + b, topic, tlen);
    b += tlen;
    body[b++] = 0;
    pkt[n++] = 0x82;
    n += mqtt_remaining(pkt + n, b);
    memcpy(pkt + n, body, b);
    n += b;
    c->state = ST_SUBSCRIBING;
    send_all(c, pkt, n);
}

static size_t mqtt_packets(struct client *c, const char *p, size_t n)
{
    size_t used = 0;
    while (n - used >= 2) {
        const uint8_t *f = (const uint8_t *)p + used;
        size_t avail = n - used, len = 0, h = 1;
        unsigned shift = 0;
        for (;;) {
            if (h >= avail)
                return used;
            uint8_t b = f[h++];
            len |= (size_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80))
                break;
            if (shift > 21)
                fail("a malformed packet (%s)", "remaining length");
        }
        if (avail - h < len)
            break;
        int type = f[0] >> 4;
        if (type == 3 && c->state == ST_LIVE && len >= 2) {
            size_t tl = (size_t)f[h] << 8 | f[h + 1];
            size_t skip = 2 + tl + ((f[0] & 0x06) ? 2 : 0);
            if (skip <= len)
                record((const char *)f + h + skip, len - skip);
        } else if (type == 9 && c->state == ST_SUBSCRIBING) {
            if (len < 3 || f[h + 2] == 0x80)
                fail("the broker refused a %s", "subscription");
            subscribed(c);
        } else if (type == 2 && len >= 2 && f[h + 1] != 0) {
            fail("the broker refused a %s", "connection");
        }
        used += h + len;
    }
    return used;
}

/* ---- the clients ---- */

static void open_next(void)
{
    while (opening < INFLIGHT && next_to_open < count) {
        long i = next_to_open++;
        struct client *c = &clients[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            fail("socket: %s", strerror(errno));
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (sources > 0) {
            struct sockaddr_in src = {.sin_family = AF_INET};
            char addr[32];
            snprintf(addr, sizeof addr, "127.0.1.%ld", 1 + (first + i) % sources);
            inet_pton(AF_INET, addr, &src.sin_addr);
            if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0)
                fail("bind: %s", strerror(errno));
        }
        if (connect(c->fd, (struct sockaddr *)&server, sizeof server) != 0 && errno != EINPROGRESS)
            fail("connect: %s", strerror(errno));
        c->state = ST_CONNECTING;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)i};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        opening++;
    }
}

static void subscribed(struct client *c)
{
    c->state = ST_LIVE;
    opening--;
    live++;
    open_next();
    if (live == count) {
        printf("ready %ld\n", count);
        fflush(stdout);
    }
}

static void on_writable(struct client *c, long i)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
        fail("connect: %s", strerror(err));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    if (proto == PROTO_WS)
        ws_start(c);
    else
        mqtt_start(c, first + i);
}

/* The end of the HTTP answer to the upgrade, then frames. */
static size_t ws_handshake(struct client *c, long i, const char *p, size_t n)
{
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0)
        fail("the upgrade was refused: %s", strndup(p, n < 300 ? n : 300));
    char sub[400], topic[256];
    topic_of(first + i, topic, sizeof topic);
    snprintf(sub, sizeof sub,
             "{\"type\":\"subscribe\",\"id\":1,\"pattern\":\"%s\",\"live_only\":true}", topic);
    c->state = ST_SUBSCRIBING;
    ws_send_text(c, sub);
    return (size_t)(end + 4 - p);
}

static void on_readable(struct client *c, long i)
{
    size_t have = c->part_len;
    if (have > 0)
        memcpy(rbuf, c->part, have);
    ssize_t got = read(c->fd, rbuf + have, sizeof rbuf - have);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {
        if (c->state != ST_LIVE)
            fail("a client was closed while %s", "connecting");
        c->state = ST_CLOSED;
    }
    size_t n = have + (got > 0 ? (size_t)got : 0), used = 0;
    if (c->state == ST_HANDSHAKE)
        used = ws_handshake(c, i, rbuf, n);
    if (c->state != ST_HANDSHAKE && c->state != ST_CLOSED)
        used += proto == PROTO_WS ? ws_frames(c, rbuf + used, n - used)
                                  : mqtt_packets(c, rbuf + used, n - used);
    if (c->state == ST_CLOSED) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c->part);
        c->part = NULL;
        c->part_len = 0;
        closed++;
        return;
    }
    c->part_len = n - used;
    if (c->part_len > 0) {
        if (c->part_len > sizeof rbuf / 2)
            fail("a message longer than %s", "128 KiB");
        char *p = realloc(c->part, c->part_len);
        if (p == NULL)
            fail("out of %s", "memory");
        memcpy(p, rbuf + used, c->part_len);
        c->part = p;
    }
}

/* ---- commands ---- */

static void command(const char *line)
{
    if (strncmp(line, "go", 2) == 0) {
        events = 0;
        last_ms = 0;
        memset(fine, 0, sizeof fine);
        memset(coarse, 0, sizeof coarse);
        beyond = 0;
        printf("go\n");
    } else if (strncmp(line, "stat", 4) == 0) {
        printf("stat %llu %.3f %ld\n", events, last_ms, closed);
    } else if (strncmp(line, "hist", 4) == 0) {
        printf("hist");
        for (long b = 0; b < FINE_N; b++)
            if (fine[b])
                printf(" %ld:%u", b * FINE_US, fine[b]);
        for (long b = 0; b < COARSE_N; b++)
            if (coarse[b])
                printf(" %ld:%u", b * COARSE_US, coarse[b]);
        if (beyond)
            printf(" %ld:%u", (long)COARSE_US * COARSE_N, beyond);
        printf("\n");
    } else if (strncmp(line, "quit", 4) == 0) {
        exit(0);
    }
    fflush(stdout);
}

static void on_stdin(void)
{
    static char line[256];
    static size_t len;
    ssize_t got = read(0, line + len, sizeof line - 1 - len);
    if (got <= 0)
        exit(0); /* the benchmark went away */
    len += (size_t)got;
    char *nl;
    while ((nl = memchr(line, '\n', len)) != NULL) {
        *nl = '\0';
        command(line);
        len -= (size_t)(nl + 1 - line);
        memmove(line, nl + 1, len);
    }
    if (len == sizeof line - 1)
        len = 0;
}

int main(int argc, char **argv)
{
    if (argc != 8 || (strcmp(argv[1], "ws") != 0 && strcmp(argv[1], "mqtt") != 0)) {
        fprintf(stderr, "usage: scale_load ws|mqtt PORT FIRST COUNT PATTERN SITES SOURCES\n");
        return 2;
    }
    proto = strcmp(argv[1], "ws") == 0 ? PROTO_WS : PROTO_MQTT;
    server =
        (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &server.sin_addr);
    first = atol(argv[3]);
    count = atol(argv[4]);
    pattern = argv[5];
    sites = atol(argv[6]) > 0 ? atol(argv[6]) : 1;
    sources = atol(argv[7]);

    /* A descriptor a client, and a few more. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)count + 16) {
        char why[64];
        snprintf(why, sizeof why, "%llu", (unsigned long long)rl.rlim_cur);
        fail("the descriptor limit is %s: raise it (ulimit -Hn)", why);
    }
    if ((clients = calloc((size_t)count, sizeof *clients)) == NULL)
        fail("out of %s", "memory");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event in = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in);
    open_next();
    if (count == 0) {
        printf("ready 0\n");
        fflush(stdout);
    }
    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(epfd, evs, 1024, -1);
        for (int k = 0; k < n; k++) {
            uint64_t i = evs[k].data.u64;
            if (i == UINT64_MAX) {
                on_stdin();
                continue;
            }
            struct client *c = &clients[i];
            if (c->state == ST_CONNECTING && (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                on_writable(c, (long)i);
            else if (c->state != ST_CLOSED && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c, (long)i);
        }
    }
}
