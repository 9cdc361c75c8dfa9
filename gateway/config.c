/*
 * config.c — options from the file, the environment and the flags.
 *
 * One table names every option with its parser; the three sources go
 * through the same parser, so a value means the same wherever it is given.
 * Order: defaults, file (`-c FILE`), environment (`ALMANAC_<NAME>`), flags
 * (`--name value` or `--name=value`): the last one set wins.
 */
#include "gateway.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*config_parse_fn)(struct config *cfg, const char *value, char *why, size_t why_len);

static int config__string(char **slot, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return -1;
    free(*slot);
    *slot = copy;
    return 0;
}

static int config__listen_ok(const char *value)
{
    if (strcmp(value, "off") == 0)
        return 1;
    const char *colon = strrchr(value, ':');
    if (colon == NULL || colon == value || colon[1] == '\0')
        return 0;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    return *end == '\0' && errno == 0 && port >= 0 && port <= 65535;
}

static int config__http_listen(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (!config__listen_ok(value)) {
        snprintf(why, why_len, "'%s' is not HOST:PORT or off", value);
        return -1;
    }
    return config__string(&cfg->http_listen, value);
}

static int config__tcp_listen(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (!config__listen_ok(value)) {
        snprintf(why, why_len, "'%s' is not HOST:PORT or off", value);
        return -1;
    }
    return config__string(&cfg->tcp_listen, value);
}

static int config__unix_socket(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (value[0] == '\0' || strlen(value) >= 108) {
        snprintf(why, why_len, "a socket path is 1 to 107 bytes");
        return -1;
    }
    return config__string(&cfg->unix_socket, value);
}

static int config__data_dir(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (value[0] == '\0') {
        snprintf(why, why_len, "the data_dir is empty");
        return -1;
    }
    return config__string(&cfg->data_dir, value);
}

static int config__durability(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strcmp(value, "commit") == 0)
        cfg->durability = STORE_DURABLE_COMMIT;
    else if (strcmp(value, "fsync") == 0)
        cfg->durability = STORE_DURABLE_FSYNC;
    else {
        snprintf(why, why_len, "'%s' is not commit or fsync", value);
        return -1;
    }
    return 0;
}

static int config__log_level(struct config *cfg, const char *value, char *why, size_t why_len)
{
    int level = log_level_parse(value);
    if (level < 0) {
        snprintf(why, why_len, "'%s' is not error, warn, info or debug", value);
        return -1;
    }
    cfg->log_level = (enum log_level)level;
    return 0;
}

static int config__size_in(const char *value, size_t lo, size_t hi, size_t *out, char *why,
                           size_t why_len)
{
    size_t n;
    if (config_parse_size(value, &n) != 0) {
        snprintf(why, why_len, "'%s' is not a size (a number, optionally with KiB, MiB or GiB)",
                 value);
        return -1;
    }
    if (n < lo || n > hi) {
        snprintf(why, why_len, "%s is outside %zu..%zu bytes", value, lo, hi);
        return -1;
    }
    *out = n;
    return 0;
}

static int config__max_key_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__size_in(value, 1, 65535, &cfg->limits.max_key_bytes, why, why_len);
}

static int config__max_value_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    /* 256 MiB: the most an MQTT message can carry (API.md "Large values"). */
    return config__size_in(value, 1, (size_t)256 << 20, &cfg->limits.max_value_bytes, why, why_len);
}

static int config__max_body_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__size_in(value, 1024, (size_t)1 << 31, &cfg->max_body_bytes, why, why_len);
}

static int config__max_db_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strcmp(value, "0") == 0) {
        cfg->max_db_bytes = 0;
        return 0;
    }
    return config__size_in(value, 64 * 1024, SIZE_MAX, &cfg->max_db_bytes, why, why_len);
}

static int config__max_message_bytes(struct config *cfg, const char *value, char *why,
                                     size_t why_len)
{
    return config__size_in(value, 1024, (size_t)1 << 31, &cfg->max_message_bytes, why, why_len);
}

static int config__session_queue_bytes(struct config *cfg, const char *value, char *why,
                                       size_t why_len)
{
    return config__size_in(value, 4096, (size_t)1 << 34, &cfg->session_queue_bytes, why, why_len);
}

static int config__count(const char *value, unsigned lo, unsigned hi, unsigned *out, char *why,
                         size_t why_len)
{
    char *end;
    errno = 0;
    long n = strtol(value, &end, 10);
    if (value[0] == '\0' || *end != '\0' || errno != 0 || n < (long)lo || n > (long)hi) {
        snprintf(why, why_len, "'%s' is not a number from %u to %u", value, lo, hi);
        return -1;
    }
    *out = (unsigned)n;
    return 0;
}

static int config__max_sessions(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__count(value, 0, 1000000, &cfg->max_sessions, why, why_len);
}

static int config__max_subscriptions(struct config *cfg, const char *value, char *why,
                                     size_t why_len)
{
    return config__count(value, 1, 1000000, &cfg->max_subscriptions, why, why_len);
}

static int config__sys_interval(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__count(value, 0, 86400, &cfg->sys_interval, why, why_len);
}

static int config__http_threads(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__count(value, 0, 256, &cfg->http_threads, why, why_len);
}

/* ---- HTTP hardening ---- */

static int config__duration_in(const char *value, int64_t lo, int64_t hi, int64_t *out, char *why,
                               size_t why_len)
{
    int64_t us;
    if (config_parse_duration(value, &us) != 0 || us < lo || us > hi) {
        snprintf(why, why_len,
                 "'%s' is not a duration from %llds to %llds (a number with ms, s, m or h)", value,
                 (long long)(lo / 1000000), (long long)(hi / 1000000));
        return -1;
    }
    *out = us;
    return 0;
}

static int config__sse_heartbeat(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__duration_in(value, 100000, 3600000000ll, &cfg->sse_heartbeat_us, why, why_len);
}

static int config__http_header_timeout(struct config *cfg, const char *value, char *why,
                                       size_t why_len)
{
    return config__duration_in(value, 1000000, 3600000000ll, &cfg->http_header_timeout_us, why,
                               why_len);
}

static int config__http_max_connections(struct config *cfg, const char *value, char *why,
                                        size_t why_len)
{
    if (strcmp(value, "0") == 0) { /* derived from the descriptor limit */
        cfg->http_max_connections = 0;
        return 0;
    }
    return config__count(value, 16, 1000000, &cfg->http_max_connections, why, why_len);
}

static int config__http_max_connections_per_ip(struct config *cfg, const char *value, char *why,
                                               size_t why_len)
{
    return config__count(value, 0, 1000000, &cfg->http_max_connections_per_ip, why, why_len);
}

static int config__list_add(struct config *cfg, char ***list, size_t *n, int *source,
                            const char *value);

/* A host name as a browser sends it in Host (no port), or "*". */
static int config__http_host(struct config *cfg, const char *value, char *why, size_t why_len)
{
    for (const char *p = value; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_' ||
              (*p == '*' && value[1] == '\0'))) {
            snprintf(why, why_len, "'%s' is not a host name (without a port) or *", value);
            return -1;
        }
    if (value[0] == '\0') {
        snprintf(why, why_len, "the value is empty");
        return -1;
    }
    return config__list_add(cfg, &cfg->http_hosts, &cfg->nhttp_hosts, &cfg->http_hosts_source,
                            value);
}

/* An origin as browsers send it (scheme://host[:port], no path), or "*". */
static int config__cors_origin(struct config *cfg, const char *value, char *why, size_t why_len)
{
    const char *host = strncmp(value, "http://", 7) == 0    ? value + 7
                       : strncmp(value, "https://", 8) == 0 ? value + 8
                                                            : NULL;
    if (strcmp(value, "*") != 0 && (host == NULL || *host == '\0' || strchr(host, '/') != NULL)) {
        snprintf(why, why_len, "'%s' is not an origin (http://host[:port] or https://…) or *",
                 value);
        return -1;
    }
    return config__list_add(cfg, &cfg->cors_origins, &cfg->ncors_origins, &cfg->cors_origins_source,
                            value);
}

/* ---- access control ---- */

static int config__nonempty(char **slot, const char *value, char *why, size_t why_len);

static int config__http_tls_cert(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->http_tls_cert, value, why, why_len);
}

static int config__http_tls_key(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->http_tls_key, value, why, why_len);
}

static int config__tcp_tls_cert(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->tcp_tls_cert, value, why, why_len);
}

static int config__tcp_tls_key(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->tcp_tls_key, value, why, why_len);
}

/* An HS256 secret (RFC 7518 3.2: at least as long as the hash, 32 bytes),
 * or the path of a PEM public key (auth.c reads it). */
static int config__jwt_key(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strlen(value) < 32 && access(value, R_OK) != 0) { /* never echoed */
        snprintf(why, why_len,
                 "jwt_key is an HS256 secret of at least 32 characters, or the path of a "
                 "readable PEM public key");
        return -1;
    }
    if (cfg->jwt_key != NULL)
        explicit_bzero(cfg->jwt_key, strlen(cfg->jwt_key));
    return config__nonempty(&cfg->jwt_key, value, why, why_len);
}

static int config__jwt_issuer(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->jwt_issuer, value, why, why_len);
}

static int config__jwt_audience(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->jwt_audience, value, why, why_len);
}

static int config__admin_token(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strlen(value) < 16) { /* the value itself is never echoed */
        snprintf(why, why_len, "admin_token must be at least 16 characters");
        return -1;
    }
    if (cfg->admin_token != NULL)
        explicit_bzero(cfg->admin_token, strlen(cfg->admin_token));
    return config__nonempty(&cfg->admin_token, value, why, why_len);
}

static int config__pattern_list(struct config *cfg, char ***list, size_t *n, int *source,
                                const char *value, char *why, size_t why_len)
{
    bool wild;
    char what[256];
    if (store_pattern_check(value, strlen(value), SIZE_MAX, &wild, what, sizeof what) != STORE_OK) {
        snprintf(why, why_len, "'%s': %s", value, what);
        return -1;
    }
    return config__list_add(cfg, list, n, source, value);
}

static int config__anonymous_read(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__pattern_list(cfg, &cfg->anonymous_read, &cfg->nanonymous_read,
                                &cfg->anonymous_read_source, value, why, why_len);
}

static int config__anonymous_write(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__pattern_list(cfg, &cfg->anonymous_write, &cfg->nanonymous_write,
                                &cfg->anonymous_write_source, value, why, why_len);
}

/* ---- the bridge ---- */

static int config__bridge_url(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strcmp(value, "off") == 0 || value[0] == '\0') {
        free(cfg->bridge.url);
        cfg->bridge.url = NULL;
        return 0;
    }
    if (bridge_url_check(value, why, why_len) != 0)
        return -1;
    return config__string(&cfg->bridge.url, value);
}

static int config__nonempty(char **slot, const char *value, char *why, size_t why_len)
{
    if (value[0] == '\0') {
        snprintf(why, why_len, "the value is empty");
        return -1;
    }
    return config__string(slot, value);
}

static int config__bridge_client_id(struct config *cfg, const char *value, char *why,
                                    size_t why_len)
{
    return config__nonempty(&cfg->bridge.client_id, value, why, why_len);
}

static int config__bridge_username(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->bridge.username, value, why, why_len);
}

static int config__bridge_password(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (cfg->bridge.password != NULL)
        explicit_bzero(cfg->bridge.password, strlen(cfg->bridge.password));
    return config__nonempty(&cfg->bridge.password, value, why, why_len);
}

static int config__bridge_cafile(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->bridge.cafile, value, why, why_len);
}

static int config__bridge_certfile(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->bridge.certfile, value, why, why_len);
}

static int config__bridge_keyfile(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__nonempty(&cfg->bridge.keyfile, value, why, why_len);
}

static int config__bridge_protocol(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (strcmp(value, "5") == 0)
        cfg->bridge.protocol = 5;
    else if (strcmp(value, "3.1.1") == 0)
        cfg->bridge.protocol = 4;
    else {
        snprintf(why, why_len, "'%s' is not 5 or 3.1.1", value);
        return -1;
    }
    return 0;
}

static int config__bridge_qos(struct config *cfg, const char *value, char *why, size_t why_len)
{
    unsigned qos;
    if (config__count(value, 0, 2, &qos, why, why_len) != 0)
        return -1;
    cfg->bridge.qos = (int)qos;
    return 0;
}

static int config__bridge_keepalive(struct config *cfg, const char *value, char *why,
                                    size_t why_len)
{
    return config__count(value, 5, 65535, &cfg->bridge.keepalive, why, why_len);
}

static int config__bridge_session_expiry(struct config *cfg, const char *value, char *why,
                                         size_t why_len)
{
    return config__count(value, 0, 4294967295u, &cfg->bridge.session_expiry, why, why_len);
}

static int config__bridge_status_topic(struct config *cfg, const char *value, char *why,
                                       size_t why_len)
{
    char detail[256];
    if (store_key_check(value, strlen(value), 65535, detail, sizeof detail) != STORE_OK) {
        snprintf(why, why_len, "'%s' is not a topic name: %s", value, detail);
        return -1;
    }
    return config__string(&cfg->bridge.status_topic, value);
}

static void config__list_clear(char ***list, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
}

/* Appends to a repeatable option's list; the values of a later source (the
 * environment after the file, flags after both) replace an earlier one's. */
static int config__list_add(struct config *cfg, char ***list, size_t *n, int *source,
                            const char *value)
{
    if (*source != cfg->source)
        config__list_clear(list, n);
    *source = cfg->source;
    char **v = realloc(*list, (*n + 1) * sizeof *v);
    if (v == NULL)
        return -1;
    *list = v;
    if ((v[*n] = strdup(value)) == NULL)
        return -1;
    ++*n;
    return 0;
}

static int config__bridge_map(struct config *cfg, const char *value, char *why, size_t why_len)
{
    if (bridge_map_check(value, why, why_len) != 0)
        return -1;
    return config__list_add(cfg, &cfg->bridge.maps, &cfg->bridge.nmaps, &cfg->maps_source, value);
}

/* ---- history ---- */

static int config__history_keys(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__pattern_list(cfg, &cfg->history_keys, &cfg->nhistory_keys,
                                &cfg->history_keys_source, value, why, why_len);
}

static int config__metrics_keys(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__pattern_list(cfg, &cfg->metrics_keys, &cfg->nmetrics_keys,
                                &cfg->metrics_keys_source, value, why, why_len);
}

static int config__history_retention(struct config *cfg, const char *value, char *why,
                                     size_t why_len)
{
    if (strcmp(value, "0") == 0) {
        cfg->history_retention_us = 0;
        return 0;
    }
    if (config_parse_duration(value, &cfg->history_retention_us) != 0) {
        snprintf(why, why_len, "'%s' is not a duration (a number with s, m, h, d or w), or 0",
                 value);
        return -1;
    }
    return 0;
}

static int config__history_max_bytes(struct config *cfg, const char *value, char *why,
                                     size_t why_len)
{
    if (strcmp(value, "0") == 0) {
        cfg->history_max_bytes = 0;
        return 0;
    }
    return config__size_in(value, 64 * 1024, SIZE_MAX, &cfg->history_max_bytes, why, why_len);
}

static int config__blob_min_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__size_in(value, 1024, (size_t)1 << 30, &cfg->blob_min_bytes, why, why_len);
}

static int config__blob_file_bytes(struct config *cfg, const char *value, char *why, size_t why_len)
{
    return config__size_in(value, (size_t)1 << 20, (size_t)1 << 32, &cfg->blob_file_bytes, why,
                           why_len);
}

static const struct {
    const char *name;
    config_parse_fn parse;
} config__options[] = {
    {"http_listen", config__http_listen},
    {"tcp_listen", config__tcp_listen},
    {"unix_socket", config__unix_socket},
    {"data_dir", config__data_dir},
    {"durability", config__durability},
    {"log_level", config__log_level},
    {"max_key_bytes", config__max_key_bytes},
    {"max_value_bytes", config__max_value_bytes},
    {"max_body_bytes", config__max_body_bytes},
    {"max_db_bytes", config__max_db_bytes},
    {"http_threads", config__http_threads},
    {"max_message_bytes", config__max_message_bytes},
    {"session_queue_bytes", config__session_queue_bytes},
    {"max_sessions", config__max_sessions},
    {"max_subscriptions", config__max_subscriptions},
    {"sys_interval", config__sys_interval},
    {"sse_heartbeat", config__sse_heartbeat},
    {"http_header_timeout", config__http_header_timeout},
    {"http_max_connections", config__http_max_connections},
    {"http_max_connections_per_ip", config__http_max_connections_per_ip},
    {"http_host", config__http_host},
    {"cors_origin", config__cors_origin},
    {"http_tls_cert", config__http_tls_cert},
    {"http_tls_key", config__http_tls_key},
    {"tcp_tls_cert", config__tcp_tls_cert},
    {"tcp_tls_key", config__tcp_tls_key},
    {"admin_token", config__admin_token},
    {"jwt_key", config__jwt_key},
    {"jwt_issuer", config__jwt_issuer},
    {"jwt_audience", config__jwt_audience},
    {"anonymous_read", config__anonymous_read},
    {"anonymous_write", config__anonymous_write},
    {"bridge_url", config__bridge_url},
    {"bridge_client_id", config__bridge_client_id},
    {"bridge_username", config__bridge_username},
    {"bridge_password", config__bridge_password},
    {"bridge_cafile", config__bridge_cafile},
    {"bridge_certfile", config__bridge_certfile},
    {"bridge_keyfile", config__bridge_keyfile},
    {"bridge_protocol", config__bridge_protocol},
    {"bridge_qos", config__bridge_qos},
    {"bridge_keepalive", config__bridge_keepalive},
    {"bridge_session_expiry", config__bridge_session_expiry},
    {"bridge_status_topic", config__bridge_status_topic},
    {"bridge_map", config__bridge_map},
    {"history_keys", config__history_keys},
    {"metrics_keys", config__metrics_keys},
    {"history_retention", config__history_retention},
    {"history_max_bytes", config__history_max_bytes},
    {"blob_min_bytes", config__blob_min_bytes},
    {"blob_file_bytes", config__blob_file_bytes},
};
#define CONFIG_NOPTIONS (sizeof config__options / sizeof config__options[0])

/* The index of option `name` (`len` bytes, '-' read as '_'), or -1. */
static int config__find(const char *name, size_t len)
{
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const char *o = config__options[i].name;
        if (strlen(o) != len)
            continue;
        size_t k = 0;
        while (k < len && (name[k] == o[k] || (name[k] == '-' && o[k] == '_')))
            k++;
        if (k == len)
            return (int)i;
    }
    return -1;
}

/* ---- help: every option with its default, from conf/almanac.conf ---- */

extern const unsigned char
    config_text[]; /* conf/almanac.conf, compiled in (cmake/embed_text.cmake) */

/* The option a line of the conf text names ("name value", or "#name value"
 * for one without a default), or -1; `*value` then points at its value. */
static int config__doc_option(const char *line, size_t len, const char **value)
{
    const char *p = line[0] == '#' ? line + 1 : line, *end = line + len;
    size_t n = 0;
    while (p + n < end && (islower((unsigned char)p[n]) || p[n] == '_'))
        n++;
    if (n == 0 || p + n == end || p[n] != ' ')
        return -1;
    *value = p + n + 1;
    return config__find(p, n);
}

int config_help(FILE *out)
{
    bool shown[CONFIG_NOPTIONS] = {false};
    const char *block = NULL; /* where the comment above started */
    int missing = 0;
    fprintf(out, "usage: almanac serve [-c FILE] [--OPTION VALUE ...]\n\n"
                 "Runs the server. Each option is a line `name value` of the file given\n"
                 "with -c, ALMANAC_<NAME> in the environment, or --name value here (a flag\n"
                 "wins over the environment, the environment over the file). Each is\n"
                 "described in almanac.conf(5) and conf/almanac.conf.\n");
    for (const char *line = (const char *)config_text; *line;) {
        const char *nl = strchr(line, '\n'), *value = NULL;
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        int opt = config__doc_option(line, len, &value);
        if (len == 0)
            block = NULL;
        else if (strncmp(line, "# ---- ", 7) == 0) {
            size_t t = 7;
            while (t < len && line[t] != '-')
                t++;
            fprintf(out, "\n%.*s:\n", (int)(t > 8 ? t - 8 : 0), line + 7);
            block = NULL;
        } else if (opt >= 0 && !shown[opt]) {
            shown[opt] = true;
            int vlen = (int)(line + len - value);
            if (line[0] != '#') {
                fprintf(out, "  --%-28s default: %.*s\n", config__options[opt].name, vlen, value);
            } else {
                /* no default, unless the comment above says "Default: X." */
                const char *d = block ? strstr(block, "Default") : NULL;
                int dlen = 0;
                if (d != NULL && d < line && (d = strstr(d, ": ")) != NULL && d < line) {
                    d += 2;
                    while (d[dlen] && d[dlen] != '\n' && !(d[dlen] == '.' && (d[dlen + 1] == '\n')))
                        dlen++;
                }
                if (dlen > 0 && (dlen != vlen || strncmp(d, value, (size_t)vlen) != 0))
                    fprintf(out, "  --%-28s default: %.*s (e.g. %.*s)\n", config__options[opt].name,
                            dlen, d, vlen, value);
                else if (dlen > 0)
                    fprintf(out, "  --%-28s default: %.*s\n", config__options[opt].name, dlen, d);
                else
                    fprintf(out, "  --%-28s default: none (e.g. %.*s)\n", config__options[opt].name,
                            vlen, value);
            }
        } else if (line[0] == '#' && block == NULL)
            block = line;
        line += len + (nl != NULL);
    }
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++)
        if (!shown[i]) {
            fprintf(out, "  --%-28s (not in almanac.conf)\n", config__options[i].name);
            missing++;
        }
    return missing;
}

static int config__set(struct config *cfg, int opt, const char *value, const char *where, char *why,
                       size_t why_len)
{
    char detail[512];
    if (config__options[opt].parse(cfg, value, detail, sizeof detail) == 0)
        return 0;
    snprintf(why, why_len, "%s: %s: %s", where, config__options[opt].name, detail);
    return -1;
}

static char *config__trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int config__file(struct config *cfg, const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "r");
    char line[4096], where[4200];
    int lineno = 0, rc = 0;

    if (f == NULL) {
        snprintf(why, why_len, "cannot read the configuration file %s: %s", path, strerror(errno));
        return -1;
    }
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(why, why_len, "%s: the line is longer than %zu bytes", where, sizeof line - 2);
            rc = -1;
            break;
        }
        char *s = config__trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        size_t nlen = strcspn(s, " \t");
        int opt = config__find(s, nlen);
        if (opt < 0) {
            snprintf(why, why_len, "%s: unknown option '%.*s'", where, (int)nlen, s);
            rc = -1;
        } else if (s[nlen] == '\0') {
            snprintf(why, why_len, "%s: option '%.*s' has no value", where, (int)nlen, s);
            rc = -1;
        } else
            rc = config__set(cfg, opt, config__trim(s + nlen), where, why, why_len);
    }
    fclose(f);
    return rc;
}

static int config__env(struct config *cfg, char *why, size_t why_len)
{
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        char var[64];
        size_t k = 0;
        k += (size_t)snprintf(var, sizeof var, "ALMANAC_");
        for (const char *p = config__options[i].name; *p && k < sizeof var - 1; p++)
            var[k++] = (char)toupper((unsigned char)*p);
        var[k] = '\0';
        const char *value = getenv(var);
        if (value != NULL && config__set(cfg, (int)i, value, var, why, why_len) != 0)
            return -1;
    }
    return 0;
}

static void config__defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->http_listen = strdup("127.0.0.1:8480");
    cfg->tcp_listen = strdup("127.0.0.1:8481");
    cfg->max_message_bytes = 2 << 20;
    cfg->session_queue_bytes = 32 << 20;
    cfg->max_sessions = 0; /* derived from the descriptor limit (main.c) */
    cfg->max_subscriptions = 1000;
    cfg->sys_interval = 10;
    cfg->sse_heartbeat_us = 15000000;
    cfg->http_header_timeout_us = 10000000;
    cfg->http_max_connections_per_ip = 256;
    cfg->data_dir = strdup("./data");
    cfg->durability = STORE_DURABLE_COMMIT;
    cfg->log_level = LOG_INFO;
    cfg->limits.max_key_bytes = 1024;
    cfg->limits.max_value_bytes = 1 << 20;
    cfg->max_body_bytes = 16 << 20;
    cfg->bridge.protocol = 5;
    cfg->bridge.qos = 1;
    cfg->bridge.keepalive = 30;
    cfg->bridge.session_expiry = 7 * 86400;
    cfg->history_retention_us = 7 * 86400000000ll;
    cfg->history_max_bytes = (size_t)1 << 30;
    cfg->blob_min_bytes = 64 << 10;
    cfg->blob_file_bytes = 64 << 20;
}

int config_load(struct config *cfg, int argc, char **argv, char *why, size_t why_len)
{
    const char *file = NULL;
    int i;

    config__defaults(cfg);
    if (cfg->http_listen == NULL || cfg->data_dir == NULL || cfg->tcp_listen == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    /* The file comes first whatever its place among the flags. */
    for (i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (i + 1 == argc) {
                snprintf(why, why_len, "%s needs a file", argv[i]);
                return -1;
            }
            file = argv[++i];
        }
    }
    cfg->source = 1;
    if (file != NULL && config__file(cfg, file, why, why_len) != 0)
        return -1;
    cfg->source = 2;
    if (config__env(cfg, why, why_len) != 0)
        return -1;
    cfg->source = 3;
    for (i = 0; i < argc; i++) {
        const char *arg = argv[i], *value;
        char where[128];
        if (strcmp(arg, "-c") == 0 || strcmp(arg, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(why, why_len, "unexpected argument '%s'", arg);
            return -1;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        int opt = config__find(name, nlen);
        if (opt < 0) {
            snprintf(why, why_len, "unknown option '--%.*s'", (int)nlen, name);
            return -1;
        }
        if (eq != NULL)
            value = eq + 1;
        else if (i + 1 < argc)
            value = argv[++i];
        else {
            snprintf(why, why_len, "option '--%.*s' needs a value", (int)nlen, name);
            return -1;
        }
        snprintf(where, sizeof where, "--%.*s", (int)(nlen < 64 ? nlen : 64), name);
        if (config__set(cfg, opt, value, where, why, why_len) != 0)
            return -1;
    }
    return 0;
}

void config_free(struct config *cfg)
{
    free(cfg->http_listen);
    free(cfg->data_dir);
    free(cfg->tcp_listen);
    free(cfg->unix_socket);
    cfg->http_listen = cfg->data_dir = cfg->tcp_listen = cfg->unix_socket = NULL;
    bridge_config_free(&cfg->bridge);
    config__list_clear(&cfg->history_keys, &cfg->nhistory_keys);
    config__list_clear(&cfg->metrics_keys, &cfg->nmetrics_keys);
    config__list_clear(&cfg->http_hosts, &cfg->nhttp_hosts);
    config__list_clear(&cfg->cors_origins, &cfg->ncors_origins);
    config__list_clear(&cfg->anonymous_read, &cfg->nanonymous_read);
    config__list_clear(&cfg->anonymous_write, &cfg->nanonymous_write);
    if (cfg->admin_token != NULL)
        explicit_bzero(cfg->admin_token, strlen(cfg->admin_token));
    if (cfg->jwt_key != NULL)
        explicit_bzero(cfg->jwt_key, strlen(cfg->jwt_key));
    free(cfg->admin_token);
    free(cfg->jwt_key);
    free(cfg->jwt_issuer);
    free(cfg->jwt_audience);
    free(cfg->http_tls_cert);
    free(cfg->http_tls_key);
    free(cfg->tcp_tls_cert);
    free(cfg->tcp_tls_key);
    cfg->admin_token = cfg->http_tls_cert = cfg->http_tls_key = NULL;
    cfg->jwt_key = cfg->jwt_issuer = cfg->jwt_audience = NULL;
    cfg->tcp_tls_cert = cfg->tcp_tls_key = NULL;
}
