/*
 * test_guard.c — what a browser may ask: Host names (DNS rebinding) and
 * origins (cross-site writes and WebSockets), as guard.c decides them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "guard.h"
#include "gateway.h"

static char *hosts[] = {"almanac.example.com"};
static char *origins[] = {"https://dash.example.com"};
static char *star[] = {"*"};

static void test_host(void **state)
{
    (void)state;
    struct config cfg = {0};
    assert_true(guard_host_ok(&cfg, "127.0.0.1:8480"));
    assert_true(guard_host_ok(&cfg, "127.0.0.1"));
    assert_true(guard_host_ok(&cfg, "10.1.2.3:80"));
    assert_true(guard_host_ok(&cfg, "[::1]:8480"));
    assert_true(guard_host_ok(&cfg, "[::1]"));
    assert_true(guard_host_ok(&cfg, "localhost:8480"));
    assert_true(guard_host_ok(&cfg, "LOCALHOST"));
    assert_true(guard_host_ok(&cfg, "app.localhost:1"));
    assert_true(guard_host_ok(&cfg, NULL)); /* HTTP/1.0 */
    /* A name an attacker's DNS can point at 127.0.0.1. */
    assert_false(guard_host_ok(&cfg, "rebind.test:8480"));
    assert_false(guard_host_ok(&cfg, "localhost.evil.com"));
    assert_false(guard_host_ok(&cfg, "127.0.0.1.nip.io"));
    assert_false(guard_host_ok(&cfg, "evillocalhost"));
    /* Malformed: refused, never widened. */
    assert_false(guard_host_ok(&cfg, ""));
    assert_false(guard_host_ok(&cfg, ":8480"));
    assert_false(guard_host_ok(&cfg, "127.0.0.1:"));
    assert_false(guard_host_ok(&cfg, "127.0.0.1:80x"));
    assert_false(guard_host_ok(&cfg, "[::1"));
    assert_false(guard_host_ok(&cfg, "[::1]x"));
    assert_false(guard_host_ok(&cfg, "[evil.com]:80"));
    assert_false(guard_host_ok(&cfg, "almanac.example.com"));
    cfg.http_hosts = hosts;
    cfg.nhttp_hosts = 1;
    assert_true(guard_host_ok(&cfg, "almanac.example.com"));
    assert_true(guard_host_ok(&cfg, "Almanac.Example.COM:443"));
    assert_false(guard_host_ok(&cfg, "example.com"));
    cfg.http_hosts = star;
    assert_true(guard_host_ok(&cfg, "anything.at.all"));
}

static void test_origin(void **state)
{
    (void)state;
    struct config cfg = {0};
    assert_true(guard_origin_ok(&cfg, "http://127.0.0.1:8480", "127.0.0.1:8480"));
    assert_true(guard_origin_ok(&cfg, "http://localhost:8480", "localhost:8480"));
    assert_true(guard_origin_ok(&cfg, "http://[::1]:8480", "[::1]:8480"));
    /* Default ports stand in for absent ones; a TLS proxy keeping Host. */
    assert_true(guard_origin_ok(&cfg, "http://a.example", "a.example:80"));
    assert_true(guard_origin_ok(&cfg, "https://a.example", "a.example"));
    assert_true(guard_origin_ok(&cfg, "https://a.example:443", "a.example"));
    /* Another port of the same host is another origin (same-site, though). */
    assert_false(guard_origin_ok(&cfg, "http://127.0.0.1:9999", "127.0.0.1:8480"));
    assert_false(guard_origin_ok(&cfg, "http://localhost:8480", "127.0.0.1:8480"));
    assert_false(guard_origin_ok(&cfg, "https://a.example", "a.example:80"));
    assert_false(guard_origin_ok(&cfg, "null", "127.0.0.1:8480"));
    assert_false(guard_origin_ok(&cfg, "file://", "127.0.0.1:8480"));
    assert_false(guard_origin_ok(&cfg, "http://127.0.0.1:8480/x", "127.0.0.1:8480"));
    assert_false(guard_origin_ok(&cfg, "http://127.0.0.1:8480", NULL));
    assert_false(guard_origin_ok(&cfg, NULL, "127.0.0.1:8480"));
    cfg.cors_origins = origins;
    cfg.ncors_origins = 1;
    assert_true(guard_origin_ok(&cfg, "https://dash.example.com", "127.0.0.1:8480"));
    assert_true(guard_cors_allowed(&cfg, "https://dash.example.com"));
    assert_false(guard_cors_allowed(&cfg, "http://dash.example.com"));
    assert_false(guard_cors_allowed(&cfg, NULL));
    cfg.cors_origins = star;
    assert_true(guard_origin_ok(&cfg, "http://anyone.example", "127.0.0.1:8480"));
}

static void test_write(void **state)
{
    (void)state;
    struct config cfg = {0};
    /* curl, scripts, the CLI: no Origin, no Sec-Fetch-Site. */
    assert_true(guard_write_ok(&cfg, NULL, NULL, "127.0.0.1:8480"));
    assert_true(guard_write_ok(&cfg, NULL, "same-origin", "127.0.0.1:8480"));
    assert_true(guard_write_ok(&cfg, NULL, "none", "127.0.0.1:8480"));
    assert_false(guard_write_ok(&cfg, NULL, "cross-site", "127.0.0.1:8480"));
    assert_false(guard_write_ok(&cfg, NULL, "same-site", "127.0.0.1:8480"));
    assert_true(guard_write_ok(&cfg, "http://127.0.0.1:8480", "same-origin", "127.0.0.1:8480"));
    assert_false(guard_write_ok(&cfg, "http://evil.example", NULL, "127.0.0.1:8480"));
    assert_false(guard_write_ok(&cfg, "null", NULL, "127.0.0.1:8480"));
    cfg.cors_origins = origins;
    cfg.ncors_origins = 1;
    assert_true(guard_write_ok(&cfg, "https://dash.example.com", "cross-site", "127.0.0.1:8480"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
