/*
 * fuzz_config.c — libFuzzer harness of the configuration file: config_load
 * (gateway/config.c) with `-c FILE`, as `almanac serve -c FILE` calls it
 * (main.c hands it the arguments after "serve"), FILE holding the input.
 *
 * The file is a memfd read through /proc/self/fd, so no disk is touched;
 * ALMANAC_* variables are cleared once so only the file counts. Checks
 * memory, UB, leaks (config_free after success and failure alike), that a
 * refusal says why, and that an accepted configuration is within bounds.
 */
#include "fuzz_server.h"
#include "gateway.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_fd = -1;
static char fuzz_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_clear_env();
    fuzz_fd = memfd_create("almanac-fuzz.conf", 0);
    if (fuzz_fd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(fuzz_path, sizeof fuzz_path, "/proc/self/fd/%d", fuzz_fd);
    log_set_level(LOG_ERROR);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(fuzz_fd, 0) != 0 || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
        abort();
    char *argv[] = {"-c", fuzz_path, NULL};
    struct config cfg;
    char why[1024] = "";
    if (config_load(&cfg, 2, argv, why, sizeof why) == 0) {
        if (cfg.http_listen == NULL || cfg.tcp_listen == NULL || cfg.data_dir == NULL ||
            cfg.limits.max_key_bytes < 1 || cfg.limits.max_key_bytes > 65535 ||
            (cfg.bridge.nmaps > 0 && cfg.bridge.maps == NULL) ||
            (cfg.nhistory_keys > 0 && cfg.history_keys == NULL) || cfg.history_retention_us < 0) {
            fprintf(stderr, "config_load accepted a configuration out of bounds\n");
            abort();
        }
        /* The maps it accepted pass the bridge's own check. */
        for (size_t i = 0; i < cfg.bridge.nmaps; i++)
            if (bridge_map_check(cfg.bridge.maps[i], why, sizeof why) != 0)
                abort();
        if (cfg.bridge.url && bridge_url_check(cfg.bridge.url, why, sizeof why) != 0)
            abort();
    } else if (why[0] == '\0') {
        abort();
    }
    config_free(&cfg);
    return 0;
}
