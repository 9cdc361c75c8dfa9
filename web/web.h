/*
 * web.h — the dashboard's files, compiled into the binary (web/embed.cmake
 * generates the table from the files CMakeLists.txt lists in WEB_FILES).
 */
#ifndef ALMANAC_WEB_H
#define ALMANAC_WEB_H

#include <stddef.h>

struct web_file {
    const char *path; /* "/index.html" */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
};

/* Ends with a row whose path is NULL. */
extern const struct web_file web_files[];

#endif
