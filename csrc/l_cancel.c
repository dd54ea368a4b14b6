/*
** l_cancel.c — cancel objects (callable, closable, separate from the
** context so that whoever holds only the context cannot cancel it), what a
** context keeps for its cancel (its cause, its keep set), and the one
** epilogue every cancel goes through.
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* {======================================================================
** What a context keeps: its cause, and its keep set
** Both live as long as the context does, and no longer. Where the runtime
** has ephemeron tables (5.2+), they are entries of weak-keyed tables keyed
** by the context; on 5.1 and LuaJIT, whose weak tables are not ephemerons
** (a value that refers to its key would keep it forever), they are fields
** of the context's own user-value table.
** ======================================================================= */

enum { SLOT_CAUSE, SLOT_KEEP };

#if LUA_VERSION_NUM >= 502

/* [-0, +1, -] push the side table of slot */
static void push_side(lua_State *L, const lc_runtime *rt, int slot) {
  lua_rawgeti(L, LUA_REGISTRYINDEX,
              slot == SLOT_CAUSE ? rt->ref_causes : rt->ref_keep);
}

/* [-0, +1, -] push slot of the context at idx (nil if none) */
static int slot_get(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx,
                    int slot) {
  (void)c;
  idx = lua_absindex(L, idx);
  push_side(L, rt, slot);
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return lua_type(L, -1);
}

/* [-1, +0, m] set slot of the context at idx to the value on top */
static void slot_set(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx,
                     int slot) {
  (void)c;
  idx = lua_absindex(L, idx);
  push_side(L, rt, slot);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 2);
}

#else

static const char *const slotname[] = {"cause", "keep"};

/* Does the context have a user-value table of its own? The cancel and
** timer children of a root are made without one (see derive_rt) until a
** slot needs it; every other kind has one from the start (a merge's inputs,
** a value's key and value, a without_cancel's parent are in it), whatever
** its parent is: a merge whose first input is a root has a root as its
** parent, and replacing its table lost its inputs. */
static int has_uvt(const lc_ctx *c) {
  return (c->flags & LCF_UVT) || c->parent == NULL ||
         (c->kind != LK_CANCEL && c->kind != LK_TIMER) ||
         (c->parent->kind != LK_BACKGROUND && c->parent->kind != LK_TODO);
}

static int slot_get(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx,
                    int slot) {
  (void)rt;
  if (!has_uvt(c)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lc_getuvtable(L, idx);
  lua_getfield(L, -1, slotname[slot]);
  lua_remove(L, -2);
  return lua_type(L, -1);
}

static void slot_set(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx,
                     int slot) {
  (void)rt;
  idx = lua_absindex(L, idx);
  if (!has_uvt(c)) {
    lua_newtable(L);
    lc_setuvtable(L, idx);
    c->flags |= LCF_UVT;
  }
  lc_getuvtable(L, idx);
  lua_insert(L, -2);
  lua_setfield(L, -2, slotname[slot]);
  lua_pop(L, 1);
}

#endif

/* [-0, +0, m] record the value at causeidx as the cause of the context c
** at ctxidx (causeidx 0: forget a recorded one) */
void lc_set_cause(lua_State *L, lc_runtime *rt, lc_ctx *c, int ctxidx,
                  int causeidx) {
  if (causeidx != 0)
    lua_pushvalue(L, causeidx);
  else
    lua_pushnil(L);
  slot_set(L, rt, c, ctxidx, SLOT_CAUSE);
}

/* [-0, +(0|1), -] push the cause recorded for the context at ctxidx and
** return 1, or push nothing and return 0 */
int lc_push_cause(lua_State *L, lc_runtime *rt, int ctxidx) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, ctxidx);
  if (slot_get(L, rt, c, ctxidx, SLOT_CAUSE) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  return 0;
}

/* what lc_keep does at each context of the chain */
typedef struct keep_op {
  lc_runtime *rt;
  int cbidx;
  int add;
} keep_op;

static int keep_visit(lua_State *L, lc_ctx *c, int idx, void *arg) {
  const keep_op *k = (const keep_op *)arg;
  if (!lc_hasnode(c)) return 0;
  if (slot_get(L, k->rt, c, idx, SLOT_KEEP) != LUA_TTABLE) {
    lua_pop(L, 1);
    if (!k->add) return 0;
    lua_newtable(L);
    lua_pushvalue(L, -1);
    slot_set(L, k->rt, c, idx, SLOT_KEEP);
  }
  if (k->add)
    lua_pushvalue(L, k->cbidx);
  else
    lua_pushnil(L);
  lua_rawsetp(L, -2, lua_touserdata(L, k->cbidx));
  lua_pop(L, 1);
  return 0;
}

/*
** [-0, +0, m] Add (or remove) the waiter at cbidx in the keep sets of every
** context whose cancel could end the one at ctxidx: itself and its
** cancellable ancestors, up to a root or a without_cancel, through every
** input of a merge (lc_walk). So a weak waiter lives as long as something
** could still wake it, as in Go, where parents hold their children.
** Removing never allocates.
*/
void lc_keep(lua_State *L, lc_runtime *rt, int ctxidx, int cbidx, int add) {
  keep_op k;
  k.rt = rt;
  k.cbidx = lua_absindex(L, cbidx);
  k.add = add;
  lc_walk(L, ctxidx, LC_WALK_CANCEL, keep_visit, &k);
}

/* }====================================================================== */

/* {======================================================================
** The epilogue of every cancel
** ======================================================================= */

/* A woken weak waiter that no keep set holds any more cannot be anchored:
** rather than leave it queued where the collector can free it, it is
** released and never runs. Unreachable while the keep sets are right (every
** weak waiter a cancel of X wakes is in X's keep set); counted, so that
** tests see it. */
static void drop_woken(lc_runtime *rt, lc_callback *cb) {
  lc_external_remove(cb);
  wt_release(&rt->sched, &cb->w);
  cb->w.state = WT_DONE;
  if (cb->w.kind == WK_CALLBACK) rt->ncallbacks--;
  rt->lost++;
}

/* the list of external watches woken and not yet called: doubly linked,
** so that an unwatch (or a collection) takes one out at once */
void lc_external_add(lc_runtime *rt, lc_callback *cb) {
  if (cb->xpprev != NULL) return;
  cb->xnext = rt->external;
  if (cb->xnext != NULL) cb->xnext->xpprev = &cb->xnext;
  cb->xpprev = &rt->external;
  rt->external = cb;
}

void lc_external_remove(lc_callback *cb) {
  if (cb->xpprev == NULL) return;
  *cb->xpprev = cb->xnext;
  if (cb->xnext != NULL) cb->xnext->xpprev = cb->xpprev;
  cb->xnext = NULL;
  cb->xpprev = NULL;
}

/* Call the external watches woken so far: each is anchored now; it leaves
** the anchors and its keep sets, then its function runs (protected). */
static void flush_external(lua_State *L, lc_runtime *rt) {
  while (rt->external != NULL) {
    lc_callback *cb = rt->external;
    lc_external_remove(cb);
    if (cb->w.state != WT_HELD) continue; /* dropped */
    wt_release(&rt->sched, &cb->w);
    cb->w.state = WT_DONE;
    lc_push_anchored(L, rt, cb);
    if (cb->weak) {
      lua_getiuservalue(L, -1, 2);
      lc_keep(L, rt, -1, -2, 0);
      lua_pop(L, 1);
      cb->weak = 0;
    }
    lc_unanchor(L, rt, cb);
    lua_getiuservalue(L, -1, 1);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      lc_report("error in a context watch", L, -1);
      lua_pop(L, 1);
    }
  }
}

/*
** [-0, +0, m] After a cancel (or a poll that noticed a deadline) of the
** context at ctxidx (0: none at hand): anchor the weak waiters it woke,
** found in its keep set (their anchors slots are reserved: nothing here
** allocates until they are all anchored), then call the external watches.
*/
void lc_after_cancel(lua_State *L, lc_runtime *rt, int ctxidx) {
  if (rt->to_anchor != NULL) {
    int keep = 0;
    lc_ctx *c = ctxidx != 0 ? (lc_ctx *)lua_touserdata(L, ctxidx) : NULL;
    if (c != NULL && slot_get(L, rt, c, ctxidx, SLOT_KEEP) == LUA_TTABLE)
      keep = lua_gettop(L);
    while (rt->to_anchor != NULL) {
      lc_callback *cb = rt->to_anchor;
      rt->to_anchor = cb->anext;
      cb->anext = NULL;
      cb->listed = 0;
      if (cb->w.state != WT_READY && cb->w.state != WT_HELD)
        continue; /* stopped meanwhile */
      if (keep != 0 && lua_rawgetp(L, keep, cb) == LUA_TUSERDATA) {
        lc_anchor(L, rt, -1); /* its slot is reserved: no allocation */
        lua_pop(L, 1);
      } else {
        if (keep != 0) lua_pop(L, 1);
        drop_woken(rt, cb);
      }
    }
    if (c != NULL) lua_pop(L, 1);
  }
  if (rt->external != NULL) flush_external(L, rt);
}

/* }====================================================================== */

/* {======================================================================
** Cancel objects: a zero-byte userdata whose user value 1 is the context
** ======================================================================= */

/* [-0, +1, m] a cancel object for the context c at index ctxidx */
void lc_new_cancel(lua_State *L, int ctxidx) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, ctxidx);
  void *p = lua_newuserdatauv(L, LC_CANCEL_SIZE, 1);
  if (LC_CANCEL_SIZE != 0) /* LuaJIT: the context's address, for l_ffi.c */
    memcpy(p, &c, sizeof c);
  lua_pushvalue(L, ctxidx);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lc_uv(LC_UV_CANCELMT));
  lua_setmetatable(L, -2);
}

/* [-0, +1, v] check the cancel object at 1; push its context, return it.
** Its metamethods are reached through its metatable only, so what is at 1
** has that metatable (or got it from debug.setmetatable): the check is that
** it is a full userdata whose user value 1 is a context with a node of its
** own, which is all the callers need (no metatable fetch: a third of a
** cancel's cost). */
static lc_ctx *check_cancel(lua_State *L, const char *fname) {
  if (lua_type(L, 1) == LUA_TUSERDATA &&
      lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA) {
    lc_ctx *c = lc_testctx(L, -1);
    if (c != NULL && lc_hasnode(c)) return c;
  }
  lc_typeerror(L, 1, fname, "cancel object");
  return NULL;
}

/*
** Cancel the context on top with an optional cause (index; 0: none). A
** deadline that has already passed wins over the cancel, as it would have
** had its timer fired. Everything that can fail (the cause, the stack the
** epilogue needs) is done before the cancel.
*/
static void do_cancel(lua_State *L, lc_runtime *rt, lc_ctx *c, int causeidx) {
  ctx_node *n = lc_node(c);
  int ctxidx = lua_gettop(L);
  if (n->err != CTX_ERR_NONE) return;
  luaL_checkstack(L, 8, NULL);
  if (n->deadline != CTX_NEVER && ctx_poll(&rt->tree, n, lc_now(rt)) != 0) {
    lc_after_cancel(L, rt, ctxidx);
    return;
  }
  if (causeidx != 0 || (c->flags & LCF_TCAUSE))
    lc_set_cause(L, rt, c, ctxidx, causeidx); /* a timer cause does not survive
                                             a plain cancel */
  ctx_cancel(&rt->tree, n, CTX_ERR_CANCELED);
  lc_after_cancel(L, rt, ctxidx);
}

/* cancel([cause])   [-0, +0, m]
** With a cause (any non-nil value) the context's cause() reports it. */
static int l_cancel_call(lua_State *L) {
  int top = lua_gettop(L);
  int hascause = top >= 2 && !lua_isnil(L, 2);
  lc_ctx *c;
  if (top > 2) lua_settop(L, top = 2);
  c = check_cancel(L, "cancel"); /* (pushes the context: at top + 1) */
  do_cancel(L, lc_rt(L), c, hascause ? 2 : 0);
  return 0;
}

/* __close: cancel without cause (the error that closes the scope, if any,
** is not a cancellation cause). */
static int l_cancel_close(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c;
  lua_settop(L, 2);
  c = check_cancel(L, "cancel");
  do_cancel(L, rt, c, 0);
  return 0;
}

static int l_cancel_tostring(lua_State *L) {
  check_cancel(L, "cancel");
  lua_pushfstring(L, "context.cancel: %p", lua_topointer(L, 1));
  return 1;
}

const luaL_Reg lc_cancel_meta[] = {
  {"__call", l_cancel_call},
  {"__close", l_cancel_close},
  {"__tostring", l_cancel_tostring},
  {NULL, NULL}
};

/* }====================================================================== */
