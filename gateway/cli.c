/*
 * cli.c — the client commands of `almanac`: get, set, del, ls, sub, pub,
 * history, info. They speak the session protocol over TCP to a running
 * server (-s HOST:PORT, else ALMANAC_SERVER, else 127.0.0.1:8481); export
 * and import use its HTTP API (--http HOST:PORT, else ALMANAC_HTTP, else
 * 127.0.0.1:8480), where an import is checked whole before any of it is
 * applied. With --tls every connection speaks TLS (OpenSSL), the server's
 * certificate checked against --cafile or the system's trust store, and
 * its name against the host the CLI was given; the streams over it stay
 * FILEs (fopencookie).
 *
 * Output is for people by default (values as they are, one key per line);
 * --json prints the envelopes of API.md, one per line, made from the
 * server's own text so every digit of a number is kept.
 * Exit codes: 0 done, 1 the server said no (or went away), 2 usage or no
 * connection.
 */
#include "envelope.h"
#include "gateway.h"

#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct cli {
    FILE *in;  /* lines from the server */
    FILE *out; /* requests to the server */
    bool json;
    long long next_id;
    const char *token;  /* --token, or NULL */
    bool tls;           /* --tls: every connection */
    const char *cafile; /* --cafile, or NULL: the system's trust store */
};

/* A connection under one or two streams: its socket, and TLS over it with
 * --tls. The last stream closed frees it. */
struct cli__link {
    int fd;
    SSL *ssl;
    int streams;
};

static int cli__usage(void)
{
    fprintf(stderr, "usage: almanac [-s HOST:PORT] [--token T] [--tls] [--cafile FILE] [--json]\n"
                    "               COMMAND ...\n"
                    "  get KEY|PATTERN      print a value, or every entry matching a pattern\n"
                    "  set KEY VALUE|-      set a key (- reads the value from standard input)\n"
                    "  del KEY|PATTERN      delete a key, or every key matching a pattern\n"
                    "  ls [KEY]             list the children of a key (or of the root)\n"
                    "  sub PATTERN          print the matching entries, then every change\n"
                    "  pub KEY VALUE        publish a transient value\n"
                    "  history KEY|PATTERN [--start T] [--stop T] [--limit N] [--order asc|desc]\n"
                    "                       [--every D]  print the changes kept in history (T: µs\n"
                    "                       or RFC 3339; D: 10s, 5m, 1h; default limit 1000)\n"
                    "  export               print every entry as JSON lines (HTTP)\n"
                    "  import               apply JSON lines from standard input (HTTP)\n"
                    "  info                 print the server's $SYS keys\n"
                    "  token create NAME [--read P]... [--write P]... [--admin] [--expires D]\n"
                    "                       make an access token, print its secret (HTTP)\n"
                    "  token ls | token rm NAME   list tokens, revoke one (HTTP)\n"
                    "The server is -s HOST:PORT, else $ALMANAC_SERVER, else 127.0.0.1:8481;\n"
                    "for export and import, --http HOST:PORT, else $ALMANAC_HTTP, else\n"
                    "127.0.0.1:8480. --token T (else $ALMANAC_TOKEN) is the credential.\n"
                    "--tls (else $ALMANAC_TLS=1) speaks TLS to both, checking the server's\n"
                    "certificate against --cafile FILE (else $ALMANAC_CAFILE, else the\n"
                    "system's trust store) and its name against HOST; --cafile implies --tls.\n");
    return 2;
}

/* A connected socket to HOST:PORT (its HOST in `host`), or -1 (said on
 * stderr). */
static int cli__dial(const char *server, char host[256])
{
    const char *colon = strrchr(server, ':');
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (colon == NULL || (size_t)(colon - server) >= 256) {
        fprintf(stderr, "almanac: the server is HOST:PORT, not '%s'\n", server);
        return -1;
    }
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = '\0';
    int gai = getaddrinfo(host, colon + 1, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "almanac: %s: %s\n", server, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        fprintf(stderr, "almanac: cannot connect to %s: %s\n", server, strerror(errno));
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* TLS over `fd` to `host`: the certificate must verify against --cafile
 * (else the system's trust store) and name `host`, an IP literal as an
 * address, a name as a name (also sent as SNI). NULL when not (said on
 * stderr). */
static SSL *cli__tls(const struct cli *c, int fd, const char *host, const char *server)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (ctx == NULL) {
        fprintf(stderr, "almanac: TLS: cannot start TLS to %s\n", server);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (c->cafile != NULL ? SSL_CTX_load_verify_locations(ctx, c->cafile, NULL) != 1
                          : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        fprintf(stderr, "almanac: TLS: cannot read the certificates of %s\n",
                c->cafile ? c->cafile : "the system's trust store");
        goto fail;
    }
    if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 ||
        (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1 &&
         (SSL_set1_host(ssl, host) != 1 || SSL_set_tlsext_host_name(ssl, host) != 1))) {
        fprintf(stderr, "almanac: TLS: cannot start TLS to %s\n", server);
        goto fail;
    }
    ERR_clear_error(); /* what set1_ip_asc said of a name */
    if (SSL_connect(ssl) != 1) {
        long verify = SSL_get_verify_result(ssl);
        const char *reason = ERR_reason_error_string(ERR_get_error());
        if (verify != X509_V_OK)
            fprintf(stderr, "almanac: TLS: certificate verify failed for %s: %s\n", server,
                    X509_verify_cert_error_string(verify));
        else
            fprintf(stderr, "almanac: TLS: no TLS connection to %s: %s\n", server,
                    reason ? reason : "the server closed the connection");
        goto fail;
    }
    SSL_CTX_free(ctx); /* the SSL holds it */
    return ssl;
fail:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return NULL;
}

static ssize_t cli__link_read(void *cookie, char *buf, size_t len)
{
    struct cli__link *k = cookie;
    size_t n = 0;
    if (k->ssl == NULL)
        return read(k->fd, buf, len);
    if (SSL_read_ex(k->ssl, buf, len, &n) == 1)
        return (ssize_t)n;
    return SSL_get_error(k->ssl, 0) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

/* The bytes written; 0 is an error (fopencookie's rule). */
static ssize_t cli__link_write(void *cookie, const char *buf, size_t len)
{
    struct cli__link *k = cookie;
    size_t n = 0;
    if (k->ssl == NULL) {
        ssize_t w = write(k->fd, buf, len);
        return w < 0 ? 0 : w;
    }
    return SSL_write_ex(k->ssl, buf, len, &n) == 1 ? (ssize_t)n : 0;
}

/* No close_notify: every answer awaited has come, and the server may have
 * closed already, when a write would raise SIGPIPE. */
static int cli__link_close(void *cookie)
{
    struct cli__link *k = cookie;
    if (--k->streams > 0)
        return 0;
    SSL_free(k->ssl);
    close(k->fd);
    free(k);
    return 0;
}

static FILE *cli__stream(struct cli__link *k, const char *mode)
{
    cookie_io_functions_t io = {
        .read = cli__link_read, .write = cli__link_write, .close = cli__link_close};
    FILE *f = fopencookie(k, mode, io);
    if (f != NULL)
        k->streams++;
    return f;
}

/* A connection to `server` (TLS with --tls): `*in` and `*out` are streams
 * over it or, when `out` is NULL, `*in` is one "r+" stream. 0, or -1 (said
 * on stderr, but for running out of memory). */
static int cli__open(const struct cli *c, const char *server, FILE **in, FILE **out)
{
    char host[256];
    struct cli__link *k = calloc(1, sizeof *k);
    if (k == NULL || (k->fd = cli__dial(server, host)) < 0 ||
        (c->tls && (k->ssl = cli__tls(c, k->fd, host, server)) == NULL)) {
        if (k != NULL && k->fd >= 0)
            close(k->fd);
        free(k);
        return -1;
    }
    *in = cli__stream(k, out != NULL ? "r" : "r+");
    if (out != NULL)
        *out = cli__stream(k, "w");
    return *in != NULL && (out == NULL || *out != NULL) ? 0 : -1;
}

/* One HTTP request whose body, if any, is streamed from `in` in chunks (so
 * an import of any size needs no memory here); the answer's body goes to
 * `out`. HTTP/1.0 without a body, so that no chunked answer needs undoing
 * (an answer to a body is short, with a length). The status, or -1 when the
 * server could not be reached. */
static int cli__http(const struct cli *c, const char *server, const char *method, const char *path,
                     FILE *in, FILE *out)
{
    FILE *f;
    if (cli__open(c, server, &f, NULL) != 0)
        return -1;
    char line[1024];
    fprintf(f, "%s %s HTTP/1.%d\r\nHost: %s\r\n", method, path, in ? 1 : 0, server);
    if (c->token != NULL)
        fprintf(f, "Authorization: Bearer %s\r\n", c->token);
    if (in == NULL)
        fputs("\r\n", f);
    else {
        fputs("Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n", f);
        char chunk[65536];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, in)) > 0 && !ferror(f)) {
            fprintf(f, "%zx\r\n", n);
            fwrite(chunk, 1, n, f);
            fputs("\r\n", f);
        }
        fputs("0\r\n\r\n", f);
    }
    fflush(f);
    int status = -1;
    if (fgets(line, sizeof line, f) == NULL || sscanf(line, "HTTP/%*s %d", &status) != 1) {
        fprintf(stderr, "almanac: %s did not answer over HTTP\n", server);
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL && strcmp(line, "\r\n") != 0)
        ;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, out);
    fclose(f);
    return status;
}

/* The next line from the server (malloc'd, without its newline), or NULL. */
static char *cli__line(struct cli *c)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, c->in);
    if (n <= 0) {
        free(line);
        return NULL;
    }
    if (line[n - 1] == '\n')
        line[n - 1] = '\0';
    return line;
}

/* Sends a request (its "id" added) and returns the reply's text and JSON,
 * or -1 when the connection is gone. */
static int cli__request(struct cli *c, json_t *req, char **text, json_t **reply)
{
    long long id = ++c->next_id;
    json_object_set_new(req, "id", json_integer(id));
    char *s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (s == NULL || fprintf(c->out, "%s\n", s) < 0 || fflush(c->out) != 0) {
        free(s);
        return -1;
    }
    free(s);
    for (;;) {
        char *line = cli__line(c);
        if (line == NULL)
            return -1;
        json_t *j = json_loads(line, JSON_ALLOW_NUL, NULL);
        json_t *jid = json_object_get(j, "id");
        const char *type = json_string_value(json_object_get(j, "type"));
        if (json_is_integer(jid) && json_integer_value(jid) == id && type != NULL &&
            strcmp(type, "event") != 0) {
            *text = line;
            *reply = j;
            return 0;
        }
        json_decref(j);
        free(line);
    }
}

/* Prints a reply that is an error; returns 1 for it, 0 for any other. */
static int cli__failed(json_t *reply)
{
    if (strcmp(json_string_value(json_object_get(reply, "type")), "error") != 0)
        return 0;
    fprintf(stderr, "almanac: %s: %s\n", json_string_value(json_object_get(reply, "error")),
            json_string_value(json_object_get(reply, "message")));
    return 1;
}

/* Prints the API envelope in a server message: its own "type" and "id" (or
 * "sub") go, and "content_type" is named "type" again. */
static void cli__print_envelope(const char *msg)
{
    const char *key = strstr(msg, "\"key\":");
    const char *ct = strstr(msg, ",\"content_type\":");
    if (key == NULL)
        return;
    if (ct == NULL) /* a deletion */
        printf("{%s\n", key);
    else
        printf("{%.*s,\"type\":%s\n", (int)(ct - key), key, ct + strlen(",\"content_type\":"));
}

/* Prints an entry for people: the value as it is; bytes raw when `raw`. */
static void cli__print_value(json_t *e, bool raw)
{
    json_t *v = json_object_get(e, "value");
    const char *text = json_string_value(json_object_get(e, "text"));
    const char *b64 = json_string_value(json_object_get(e, "base64"));
    if (v != NULL) {
        char *s = envelope_dump_json(v);
        printf("%s\n", s ? s : "");
        free(s);
    } else if (text != NULL) {
        fwrite(text, 1, json_string_length(json_object_get(e, "text")), stdout);
        putchar('\n');
    } else if (b64 != NULL && raw) {
        size_t n = strlen(b64);
        unsigned char *bytes = malloc(n / 4 * 3 + 3);
        int len = bytes ? EVP_DecodeBlock(bytes, (const unsigned char *)b64, (int)n) : -1;
        if (len >= 0) {
            len -= (n > 0 && b64[n - 1] == '=') + (n > 1 && b64[n - 2] == '=');
            fwrite(bytes, 1, (size_t)len, stdout);
        }
        free(bytes);
    } else if (b64 != NULL) {
        size_t n = strlen(b64);
        size_t pad = (size_t)((n > 0 && b64[n - 1] == '=') + (n > 1 && b64[n - 2] == '='));
        printf("<%zu bytes of %s>\n", n / 4 * 3 - pad,
               json_string_value(json_object_get(e, "content_type")));
    }
}

static void cli__print_entry(struct cli *c, const char *text, json_t *e)
{
    if (c->json && text != NULL) {
        cli__print_envelope(text);
        return;
    }
    if (json_is_true(json_object_get(e, "deleted"))) {
        printf("%s (deleted)\n", json_string_value(json_object_get(e, "key")));
        return;
    }
    printf("%s = ", json_string_value(json_object_get(e, "key")));
    cli__print_value(e, false);
}

static json_t *cli__value_request(const char *type, const char *key, const char *value, size_t len)
{
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (b64 == NULL)
        return NULL;
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)value, (int)len);
    json_t *req = json_pack("{s:s, s:s, s:s}", "type", type, "key", key, "base64", b64);
    free(b64);
    return req;
}

/* Reads all of standard input into a new buffer. */
static char *cli__stdin(size_t *len)
{
    size_t cap = 4096;
    char *buf = malloc(cap);
    *len = 0;
    while (buf != NULL) {
        size_t n = fread(buf + *len, 1, cap - *len, stdin);
        *len += n;
        if (n == 0)
            break;
        if (*len == cap) {
            char *p = realloc(buf, cap *= 2);
            if (p == NULL)
                free(buf);
            buf = p;
        }
    }
    return buf;
}

/* Prints an entry of a session answer (content_type) as an envelope (type). */
static void cli__print_session_envelope(json_t *e)
{
    json_t *copy = json_deep_copy(e);
    if (json_object_get(copy, "content_type") != NULL) {
        json_object_set(copy, "type", json_object_get(copy, "content_type"));
        json_object_del(copy, "content_type");
    }
    char *s = envelope_dump_json(copy);
    printf("%s\n", s ? s : "");
    free(s);
    json_decref(copy);
}

static int cli__export(const struct cli *c, const char *server)
{
    int status = cli__http(c, server, "GET", "/api/v1/export", NULL, stdout);
    return status == 200 ? 0 : status < 0 ? 2 : 1;
}

static int cli__import(const struct cli *c, const char *server)
{
    char *answer = NULL;
    size_t alen = 0;
    FILE *mem = open_memstream(&answer, &alen);
    int status = mem ? cli__http(c, server, "POST", "/api/v1/import", stdin, mem) : -1;
    if (mem)
        fclose(mem);
    json_t *reply = answer ? json_loadb(answer, alen, 0, NULL) : NULL;
    int rc = status == 200 ? 0 : status < 0 ? 2 : 1;
    if (status == 200)
        printf("imported %lld\n",
               (long long)json_integer_value(json_object_get(reply, "imported")));
    else if (status > 0) /* an HTTP error: {"error","message"} */
        fprintf(stderr, "almanac: %s: %s\n",
                json_string_value(json_object_get(reply, "error")) ?: "error",
                json_string_value(json_object_get(reply, "message")) ?: answer ?: "");
    json_decref(reply);
    free(answer);
    return rc;
}

static int cli__get(struct cli *c, const char *arg)
{
    char why[256], *text;
    bool wild;
    json_t *reply;
    if (store_pattern_check(arg, strlen(arg), SIZE_MAX, &wild, why, sizeof why) != STORE_OK) {
        fprintf(stderr, "almanac: %s\n", why);
        return 2;
    }
    if (!wild) {
        if (cli__request(c, json_pack("{s:s,s:s}", "type", "get", "key", arg), &text, &reply) != 0)
            return -1;
        int rc = cli__failed(reply);
        if (rc == 0 && c->json)
            cli__print_envelope(text);
        else if (rc == 0)
            cli__print_value(reply, true);
        json_decref(reply);
        free(text);
        return rc;
    }
    char *after = NULL;
    for (;;) {
        json_t *req = json_pack("{s:s,s:s,s:i}", "type", "pget", "pattern", arg, "limit", 1000);
        if (after != NULL)
            json_object_set_new(req, "after", json_string(after));
        free(after);
        after = NULL;
        if (cli__request(c, req, &text, &reply) != 0)
            return -1;
        int rc = cli__failed(reply);
        if (rc != 0) {
            json_decref(reply);
            free(text);
            return rc;
        }
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(reply, "entries"), i, e)
        {
            if (c->json) /* as an envelope: the content type is "type" again */
                cli__print_session_envelope(e);
            else
                cli__print_entry(c, NULL, e);
        }
        const char *next = json_string_value(json_object_get(reply, "next"));
        after = next ? strdup(next) : NULL;
        json_decref(reply);
        free(text);
        if (after == NULL)
            return 0;
    }
}

struct cli__history {
    const char *start, *stop, *order, *every;
    long long limit;
};

static int cli__history(struct cli *c, const char *pattern, const struct cli__history *o)
{
    long long after = 0, left = o->limit;
    while (left > 0) {
        char *text;
        json_t *reply, *req = json_pack("{s:s,s:s,s:I}", "type", "history", "pattern", pattern,
                                        "limit", (json_int_t)(left < 10000 ? left : 10000));
        const char *names[] = {"start", "stop", "order", "every"};
        const char *values[] = {o->start, o->stop, o->order, o->every};
        for (size_t i = 0; i < 4; i++)
            if (values[i] != NULL)
                json_object_set_new(req, names[i], json_string(values[i]));
        if (after > 0)
            json_object_set_new(req, "after", json_integer(after));
        if (cli__request(c, req, &text, &reply) != 0)
            return -1;
        int rc = cli__failed(reply);
        size_t i;
        json_t *e;
        json_array_foreach(rc == 0 ? json_object_get(reply, "records") : NULL, i, e)
        {
            if (c->json) {
                cli__print_session_envelope(e);
                continue;
            }
            char when[64];
            time_t sec = (time_t)(json_integer_value(json_object_get(e, "ts")) / 1000000);
            struct tm tm;
            gmtime_r(&sec, &tm);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("%s rev %lld ", when, (long long)json_integer_value(json_object_get(e, "rev")));
            if (json_is_true(json_object_get(e, "deleted")))
                printf("%s deleted\n", json_string_value(json_object_get(e, "key")));
            else
                cli__print_entry(c, NULL, e);
            left--;
        }
        after = json_integer_value(json_object_get(reply, "next"));
        json_decref(reply);
        free(text);
        if (rc != 0)
            return rc;
        if (after == 0)
            break;
    }
    return 0;
}

static int cli__simple(struct cli *c, json_t *req, const char *what)
{
    char *text;
    json_t *reply;
    if (cli__request(c, req, &text, &reply) != 0)
        return -1;
    int rc = cli__failed(reply);
    if (rc == 0 && c->json)
        printf("%s\n", text);
    else if (rc == 0 && strcmp(what, "set") == 0)
        printf("rev %lld\n", (long long)json_integer_value(json_object_get(reply, "rev")));
    else if (rc == 0 && strcmp(what, "del") == 0)
        printf("deleted %lld\n", (long long)json_integer_value(json_object_get(reply, "deleted")));
    else if (rc == 0 && strcmp(what, "ls") == 0) {
        size_t i;
        json_t *ch;
        json_array_foreach(json_object_get(reply, "children"), i, ch)
        {
            const char *name = json_string_value(json_object_get(ch, "name"));
            if (json_is_true(json_object_get(ch, "value")))
                printf("%s\n", name);
            if (json_is_true(json_object_get(ch, "children")))
                printf("%s/\n", name);
        }
    }
    json_decref(reply);
    free(text);
    return rc;
}

/* One HTTP request with a JSON answer: 0 with `*reply` (a new reference),
 * 1 after saying the server's error on stderr, 2 when unreachable. */
static int cli__http_json(const struct cli *c, const char *http, const char *method,
                          const char *path, const char *body, json_t **reply)
{
    char *answer = NULL;
    size_t alen = 0;
    FILE *mem = open_memstream(&answer, &alen);
    FILE *in = body ? fmemopen((void *)body, strlen(body), "r") : NULL;
    int status = mem && (body == NULL || in) ? cli__http(c, http, method, path, in, mem) : -1;
    if (in)
        fclose(in);
    if (mem)
        fclose(mem);
    *reply = answer ? json_loadb(answer, alen, 0, NULL) : NULL;
    free(answer);
    if (status >= 200 && status < 300)
        return 0;
    if (status > 0)
        fprintf(stderr, "almanac: %s: %s\n",
                json_string_value(json_object_get(*reply, "error")) ?: "error",
                json_string_value(json_object_get(*reply, "message")) ?: "");
    json_decref(*reply);
    *reply = NULL;
    return status < 0 ? 2 : 1;
}

/* almanac token create NAME [--read P]... [--write P]... [--admin]
 * [--expires D] | ls | rm NAME, over HTTP. */
static int cli__token(const struct cli *c, const char *http, int argc, char **argv)
{
    json_t *reply = NULL;
    int rc;
    if (argc >= 1 && strcmp(argv[0], "ls") == 0 && argc == 1) {
        if ((rc = cli__http_json(c, http, "GET", "/api/v1/tokens", NULL, &reply)) != 0)
            return rc;
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(reply, "tokens"), i, t)
        {
            char *read = json_dumps(json_object_get(t, "read"), JSON_COMPACT);
            char *write = json_dumps(json_object_get(t, "write"), JSON_COMPACT);
            if (c->json)
                json_dumpf(t, stdout, JSON_COMPACT), putchar('\n');
            else
                printf("%s read %s write %s%s\n", json_string_value(json_object_get(t, "name")),
                       read, write, json_is_true(json_object_get(t, "admin")) ? " admin" : "");
            free(read);
            free(write);
        }
    } else if (argc == 2 && strcmp(argv[0], "rm") == 0) {
        char path[512];
        snprintf(path, sizeof path, "/api/v1/tokens/%s", argv[1]);
        if ((rc = cli__http_json(c, http, "DELETE", path, NULL, &reply)) != 0)
            return rc;
        printf("revoked %s\n", argv[1]);
    } else if (argc >= 2 && strcmp(argv[0], "create") == 0) {
        json_t *req =
            json_pack("{s:s,s:[],s:[],s:b}", "name", argv[1], "read", "write", "admin", 0);
        for (int i = 2; i < argc; i++) {
            if ((strcmp(argv[i], "--read") == 0 || strcmp(argv[i], "--write") == 0) &&
                i + 1 < argc) {
                json_array_append_new(json_object_get(req, argv[i] + 2), json_string(argv[i + 1]));
                i++;
            } else if (strcmp(argv[i], "--admin") == 0)
                json_object_set_new(req, "admin", json_true());
            else if (strcmp(argv[i], "--expires") == 0 && i + 1 < argc)
                json_object_set_new(req, "expires", json_string(argv[++i]));
            else {
                json_decref(req);
                return cli__usage();
            }
        }
        char *body = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        rc = body ? cli__http_json(c, http, "POST", "/api/v1/tokens", body, &reply) : 2;
        free(body);
        if (rc != 0)
            return rc;
        /* The secret, once: the only line on stdout, for a script to keep. */
        printf("%s\n", json_string_value(json_object_get(reply, "token")));
    } else
        return cli__usage();
    json_decref(reply);
    return 0;
}

/* Presents the token: 0, 1 when refused (said on stderr), -1 when gone. */
static int cli__auth(struct cli *c, const char *token)
{
    char *text;
    json_t *reply;
    if (cli__request(c, json_pack("{s:s,s:s}", "type", "auth", "token", token), &text, &reply) != 0)
        return -1;
    int rc = cli__failed(reply);
    json_decref(reply);
    free(text);
    return rc;
}

static int cli__sub(struct cli *c, const char *pattern)
{
    char *text;
    json_t *reply;
    if (cli__request(c, json_pack("{s:s,s:s}", "type", "subscribe", "pattern", pattern), &text,
                     &reply) != 0)
        return -1;
    int rc = cli__failed(reply);
    json_decref(reply);
    free(text);
    if (rc != 0)
        return rc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        char *line = cli__line(c);
        if (line == NULL) {
            fprintf(stderr, "almanac: the server closed the connection\n");
            return 1;
        }
        json_t *m = json_loads(line, JSON_ALLOW_NUL, NULL);
        const char *type = json_string_value(json_object_get(m, "type"));
        if (type != NULL && strcmp(type, "event") == 0)
            cli__print_entry(c, line, m);
        else if (type != NULL && strcmp(type, "sync") == 0)
            fprintf(stderr, "almanac: in sync at rev %lld; changes follow\n",
                    (long long)json_integer_value(json_object_get(m, "rev")));
        else if (type != NULL && strcmp(type, "error") == 0) {
            cli__failed(m);
            json_decref(m);
            free(line);
            return 1;
        }
        json_decref(m);
        free(line);
    }
}

int cli_main(int argc, char **argv)
{
    const char *server = getenv("ALMANAC_SERVER"), *http = getenv("ALMANAC_HTTP");
    const char *tls = getenv("ALMANAC_TLS");
    struct cli c = {.token = getenv("ALMANAC_TOKEN"),
                    .tls = tls != NULL && strcmp(tls, "1") == 0,
                    .cafile = getenv("ALMANAC_CAFILE")};
    struct cli__history hist = {.limit = 1000};
    int i = 1, rc;

    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        if ((strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "--server") == 0) && i + 1 < argc)
            server = argv[++i];
        else if (strcmp(argv[i], "--http") == 0 && i + 1 < argc)
            http = argv[++i];
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            c.token = argv[++i];
        else if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
            c.cafile = argv[++i], c.tls = true; /* a CA is only for TLS */
        else if (strcmp(argv[i], "--tls") == 0)
            c.tls = true;
        else if (strcmp(argv[i], "--json") == 0)
            c.json = true;
        else
            return cli__usage();
    }
    if (i == argc)
        return cli__usage();
    const char *cmd = argv[i++];
    if (strcmp(cmd, "token") == 0)
        return cli__token(&c, http ? http : "127.0.0.1:8480", argc - i, argv + i);
    /* Flags may follow the command too: almanac get --json a/b. */
    int n = 0;
    char *args[3];
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c.json = true;
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            server = argv[++i];
        else if (strcmp(argv[i], "--http") == 0 && i + 1 < argc)
            http = argv[++i];
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            c.token = argv[++i];
        else if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
            c.cafile = argv[++i], c.tls = true; /* a CA is only for TLS */
        else if (strcmp(argv[i], "--tls") == 0)
            c.tls = true;
        else if (strcmp(argv[i], "--start") == 0 && i + 1 < argc)
            hist.start = argv[++i];
        else if (strcmp(argv[i], "--stop") == 0 && i + 1 < argc)
            hist.stop = argv[++i];
        else if (strcmp(argv[i], "--order") == 0 && i + 1 < argc)
            hist.order = argv[++i];
        else if (strcmp(argv[i], "--every") == 0 && i + 1 < argc)
            hist.every = argv[++i];
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            char *end;
            hist.limit = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || hist.limit < 1)
                return cli__usage();
        } else if (n < 3)
            args[n++] = argv[i];
        else
            return cli__usage();
    }
    bool known = strcmp(cmd, "get") == 0 || strcmp(cmd, "set") == 0 || strcmp(cmd, "del") == 0 ||
                 strcmp(cmd, "ls") == 0 || strcmp(cmd, "sub") == 0 || strcmp(cmd, "pub") == 0 ||
                 strcmp(cmd, "info") == 0 || strcmp(cmd, "history") == 0 ||
                 strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0;
    bool none =
        strcmp(cmd, "info") == 0 || strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0;
    int want = strcmp(cmd, "set") == 0 || strcmp(cmd, "pub") == 0 ? 2 : none ? 0 : 1;
    if (!known || (strcmp(cmd, "ls") == 0 ? n > 1 : n != want))
        return cli__usage();
    if (strcmp(cmd, "export") == 0)
        return cli__export(&c, http ? http : "127.0.0.1:8480");
    if (strcmp(cmd, "import") == 0)
        return cli__import(&c, http ? http : "127.0.0.1:8480");
    if (cli__open(&c, server ? server : "127.0.0.1:8481", &c.in, &c.out) != 0)
        return 2;
    char *welcome = cli__line(&c);
    free(welcome);
    if (c.token != NULL && (rc = cli__auth(&c, c.token)) != 0)
        ; /* said on stderr */
    else if (strcmp(cmd, "get") == 0)
        rc = cli__get(&c, args[0]);
    else if (strcmp(cmd, "info") == 0)
        rc = cli__get(&c, "$SYS/#");
    else if (strcmp(cmd, "sub") == 0)
        rc = cli__sub(&c, args[0]);
    else if (strcmp(cmd, "history") == 0)
        rc = cli__history(&c, args[0], &hist);
    else if (strcmp(cmd, "del") == 0)
        rc = cli__simple(&c, json_pack("{s:s,s:s}", "type", "delete", "key", args[0]), "del");
    else if (strcmp(cmd, "ls") == 0) {
        json_t *req = json_pack("{s:s}", "type", "ls");
        if (n == 1)
            json_object_set_new(req, "key", json_string(args[0]));
        rc = cli__simple(&c, req, "ls");
    } else {
        size_t len = 0;
        char *value = strcmp(args[1], "-") == 0 ? cli__stdin(&len) : strdup(args[1]);
        if (value == NULL)
            return 2;
        if (strcmp(args[1], "-") != 0)
            len = strlen(value);
        rc = cli__simple(
            &c,
            cli__value_request(strcmp(cmd, "set") == 0 ? "set" : "publish", args[0], value, len),
            cmd);
        if (rc == 0 && !c.json && strcmp(cmd, "pub") == 0)
            printf("published\n");
        free(value);
    }
    if (rc < 0) {
        fprintf(stderr, "almanac: the server closed the connection\n");
        rc = 1;
    }
    fclose(c.in);
    fclose(c.out);
    return rc;
}
