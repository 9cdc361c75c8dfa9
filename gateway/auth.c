/*
 * auth.c — principals and their privileges.
 *
 * A principal's `read` and `write` privileges are MQTT-style patterns,
 * compiled into a tree of segments (struct pnode: literal children sorted
 * by name and found by binary search, a '+' child and a '#' flag), so
 * matching a key walks its segments once along the literal and '+'
 * branches: the cost is the key's depth, not the number of patterns. The
 * patterns are also kept as text for the questions about patterns (does a
 * request's pattern meet or lie within a privilege), asked once a request.
 *
 * Protected by default (Redis's protected mode): with no credential
 * configured (admin_token, or a token), a client on loopback or the Unix
 * socket is "local", with every right; any other is anonymous, with
 * anonymous_read and anonymous_write only.
 *
 * Tokens live in the store (tokens.c, as SHA-256 hashes) and in memory, in
 * a list and a table by hash (so a lookup costs one bucket, not every
 * token), read under `tokens_lock`. A removed token is marked revoked, not
 * freed: requests and feeds that hold its principal check it (auth_live).
 *
 * A JWT (when jwt_key is set) is verified by libjwt with the one algorithm
 * family the key allows (HMAC for a secret; RSA or ECDSA by the PEM key's
 * type, so a token signed with HS256 over the public key's text is
 * refused), then its claims are checked here: exp, nbf, iss, aud, and the
 * privileges of "almanac". Each verified JWT gets a principal of its own,
 * counted (refs) and freed by its last holder; the last AUTH_JWT_CACHE
 * ones are kept, so a client sending the same JWT with every request is
 * verified once.
 * More than AUTH_FAILS_PER_SECOND failed credentials in one second from
 * one address (its host, any port) are answered rate_limited, without
 * looking at the credential, until the next second.
 * Invariants:
 *   1. a principal and its trees do not change once made (but for the
 *      atomic `revoked`), and are freed only by auth_free, so any thread
 *      may read them without a lock; the token list changes under
 *      `tokens_lock`, the failure counts under `lock`;
 *   2. at the root, '+' and '#' never match a key starting with '$'
 *      (store/key.c's rule), in the tree as in the text;
 *   3. a token is compared in constant time, as a SHA-256 hash: the
 *      secret itself is not kept;
 *   4. a JWT's principal is freed only when its refs reach 0: each request,
 *      session, stream and cache slot that holds it counts one.
 */
#include "auth.h"
#include "clock.h"
#include "gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>

#define AUTH_FAILS_PER_SECOND 10
#define AUTH_FAIL_SLOTS       1024 /* hosts tracked at once (open addressing) */
#define AUTH_FAIL_PROBES      16
#define AUTH_JWT_CACHE        64   /* verified JWTs kept (direct-mapped by hash) */
#define AUTH_TOKEN_BUCKETS    1024 /* the token table, by the first bytes of the hash */
#define AUTH_JWT_MAX_BYTES    8192 /* a longer credential is no JWT we take */

struct pnode {
    char *name; /* the segment (NULL at the root) */
    size_t nlen;
    struct pnode **kids; /* literal children, sorted by name */
    size_t nkids;
    struct pnode *plus;
    bool hash; /* a pattern ends here with '#' */
    bool end;  /* a pattern ends here */
};

struct privs {
    struct pnode root;
    char **pats; /* the patterns as text */
    size_t npats;
};

/* Failed credentials from one host in one second. */
struct auth__fails {
    char host[64];
    int64_t second;
    unsigned count;
};

struct auth__token {
    struct auth__token *next;
    struct auth__token *bucket_next; /* in its bucket of the table */
    struct principal p;              /* p.name is `name` */
    unsigned char hash[SHA256_DIGEST_LENGTH];
    char *name, *read, *write; /* read, write: JSON arrays, as stored */
    int64_t created;
    _Atomic int64_t last_used;
};

/* A verified JWT's principal (invariant 4). */
struct auth__jwt {
    struct principal p; /* first: a principal is its auth__jwt */
    char *name;
    unsigned char hash[SHA256_DIGEST_LENGTH];
};

/* The algorithms jwt_key verifies: HMAC for a secret, else the PEM key's. */
enum auth__jwt_kind { JWT_KIND_NONE, JWT_KIND_HMAC, JWT_KIND_RSA, JWT_KIND_EC };

struct auth {
    struct principal anonymous, local, admin;
    pthread_rwlock_t tokens_lock; /* tokens, buckets */
    struct auth__token *tokens;
    struct auth__token *buckets[AUTH_TOKEN_BUCKETS]; /* by hash: a lookup costs one bucket */
    EVP_MD *sha256;              /* fetched once (OpenSSL 3 looks it up on each SHA256()) */
    _Atomic int64_t fail_second; /* the last second a credential failed */
    _Atomic unsigned live_tokens;
    pthread_mutex_t lock; /* fails */
    struct auth__fails fails[AUTH_FAIL_SLOTS];
    bool has_admin_token;
    unsigned char admin_hash[SHA256_DIGEST_LENGTH]; /* of admin_token */
    bool protected_mode;
    enum auth__jwt_kind jwt_kind;
    unsigned char *jwt_key; /* the secret, or the PEM text */
    size_t jwt_key_len;
    const char *jwt_issuer, *jwt_audience; /* the config's, or NULL */
    pthread_mutex_t jwt_lock;              /* jwt_cache */
    struct auth__jwt *jwt_cache[AUTH_JWT_CACHE];
};

/* ---- privileges ---- */

static size_t seg_end(const char *s, size_t len, size_t from)
{
    const char *slash = memchr(s + from, '/', len - from);
    return slash ? (size_t)(slash - s) : len;
}

static int pnode__cmp(const char *a, size_t alen, const struct pnode *n)
{
    size_t m = alen < n->nlen ? alen : n->nlen;
    int c = memcmp(a, n->name, m);
    return c ? c : (alen > n->nlen) - (alen < n->nlen);
}

/* The index of the child named `seg`, or where it would go (`*found`). */
static size_t pnode__find(const struct pnode *n, const char *seg, size_t len, bool *found)
{
    size_t lo = 0, hi = n->nkids;
    *found = false;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = pnode__cmp(seg, len, n->kids[mid]);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static struct pnode *pnode__child(struct pnode *n, const char *seg, size_t len)
{
    bool found;
    size_t at = pnode__find(n, seg, len, &found);
    if (found)
        return n->kids[at];
    struct pnode *c = calloc(1, sizeof *c),
                 **kids = realloc(n->kids, (n->nkids + 1) * sizeof *kids);
    if (kids != NULL)
        n->kids = kids;
    if (c == NULL || kids == NULL || (c->name = malloc(len + 1)) == NULL) {
        free(c);
        return NULL;
    }
    memcpy(c->name, seg, len);
    c->name[len] = '\0';
    c->nlen = len;
    memmove(n->kids + at + 1, n->kids + at, (n->nkids - at) * sizeof *kids);
    n->kids[at] = c;
    n->nkids++;
    return c;
}

static void pnode__free(struct pnode *n)
{
    for (size_t i = 0; i < n->nkids; i++) {
        pnode__free(n->kids[i]);
        free(n->kids[i]);
    }
    if (n->plus != NULL) {
        pnode__free(n->plus);
        free(n->plus);
    }
    free(n->kids);
    free(n->name);
}

static void privs__free(struct privs *p)
{
    if (p == NULL)
        return;
    pnode__free(&p->root);
    for (size_t i = 0; i < p->npats; i++)
        free(p->pats[i]);
    free(p->pats);
    free(p);
}

/* Adds the valid pattern `pat`; -1 when out of memory. */
static int privs__add(struct privs *p, const char *pat)
{
    size_t len = strlen(pat), at = 0;
    char **pats = realloc(p->pats, (p->npats + 1) * sizeof *pats);
    if (pats == NULL)
        return -1;
    p->pats = pats;
    if ((p->pats[p->npats] = strdup(pat)) == NULL)
        return -1;
    p->npats++;
    struct pnode *n = &p->root;
    for (;;) {
        size_t e = seg_end(pat, len, at);
        if (e - at == 1 && pat[at] == '#') {
            n->hash = true;
            return 0;
        }
        if (e - at == 1 && pat[at] == '+') {
            if (n->plus == NULL && (n->plus = calloc(1, sizeof *n->plus)) == NULL)
                return -1;
            n = n->plus;
        } else if ((n = pnode__child(n, pat + at, e - at)) == NULL)
            return -1;
        if (e == len) {
            n->end = true;
            return 0;
        }
        at = e + 1;
    }
}

/* Compiles `pats` (checked valid here); NULL when there are none, or with
 * a sentence in `why` (`*failed`). */
static struct privs *privs__new(const char *option, char *const *pats, size_t n, bool *failed,
                                char *why, size_t why_len)
{
    char what[256];
    bool wild;
    *failed = false;
    if (n == 0)
        return NULL;
    struct privs *p = calloc(1, sizeof *p);
    for (size_t i = 0; p != NULL && i < n; i++) {
        if (store_pattern_check(pats[i], strlen(pats[i]), SIZE_MAX, &wild, what, sizeof what) !=
            STORE_OK) {
            snprintf(why, why_len, "%s %s: %s", option, pats[i], what);
            privs__free(p);
            *failed = true;
            return NULL;
        }
        if (privs__add(p, pats[i]) != 0) {
            privs__free(p);
            p = NULL;
        }
    }
    if (p == NULL) {
        snprintf(why, why_len, "out of memory");
        *failed = true;
    }
    return p;
}

/* `n` matched the key up to the segment at `at` (> klen: all of it). */
static bool pnode__match(const struct pnode *n, const char *key, size_t klen, size_t at, bool root)
{
    bool dollar = root && klen > 0 && key[0] == '$'; /* invariant 2 */
    if (n->hash && !dollar)
        return true; /* "a/#" matches "a" and all below */
    if (at > klen)
        return n->end;
    size_t e = seg_end(key, klen, at);
    bool found;
    size_t i = pnode__find(n, key + at, e - at, &found);
    if (found && pnode__match(n->kids[i], key, klen, e + 1, false))
        return true;
    return n->plus != NULL && !dollar && pnode__match(n->plus, key, klen, e + 1, false);
}

bool privs_match(const struct privs *p, const char *key, size_t klen)
{
    return p != NULL && pnode__match(&p->root, key, klen, 0, true);
}

bool privs_meet(const struct privs *p, const char *pat, size_t plen)
{
    for (size_t i = 0; p != NULL && i < p->npats; i++)
        if (store_pattern_intersects(p->pats[i], strlen(p->pats[i]), pat, plen))
            return true;
    return false;
}

bool privs_cover(const struct privs *p, const char *pat, size_t plen)
{
    for (size_t i = 0; p != NULL && i < p->npats; i++)
        if (store_pattern_covers(p->pats[i], strlen(p->pats[i]), pat, plen))
            return true;
    return false;
}

/* ---- tokens ---- */

static void auth__token_free(struct auth__token *t)
{
    privs__free(t->p.read);
    privs__free(t->p.write);
    OPENSSL_cleanse(t->hash, sizeof t->hash);
    free(t->name);
    free(t->read);
    free(t->write);
    free(t);
}

/* The patterns of the JSON array `arr` (NULL: none) as privileges named
 * `what` in messages; `*failed`, with a sentence, on a bad one. */
static struct privs *auth__privs_array(const char *what, json_t *arr, bool *failed, char *why,
                                       size_t why_len)
{
    size_t n = json_array_size(arr), i;
    json_t *v;
    char **pats = calloc(n + 1, sizeof *pats);
    struct privs *p = NULL;
    *failed = (arr != NULL && !json_is_array(arr)) || pats == NULL;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v))
            *failed = true;
        else
            pats[i] = (char *)json_string_value(v);
    }
    if (*failed)
        snprintf(why, why_len, "%s must be an array of patterns", what);
    else
        p = privs__new(what, pats, n, failed, why, why_len);
    free(pats);
    return p;
}

/* The same of a token's column (JSON text). */
static struct privs *auth__privs_json(const char *what, const char *text, bool *failed, char *why,
                                      size_t why_len)
{
    json_t *arr = json_loads(text, 0, NULL);
    struct privs *p = arr != NULL ? auth__privs_array(what, arr, failed, why, why_len) : NULL;
    if (arr == NULL) {
        *failed = true;
        snprintf(why, why_len, "%s must be an array of patterns", what);
    }
    json_decref(arr);
    return p;
}

/* A token in memory from what the store keeps; NULL with a sentence. */
static struct auth__token *auth__token_new(const struct store_token *st, char *why, size_t why_len)
{
    struct auth__token *t = calloc(1, sizeof *t);
    bool bad_read = false, bad_write = false;
    if (t == NULL || (t->name = strdup(st->name)) == NULL || (t->read = strdup(st->read)) == NULL ||
        (t->write = strdup(st->write)) == NULL) {
        snprintf(why, why_len, "out of memory");
        if (t != NULL)
            auth__token_free(t);
        return NULL;
    }
    t->p.read = auth__privs_json("read", st->read, &bad_read, why, why_len);
    if (!bad_read)
        t->p.write = auth__privs_json("write", st->write, &bad_write, why, why_len);
    if (bad_read || bad_write) {
        auth__token_free(t);
        return NULL;
    }
    t->p.name = t->name;
    t->p.refs = -1;
    t->p.admin = st->admin;
    t->p.authenticated = true;
    t->p.expires = st->expires;
    t->created = st->created;
    memcpy(t->hash, st->hash, sizeof t->hash);
    return t;
}

static size_t auth__bucket(const unsigned char *hash)
{
    return ((size_t)hash[0] << 8 | hash[1]) % AUTH_TOKEN_BUCKETS;
}

static void auth__insert(struct auth *a, struct auth__token *t)
{
    pthread_rwlock_wrlock(&a->tokens_lock);
    t->next = a->tokens;
    a->tokens = t;
    t->bucket_next = a->buckets[auth__bucket(t->hash)];
    a->buckets[auth__bucket(t->hash)] = t;
    atomic_fetch_add(&a->live_tokens, 1);
    pthread_rwlock_unlock(&a->tokens_lock);
}

struct auth__loading {
    struct auth *a;
    int err;
    char *why;
    size_t why_len;
};

static void auth__load_one(void *arg, const struct store_token *st)
{
    struct auth__loading *l = arg;
    char why[256];
    struct auth__token *t = auth__token_new(st, why, sizeof why);
    if (t != NULL)
        auth__insert(l->a, t);
    else if (l->err == STORE_OK) {
        l->err = STORE_EINTERNAL;
        snprintf(l->why, l->why_len, "token %s: %s", st->name, why);
    }
}

int auth_load(struct auth *a, struct store *s, char *why, size_t why_len)
{
    struct auth__loading l = {a, STORE_OK, why, why_len};
    if (store_tokens(s, auth__load_one, &l) != STORE_OK) {
        snprintf(why, why_len, "the stored tokens cannot be read");
        return STORE_EINTERNAL;
    }
    return l.err;
}

/* A JSON array of `n` strings, as text (malloc'd), or NULL. */
static char *auth__json_list(char *const *v, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(v[i]));
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return text;
}

static void auth__sha256(const struct auth *a, const char *text, unsigned char *out)
{
    if (EVP_Digest(text, strlen(text), out, NULL, a->sha256, NULL) != 1)
        SHA256((const unsigned char *)text, strlen(text), out);
}

static bool auth__name_ok(const char *name)
{
    size_t n = strlen(name);
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return n >= 1 && n <= 64;
}

int auth_token_add(struct auth *a, struct store *s, const char *name, char *const *read,
                   size_t nread, char *const *write, size_t nwrite, bool admin, int64_t expires,
                   char secret[64], char *why, size_t why_len)
{
    unsigned char random[32];
    if (!auth__name_ok(name)) {
        snprintf(why, why_len, "a token's name is 1 to 64 letters, digits, '-', '_' or '.'");
        return STORE_EBODY;
    }
    /* The secret: 32 random bytes in base64url, with a prefix that says
     * what it is (so a leaked one is recognised by secret scanners). */
    if (RAND_bytes(random, sizeof random) != 1) {
        snprintf(why, why_len, "no random bytes for a secret");
        return STORE_EINTERNAL;
    }
    char b64[48];
    int n = EVP_EncodeBlock((unsigned char *)b64, random, sizeof random);
    OPENSSL_cleanse(random, sizeof random);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        b64[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    snprintf(secret, 64, "alm_%.*s", n, b64);
    OPENSSL_cleanse(b64, sizeof b64);

    struct store_token st = {.name = name,
                             .read = auth__json_list(read, nread),
                             .write = auth__json_list(write, nwrite),
                             .admin = admin,
                             .created = now_us(),
                             .expires = expires};
    auth__sha256(a, secret, st.hash);
    int err = STORE_EINTERNAL;
    struct auth__token *t = NULL;
    if (st.read == NULL || st.write == NULL)
        snprintf(why, why_len, "out of memory");
    else if ((t = auth__token_new(&st, why, why_len)) == NULL) /* checks the patterns */
        err = STORE_EBODY;
    else if ((err = store_token_add(s, &st, why, why_len)) == STORE_OK) {
        auth__insert(a, t);
        t = NULL;
    }
    if (t != NULL)
        auth__token_free(t);
    free((char *)st.read);
    free((char *)st.write);
    OPENSSL_cleanse(st.hash, sizeof st.hash);
    if (err != STORE_OK)
        OPENSSL_cleanse(secret, 64);
    return err;
}

int auth_token_remove(struct auth *a, struct store *s, const char *name)
{
    int err = store_token_remove(s, name);
    if (err != STORE_OK)
        return err;
    pthread_rwlock_wrlock(&a->tokens_lock);
    for (struct auth__token *t = a->tokens; t != NULL; t = t->next)
        if (!atomic_load(&t->p.revoked) && strcmp(t->name, name) == 0) {
            atomic_store(&t->p.revoked, true); /* kept: others may hold it */
            atomic_fetch_sub(&a->live_tokens, 1);
        }
    pthread_rwlock_unlock(&a->tokens_lock);
    return STORE_OK;
}

void auth_tokens(struct auth *a, void (*fn)(void *arg, const struct auth_token_info *t), void *arg)
{
    pthread_rwlock_rdlock(&a->tokens_lock);
    for (struct auth__token *t = a->tokens; t != NULL; t = t->next) {
        if (atomic_load(&t->p.revoked))
            continue;
        struct auth_token_info info = {t->name,
                                       t->read,
                                       t->write,
                                       t->p.admin,
                                       t->created,
                                       t->p.expires,
                                       atomic_load(&t->last_used)};
        fn(arg, &info);
    }
    pthread_rwlock_unlock(&a->tokens_lock);
}

bool auth_live(const struct principal *p)
{
    return !atomic_load(&((struct principal *)p)->revoked) &&
           (p->expires == 0 || now_us() < p->expires);
}

/* ---- JWTs ---- */

const struct principal *auth_hold(const struct principal *p)
{
    if (p != NULL && p->refs >= 0)
        atomic_fetch_add(&((struct principal *)p)->refs, 1);
    return p;
}

void auth_release(const struct principal *p)
{
    if (p == NULL || p->refs < 0 || atomic_fetch_sub(&((struct principal *)p)->refs, 1) != 1)
        return;
    struct auth__jwt *j = (struct auth__jwt *)p; /* invariant 4 */
    privs__free(j->p.read);
    privs__free(j->p.write);
    free(j->name);
    free(j);
}

/* Whether jwt_key's value is meant as a file: it must then be one, never
 * taken as a secret (a missing file's path is no secret). */
static bool auth__looks_like_path(const char *key)
{
    size_t n = strlen(key);
    return key[0] == '/' || key[0] == '.' || key[0] == '~' ||
           (n > 4 && (strcmp(key + n - 4, ".pem") == 0 || strcmp(key + n - 4, ".crt") == 0 ||
                      strcmp(key + n - 4, ".key") == 0 || strcmp(key + n - 4, ".pub") == 0));
}

/* Reads jwt_key: a PEM public key's file (RSA or EC), else an HMAC secret.
 * Returns 0, or -1 with a sentence. */
static int auth__jwt_key(struct auth *a, const char *key, char *why, size_t why_len)
{
    FILE *f = fopen(key, "r");
    if (f == NULL && auth__looks_like_path(key)) {
        snprintf(why, why_len,
                 "jwt_key %s: cannot read it (%s); a secret must not look like a path "
                 "(start with / . ~ or end in .pem, .crt, .key, .pub)",
                 key, strerror(errno));
        return -1;
    }
    if (f == NULL) { /* a secret (config.c made sure it is long enough) */
        a->jwt_kind = JWT_KIND_HMAC;
        a->jwt_key_len = strlen(key);
        a->jwt_key = (unsigned char *)strdup(key);
        return a->jwt_key != NULL ? 0 : -1;
    }
    EVP_PKEY *pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    int type = pk != NULL ? EVP_PKEY_base_id(pk) : 0;
    EVP_PKEY_free(pk);
    a->jwt_kind = type == EVP_PKEY_RSA ? JWT_KIND_RSA : type == EVP_PKEY_EC ? JWT_KIND_EC : 0;
    if (a->jwt_kind == JWT_KIND_NONE) {
        fclose(f);
        snprintf(why, why_len, "jwt_key %s holds no RSA or EC public key (PEM)", key);
        return -1;
    }
    rewind(f);
    a->jwt_key = calloc(1, 65536);
    a->jwt_key_len = a->jwt_key ? fread(a->jwt_key, 1, 65535, f) : 0;
    fclose(f);
    return a->jwt_key != NULL ? 0 : -1;
}

static bool auth__jwt_alg_ok(const struct auth *a, jwt_alg_t alg)
{
    switch (a->jwt_kind) {
    case JWT_KIND_HMAC:
        return alg == JWT_ALG_HS256 || alg == JWT_ALG_HS384 || alg == JWT_ALG_HS512;
    case JWT_KIND_RSA:
        return alg == JWT_ALG_RS256 || alg == JWT_ALG_RS384 || alg == JWT_ALG_RS512;
    case JWT_KIND_EC:
        return alg == JWT_ALG_ES256 || alg == JWT_ALG_ES384 || alg == JWT_ALG_ES512;
    default:
        return false;
    }
}

/* Whether the JWT's `aud` (a string or an array of them) names `want`. */
static bool auth__jwt_aud(json_t *aud, const char *want)
{
    json_t *v;
    size_t i;
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return true;
    }
    return false;
}

/* Whether `sub` may name a principal in messages and the log: a string of
 * 1 to 128 bytes without control characters. */
static bool auth__jwt_sub_ok(json_t *sub)
{
    const char *p = json_string_value(sub);
    size_t n = json_string_length(sub);
    if (p == NULL || n == 0 || n > 128 || strlen(p) != n)
        return false;
    for (; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

/* The principal of the verified claims `c` of a JWT hashed `hash`: held
 * once for the caller. NULL with a sentence when a claim says no. */
static struct auth__jwt *auth__jwt_claims(const struct auth *a, json_t *c,
                                          const unsigned char *hash, char *why, size_t why_len)
{
    json_t *exp = json_object_get(c, "exp"), *nbf = json_object_get(c, "nbf");
    json_t *iss = json_object_get(c, "iss"), *sub = json_object_get(c, "sub");
    json_t *claim = json_object_get(c, "almanac"), *admin = json_object_get(claim, "admin");
    int64_t now = now_us();
    /* Seconds whose µs an int64_t holds. */
    const double max_s = 9.0e12;
    if ((exp != NULL && !json_is_number(exp)) || (nbf != NULL && !json_is_number(nbf)))
        snprintf(why, why_len, "the JWT's exp and nbf must be numbers (seconds)");
    else if ((exp != NULL && !(json_number_value(exp) >= 0 && json_number_value(exp) < max_s)) ||
             (nbf != NULL && !(json_number_value(nbf) >= 0 && json_number_value(nbf) < max_s)))
        snprintf(why, why_len, "the JWT's exp or nbf is out of range");
    else if (sub != NULL && !auth__jwt_sub_ok(sub))
        snprintf(why, why_len, "the JWT's sub must be 1 to 128 printable characters");
    else if (exp != NULL && json_number_value(exp) * 1e6 <= (double)now)
        snprintf(why, why_len, "the JWT has expired");
    else if (nbf != NULL && json_number_value(nbf) * 1e6 > (double)now)
        snprintf(why, why_len, "the JWT is not valid yet (nbf)");
    else if (a->jwt_issuer != NULL &&
             (!json_is_string(iss) || strcmp(json_string_value(iss), a->jwt_issuer) != 0))
        snprintf(why, why_len, "the JWT's issuer (iss) is not jwt_issuer");
    else if (a->jwt_audience != NULL && !auth__jwt_aud(json_object_get(c, "aud"), a->jwt_audience))
        snprintf(why, why_len, "the JWT's audience (aud) does not name jwt_audience");
    else if ((claim != NULL && !json_is_object(claim)) ||
             (admin != NULL && !json_is_boolean(admin)))
        snprintf(why, why_len,
                 "the JWT's almanac claim is {\"read\":[…],\"write\":[…],\"admin\":bool}");
    else {
        struct auth__jwt *j = calloc(1, sizeof *j);
        bool bad_read = false, bad_write = false;
        if (j == NULL)
            return NULL;
        j->p.read = auth__privs_array("the JWT's almanac.read", json_object_get(claim, "read"),
                                      &bad_read, why, why_len);
        if (!bad_read)
            j->p.write =
                auth__privs_array("the JWT's almanac.write", json_object_get(claim, "write"),
                                  &bad_write, why, why_len);
        /* "jwt:" + sub: never taken for a token's name, nor for "admin" */
        size_t nlen = 5 + (sub != NULL ? json_string_length(sub) : 0);
        if ((j->name = malloc(nlen)) != NULL)
            snprintf(j->name, nlen, sub != NULL ? "jwt:%s" : "jwt", json_string_value(sub));
        if (bad_read || bad_write || j->name == NULL) {
            j->p.refs = 1;
            auth_release(&j->p);
            return NULL;
        }
        j->p.name = j->name;
        j->p.admin = json_is_true(admin);
        j->p.authenticated = true;
        j->p.expires = exp != NULL ? (int64_t)(json_number_value(exp) * 1e6) : 0;
        j->p.refs = 1;
        memcpy(j->hash, hash, sizeof j->hash);
        return j;
    }
    return NULL;
}

/* The principal of the JWT `token` (hashed `hash`), held for the caller,
 * from the cache or verified now; NULL with a sentence. */
static const struct principal *auth__jwt(struct auth *a, const char *token,
                                         const unsigned char *hash, char *why, size_t why_len)
{
    size_t slot = hash[0] % AUTH_JWT_CACHE;
    pthread_mutex_lock(&a->jwt_lock);
    struct auth__jwt *j = a->jwt_cache[slot];
    if (j != NULL && CRYPTO_memcmp(j->hash, hash, sizeof j->hash) == 0) {
        auth_hold(&j->p);
        pthread_mutex_unlock(&a->jwt_lock);
        if (auth_live(&j->p))
            return &j->p;
        auth_release(&j->p);
        snprintf(why, why_len, "the JWT has expired");
        return NULL;
    }
    pthread_mutex_unlock(&a->jwt_lock);

    jwt_t *jwt = NULL;
    if (strlen(token) > AUTH_JWT_MAX_BYTES ||
        jwt_decode(&jwt, token, a->jwt_key, (int)a->jwt_key_len) != 0) {
        snprintf(why, why_len,
                 "the token is not valid: it names no one, and is no JWT that "
                 "jwt_key verifies");
        jwt_free(jwt);
        return NULL;
    }
    if (!auth__jwt_alg_ok(a, jwt_get_alg(jwt))) {
        snprintf(why, why_len, "the JWT is signed with %s, which jwt_key does not take",
                 jwt_alg_str(jwt_get_alg(jwt)));
        jwt_free(jwt);
        return NULL;
    }
    char *crit = jwt_get_headers_json(jwt, "crit");
    free(crit);
    if (crit != NULL) { /* RFC 7515 4.1.11: extensions we do not know */
        snprintf(why, why_len, "the JWT has a crit header: no extension is understood here");
        jwt_free(jwt);
        return NULL;
    }
    char *text = jwt_get_grants_json(jwt, NULL);
    json_t *claims = text != NULL ? json_loads(text, 0, NULL) : NULL;
    free(text);
    jwt_free(jwt);
    j = json_is_object(claims) ? auth__jwt_claims(a, claims, hash, why, why_len) : NULL;
    if (claims == NULL)
        snprintf(why, why_len, "the JWT's claims are not a JSON object");
    json_decref(claims);
    if (j == NULL)
        return NULL;
    pthread_mutex_lock(&a->jwt_lock);
    struct auth__jwt *old = a->jwt_cache[slot];
    a->jwt_cache[slot] = (struct auth__jwt *)auth_hold(&j->p);
    pthread_mutex_unlock(&a->jwt_lock);
    if (old != NULL)
        auth_release(&old->p);
    return &j->p;
}

/* Whether `token` has the shape of a JWT: three base64url parts. */
static bool auth__jwt_shaped(const char *token)
{
    int dots = 0;
    for (const char *p = token; *p; p++)
        dots += *p == '.';
    return dots == 2;
}

/* ---- principals ---- */

struct auth *auth_new(const struct config *cfg, char *why, size_t why_len)
{
    struct auth *a = calloc(1, sizeof *a);
    bool failed_read, failed_write;
    if (a == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    a->anonymous = (struct principal){.name = "anonymous", .refs = -1};
    a->local = (struct principal){.name = "local", .admin = true, .refs = -1};
    a->admin =
        (struct principal){.name = "admin", .admin = true, .authenticated = true, .refs = -1};
    a->anonymous.read = privs__new("anonymous_read", cfg->anonymous_read, cfg->nanonymous_read,
                                   &failed_read, why, why_len);
    a->anonymous.write = privs__new("anonymous_write", cfg->anonymous_write, cfg->nanonymous_write,
                                    &failed_write, why, why_len);
    if (failed_read || failed_write) {
        privs__free(a->anonymous.read);
        privs__free(a->anonymous.write);
        free(a);
        return NULL;
    }
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (cfg->admin_token != NULL) { /* kept as a hash only */
        auth__sha256(a, cfg->admin_token, a->admin_hash);
        a->has_admin_token = true;
    }
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->jwt_lock, NULL);
    pthread_rwlock_init(&a->tokens_lock, NULL);
    if (cfg->jwt_key != NULL && auth__jwt_key(a, cfg->jwt_key, why, why_len) != 0) {
        auth_free(a);
        return NULL;
    }
    a->jwt_issuer = cfg->jwt_issuer;
    a->jwt_audience = cfg->jwt_audience;
    a->protected_mode = !a->has_admin_token && a->jwt_kind == JWT_KIND_NONE;
    return a;
}

void auth_free(struct auth *a)
{
    if (a == NULL)
        return;
    privs__free(a->anonymous.read);
    privs__free(a->anonymous.write);
    OPENSSL_cleanse(a->admin_hash, sizeof a->admin_hash);
    for (size_t i = 0; i < AUTH_JWT_CACHE; i++)
        if (a->jwt_cache[i] != NULL)
            auth_release(&a->jwt_cache[i]->p);
    if (a->jwt_key != NULL)
        OPENSSL_cleanse(a->jwt_key, a->jwt_key_len);
    free(a->jwt_key);
    while (a->tokens != NULL) {
        struct auth__token *t = a->tokens;
        a->tokens = t->next;
        auth__token_free(t);
    }
    EVP_MD_free(a->sha256);
    pthread_rwlock_destroy(&a->tokens_lock);
    pthread_mutex_destroy(&a->jwt_lock);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* The host of `address` ("host:port", or "unix") into `host`; false when
 * it does not fit. */
static bool auth__host(const char *address, char *host, size_t size)
{
    const char *colon = strrchr(address, ':');
    size_t len = colon ? (size_t)(colon - address) : strlen(address);
    if (len >= size)
        return false;
    memcpy(host, address, len);
    host[len] = '\0';
    return true;
}

/* The failure count of `host` this second, after adding `add`. Only a
 * failure takes a slot (a lookup takes none, so no client is refused for
 * what others did); a host keeps its slot for the second, another probing
 * on past it. When every slot of the host's window holds this second's
 * count of another, the smallest is taken over. */
static unsigned auth__fails(struct auth *a, const char *host, unsigned add)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = host; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    int64_t second = mono_s();
    unsigned n = 0;
    pthread_mutex_lock(&a->lock);
    struct auth__fails *own = NULL, *stale = NULL, *least = NULL;
    for (unsigned i = 0; i < AUTH_FAIL_PROBES && own == NULL; i++) {
        struct auth__fails *f = &a->fails[(h + i) % AUTH_FAIL_SLOTS];
        if (f->second == second && strcmp(f->host, host) == 0)
            own = f;
        else if (f->second != second && stale == NULL)
            stale = f; /* free: this second's counts are elsewhere */
        else if (f->second == second && (least == NULL || f->count < least->count))
            least = f;
    }
    if (own == NULL && add > 0) {
        own = stale != NULL ? stale : least;
        snprintf(own->host, sizeof own->host, "%s", host);
        own->second = second;
        own->count = 0;
    }
    if (own != NULL) {
        own->count += add;
        n = own->count;
    }
    if (add > 0)
        atomic_store(&a->fail_second, second);
    pthread_mutex_unlock(&a->lock);
    return n;
}

/* Whether `address` ("host:port", "[v6]:port" or "unix") is this machine's
 * own: the Unix socket, 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
static bool auth__loopback(const char *address)
{
    char host[64];
    unsigned char addr[16];
    if (strcmp(address, "unix") == 0)
        return true;
    if (!auth__host(address, host, sizeof host))
        return false;
    if (inet_pton(AF_INET, host, addr) == 1)
        return addr[0] == 127;
    if (inet_pton(AF_INET6, host, addr) != 1)
        return false;
    static const unsigned char loop6[16] = {[15] = 1};
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    return memcmp(addr, loop6, 16) == 0 || (memcmp(addr, mapped, 12) == 0 && addr[12] == 127);
}

/* Who failed credentials are counted against: the host of `address`, and
 * for IPv6 its /64 (one subscriber's, who has the whole of it). */
static void auth__fail_key(const char *address, char *host, size_t size)
{
    unsigned char addr[16];
    if (!auth__host(address, host, size)) { /* too long: its start counts */
        snprintf(host, size, "%s", address);
        return;
    }
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (inet_pton(AF_INET6, host, addr) == 1 && memcmp(addr, mapped, 12) != 0) {
        memset(addr + 8, 0, 8);
        inet_ntop(AF_INET6, addr, host, (socklen_t)size);
    }
}

int auth_principal(struct auth *a, const char *address, const char *token,
                   const struct principal **out, char *why, size_t why_len)
{
    char host[64];
    auth__fail_key(address, host, sizeof host);
    /* Only when some credential failed this second is the table looked at. */
    if (token != NULL && atomic_load(&a->fail_second) == mono_s() &&
        auth__fails(a, host, 0) >= AUTH_FAILS_PER_SECOND) {
        *out = &a->anonymous;
        snprintf(why, why_len, "too many failed credentials from this address: wait a second");
        return STORE_ERATE;
    }
    if (token != NULL) {
        /* Hashes of equal length, compared in constant time (invariant 3). */
        unsigned char h[SHA256_DIGEST_LENGTH];
        auth__sha256(a, token, h);
        const struct principal *p = NULL;
        if (a->has_admin_token && CRYPTO_memcmp(h, a->admin_hash, sizeof h) == 0)
            p = &a->admin;
        /* One bucket, each hash in it compared in constant time: which
         * bucket tells nothing of a secret (its hash's first bytes). */
        pthread_rwlock_rdlock(&a->tokens_lock);
        for (struct auth__token *t = a->buckets[auth__bucket(h)]; t != NULL; t = t->bucket_next)
            if (CRYPTO_memcmp(h, t->hash, sizeof h) == 0 && auth_live(&t->p)) {
                p = &t->p;
                int64_t now = now_us(); /* last_used: to the second is enough */
                if (now - atomic_load(&t->last_used) >= 1000000)
                    atomic_store(&t->last_used, now);
            }
        pthread_rwlock_unlock(&a->tokens_lock);
        if (p == NULL && a->jwt_kind != JWT_KIND_NONE && auth__jwt_shaped(token))
            p = auth__jwt(a, token, h, why, why_len);
        else if (p == NULL) /* the token itself is never repeated */
            snprintf(why, why_len, "the token is not valid: it names no one (or no longer)");
        OPENSSL_cleanse(h, sizeof h);
        *out = p != NULL ? p : &a->anonymous;
        if (p == NULL)
            auth__fails(a, host, 1);
        return p != NULL ? STORE_OK : STORE_EUNAUTH;
    }
    bool protect = a->protected_mode && atomic_load(&a->live_tokens) == 0;
    *out = protect && auth__loopback(address) ? &a->local : &a->anonymous;
    return STORE_OK;
}

bool auth_required(struct auth *a, const char *address)
{
    const struct principal *p;
    char why[8];
    auth_principal(a, address, NULL, &p, why, sizeof why);
    return !p->admin && p->read == NULL && p->write == NULL;
}
