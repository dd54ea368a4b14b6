/*
** clock.h — the two clocks lcontext reads (Lua-free).
** Monotonic nanoseconds for every deadline; wall-clock seconds only to
** convert epoch deadlines once, when a context is made, and to report them.
*/
#ifndef LCONTEXT_CLOCK_H
#define LCONTEXT_CLOCK_H

#include <stdint.h>

/* Internal: hidden from the module's dynamic symbol table whatever CFLAGS
** the build uses (only luaopen_lcontext_core is exported). After the
** includes, since the pragma also marks external declarations. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

int64_t clk_mono_ns(void); /* CLOCK_MONOTONIC, nanoseconds */
double clk_real(void);     /* CLOCK_REALTIME, epoch seconds with fraction */

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
