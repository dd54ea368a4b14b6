/*
** l_park.c — waiting: core._park(fname, waitable...) checks and describes
** the waitables, then parks the running task (which yields the token back
** to the loop, from Lua) or, on the main thread, runs the loop until one of
** its waits fires. README, "Scheduler".
**
** Suspending is left to Lua code (lua/lcontext/init.lua): core._park
** registers the waits of the running task and returns a token, on which
** the Lua side yields; the loop resumes it with the index of the wait that
** fired. No lua_yieldk, so the same protocol serves LuaJIT. A task that
** cannot yield where it waits (a C function on the stack) gets an error
** before anything is armed.
*/
#include <limits.h>
#include <math.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* {======================================================================
** Parking: core._park(fname, waitable...)
** ======================================================================= */

static const char *const iomodes[] = {"r", "w", "rw", NULL};

/* Check the waitable at idx and describe it in x, arming nothing (so that
** a bad argument leaves nothing behind). */
int lc_prepare_wait(lua_State *L, lc_runtime *rt, lc_wait *x, int idx,
                    const char *fname) {
  lc_ctx *c;
  lc_task *t;
  switch (lua_type(L, idx)) {
  case LUA_TNUMBER: {
    lua_Number secs = lua_tonumber(L, idx);
    int64_t now = lc_now(rt), at;
    if (secs != secs) lc_argerror(L, idx - 1, fname, "number is NaN");
    if (secs == HUGE_VAL || secs == -HUGE_VAL)
      lc_argerror(L, idx - 1, fname, "number is not finite");
    if (secs <= 0)
      at = now;
    else if (secs * 1e9 >= (lua_Number)(TW_NEVER - now))
      at = TW_NEVER - 1;
    else
      at = now + (int64_t)lc_ceil_ns(secs);
    wt_wait_sleep(x, at);
    return 0;
  }
  case LUA_TTABLE: {
    int isnum, mode;
    lua_Integer fd;
    lua_getfield(L, idx, "fd");
    if (lua_isnil(L, -1)) { /* no fd at all: not a context.fd(...) */
      lua_pop(L, 1);
      goto notwaitable;
    }
    fd = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum || fd < 0 || fd > INT_MAX)
      lc_argerror(L, idx - 1, fname, "bad file descriptor");
    lua_getfield(L, idx, "mode");
    if (lua_isnil(L, -1))
      mode = 0;
    else {
      const char *m = lua_tostring(L, -1);
      for (mode = 0; iomodes[mode] != NULL; mode++)
        if (m != NULL && lua_type(L, -1) == LUA_TSTRING &&
            strcmp(m, iomodes[mode]) == 0)
          break;
      if (iomodes[mode] == NULL)
        lc_argerror(L, idx - 1, fname, "mode must be \"r\", \"w\" or \"rw\"");
    }
    lua_pop(L, 1);
    wt_wait_io(x, (int)fd, mode == 0 ? WT_IO_READ : mode == 1 ? WT_IO_WRITE
                                                  : WT_IO_READ | WT_IO_WRITE);
    return 0;
  }
  case LUA_TUSERDATA:
    if ((c = lc_testctx(L, idx)) != NULL) {
      lc_wait_ctx(x, c);
      return 0;
    }
    if ((t = lc_testtask(L, idx, rt)) != NULL) {
      wt_wait_source(x, &t->end);
      return 0;
    }
    /* FALLTHROUGH */
  default:
  notwaitable:
    lc_argerror(L, idx - 1, fname,
                lua_pushfstring(L, "waitable expected (a context, a task, a "
                                   "number of seconds or context.fd(fd, mode)), "
                                   "got %s", luaL_typename(L, idx)));
  }
  return 0;
}

/* [-0, +1, -] the index of the wait that fired, negated if it is an fd
** that cannot be watched (not open) */
static int push_fired(lua_State *L, lc_wait *waits, int i) {
  int ioerr = waits[i - 1].src == WS_IO &&
              (waits[i - 1].u.io.revents & WT_IO_ERROR);
  lua_pushinteger(L, ioerr ? -i : i);
  return 1;
}

/* Run the loop until w, the main thread's waiter (PARKED), is woken.
** Returns 1 once it is, 0 if an error is pending for the caller
** (lc_raise_pending raises it), -1 on a deadlock (nothing can wake it).
** w is left as it is: the caller releases it. */
int lc_main_wait(lua_State *L, lc_runtime *rt, lc_waiter *w) {
  for (;;) {
    if (!lc_drain(rt, 1)) break; /* an error is pending */
    if (w->state != WT_PARKED) break;
    if (!lc_can_progress(rt) && lc_sweep_closed(rt) > 0) continue;
    if (!lc_can_progress(rt)) return -1;
    lc_turn(rt);
    if (lc_has_pending(L, rt)) break;
  }
  return w->state != WT_PARKED;
}

/* The main thread waits: run the loop until one of its waits fires. Every
** way out releases the waiter (it lives on this C stack). */
static int park_main(lua_State *L, lc_runtime *rt, lc_waiter *w,
                     lc_wait *waits, const char *fname) {
  int fired, woken = lc_main_wait(L, rt, w);
  if (woken < 0) {
    wt_release(&rt->sched, w);
    return luaL_error(L, "context.%s: deadlock: waiting for something "
                      "nothing can bring%s", fname, lc_deadlock_hint(rt));
  }
  fired = w->fired;
  wt_release(&rt->sched, w); /* out of its waits, or of the queue */
  if (woken) lc_drain(rt, 1); /* what woke it may have woken others */
  lc_raise_pending(L, rt);
  if (fired == 0) /* not reached: only a pending error ends it unwoken */
    return luaL_error(L, "context.%s: the wait ended with nothing fired", fname);
  return push_fired(L, waits, fired);
}

static int l_park(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  const char *fname = luaL_checkstring(L, 1);
  int n = lua_gettop(L) - 1, i, ismain, fired;
  lc_waiter *w, mainw;
  lc_wait *waits;
  if (n < 1) return lc_typeerror(L, 2, fname, "waitable");
  if (n > 0xffff) return lc_argerror(L, 1, fname, "too many waitables");
  ismain = lua_pushthread(L);
  lua_pop(L, 1);
  if (ismain) {
    lc_loop_caller(L, rt, fname);
    wt_waiter_init(&mainw, WK_MAIN, 0);
    w = &mainw;
  } else if (rt->current == NULL || rt->current->co != L)
    return luaL_error(L, "context.%s: called from a coroutine that lcontext "
                      "does not run (start it with context.go)", fname);
  else if (!lc_isyieldable(L, 2))
    return luaL_error(L, "context.%s: cannot wait here: a C function is on "
                      "the stack (a table.sort comparator, a gsub callback, "
                      "a metamethod called from C...), so the task cannot "
                      "yield", fname);
  else
    w = &rt->current->w;
  /* allocate and check everything before arming anything */
  waits = (lc_wait *)lua_newuserdatauv(L, sizeof(lc_wait) * (size_t)n, n);
  memset(waits, 0, sizeof(lc_wait) * (size_t)n);
  for (i = 0; i < n; i++) {
    lc_prepare_wait(L, rt, &waits[i], i + 2, fname);
    lua_pushvalue(L, i + 2);
    lua_setiuservalue(L, -2, i + 1); /* keep what is waited on alive */
  }
  if (!ismain) { /* the task anchors its waits */
    lc_push_task(L, rt->current);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 3);
    lua_pop(L, 1);
  }
  for (i = 0; i < n; i++)
    if (waits[i].src == WS_IO) lc_need_loop(L, rt);
  {
    int64_t now = lc_now(rt);
    if (!ismain) rt->current->parked_at = now;
    fired = wt_park(&rt->sched, w, waits, (uint16_t)n, now);
  }
  if (fired != 0) return push_fired(L, waits, fired);
  if (ismain) return park_main(L, rt, w, waits, fname);
  lua_pushlightuserdata(L, rt); /* the token the Lua side yields */
  return 1;
}

/* core._token() -> the value core._park returns when the caller must yield */
static int l_token(lua_State *L) {
  lua_pushlightuserdata(L, lc_rt(L));
  return 1;
}

const luaL_Reg lc_park_funcs[] = {
  {"_park", l_park},
  {"_token", l_token},
  {NULL, NULL}
};
