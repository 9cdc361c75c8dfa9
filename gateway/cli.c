/*
 * cli.c — the client commands of `almanac`: get, set, del, ls, sub, pub,
 * history, info over the session protocol (-s HOST:PORT, else
 * ALMANAC_SERVER, else 127.0.0.1:8481), and export, import and token over
 * the HTTP API (--http HOST:PORT, else ALMANAC_HTTP, else 127.0.0.1:8480).
 * Every byte on the wire is libalmanac's (clients/c/almanac.h): this file
 * reads the command line and prints; it holds no protocol of its own.
 *
 * Output is for people by default (values as they are, one key per line);
 * --json prints the envelopes of API.md, one per line, as the server wrote
 * them (every digit of a number kept).
 * Exit codes: 0 done, 1 the server said no (or went away), 2 usage or no
 * connection.
 */
#include "almanac.h"
#include "gateway.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cli {
    struct almanac *a;
    bool json;
    struct almanac_options opts; /* token, TLS, the HTTP server */
};

static int cli__usage(void)
{
    help_commands(stderr);
    return 2;
}

/* Says why a call failed; the exit code: 1 when the server refused or went
 * away, 2 when there was no connection (or a bad argument). */
static int cli__failed(const struct almanac *a, int rc)
{
    if (rc == ALMANAC_OK)
        return 0;
    if (almanac_server_error(a) != NULL)
        fprintf(stderr, "almanac: %s: %s\n", almanac_server_error(a), almanac_errmsg(a));
    else
        fprintf(stderr, "almanac: %s\n", almanac_errmsg(a));
    return rc == ALMANAC_ECONNECT || rc == ALMANAC_ETLS || rc == ALMANAC_EINVAL ||
                   rc == ALMANAC_ENOMEM || rc == ALMANAC_EPROTO
               ? 2
               : 1;
}

/* Prints a value for people: text and JSON with a newline; bytes as they
 * are when `raw`, else as their size and type. */
static void cli__print_value(const struct almanac_entry *e, bool raw)
{
    if (e->is_text) {
        fwrite(e->value, 1, e->value_len, stdout);
        putchar('\n');
    } else if (raw)
        fwrite(e->value, 1, e->value_len, stdout);
    else
        printf("<%zu bytes of %s>\n", e->value_len, e->content_type);
}

/* An entry of a list or an event: its envelope with --json, else
 * "key = value" or "key (deleted)". */
static void cli__print_entry(const struct cli *c, const struct almanac_entry *e)
{
    if (c->json)
        printf("%s\n", e->json);
    else if (e->deleted)
        printf("%s (deleted)\n", e->key);
    else {
        printf("%s = ", e->key);
        cli__print_value(e, false);
    }
}

static int cli__print_listed(void *arg, const struct almanac_entry *e)
{
    cli__print_entry(arg, e);
    return 0;
}

static int cli__get(struct cli *c, const char *arg)
{
    char why[256];
    bool wild;
    if (store_pattern_check(arg, strlen(arg), SIZE_MAX, &wild, why, sizeof why) != STORE_OK) {
        fprintf(stderr, "almanac: %s\n", why);
        return 2;
    }
    if (wild)
        return cli__failed(c->a, almanac_pget(c->a, arg, NULL, cli__print_listed, c));
    struct almanac_entry *e;
    int rc = almanac_get(c->a, arg, &e);
    if (rc != ALMANAC_OK)
        return cli__failed(c->a, rc);
    if (c->json)
        printf("%s\n", e->json);
    else
        cli__print_value(e, true);
    almanac_entry_free(e);
    return 0;
}

static int cli__print_record(void *arg, const struct almanac_entry *e)
{
    const struct cli *c = arg;
    char when[64];
    struct tm tm;
    time_t sec = (time_t)(e->ts / 1000000);
    if (c->json) {
        printf("%s\n", e->json);
        return 0;
    }
    gmtime_r(&sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%s rev %lld ", when, (long long)e->rev);
    if (e->deleted)
        printf("%s deleted\n", e->key);
    else
        cli__print_entry(c, e);
    return 0;
}

static int cli__print_child(void *arg, const struct almanac_child *ch)
{
    const struct cli *c = arg;
    if (c->json) {
        json_t *j = json_pack("{s:s,s:b,s:b}", "name", ch->name, "value", ch->value, "children",
                              ch->children);
        if (j != NULL && ch->keys >= 0)
            json_object_set_new(j, "keys", json_integer(ch->keys));
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        printf("%s\n", s ? s : "");
        free(s);
        json_decref(j);
        return 0;
    }
    if (ch->value)
        printf("%s\n", ch->name);
    if (ch->children)
        printf("%s/\n", ch->name);
    return 0;
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

/* set and pub: the value is the argument, or standard input for "-". */
static int cli__write(struct cli *c, const char *cmd, const char *key, const char *arg)
{
    size_t len = strlen(arg);
    char *value = strcmp(arg, "-") == 0 ? cli__stdin(&len) : strdup(arg);
    int64_t rev = 0;
    int rc;
    if (value == NULL)
        return 2;
    if (strcmp(cmd, "set") == 0)
        rc = almanac_set(c->a, key, value, len, NULL, &rev);
    else
        rc = almanac_publish(c->a, key, value, len, NULL);
    free(value);
    if (rc != ALMANAC_OK)
        return cli__failed(c->a, rc);
    json_t *j = strcmp(cmd, "set") == 0 ? json_pack("{s:s,s:I}", "key", key, "rev", (json_int_t)rev)
                                        : json_pack("{s:s,s:b}", "key", key, "published", 1);
    char *s = c->json && j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (c->json)
        printf("%s\n", s ? s : "");
    else if (strcmp(cmd, "set") == 0)
        printf("rev %lld\n", (long long)rev);
    else
        printf("published\n");
    free(s);
    json_decref(j);
    return 0;
}

static int cli__del(struct cli *c, const char *arg)
{
    uint64_t deleted = 0;
    int rc = almanac_delete(c->a, arg, ALMANAC_ANY_REV, &deleted);
    if (rc != ALMANAC_OK)
        return cli__failed(c->a, rc);
    if (c->json)
        printf("{\"deleted\":%llu}\n", (unsigned long long)deleted);
    else
        printf("deleted %llu\n", (unsigned long long)deleted);
    return 0;
}

/* Prints the matching entries, the sync (on stderr), then every change,
 * until the server ends the connection or the subscription. */
static int cli__sub(struct cli *c, const char *pattern)
{
    unsigned sub;
    int rc = almanac_subscribe(c->a, pattern, NULL, &sub);
    if (rc != ALMANAC_OK)
        return cli__failed(c->a, rc);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        const struct almanac_event *ev;
        if ((rc = almanac_next_event(c->a, -1, &ev)) != ALMANAC_OK)
            return cli__failed(c->a, rc);
        if (ev->type == ALMANAC_EVENT_PUT || ev->type == ALMANAC_EVENT_DELETE)
            cli__print_entry(c, ev->entry);
        else if (ev->type == ALMANAC_EVENT_SYNC)
            fprintf(stderr, "almanac: in sync at rev %lld; changes follow\n", (long long)ev->rev);
        else if (ev->type == ALMANAC_EVENT_END) {
            fprintf(stderr, "almanac: %s: %s\n", almanac_strerror(ev->error),
                    ev->message ? ev->message : "");
            return 1;
        }
    }
}

static int cli__stdout(void *arg, const void *buf, size_t len)
{
    (void)arg;
    return fwrite(buf, 1, len, stdout) == len ? 0 : -1;
}

static int cli__memory(void *arg, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, arg) == len ? 0 : -1;
}

static ssize_t cli__read_stdin(void *arg, void *buf, size_t cap)
{
    (void)arg;
    size_t n = fread(buf, 1, cap, stdin);
    return n == 0 && ferror(stdin) ? -1 : (ssize_t)n;
}

/* An HTTP request whose JSON answer is `*reply` (a new reference). */
static int cli__http_json(struct cli *c, const char *method, const char *path, almanac_read_fn body,
                          json_t **reply)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (mem == NULL)
        return 2;
    int rc = almanac_http(c->a, method, path, body, NULL, cli__memory, mem, NULL);
    fclose(mem);
    *reply = rc == ALMANAC_OK ? json_loadb(text, len, 0, NULL) : NULL;
    free(text);
    return cli__failed(c->a, rc);
}

/* almanac token create NAME [--read P]... [--write P]... [--admin]
 * [--expires D] | ls | rm NAME, over HTTP. */
static int cli__token(struct cli *c, int argc, char **argv)
{
    int rc;
    if (argc == 1 && strcmp(argv[0], "ls") == 0) {
        json_t *reply, *t;
        size_t i;
        if ((rc = cli__http_json(c, "GET", "/api/v1/tokens", NULL, &reply)) != 0)
            return rc;
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
        json_decref(reply);
        return 0;
    }
    if (argc == 2 && strcmp(argv[0], "rm") == 0) {
        if ((rc = almanac_token_revoke(c->a, argv[1])) != ALMANAC_OK)
            return cli__failed(c->a, rc);
        printf("revoked %s\n", argv[1]);
        return 0;
    }
    if (argc < 2 || strcmp(argv[0], "create") != 0)
        return cli__usage();
    const char **read = calloc((size_t)argc, sizeof *read),
               **write = calloc((size_t)argc, sizeof *write);
    struct almanac_token_spec spec = {.name = argv[1], .read = read, .write = write};
    char *secret = NULL;
    rc = read && write ? 0 : 2;
    for (int i = 2; i < argc && rc == 0; i++) {
        if (strcmp(argv[i], "--read") == 0 && i + 1 < argc)
            read[spec.nread++] = argv[++i];
        else if (strcmp(argv[i], "--write") == 0 && i + 1 < argc)
            write[spec.nwrite++] = argv[++i];
        else if (strcmp(argv[i], "--admin") == 0)
            spec.admin = true;
        else if (strcmp(argv[i], "--expires") == 0 && i + 1 < argc)
            spec.expires = argv[++i];
        else
            rc = cli__usage();
    }
    if (rc == 0)
        rc = cli__failed(c->a, almanac_token_create(c->a, &spec, &secret));
    if (rc == 0) /* the secret, once: the only line on stdout, for a script to keep */
        printf("%s\n", secret);
    if (secret != NULL)
        memset(secret, 0, strlen(secret));
    free(secret);
    free(read);
    free(write);
    return rc;
}

static int cli__import(struct cli *c)
{
    json_t *reply;
    int rc = cli__http_json(c, "POST", "/api/v1/import", cli__read_stdin, &reply);
    if (rc == 0)
        printf("imported %lld\n",
               (long long)json_integer_value(json_object_get(reply, "imported")));
    json_decref(reply);
    return rc;
}

/* The commands over HTTP: a handle without a session. */
static int cli__over_http(struct cli *c, const char *cmd, int argc, char **argv)
{
    int rc = almanac_connect(&c->a, NULL, &c->opts);
    if (rc != ALMANAC_OK)
        rc = cli__failed(c->a, rc);
    else if (strcmp(cmd, "token") == 0)
        rc = cli__token(c, argc, argv);
    else if (strcmp(cmd, "export") == 0)
        rc = cli__failed(
            c->a, almanac_http(c->a, "GET", "/api/v1/export", NULL, NULL, cli__stdout, NULL, NULL));
    else
        rc = cli__import(c);
    almanac_close(c->a);
    return rc;
}

int cli_main(int argc, char **argv)
{
    const char *server = getenv("ALMANAC_SERVER"), *tls = getenv("ALMANAC_TLS"), *order = NULL;
    struct cli c = {.opts = {.token = getenv("ALMANAC_TOKEN"),
                             .tls = tls != NULL && strcmp(tls, "1") == 0,
                             .cafile = getenv("ALMANAC_CAFILE"),
                             .http = getenv("ALMANAC_HTTP"),
                             .no_reconnect = true}}; /* a command does one thing */
    struct almanac_history_query hist = {.limit = 1000};
    int i = 1, rc;

    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        if ((strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "--server") == 0) && i + 1 < argc)
            server = argv[++i];
        else if (strcmp(argv[i], "--http") == 0 && i + 1 < argc)
            c.opts.http = argv[++i];
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            c.opts.token = argv[++i];
        else if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
            c.opts.cafile = argv[++i], c.opts.tls = true; /* a CA is only for TLS */
        else if (strcmp(argv[i], "--tls") == 0)
            c.opts.tls = true;
        else if (strcmp(argv[i], "--json") == 0)
            c.json = true;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help_commands(stdout);
            return 0;
        } else
            return cli__usage();
    }
    if (i == argc)
        return cli__usage();
    const char *cmd = argv[i++];
    for (int k = i; k < argc; k++) /* almanac get --help: that command's help */
        if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0)
            return help_command(stdout, cmd) == 0 ? 0 : cli__usage();
    if (strcmp(cmd, "token") == 0)
        return cli__over_http(&c, cmd, argc - i, argv + i);
    /* Flags may follow the command too: almanac get --json a/b. */
    int n = 0;
    char *args[3];
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c.json = true;
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            server = argv[++i];
        else if (strcmp(argv[i], "--http") == 0 && i + 1 < argc)
            c.opts.http = argv[++i];
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            c.opts.token = argv[++i];
        else if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
            c.opts.cafile = argv[++i], c.opts.tls = true; /* a CA is only for TLS */
        else if (strcmp(argv[i], "--tls") == 0)
            c.opts.tls = true;
        else if (strcmp(argv[i], "--start") == 0 && i + 1 < argc)
            hist.start = argv[++i];
        else if (strcmp(argv[i], "--stop") == 0 && i + 1 < argc)
            hist.stop = argv[++i];
        else if (strcmp(argv[i], "--order") == 0 && i + 1 < argc)
            order = argv[++i];
        else if (strcmp(argv[i], "--every") == 0 && i + 1 < argc)
            hist.every = argv[++i];
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            char *end;
            long long limit = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || limit < 1)
                return cli__usage();
            hist.limit = (uint64_t)limit;
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
    if (!known || (strcmp(cmd, "ls") == 0 ? n > 1 : n != want) ||
        (order != NULL && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0))
        return cli__usage();
    hist.desc = order != NULL && strcmp(order, "desc") == 0;
    if (strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0)
        return cli__over_http(&c, cmd, 0, NULL);
    rc = almanac_connect(&c.a, server ? server : "127.0.0.1:8481", &c.opts);
    if (rc != ALMANAC_OK)
        rc = cli__failed(c.a, rc);
    else if (strcmp(cmd, "get") == 0)
        rc = cli__get(&c, args[0]);
    else if (strcmp(cmd, "info") == 0)
        rc = cli__get(&c, "$SYS/#");
    else if (strcmp(cmd, "sub") == 0)
        rc = cli__sub(&c, args[0]);
    else if (strcmp(cmd, "history") == 0)
        rc = cli__failed(c.a, almanac_history(c.a, args[0], &hist, cli__print_record, &c));
    else if (strcmp(cmd, "del") == 0)
        rc = cli__del(&c, args[0]);
    else if (strcmp(cmd, "ls") == 0)
        rc = cli__failed(c.a, almanac_ls(c.a, n == 1 ? args[0] : NULL, cli__print_child, &c, NULL));
    else
        rc = cli__write(&c, cmd, args[0], args[1]);
    almanac_close(c.a);
    return rc;
}
