/*
 * error.c — the one table of error codes shared by HTTP and the session
 * protocol: each enum store_err has its wire name and HTTP status.
 */
#include "store.h"

static const struct {
    const char *name;
    unsigned status;
} error__table[STORE_ERR_COUNT] = {
    [STORE_OK] = {"ok", 200},
    [STORE_EKEY] = {"invalid_key", 400},
    [STORE_EPATTERN] = {"invalid_pattern", 400},
    [STORE_EBODY] = {"invalid_body", 400},
    [STORE_EBADREQ] = {"bad_request", 400},
    [STORE_EUNAUTH] = {"unauthorized", 401},
    [STORE_EFORBIDDEN] = {"forbidden", 403},
    [STORE_EREADONLY] = {"read_only", 403},
    [STORE_ENOTFOUND] = {"not_found", 404},
    [STORE_EMETHOD] = {"method_not_allowed", 405},
    [STORE_EGONE] = {"history_gone", 410},
    [STORE_EREV] = {"rev_mismatch", 412},
    [STORE_ETOOLARGE] = {"too_large", 413},
    [STORE_ERATE] = {"rate_limited", 429},
    [STORE_EINTERNAL] = {"internal", 500},
    [STORE_EUNAVAIL] = {"unavailable", 503},
    [STORE_EFULL] = {"storage_full", 507},
    [STORE_EPROTO] = {"protocol_unsupported", 400},
    [STORE_ESLOW] = {"too_slow", 400},
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
