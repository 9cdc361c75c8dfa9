/*
 * bridge.h — the MQTT bridge: keys mirrored to and from a broker with
 * Eclipse Paho MQTT C (MQTTAsync), through maps of topics to keys and the
 * store's persistent outbox.
 *
 * A client of the store's API only (ARCHITECTURE.md: gateway → bridge →
 * store). Paho's threads call the bridge; the bridge only enqueues.
 */
#ifndef ALMANAC_BRIDGE_H
#define ALMANAC_BRIDGE_H

#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* bridge_url takes up to BRIDGE_URLS_MAX URLs (the nodes of a cluster, or a
 * failover pair), each at most BRIDGE_URL_MAX bytes. */
#define BRIDGE_URLS_MAX 16
#define BRIDGE_URL_MAX  300

struct bridge_config {
    /* mqtt://host[:port] or mqtts://host[:port], or several, comma-separated:
     * tried in order, the next one when the connection is lost; NULL: off */
    char *url;
    char *client_id; /* NULL: almanac-<hostname> */
    char *username, *password;
    char *cafile, *certfile, *keyfile; /* TLS; NULL: the system's CAs, no client cert */
    int protocol;                      /* 5, or 4 for MQTT 3.1.1 */
    int qos;                           /* of outgoing publishes and of the subscriptions */
    unsigned keepalive;                /* seconds */
    unsigned session_expiry;           /* seconds the broker keeps the session (MQTT 5) */
    char *status_topic;                /* NULL: almanac/<client_id>/status */
    char **maps;                       /* "in|out|both FILTER [PATTERN]"; none: both # */
    size_t nmaps;
};

/* Frees the strings of `c` (the password wiped first) and zeroes it. */
void bridge_config_free(struct bridge_config *c);

/* Checks one bridge_map value. 0, or -1 with a sentence in `why`. */
int bridge_map_check(const char *spec, char *why, size_t why_len);
/* Checks a bridge_url: each URL of the list, none empty or given twice, at
 * most BRIDGE_URLS_MAX, all of one scheme. 0, or -1 with a sentence naming
 * the bad URL in `why`. */
int bridge_url_check(const char *url, char *why, size_t why_len);

struct bridge;

/* Builds the bridge of `cfg` (copied) without connecting; *out is NULL when
 * no bridge_url is set. 0, or -1 with a sentence in `why`. */
int bridge_new(const struct bridge_config *cfg, const struct store_limits *limits,
               struct bridge **out, char *why, size_t why_len);
/* The outbox hooks to give store_open (nothing goes out without a bridge). */
void bridge_outbox_hooks(struct bridge *b, struct store_outbox_hooks *h);
/* Starts connecting to the broker (in the background: a broker that is
 * away is retried, with capped exponential backoff). 0, or -1 with `why`. */
int bridge_start(struct bridge *b, struct store *store, char *why, size_t why_len);
/* Publishes `offline` and disconnects; returns once every message that came
 * in is committed. The store's outbox hooks stay valid (NULL: nothing). */
void bridge_stop(struct bridge *b);
/* Stops (if need be) and frees the bridge, after store_close. */
void bridge_free(struct bridge *b);

struct bridge_stats {
    const char *state; /* off, connecting, connected, disconnected */
    /* The URLs, comma-separated as given (spaces around them dropped). */
    char url[BRIDGE_URLS_MAX * (BRIDGE_URL_MAX + 1)];
    char node[BRIDGE_URL_MAX + 1]; /* the URL connected to; "" when not connected */
    char client_id[256], last_error[256];
    uint64_t messages_in;  /* messages received on mapped topics */
    uint64_t messages_out; /* publishes the broker acknowledged */
    uint64_t errors_in;    /* messages that could not become a change */
    uint64_t errors_out;   /* publishes the broker refused for good */
    uint64_t reconnects;   /* connection attempts after the first */
    int64_t connected_since_us;
};
/* The state of `b`; NULL gives state "off". */
void bridge_stats(struct bridge *b, struct bridge_stats *out);

/* Whether a change of `key` made here would be published to MQTT: an out
 * (or both) map covers it. False when `b` is NULL (the bridge is off). */
bool bridge_maps_out(const struct bridge *b, const char *key, size_t klen);

#endif
