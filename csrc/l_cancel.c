/*
** l_cancel.c — cancel objects: callable, closable, separate from the
** context so that whoever holds only the context cannot cancel it.
*/
#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* [-0, +1, m] a cancel object for the context c at index ctxidx */
void lc_new_cancel(lua_State *L, int ctxidx) {
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, ctxidx);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lc_uv(LC_UV_CANCELMT));
  lua_setmetatable(L, -2);
}

/* [-0, +1, v] check the cancel object at 1; push its context, return it */
static lc_ctx *check_cancel(lua_State *L, const lc_runtime *rt,
                            const char *fname) {
  if (lua_getmetatable(L, 1)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == rt->cancelmt && lua_type(L, 1) == LUA_TUSERDATA) {
      lua_getiuservalue(L, 1, 1);
      return (lc_ctx *)lua_touserdata(L, -1);
    }
  }
  lc_typeerror(L, 1, fname, "cancel object");
  return NULL;
}

/*
** Cancel with an optional cause (nil: none). A deadline that has already
** passed wins over the cancel, as it would have had its timer fired.
*/
static void do_cancel(lua_State *L, lc_runtime *rt, lc_ctx *c, int causeidx) {
  ctx_node *n = lc_node(c);
  if (n->err != CTX_ERR_NONE) return;
  if (n->deadline != CTX_NEVER && ctx_poll(&rt->tree, n, lc_now()))
    return;
  if (causeidx != 0 || (c->flags & LCF_TCAUSE)) {
    lua_pushvalue(L, -1); /* the context */
    if (causeidx != 0)
      lua_pushvalue(L, causeidx);
    else
      lua_pushnil(L); /* a timer cause does not survive a plain cancel */
    lua_rawset(L, lc_uv(LC_UV_CAUSES));
  }
  ctx_cancel(&rt->tree, n, CTX_ERR_CANCELED);
  lc_anchor_woken(L, rt); /* callbacks it woke now need the loop to keep them */
  lc_flush_external(L, rt); /* and external watches are told now */
}

/* cancel([cause])   [-0, +0, m]
** With a cause (any non-nil value) the context's cause() reports it. */
static int l_cancel_call(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int hascause;
  lc_ctx *c;
  lua_settop(L, 2);
  hascause = !lua_isnil(L, 2);
  c = check_cancel(L, rt, "cancel");
  do_cancel(L, rt, c, hascause ? 2 : 0);
  return 0;
}

/* __close: cancel without cause (the error that closes the scope, if any,
** is not a cancellation cause). */
static int l_cancel_close(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c;
  lua_settop(L, 2);
  c = check_cancel(L, rt, "cancel");
  do_cancel(L, rt, c, 0);
  return 0;
}

static int l_cancel_tostring(lua_State *L) {
  check_cancel(L, lc_rt(L), "cancel");
  lua_pushfstring(L, "context.cancel: %p", lua_topointer(L, 1));
  return 1;
}

const luaL_Reg lc_cancel_meta[] = {
  {"__call", l_cancel_call},
  {"__close", l_cancel_close},
  {"__tostring", l_cancel_tostring},
  {NULL, NULL}
};
