/*
** clock.h — the two clocks lcontext reads (Lua-free).
** Monotonic nanoseconds for every deadline; wall-clock seconds only to
** convert epoch deadlines once, when a context is made, and to report them.
*/
#ifndef LCONTEXT_CLOCK_H
#define LCONTEXT_CLOCK_H

#include <stdint.h>

int64_t clk_mono_ns(void); /* CLOCK_MONOTONIC, nanoseconds */
double clk_real(void);     /* CLOCK_REALTIME, epoch seconds with fraction */

#endif
