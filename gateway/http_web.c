/*
 * http_web.c — the dashboard's files (web/), compiled into the binary, with
 * a strict Content-Security-Policy.
 */
#include "http_int.h"
#include "version.h"
#include "web.h"

#include <string.h>

/* The dashboard: `/` is web/index.html, `/web/<file>` the rest; from the
 * binary (web_files.c), with the build's version as ETag. */
enum MHD_Result http__web(struct req *r)
{
    const char *name = r->path != NULL ? r->path : "index.html";
    const struct web_file *f = web_files;
    while (f->path != NULL && strcmp(f->path + 1, name) != 0)
        f++;
    if (f->path == NULL)
        return http__error(r, STORE_ENOTFOUND, "no such file: /web/%s", name);
    const char *inm = http__header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const char *etag = "\"" ALMANAC_VERSION "\"";
    struct MHD_Response *resp =
        inm != NULL && strcmp(inm, etag) == 0
            ? MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)
            : MHD_create_response_from_buffer(f->len, (void *)f->data, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, f->type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; connect-src 'self'; style-src 'self'; "
                            "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                            "form-action 'self'; frame-ancestors 'none'");
    return http__queue(r, inm != NULL && strcmp(inm, etag) == 0 ? 304 : 200, resp);
}
