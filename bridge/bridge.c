/*
 * bridge.c — the MQTT bridge (API.md "MQTT bridge") over Paho MQTTAsync.
 *
 * In: a message on a mapped topic becomes a change with origin `mqtt`,
 * submitted to the store from Paho's thread without waiting for the commit
 * (at most BRIDGE_IN_PENDING uncommitted, then Paho's thread waits, and the
 * broker with it). Out: the store writes each change of a mapped key that did
 * not come from MQTT to the outbox in the change's own transaction
 * (bridge__topic); the bridge's thread publishes the outbox in rev order,
 * at most the broker's receive maximum unacknowledged, and acknowledges each
 * PUBACK back to the store, which deletes the row. Transient messages go
 * straight out (bridge__publish_now), and their echo is dropped.
 *
 * States (bridge__run makes the attempts, Paho's callbacks the rest), each
 * attempt on one node of bridge_url's list, `node`:
 *   disconnected --(next_attempt_us) bridge__connect--> connecting
 *   connecting --bridge__connected--> connected
 *   connecting --bridge__failed--> disconnected: the next node at once while
 *     the round has nodes not tried, else (each tried once) the backoff,
 *     doubling up to 30 s, then a new round
 *   connected --bridge__lost--> disconnected: a new round from the next node
 *     at once (one node, or a connection younger than BRIDGE_STABLE: after
 *     a second)
 * A switch to another node is a reconnect like any other: the will and
 * `online` go to the new node, the outbox is sent again from its start
 * (invariant 2), the subscriptions bring the node's retained state. Only
 * the will of the node left behind may come after our `online`: seen on
 * our status topic while connected, `online` is said again
 * (bridge__status_seen).
 * Invariants:
 *   1. `lock` guards the state, the node and its round (`node`, `tries`,
 *      `last_node`, `backoff`), `sent_rev`, `inflight` and `gen`; no Paho or
 *      store call is made while holding it;
 *   2. every outbox message up to `sent_rev` was handed to Paho on connection
 *      `gen`; a new connection starts again from 0 (the outbox only holds what
 *      the broker has not acknowledged), so nothing waits forever;
 *   3. a change from MQTT never goes back out (bridge__topic), so two
 *      gateways on one broker cannot ping-pong; both end with what the broker
 *      ordered last, as each applies its own echo in the broker's order;
 *   4. the echo of one of our retained publishes on topic T is skipped when
 *      a later publish of ours on T has not echoed yet (bridge__echo), or
 *      when the key holds a local change newer than the echoed one, not yet
 *      handed to Paho (bridge__newer_here); otherwise it is applied
 *      (if_changed: our latest is no change; if_rev: a local change made
 *      meanwhile is not undone). The broker delivers one client's publishes
 *      on T in order, and the last message of its order on T is either
 *      another client's (applied: it matches no publish of ours) or our
 *      latest on T (applied: nothing of ours comes after it), so invariant 3
 *      holds, and a key never goes back to a value older than one of ours
 *      still on its way. Where the tracking is lost (the ring overflows, an
 *      entry expires, a publish fails, a new connection sends again what was
 *      not acknowledged) an echo is taken for another client's and applied
 *      as before this invariant: a moment on an older value at worst.
 *      `echo_lock` guards the ring; no call is made while holding it, and it
 *      is never taken with `lock`.
 */
#include "bridge.h"
#include "clock.h"
#include "log.h"

#include <MQTTAsync.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define BRIDGE_WINDOW      1000  /* publishes handed to Paho and not acknowledged */
#define BRIDGE_BATCH       100   /* outbox messages taken at once */
#define BRIDGE_IN_PENDING  20000 /* incoming changes submitted, not yet committed */
#define BRIDGE_BACKOFF_MAX 30    /* seconds between attempts, at most */
#define BRIDGE_STABLE      5     /* seconds a connection lasts before a loss switches at once */
#define BRIDGE_ECHOES      1024  /* publishes of ours whose echo is awaited */
#define BRIDGE_ECHO_WAIT   10    /* seconds an echo is awaited, at most */

enum { MAP_IN = 1, MAP_OUT = 2 };

struct bridge_map {
    unsigned dir;
    char *filter, *pattern;
    size_t flen, plen;
    size_t fpre, ppre; /* the literal prefixes: up to the first wildcard */
};

enum bridge_state { BS_DISCONNECTED, BS_CONNECTING, BS_CONNECTED };
static const char *const bridge__state_names[] = {"disconnected", "connecting", "connected"};

/* The nodes of bridge_url, in the order given. */
struct bridge__urls {
    char *url[BRIDGE_URLS_MAX]; /* as given */
    char *uri[BRIDGE_URLS_MAX]; /* Paho's tcp://HOST:PORT or ssl://HOST:PORT */
    size_t n;
};

struct bridge {
    struct bridge_config cfg; /* owned copies */
    struct bridge__urls urls;
    char *url_list; /* urls.url joined by commas, for bridge_stats */
    struct bridge_map *maps;
    size_t nmaps;
    struct store_limits limits;
    struct store *store;
    MQTTAsync client;
    bool created;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool started, stop;
    enum bridge_state state;
    unsigned backoff; /* seconds before the next round after a failed one */
    size_t node;      /* the node of the attempt under way, or connected to */
    size_t tries;     /* attempts in this round: each node once, then the backoff */
    size_t last_node; /* the node of the last connection; SIZE_MAX: none yet */
    int64_t next_attempt_us, connected_since_us;
    uint64_t gen; /* connections made */
    int64_t sent_rev;
    unsigned inflight, window; /* window: the broker's receive maximum, at most BRIDGE_WINDOW */
    bool more;                 /* the outbox may hold what was not handed to Paho */
    uint64_t ready_seq;        /* bridge__ready calls */
    char last_error[256];

    /* Our publishes on topics an in map covers, whose echo is awaited
     * (invariant 4): a ring where entry `seq` is at (seq - 1) % BRIDGE_ECHOES,
     * so an overflow overwrites the oldest. A free entry has until_us 0. */
    pthread_mutex_t echo_lock;
    struct bridge__awaited {
        uint64_t hash;       /* of topic and payload */
        uint64_t topic_hash; /* of topic alone */
        uint64_t seq;        /* our publishes, in the order handed to Paho */
        int64_t until_us;    /* expiry: awaited no longer after it */
        int64_t rev;         /* the change it carries (an outbox message) */
        bool retained;       /* an outbox message; else a transient one */
        bool acked;          /* the broker has it (PUBACK): its echo will come */
    } echoes[BRIDGE_ECHOES];
    uint64_t echo_seq; /* the last seq given */
    unsigned echo_live;

    pthread_mutex_t in_lock; /* incoming changes not yet committed */
    pthread_cond_t in_cond;
    size_t in_pending;
    _Atomic int64_t last_warn_us;

    _Atomic uint64_t messages_in, messages_out, errors_in, errors_out, attempts;
};

/* What a publish's callbacks need. */
struct bridge__sent {
    struct bridge *b;
    uint64_t gen;
    uint64_t echo_seq; /* its entry among the echoes awaited, or 0 */
    int64_t rev;
    char topic[];
};

/* One incoming change on its way to the commit. */
struct bridge__write {
    struct bridge *b;
    bool echo; /* of ours, guarded by if_rev: a mismatch is a newer local change */
    struct store_txn txn;
    struct store_op op;
    char key[];
};

/* A warning about incoming messages, at most one a second (the rest go to
 * the debug log), so a flood of bad messages cannot flood the log. */
static void bridge__warn_in(struct bridge *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bridge__warn_in(struct bridge *b, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int64_t now = now_us(), last = atomic_load(&b->last_warn_us);
    if (now - last >= 1000000 && atomic_compare_exchange_strong(&b->last_warn_us, &last, now))
        log_warn("bridge: %s", msg);
    else
        log_debug("bridge: %s", msg);
}

/* ---- maps ---- */

/* The offset of the first wildcard segment of a valid filter, or its length. */
static size_t map__prefix(const char *f, size_t len)
{
    size_t seg = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && f[i] != '/')
            continue;
        if (i - seg == 1 && (f[seg] == '+' || f[seg] == '#'))
            return seg;
        seg = i + 1;
    }
    return len;
}

static void map__free(struct bridge_map *m)
{
    free(m->filter);
    free(m->pattern);
}

static int map__parse(const char *spec, struct bridge_map *m, char *why, size_t why_len)
{
    char dir[16], filter[4096], pattern[4096], extra[2];
    char detail[256];
    bool wild;

    memset(m, 0, sizeof *m);
    int n = sscanf(spec, "%15s %4095s %4095s %1s", dir, filter, pattern, extra);
    if (n < 2 || n > 3) {
        snprintf(why, why_len, "'%s': expected in|out|both <topic-filter> [<key-pattern>]", spec);
        return -1;
    }
    if (n == 2)
        strcpy(pattern, filter);
    if (strcmp(dir, "in") == 0)
        m->dir = MAP_IN;
    else if (strcmp(dir, "out") == 0)
        m->dir = MAP_OUT;
    else if (strcmp(dir, "both") == 0)
        m->dir = MAP_IN | MAP_OUT;
    else {
        snprintf(why, why_len, "'%s': '%s' is not in, out or both", spec, dir);
        return -1;
    }
    m->flen = strlen(filter);
    m->plen = strlen(pattern);
    if (store_pattern_check(filter, m->flen, 65535, &wild, detail, sizeof detail) != STORE_OK) {
        snprintf(why, why_len, "'%s': the topic filter '%s': %s", spec, filter, detail);
        return -1;
    }
    if (store_pattern_check(pattern, m->plen, 65535, &wild, detail, sizeof detail) != STORE_OK) {
        snprintf(why, why_len, "'%s': the key pattern '%s': %s", spec, pattern, detail);
        return -1;
    }
    m->fpre = map__prefix(filter, m->flen);
    m->ppre = map__prefix(pattern, m->plen);
    if (m->flen - m->fpre != m->plen - m->ppre ||
        memcmp(filter + m->fpre, pattern + m->ppre, m->flen - m->fpre) != 0) {
        snprintf(why, why_len,
                 "'%s': '%s' and '%s' differ from their first wildcard on; only the part "
                 "before it can be rewritten",
                 spec, filter, pattern);
        return -1;
    }
    if ((m->filter = strdup(filter)) == NULL || (m->pattern = strdup(pattern)) == NULL) {
        map__free(m);
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    return 0;
}

int bridge_map_check(const char *spec, char *why, size_t why_len)
{
    struct bridge_map m;
    if (map__parse(spec, &m, why, why_len) != 0)
        return -1;
    map__free(&m);
    return 0;
}

/* `name` (matching a filter whose literal prefix is `from`, `fpre` bytes)
 * with that prefix replaced by `to` (`tpre` bytes). A new string, or NULL
 * when the result is empty or memory is out. */
static char *map__rewrite(const char *name, size_t nlen, size_t fpre, const char *to, size_t tpre,
                          size_t *out_len)
{
    size_t len;
    if (nlen >= fpre)
        len = tpre + nlen - fpre;
    else /* "a/b" matched by "a/b/#": the prefix without its slash */
        len = tpre > 0 ? tpre - 1 : 0;
    if (len == 0)
        return NULL;
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, to, nlen >= fpre ? tpre : len);
    if (nlen >= fpre)
        memcpy(out + tpre, name + fpre, nlen - fpre);
    out[len] = '\0';
    *out_len = len;
    return out;
}

/* The outbox hook (the committer's thread): the topic of a change of `key`,
 * or NULL when no out map covers it or it came from MQTT (invariant 3). */
static char *bridge__topic(void *arg, const char *key, size_t klen, enum store_origin origin)
{
    struct bridge *b = arg;
    size_t len;
    if (origin == STORE_ORIGIN_MQTT)
        return NULL;
    for (size_t i = 0; i < b->nmaps; i++) {
        const struct bridge_map *m = &b->maps[i];
        if ((m->dir & MAP_OUT) && store_pattern_match(m->pattern, m->plen, key, klen))
            return map__rewrite(key, klen, m->ppre, m->filter, m->fpre, &len);
    }
    return NULL;
}

static void bridge__ready(void *arg)
{
    struct bridge *b = arg;
    pthread_mutex_lock(&b->lock);
    b->more = true;
    b->ready_seq++;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

/* ---- configuration ---- */

/* Splits mqtt[s]://HOST[:PORT] into Paho's URI; NULL with `why` when bad. */
static char *bridge__uri(const char *url, char *why, size_t why_len)
{
    const char *rest, *scheme;
    const char *dflt;
    if (strncmp(url, "mqtt://", 7) == 0) {
        rest = url + 7, scheme = "tcp", dflt = "1883";
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        rest = url + 8, scheme = "ssl", dflt = "8883";
    } else {
        snprintf(why, why_len, "'%s' is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]", url);
        return NULL;
    }
    size_t len = strlen(rest);
    if (len > 0 && rest[len - 1] == '/')
        len--;
    const char *close = memchr(rest, ']', len);
    const char *colon =
        memrchr(close ? close : rest, ':', len - (size_t)((close ? close : rest) - rest));
    if (len == 0 || colon == rest || memchr(rest, '/', len) != NULL) {
        snprintf(why, why_len, "'%s' has no host, or has a path", url);
        return NULL;
    }
    if (colon != NULL) {
        char *end;
        errno = 0;
        long port = strtol(colon + 1, &end, 10);
        if (colon + 1 == rest + len || end != rest + len || errno != 0 || port < 1 ||
            port > 65535) {
            snprintf(why, why_len, "'%s': the port is not a number from 1 to 65535", url);
            return NULL;
        }
    }
    char *uri = NULL;
    if (asprintf(&uri, "%s://%.*s%s%s", scheme, (int)len, rest, colon ? "" : ":",
                 colon ? "" : dflt) < 0) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    return uri;
}

static void bridge__urls_free(struct bridge__urls *u)
{
    for (size_t i = 0; i < u->n; i++) {
        free(u->url[i]);
        free(u->uri[i]);
    }
    u->n = 0;
}

/* Splits the comma-separated `list` into `u` (spaces around each URL
 * dropped), each URL checked, none empty, none a second spelling of another
 * (Paho's URIs compared: mqtt://b and mqtt://b:1883 are one broker), at most
 * BRIDGE_URLS_MAX. All of one scheme: Paho decides TLS once per client (at
 * its creation, and it never turns TLS off again for a plain URL). 0, or -1
 * with a sentence naming the bad URL in `why` and `u` empty. */
static int bridge__urls_parse(const char *list, struct bridge__urls *u, char *why, size_t why_len)
{
    memset(u, 0, sizeof *u);
    for (const char *p = list;; p++) {
        const char *end = strchrnul(p, ',');
        while (p < end && isspace((unsigned char)*p))
            p++;
        size_t len = (size_t)(end - p);
        while (len > 0 && isspace((unsigned char)p[len - 1]))
            len--;
        size_t pos = u->n + 1;
        if (len == 0) {
            snprintf(why, why_len, "URL %zu of '%s' is empty", pos, list);
            goto fail;
        }
        if (u->n == BRIDGE_URLS_MAX) {
            snprintf(why, why_len, "'%.*s' is URL %zu of the list: at most %d are taken", (int)len,
                     p, pos, BRIDGE_URLS_MAX);
            goto fail;
        }
        if (len > BRIDGE_URL_MAX) {
            snprintf(why, why_len, "URL %zu ('%.40s...') is longer than %d bytes", pos, p,
                     BRIDGE_URL_MAX);
            goto fail;
        }
        if ((u->url[u->n] = strndup(p, len)) == NULL) {
            snprintf(why, why_len, "out of memory");
            goto fail;
        }
        u->n++;
        const char *url = u->url[u->n - 1];
        if ((u->uri[u->n - 1] = bridge__uri(url, why, why_len)) == NULL)
            goto fail;
        for (size_t i = 0; i + 1 < u->n; i++) {
            if (strcasecmp(u->uri[i], u->uri[u->n - 1]) == 0) {
                snprintf(why, why_len, "'%s' (URL %zu) is the broker of '%s' (URL %zu) again", url,
                         pos, u->url[i], i + 1);
                goto fail;
            }
        }
        if (strncmp(u->uri[0], u->uri[u->n - 1], 4) != 0) { /* tcp: or ssl: */
            snprintf(why, why_len,
                     "'%s' (URL %zu) and '%s' (URL 1) differ in TLS: every URL of the list "
                     "must be mqtt://, or every one mqtts://",
                     url, pos, u->url[0]);
            goto fail;
        }
        if (*end == '\0')
            return 0;
        p = end;
    }
fail:
    bridge__urls_free(u);
    return -1;
}

int bridge_url_check(const char *url, char *why, size_t why_len)
{
    struct bridge__urls u;
    if (bridge__urls_parse(url, &u, why, why_len) != 0)
        return -1;
    bridge__urls_free(&u);
    return 0;
}

void bridge_config_free(struct bridge_config *c)
{
    free(c->url);
    free(c->client_id);
    free(c->username);
    if (c->password != NULL) {
        explicit_bzero(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->cafile);
    free(c->certfile);
    free(c->keyfile);
    free(c->status_topic);
    for (size_t i = 0; i < c->nmaps; i++)
        free(c->maps[i]);
    free(c->maps);
    memset(c, 0, sizeof *c);
}

static bool bridge__dup(char **dst, const char *src)
{
    *dst = NULL;
    return src == NULL || (*dst = strdup(src)) != NULL;
}

static void bridge__free(struct bridge *b)
{
    for (size_t i = 0; i < b->nmaps; i++)
        map__free(&b->maps[i]);
    free(b->maps);
    bridge__urls_free(&b->urls);
    free(b->url_list);
    bridge_config_free(&b->cfg);
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->in_lock);
    pthread_cond_destroy(&b->in_cond);
    pthread_mutex_destroy(&b->echo_lock);
    free(b);
}

/* Parses the maps of `cfg` (none: both #) into b->maps. 0, or -1 with a
 * sentence naming the bad map in `why`. */
static int bridge__parse_maps(struct bridge *b, const struct bridge_config *cfg, char *why,
                              size_t why_len)
{
    size_t n = cfg->nmaps ? cfg->nmaps : 1;
    if ((b->maps = calloc(n, sizeof *b->maps)) == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char detail[1024];
        if (map__parse(cfg->nmaps ? cfg->maps[i] : "both #", &b->maps[i], detail, sizeof detail) !=
            0) {
            snprintf(why, why_len, "bridge_map %s", detail);
            return -1;
        }
        b->nmaps++;
    }
    return 0;
}

/* Copies `src` into b->cfg, filling in the defaults. */
static int bridge__configure(struct bridge *b, const struct bridge_config *src, char *why,
                             size_t why_len)
{
    struct bridge_config *c = &b->cfg;
    *c = *src;
    c->maps = NULL;
    c->nmaps = 0;
    if (!bridge__dup(&c->url, src->url) || !bridge__dup(&c->client_id, src->client_id) ||
        !bridge__dup(&c->username, src->username) || !bridge__dup(&c->password, src->password) ||
        !bridge__dup(&c->cafile, src->cafile) || !bridge__dup(&c->certfile, src->certfile) ||
        !bridge__dup(&c->keyfile, src->keyfile) ||
        !bridge__dup(&c->status_topic, src->status_topic))
        goto oom;
    if (c->client_id == NULL) {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        if (asprintf(&c->client_id, "almanac-%s", host) < 0) {
            c->client_id = NULL;
            goto oom;
        }
    }
    if (c->status_topic == NULL &&
        asprintf(&c->status_topic, "almanac/%s/status", c->client_id) < 0) {
        c->status_topic = NULL;
        goto oom;
    }
    const char *files[][2] = {{"bridge_cafile", c->cafile},
                              {"bridge_certfile", c->certfile},
                              {"bridge_keyfile", c->keyfile}};
    for (size_t i = 0; i < 3; i++) {
        if (files[i][1] != NULL && access(files[i][1], R_OK) != 0) {
            snprintf(why, why_len, "%s %s: %s", files[i][0], files[i][1], strerror(errno));
            return -1;
        }
    }
    return bridge__parse_maps(b, src, why, why_len);
oom:
    snprintf(why, why_len, "out of memory");
    return -1;
}

/* The URLs of `u` joined by commas: a new string, or NULL. */
static char *bridge__join(const struct bridge__urls *u)
{
    size_t len = 0;
    for (size_t i = 0; i < u->n; i++)
        len += strlen(u->url[i]) + 1;
    char *out = malloc(len + 1), *p = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < u->n; i++)
        p += sprintf(p, "%s%s", i > 0 ? "," : "", u->url[i]);
    *p = '\0';
    return out;
}

int bridge_new(const struct bridge_config *cfg, const struct store_limits *limits,
               struct bridge **out, char *why, size_t why_len)
{
    *out = NULL;
    struct bridge *b = calloc(1, sizeof *b);
    if (b == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    if (cfg->url == NULL) { /* off; the maps are checked all the same */
        int rc = bridge__parse_maps(b, cfg, why, why_len);
        for (size_t i = 0; i < b->nmaps; i++)
            map__free(&b->maps[i]);
        free(b->maps);
        free(b);
        return rc;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    pthread_mutex_init(&b->in_lock, NULL);
    pthread_cond_init(&b->in_cond, NULL);
    pthread_mutex_init(&b->echo_lock, NULL);
    b->limits = *limits;
    b->backoff = 1;
    b->last_node = SIZE_MAX;
    if (bridge__configure(b, cfg, why, why_len) != 0 ||
        bridge__urls_parse(b->cfg.url, &b->urls, why, why_len) != 0)
        goto fail;
    if ((b->url_list = bridge__join(&b->urls)) == NULL) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    *out = b;
    return 0;
fail:
    bridge__free(b);
    return -1;
}

/* ---- in: messages from the broker ---- */

static void bridge__in_done(struct bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    b->in_pending--;
    pthread_cond_signal(&b->in_cond);
    pthread_mutex_unlock(&b->in_lock);
}

static void bridge__written(void *arg, struct store_txn *t)
{
    struct bridge__write *w = arg;
    struct bridge *b = w->b;
    if (t->err != STORE_OK && !(w->echo && t->err == STORE_EREV)) {
        atomic_fetch_add(&b->errors_in, 1);
        bridge__warn_in(b, "the change of %s from MQTT failed: %s", w->key, store_err_text(t->err));
    }
    free(w);
    bridge__in_done(b);
}

/* The labels of a message's user properties, as compact JSON, or NULL. */
static char *bridge__labels(MQTTProperties *props)
{
    json_t *obj = NULL;
    for (int i = 0; i < props->count; i++) {
        const MQTTProperty *p = &props->array[i];
        if (p->identifier != MQTTPROPERTY_CODE_USER_PROPERTY)
            continue;
        json_t *v = json_stringn(p->value.value.data, (size_t)p->value.value.len);
        if (v == NULL)
            continue; /* not UTF-8 */
        if (obj == NULL && (obj = json_object()) == NULL) {
            json_decref(v);
            return NULL;
        }
        char *name = strndup(p->value.data.data, (size_t)p->value.data.len);
        if (name != NULL)
            json_object_set_new(obj, name, v);
        else
            json_decref(v);
        free(name);
    }
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return text;
}

/* The entry of a message: its payload exactly, typed by its content type or,
 * when it has none or the payload does not fit it, sniffed. */
static int bridge__entry(struct bridge *b, const char *key, MQTTAsync_message *m,
                         struct store_entry **e)
{
    char type[256] = "";
    char *labels = NULL;
    if (b->cfg.protocol == 5) {
        MQTTProperty *ct =
            MQTTProperties_getProperty(&m->properties, MQTTPROPERTY_CODE_CONTENT_TYPE);
        if (ct != NULL && ct->value.data.len < (int)sizeof type)
            snprintf(type, sizeof type, "%.*s", ct->value.data.len, ct->value.data.data);
        labels = bridge__labels(&m->properties);
        if (labels != NULL && strlen(labels) > STORE_LABELS_MAX) {
            bridge__warn_in(b, "%s: the user properties exceed %d bytes; dropped", key,
                            STORE_LABELS_MAX);
            free(labels);
            labels = NULL;
        }
    }
    size_t len = (size_t)m->payloadlen;
    int err = store_entry_make(b->store, m->payload, len, type, labels, STORE_ORIGIN_MQTT, e);
    if (err == STORE_EBODY) {
        bridge__warn_in(b, "%s: the payload is not %s; its type is sniffed instead", key, type);
        err = store_entry_make(b->store, m->payload, len, NULL, labels, STORE_ORIGIN_MQTT, e);
    }
    free(labels);
    /* MQTT 5's message expiry interval (the broker counts down what it
     * keeps): the key expires as the message would. */
    if (err == STORE_OK && b->cfg.protocol == 5 &&
        MQTTProperties_hasProperty(&m->properties, MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL)) {
        int secs = MQTTProperties_getNumericValue(&m->properties,
                                                  MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL);
        if (secs > 0 && (err = store_entry_expire_at(e, now_us() + secs * 1000000ll)) != STORE_OK) {
            store_entry_unref(*e);
            *e = NULL;
        }
    }
    return err;
}

/* The first in map of `topic`, or NULL. */
static const struct bridge_map *bridge__in_map(const struct bridge *b, const char *topic,
                                               size_t tlen)
{
    for (size_t i = 0; i < b->nmaps; i++)
        if ((b->maps[i].dir & MAP_IN) &&
            store_pattern_match(b->maps[i].filter, b->maps[i].flen, topic, tlen))
            return &b->maps[i];
    return NULL;
}

static uint64_t bridge__echo_hash(const char *topic, size_t tlen, const void *payload, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a of topic, NUL, payload */
    for (size_t i = 0; i <= tlen; i++)
        h = (h ^ (i < tlen ? (unsigned char)topic[i] : 0)) * 1099511628211ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const unsigned char *)payload)[i]) * 1099511628211ull;
    return h;
}

/* Frees echo entry `e`; the caller holds echo_lock. */
static void bridge__echo_free(struct bridge *b, struct bridge__awaited *e)
{
    if (e->until_us != 0) {
        assert(b->echo_live > 0);
        e->until_us = 0;
        b->echo_live--;
    }
}

/* The entry of publish `seq` when it is still awaited, or NULL; the caller
 * holds echo_lock. */
static struct bridge__awaited *bridge__echo_find(struct bridge *b, uint64_t seq)
{
    struct bridge__awaited *e = &b->echoes[(seq - 1) % BRIDGE_ECHOES];
    return seq != 0 && e->seq == seq && e->until_us != 0 ? e : NULL;
}

enum bridge__echo_kind {
    ECHO_NONE, /* another client's message */
    ECHO_SKIP, /* to be skipped: a transient echo, or a later publish of ours follows */
    ECHO_LAST  /* the echo of our latest awaited publish on the topic (of `*rev`) */
};

/* What a message is to us (invariant 4): the echo of a transient message
 * (stored nowhere, not even here), of a retained one followed by a later
 * retained publish of ours on the topic that has not echoed yet, of our
 * latest retained one, or none. `retained`: the message's flag, or -1 when
 * the protocol (3.1.1) does not tell. The echo is that of our earliest
 * awaited publish of the same topic and payload, which it frees. */
static enum bridge__echo_kind bridge__echo(struct bridge *b, const char *topic, size_t tlen,
                                           const void *payload, size_t len, int retained,
                                           int64_t *rev)
{
    enum bridge__echo_kind kind = ECHO_NONE;
    bool skip = false;
    pthread_mutex_lock(&b->echo_lock);
    if (b->echo_live == 0)
        goto out;
    uint64_t h = bridge__echo_hash(topic, tlen, payload, len);
    int64_t now = now_us();
    struct bridge__awaited *match = NULL;
    for (unsigned i = 0; i < BRIDGE_ECHOES && b->echo_live > 0; i++) {
        struct bridge__awaited *e = &b->echoes[i];
        if (e->until_us == 0)
            continue;
        if (e->until_us < now)
            bridge__echo_free(b, e); /* awaited no longer: today's behaviour */
        else if (e->hash == h && (retained < 0 || e->retained == (retained != 0)) &&
                 (match == NULL || e->seq < match->seq))
            match = e;
    }
    if (match == NULL)
        goto out; /* another client's */
    bool was_retained = match->retained;
    uint64_t seq = match->seq, th = match->topic_hash;
    *rev = match->rev;
    bridge__echo_free(b, match);
    if (!was_retained) {
        kind = ECHO_SKIP;
        goto out;
    }
    for (unsigned i = 0; i < BRIDGE_ECHOES && !skip; i++) {
        const struct bridge__awaited *e = &b->echoes[i];
        skip = e->until_us != 0 && e->retained && e->topic_hash == th && e->seq > seq;
    }
    kind = skip ? ECHO_SKIP : ECHO_LAST;
out:
    pthread_mutex_unlock(&b->echo_lock);
    return kind;
}

/* Awaits the echo of a publish of ours about to be handed to Paho, when an
 * in map covers its topic. Its seq (for bridge__echo_sent), or 0. */
static uint64_t bridge__expect_echo(struct bridge *b, const char *topic, const void *payload,
                                    size_t len, int64_t rev, bool retained)
{
    size_t tlen = strlen(topic);
    if (bridge__in_map(b, topic, tlen) == NULL)
        return 0;
    uint64_t h = bridge__echo_hash(topic, tlen, payload, len);
    uint64_t th = bridge__echo_hash(topic, tlen, NULL, 0);
    pthread_mutex_lock(&b->echo_lock);
    uint64_t seq = ++b->echo_seq;
    struct bridge__awaited *e = &b->echoes[(seq - 1) % BRIDGE_ECHOES];
    b->echo_live += e->until_us == 0; /* else the oldest is overwritten */
    *e = (struct bridge__awaited){.hash = h,
                                  .topic_hash = th,
                                  .seq = seq,
                                  .until_us = now_us() + BRIDGE_ECHO_WAIT * 1000000ll,
                                  .rev = rev,
                                  .retained = retained};
    pthread_mutex_unlock(&b->echo_lock);
    return seq;
}

/* What became of publish `seq`: the broker has it (`acked`: its echo will
 * come), or it failed (it may never echo, so it is awaited no longer). */
static void bridge__echo_sent(struct bridge *b, uint64_t seq, bool acked)
{
    if (seq == 0)
        return;
    pthread_mutex_lock(&b->echo_lock);
    struct bridge__awaited *e = bridge__echo_find(b, seq);
    if (e != NULL && acked)
        e->acked = true;
    else if (e != NULL)
        bridge__echo_free(b, e);
    pthread_mutex_unlock(&b->echo_lock);
}

/* A new connection sends again what was not acknowledged (invariant 2):
 * those publishes may never echo, so they are awaited no longer. */
static void bridge__echo_reset(struct bridge *b)
{
    pthread_mutex_lock(&b->echo_lock);
    for (unsigned i = 0; i < BRIDGE_ECHOES && b->echo_live > 0; i++)
        if (b->echoes[i].retained && !b->echoes[i].acked)
            bridge__echo_free(b, &b->echoes[i]);
    pthread_mutex_unlock(&b->echo_lock);
}

/* Whether `key` holds a local change newer than `rev`, the change our latest
 * awaited publish carried: one not yet handed to Paho (still in the outbox,
 * or not even committed), so the echo is skipped as bridge__echo would have
 * had it been published (invariant 4). Otherwise `*if_rev` gets the rev the
 * echo is applied on (0: absent), so that a local change made meanwhile is
 * not undone. `key` is valid. When the key is absent a deletion came after:
 * ours when the outbox holds a newer change of the topic (skipped), else
 * another client's (applied). Waits for the commits the answer reflects
 * (store_get; the outbox has a change once it is committed), as Paho's
 * thread already does for BRIDGE_IN_PENDING. */
static bool bridge__newer_here(struct bridge *b, const char *topic, size_t tlen, const char *key,
                               size_t klen, int64_t rev, int64_t *if_rev)
{
    struct store_entry *cur = NULL;
    /* Only a key whose changes go out to this very topic will see its newer
     * change echo here; any other is left to the broker's order. */
    char *out = bridge__topic(b, key, klen, STORE_ORIGIN_HTTP);
    bool same = out != NULL && strlen(out) == tlen && memcmp(out, topic, tlen) == 0;
    *if_rev = STORE_ANY_REV;
    if (!same) {
        free(out);
        return false;
    }
    if (store_get(b->store, key, klen, &cur) != STORE_OK) {
        /* Gone: by a deletion of ours still waiting for the broker (newer
         * than the echo: skipped), or by another client's (applied). */
        bool newer = store_outbox_waiting(b->store, out) > rev;
        free(out);
        *if_rev = 0;
        return newer;
    }
    free(out);
    int64_t cur_rev = store_entry_rev(cur);
    bool newer = cur_rev > rev && store_entry_origin(cur) != STORE_ORIGIN_MQTT;
    store_entry_unref(cur);
    *if_rev = cur_rev;
    return newer;
}

static int bridge__status(struct bridge *b, const char *status);

/* A message on our status topic: `offline` while we are connected is a will
 * that came late, from a node we left. A cluster (or a bridged pair)
 * publishes the will of a connection when the node that held it gets round
 * to it, which may be after our `online` on the new node; said again,
 * `online` has the last word, as after a reconnect to one broker. */
static void bridge__status_seen(struct bridge *b, const char *topic, size_t tlen,
                                const MQTTAsync_message *m)
{
    if (tlen != strlen(b->cfg.status_topic) || memcmp(topic, b->cfg.status_topic, tlen) != 0 ||
        m->payloadlen != 7 || memcmp(m->payload, "offline", 7) != 0)
        return;
    pthread_mutex_lock(&b->lock);
    bool connected = b->state == BS_CONNECTED && !b->stop; /* stop: our own goodbye */
    pthread_mutex_unlock(&b->lock);
    if (!connected)
        return;
    log_info("bridge: %s is offline while connected (a late will); online again",
             b->cfg.status_topic);
    bridge__status(b, "online");
}

static int bridge__arrived(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
    struct bridge *b = ctx;
    size_t tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic), klen = 0;
    char *key = NULL, why[256];
    const struct bridge_map *map = bridge__in_map(b, topic, tlen);

    bridge__status_seen(b, topic, tlen, m);
    if (map == NULL) /* our status topic, or a subscription of an earlier configuration */
        goto out;
    /* MQTT 3.1.1 does not tell a retained message from a live one. */
    bool retained = m->retained || b->cfg.protocol != 5;
    int64_t echo_rev = 0, if_rev = STORE_ANY_REV;
    enum bridge__echo_kind echo =
        bridge__echo(b, topic, tlen, m->payload, (size_t)m->payloadlen,
                     b->cfg.protocol == 5 ? m->retained != 0 : -1, &echo_rev);
    if (echo == ECHO_SKIP)
        goto out;
    atomic_fetch_add(&b->messages_in, 1);
    key = map__rewrite(topic, tlen, map->fpre, map->pattern, map->ppre, &klen);
    if (key == NULL ||
        store_key_check(key, klen, b->limits.max_key_bytes, why, sizeof why) != STORE_OK) {
        atomic_fetch_add(&b->errors_in, 1);
        bridge__warn_in(b, "topic %.*s: no valid key: %s", (int)tlen, topic,
                        key ? why : "the map leaves it empty");
        goto out;
    }
    if ((size_t)m->payloadlen > b->limits.max_value_bytes) {
        atomic_fetch_add(&b->errors_in, 1);
        bridge__warn_in(b, "%s: the payload of %d bytes exceeds max_value_bytes; dropped", key,
                        m->payloadlen);
        goto out;
    }
    if (echo == ECHO_LAST && bridge__newer_here(b, topic, tlen, key, klen, echo_rev, &if_rev))
        goto out;
    struct bridge__write *w = calloc(1, sizeof *w + klen + 1);
    if (w == NULL)
        goto oom;
    memcpy(w->key, key, klen + 1);
    w->b = b;
    w->op.key = w->key;
    w->op.klen = klen;
    w->op.if_rev = if_rev;
    w->echo = echo == ECHO_LAST;
    w->op.origin = STORE_ORIGIN_MQTT;
    if (m->payloadlen == 0 && retained) {
        w->op.kind = STORE_OP_DELETE;
        if (if_rev == 0) /* absent already: nothing to guard */
            w->op.if_rev = STORE_ANY_REV;
    } else {
        w->op.kind = STORE_OP_SET;
        /* The state the broker holds, sent again (at a subscribe, or as
         * the echo of our own publish), is not a change. */
        w->op.if_changed = retained;
        int err = bridge__entry(b, key, m, &w->op.entry);
        if (err != STORE_OK) {
            free(w);
            if (err == STORE_EINTERNAL)
                goto oom;
            atomic_fetch_add(&b->errors_in, 1);
            bridge__warn_in(b, "%s: %s", key, store_err_text(err));
            goto out;
        }
    }
    w->txn.ops = &w->op;
    w->txn.n = 1;
    pthread_mutex_lock(&b->in_lock);
    while (b->in_pending >= BRIDGE_IN_PENDING)
        pthread_cond_wait(&b->in_cond, &b->in_lock);
    b->in_pending++;
    pthread_mutex_unlock(&b->in_lock);
    int err = store_submit(b->store, &w->txn, bridge__written, w);
    if (err != STORE_OK) { /* `done` will not run */
        atomic_fetch_add(&b->errors_in, 1);
        bridge__warn_in(b, "the change of %s from MQTT failed: %s", key, store_err_text(err));
        free(w);
        bridge__in_done(b);
    }
    goto out;
oom:
    atomic_fetch_add(&b->errors_in, 1);
    bridge__warn_in(b, "out of memory: a message on %.*s is dropped", (int)tlen, topic);
out:
    free(key);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

/* ---- the connection ---- */

/* After a failed attempt or a lost connection (`lost`) to the node
 * b->node: the next node of the list, at once while this round has nodes
 * left to try (a switch waits for nothing), else, once each was tried, the
 * round starts again after the backoff. A lost connection starts a round
 * from the node after it; with one node that is the same one, a second
 * later, as ever. So does a connection lost within BRIDGE_STABLE seconds of
 * being made (a node that takes connections and drops them, or another
 * client under our id): a second, not a tight loop round the nodes. */
static void bridge__schedule(struct bridge *b, const char *what, const char *why, bool lost)
{
    char next[BRIDGE_URL_MAX + 64];
    pthread_mutex_lock(&b->lock);
    const char *url = b->urls.url[b->node];
    int64_t now = now_us();
    bool stable = lost && now - b->connected_since_us >= BRIDGE_STABLE * 1000000ll;
    b->state = BS_DISCONNECTED;
    if (lost) {
        b->backoff = 1;
        b->tries = 0;
    }
    b->node = (b->node + 1) % b->urls.n;
    unsigned wait = 0;
    if (b->urls.n > 1 && (stable || (!lost && b->tries < b->urls.n))) {
        snprintf(next, sizeof next, "trying %s next", b->urls.url[b->node]);
    } else {
        wait = b->backoff;
        b->backoff = b->backoff * 2 > BRIDGE_BACKOFF_MAX ? BRIDGE_BACKOFF_MAX : b->backoff * 2;
        b->tries = 0;
        snprintf(next, sizeof next, "next attempt in %u s", wait);
    }
    b->next_attempt_us = now + (int64_t)wait * 1000000;
    if (snprintf(b->last_error, sizeof b->last_error, "%s %s: %s", what, url, why) >=
        (int)sizeof b->last_error)
        b->last_error[sizeof b->last_error - 1] = '\0'; /* cut (a long URL or reason) */
    bool stopping = b->stop;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    if (!stopping)
        log_warn("bridge: %s %s: %s; %s", what, url, why, next);
}

/* A CONNACK refusal of MQTT 3.1.1, by its return code. */
static const char *bridge__connack_text(int code)
{
    static const char *const text[] = {
        NULL,
        "the broker refused the connection: unacceptable protocol version",
        "the broker refused the connection: client identifier rejected",
        "the broker refused the connection: server unavailable",
        "the broker refused the connection: bad user name or password",
        "the broker refused the connection: not authorized",
    };
    return code >= 1 && code <= 5 ? text[code] : NULL;
}

/* `reason`: an MQTT 5 reason code; `code`: Paho's error, or the return code
 * of an MQTT 3.1.1 CONNACK. */
static void bridge__failed(struct bridge *b, int reason, int code, const char *message)
{
    char why[256];
    const char *connack = b->cfg.protocol == 5 ? NULL : bridge__connack_text(code);
    if (reason >= 0x80)
        snprintf(why, sizeof why, "the broker refused the connection: %s (reason code %d)",
                 MQTTReasonCode_toString((enum MQTTReasonCodes)reason), reason);
    else if (connack != NULL)
        snprintf(why, sizeof why, "%s (return code %d)", connack, code);
    else
        snprintf(why, sizeof why, "%s", message ? message : MQTTAsync_strerror(code));
    bridge__schedule(b, "cannot connect to", why, false);
}

static void bridge__connect_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    /* A CONNACK refusal comes as `code` (Paho 1.3), or as `reasonCode`. */
    int reason = r == NULL ? 0 : (int)r->reasonCode >= 0x80 ? (int)r->reasonCode : r->code;
    bridge__failed(ctx, reason, r ? r->code : MQTTASYNC_FAILURE, r ? r->message : NULL);
}

static void bridge__connect_failed(void *ctx, MQTTAsync_failureData *r)
{
    int code = r ? r->code : MQTTASYNC_FAILURE;
    bridge__failed(ctx, 0, code, bridge__connack_text(code) ? NULL : r ? r->message : NULL);
}

static void bridge__subscribed5(void *ctx, MQTTAsync_successData5 *r)
{
    struct bridge *b = ctx;
    size_t k = 0;
    int n = r->alt.sub.reasonCodeCount;
    for (size_t i = 0; i < b->nmaps; i++) {
        if (!(b->maps[i].dir & MAP_IN))
            continue;
        int rc = (int)(n > 1 ? r->alt.sub.reasonCodes[k] : r->reasonCode);
        if (rc >= 0x80)
            log_error("bridge: the broker refused the subscription to %s: %s", b->maps[i].filter,
                      MQTTReasonCode_toString((enum MQTTReasonCodes)rc));
        k++;
    }
}

static void bridge__subscribe_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    (void)ctx;
    log_error("bridge: subscribing failed: %s",
              r && r->message ? r->message : MQTTReasonCode_toString(r ? r->reasonCode : 0));
}

static void bridge__subscribe_failed(void *ctx, MQTTAsync_failureData *r)
{
    (void)ctx;
    log_error("bridge: subscribing failed: %s",
              r && r->message ? r->message : MQTTAsync_strerror(r ? r->code : MQTTASYNC_FAILURE));
}

static void bridge__subscribe(struct bridge *b)
{
    char *filters[64];
    int qos[64];
    MQTTSubscribe_options opts[64];
    int n = 0;
    for (size_t i = 0; i < b->nmaps && n < 64; i++) {
        if (!(b->maps[i].dir & MAP_IN))
            continue;
        filters[n] = b->maps[i].filter;
        qos[n] = b->cfg.qos;
        opts[n] = (MQTTSubscribe_options)MQTTSubscribe_options_initializer;
        opts[n].retainAsPublished = 1; /* tells a retained delete from an empty value */
        n++;
    }
    /* Our status topic, for bridge__status_seen, unless a map brings it. */
    const char *status = b->cfg.status_topic;
    if (n < 64 && bridge__in_map(b, status, strlen(status)) == NULL) {
        filters[n] = (char *)status;
        qos[n] = 1;
        opts[n] = (MQTTSubscribe_options)MQTTSubscribe_options_initializer;
        n++;
    }
    if (n == 0)
        return;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = b;
    if (b->cfg.protocol == 5) {
        ro.onSuccess5 = bridge__subscribed5;
        ro.onFailure5 = bridge__subscribe_failed5;
        ro.subscribeOptions = opts[0]; /* Paho reads it when there is one */
        ro.subscribeOptionsList = opts;
        ro.subscribeOptionsCount = n;
    } else
        ro.onFailure = bridge__subscribe_failed;
    int rc = MQTTAsync_subscribeMany(b->client, n, filters, qos, &ro);
    if (rc != MQTTASYNC_SUCCESS)
        log_error("bridge: cannot subscribe: %s", MQTTAsync_strerror(rc));
}

/* Publishes the status retained at QoS 1. The token, or -1. */
static int bridge__status(struct bridge *b, const char *status)
{
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    msg.payload = (void *)status;
    msg.payloadlen = (int)strlen(status);
    msg.qos = 1;
    msg.retained = 1;
    int rc = MQTTAsync_sendMessage(b->client, b->cfg.status_topic, &msg, &ro);
    return rc == MQTTASYNC_SUCCESS ? ro.token : -1;
}

/* `server_uri`: the URI Paho says it connected to (NULL: the attempt's). */
static void bridge__connected(struct bridge *b, const char *server_uri, int session_present,
                              int receive_max)
{
    bridge__echo_reset(b); /* before this connection publishes anything */
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; server_uri != NULL && i < b->urls.n; i++)
        if (strcmp(b->urls.uri[i], server_uri) == 0)
            b->node = i;
    size_t node = b->node, last = b->last_node;
    b->last_node = node;
    b->tries = 0;
    b->state = BS_CONNECTED;
    /* Paho holds back what exceeds the broker's receive maximum and sends it
     * late (it polls once a second): never hand it more than that. */
    b->window =
        receive_max > 0 && receive_max < BRIDGE_WINDOW ? (unsigned)receive_max : BRIDGE_WINDOW;
    b->backoff = 1;
    b->gen++;
    b->sent_rev = 0; /* invariant 2, on another node as on the same one */
    b->inflight = 0;
    b->more = true;
    b->connected_since_us = now_us();
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    log_info("bridge: connected to %s as %s (MQTT %s, %s session)%s%s", b->urls.url[node],
             b->cfg.client_id, b->cfg.protocol == 5 ? "5" : "3.1.1",
             session_present ? "resumed" : "new",
             last != SIZE_MAX && last != node ? "; failed over from " : "",
             last != SIZE_MAX && last != node ? b->urls.url[last] : "");
    bridge__subscribe(b);
    bridge__status(b, "online");
}

static void bridge__connect_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    int receive_max = 0;
    if (r != NULL && MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
        receive_max =
            MQTTProperties_getNumericValue(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    bridge__connected(ctx, r ? r->alt.connect.serverURI : NULL,
                      r ? r->alt.connect.sessionPresent : 0, receive_max);
}

static void bridge__connect_ok(void *ctx, MQTTAsync_successData *r)
{
    bridge__connected(ctx, r ? r->alt.connect.serverURI : NULL,
                      r ? r->alt.connect.sessionPresent : 0, 0);
}

static void bridge__lost(void *ctx, char *cause)
{
    (void)cause; /* always NULL, says Paho */
    bridge__schedule(ctx, "lost the connection to", "the broker closed it or stopped answering",
                     true);
}

static void bridge__connect(struct bridge *b)
{
    MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_connectOptions o3 = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions *o = b->cfg.protocol == 5 ? &o5 : &o3;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;

    /* A barrier before the attempt sets its callbacks: Paho calls
     * bridge__lost and the failure callbacks holding its mutex, and clears
     * its connect callbacks after them; MQTTAsync_isConnected takes that
     * mutex, so whatever ended the last attempt is done with them. */
    (void)MQTTAsync_isConnected(b->client);
    pthread_mutex_lock(&b->lock);
    size_t node = b->node;
    b->tries++;
    pthread_mutex_unlock(&b->lock);
    /* One node per attempt, bridge__schedule picks the next: given several,
     * Paho would go on to the next by itself after a loss, without our
     * callbacks (cleared at the CONNACK), so no one would know it is
     * connected, nor to which node. */
    char *uris[1] = {b->urls.uri[node]};
    o->serverURIs = uris;
    o->serverURIcount = 1;
    uint64_t attempt = atomic_fetch_add(&b->attempts, 1) + 1;
    log_info("bridge: connecting to %s as %s (attempt %llu)", b->urls.url[node], b->cfg.client_id,
             (unsigned long long)attempt);
    o->keepAliveInterval = (int)b->cfg.keepalive;
    o->connectTimeout = 10;
    o->maxInflight = BRIDGE_WINDOW;
    o->context = b;
    o->username = b->cfg.username;
    o->password = b->cfg.password;
    will.topicName = b->cfg.status_topic;
    will.message = "offline";
    will.retained = 1;
    will.qos = 1;
    o->will = &will;
    if (strncmp(b->urls.uri[0], "ssl://", 6) == 0) { /* all of one scheme */
        ssl.trustStore = b->cfg.cafile;
        ssl.keyStore = b->cfg.certfile;
        ssl.privateKey = b->cfg.keyfile;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        o->ssl = &ssl;
    }
    if (b->cfg.protocol == 5) {
        MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
        p.value.integer4 = b->cfg.session_expiry;
        MQTTProperties_add(&props, &p);
        o->cleanstart = 0;
        o->connectProperties = &props;
        o->onSuccess5 = bridge__connect_ok5;
        o->onFailure5 = bridge__connect_failed5;
    } else {
        o->cleansession = 0; /* the broker keeps the session */
        o->MQTTVersion = MQTTVERSION_3_1_1;
        o->onSuccess = bridge__connect_ok;
        o->onFailure = bridge__connect_failed;
    }
    int rc = MQTTAsync_connect(b->client, o);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS)
        bridge__failed(b, 0, rc, NULL);
}

/* ---- out: the outbox ---- */

static void bridge__settle(struct bridge__sent *s, bool resend)
{
    struct bridge *b = s->b;
    pthread_mutex_lock(&b->lock);
    if (s->gen == b->gen) {
        b->inflight--;
        if (resend && s->rev <= b->sent_rev) {
            b->sent_rev = s->rev - 1;
            b->more = true;
        }
    }
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    free(s);
}

static void bridge__delivered(struct bridge__sent *s)
{
    bridge__echo_sent(s->b, s->echo_seq, true);
    store_outbox_ack(s->b->store, s->topic, s->rev);
    atomic_fetch_add(&s->b->messages_out, 1);
    bridge__settle(s, false);
}

static void bridge__sent_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    bridge__delivered(ctx);
}

static void bridge__sent_ok(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    bridge__delivered(ctx);
}

static void bridge__sent_failed(struct bridge__sent *s, int reason, const char *message)
{
    struct bridge *b = s->b;
    bridge__echo_sent(b, s->echo_seq, false);
    /* Refusals that sending again cannot change: the row goes. */
    if (reason == MQTTREASONCODE_NOT_AUTHORIZED || reason == MQTTREASONCODE_TOPIC_NAME_INVALID ||
        reason == MQTTREASONCODE_PACKET_TOO_LARGE ||
        reason == MQTTREASONCODE_PAYLOAD_FORMAT_INVALID) {
        log_error("bridge: the broker refused the publish to %s (rev %lld): %s; it is dropped",
                  s->topic, (long long)s->rev,
                  MQTTReasonCode_toString((enum MQTTReasonCodes)reason));
        atomic_fetch_add(&b->errors_out, 1);
        store_outbox_ack(b->store, s->topic, s->rev);
        bridge__settle(s, false);
        return;
    }
    log_debug("bridge: the publish to %s failed (%s); it goes out again", s->topic,
              message ? message : "no reason given");
    bridge__settle(s, true);
}

static void bridge__sent_failed5(void *ctx, MQTTAsync_failureData5 *r)
{
    bridge__sent_failed(ctx, r ? (int)r->reasonCode : 0, r ? r->message : NULL);
}

static void bridge__sent_failed3(void *ctx, MQTTAsync_failureData *r)
{
    bridge__sent_failed(ctx, 0, r ? r->message : NULL);
}

/* Adds the content type, the labels (as user properties) and the time left
 * (the message expiry interval) of `e`. */
static void bridge__properties(MQTTProperties *props, const struct store_entry *e)
{
    MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE};
    p.value.data.data = (char *)store_entry_type(e);
    p.value.data.len = (int)strlen(p.value.data.data);
    MQTTProperties_add(props, &p);
    const char *labels = store_entry_labels(e);
    json_t *obj = labels ? json_loads(labels, 0, NULL) : NULL;
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        MQTTProperty u = {.identifier = MQTTPROPERTY_CODE_USER_PROPERTY};
        u.value.data.data = (char *)name;
        u.value.data.len = (int)strlen(name);
        u.value.value.data = (char *)json_string_value(v);
        u.value.value.len = (int)json_string_length(v);
        if (u.value.value.data != NULL)
            MQTTProperties_add(props, &u);
    }
    json_decref(obj);
    int64_t expires = store_entry_expires(e);
    if (expires > 0) { /* the seconds that remain, at least one */
        int64_t left = (expires - now_us() + 999999) / 1000000;
        MQTTProperty x = {.identifier = MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL};
        x.value.integer4 = (unsigned)(left < 1 ? 1 : left > UINT32_MAX ? UINT32_MAX : left);
        MQTTProperties_add(props, &x);
    }
}

/* A message of `e` (NULL: an empty payload) at bridge_qos; free its
 * properties after sending. */
static void bridge__message(struct bridge *b, const struct store_entry *e, int retained,
                            MQTTAsync_message *msg)
{
    *msg = (MQTTAsync_message)MQTTAsync_message_initializer;
    size_t len = 0;
    if (e != NULL) {
        msg->payload = (void *)store_entry_value(e, &len);
        if (b->cfg.protocol == 5)
            bridge__properties(&msg->properties, e);
    }
    msg->payloadlen = (int)len;
    msg->qos = b->cfg.qos;
    msg->retained = retained;
}

/* The store's publish hook: a transient message goes out now, not retained,
 * or not at all when the broker is away. */
static void bridge__publish_now(void *arg, const char *topic, const struct store_entry *e)
{
    struct bridge *b = arg;
    pthread_mutex_lock(&b->lock);
    bool connected = b->state == BS_CONNECTED;
    pthread_mutex_unlock(&b->lock);
    if (!connected)
        return;
    MQTTAsync_message msg;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    bridge__message(b, e, 0, &msg);
    bridge__expect_echo(b, topic, msg.payload, (size_t)msg.payloadlen, 0, false);
    int rc = MQTTAsync_sendMessage(b->client, topic, &msg, &ro);
    MQTTProperties_free(&msg.properties);
    if (rc != MQTTASYNC_SUCCESS)
        log_debug("bridge: cannot publish to %s now: %s", topic, MQTTAsync_strerror(rc));
}

/* Hands one outbox message to Paho. 0, or -1 when Paho refused it now. */
static int bridge__publish(struct bridge *b, const struct store_outbox_msg *m, uint64_t gen)
{
    size_t tlen = strlen(m->topic);
    struct bridge__sent *s = malloc(sizeof *s + tlen + 1);
    if (s == NULL)
        return -1;
    s->b = b;
    s->gen = gen;
    s->rev = m->rev;
    memcpy(s->topic, m->topic, tlen + 1);

    MQTTAsync_message msg;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    bridge__message(b, m->entry, 1, &msg);
    /* Awaited before Paho has it: the echo may come before sendMessage returns. */
    s->echo_seq =
        bridge__expect_echo(b, m->topic, msg.payload, (size_t)msg.payloadlen, m->rev, true);
    ro.context = s;
    if (b->cfg.protocol == 5) {
        ro.onSuccess5 = bridge__sent_ok5;
        ro.onFailure5 = bridge__sent_failed5;
    } else {
        ro.onSuccess = bridge__sent_ok;
        ro.onFailure = bridge__sent_failed3;
    }
    int rc = MQTTAsync_sendMessage(b->client, m->topic, &msg, &ro);
    MQTTProperties_free(&msg.properties);
    if (rc == MQTTASYNC_SUCCESS)
        return 0;
    log_debug("bridge: cannot publish to %s now: %s", m->topic, MQTTAsync_strerror(rc));
    bridge__echo_sent(b, s->echo_seq, false);
    free(s);
    return -1;
}

/* Hands the next outbox messages to Paho. The caller holds `lock`, which is
 * released meanwhile (invariant 1). Whether to go on at once. */
static bool bridge__send_some(struct bridge *b)
{
    struct store_outbox_msg msgs[BRIDGE_BATCH];
    size_t room = b->window - b->inflight;
    if (room > BRIDGE_BATCH)
        room = BRIDGE_BATCH;
    int64_t after = b->sent_rev;
    uint64_t gen = b->gen, seq = b->ready_seq;
    pthread_mutex_unlock(&b->lock);
    size_t n = store_outbox_next(b->store, after, msgs, room);
    pthread_mutex_lock(&b->lock);
    bool current = gen == b->gen && b->state == BS_CONNECTED && b->sent_rev == after;
    if (current && n > 0) {
        b->inflight += (unsigned)n;
        b->sent_rev = msgs[n - 1].rev;
    }
    if (current && n < room && seq == b->ready_seq)
        b->more = false; /* all there is, until bridge__ready */
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        if (current && bridge__publish(b, &msgs[i], gen) != 0) {
            /* Paho takes nothing now: these go again on the next wake-up. */
            pthread_mutex_lock(&b->lock);
            if (gen == b->gen) {
                b->inflight -= (unsigned)(n - i);
                if (b->sent_rev >= msgs[i].rev)
                    b->sent_rev = msgs[i].rev - 1;
                b->more = true;
            }
            pthread_mutex_unlock(&b->lock);
            current = false;
        }
        store_outbox_msg_clear(&msgs[i]);
    }
    pthread_mutex_lock(&b->lock);
    return current && n > 0;
}

static void *bridge__run(void *arg)
{
    struct bridge *b = arg;
    pthread_mutex_lock(&b->lock);
    while (!b->stop) {
        int64_t now = now_us();
        if (b->state == BS_DISCONNECTED && now >= b->next_attempt_us) {
            b->state = BS_CONNECTING;
            pthread_mutex_unlock(&b->lock);
            bridge__connect(b);
            pthread_mutex_lock(&b->lock);
            continue;
        }
        if (b->state == BS_CONNECTED && b->more && b->inflight < b->window && bridge__send_some(b))
            continue;
        int64_t until = b->state == BS_DISCONNECTED ? b->next_attempt_us : now + 1000000;
        struct timespec ts = {.tv_sec = until / 1000000, .tv_nsec = (until % 1000000) * 1000};
        pthread_cond_timedwait(&b->cond, &b->lock, &ts);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

void bridge_outbox_hooks(struct bridge *b, struct store_outbox_hooks *h)
{
    memset(h, 0, sizeof *h);
    if (b == NULL)
        return;
    h->topic = bridge__topic;
    h->ready = bridge__ready;
    h->publish = bridge__publish_now;
    h->arg = b;
}

int bridge_start(struct bridge *b, struct store *store, char *why, size_t why_len)
{
    MQTTAsync_createOptions co5 = MQTTAsync_createOptions_initializer5;
    MQTTAsync_createOptions co3 = MQTTAsync_createOptions_initializer;
    b->store = store;
    /* Publishes wait in Paho's queue until the broker's receive maximum lets
     * them go: room for a whole window. */
    co5.maxBufferedMessages = co3.maxBufferedMessages = 2 * BRIDGE_WINDOW;
    /* No Paho persistence: the outbox is ours, in SQLite. */
    /* The first node's URI: each attempt names its node (serverURIs). */
    int rc = MQTTAsync_createWithOptions(&b->client, b->urls.uri[0], b->cfg.client_id,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL,
                                         b->cfg.protocol == 5 ? &co5 : &co3);
    if (rc != MQTTASYNC_SUCCESS) {
        snprintf(why, why_len, "bridge_url %s: %s", b->cfg.url, MQTTAsync_strerror(rc));
        return -1;
    }
    b->created = true;
    MQTTAsync_setCallbacks(b->client, b, bridge__lost, bridge__arrived, NULL);
    b->state = BS_DISCONNECTED;
    b->next_attempt_us = 0;
    if (pthread_create(&b->thread, NULL, bridge__run, b) != 0) {
        snprintf(why, why_len, "cannot start the bridge's thread");
        return -1;
    }
    b->started = true;
    return 0;
}

static void bridge__disconnected(void *ctx, MQTTAsync_successData *r)
{
    struct bridge *b = ctx;
    (void)r;
    pthread_mutex_lock(&b->lock);
    b->state = BS_DISCONNECTED;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

static void bridge__disconnect_failed(void *ctx, MQTTAsync_failureData *r)
{
    (void)r;
    bridge__disconnected(ctx, NULL);
}

void bridge_stop(struct bridge *b)
{
    if (b == NULL || !b->started)
        return;
    pthread_mutex_lock(&b->lock);
    b->stop = true;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    pthread_join(b->thread, NULL);
    b->started = false;

    pthread_mutex_lock(&b->lock);
    bool connected = b->state == BS_CONNECTED;
    const char *node = b->urls.url[b->node];
    pthread_mutex_unlock(&b->lock);
    if (connected) {
        /* A clean goodbye: the will is for when almanac dies. */
        int token = bridge__status(b, "offline");
        if (token >= 0)
            MQTTAsync_waitForCompletion(b->client, token, 2000);
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        d.timeout = 1000;
        d.context = b;
        d.onSuccess = bridge__disconnected;
        d.onFailure = bridge__disconnect_failed;
        if (MQTTAsync_disconnect(b->client, &d) == MQTTASYNC_SUCCESS) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 2;
            pthread_mutex_lock(&b->lock);
            while (b->state == BS_CONNECTED &&
                   pthread_cond_timedwait(&b->cond, &b->lock, &until) == 0)
                ;
            pthread_mutex_unlock(&b->lock);
        }
        log_info("bridge: disconnected from %s", node);
    }
    MQTTAsync_destroy(&b->client); /* no callback runs after it */
    b->created = false;
    /* The messages that came in are committed before the store drains. */
    pthread_mutex_lock(&b->in_lock);
    while (b->in_pending > 0)
        pthread_cond_wait(&b->in_cond, &b->in_lock);
    pthread_mutex_unlock(&b->in_lock);
}

void bridge_free(struct bridge *b)
{
    if (b == NULL)
        return;
    bridge_stop(b);
    if (b->created)
        MQTTAsync_destroy(&b->client);
    bridge__free(b);
}

void bridge_stats(struct bridge *b, struct bridge_stats *out)
{
    memset(out, 0, sizeof *out);
    if (b == NULL) {
        out->state = "off";
        return;
    }
    pthread_mutex_lock(&b->lock);
    out->state = bridge__state_names[b->state];
    snprintf(out->last_error, sizeof out->last_error, "%s", b->last_error);
    out->connected_since_us = b->state == BS_CONNECTED ? b->connected_since_us : 0;
    if (b->state == BS_CONNECTED)
        snprintf(out->node, sizeof out->node, "%s", b->urls.url[b->node]);
    pthread_mutex_unlock(&b->lock);
    snprintf(out->url, sizeof out->url, "%s", b->url_list);
    snprintf(out->client_id, sizeof out->client_id, "%s", b->cfg.client_id);
    out->messages_in = atomic_load(&b->messages_in);
    out->messages_out = atomic_load(&b->messages_out);
    out->errors_in = atomic_load(&b->errors_in);
    out->errors_out = atomic_load(&b->errors_out);
    uint64_t attempts = atomic_load(&b->attempts);
    out->reconnects = attempts > 0 ? attempts - 1 : 0;
}

/* The maps are fixed once bridge_new returns: read without the lock. */
bool bridge_maps_out(const struct bridge *b, const char *key, size_t klen)
{
    if (b == NULL)
        return false;
    for (size_t i = 0; i < b->nmaps; i++)
        if ((b->maps[i].dir & MAP_OUT) &&
            store_pattern_match(b->maps[i].pattern, b->maps[i].plen, key, klen))
            return true;
    return false;
}
