/*
** l_ffi.c — what LuaJIT's FFI path (lua/lcontext/ffi.lua) reaches the core
** through: a table of plain C entry points, the runtime's address, and the
** layout of the structures it reads directly (README, "Runtimes").
**
** On LuaJIT a classic C function (lua_CFunction) is never compiled: each
** call leaves the trace. FFI calls and reads of C fields are compiled. So
** the questions a context answers (err, is_done, deadline, remaining) read
** the node through the context userdata's payload (LuaJIT converts a
** userdata to a pointer to its payload), and a cancel without a cause goes
** through lc_ffi_cancel. None of the functions below touches a lua_State:
** they may not call back into Lua or allocate Lua objects (FFI rule); what
** needs the Lua API (the epilogue of a cancel that woke waiters, a deadline
** noticed by a query) is left to the classic functions, which the Lua side
** calls when these say so.
**
** The module exports nothing for ffi.C to find: core._ffi() hands the
** addresses over as one lightuserdata (a const struct of function
** pointers: no mutable global state), with sizes and offsets that the Lua
** side compares with its own declarations before using any of it.
*/
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* The layout ffi.lua declares; a change here must be made there too (the
** load-time check falls back to the C API on any mismatch). */
typedef char lc_ffi_assert_ctx[(offsetof(lc_ctx, cn) == 0 &&
                                offsetof(lc_cctx, node) == sizeof(lc_ctx))
                                   ? 1 : -1];
typedef char lc_ffi_assert_node[(offsetof(ctx_node, link) == 0) ? 1 : -1];

/* [-0, +0, -] the runtime's clock, monotonic ns (virtual time too) */
static int64_t ffi_now(const lc_runtime *rt) { return lc_now(rt); }

/* ctx:deadline() without the Lua API: epoch seconds, or NaN for none
** (as l_deadline in l_ctx.c; a query that never polls) */
static double ffi_deadline(const lc_runtime *rt, lc_ctx *c) {
  lc_ctx *o = lc_deadline_owner(c);
  if (o != NULL) return ((lc_tctx *)o)->epoch;
  if (c->cn != NULL && c->cn->deadline != CTX_NEVER)
    return lc_real(rt) + (double)(c->cn->deadline - lc_now(rt)) / 1e9;
  return NAN;
}

/*
** cancel() (no cause) without the Lua API, as do_cancel in l_cancel.c.
** Returns 0: done, nothing more to do (or it was done already);
** 1: cancelled, and the epilogue (lc_after_cancel) must run now: it woke
** weak waiters to anchor or external watches to call;
** 2: nothing done: the classic cancel must do it (a recorded timer cause
** to forget, or a deadline that has passed unnoticed: both need the Lua
** API before or after the tree changes).
*/
static int ffi_cancel(lc_runtime *rt, lc_ctx *c) {
  ctx_node *n = lc_node(c);
  if (n->err != CTX_ERR_NONE) return 0;
  if (c->flags & LCF_TCAUSE) return 2;
  if (n->deadline != CTX_NEVER && n->deadline <= lc_now(rt)) return 2;
  ctx_cancel(&rt->tree, n, CTX_ERR_CANCELED);
  return rt->to_anchor != NULL || rt->external != NULL;
}

/* ctx:value(key)'s walk without the Lua API (as lc_value in l_value.c):
** the value context nearest to c whose key is the one described (kt: enum
** lc_keytype; pt: the Lua type of a KT_PTR key; p: its address, or a
** string's bytes, len long; i, n: a number's), NULL if none, or the
** address of the api table itself when a merge is on the way (whose
** inputs are walked in order through the Lua API: the classic path). */
static const void *ffi_find(lc_ctx *c, int kt, int pt, const void *p,
                            size_t len, lua_Integer i, lua_Number n);

typedef struct lc_ffi_api {
  int64_t (*now)(const lc_runtime *rt);
  double (*deadline)(const lc_runtime *rt, lc_ctx *c);
  int (*cancel)(lc_runtime *rt, lc_ctx *c);
  const void *(*find)(lc_ctx *c, int kt, int pt, const void *p, size_t len,
                      lua_Integer i, lua_Number n);
} lc_ffi_api;

static const lc_ffi_api api = {ffi_now, ffi_deadline, ffi_cancel, ffi_find};

static const void *ffi_find(lc_ctx *c, int kt, int pt, const void *p,
                            size_t len, lua_Integer i, lua_Number n) {
  for (; c != NULL; c = c->parent) {
    if (c->kind == LK_VALUE) {
      const lc_vctx *v = (const lc_vctx *)c;
      if (v->ktype != kt) continue;
      switch (kt) {
      case KT_PTR:
        if (v->x.p == p && v->ptype == pt) return c;
        break;
      case KT_STR:
        if (v->klen == len && (v->x.s == (const char *)p ||
                               memcmp(v->x.s, p, len) == 0))
          return c;
        break;
      case KT_INT:
        if (v->x.i == i) return c;
        break;
      case KT_NUM:
        if (v->x.n == n) return c;
        break;
      default: return c; /* KT_TRUE, KT_FALSE */
      }
    } else if (c->kind == LK_MERGE)
      return &api;
  }
  return NULL;
}

static void setint(lua_State *L, const char *k, size_t v) {
  lua_pushnumber(L, (lua_Number)v);
  lua_setfield(L, -2, k);
}

/* core._ffi() -> { api =, rt =, mt =, mtgc =, cancelmt =, canceled =,
** deadline_exceeded =, sizes and offsets } */
static int l_ffi(lua_State *L) {
  lua_createtable(L, 0, 24);
  lua_pushlightuserdata(L, (void *)&api);
  lua_setfield(L, -2, "api");
  lua_pushlightuserdata(L, lc_rt(L));
  lua_setfield(L, -2, "rt");
  lua_pushvalue(L, lc_uv(LC_UV_CTXMT));
  lua_setfield(L, -2, "mt");
  lua_pushvalue(L, lc_uv(LC_UV_CTXMTGC));
  lua_setfield(L, -2, "mtgc");
  lua_pushvalue(L, lc_uv(LC_UV_CANCELMT));
  lua_setfield(L, -2, "cancelmt");
  lua_pushvalue(L, lc_uv(LC_UV_KEYMT));
  lua_setfield(L, -2, "keymt");
  lua_pushvalue(L, lc_uv(LC_UV_CANCELED));
  lua_setfield(L, -2, "canceled");
  lua_pushvalue(L, lc_uv(LC_UV_DEADLINE));
  lua_setfield(L, -2, "deadline_exceeded");
  setint(L, "sizeof_api", sizeof(lc_ffi_api));
  setint(L, "sizeof_ctx", sizeof(lc_ctx));
  setint(L, "ctx_cn", offsetof(lc_ctx, cn));
  setint(L, "ctx_parent", offsetof(lc_ctx, parent));
  setint(L, "ctx_kind", offsetof(lc_ctx, kind));
  setint(L, "ctx_flags", offsetof(lc_ctx, flags));
  setint(L, "sizeof_node", sizeof(ctx_node));
  setint(L, "node_deadline", offsetof(ctx_node, deadline));
  setint(L, "node_err", offsetof(ctx_node, err));
  setint(L, "sizeof_cancel", LC_CANCEL_SIZE);
  setint(L, "never_hi", (size_t)(CTX_NEVER >> 32));
  setint(L, "never_lo", (size_t)(CTX_NEVER & 0xffffffff));
  setint(L, "sizeof_vctx", sizeof(lc_vctx));
  setint(L, "vctx_x", offsetof(lc_vctx, x));
  setint(L, "vctx_ktype", offsetof(lc_vctx, ktype));
  setint(L, "vctx_ptype", offsetof(lc_vctx, ptype));
  setint(L, "sizeof_integer", sizeof(lua_Integer));
  setint(L, "lk_value", LK_VALUE);
  setint(L, "lk_merge", LK_MERGE);
  setint(L, "kt_ptr", KT_PTR);
  setint(L, "kt_str", KT_STR);
  setint(L, "kt_int", KT_INT);
  setint(L, "kt_num", KT_NUM);
  setint(L, "kt_true", KT_TRUE);
  setint(L, "kt_false", KT_FALSE);
  setint(L, "t_userdata", LUA_TUSERDATA);
  setint(L, "err_canceled", CTX_ERR_CANCELED);
  setint(L, "err_deadline", CTX_ERR_DEADLINE);
  return 1;
}

/* core._ffi_after_cancel(cancel) [-0, +0, m]: the epilogue of a cancel that
** lc_ffi_cancel made (it returned 1): anchor the weak waiters it woke,
** call the external watches. The cancel object's context is user value 1. */
static int l_after_cancel(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  luaL_checkstack(L, 8, NULL);
  lua_settop(L, 1);
  if (!lua_getmetatable(L, 1) || lua_topointer(L, -1) != rt->cancelmt ||
      lua_type(L, 1) != LUA_TUSERDATA)
    return lc_typeerror(L, 1, "_ffi_after_cancel", "cancel object");
  lua_settop(L, 1);
  if (lua_getiuservalue(L, 1, 1) != LUA_TUSERDATA)
    return lc_typeerror(L, 1, "_ffi_after_cancel", "cancel object");
  lc_after_cancel(L, rt, 2);
  return 0;
}

/* core._ffi_value(ctx, address) -> the value context at that address (a
** number: where ffi.lua's walk of ctx's chain found the key) and its
** value; nothing if no value context lives there. Only contexts that
** with_value registered (VMAP) are found: no address is dereferenced. */
static int l_ffi_value(lua_State *L) {
  lua_Number a = luaL_checknumber(L, 2);
  void *p = (void *)(uintptr_t)a;
  if (lua_rawgetp(L, lc_uv(LC_UV_VMAP), p) != LUA_TUSERDATA) return 0;
  lua_getiuservalue(L, -1, 3);
  return 2;
}

const luaL_Reg lc_ffi_funcs[] = {
  {"_ffi_value", l_ffi_value},
  {"_ffi", l_ffi},
  {"_ffi_after_cancel", l_after_cancel},
  {NULL, NULL}
};
