/*
 * test_key.c — keys, patterns and matching, table-driven. The match table
 * holds every example of MQTT 5.0, section 4.7 (Topic Names and Topic
 * Filters), plus empty segments and the store's key order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "store.h"

#define S(x) x, sizeof(x) - 1

static void test_keys(void **state)
{
    static const struct {
        const char *key;
        size_t len;
        int want;
    } cases[] = {
        {S("home/kitchen/temp"), STORE_OK},
        {S("a//b"), STORE_OK},
        {S("/a"), STORE_OK},
        {S("a/"), STORE_OK},
        {S("/"), STORE_OK},
        {S("$SYS/version"), STORE_OK},
        {S("caf\xc3\xa9/\xe2\x82\xac"), STORE_OK}, /* café/€ */
        {S(""), STORE_EKEY},
        {S("a/+/b"), STORE_EKEY},
        {S("a/#"), STORE_EKEY},
        {S("a+b"), STORE_EKEY},
        {S("a\0b"), STORE_EKEY},
        {S("a\xc0\x80"), STORE_EKEY},        /* a NUL as the HTTP layer passes it */
        {S("\xff"), STORE_EKEY},             /* not UTF-8 */
        {S("\xc3"), STORE_EKEY},             /* truncated */
        {S("\xe0\x80\xaf"), STORE_EKEY},     /* overlong */
        {S("\xed\xa0\x80"), STORE_EKEY},     /* a surrogate */
        {S("\xf4\x90\x80\x80"), STORE_EKEY}, /* above U+10FFFF */
    };
    char why[256];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        why[0] = '\0';
        int got = store_key_check(cases[i].key, cases[i].len, 1024, why, sizeof why);
        if (got != cases[i].want)
            fail_msg("case %zu: got %d want %d (%s)", i, got, cases[i].want, why);
        if (got != STORE_OK && why[0] == '\0')
            fail_msg("case %zu: no reason given", i);
    }
    assert_int_equal(store_key_check(S("abcd"), 3, why, sizeof why), STORE_EKEY);
    assert_non_null(strstr(why, "limit of 3"));
    assert_int_equal(store_key_check(S("a\0b"), 10, why, sizeof why), STORE_EKEY);
    assert_non_null(strstr(why, "NUL"));
    assert_int_equal(store_key_check(S("a/+"), 10, why, sizeof why), STORE_EKEY);
    assert_non_null(strstr(why, "wildcard"));
}

static void test_patterns(void **state)
{
    static const struct {
        const char *pat;
        int valid;
        int wild;
    } cases[] = {
        /* MQTT 5, 4.7.1.2 and 4.7.1.3 */
        {"sport/tennis/player1/#", 1, 1},
        {"sport/#", 1, 1},
        {"#", 1, 1},
        {"sport/tennis#", 0, 0},
        {"sport/tennis/#/ranking", 0, 0},
        {"+", 1, 1},
        {"+/tennis/#", 1, 1},
        {"sport+", 0, 0},
        {"sport/+/player1", 1, 1},
        {"/+", 1, 1},
        {"+/+", 1, 1},
        {"a//b", 1, 0},
        {"plain/key", 1, 0},
        {"#/a", 0, 0},
        {"a/#/", 0, 0},
        {"a/++", 0, 0},
        {"", 0, 0},
    };
    char why[256];
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool wild;
        int got =
            store_pattern_check(cases[i].pat, strlen(cases[i].pat), 1024, &wild, why, sizeof why);
        if ((got == STORE_OK) != cases[i].valid)
            fail_msg("%s: valid %d, expected %d (%s)", cases[i].pat, got == STORE_OK,
                     cases[i].valid, why);
        if (got == STORE_OK && wild != cases[i].wild)
            fail_msg("%s: wild %d", cases[i].pat, wild);
        if (got != STORE_OK)
            assert_int_equal(got, STORE_EPATTERN);
    }
}

static void test_match(void **state)
{
    static const struct {
        const char *pat, *key;
        bool match;
    } cases[] = {
        /* MQTT 5, 4.7.1.2: multi-level wildcard */
        {"sport/tennis/player1/#", "sport/tennis/player1", true},
        {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
        {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
        {"sport/#", "sport", true},
        {"#", "sport/tennis", true},
        {"#", "/", true},
        /* 4.7.1.3: single-level wildcard */
        {"sport/tennis/+", "sport/tennis/player1", true},
        {"sport/tennis/+", "sport/tennis/player2", true},
        {"sport/tennis/+", "sport/tennis/player1/ranking", false},
        {"sport/+", "sport", false},
        {"sport/+", "sport/", true},
        {"+/+", "/finance", true},
        {"/+", "/finance", true},
        {"+", "/finance", false},
        /* 4.7.2: topics beginning with $ */
        {"#", "$SYS/monitor/Clients", false},
        {"+/monitor/Clients", "$SYS/monitor/Clients", false},
        {"$SYS/#", "$SYS/monitor/Clients", true},
        {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
        {"+", "$SYS", false},
        {"a/$b/#", "a/$b/c", true},
        /* empty segments */
        {"a/+/b", "a//b", true},
        {"a//b", "a//b", true},
        {"a/b", "a//b", false},
        {"+/+/+", "a//b", true},
        {"+", "", true},
        /* exact */
        {"a/b", "a/b", true},
        {"a/b", "a/bc", false},
        {"a/bc", "a/b", false},
        {"a", "a/b", false},
        {"a/b", "a", false},
        {"a/#", "ab", false},
        {"a/+/#", "a", false},
        {"a/+/#", "a/x", true},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = store_pattern_match(cases[i].pat, strlen(cases[i].pat), cases[i].key,
                                       strlen(cases[i].key));
        if (got != cases[i].match)
            fail_msg("'%s' vs '%s': got %d", cases[i].pat, cases[i].key, got);
    }
}

/* Containment: q covers p when every key p matches, q matches too. Checked
 * against store_pattern_match on sample keys as well as by example. */
static void test_covers(void **state)
{
    static const struct {
        const char *q, *p;
        bool covers;
    } cases[] = {
        {"#", "a/b", true},       {"#", "+/b", true},
        {"#", "$SYS/x", false},   {"a/#", "a", true},
        {"a/#", "a/+/c", true},   {"a/#", "b/#", false},
        {"a/+", "a/b", true},     {"a/+", "a/#", false},
        {"a/+", "a/b/c", false},  {"+/+", "+/b", true},
        {"+", "$SYS", false},     {"$SYS/#", "$SYS/x/y", true},
        {"a/b", "a/b", true},     {"a/b", "a/+", false},
        {"a/+/c", "a/b/c", true}, {"site/+/temp", "site/#", false},
    };
    static const char *keys[] = {"a",      "a/b",      "a/b/c",       "b",  "$SYS",
                                 "$SYS/x", "$SYS/x/y", "site/1/temp", "x/b"};
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *q = cases[i].q, *p = cases[i].p;
        assert_int_equal(store_pattern_covers(q, strlen(q), p, strlen(p)), cases[i].covers);
        if (!cases[i].covers)
            continue;
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            if (store_pattern_match(p, strlen(p), keys[k], strlen(keys[k])))
                assert_true(store_pattern_match(q, strlen(q), keys[k], strlen(keys[k])));
    }
}

static void test_order(void **state)
{
    /* Segment by segment: a key sorts right before its children. */
    static const char *sorted[] = {"a", "a/b", "a/b/c", "a!", "a0", "b", "b/", "b//"};
    (void)state;
    for (size_t i = 0; i + 1 < sizeof sorted / sizeof sorted[0]; i++) {
        int c = store_key_cmp(sorted[i], strlen(sorted[i]), sorted[i + 1], strlen(sorted[i + 1]));
        if (c >= 0)
            fail_msg("'%s' should sort before '%s'", sorted[i], sorted[i + 1]);
    }
    assert_int_equal(store_key_cmp(S("x/y"), S("x/y")), 0);
    assert_true(store_key_reserved(S("$SYS/a")));
    assert_false(store_key_reserved(S("a/$SYS")));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),  cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_match), cmocka_unit_test(test_covers),
        cmocka_unit_test(test_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
