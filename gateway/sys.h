/*
 * sys.h — the server's own keys, $SYS/... (sys.c); sys_start and sys_stop
 * are in gateway.h, for main.c.
 */
#ifndef ALMANAC_SYS_H
#define ALMANAC_SYS_H

struct sys;

/* $SYS/uptime, $SYS/store/keys and $SYS/bridge/outbox every `interval`
 * seconds, $SYS/bridge/state when it changes; called about once a second. */
void sys_tick(struct sys *sys);
/* $SYS/sessions/<client_id> ({"transport","address"}, since its ts) and
 * $SYS/sessions/count, in memory only. */
void sys_session_open(struct sys *sys, const char *client_id, const char *transport,
                      const char *address, unsigned count);
void sys_session_close(struct sys *sys, const char *client_id, unsigned count);

#endif
