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
** A host whose loop is not libev (poll(2), select, its own epoll, another
** library's loop) leaves libev's default loop to lcontext and drives it
** from outside with the three wrappers below, which call the Lua
** functions context.pollfd, context.timeout and context.step through L
** (load lcontext in L first; call them from the host's code, never from
** inside a task):
**
**     int fd = lcontext_pollfd(L);           // -1: error message on L's stack
**     for (;;) {
**       int more;
**       if (lcontext_step(L, &more) != LUA_OK) ... // message on the stack
**       if (!more) break;                    // no task, timer or wait left
**       struct pollfd p = {fd, POLLIN, 0};   // + the host's own fds
**       poll(&p, 1, lcontext_timeout_ms(L)); // -1: nothing timed
**     }
**
** lcontext_pollfd(L) -> libev's epoll fd, readable when an fd a task waits
**   on is ready (the loop is made if needed); -1, with the error message
**   pushed, when there is none (a loop given with lcontext_use_loop: that
**   host drives its loop itself; a backend other than epoll).
** lcontext_timeout(L) -> seconds until lcontext_step is needed again: 0 when
**   work is ready, the time to the next timer, < 0 when nothing is timed
**   (at most 0.05 while a context.signal context listens: libev notices a
**   signal only when its own loop runs). It also applies the loop's pending
**   changes: call it just before the host blocks.
** lcontext_timeout_ms(L) -> the same in whole milliseconds, rounded up (so
**   that the host does not wake just before the timer is due), -1 for none:
**   poll(2)'s timeout.
** lcontext_step(L, &more) -> LUA_OK, or the status of the error a task's
**   loop raised (lua_pcall's; the message is pushed): runs what is ready,
**   without blocking (context.step(0)); *more says whether work is left.
**
** These take no libev types: a host may use them with any loop. The
** rule for timeout under a virtual clock is context.timeout's (README).
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

/* (internal) push lcontext.core[name] from the loaded modules and call it
** protected with narg numbers (0 or 1) and nres results; the lua_pcall
** status (LUA_ERRRUN with a message when lcontext is not loaded in L) */
static inline int lcontext_call_(lua_State *L, const char *name, int narg,
                                 lua_Number arg, int nres) {
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_type(L, -1) == LUA_TTABLE)
    lua_getfield(L, -1, "lcontext.core");
  else
    lua_pushnil(L);
  lua_remove(L, -2);
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushfstring(L, "lcontext_%s: lcontext is not loaded in this "
                    "lua_State (require it, or luaL_requiref "
                    "luaopen_lcontext_core, first)", name);
    return LUA_ERRRUN;
  }
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  if (narg > 0) lua_pushnumber(L, arg);
  return lua_pcall(L, narg, nres, 0);
}

/* context.pollfd(): the fd to poll for reading, or -1 with the error
** message pushed */
static inline int lcontext_pollfd(lua_State *L) {
  int fd;
  if (lcontext_call_(L, "pollfd", 0, 0, 1) != 0) return -1;
  fd = (int)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return fd;
}

/* context.timeout(): seconds until lcontext_step is needed, < 0 for none.
** (An error, out of memory only, is dropped and gives 0: step next.) */
static inline double lcontext_timeout(lua_State *L) {
  double t;
  if (lcontext_call_(L, "timeout", 0, 0, 1) != 0) {
    lua_pop(L, 1);
    return 0;
  }
  t = lua_isnil(L, -1) ? -1.0 : (double)lua_tonumber(L, -1);
  lua_pop(L, 1);
  return t;
}

/* lcontext_timeout in milliseconds for poll(2): rounded up, -1 for none */
static inline int lcontext_timeout_ms(lua_State *L) {
  double t = lcontext_timeout(L), ms;
  if (t < 0) return -1;
  ms = t * 1000.0;
  if (ms >= 2147483647.0) return 2147483647;
  return (int)ms + ((double)(int)ms < ms ? 1 : 0);
}

/* context.step(0): LUA_OK and *more = whether work is left, or the status
** of the error it raised, with the message pushed */
static inline int lcontext_step(lua_State *L, int *more) {
  int st = lcontext_call_(L, "step", 1, 0, 1);
  if (st != 0) {
    if (more != NULL) *more = 1;
    return st;
  }
  if (more != NULL) *more = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return st;
}

#endif
