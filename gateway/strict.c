/*
 * strict.c — API.md "Strictness": a field, query parameter or header
 * option the server does not know is refused, never ignored, so that a
 * misspelt filter cannot return unfiltered data. The lists of what each
 * request takes live with its parser (session.c, http.c, http_keys.c,
 * http_admin.c, import.c); this file only compares and quotes.
 * Invariants:
 *   1. a list is read up to its NULL or STRICT_NAMES_MAX names, never
 *      past them;
 *   2. what is quoted of a client's name is valid UTF-8 and bounded, so
 *      the refusal is a well-formed message whatever the name.
 */
#include "strict.h"
#include "store.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define STRICT_QUOTE_MAX 64 /* bytes of a client's name quoted in a message */

static bool strict__family(const char *listed, size_t len)
{
    return len > 0 && (listed[len - 1] == '.' || listed[len - 1] == '-');
}

bool strict_takes(const char *const *names, const char *name, bool fold)
{
    for (size_t i = 0; names != NULL && i < STRICT_NAMES_MAX && names[i] != NULL; i++) {
        size_t len = strlen(names[i]);
        if (strict__family(names[i], len)
                ? (fold ? strncasecmp(name, names[i], len) : strncmp(name, names[i], len)) == 0
                : (fold ? strcasecmp(name, names[i]) : strcmp(name, names[i])) == 0)
            return true;
    }
    return false;
}

const char *strict_unknown(const json_t *obj, const char *const *names, const char *const *also)
{
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)obj, name, v)
    {
        if (!strict_takes(names, name, false) && !strict_takes(also, name, false))
            return name;
    }
    return NULL;
}

void strict_quote(char *out, size_t len, const char *name)
{
    size_t n = strlen(name), shown = n;
    if (!store_utf8_valid(name, n)) {
        snprintf(out, len, "(a name that is not UTF-8)");
        return;
    }
    if (shown > STRICT_QUOTE_MAX) { /* back to the start of a character */
        shown = STRICT_QUOTE_MAX;
        while (shown > 0 && ((unsigned char)name[shown] & 0xC0) == 0x80)
            shown--;
    }
    snprintf(out, len, "%.*s%s", (int)shown, name, shown < n ? "..." : "");
}

void strict_list(char *out, size_t len, const char *const *names)
{
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; i < STRICT_NAMES_MAX && names[i] != NULL && at < len; i++) {
        size_t n = strlen(names[i]);
        int w = snprintf(out + at, len - at, "%s%s%s", i ? ", " : "", names[i],
                         strict__family(names[i], n) ? "<name>" : "");
        at += w > 0 ? (size_t)w : 0;
    }
    if (out[0] == '\0')
        snprintf(out, len, "none");
}
