/*
 * test_bridge.c — the bridge's maps and URLs, without a broker: which maps
 * and URLs (and lists of URLs, for failover) are accepted, and the topic each key goes out to (the
 * outbox hook the store calls). The broker side is tests/integration/test_bridge.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bridge.h"

static void test_map_check(void **state)
{
    char why[512];
    (void)state;
    const char *good[] = {"both #",
                          "in sensors/# home/sensors/#",
                          "out devices/+/set home/+/set",
                          "in $SYS/broker/version mosquitto/version",
                          "both a/b c/d",
                          "in  +/temp   rooms/+/temp"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_int_equal(bridge_map_check(good[i], why, sizeof why), 0);
    struct {
        const char *spec, *says;
    } bad[] = {
        {"in a/+ b/#", "differ from their first wildcard on"},
        {"in a/# b/+/c", "differ"},
        {"in a b/#", "differ"},
        {"sideways #", "'sideways' is not in, out or both"},
        {"in a/#/b", "the topic filter 'a/#/b'"},
        {"in a/# b/c#", "the key pattern 'b/c#'"},
        {"out", "expected in|out|both"},
        {"in a b c", "expected"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        assert_int_equal(bridge_map_check(bad[i].spec, why, sizeof why), -1);
        if (strstr(why, bad[i].says) == NULL || strstr(why, bad[i].spec) == NULL)
            fail_msg("%s: %s", bad[i].spec, why);
    }
}

static void test_url_check(void **state)
{
    char why[256];
    (void)state;
    assert_int_equal(bridge_url_check("mqtt://localhost", why, sizeof why), 0);
    assert_int_equal(bridge_url_check("mqtts://broker.example:8883", why, sizeof why), 0);
    assert_int_equal(bridge_url_check("mqtt://[::1]:1883", why, sizeof why), 0);
    assert_int_equal(bridge_url_check("http://localhost", why, sizeof why), -1);
    assert_int_equal(bridge_url_check("mqtt://", why, sizeof why), -1);
    assert_int_equal(bridge_url_check("mqtt://host:0", why, sizeof why), -1);
    assert_int_equal(bridge_url_check("mqtt://host:99999", why, sizeof why), -1);
    assert_int_equal(bridge_url_check("mqtt://host:1883/topic", why, sizeof why), -1);
}

/* bridge_url as a failover list: each URL checked, and the message names
 * the one at fault. */
static void test_url_lists(void **state)
{
    char why[512], many[40 * 20] = "";
    (void)state;
    const char *good[] = {"mqtt://a:1883,mqtt://b:1883,mqtt://c:1883",
                          "mqtt://a, mqtt://b:1884 ,\tmqtt://[::1]:1883",
                          "mqtts://a,mqtts://b:8884"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (bridge_url_check(good[i], why, sizeof why) != 0)
            fail_msg("%s: %s", good[i], why);
    struct {
        const char *list, *says;
    } bad[] = {
        {"mqtt://a,,mqtt://b", "URL 2 of 'mqtt://a,,mqtt://b' is empty"},
        {"mqtt://a,", "URL 2 of 'mqtt://a,' is empty"},
        {",mqtt://a", "URL 1 of ',mqtt://a' is empty"},
        {"mqtt://a, ,mqtt://b", "URL 2 of"},
        {"mqtt://a,http://b", "'http://b' is not mqtt://HOST[:PORT]"},
        {"mqtt://a,mqtt://b:0", "'mqtt://b:0': the port is not a number"},
        {"mqtt://a,mqtt://b,mqtt://a:1883",
         "'mqtt://a:1883' (URL 3) is the broker of 'mqtt://a' (URL 1) again"},
        {"mqtt://B:1,mqtt://b:1", "'mqtt://b:1' (URL 2) is the broker of 'mqtt://B:1'"},
        {"mqtt://a,mqtts://b", "'mqtts://b' (URL 2) and 'mqtt://a' (URL 1) differ in TLS"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        assert_int_equal(bridge_url_check(bad[i].list, why, sizeof why), -1);
        if (strstr(why, bad[i].says) == NULL)
            fail_msg("%s: '%s' does not say '%s'", bad[i].list, why, bad[i].says);
    }
    /* 16 nodes are taken, a 17th is named */
    for (int i = 1; i <= 16; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%smqtt://n%d", i > 1 ? "," : "",
                 i);
    assert_int_equal(bridge_url_check(many, why, sizeof why), 0);
    strcat(many, ",mqtt://n17");
    assert_int_equal(bridge_url_check(many, why, sizeof why), -1);
    assert_non_null(strstr(why, "'mqtt://n17' is URL 17 of the list: at most 16"));
}

/* The stats of a list, before any connection: every URL, no node yet. */
static void test_url_list_stats(void **state)
{
    struct bridge_config cfg = {.url = " mqtt://a:1 , mqtt://b:2,mqtt://c:3 ", .protocol = 4};
    struct store_limits limits = {.max_key_bytes = 1024, .max_value_bytes = 1024};
    struct bridge_stats st;
    struct bridge *b = NULL;
    char why[512];
    (void)state;
    if (bridge_new(&cfg, &limits, &b, why, sizeof why) != 0)
        fail_msg("bridge_new: %s", why);
    bridge_stats(b, &st);
    assert_string_equal(st.url, "mqtt://a:1,mqtt://b:2,mqtt://c:3");
    assert_string_equal(st.node, "");
    assert_string_equal(st.state, "disconnected");
    bridge_free(b);
    cfg.url = "mqtt://a:1,mqtt://a:1";
    assert_int_equal(bridge_new(&cfg, &limits, &b, why, sizeof why), -1);
    assert_non_null(strstr(why, "is the broker of"));
}

/* The outbox topic of `key`, or NULL (the caller frees it). */
static char *topic_of(struct store_outbox_hooks *h, const char *key, enum store_origin origin)
{
    return h->topic(h->arg, key, strlen(key), origin);
}

static void expect_topic(struct store_outbox_hooks *h, const char *key, const char *topic)
{
    char *t = topic_of(h, key, STORE_ORIGIN_HTTP);
    if (topic == NULL ? t != NULL : t == NULL || strcmp(t, topic) != 0)
        fail_msg("%s went out to %s, not %s", key, t ? t : "nothing", topic ? topic : "nothing");
    free(t);
}

static struct bridge *bridge_with(char **maps, size_t n, struct store_outbox_hooks *h)
{
    struct bridge_config cfg = {.url = "mqtt://127.0.0.1:1",
                                .protocol = 5,
                                .qos = 1,
                                .keepalive = 30,
                                .maps = maps,
                                .nmaps = n};
    struct store_limits limits = {.max_key_bytes = 1024, .max_value_bytes = 1 << 20};
    struct bridge *b = NULL;
    char why[512];
    if (bridge_new(&cfg, &limits, &b, why, sizeof why) != 0)
        fail_msg("bridge_new: %s", why);
    bridge_outbox_hooks(b, h);
    return b;
}

static void test_out_topics(void **state)
{
    struct store_outbox_hooks h;
    (void)state;
    char *maps[] = {"out devices/+/set home/+/set", "both sensors/# home/sensors/#",
                    "in inbound/# home/in/#", "out plain/topic home/plain"};
    struct bridge *b = bridge_with(maps, 4, &h);
    expect_topic(&h, "home/lamp/set", "devices/lamp/set");
    expect_topic(&h, "home/sensors/a/b", "sensors/a/b");
    expect_topic(&h, "home/sensors", "sensors"); /* '#' matches the parent */
    expect_topic(&h, "home/plain", "plain/topic");
    expect_topic(&h, "home/in/x", NULL); /* in only */
    expect_topic(&h, "elsewhere", NULL);
    char *t = topic_of(&h, "home/lamp/set", STORE_ORIGIN_MQTT);
    assert_null(t); /* what came from MQTT never goes back */
    bridge_free(b);

    b = bridge_with(NULL, 0, &h); /* no map: both # */
    expect_topic(&h, "a/b", "a/b");
    expect_topic(&h, "$SYS/uptime", NULL); /* '#' does not match $-keys */
    bridge_free(b);
}

static void test_off_and_bad_files(void **state)
{
    struct bridge_config cfg = {.protocol = 5};
    struct store_limits limits = {.max_key_bytes = 1024, .max_value_bytes = 1024};
    struct store_outbox_hooks h;
    struct bridge *b = (struct bridge *)1;
    char why[512];
    char *bad[] = {"in a/+ b/#"};
    (void)state;

    assert_int_equal(bridge_new(&cfg, &limits, &b, why, sizeof why), 0);
    assert_null(b); /* no URL: off */
    bridge_outbox_hooks(b, &h);
    assert_null(h.topic);
    cfg.maps = bad; /* checked even when off */
    cfg.nmaps = 1;
    assert_int_equal(bridge_new(&cfg, &limits, &b, why, sizeof why), -1);
    assert_non_null(strstr(why, "bridge_map 'in a/+ b/#'"));
    cfg.nmaps = 0;
    cfg.url = "mqtts://127.0.0.1";
    cfg.cafile = "/nonexistent/ca.pem";
    assert_int_equal(bridge_new(&cfg, &limits, &b, why, sizeof why), -1);
    assert_non_null(strstr(why, "bridge_cafile /nonexistent/ca.pem"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_check),  cmocka_unit_test(test_url_check),
        cmocka_unit_test(test_url_lists),  cmocka_unit_test(test_url_list_stats),
        cmocka_unit_test(test_out_topics), cmocka_unit_test(test_off_and_bad_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
