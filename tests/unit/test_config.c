/*
 * test_config.c — configuration from a file, the environment and flags:
 * precedence, and a message naming the place of every bad input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway.h"

static char conf_path[64];

static void write_conf(const char *text)
{
    FILE *f = fopen(conf_path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    strcpy(conf_path, "/tmp/almanac-conf-XXXXXX");
    int fd = mkstemp(conf_path);
    if (fd < 0)
        return -1;
    close(fd);
    unsetenv("ALMANAC_DATA_DIR");
    unsetenv("ALMANAC_MAX_KEY_BYTES");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(conf_path);
    return 0;
}

static int load(struct config *cfg, char *why, size_t len, int argc, ...)
{
    char *argv[16];
    va_list ap;
    va_start(ap, argc);
    for (int i = 0; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    return config_load(cfg, argc, argv, why, len);
}

static void test_defaults(void **state)
{
    struct config cfg;
    char why[512];
    (void)state;
    assert_int_equal(load(&cfg, why, sizeof why, 0), 0);
    assert_string_equal(cfg.http_listen, "127.0.0.1:8480");
    assert_string_equal(cfg.data_dir, "./data");
    assert_int_equal(cfg.limits.max_key_bytes, 1024);
    assert_int_equal(cfg.limits.max_value_bytes, 1048576);
    assert_int_equal(cfg.durability, STORE_DURABLE_COMMIT);
    config_free(&cfg);
}

static void test_precedence(void **state)
{
    struct config cfg;
    char why[512];
    (void)state;
    write_conf("# comment\n\ndata_dir /from/file\nmax_key_bytes 100\nlog_level debug\n"
               "max_value_bytes 2MiB\n");
    assert_int_equal(load(&cfg, why, sizeof why, 2, "-c", conf_path), 0);
    assert_string_equal(cfg.data_dir, "/from/file");
    assert_int_equal(cfg.limits.max_value_bytes, 2 << 20);
    assert_int_equal(cfg.log_level, LOG_DEBUG);
    config_free(&cfg);

    setenv("ALMANAC_DATA_DIR", "/from/env", 1);
    setenv("ALMANAC_MAX_KEY_BYTES", "200", 1);
    assert_int_equal(load(&cfg, why, sizeof why, 4, "--data_dir", "/from/flag", "-c", conf_path),
                     0);
    assert_string_equal(cfg.data_dir, "/from/flag"); /* flag over env */
    assert_int_equal(cfg.limits.max_key_bytes, 200); /* env over file */
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 1, "--max-key-bytes=300"), 0);
    assert_int_equal(cfg.limits.max_key_bytes, 300);
    config_free(&cfg);
    unsetenv("ALMANAC_DATA_DIR");
    unsetenv("ALMANAC_MAX_KEY_BYTES");
}

static void test_errors(void **state)
{
    static const struct {
        const char *file;
        const char *want; /* in the message */
    } cases[] = {
        {"data_dir /x\nfrobnicate 1\n", ":2: unknown option 'frobnicate'"},
        {"max_key_bytes lots\n", ":1: max_key_bytes: 'lots' is not a size"},
        {"max_key_bytes 70000\n", ":1: max_key_bytes: 70000 is outside"},
        {"durability sometimes\n", ":1: durability: 'sometimes' is not commit or fsync"},
        {"http_listen nowhere\n", ":1: http_listen: 'nowhere' is not HOST:PORT or off"},
        {"log_level loud\n", ":1: log_level: 'loud'"},
        {"\n\ndata_dir\n", ":3: option 'data_dir' has no value"},
    };
    struct config cfg;
    char why[512];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_conf(cases[i].file);
        assert_int_equal(load(&cfg, why, sizeof why, 2, "-c", conf_path), -1);
        if (strstr(why, cases[i].want) == NULL || strstr(why, conf_path) == NULL)
            fail_msg("case %zu: '%s' lacks '%s'", i, why, cases[i].want);
        config_free(&cfg);
    }
    assert_int_equal(load(&cfg, why, sizeof why, 2, "--bogus", "1"), -1);
    assert_string_equal(why, "unknown option '--bogus'");
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 1, "--data_dir"), -1);
    assert_non_null(strstr(why, "needs a value"));
    config_free(&cfg);
    setenv("ALMANAC_MAX_VALUE_BYTES", "0", 1);
    assert_int_equal(load(&cfg, why, sizeof why, 0), -1);
    assert_non_null(strstr(why, "ALMANAC_MAX_VALUE_BYTES: max_value_bytes: 0 is outside"));
    unsetenv("ALMANAC_MAX_VALUE_BYTES");
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 2, "-c", "/nonexistent/almanac.conf"), -1);
    assert_non_null(strstr(why, "cannot read"));
    config_free(&cfg);
}

static void test_sizes(void **state)
{
    size_t n;
    (void)state;
    assert_int_equal(config_parse_size("1024", &n), 0);
    assert_int_equal(n, 1024);
    assert_int_equal(config_parse_size("64KiB", &n), 0);
    assert_int_equal(n, 65536);
    assert_int_equal(config_parse_size("1GiB", &n), 0);
    assert_int_equal(n, 1u << 30);
    assert_int_equal(config_parse_size("10MB", &n), 0);
    assert_int_equal(n, 10000000);
    assert_int_equal(config_parse_size("-1", &n), -1);
    assert_int_equal(config_parse_size("1 MiB", &n), -1);
    assert_int_equal(config_parse_size("1TiB", &n), -1);
    assert_int_equal(config_parse_size("", &n), -1);
}

static void test_durations_and_times(void **state)
{
    int64_t us;
    (void)state;
    assert_int_equal(config_parse_duration("500ms", &us), 0);
    assert_true(us == 500000);
    assert_int_equal(config_parse_duration("7d", &us), 0);
    assert_true(us == 7 * 86400000000ll);
    assert_int_equal(config_parse_duration("2w", &us), 0);
    assert_true(us == 14 * 86400000000ll);
    assert_int_equal(config_parse_duration("10", &us), -1); /* a unit is needed */
    assert_int_equal(config_parse_duration("1y", &us), -1);
    assert_int_equal(config_parse_duration("-1s", &us), -1);

    assert_int_equal(config_parse_time("1763900000123456", &us), 0);
    assert_true(us == 1763900000123456ll);
    assert_int_equal(config_parse_time("2025-11-23T12:13:20Z", &us), 0);
    assert_true(us == 1763900000000000ll);
    assert_int_equal(config_parse_time("2025-11-23T12:13:20.123456Z", &us), 0);
    assert_true(us == 1763900000123456ll);
    assert_int_equal(config_parse_time("2025-11-23T12:13:20.5Z", &us), 0);
    assert_true(us == 1763900000500000ll);
    assert_int_equal(config_parse_time("2025-11-23T13:13:20+01:00", &us), 0);
    assert_true(us == 1763900000000000ll);
    assert_int_equal(config_parse_time("2025-11-23T11:13:20-01:00", &us), 0);
    assert_true(us == 1763900000000000ll);
    assert_int_equal(config_parse_time("2025-11-23T12:13:20", &us), -1); /* no zone */
    assert_int_equal(config_parse_time("2025-11-23", &us), -1);
    assert_int_equal(config_parse_time("yesterday", &us), -1);
    assert_int_equal(config_parse_time("", &us), -1);
}

static void test_repeatable_options(void **state)
{
    struct config cfg;
    char why[512];
    (void)state;
    write_conf("history_keys a/#\nhistory_keys b/+\nbridge_map in x/#\n");
    assert_int_equal(load(&cfg, why, sizeof why, 2, "-c", conf_path), 0);
    assert_int_equal(cfg.nhistory_keys, 2);
    assert_string_equal(cfg.history_keys[1], "b/+");
    config_free(&cfg);
    /* Flags replace the file's list. */
    assert_int_equal(load(&cfg, why, sizeof why, 4, "-c", conf_path, "--history_keys", "c/#"), 0);
    assert_int_equal(cfg.nhistory_keys, 1);
    assert_string_equal(cfg.history_keys[0], "c/#");
    assert_int_equal(cfg.bridge.nmaps, 1);
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 2, "--history_keys", "a/#/b"), -1);
    assert_non_null(strstr(why, "--history_keys"));
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 2, "--history_retention", "forever"), -1);
    assert_non_null(strstr(why, "not a duration"));
    config_free(&cfg);
    assert_int_equal(load(&cfg, why, sizeof why, 2, "--history_retention", "0"), 0);
    assert_true(cfg.history_retention_us == 0);
    config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_durations_and_times),
        cmocka_unit_test_setup_teardown(test_repeatable_options, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
