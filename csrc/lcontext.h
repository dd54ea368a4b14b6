/*
** lcontext.h — embedding lcontext in a C host.
**
** A host that already runs a libev loop hands that loop to lcontext before
** any script loads it:
**
**     lua_State *L = luaL_newstate();
**     luaL_openlibs(L);
**     lcontext_use_loop(L, loop);          // before require "lcontext"
**     luaL_requiref(L, "lcontext.core", luaopen_lcontext_core, 0);
**     ... run scripts; then ev_run(loop, 0) as usual ...
**
** lcontext then puts its watchers (one ev_timer for its timer wheel, an
** ev_idle while tasks are ready, ev_io for fd waits, ev_signal for
** context.signal) on that loop, and tasks run from the host's ev_run: the
** host need not call context.run(). Without lcontext_use_loop, libev's
** default loop is used. Signals need the default loop (libev's rule).
**
** Close the lua_State before destroying the loop: closing it stops every
** watcher lcontext started.
**
** The rock installs this header in its directory, as conf/lcontext.h
** (`luarocks show --rock-dir lcontext`); README's "Embedding in a C host"
** gives the build line. The module exports luaopen_lcontext_core alone.
*/
#ifndef LCONTEXT_H
#define LCONTEXT_H

#include <ev.h>

#include "lua.h"

#define LCONTEXT_LOOP_KEY "lcontext.loop"

/* Give lcontext the loop to use in L (call before lcontext is loaded). */
static inline void lcontext_use_loop(lua_State *L, struct ev_loop *loop) {
  lua_pushlightuserdata(L, (void *)loop);
  lua_setfield(L, LUA_REGISTRYINDEX, LCONTEXT_LOOP_KEY);
}

/* The module's entry point (the C part of require "lcontext"). */
int luaopen_lcontext_core(lua_State *L);

#endif
