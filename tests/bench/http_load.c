/*
 * http_load.c — the HTTP PUT load generator of the blob ingest benchmark.
 * wrk builds each request body in Lua, which at 256 KiB a request sets the
 * pace itself (about 180 MB/s here); this sends each body straight from a
 * mapped file, so the server is what is measured.
 *
 *   http_load PORT SECONDS CONNECTIONS FILE BYTES KEYS
 *       CONNECTIONS threads, each on one keep-alive connection, PUT values
 *       of BYTES bytes (slices of FILE, a different one each time) to
 *       /api/v1/keys/cam/<n>/frame, n over KEYS keys (each connection its
 *       own ones when KEYS >= CONNECTIONS), for SECONDS; prints "<acknowledged PUTs> <seconds>
 *       <p50 µs> <p99 µs>". Any answer but 200 or 201 ends it with status 1.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (1 << 20)

static int port, seconds, conns, keys;
static size_t bytes, file_len;
static const unsigned char *file;
static double t_end;

struct worker {
    pthread_t thread;
    int id;
    long done;
    unsigned *lat_us; /* MAX_SAMPLES at most */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void send_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0)
            die("http_load: write");
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++, n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
}

/* Reads one answer (headers and a Content-Length body); its status. */
static int read_answer(int fd, char *buf, size_t cap)
{
    size_t have = 0;
    char *end;
    for (;;) {
        ssize_t r = read(fd, buf + have, cap - 1 - have);
        if (r <= 0)
            die("http_load: read");
        have += (size_t)r;
        buf[have] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")) != NULL)
            break;
        if (have == cap - 1) {
            fprintf(stderr, "http_load: headers too long\n");
            exit(1);
        }
    }
    int status = atoi(buf + 9);
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    size_t body = cl ? strtoul(cl + 17, NULL, 10) : 0;
    size_t got = have - (size_t)(end + 4 - buf);
    while (got < body) {
        ssize_t r = read(fd, buf, cap);
        if (r <= 0)
            die("http_load: read");
        got += (size_t)r;
    }
    return status;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("http_load: connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t slices = (file_len - bytes) / 4096 + 1;
    char head[256], answer[4096];
    for (long n = 0; now() < t_end; n++) {
        /* connection i writes keys i, i + CONNECTIONS, ... (all of them
         * between the connections; each its own when there are enough) */
        int key = (int)((w->id + (long)conns * n) % keys);
        /* a different slice each time, 4 KiB apart, walking the file */
        size_t off = ((size_t)(w->id * 7919 + n) * 61 % slices) * 4096;
        int hl = snprintf(head, sizeof head,
                          "PUT /api/v1/keys/cam/%d/frame HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                          "Content-Type: application/octet-stream\r\nContent-Length: %zu\r\n\r\n",
                          key, port, bytes);
        struct iovec iov[2] = {{head, (size_t)hl}, {(void *)(file + off), bytes}};
        double t = now();
        send_all(fd, iov, 2);
        int status = read_answer(fd, answer, sizeof answer);
        if (status != 200 && status != 201) {
            fprintf(stderr, "http_load: PUT answered %d\n", status);
            exit(1);
        }
        if (w->done < MAX_SAMPLES)
            w->lat_us[w->done] = (unsigned)((now() - t) * 1e6);
        w->done++;
    }
    close(fd);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: http_load PORT SECONDS CONNECTIONS FILE BYTES KEYS\n");
        return 2;
    }
    port = atoi(argv[1]), seconds = atoi(argv[2]), conns = atoi(argv[3]);
    bytes = strtoul(argv[5], NULL, 10), keys = atoi(argv[6]);
    int fd = open(argv[4], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        die("http_load: open");
    file_len = (size_t)st.st_size;
    if (conns < 1 || keys < 1 || bytes == 0 || bytes > file_len) {
        fprintf(stderr, "http_load: bad arguments\n");
        return 2;
    }
    file = mmap(NULL, file_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (file == MAP_FAILED)
        die("http_load: mmap");
    struct worker *w = calloc((size_t)conns, sizeof *w);
    double t0 = now();
    t_end = t0 + seconds;
    for (int i = 0; i < conns; i++) {
        w[i].id = i;
        w[i].lat_us = malloc(MAX_SAMPLES * sizeof *w[i].lat_us);
        if (w[i].lat_us == NULL || pthread_create(&w[i].thread, NULL, run, &w[i]) != 0)
            die("http_load: thread");
    }
    long total = 0, samples = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(w[i].thread, NULL);
        total += w[i].done;
    }
    double elapsed = now() - t0;
    unsigned *all = malloc((size_t)conns * MAX_SAMPLES * sizeof *all);
    for (int i = 0; i < conns; i++)
        for (long j = 0; j < w[i].done && j < MAX_SAMPLES; j++)
            all[samples++] = w[i].lat_us[j];
    qsort(all, (size_t)samples, sizeof *all, cmp);
    printf("%ld %.3f %u %u\n", total, elapsed, samples ? all[samples / 2] : 0,
           samples ? all[samples * 99 / 100] : 0);
    return 0;
}
