/*
 * fuzz_jwt.c — libFuzzer harness of the credentials a client presents
 * (auth.c's auth_principal) with jwt_key set to an HS256 secret: hostile
 * tokens go through libjwt's parser, and hostile claims, signed with the
 * secret here, through the checks of exp, nbf, iss, aud and the almanac
 * claim.
 *
 * Input: a mode byte, then the text (up to a NUL). Mode even: the text is
 * the token as sent. Mode odd: the text is the JWT's payload, signed here
 * with the secret (so the claims are reached), with `alg` HS256. Besides
 * memory and UB errors it checks that a principal given is authenticated,
 * named, admin only when the claim says so in JSON, and that an unsigned or
 * wrongly signed token never names anyone.
 */
#include "auth.h"
#include "gateway.h"
#include "store.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "fuzz-hs256-secret-of-32-characters!!"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct auth *auth__get(void)
{
    static struct auth *a;
    static struct config cfg;
    if (a == NULL) {
        char why[256];
        cfg.jwt_key = SECRET;
        cfg.jwt_audience = "almanac";
        a = auth_new(&cfg, why, sizeof why);
        if (a == NULL) {
            fprintf(stderr, "auth_new: %s\n", why);
            abort();
        }
        log_set_level(LOG_ERROR);
    }
    return a;
}

/* base64url of `len` bytes, without padding, appended at `out`. */
static size_t b64url(char *out, const unsigned char *in, size_t len)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[n] = '\0';
    return (size_t)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned counter;
    if (size < 1 || size > 4096)
        return 0;
    bool sign = data[0] & 1;
    char *text = strndup((const char *)data + 1, size - 1);
    char *token = malloc(4 * size + 256);
    if (sign) {
        static const char head[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
        size_t n = b64url(token, (const unsigned char *)head, sizeof head - 1);
        token[n++] = '.';
        n += b64url(token + n, (const unsigned char *)text, strlen(text));
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned maclen;
        HMAC(EVP_sha256(), SECRET, sizeof SECRET - 1, (const unsigned char *)token, n, mac,
             &maclen);
        token[n++] = '.';
        b64url(token + n, mac, maclen);
    } else
        strcpy(token, text);

    /* An address of its own each time: the failed-credential limit would
     * otherwise answer in place of the parser. */
    char address[32];
    counter++;
    snprintf(address, sizeof address, "10.%u.%u.%u:1", (counter >> 16) & 255, (counter >> 8) & 255,
             counter & 255);
    const struct principal *p;
    char why[256];
    int rc = auth_principal(auth__get(), address, token, &p, why, sizeof why);
    if (rc == STORE_OK) {
        if (!p->authenticated || p->name == NULL || !auth_live(p))
            abort();
        /* Only a token signed here names anyone: no key is configured but
         * the secret, and no token was made. */
        if (!sign)
            abort();
        if (p->admin && strstr(text, "\"admin\"") == NULL)
            abort();
        auth_release(p);
    } else if (rc != STORE_EUNAUTH && rc != STORE_ERATE)
        abort();
    else if (strlen(why) == 0)
        abort(); /* every refusal says why */
    free(token);
    free(text);
    return 0;
}
