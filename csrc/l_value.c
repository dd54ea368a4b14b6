/*
** l_value.c — request-scoped values: with_value and value (README,
** "Deriving contexts" and "Asking a context").
**
** A key is described in C (identity, bytes or number) so that a lookup
** walks the chain through C pointers and touches the Lua API only to push
** the value it found.
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* {======================================================================
** Values
** A key is described in C (identity, bytes or number) so that a lookup
** walks the chain through C pointers and touches the Lua API only to push
** the value it found.
** ======================================================================= */

typedef struct keyd {
  uint8_t t, ptype;
  uint32_t len;
  lc_keyx x;
} keyd;

static void check_key(lua_State *L, int arg, const char *fname, keyd *k) {
  size_t len;
  lua_Number n;
  memset(k, 0, sizeof *k);
  switch (lua_type(L, arg)) {
  case LUA_TNONE:
  case LUA_TNIL:
    lc_argerror(L, arg, fname, "key must not be nil");
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, arg)) {
      k->t = KT_INT;
      k->x.i = lua_tointeger(L, arg);
      break;
    }
    n = lua_tonumber(L, arg);
    if (n != n) lc_argerror(L, arg, fname, "key must not be NaN");
    if (lua_numbertointeger(n, &k->x.i) && (lua_Number)k->x.i == n)
      k->t = KT_INT; /* 1.0 and 1 are the same key, as in a table */
    else {
      k->t = KT_NUM;
      k->x.n = n;
    }
    break;
  case LUA_TBOOLEAN:
    k->t = lua_toboolean(L, arg) ? KT_TRUE : KT_FALSE;
    break;
  case LUA_TSTRING:
    k->t = KT_STR;
    k->x.s = lua_tolstring(L, arg, &len);
    if (len > 0xffffffffu) lc_argerror(L, arg, fname, "key too long");
    k->len = (uint32_t)len;
    break;
  default:
    k->t = KT_PTR;
    k->ptype = (uint8_t)lua_type(L, arg);
    k->x.p = lua_topointer(L, arg);
    break;
  }
}

static int key_eq(const lc_ctx *h, const keyd *k) {
  const lc_vctx *c = (const lc_vctx *)h;
  if (c->ktype != k->t) return 0;
  switch (k->t) {
  case KT_PTR: return c->x.p == k->x.p && c->ptype == k->ptype;
  case KT_STR:
    return c->klen == k->len &&
           (c->x.s == k->x.s || memcmp(c->x.s, k->x.s, k->len) == 0);
  case KT_INT: return c->x.i == k->x.i;
  case KT_NUM: return c->x.n == k->x.n;
  default: return 1; /* KT_TRUE, KT_FALSE */
  }
}

/* context.with_value(parent, key, value) -> ctx */
int lc_with_value(lua_State *L) {
  lc_ctx *p = lc_checkctx(L, 1, "with_value");
  lc_vctx *v;
  keyd k;
  check_key(L, 2, "with_value", &k);
  lua_settop(L, 3);
  if (k.t == KT_PTR && k.ptype == LUA_TUSERDATA) lc_validate_value(L, 2, 3);
  v = (lc_vctx *)lua_newuserdatauv(L, sizeof(lc_vctx), 3);
  memset(v, 0, sizeof *v);
  v->h.kind = LK_VALUE;
  v->h.magic = LC_CTX_MAGIC;
  v->h.cn = p->cn;
  v->h.parent = p;
  lc_set_depth(lc_rt(L), &v->h, p);
  v->ktype = k.t;
  v->ptype = k.ptype;
  v->klen = k.len;
  v->x = k.x;
  lua_pushvalue(L, lc_uv(LC_UV_CTXMT));
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 3);
  lua_pushvalue(L, -1); /* so that value() finds it from its address */
  lua_rawsetp(L, lc_uv(LC_UV_VMAP), v);
  return 1;
}

static int is_key(lua_State *L, lc_ctx *c, int idx, void *arg) {
  (void)L;
  (void)idx;
  return c->kind == LK_VALUE && key_eq(c, (const keyd *)arg);
}

/* ctx:value(key) -> the nearest value for key, or nil */
/* ctx:value(key) -> the nearest value for key, or nil. The chain is
** walked through C pointers; only a hit (found through VMAP) or a merge
** (the walk in order through its inputs) uses the Lua stack. */
int lc_value(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "value"), *p;
  keyd k;
  check_key(L, 2, "value", &k);
  if (k.t == KT_PTR) { /* the usual key (context.key, a table): inline */
    for (p = c; p != NULL; p = p->parent) {
      if (p->kind == LK_VALUE) {
        const lc_vctx *v = (const lc_vctx *)p;
        if (v->x.p == k.x.p && v->ktype == KT_PTR && v->ptype == k.ptype)
          break;
      } else if (p->kind == LK_MERGE)
        break;
    }
  } else {
    for (p = c; p != NULL; p = p->parent) {
      if (p->kind == LK_VALUE && key_eq(p, &k)) break;
      if (p->kind == LK_MERGE) break;
    }
  }
  if (p == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if ((p->kind == LK_MERGE ||
       lua_rawgetp(L, lc_uv(LC_UV_VMAP), p) != LUA_TUSERDATA) &&
      !lc_walk(L, 1, 0, is_key, &k)) {
    lua_pushnil(L);
    return 1;
  }
  lua_getiuservalue(L, -1, 3);
  return 1;
}

/* }====================================================================== */
