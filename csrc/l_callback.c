/*
** l_callback.c — after_func callbacks and external watches: one wait on a
** context each (README, "Callbacks").
**
** How a callback stays alive
**   - On a context with a deadline: anchored (the deadline will run it).
**   - On a context only a cancel can end ("weak"): kept by the keep sets of
**     the contexts whose cancel could run it (l_cancel.c), so that a
**     context nobody can cancel any more is collected with its callbacks,
**     as in Go. Its anchors slot is reserved at once, so that the epilogue
**     of the cancel that wakes it anchors it without allocating.
**   - On a context nothing can end (background): nothing keeps it.
**   A callback that may be collected unrun has a finaliser that releases
**   its wait and keeps the pending count right.
** Everything a callback needs is allocated before its wait is armed.
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

/* can only a cancel end c (no deadline, but a node)? */
#define cancel_only(c) ((c)->cn != NULL && (c)->cn->deadline == CTX_NEVER)

/* [-0, +1, m] a callback of after_func or _watch: fn (index 2) in user
** value 1, the context (index 1) in user value 2 */
static lc_callback *new_callback(lua_State *L, int kind) {
  lc_callback *cb =
      (lc_callback *)lua_newuserdatauv(L, sizeof(lc_callback), 2);
  memset(cb, 0, sizeof *cb);
  wt_waiter_init(&cb->w, kind, 0);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 2);
  return cb;
}

/* [-0, +0, m] keep the callback on top alive as its context asks (see the
** top of this file); weak: kept by the keep sets, anchors slot reserved */
static void keep_callback(lua_State *L, lc_runtime *rt, lc_callback *cb,
                          int weak) {
  if (!weak) {
    lc_anchor(L, rt, -1);
    return;
  }
  lc_keep(L, rt, 1, -1, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushboolean(L, 0);
  lua_rawsetp(L, -2, cb); /* the reserved slot */
  lua_pop(L, 1);
  cb->weak = 1;
}

/* [-0, +0, -] cb will never run: out of the keep sets and the anchors */
static void let_go(lua_State *L, lc_runtime *rt, lc_callback *cb, int cbidx) {
  cbidx = lua_absindex(L, cbidx);
  if (cb->weak) {
    lua_getiuservalue(L, cbidx, 2);
    lc_keep(L, rt, -1, cbidx, 0);
    lua_pop(L, 1);
    cb->weak = 0;
  }
  lc_unanchor(L, rt, cb);
}

/* Arm cb's wait on the context at index 1 (its keeping already set up).
** Returns 1 if the context is done already (then nothing is armed). A
** deadline that has passed since the caller's check (the allocations in
** between may have run a collection; the process may have been paused) is
** noticed here, with the epilogue of a cancel, at the clock reading the
** wait is armed with: it cannot pass between the two. */
static int arm_callback(lua_State *L, lc_runtime *rt, lc_callback *cb) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, 1);
  int64_t now = lc_now(rt);
  if (lc_ctx_err_at(L, rt, c, 1, now) != CTX_ERR_NONE) return 1;
  lc_wait_ctx(&cb->wait, c);
  return wt_park(&rt->sched, &cb->w, &cb->wait, 1, now) != 0;
}

/* stop() -> true if it prevented the run of fn   [-0, +1, -] */
static int l_stop(lua_State *L) {
  lc_callback *cb = (lc_callback *)lua_touserdata(L, lua_upvalueindex(1));
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, lua_upvalueindex(2));
  if (cb->w.state != WT_PARKED && cb->w.state != WT_READY) {
    lua_pushboolean(L, 0);
    return 1;
  }
  wt_release(&rt->sched, &cb->w); /* out of its node, or of the queue */
  cb->w.state = WT_DONE;
  rt->ncallbacks--;
  let_go(L, rt, cb, lua_upvalueindex(1));
  lua_pushboolean(L, 1);
  return 1;
}

/* __gc of callbacks that may be collected unrun: release the wait (the
** node it is linked into is being collected too, but its memory is still
** there), and one that can never run is not pending */
static int l_callback_gc(lua_State *L) {
  lc_callback *cb = (lc_callback *)lua_touserdata(L, 1);
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, lua_upvalueindex(1));
  if (rt->closed) return 0;
  lc_push_anchored(L, rt, cb);
  if (lua_type(L, -1) == LUA_TUSERDATA)
    return 0; /* woken and anchored while being finalised (a cancel from
                 another finaliser): it lives on, and runs */
  lc_external_remove(cb);
  if (cb->w.state == WT_PARKED || cb->w.state == WT_READY ||
      cb->w.state == WT_HELD) {
    wt_release(&rt->sched, &cb->w);
    if (cb->w.kind == WK_CALLBACK) rt->ncallbacks--;
  }
  cb->w.state = WT_DONE;
  lc_unanchor(L, rt, cb); /* its reserved slot, if any */
  return 0;
}

/* context.after_func(ctx, fn) -> stop */
static int l_after_func(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c = lc_checkctx(L, 1, "after_func");
  lc_callback *cb;
  int weak;
  if (!lc_iscallable(L, 2)) lc_typeerror(L, 2, "after_func", "function");
  lua_settop(L, 2);
  if (rt->closed) return luaL_error(L, "context.after_func: the state is closing");
  cb = new_callback(L, WK_CALLBACK);
  /* allocate everything first: the stop function, the keeping */
  lua_pushvalue(L, 3);
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_stop, 2);
  lua_insert(L, 3); /* stop, cb */
  weak = cancel_only(c) && lc_ctx_err(L, rt, c, 1) == CTX_ERR_NONE;
  if (c->cn != NULL) keep_callback(L, rt, cb, weak);
  if (c->cn == NULL || weak) { /* it may be collected unrun */
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_cbmt);
    lua_setmetatable(L, -2);
  }
  rt->ncallbacks++;
  if (arm_callback(L, rt, cb)) { /* done already (perhaps by a __gc that
                                    the allocations above ran): runs soon */
    if (weak) lc_anchor(L, rt, -1); /* into the reserved slot */
    wt_push(&rt->sched, &cb->w);
  } else if (weak)
    cb->w.flags |= WT_WF_NOTIFY; /* anchored by the cancel's epilogue */
  lua_settop(L, 3);
  return 1;
}

/* Start the woken callback cb (popped from the ready queue): fn runs in a
** task of its own. If the task cannot be made (out of memory), cb goes back
** to the queue and the error is raised. */
void lc_start_callback(lua_State *L, lc_runtime *rt, lc_callback *cb) {
  int top = lua_gettop(L);
  lc_push_anchored(L, rt, cb);
  lua_getiuservalue(L, -1, 1);
  lua_pushcfunction(L, lc_new_task_p);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    wt_push(&rt->sched, &cb->w); /* again, later */
    lua_error(L);
  }
  cb->w.state = WT_DONE;
  rt->ncallbacks--;
  let_go(L, rt, cb, top + 1);
  lua_settop(L, top);
}

/* {======================================================================
** External watches: core._watch / core._unwatch
** A runtime that suspends its own way (the OpenResty backend, on
** ngx.semaphore) is told that a context is done by a call of its function,
** made by the epilogue of the cancel that ended the context, never from
** inside the cancel walk.
** ======================================================================= */

/* core._watch(ctx, fn [, "weak"]) -> handle, or nil if ctx is done already.
** fn(handle) is called once ctx is done. A watch lives until it is called
** or unwatched; a "weak" one on a context with no deadline lives only while
** something could still cancel the context (as after_func's callbacks do),
** so a context nothing can end is collected with its watch. */
static int l_watch(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c = lc_checkctx(L, 1, "watch");
  lc_callback *cb;
  int weak;
  if (!lc_iscallable(L, 2)) lc_typeerror(L, 2, "watch", "function");
  weak = lua_type(L, 3) == LUA_TSTRING && strcmp(lua_tostring(L, 3), "weak") == 0;
  lua_settop(L, 2);
  if (lc_ctx_err(L, rt, c, 1) != CTX_ERR_NONE) return 0;
  cb = new_callback(L, WK_EXTERNAL);
  if (!weak || c->cn != NULL) { /* a weak watch nothing can end: nothing keeps it */
    keep_callback(L, rt, cb, weak && cancel_only(c));
    if (cb->weak) { /* may be collected unrun */
      lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_cbmt);
      lua_setmetatable(L, -2);
    }
  }
  cb->w.flags |= WT_WF_HOLD | WT_WF_NOTIFY;
  if (arm_callback(L, rt, cb)) { /* done since the check above: as if done
                                    then (it was: nothing armed, no call) */
    cb->w.state = WT_DONE;
    let_go(L, rt, cb, -1);
    return 0;
  }
  return 1;
}

/* core._unwatch(handle) -> true if it stopped a call still to come */
static int l_unwatch(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_callback *cb = (lc_callback *)lua_touserdata(L, 1);
  if (cb == NULL || lua_type(L, 1) != LUA_TUSERDATA ||
      lua_rawlen(L, 1) != sizeof(lc_callback) || cb->w.kind != WK_EXTERNAL)
    return lc_typeerror(L, 1, "unwatch", "watch handle");
  if (cb->w.state == WT_PARKED || cb->w.state == WT_HELD) {
    lc_external_remove(cb); /* due, not called yet: never will be */
    wt_release(&rt->sched, &cb->w);
    cb->w.state = WT_DONE;
    let_go(L, rt, cb, 1);
    lua_pushboolean(L, 1);
  } else
    lua_pushboolean(L, 0);
  return 1;
}

/* }====================================================================== */

/* the core tells: a waiter with WT_WF_NOTIFY was woken */
static void on_woken(lc_runtime *rt, lc_callback *cb) {
  if (cb->weak && !cb->listed) { /* to anchor in the cancel's epilogue */
    cb->listed = 1;
    cb->anext = rt->to_anchor;
    rt->to_anchor = cb;
  }
  if (cb->w.kind == WK_EXTERNAL) /* to call in the cancel's epilogue */
    lc_external_add(rt, cb);
}

void lc_callback_woken(wt_sched *s, wt_waiter *w) {
  on_woken((lc_runtime *)s->ud, (lc_callback *)w);
}

void lc_callback_init(lua_State *L, lc_runtime *rt) {
  lua_createtable(L, 0, 1); /* the metatable of collectable callbacks */
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_callback_gc, 1);
  lua_setfield(L, -2, "__gc");
  rt->ref_cbmt = luaL_ref(L, LUA_REGISTRYINDEX);
  rt->to_anchor = NULL;
  rt->external = NULL;
}

const luaL_Reg lc_callback_funcs[] = {
  {"after_func", l_after_func},
  {"_watch", l_watch},
  {"_unwatch", l_unwatch},
  {NULL, NULL}
};
