/*
** l_clock.c — the runtime's clock: context.now(), context.time(), and the
** virtual clock of tests (context.virtual_clock; docs/testing.md).
**
** Every reading of time in the binding goes through lc_now(rt) (monotonic
** ns) and lc_real(rt) (epoch seconds), l_core.c. While a virtual clock is
** installed, both read rt->vnow, which moves only by clock:advance or, with
** autojump, when only its timers can wake anyone (lc_turn, l_loop.c); no
** real timer is armed. On uninstall the clock goes on from where virtual
** time left it, at real speed (rt->clk_offset): monotonic time never goes
** back, and what is pending keeps the time it had left.
**
** A clock is installed at a whole millisecond (the wheel's tick), so that
** waits of whole milliseconds end at exact virtual times.
*/
#include <math.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* the clock object: it only names the runtime's virtual clock */
typedef struct lc_clock {
  const void *magic; /* &rt->ref_clockmt */
  uint32_t gen;      /* which installation it is */
} lc_clock;

/* context.now() -> monotonic seconds. While a virtual clock is installed
** it reads clock:now(): small numbers, whose sums and differences carry no
** float noise worth a nanosecond (a reading near 3e4 s would carry 7e-12 s,
** enough to move a wait of now() + d - now() to the next tick). */
static int l_now(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  if (rt->vclock)
    lua_pushnumber(L, rt->vstart + (lua_Number)(rt->vnow - rt->vbase) / 1e9);
  else
    lua_pushnumber(L, (lua_Number)lc_now(rt) * 1e-9);
  return 1;
}

/* core._mono() -> the runtime's monotonic clock in seconds: continuous
** across a virtual clock's install and uninstall (lcontext.ngx times its
** own waits with it) */
static int l_mono(lua_State *L) {
  lua_pushnumber(L, (lua_Number)lc_now(lc_rt(L)) * 1e-9);
  return 1;
}

/* context.time() -> epoch seconds with fraction (virtual likewise) */
static int l_time(lua_State *L) {
  lua_pushnumber(L, lc_real(lc_rt(L)));
  return 1;
}

static lc_clock *check_clock(lua_State *L, lc_runtime *rt, const char *fname,
                             int installed) {
  lc_clock *k = NULL;
  if (lua_type(L, 1) == LUA_TUSERDATA && lua_rawlen(L, 1) == sizeof(lc_clock)) {
    k = (lc_clock *)lua_touserdata(L, 1);
    if (k->magic != &rt->ref_clockmt) k = NULL;
  }
  if (k == NULL)
    luaL_error(L, "calling '%s' on bad self (context.virtual_clock expected, "
               "got %s)", fname, luaL_typename(L, 1));
  if (installed && (!rt->vclock || k->gen != rt->vgen))
    luaL_error(L, "clock:%s: this virtual clock is not installed (uninstalled)",
               fname);
  return k;
}

/* the autojump option at idx: false/nil, true, or seconds of real time */
static void set_autojump(lua_State *L, lc_runtime *rt, int idx,
                         const char *fname) {
  if (lua_isnoneornil(L, idx) || (lua_type(L, idx) == LUA_TBOOLEAN &&
                                  !lua_toboolean(L, idx))) {
    rt->autojump = 0;
    rt->autojump_real = -1;
  } else if (lua_type(L, idx) == LUA_TBOOLEAN) {
    rt->autojump = 1;
    rt->autojump_real = -1;
  } else if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Number s = lua_tonumber(L, idx);
    if (!(s >= 0) || s == HUGE_VAL)
      luaL_error(L, "bad argument to '%s' (autojump: a non-negative number of "
                 "seconds expected, got %f)", fname, s);
    rt->autojump = 1;
    rt->autojump_real = s;
  } else
    luaL_error(L, "bad argument to '%s' (autojump: boolean or seconds "
               "expected, got %s)", fname, luaL_typename(L, idx));
}

/* core._virtual_clock(start, epoch | nil, autojump) -> clock, installed at
** once (lua/lcontext/vclock.lua checks the options) */
static int l_virtual_clock(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Number start = luaL_checknumber(L, 1);
  lc_clock *k;
  int64_t now;
  if (rt->vclock)
    return luaL_error(L, "context.virtual_clock: a virtual clock is installed "
                      "already (clock:uninstall() it first)");
  set_autojump(L, rt, 3, "virtual_clock");
  k = (lc_clock *)lua_newuserdatauv(L, sizeof(lc_clock), 0);
  k->magic = &rt->ref_clockmt;
  k->gen = ++rt->vgen;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_clockmt);
  lua_setmetatable(L, -2);
  now = lc_now(rt);
  rt->vepoch = lua_isnoneornil(L, 2) ? lc_real(rt) : luaL_checknumber(L, 2);
  now = (now + TW_TICK_NS - 1) / TW_TICK_NS * TW_TICK_NS; /* a whole ms */
  rt->vnow = rt->vbase = now;
  rt->vstart = start;
  rt->vclock = 1;
  lc_rearm(rt); /* no real timer while virtual */
  return 1;
}

/* clock:now() -> start + the virtual seconds elapsed since it was installed
** (exact: whole nanoseconds over 1e9) */
static int l_clock_now(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  check_clock(L, rt, "now", 1);
  lua_pushnumber(L, rt->vstart + (lua_Number)(rt->vnow - rt->vbase) / 1e9);
  return 1;
}

/* clock:advance(seconds) -> clock:now(), after moving virtual time forward
** (the main thread's call: it runs the loop) */
static int l_clock_advance(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Number secs;
  int64_t target;
  check_clock(L, rt, "advance", 1);
  secs = lc_checkduration(L, 2, "advance");
  if (secs < 0) return lc_argerror(L, 2, "advance", "seconds must not be negative");
  lc_loop_caller(L, rt, "advance");
  if (secs * 1e9 >= (lua_Number)(TW_NEVER - rt->vnow))
    target = TW_NEVER - 1;
  else
    target = rt->vnow + (int64_t)lc_ceil_ns(secs);
  if (!lc_vadvance(rt, target)) lc_raise_pending(L, rt);
  lua_pushnumber(L, rt->vstart + (lua_Number)(rt->vnow - rt->vbase) / 1e9);
  return 1;
}

/* For a backend that runs what is woken itself (nginx: lcontext.ngx moves
** the clock step by step and lets the light threads it woke run between
** steps). Times are monotonic ns, as Lua numbers (exact below 2^53 ns).
**   core._vclock_target(seconds) -> the time seconds after the clock's now
**   core._vclock_step(target) -> true after moving the clock to the wheel's
**     next wake-up if that is not after target (advance then fires it), or
**     false after moving it to target
**   core._vclock_installed() -> is a virtual clock installed? */
static int l_vclock_target(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Number secs = lc_checkduration(L, 1, "advance");
  if (!rt->vclock) return luaL_error(L, "no virtual clock is installed");
  if (secs < 0) return lc_argerror(L, 1, "advance", "seconds must not be negative");
  if (secs * 1e9 >= (lua_Number)(TW_NEVER - rt->vnow))
    lua_pushnumber(L, (lua_Number)(TW_NEVER - 1));
  else
    lua_pushnumber(L, (lua_Number)(rt->vnow + (int64_t)lc_ceil_ns(secs)));
  return 1;
}

static int l_vclock_step(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int64_t target = (int64_t)luaL_checknumber(L, 1);
  int64_t next = wt_next_wakeup(&rt->sched);
  if (!rt->vclock) return luaL_error(L, "no virtual clock is installed");
  if (next != TW_NEVER && next <= target) {
    if (next > rt->vnow) rt->vnow = next;
    lua_pushboolean(L, 1);
  } else {
    if (target > rt->vnow) rt->vnow = target;
    lua_pushboolean(L, 0);
  }
  return 1;
}

static int l_vclock_installed(lua_State *L) {
  lua_pushboolean(L, lc_rt(L)->vclock);
  return 1;
}

/* clock:autojump(false | true | seconds): changes autojump */
static int l_clock_autojump(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  check_clock(L, rt, "autojump", 1);
  set_autojump(L, rt, 2, "autojump");
  return 0;
}

/* clock:uninstall(): back to real time, from where virtual time is */
static int l_clock_uninstall(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  check_clock(L, rt, "uninstall", 0);
  if (!rt->vclock || ((lc_clock *)lua_touserdata(L, 1))->gen != rt->vgen)
    return 0; /* (uninstalled already: nothing to do) */
  rt->clk_offset = rt->vnow - clk_mono_ns();
  rt->vclock = 0;
  rt->autojump = 0;
  lc_rearm(rt);
  return 0;
}

/* clock:installed() -> boolean */
static int l_clock_installed(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_clock *k = check_clock(L, rt, "installed", 0);
  lua_pushboolean(L, rt->vclock && k->gen == rt->vgen);
  return 1;
}

static int l_clock_tostring(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_clock *k = check_clock(L, rt, "tostring", 0);
  if (rt->vclock && k->gen == rt->vgen)
    lua_pushfstring(L, "context.virtual_clock (now %f%s)",
                    rt->vstart + (lua_Number)(rt->vnow - rt->vbase) / 1e9,
                    rt->autojump ? ", autojump" : "");
  else
    lua_pushliteral(L, "context.virtual_clock (uninstalled)");
  return 1;
}

static const luaL_Reg clock_methods[] = {
  {"now", l_clock_now},
  {"advance", l_clock_advance},
  {"autojump", l_clock_autojump},
  {"uninstall", l_clock_uninstall},
  {"installed", l_clock_installed},
  {NULL, NULL}
};

const luaL_Reg lc_clock_funcs[] = {
  {"now", l_now},
  {"_mono", l_mono},
  {"time", l_time},
  {"_virtual_clock", l_virtual_clock},
  {"_vclock_target", l_vclock_target},
  {"_vclock_step", l_vclock_step},
  {"_vclock_installed", l_vclock_installed},
  {NULL, NULL}
};

/* set up by luaopen: uvt is the table of the shared upvalues */
void lc_clock_init(lua_State *L, lc_runtime *rt, int uvt) {
  int i;
  lua_newtable(L); /* the metatable */
  lua_newtable(L);
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, uvt, i);
  luaL_setfuncs(L, clock_methods, LC_NUP);
  lua_setfield(L, -2, "__index");
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, uvt, i);
  lua_pushcclosure(L, l_clock_tostring, LC_NUP);
  lua_setfield(L, -2, "__tostring");
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, uvt, i);
  lua_pushcclosure(L, l_clock_uninstall, LC_NUP);
  lua_setfield(L, -2, "__close");
  lua_pushliteral(L, "context.virtual_clock");
  lua_setfield(L, -2, "__name");
  rt->ref_clockmt = luaL_ref(L, LUA_REGISTRYINDEX);
}
