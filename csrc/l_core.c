/*
** l_core.c — what every other binding file uses: argument checks, the
** anchors, the clock, reporting.
*/
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext.h"
#include "lcontext_int.h"

/* {======================================================================
** Argument errors
** Messages follow luaL_argerror, but name the function as the API does
** ('with_cancel'), whatever local name the caller used for it.
** ======================================================================= */

int lc_argerror(lua_State *L, int arg, const char *fname, const char *msg) {
  lua_Debug ar;
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat != NULL && strcmp(ar.namewhat, "method") == 0) {
      arg--; /* do not count 'self' */
      if (arg == 0)
        return luaL_error(L, "calling '%s' on bad self (%s)", fname, msg);
    }
  }
  return luaL_error(L, "bad argument #%d to '%s' (%s)", arg, fname, msg);
}

int lc_typeerror(lua_State *L, int arg, const char *fname, const char *tname) {
  const char *msg = lua_pushfstring(L, "%s expected, got %s", tname,
                                    luaL_typename(L, arg));
  return lc_argerror(L, arg, fname, msg);
}


/* [-0, +0, v] a finite number of seconds */
lua_Number lc_checkduration(lua_State *L, int arg, const char *fname) {
  int isnum;
  lua_Number d = lua_tonumberx(L, arg, &isnum);
  if (!isnum || lua_type(L, arg) != LUA_TNUMBER)
    lc_typeerror(L, arg, fname, "number");
  if (d != d) lc_argerror(L, arg, fname, "number is NaN");
  if (d == HUGE_VAL || d == -HUGE_VAL)
    lc_argerror(L, arg, fname, "number is not finite");
  return d;
}

/* the runtime's clock (context.virtual_clock, l_clock.c): monotonic ns,
** virtual while a virtual clock is installed, else the system's shifted
** by what virtual time moved ahead of it (never backwards) */
int64_t lc_now(const lc_runtime *rt) {
  return rt->vclock ? rt->vnow : clk_mono_ns() + rt->clk_offset;
}

/* secs (finite, >= 0) as whole ns, rounded up, but not past float noise:
** 2.136 * 1e9 is 2136000000.0000002, which must stay 2136 ms (a wait of
** whole milliseconds ends on the wheel's tick, exactly in virtual time) */
lua_Number lc_ceil_ns(lua_Number secs) {
  lua_Number ns = secs * 1e9, r = floor(ns + 0.5);
  return fabs(ns - r) < 1e-3 ? r : ceil(ns);
}

/* lc_now for the context tree (its cancel walk, lifetimes) */
int64_t lc_tree_clock(void *rt) { return lc_now((const lc_runtime *)rt); }

/* epoch seconds: virtual while a virtual clock is installed */
double lc_real(const lc_runtime *rt) {
  return rt->vclock ? rt->vepoch + (double)(rt->vnow - rt->vbase) / 1e9
                    : clk_real();
}

/* is the value at idx callable (a function, or has __call)? */
int lc_iscallable(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TFUNCTION) return 1;
  if (!luaL_getmetafield(L, idx, "__call")) return 0;
  lua_pop(L, 1);
  return 1;
}

/* {======================================================================
** The one walk of a context's chain
** ======================================================================= */

/*
** [-0, +(0|1), m] Visit the context at idx and those above it, depth first
** and in order: a merge's inputs one after the other, each up to its root
** (roots themselves are not visited). With LC_WALK_CANCEL the walk follows
** cancellation only: it does not go past a without_cancel. visit(L, c, i,
** arg) gets the context c at stack index i; a non-zero result stops the
** walk with that context left on the top of the stack, and lc_walk returns
** 1; else it returns 0 and leaves the stack as it was. Iterative: a chain
** 100,000 deep does not recurse.
*/
int lc_walk(lua_State *L, int idx, int flags, lc_visit visit, void *arg) {
  int base = lua_gettop(L);
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "context chain too deep");
  lua_pushvalue(L, idx);
  while (lua_gettop(L) > base) {
    lc_ctx *c = (lc_ctx *)lua_touserdata(L, -1);
    if (visit(L, c, lua_gettop(L), arg)) {
      lua_copy(L, -1, base + 1);
      lua_settop(L, base + 1);
      return 1;
    }
    if (c->kind == LK_MERGE) {
      int top = lua_gettop(L), i;
      luaL_checkstack(L, (int)lc_merge_n(c) + 8, "too many merged contexts");
      for (i = (int)lc_merge_n(c); i >= 1; i--) lua_getiuservalue(L, top, i);
      lua_remove(L, top);
    } else if (c->parent != NULL && c->parent->kind != LK_BACKGROUND &&
               c->parent->kind != LK_TODO &&
               !((flags & LC_WALK_CANCEL) && c->kind == LK_WITHOUT)) {
      lua_getiuservalue(L, -1, 1);
      lua_replace(L, -2);
    } else
      lua_pop(L, 1);
  }
  return 0;
}

/* }====================================================================== */

/* {======================================================================
** Anchors: waiters that must stay alive while parked, queued or running,
** in a registry table keyed by their address
** ======================================================================= */

/* [-0, +0, m] anchor the object at idx (no allocation if its slot was
** reserved: set to false beforehand) */
void lc_anchor(lua_State *L, lc_runtime *rt, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, lua_touserdata(L, idx));
  lua_pop(L, 1);
}

/* [-0, +0, -] */
void lc_unanchor(lua_State *L, lc_runtime *rt, void *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushnil(L);
  lua_rawsetp(L, -2, p);
  lua_pop(L, 1);
}

/* [-0, +1, -] push the anchored object of p */
void lc_push_anchored(lua_State *L, lc_runtime *rt, void *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
}

/* }====================================================================== */

/* }====================================================================== */

/* [-0, +1, m] a new table with weak keys ("k") or values ("v") */
void lc_weak_table(lua_State *L, const char *mode) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

/* [-0, +0, -] write a message about an error value to stderr */
void lc_report(const char *what, lua_State *L, int idx) {
  const char *m = lua_tostring(L, idx);
  fprintf(stderr, "lcontext: %s: %s\n", what, m != NULL ? m : "(not a string)");
  fflush(stderr);
}

