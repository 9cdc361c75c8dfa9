/*
 * help.c — `almanac --help`, `almanac COMMAND --help` and the client's
 * usage message, written from doc/commands.txt compiled in (embedded by
 * cmake/embed_text.cmake): the one source of almanac(1) too (doc/mkman.py
 * reads it at build time), so the binary and the manual cannot disagree.
 * Its lines are `[section]` or `SYNOPSIS :: description [:: example]`.
 */
#include "gateway.h"

#include <string.h>

extern const unsigned char help_text[]; /* doc/commands.txt */

struct help__line {
    const char *syn, *desc, *example; /* not NUL-terminated: the lengths say */
    int slen, dlen, elen;
};

/* The next line of `section` after `*at` (start with *at = NULL); false at
 * its end. */
static bool help__next(const char *section, const char **at, struct help__line *l)
{
    const char *p = *at ? *at : (const char *)help_text;
    bool in = *at != NULL;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        const char *line = p;
        p += len + (nl != NULL);
        if (len == 0 || line[0] == '#')
            continue;
        if (line[0] == '[') {
            if (in)
                return false;
            in = len == strlen(section) + 2 && strncmp(line + 1, section, len - 2) == 0;
            continue;
        }
        const char *d = in ? strstr(line, " :: ") : NULL;
        if (d == NULL || d >= line + len)
            continue;
        const char *e = strstr(d + 4, " :: ");
        if (e != NULL && e >= line + len)
            e = NULL;
        *l = (struct help__line){.syn = line,
                                 .slen = (int)(d - line),
                                 .desc = d + 4,
                                 .dlen = (int)((e ? e : line + len) - (d + 4)),
                                 .example = e ? e + 4 : NULL,
                                 .elen = e ? (int)(line + len - (e + 4)) : 0};
        *at = p;
        return true;
    }
    return false;
}

/* `  SYNOPSIS  description`, on two lines when the synopsis is long. */
static void help__item(FILE *out, const struct help__line *l)
{
    if (l->slen <= 22)
        fprintf(out, "  %-22.*s %.*s\n", l->slen, l->syn, l->dlen, l->desc);
    else
        fprintf(out, "  %.*s\n  %22s %.*s\n", l->slen, l->syn, "", l->dlen, l->desc);
}

static void help__options(FILE *out)
{
    const char *at = NULL;
    struct help__line l;
    fprintf(out, "\nClient options (before or after the command):\n");
    while (help__next("options", &at, &l))
        help__item(out, &l);
}

void help_commands(FILE *out)
{
    const char *at = NULL;
    struct help__line l;
    fprintf(out, "usage: almanac COMMAND [ARGS]   (almanac COMMAND --help: its options and an "
                 "example)\n\nCommands:\n");
    while (help__next("commands", &at, &l))
        help__item(out, &l);
    help__options(out);
    fprintf(out, "\nExit status:");
    const char *sep = " ";
    for (at = NULL; help__next("exit", &at, &l); sep = "; ")
        fprintf(out, "%s%.*s %.*s", sep, l.slen, l.syn, l.dlen, l.desc);
    fprintf(out, ".\nSee almanac(1) and almanac.conf(5).\n");
}

int help_command(FILE *out, const char *cmd)
{
    const char *at = NULL;
    struct help__line l;
    size_t n = strlen(cmd);
    if (strcmp(cmd, "serve") == 0)
        return config_help(out) == 0 ? 0 : -1;
    while (help__next("commands", &at, &l)) {
        if ((size_t)l.slen < n || strncmp(l.syn, cmd, n) != 0 ||
            ((size_t)l.slen > n && l.syn[n] != ' '))
            continue;
        bool client = strcmp(cmd, "version") != 0 && strcmp(cmd, "help") != 0;
        fprintf(out, "usage: almanac %s%.*s\n\n%.*s.\n", client ? "[CLIENT OPTIONS] " : "", l.slen,
                l.syn, l.dlen, l.desc);
        if (l.example != NULL)
            fprintf(out, "\nExample:\n  almanac %.*s\n", l.elen, l.example);
        if (client)
            help__options(out);
        return 0;
    }
    return -1;
}
