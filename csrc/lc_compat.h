/*
** lc_compat.h — the Lua 5.4 C API that lcontext uses, on Lua 5.3, 5.1 and
** LuaJIT 2.1 (which reports 5.1). The binding is written against 5.4; for
** older runtimes this header supplies what is missing as static functions
** with an lc_ prefix and maps the 5.4 names onto them, so nothing clashes
** with LuaJIT's own partial 5.2 API. Included by lcontext_int.h only.
**
** What differs in behaviour (README, "Runtimes"):
**   - user values: 5.4 has several per userdata; before 5.4 they live in a
**     table stored as the single user value (5.3) or environment (5.1);
**   - lua_resume: the number of results is the new stack top before 5.4;
**   - to-be-closed variables and lua_closethread exist only in 5.4;
**   - weak tables are ephemerons only from 5.2 on.
*/
#ifndef LC_COMPAT_H
#define LC_COMPAT_H

#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#if LUA_VERSION_NUM < 504

#ifndef LUA_OK
#define LUA_OK 0
#endif

/* {======================================================================
** Lua 5.1 and LuaJIT: the 5.2/5.3 API lcontext uses
** ======================================================================= */
#if LUA_VERSION_NUM == 501

static inline int lc_absindex(lua_State *L, int i) {
  return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex lc_absindex

static inline int lc_rawgetp(lua_State *L, int t, const void *p) {
  t = lc_absindex(L, t);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, t);
  return lua_type(L, -1);
}
#define lua_rawgetp lc_rawgetp

static inline void lc_rawsetp(lua_State *L, int t, const void *p) {
  t = lc_absindex(L, t);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, t);
}
#define lua_rawsetp lc_rawsetp

static inline int lc_rawget(lua_State *L, int t) {
  lua_rawget(L, t);
  return lua_type(L, -1);
}
#define lua_rawget lc_rawget

static inline size_t lc_rawlen(lua_State *L, int i) { return lua_objlen(L, i); }
#define lua_rawlen lc_rawlen

static inline void lc_copy(lua_State *L, int from, int to) {
  to = lc_absindex(L, to);
  lua_pushvalue(L, from);
  lua_replace(L, to);
}
#define lua_copy lc_copy

static inline lua_Number lc_tonumberx(lua_State *L, int i, int *isnum) {
  lua_Number n = lua_tonumber(L, i);
  if (isnum != NULL) *isnum = (n != 0 || lua_isnumber(L, i));
  return n;
}
#define lua_tonumberx lc_tonumberx

static inline lua_Integer lc_tointegerx(lua_State *L, int i, int *isnum) {
  int ok;
  lua_Number n = lc_tonumberx(L, i, &ok);
  if (isnum != NULL) *isnum = ok && n == (lua_Number)(lua_Integer)n;
  return (lua_Integer)n;
}
#define lua_tointegerx lc_tointegerx

/* no integer subtype: integral floats become integer keys anyway */
#define lua_isinteger(L, i) 0
#define lua_numbertointeger(n, p) \
  ((n) >= (lua_Number)(-9.2e18) && (n) < (lua_Number)(9.2e18) && \
   (*(p) = (lua_Integer)(n), 1))

static inline void lc_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#define luaL_setfuncs lc_setfuncs

static inline const char *lc_tolstring(lua_State *L, int i, size_t *len) {
  i = lc_absindex(L, i);
  if (luaL_callmeta(L, i, "__tostring")) {
    if (!lua_isstring(L, -1)) luaL_error(L, "'__tostring' must return a string");
  } else {
    switch (lua_type(L, i)) {
    case LUA_TNUMBER:
    case LUA_TSTRING: lua_pushvalue(L, i); break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, i) ? "true" : "false");
      break;
    case LUA_TNIL: lua_pushliteral(L, "nil"); break;
    default:
      lua_pushfstring(L, "%s: %p", luaL_typename(L, i), lua_topointer(L, i));
      break;
    }
  }
  return lua_tolstring(L, -1, len);
}
#define luaL_tolstring lc_tolstring

/* a traceback of L1, in luaL_traceback's format */
static inline void lc_traceback(lua_State *L, lua_State *L1, const char *msg,
                         int level) {
  lua_Debug ar;
  luaL_Buffer b;
  int n = 0;
  luaL_buffinit(L, &b);
  if (msg != NULL) {
    luaL_addstring(&b, msg);
    luaL_addstring(&b, "\n");
  }
  luaL_addstring(&b, "stack traceback:");
  while (n < 22 && lua_getstack(L1, level++, &ar)) {
    char line[256];
    lua_getinfo(L1, "Sln", &ar);
    if (ar.currentline > 0)
      snprintf(line, sizeof line, "\n\t%s:%d: in ", ar.short_src,
               ar.currentline);
    else
      snprintf(line, sizeof line, "\n\t%s: in ", ar.short_src);
    luaL_addstring(&b, line);
    if (ar.name != NULL)
      snprintf(line, sizeof line, "function '%s'", ar.name);
    else if (*ar.what == 'm')
      snprintf(line, sizeof line, "main chunk");
    else
      snprintf(line, sizeof line, "function <%s:%d>", ar.short_src,
               ar.linedefined);
    luaL_addstring(&b, line);
    n++;
  }
  luaL_pushresult(&b);
}
#define luaL_traceback lc_traceback

/* user value = environment (a table) */
#define lc_getuvtable(L, i) (lua_getfenv(L, i), lua_type(L, -1))
#define lc_setuvtable(L, i) lua_setfenv(L, i)

#else /* 5.2, 5.3 */

#define lc_getuvtable(L, i) (lua_getuservalue(L, i), lua_type(L, -1))
#define lc_setuvtable(L, i) lua_setuservalue(L, i)

#endif
/* }====================================================================== */

/* {======================================================================
** Before 5.4: several user values, kept in a table
** ======================================================================= */

static inline void *lc_newuserdatauv(lua_State *L, size_t size, int nuv) {
  void *p = lua_newuserdata(L, size);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
    lc_setuvtable(L, -2);
  }
  return p;
}
#define lua_newuserdatauv lc_newuserdatauv

static inline int lc_getiuservalue(lua_State *L, int i, int n) {
  i = lua_absindex(L, i);
  if (lua_type(L, i) != LUA_TUSERDATA || lc_getuvtable(L, i) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNONE;
  }
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
  return lua_type(L, -1);
}
#define lua_getiuservalue lc_getiuservalue

static inline int lc_setiuservalue(lua_State *L, int i, int n) {
  i = lua_absindex(L, i);
  if (lc_getuvtable(L, i) != LUA_TTABLE) {
    lua_pop(L, 2);
    return 0;
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
  return 1;
}
#define lua_setiuservalue lc_setiuservalue

/* lua_resume with 5.4's signature */
static inline int lc_resume(lua_State *co, lua_State *from, int nargs, int *nres) {
#if LUA_VERSION_NUM == 501
  int st = lua_resume(co, nargs);
  (void)from;
#else
  int st = lua_resume(co, from, nargs);
#endif
  *nres = lua_gettop(co);
  return st;
}
#define lua_resume lc_resume

#endif /* LUA_VERSION_NUM < 504 */

/* Can the running coroutine yield from here, that is, is no C function
** (a table.sort comparator, a gsub callback, a metamethod called from C,
** 5.1's pcall) between it and its resume? `skip`: frames of the caller's
** own to pass over (a C function and the pcall that called it). */
#if LUA_VERSION_NUM >= 503 || defined(LUA_LJDIR)
#define lc_isyieldable(L, skip) ((void)(skip), lua_isyieldable(L))
#else
static inline int lc_isyieldable(lua_State *L, int skip) {
  lua_Debug ar;
  int level;
  for (level = skip; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "S", &ar);
    if (ar.what != NULL && ar.what[0] == 'C') return 0;
  }
  return 1;
}
#endif

/* the main thread, or a thread of the module's own where the runtime has
** no way to give the main one (5.1, LuaJIT): tasks are resumed from it */
static inline lua_State *lc_mainthread(lua_State *L) {
#if LUA_VERSION_NUM >= 502
  lua_State *M;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  M = lua_tothread(L, -1);
  lua_pop(L, 1);
  return M;
#else
  lua_State *M;
  if (lua_pushthread(L)) { /* L is the main thread */
    lua_pop(L, 1);
    return L;
  }
  lua_pop(L, 1);
  M = lua_newthread(L); /* anchored in the registry for the state's life */
  luaL_ref(L, LUA_REGISTRYINDEX);
  return M;
#endif
}

#endif
