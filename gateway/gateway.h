/*
 * gateway.h — what main.c needs of gateway/: the configuration, the
 * operations layer, the session loop, the HTTP server, $SYS and the CLI.
 * The rest of gateway/ talks through its own private headers (buf.h,
 * envelope.h, guard.h, ops.h, feed.h, loop.h, import.h, sys.h, http_int.h).
 */
#ifndef ALMANAC_GATEWAY_H
#define ALMANAC_GATEWAY_H

#include "bridge.h"
#include "log.h"
#include "store.h"

#include <stdio.h>

/* ---- config.c ---- */

struct config {
    char *http_listen; /* "host:port" or "off" */
    char *data_dir;
    enum store_durability durability;
    enum log_level log_level;
    struct store_limits limits;
    size_t max_body_bytes;      /* batch and import bodies */
    size_t max_db_bytes;        /* 0: no cap on almanac.db */
    unsigned http_threads;      /* 0: one per core */
    char *tcp_listen;           /* "host:port" or "off" */
    char *unix_socket;          /* a path, or NULL */
    size_t max_message_bytes;   /* one session message */
    size_t session_queue_bytes; /* a session's outbound queue */
    unsigned max_sessions;      /* 0 until main.c derives it from the descriptor limit */
    unsigned max_subscriptions; /* per session */
    unsigned sys_interval;      /* seconds between $SYS updates; 0: none */
    struct bridge_config bridge;
    char **history_keys; /* patterns; none: "#" */
    size_t nhistory_keys;
    char **metrics_keys; /* patterns whose numbers /metrics shows too; none by default */
    size_t nmetrics_keys;
    int64_t history_retention_us;         /* 0: no history */
    size_t history_max_bytes;             /* 0: no cap */
    size_t blob_min_bytes;                /* values this large go to blob files */
    size_t blob_file_bytes;               /* a blob file's size, at most */
    int64_t sse_heartbeat_us;             /* a comment line on idle SSE streams */
    int64_t http_header_timeout_us;       /* a request's headers must be in by then */
    unsigned http_max_connections;        /* 0: derived from the descriptor limit */
    unsigned http_max_connections_per_ip; /* 0: no limit */
    char **http_hosts;                    /* Host names served besides IP literals and localhost */
    size_t nhttp_hosts;
    char **cors_origins; /* browser origins allowed besides the server's own */
    size_t ncors_origins;
    char *http_tls_cert; /* PEM files: HTTPS and wss on http_listen */
    char *http_tls_key;
    char *tcp_tls_cert; /* PEM files: TLS on tcp_listen */
    char *tcp_tls_key;
    char *admin_token;     /* a built-in admin credential, or NULL */
    char *jwt_key;         /* JWTs: an HS256 secret or a PEM public key's path */
    char *jwt_issuer;      /* JWTs must name it as `iss` (NULL: any) */
    char *jwt_audience;    /* JWTs must name it in `aud` (NULL: any) */
    char **anonymous_read; /* patterns anonymous clients may read */
    size_t nanonymous_read;
    char **anonymous_write; /* patterns anonymous clients may write */
    size_t nanonymous_write;
    /* While loading: which source (file, environment, flags) is being read,
     * and which one gave the values of a repeatable option so far; a later
     * source's replace an earlier one's. */
    int source, maps_source, history_keys_source, metrics_keys_source, http_hosts_source,
        cors_origins_source, anonymous_read_source, anonymous_write_source;
};

/* Fills `cfg` from the defaults, then the file of `-c FILE` (if any), the
 * environment (ALMANAC_<NAME>) and the flags `--name value` of `argv`, in
 * that order, so a flag wins. Returns 0, or -1 with a sentence in `why` that
 * names the file and line, the variable or the flag. */
int config_load(struct config *cfg, int argc, char **argv, char *why, size_t why_len);
void config_free(struct config *cfg);
/* Writes `almanac serve --help`: every option with its default, as
 * conf/almanac.conf (compiled in) documents them. Returns how many options
 * it does not document (0; a test checks). */
int config_help(FILE *out);

/* help.c: `almanac --help` (every command and the client's options) and
 * `almanac COMMAND --help` (its synopsis, what it does, an example, the
 * client's options; serve's is config_help), from doc/commands.txt compiled
 * in. help_command returns 0, or -1 for a command it does not know. */
void help_commands(FILE *out);
int help_command(FILE *out, const char *cmd);
/* Parses "1024", "64KiB", "1MiB", "1GiB", "10MB"; -1 when malformed. */
int config_parse_size(const char *text, size_t *out);
/* Parses a duration into µs: a number with us, ms, s, m, h, d or w. */
int config_parse_duration(const char *text, int64_t *us);
/* Parses a time into µs since the epoch: µs, or RFC 3339. */
int config_parse_time(const char *text, int64_t *us);
/* Resolves the HOST:PORT (or [V6]:PORT) of option `option`: the address
 * in `*ai` (freeaddrinfo it) and the bare host in `host`. Returns 0, or -1
 * with a sentence in `why`. */
struct addrinfo;
int config_resolve(const char *option, const char *spec, struct addrinfo **ai, char *host,
                   size_t host_len, char *why, size_t why_len);

/* ---- cli.c ---- */

/* The client commands (argv[0] is the program): get, set, del, ls, sub, pub,
 * history, info, export, import, token; a command-line layer over libalmanac
 * (clients/c/almanac.h). Returns the exit code. */
int cli_main(int argc, char **argv);

/* ---- sys.c: the server's own keys, $SYS/... ---- */

struct sys;
/* Writes $SYS/version, clears sessions a crash left, starts $SYS/uptime. */
struct sys *sys_start(struct store *store, struct bridge *bridge, unsigned interval);
void sys_stop(struct sys *sys);

/* ---- ops.c: the operations every transport calls ---- */

struct ops;
/* Borrowed: store, bridge (NULL: off), sys and cfg live longer. NULL with
 * a sentence in `why` (a bad anonymous_read pattern, say). */
struct ops *ops_new(struct store *store, struct bridge *bridge, struct sys *sys,
                    const struct config *cfg, char *why, size_t why_len);
void ops_free(struct ops *o);

/* ---- session.c on loop.c: the sessions of TCP, Unix and WebSockets ---- */

struct loop;
/* Starts the loop thread with the TCP and Unix listeners of `cfg`, serving
 * the session protocol. Returns 0, or -1 with a sentence in `why`. */
int session_serve(struct ops *ops, const struct config *cfg, struct loop **out, char *why,
                  size_t why_len);
/* Stops accepting; the sessions go on until loop_stop. */
void loop_quiesce(struct loop *l);
/* Closes every session (a WebSocket's through MHD, so before http_stop)
 * and stops the thread. */
void loop_stop(struct loop *l);
/* Frees the loop, after loop_stop and http_stop. */
void loop_free(struct loop *l);

/* ---- http.c ---- */

struct http;
/* Starts serving cfg->http_listen; WebSockets go to `loop`. Returns 0, or
 * -1 with a sentence in `why`. */
int http_start(struct ops *ops, const struct config *cfg, struct loop *loop, struct http **out,
               char *why, size_t why_len);
/* The port it listens on (the one the system chose for port 0). */
unsigned short http_port(const struct http *h);
/* Stops accepting connections; requests under way go on. */
void http_quiesce(struct http *h);
/* Waits (a bounded time) for requests under way to be answered, then stops. */
void http_stop(struct http *h);

#endif
