/*
 * clock.h — the one pair of clocks of the tree (clock.c).
 */
#ifndef ALMANAC_CLOCK_H
#define ALMANAC_CLOCK_H

#include <stdint.h>

/* The wall clock: µs since the epoch (entries' ts, history, logs). */
int64_t now_us(void);
/* A clock that never steps: seconds since some start (timeouts). */
int64_t mono_s(void);
/* The same in ms (waits shorter than a second). */
int64_t mono_ms(void);

#endif
