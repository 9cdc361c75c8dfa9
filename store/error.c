/*
 * error.c — the one table of error codes shared by HTTP and the session
 * protocol: each enum store_err has its wire name, its HTTP status and a
 * sentence for a client when nothing more precise is known.
 */
#include "store.h"

static const struct {
    const char *name;
    unsigned status;
    const char *text;
} error__table[STORE_ERR_COUNT] = {
    [STORE_OK] = {"ok", 200, "done"},
    [STORE_EKEY] = {"invalid_key", 400, "the key is not valid"},
    [STORE_EPATTERN] = {"invalid_pattern", 400, "the pattern is not valid"},
    [STORE_EBODY] = {"invalid_body", 400, "the body is not valid"},
    [STORE_EBADREQ] = {"bad_request", 400, "the request is not valid"},
    [STORE_EUNAUTH] = {"unauthorized", 401, "authenticate first"},
    [STORE_EFORBIDDEN] = {"forbidden", 403, "not allowed"},
    [STORE_EREADONLY] = {"read_only", 403, "keys starting with '$' belong to the server"},
    [STORE_ENOTFOUND] = {"not_found", 404, "the key does not exist"},
    [STORE_EMETHOD] = {"method_not_allowed", 405, "the method is not allowed here"},
    [STORE_EGONE] = {"history_gone", 410, "that rev is older than the kept history"},
    [STORE_EREV] = {"rev_mismatch", 412, "the key is not at the rev the request names"},
    [STORE_ETOOLARGE] = {"too_large", 413, "too large"},
    [STORE_ERATE] = {"rate_limited", 429, "too many requests"},
    [STORE_EINTERNAL] = {"internal", 500, "the change could not be committed: nothing was changed"},
    [STORE_EUNAVAIL] = {"unavailable", 503, "the server is shutting down"},
    [STORE_EFULL] = {"storage_full", 507, "the disk is full: nothing was changed"},
    [STORE_EPROTO] = {"protocol_unsupported", 400, "that protocol version is not served"},
    [STORE_ESLOW] = {"too_slow", 400, "the client reads too slowly"},
    [STORE_EHOST] = {"misdirected", 421, "the Host is not a name of this server"},
    [STORE_ELOCKED] = {"locked", 409, "another session holds the lock"},
};

const char *store_err_name(int err)
{
    if (err < 0 || err >= STORE_ERR_COUNT)
        err = STORE_EINTERNAL;
    return error__table[err].name;
}

unsigned store_err_status(int err)
{
    if (err < 0 || err >= STORE_ERR_COUNT)
        err = STORE_EINTERNAL;
    return error__table[err].status;
}

const char *store_err_text(int err)
{
    if (err < 0 || err >= STORE_ERR_COUNT)
        err = STORE_EINTERNAL;
    return error__table[err].text;
}
