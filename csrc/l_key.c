/*
** l_key.c — value keys (context.key) and the two error sentinels.
*/
#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* context.key(name [, validator]) -> key   [-0, +1, m]
** A zero-byte userdata: unique by identity; user value 1 is its name, 2 its
** validator: with_value(ctx, key, v) calls validator(v), which returns true,
** or false/nil and a message, to reject v. */
static int l_key(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) lc_typeerror(L, 1, "key", "string");
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION &&
      !luaL_getmetafield(L, 2, "__call"))
    lc_typeerror(L, 2, "key", "function or nil");
  lua_settop(L, 2);
  lua_newuserdatauv(L, 0, 2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, lc_uv(LC_UV_KEYMT));
  lua_setmetatable(L, -2);
  return 1;
}

/* [-0, +0, e] with_value's check of the value at vidx for the key at kidx:
** raises an argument error when the key's validator rejects it */
void lc_validate_value(lua_State *L, int kidx, int vidx) {
  const char *msg;
  if (lua_type(L, kidx) != LUA_TUSERDATA || !lua_getmetatable(L, kidx))
    return;
  if (!lua_rawequal(L, -1, lc_uv(LC_UV_KEYMT))) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  if (lua_getiuservalue(L, kidx, 2) == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pushvalue(L, vidx);
  lua_call(L, 1, 2);
  if (lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    return;
  }
  lua_getiuservalue(L, kidx, 1);
  msg = lua_tostring(L, -2);
  lc_argerror(L, vidx, "with_value",
              lua_pushfstring(L, "invalid value for key '%s'%s%s",
                              lua_tostring(L, -1), msg ? ": " : "",
                              msg ? msg : ""));
}

static int l_key_tostring(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static int is_sentinel(lua_State *L, int uv) {
  lua_pushboolean(L, lua_rawequal(L, 1, lc_uv(uv)));
  return 1;
}

/* context.is_canceled(err) -> boolean */
static int l_is_canceled(lua_State *L) {
  return is_sentinel(L, LC_UV_CANCELED);
}

/* context.is_deadline_exceeded(err) -> boolean */
static int l_is_deadline_exceeded(lua_State *L) {
  return is_sentinel(L, LC_UV_DEADLINE);
}

const luaL_Reg lc_key_funcs[] = {
  {"key", l_key},
  {"is_canceled", l_is_canceled},
  {"is_deadline_exceeded", l_is_deadline_exceeded},
  {NULL, NULL}
};

const luaL_Reg lc_key_meta[] = {
  {"__tostring", l_key_tostring},
  {NULL, NULL}
};

static int l_sentinel_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  return 1;
}

/* __concat: a sentinel concatenates as its message, on either side
** ("failed: " .. ctx:err()); the other operand as tostring gives it */
static int l_sentinel_concat(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  luaL_tolstring(L, 2, NULL);
  lua_concat(L, 2);
  return 1;
}

static int l_sentinel_newindex(lua_State *L) {
  return luaL_error(L, "%s is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

/* [-0, +1, m] one error sentinel: an empty, read-only table whose fields
** (message, timeout) come from its metatable; prints and concatenates as
** its message. */
static void new_sentinel(lua_State *L, const char *msg, const char *name,
                         int timeout) {
  lua_newtable(L);
  lua_createtable(L, 0, 6);
  lua_createtable(L, 0, 2); /* __index */
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, timeout);
  lua_setfield(L, -2, "timeout");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_sentinel_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, l_sentinel_concat);
  lua_setfield(L, -2, "__concat");
  lua_pushstring(L, name);
  lua_pushcclosure(L, l_sentinel_newindex, 1);
  lua_setfield(L, -2, "__newindex");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
}

void lc_new_sentinels(lua_State *L) {
  new_sentinel(L, "context canceled", "context.canceled", 0);
  new_sentinel(L, "context deadline exceeded", "context.deadline_exceeded",
               1);
}
