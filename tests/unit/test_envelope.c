/*
 * test_envelope.c — entries as JSON envelopes and back: the three value
 * forms, exact numbers, labels, and the errors of bad client JSON.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "envelope.h"
#include "gateway.h"

static char *envelope_of(const void *value, size_t len, const char *type, const char *labels)
{
    struct store_entry *e;
    struct buf b = {0};
    assert_int_equal(store_entry_new(value, len, type, labels, STORE_ORIGIN_HTTP, &e), STORE_OK);
    envelope_add(&b, "k/1", 3, e);
    store_entry_unref(e);
    assert_false(b.oom);
    return b.p;
}

static void test_forms(void **state)
{
    (void)state;
    const char *doc = "{ \"a\" : [1, 0.1,\n 123456789012345678901234567890 ],\"s\":\" x \"}";
    char *s = envelope_of(doc, strlen(doc), NULL, NULL);
    assert_non_null(strstr(s, "\"value\":{\"a\":[1,0.1,123456789012345678901234567890],"
                              "\"s\":\" x \"}"));
    assert_non_null(strstr(s, "\"type\":\"application/json\""));
    free(s);
    s = envelope_of("line \"1\"\n\ttab", 13, NULL, "{\"unit\":\"C\"}");
    assert_non_null(strstr(s, "\"text\":\"line \\\"1\\\"\\n\\ttab\""));
    assert_non_null(strstr(s, "\"labels\":{\"unit\":\"C\"}"));
    free(s);
    s = envelope_of("\x00\xff\x10", 3, NULL, NULL);
    assert_non_null(strstr(s, "\"base64\":\"AP8Q\""));
    assert_non_null(strstr(s, "\"type\":\"application/octet-stream\""));
    free(s);
    s = envelope_of("abc", 3, "image/png", NULL);
    assert_non_null(strstr(s, "\"base64\":\"YWJj\""));
    free(s);
}

/* A value written in pieces of every size from 1 byte up reads the same as
 * written whole: a JSON string's escape or white space, a text's escapes
 * and base64's groups of three may fall on any piece's edge. */
static void test_pieces(void **state)
{
    (void)state;
    static const char binary[] = "\x00\xff\x10\x20\x30\x40\x50 binary bytes";
    const struct {
        const char *value, *type;
    } cases[] = {
        {"{ \"a\\\" b\" : [1, \"x \\\\\"],\n \"c\":\"\\u00e9 \" }", NULL},
        {"l\"i\\ne\n\t\x01 caf\xc3\xa9 end", "text/plain; charset=utf-8"},
        {binary, "application/octet-stream"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        size_t len = cases[c].value == binary ? sizeof binary - 1 : strlen(cases[c].value);
        struct store_entry *e;
        assert_int_equal(store_entry_new(cases[c].value, len, cases[c].type, NULL,
                                         STORE_ORIGIN_HTTP, &e),
                         STORE_OK);
        struct buf whole = {0};
        envelope_add_fields(&whole, "k", 1, e, "type");
        for (size_t piece = 1; piece <= len; piece++) {
            struct buf b = {0};
            struct envelope_value v;
            envelope_add_head(&b, "k", 1, e, "type", &v);
            while (envelope_value_more(&b, &v, piece))
                ;
            envelope_add_tail(&b, e);
            assert_false(b.oom);
            if (b.len != whole.len || memcmp(b.p, whole.p, b.len) != 0)
                fail_msg("case %zu in pieces of %zu: %.*s, whole: %.*s", c, piece, (int)b.len,
                         b.p, (int)whole.len, whole.p);
            buf_free(&b);
        }
        buf_free(&whole);
        store_entry_unref(e);
    }
}

static struct store_entry *from_json(const char *text, int want, char *why)
{
    json_t *j = json_loads(text, 0, NULL);
    struct store_entry *e = NULL;
    assert_non_null(j);
    int err = envelope_entry(j, 24, true, STORE_ORIGIN_HTTP, &e, why, 256);
    json_decref(j);
    if (err != want)
        fail_msg("%s: got %d want %d (%s)", text, err, want, why);
    return e;
}

static void test_entries_from_json(void **state)
{
    char why[256];
    size_t len;
    (void)state;
    struct store_entry *e = from_json("{\"value\":0.1}", STORE_OK, why);
    assert_memory_equal(store_entry_value(e, &len), "0.1", 3);
    assert_int_equal(len, 3);
    store_entry_unref(e);
    e = from_json("{\"value\":0.30000000000000004}", STORE_OK, why);
    assert_memory_equal(store_entry_value(e, &len), "0.30000000000000004", 19);
    store_entry_unref(e);
    e = from_json("{\"text\":\"hi\",\"labels\":{\"b\":\"2\",\"a\":\"1\"}}", STORE_OK, why);
    assert_string_equal(store_entry_type(e), "text/plain; charset=utf-8");
    assert_string_equal(store_entry_labels(e), "{\"a\":\"1\",\"b\":\"2\"}");
    store_entry_unref(e);
    e = from_json("{\"base64\":\"AP8\",\"content_type\":\"x/y\"}", STORE_OK, why);
    assert_memory_equal(store_entry_value(e, &len), "\x00\xff", 2);
    assert_int_equal(len, 2);
    assert_string_equal(store_entry_type(e), "x/y");
    store_entry_unref(e);

    from_json("{}", STORE_EBODY, why);
    from_json("{\"value\":1,\"text\":\"1\"}", STORE_EBODY, why);
    from_json("{\"text\":1}", STORE_EBODY, why);
    from_json("{\"base64\":\"!!!!\"}", STORE_EBODY, why);
    from_json("{\"base64\":\"A\"}", STORE_EBODY, why);
    from_json("{\"text\":\"x\",\"labels\":{\"a\":1}}", STORE_EBODY, why);
    from_json("{\"text\":\"x\",\"labels\":[]}", STORE_EBODY, why);
    from_json("{\"text\":\"x\",\"content_type\":\"a\\nb\"}", STORE_EBODY, why);
    from_json("{\"text\":\"not json\",\"content_type\":\"application/json\"}", STORE_EBODY, why);
    assert_non_null(strstr(why, "not valid JSON"));
    from_json("{\"text\":\"0123456789012345678901234\"}", STORE_ETOOLARGE, why);
    assert_non_null(strstr(why, "max_value_bytes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forms),
        cmocka_unit_test(test_entries_from_json),
        cmocka_unit_test(test_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
