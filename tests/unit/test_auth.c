/*
 * test_auth.c — privileges and principals (auth.c): the compiled pattern
 * tree against store_pattern_match over every key of a small universe,
 * meet and cover against the same brute force, who a client is by its
 * address and token, and JWTs (minted here with libjwt, HMAC and RSA)
 * with each claim that must refuse them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

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
            assert_int_equal(auth_principal(a, "10.0.0.1:5", NULL, &p, why, sizeof why), 0);
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
    assert_int_equal(auth_principal(a, "127.0.0.1:4000", NULL, &p, why, sizeof why), 0);
    assert_string_equal(p->name, "local");
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "unix", NULL, &p, why, sizeof why), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "::1:4000", NULL, &p, why, sizeof why), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "::ffff:127.0.0.2:9", NULL, &p, why, sizeof why), 0);
    assert_true(p->admin);
    assert_int_equal(auth_principal(a, "192.168.1.9:4000", NULL, &p, why, sizeof why), 0);
    assert_string_equal(p->name, "anonymous");
    assert_false(p->admin);
    assert_true(privs_match(p->read, "home/x", 6));
    assert_false(privs_match(p->read, "work/x", 6));
    assert_true(privs_match(p->write, "home/lights/k", 13));
    assert_false(privs_match(p->write, "home/x", 6));
    assert_false(auth_required(a, "192.168.1.9:1"));
    /* any token is refused: none is configured */
    assert_int_equal(auth_principal(a, "127.0.0.1:1", "whatever", &p, why, sizeof why),
                     STORE_EUNAUTH);
    auth_free(a);

    /* With admin_token: loopback is anonymous too, the token is admin. */
    cfg = config_with(NULL, 0, NULL, 0);
    cfg->admin_token = "0123456789abcdef-secret";
    a = auth_new(cfg, why, sizeof why);
    assert_int_equal(auth_principal(a, "127.0.0.1:4000", NULL, &p, why, sizeof why), 0);
    assert_string_equal(p->name, "anonymous");
    assert_true(auth_required(a, "127.0.0.1:4000"));
    assert_int_equal(
        auth_principal(a, "10.1.1.1:1", "0123456789abcdef-secret", &p, why, sizeof why), 0);
    assert_true(p->admin && p->authenticated);
    assert_int_equal(
        auth_principal(a, "10.1.1.1:1", "0123456789abcdef-secreT", &p, why, sizeof why),
        STORE_EUNAUTH);
    assert_int_equal(auth_principal(a, "10.1.1.1:1", "", &p, why, sizeof why), STORE_EUNAUTH);
    /* Failed credentials from one host are cut off within a second (the
     * count starts over each second, so it may take two), even the right
     * one; another host is not affected. */
    int rc = STORE_OK;
    for (int i = 0; i < 25 && rc != STORE_ERATE; i++)
        rc = auth_principal(a, "10.2.2.2:1", "guess", &p, why, sizeof why);
    assert_int_equal(rc, STORE_ERATE);
    assert_int_equal(
        auth_principal(a, "10.2.2.2:2", "0123456789abcdef-secret", &p, why, sizeof why),
        STORE_ERATE);
    assert_int_equal(
        auth_principal(a, "10.3.3.3:1", "0123456789abcdef-secret", &p, why, sizeof why), STORE_OK);
    /* Failures of many other hosts in the same second do not wipe a limited
     * host's count (they once shared its slot). */
    for (int round = 0; round < 3; round++) {
        int64_t second = mono_s();
        for (int i = 0; i < 12; i++)
            auth_principal(a, "10.4.4.4:1", "guess", &p, why, sizeof why);
        char other[32];
        for (int i = 0; i < 3000; i++) {
            snprintf(other, sizeof other, "10.5.%d.%d:1", i / 250, i % 250);
            auth_principal(a, other, "guess", &p, why, sizeof why);
        }
        rc = auth_principal(a, "10.4.4.4:1", "0123456789abcdef-secret", &p, why, sizeof why);
        if (mono_s() == second) { /* all within one second: decisive */
            assert_int_equal(rc, STORE_ERATE);
            break;
        }
    }
    /* Good credentials from thousands of hosts take no slot of the table,
     * so they never crowd out anyone (a lookup once took a slot, and a host
     * whose window was full was refused with the right token). */
    for (int i = 0; i < 5000; i++) {
        char other[32];
        snprintf(other, sizeof other, "10.6.%d.%d:1", i / 250, i % 250);
        assert_int_equal(auth_principal(a, other, "0123456789abcdef-secret", &p, why, sizeof why),
                         STORE_OK);
    }
    /* IPv6 clients count by /64: another address of it is limited too. */
    rc = STORE_OK;
    for (int i = 0; i < 25 && rc != STORE_ERATE; i++) {
        char v6[64];
        snprintf(v6, sizeof v6, "2001:db8:1:2::%x:1", i + 1);
        rc = auth_principal(a, v6, "guess", &p, why, sizeof why);
    }
    assert_int_equal(rc, STORE_ERATE);
    assert_int_equal(auth_principal(a, "2001:db8:1:2:ffff::9:1", "guess", &p, why, sizeof why),
                     STORE_ERATE);
    assert_int_equal(
        auth_principal(a, "2001:db8:1:3::1:1", "0123456789abcdef-secret", &p, why, sizeof why),
        STORE_OK);
    auth_free(a);

    /* A bad pattern names its option. */
    char *bad[] = {"a/#/b"};
    assert_null(auth_new(config_with(bad, 1, NULL, 0), why, sizeof why));
    assert_non_null(strstr(why, "anonymous_read"));
}

/* A JWT with `claims` (JSON), signed with `alg` and `key` (NULL: none). */
static char *mint(jwt_alg_t alg, const void *key, size_t klen, const char *claims)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, alg, key, (int)klen), 0);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    assert_non_null(t);
    return t;
}

/* What `a` says of the JWT with `claims` signed with `alg` and `key`;
 * the principal is released at once, but for `keep`. */
static int present(struct auth *a, jwt_alg_t alg, const void *key, size_t klen, const char *claims,
                   const struct principal **keep, char *why, size_t why_len)
{
    const struct principal *p;
    char *t = mint(alg, key, klen, claims);
    int rc = auth_principal(a, "10.9.9.9:1", t, &p, why, why_len);
    free(t);
    if (keep != NULL)
        *keep = p;
    else
        auth_release(p);
    return rc;
}

static void jwts(void **state)
{
    static const char secret[] = "a-secret-of-thirty-two-characters!";
    char why[256], claims[512];
    const struct principal *p, *q;
    long now = (long)(now_us() / 1000000);
    (void)state;
    struct config *cfg = config_with(NULL, 0, NULL, 0);
    cfg->jwt_key = (char *)secret;
    struct auth *a = auth_new(cfg, why, sizeof why);
    assert_non_null(a);
    /* With jwt_key, loopback is no longer trusted as local. */
    assert_true(auth_required(a, "127.0.0.1:1"));

    snprintf(claims, sizeof claims,
             "{\"sub\":\"alice\",\"exp\":%ld,\"almanac\":{\"read\":[\"home/#\"],"
             "\"write\":[\"home/lights/+\"]}}",
             now + 60);
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret), claims, &p, why, sizeof why),
                     STORE_OK);
    assert_string_equal(p->name, "jwt:alice"); /* never a token's name */
    assert_true(p->authenticated && !p->admin && auth_live(p));
    assert_true(privs_match(p->read, "home/x", 6));
    assert_false(privs_match(p->read, "work/x", 6));
    assert_true(privs_match(p->write, "home/lights/k", 13));
    assert_false(privs_match(p->write, "home/x", 6));
    /* The same JWT again is the same principal (verified once). */
    char *t = mint(JWT_ALG_HS256, secret, strlen(secret), claims);
    assert_int_equal(auth_principal(a, "10.9.9.9:1", t, &q, why, sizeof why), STORE_OK);
    assert_ptr_equal(p, q);
    auth_release(q);
    free(t);
    auth_release(p);

    /* HS384 and HS512 use the same secret; admin and no expiry. */
    assert_int_equal(present(a, JWT_ALG_HS512, secret, strlen(secret),
                             "{\"sub\":\"ops\",\"almanac\":{\"admin\":true}}", &p, why, sizeof why),
                     STORE_OK);
    assert_true(p->admin && p->expires == 0);
    auth_release(p);
    /* No almanac claim: someone, with no privileges at all. */
    assert_int_equal(
        present(a, JWT_ALG_HS256, secret, strlen(secret), "{\"sub\":\"bob\"}", &p, why, sizeof why),
        STORE_OK);
    assert_true(p->read == NULL && p->write == NULL && !p->admin);
    auth_release(p);

    /* Each of these is refused with a sentence that says why. */
    struct {
        jwt_alg_t alg;
        const char *key, *claims, *why;
    } bad[] = {
        {JWT_ALG_HS256, secret, "{\"exp\":1000}", "expired"},
        {JWT_ALG_HS256, secret, "{\"nbf\":99999999999}", "not valid yet"},
        {JWT_ALG_HS256, secret, "{\"exp\":\"tomorrow\"}", "numbers"},
        {JWT_ALG_HS256, "another-secret-of-thirty-two-chars", "{}", "jwt_key"},
        {JWT_ALG_NONE, NULL, "{\"almanac\":{\"admin\":true}}", "not valid"},
        {JWT_ALG_HS256, secret, "{\"almanac\":{\"read\":\"#\"}}", "array of patterns"},
        {JWT_ALG_HS256, secret, "{\"almanac\":{\"read\":[\"a/#/b\"]}}", "almanac.read"},
        {JWT_ALG_HS256, secret, "{\"almanac\":{\"admin\":\"yes\"}}", "almanac claim"},
        {JWT_ALG_HS256, secret, "{\"almanac\":[]}", "almanac claim"},
        {JWT_ALG_HS256, secret, "{\"exp\":1e19}", "out of range"},
        {JWT_ALG_HS256, secret, "{\"sub\":\"admin\\nwarn forged\"}", "sub"},
        {JWT_ALG_HS256, secret, "{\"sub\":7}", "sub"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = present(a, bad[i].alg, bad[i].key, bad[i].key ? strlen(bad[i].key) : 0,
                         bad[i].claims, NULL, why, sizeof why);
        if (rc != STORE_EUNAUTH || strstr(why, bad[i].why) == NULL)
            fail_msg("%s: rc %d, why '%s' (want '%s')", bad[i].claims, rc, why, bad[i].why);
        if (i % 4 == 3)
            sleep(1); /* under the limit of failed credentials a second */
    }
    /* A critical header extension is not understood, so refused. */
    jwt_t *cj = NULL;
    assert_int_equal(jwt_new(&cj), 0);
    jwt_add_header(cj, "crit", "x");
    jwt_set_alg(cj, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret));
    t = jwt_encode_str(cj);
    jwt_free(cj);
    assert_int_equal(auth_principal(a, "10.7.7.7:1", t, &p, why, sizeof why), STORE_EUNAUTH);
    assert_non_null(strstr(why, "crit"));
    free(t);
    /* A tampered payload does not verify. */
    t = mint(JWT_ALG_HS256, secret, strlen(secret), "{\"almanac\":{\"read\":[\"a\"]}}");
    char *dot = strchr(t, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    assert_int_equal(auth_principal(a, "10.8.8.8:1", t, &p, why, sizeof why), STORE_EUNAUTH);
    free(t);
    /* A JWT that expires while held is no longer live (sessions end). */
    now = (long)(now_us() / 1000000);
    snprintf(claims, sizeof claims, "{\"exp\":%ld}", now + 2);
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret), claims, &p, why, sizeof why),
                     STORE_OK);
    assert_true(auth_live(p));
    while (now_us() / 1000000 < now + 2)
        usleep(100000);
    assert_false(auth_live(p));
    auth_release(p);
    auth_free(a);

    /* iss and aud, when configured. */
    cfg->jwt_issuer = "https://idp.example";
    cfg->jwt_audience = "almanac";
    a = auth_new(cfg, why, sizeof why);
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret),
                             "{\"iss\":\"https://idp.example\",\"aud\":[\"x\",\"almanac\"]}", NULL,
                             why, sizeof why),
                     STORE_OK);
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret),
                             "{\"iss\":\"https://idp.example\",\"aud\":\"almanac\"}", NULL, why,
                             sizeof why),
                     STORE_OK);
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret),
                             "{\"iss\":\"https://evil.example\",\"aud\":\"almanac\"}", NULL, why,
                             sizeof why),
                     STORE_EUNAUTH);
    assert_non_null(strstr(why, "iss"));
    assert_int_equal(present(a, JWT_ALG_HS256, secret, strlen(secret),
                             "{\"iss\":\"https://idp.example\",\"aud\":\"other\"}", NULL, why,
                             sizeof why),
                     STORE_EUNAUTH);
    assert_non_null(strstr(why, "aud"));
    auth_free(a);
    cfg->jwt_issuer = cfg->jwt_audience = NULL;

    /* RS256 with a PEM public key; a token signed with HS256 over the
     * public key's own text (the algorithm confusion) is refused. */
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    assert_non_null(pk);
    char path[] = "/tmp/almanac-jwt-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    assert_int_equal(PEM_write_PUBKEY(f, pk), 1);
    fclose(f);
    BIO *mem = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(mem, pk, NULL, NULL, 0, NULL, NULL);
    char *priv;
    long privlen = BIO_get_mem_data(mem, &priv);
    FILE *pf = fopen(path, "r");
    char pub[4096];
    size_t publen = fread(pub, 1, sizeof pub, pf);
    fclose(pf);
    cfg->jwt_key = path;
    a = auth_new(cfg, why, sizeof why);
    assert_non_null(a);
    assert_int_equal(present(a, JWT_ALG_RS256, priv, (size_t)privlen,
                             "{\"sub\":\"carol\",\"almanac\":{\"read\":[\"#\"]}}", &p, why,
                             sizeof why),
                     STORE_OK);
    assert_string_equal(p->name, "jwt:carol");
    auth_release(p);
    assert_int_equal(present(a, JWT_ALG_HS256, pub, publen, "{\"almanac\":{\"admin\":true}}", NULL,
                             why, sizeof why),
                     STORE_EUNAUTH);
    auth_free(a);
    /* A path that cannot be read is never taken as a secret. */
    cfg->jwt_key = "/run/secrets/almanac/idp-public-key.pem";
    assert_null(auth_new(cfg, why, sizeof why));
    assert_non_null(strstr(why, "cannot read"));
    cfg->jwt_key = path;
    /* A file that holds no public key is refused at start. */
    f = fopen(path, "w");
    fputs("-----BEGIN NOTHING-----\n", f);
    fclose(f);
    assert_null(auth_new(cfg, why, sizeof why));
    assert_non_null(strstr(why, "public key"));
    unlink(path);
    BIO_free(mem);
    EVP_PKEY_free(pk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(privileges_agree_with_brute_force),
        cmocka_unit_test(principals),
        cmocka_unit_test(jwts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
