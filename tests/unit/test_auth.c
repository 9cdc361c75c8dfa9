/*
 * test_auth.c — privileges and principals (auth.c): the compiled pattern
 * tree against store_pattern_match over every key of a small universe,
 * meet and cover against the same brute force, and who a client is by its
 * address and token.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"
#include "clock.h"
#include "gateway.h"

/* Every pattern and key of up to three segments over these. */
static const char *pat_segs[] = {"a", "b", "$s", "+", "#"};
static const char *key_segs[] = {"a", "b", "$s", "x", ""};

static size_t build(const char **segs, size_t nsegs, bool pattern, char out[][32])
{
    size_t n = 0;
    for (size_t depth = 1; depth <= 3; depth++) {
        size_t total = 1;
        for (size_t d = 0; d < depth; d++)
            total *= nsegs;
        for (size_t code = 0; code < total; code++) {
            char buf[32] = "";
            size_t c = code;
            bool ok = true;
            for (size_t d = 0; d < depth; d++) {
                const char *seg = segs[c % nsegs];
                c /= nsegs;
                if (pattern && strcmp(seg, "#") == 0 && d + 1 != depth)
                    ok = false; /* '#' only last */
                if (d > 0)
                    strcat(buf, "/");
                strcat(buf, seg);
            }
            if (ok)
                strcpy(out[n++], buf);
        }
    }
    return n;
}

static struct config *config_with(char **read, size_t nread, char **write, size_t nwrite)
{
    static struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.anonymous_read = read;
    cfg.nanonymous_read = nread;
    cfg.anonymous_write = write;
    cfg.nanonymous_write = nwrite;
    return &cfg;
}

static void privileges_agree_with_brute_force(void **state)
{
    static char pats[256][32], keys[256][32];
    size_t np = build(pat_segs, 5, true, pats), nk = build(key_segs, 5, false, keys);
    char why[256];
    (void)state;
    /* each pattern alone, and pairs of patterns, as one principal's reads */
    for (size_t i = 0; i < np; i++) {
        for (size_t j = i; j < np; j += 7) {
            char *read[2] = {pats[i], pats[j]};
            struct auth *a = auth_new(config_with(read, 2, NULL, 0), why, sizeof why);
            const struct principal *p;
            assert_non_null(a);
            assert_int_equal(auth_principal(a, "10.0.0.1:5", NULL, &p), 0);
            for (size_t k = 0; k < nk; k++) {
                bool want =
                    store_pattern_match(pats[i], strlen(pats[i]), keys[k], strlen(keys[k])) ||
                    store_pattern_match(pats[j], strlen(pats[j]), keys[k], strlen(keys[k]));
                if (privs_match(p->read, keys[k], strlen(keys[k])) != want)
                    fail_msg("privs {%s, %s} on key '%s': want %d", pats[i], pats[j], keys[k],
                             want);
            }
            /* meet: some key of the universe matches both (the universe
             * holds a witness whenever one exists); cover: every key of q
             * in the universe is readable (one pattern covering it is
             * sufficient, and is what cover asks). */
            for (size_t q = 0; q < np; q += 3) {
                bool meets = false, within = true;
                for (size_t k = 0; k < nk; k++) {
                    bool inq =
                        store_pattern_match(pats[q], strlen(pats[q]), keys[k], strlen(keys[k]));
                    bool readable = privs_match(p->read, keys[k], strlen(keys[k]));
                    meets |= inq && readable;
                    within &= !inq || readable;
                }
                if (privs_meet(p->read, pats[q], strlen(pats[q])) != meets)
                    fail_msg("meet {%s, %s} with %s: want %d", pats[i], pats[j], pats[q], meets);
                if (privs_cover(p->read, pats[q], strlen(pats[q])) && !within)
                    fail_msg("cover {%s, %s} of %s claimed wrongly", pats[i], pats[j], pats[q]);
            }
            auth_free(a);
        }
    }
}

static void principals(void **state)
{
    char *read[] = {"home/#"}, *write[] = {"home/lights/+"}, why[256];
    struct config *cfg = config_with(read, 1, write, 1);
    const struct principal *p;
    (void)state;

    /* No credential configured: loopback and the Unix socket are local. */
    struct auth *a = auth_new(cfg, why, sizeof why);
    assert_int_equal(auth_principal(a, "127.0.0.1:4000", NULL, &p), 0);
    assert_string_equal(p->name, "local");
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "unix", NULL, &p), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "::1:4000", NULL, &p), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "::ffff:127.0.0.2:9", NULL, &p), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "192.168.1.9:4000", NULL, &p), 0);
    assert_string_equal(p->name, "anonymous");
    assert_false(p->admin);
    assert_true(privs_match(p->read, "home/x", 6));
    assert_false(privs_match(p->read, "work/x", 6));
    assert_true(privs_match(p->write, "home/lights/k", 13));
    assert_false(privs_match(p->write, "home/x", 6));
    assert_false(auth_required(a, "192.168.1.9:1"));
    /* any token is refused: none is configured */
    assert_int_equal(auth_principal(a, "127.0.0.1:1", "whatever", &p), STORE_EUNAUTH);
    auth_free(a);

    /* With admin_token: loopback is anonymous too, the token is admin. */
    cfg = config_with(NULL, 0, NULL, 0);
    cfg->admin_token = "0123456789abcdef-secret";
    a = auth_new(cfg, why, sizeof why);
    assert_int_equal(auth_principal(a, "127.0.0.1:4000", NULL, &p), 0);
    assert_string_equal(p->name, "anonymous");
    assert_true(auth_required(a, "127.0.0.1:4000"));
    assert_int_equal(auth_principal(a, "10.1.1.1:1", "0123456789abcdef-secret", &p), 0);
    assert_true(p->admin && p->authenticated);
    assert_int_equal(auth_principal(a, "10.1.1.1:1", "0123456789abcdef-secreT", &p), STORE_EUNAUTH);
    assert_int_equal(auth_principal(a, "10.1.1.1:1", "", &p), STORE_EUNAUTH);
    /* Failed credentials from one host are cut off within a second (the
     * count starts over each second, so it may take two), even the right
     * one; another host is not affected. */
    int rc = STORE_OK;
    for (int i = 0; i < 25 && rc != STORE_ERATE; i++)
        rc = auth_principal(a, "10.2.2.2:1", "guess", &p);
    assert_int_equal(rc, STORE_ERATE);
    assert_int_equal(auth_principal(a, "10.2.2.2:2", "0123456789abcdef-secret", &p), STORE_ERATE);
    assert_int_equal(auth_principal(a, "10.3.3.3:1", "0123456789abcdef-secret", &p), STORE_OK);
    /* Failures of many other hosts in the same second do not wipe a limited
     * host's count (they once shared its slot). */
    for (int round = 0; round < 3; round++) {
        int64_t second = mono_s();
        for (int i = 0; i < 12; i++)
            auth_principal(a, "10.4.4.4:1", "guess", &p);
        char other[32];
        for (int i = 0; i < 3000; i++) {
            snprintf(other, sizeof other, "10.5.%d.%d:1", i / 250, i % 250);
            auth_principal(a, other, "guess", &p);
        }
        rc = auth_principal(a, "10.4.4.4:1", "0123456789abcdef-secret", &p);
        if (mono_s() == second) { /* all within one second: decisive */
            assert_int_equal(rc, STORE_ERATE);
            break;
        }
    }
    auth_free(a);

    /* A bad pattern names its option. */
    char *bad[] = {"a/#/b"};
    assert_null(auth_new(config_with(bad, 1, NULL, 0), why, sizeof why));
    assert_non_null(strstr(why, "anonymous_read"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(privileges_agree_with_brute_force),
        cmocka_unit_test(principals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
