/*
** l_sched.c — the scheduler: tasks (coroutines run by the loop), what they
** wait on, the ready queue, and the libev driver (API.md sections 4 and 5).
**
** How waiting works
**   A waiter (a task, the main thread, an after_func callback, a signal
**   context) parks with one or more waits (lc_wait): a context being done,
**   a sleep, an fd being ready, a task ending. The first wait to fire wakes
**   the waiter: all its waits are detached at once (select: the losers leave
**   nothing behind) and it joins the ready queue. Nothing is resumed where a
**   wait fires (inside cancel(), a timer or an fd callback): the ready queue
**   is drained by the loop, which resumes each task on the main thread.
**
**   Suspending is left to Lua code (lua/lcontext/init.lua): core._park
**   registers the waits of the running task and returns a token, on which
**   the Lua side yields; the loop resumes it with the index of the wait
**   that fired. No lua_yieldk, so the same protocol serves LuaJIT. From the
**   main thread core._park runs the loop until a wait fires instead.
**
** Deadlines enter the timer wheel only while something waits: a wait on a
** context counts on the context that owns its effective deadline (watch).
*/
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext.h"
#include "lcontext_int.h"

#if LUA_VERSION_NUM >= 504 && defined(LUA_VERSION_RELEASE_NUM) && \
    LUA_VERSION_RELEASE_NUM >= 50406
#define lc_closethread(co, L) lua_closethread(co, L)
#elif LUA_VERSION_NUM >= 504
#define lc_closethread(co, L) lua_resetthread(co)
#else
#define lc_closethread(co, L) ((void)(co), (void)(L)) /* no <close> to run */
#endif

/* waiter kinds and states */
enum { WK_MAIN, WK_TASK, WK_CALLBACK, WK_SIGNAL, WK_EXTERNAL };
enum { WS_IDLE, WS_PARKED, WS_READY, WS_RUNNING, WS_DONE };
/* wait kinds */
enum { WAIT_CTX = 1, WAIT_SLEEP, WAIT_IO, WAIT_TASK };
/* task outcomes */
enum { TS_RUNNING, TS_OK, TS_FAILED };

struct lc_waiter {
  lc_waiter *rnext;  /* ready queue link */
  uint8_t kind;      /* WK_* */
  uint8_t state;     /* WS_* */
  uint16_t fired;    /* 1-based index of the wait that fired */
  uint16_t nwaits;   /* waits in `waits` (while parked) */
  lc_wait *waits;    /* the waits, in a userdata the waiter anchors */
};

struct ctx_watch { /* lc_wait */
  lc_wait *next, **pprev; /* in the list of the source (a node, a task) */
  lc_waiter *w;
  uint8_t kind;   /* WAIT_* */
  uint8_t armed;  /* attached to its source */
  uint16_t index; /* its position among the waiter's waits (from 1) */
  union {
    struct {
      lc_ctx *c;     /* the context waited on */
      lc_tctx *owner; /* the context owning its deadline, watched */
    } ctx;
    lc_timer t;       /* WAIT_SLEEP */
    ev_io io;         /* WAIT_IO */
    struct lc_task *task; /* WAIT_TASK */
  } u;
};

typedef struct lc_task {
  lc_waiter w;
  lua_State *co;    /* the coroutine (user value 1 anchors it) */
  lc_wait *watchers;/* waits of others on this task's end */
  int nargs;        /* values to pass at the next resume */
  int status;       /* TS_* */
} lc_task;
/* task user values: 1 coroutine, 2 results table, 3 current waits */

typedef struct lc_callback { /* after_func */
  lc_waiter w;
  lc_wait wait;
  struct lc_callback *anext; /* in rt->to_anchor */
  uint8_t weak;   /* kept alive by its context's chain, not anchored */
  uint8_t listed; /* in rt->to_anchor */
} lc_callback;
/* callback user values: 1 fn, 2 ctx */

typedef struct lc_sigctx { /* context.signal */
  lc_waiter w;
  lc_wait wait;     /* on the context: its end stops the watchers */
  lc_runtime *rt;
  lc_ctx *c;
  int nsig, active;
  ev_signal sig[1]; /* nsig of them */
} lc_sigctx;
/* signal user values: 1 ctx */

static void drain(lc_runtime *rt);

/* {======================================================================
** Anchors: waiters that must stay alive while parked, ready or running
** ======================================================================= */

static void anchor(lua_State *L, lc_runtime *rt, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, lua_touserdata(L, idx));
  lua_pop(L, 1);
}

static void unanchor(lua_State *L, lc_runtime *rt, void *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushnil(L);
  lua_rawsetp(L, -2, p);
  lua_pop(L, 1);
}

/* [-0, +1, -] push the anchored userdata of p */
static void push_anchored(lua_State *L, lc_runtime *rt, void *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
}

/* }====================================================================== */

/* {======================================================================
** The wheel and the libev timer that drives it
** ======================================================================= */

static void arm(lc_runtime *rt) {
  int64_t next;
  if (rt->closed || rt->loop == NULL) return; /* armed once a loop exists */
  next = tw_next_wakeup(&rt->wheel);
  if (next == rt->wtimer_at) return;
  if (ev_is_active(&rt->wtimer)) ev_timer_stop(rt->loop, &rt->wtimer);
  rt->wtimer_at = next;
  if (next != TW_NEVER) {
    int64_t now = clk_mono_ns();
    double after = next > now ? (double)(next - now) * 1e-9 : 0.0;
    ev_now_update(rt->loop);
    ev_timer_set(&rt->wtimer, after, 0.0);
    ev_timer_start(rt->loop, &rt->wtimer);
  }
}

static void watch_deadline(lc_runtime *rt, lc_tctx *o) {
  if (o->watch++ == 0)
    tw_insert(&rt->wheel, &o->tm.e, o->c.node.deadline);
}

static void unwatch_deadline(lc_runtime *rt, lc_tctx *o) {
  if (o->watch > 0 && --o->watch == 0) tw_cancel(&rt->wheel, &o->tm.e);
}

/* a timer ctx being collected leaves the wheel */
void lc_timer_gc(lc_runtime *rt, lc_ctx *c) {
  lc_tctx *t = (lc_tctx *)c;
  tw_cancel(&rt->wheel, &t->tm.e);
  t->watch = 0;
}

static void wake(lc_runtime *rt, lc_waiter *w, int index);

static void fire(tw_entry *e, void *ud) {
  lc_runtime *rt = (lc_runtime *)ud;
  lc_timer *t = (lc_timer *)e;
  if (t->kind == LT_DEADLINE) {
    lc_tctx *o = (lc_tctx *)((char *)t - offsetof(lc_tctx, tm));
    rt->fired++;
    ctx_hist_add(&rt->lateness, rt->advance_now - o->c.node.deadline);
    ctx_cancel(&rt->tree, &o->c.node, CTX_ERR_DEADLINE);
  } else {
    lc_wait *x = (lc_wait *)((char *)t - offsetof(lc_wait, u));
    wake(rt, x->w, x->index);
  }
}

static void advance(lc_runtime *rt) {
  if (tw_count(&rt->wheel) > 0) {
    rt->advance_now = clk_mono_ns();
    tw_advance(&rt->wheel, rt->advance_now, fire, rt);
  }
}

/* }====================================================================== */

/* {======================================================================
** Waits
** ======================================================================= */

static void list_add(lc_wait **head, lc_wait *x) {
  x->next = *head;
  if (x->next != NULL) x->next->pprev = &x->next;
  x->pprev = head;
  *head = x;
}

static void list_remove(lc_wait *x) {
  if (x->pprev == NULL) return;
  *x->pprev = x->next;
  if (x->next != NULL) x->next->pprev = x->pprev;
  x->next = NULL;
  x->pprev = NULL;
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents) {
  lc_wait *x = (lc_wait *)((char *)io - offsetof(lc_wait, u));
  (void)loop;
  (void)revents;
  wake((lc_runtime *)io->data, x->w, x->index);
}

static void detach(lc_runtime *rt, lc_wait *x) {
  if (!x->armed) return;
  x->armed = 0;
  switch (x->kind) {
  case WAIT_CTX: {
    ctx_node *n = x->u.ctx.c->cn;
    list_remove(x);
    if (n != NULL && n->watch == NULL) n->flags &= (uint8_t)~CTX_F_WATCHED;
    if (x->u.ctx.owner != NULL) unwatch_deadline(rt, x->u.ctx.owner);
    break;
  }
  case WAIT_SLEEP: tw_cancel(&rt->wheel, &x->u.t.e); break;
  case WAIT_IO:
    if (!rt->closed) ev_io_stop(rt->loop, &x->u.io);
    rt->nio--;
    break;
  case WAIT_TASK: list_remove(x); break;
  }
}

static void detach_all(lc_runtime *rt, lc_waiter *w) {
  uint16_t i;
  for (i = 0; i < w->nwaits; i++) detach(rt, &w->waits[i]);
}

static void push_ready(lc_runtime *rt, lc_waiter *w) {
  rt->wakeups++;
  w->state = WS_READY;
  w->rnext = NULL;
  *rt->ready_tail = w;
  rt->ready_tail = &w->rnext;
  if (!rt->closed && rt->loop != NULL && !ev_is_active(&rt->idle))
    ev_idle_start(rt->loop, &rt->idle);
}

static lc_waiter *pop_ready(lc_runtime *rt) {
  lc_waiter *w = rt->ready;
  if (w != NULL) {
    rt->ready = w->rnext;
    if (rt->ready == NULL) rt->ready_tail = &rt->ready;
    w->rnext = NULL;
  }
  return w;
}

/* The first wait of w to fire: detach them all, queue w. */
static void wake(lc_runtime *rt, lc_waiter *w, int index) {
  if (w->state != WS_PARKED) return;
  if (w->kind == WK_TASK) rt->nparked--;
  w->fired = (uint16_t)index;
  detach_all(rt, w);
  if (w->kind == WK_EXTERNAL) { /* told by lc_flush_external, not the loop */
    lc_callback *cb = (lc_callback *)w;
    w->state = WS_READY;
    cb->anext = rt->external;
    rt->external = cb;
    return;
  }
  push_ready(rt, w);
  if (w->kind == WK_CALLBACK) {
    lc_callback *cb = (lc_callback *)w;
    if (cb->weak && !cb->listed) { /* anchored by anchor_woken, soon */
      cb->listed = 1;
      cb->anext = rt->to_anchor;
      rt->to_anchor = cb;
    }
  }
}

/* the tree's hook: a watched node is done */
static void on_done(ctx_tree *t, ctx_node *n) {
  lc_runtime *rt = (lc_runtime *)t->ud;
  lc_wait *x;
  while ((x = n->watch) != NULL) {
    lc_waiter *w = x->w;
    if (w->state == WS_PARKED)
      wake(rt, w, x->index);
    else
      detach(rt, x);
  }
  n->flags &= (uint8_t)~CTX_F_WATCHED;
}

/* Arm wait x on the context c. Returns 1 if c is already done (nothing
** armed). */
static int arm_ctx(lua_State *L, lc_runtime *rt, lc_wait *x, lc_ctx *c) {
  ctx_node *n = c->cn;
  lc_ctx *o;
  x->kind = WAIT_CTX;
  x->u.ctx.c = c;
  x->u.ctx.owner = NULL;
  if (lc_ctx_err(L, c) != CTX_ERR_NONE) return 1;
  if (n == NULL) return 0; /* never done: nothing to arm */
  list_add(&n->watch, x);
  n->flags |= CTX_F_WATCHED;
  o = lc_deadline_owner(c);
  if (o != NULL) {
    x->u.ctx.owner = (lc_tctx *)o;
    watch_deadline(rt, (lc_tctx *)o);
  }
  x->armed = 1;
  return 0;
}

static int arm_task(lc_wait *x, lc_task *t) {
  x->kind = WAIT_TASK;
  x->u.task = t;
  if (t->status != TS_RUNNING) return 1;
  list_add(&t->watchers, x);
  x->armed = 1;
  return 0;
}

/* }====================================================================== */

/* {======================================================================
** Tasks
** ======================================================================= */

static lc_task *test_task(lua_State *L, int idx) {
  lc_task *t = (lc_task *)lua_touserdata(L, idx);
  if (t != NULL && lua_getmetatable(L, idx)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == lc_rt(L)->taskmt) return t;
  }
  return NULL;
}

static int iscallable(lua_State *L, int idx) {
  int ok;
  if (lua_type(L, idx) == LUA_TFUNCTION) return 1;
  if (!luaL_getmetafield(L, idx, "__call")) return 0;
  ok = 1;
  lua_pop(L, 1);
  return ok;
}

/* [-0, +1, m] a new task running the function at fidx with n arguments
** after it; queued, not started */
static lc_task *new_task(lua_State *L, lc_runtime *rt, int fidx, int n) {
  lc_task *t;
  lua_State *co;
  fidx = lua_absindex(L, fidx);
  t = (lc_task *)lua_newuserdatauv(L, sizeof(lc_task), 3);
  memset(t, 0, sizeof *t);
  t->w.kind = WK_TASK;
  t->status = TS_RUNNING;
  lua_pushvalue(L, lc_uv(LC_UV_TASKMT));
  lua_setmetatable(L, -2);
  co = lua_newthread(L);
  t->co = co;
  lua_setiuservalue(L, -2, 1);
  luaL_checkstack(co, n + 1, "too many arguments");
  luaL_checkstack(L, n + 1, "too many arguments");
  lua_pushvalue(L, fidx);
  lua_xmove(L, co, 1);
  if (n > 0) {
    int i;
    for (i = 1; i <= n; i++) lua_pushvalue(L, fidx + i);
    lua_xmove(L, co, n);
  }
  t->nargs = n;
  rt->ntasks++;
  anchor(L, rt, -1);
  push_ready(rt, &t->w);
  return t;
}

/* context.go(fn, ...) -> task */
static int l_go(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  if (!iscallable(L, 1)) lc_typeerror(L, 1, "go", "function");
  if (rt->closed) return luaL_error(L, "context.go: the state is closing");
  new_task(L, rt, 1, lua_gettop(L) - 1);
  return 1;
}

/* [-3, +0, e] the protected part of report: err, co, task */
static int report_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, lua_upvalueindex(1));
  lua_State *co = lua_tothread(L, 2);
  const char *msg = lua_type(L, 1) == LUA_TSTRING ? lua_tostring(L, 1)
                                                  : luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, co, msg, 0);
  if (rt->ref_onerror != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_onerror);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, 3);
    lua_call(L, 3, 0);
  } else {
    fprintf(stderr, "lcontext: error in task: %s\n", lua_tostring(L, -1));
    fflush(stderr);
  }
  return 0;
}

/* report an error raised in a task to the handler (default: stderr);
** whatever the handler (or a __tostring) does, the loop goes on */
static void report(lua_State *L, lc_runtime *rt, lua_State *co, int taskidx) {
  int err = lua_gettop(L); /* the error */
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, report_p, 1);
  lua_pushvalue(L, err);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, taskidx);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK)
    lc_report("error while reporting an error in a task", L, -1);
  lua_settop(L, err);
}

static int is_sentinel(lua_State *L, lc_runtime *rt, int idx) {
  /* the sentinels are the values of anchors["canceled"/"deadline"] */
  int r;
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_getfield(L, -1, "canceled");
  lua_getfield(L, -2, "deadline_exceeded");
  r = lua_rawequal(L, idx, -2) || lua_rawequal(L, idx, -1);
  lua_pop(L, 3);
  return r;
}

/* a task ended: keep its results, wake who waits on it, release it */
static void finish(lua_State *L, lc_runtime *rt, lc_task *t, int taskidx) {
  lc_wait *x;
  lua_pushnil(L);
  lua_setiuservalue(L, taskidx, 1); /* the coroutine can go */
  lua_pushnil(L);
  lua_setiuservalue(L, taskidx, 3);
  t->co = NULL;
  t->w.state = WS_DONE;
  while ((x = t->watchers) != NULL) {
    if (x->w->state == WS_PARKED)
      wake(rt, x->w, x->index);
    else
      detach(rt, x);
  }
  rt->ntasks--;
  unanchor(L, rt, t);
}

static void resume_task(lua_State *L, lc_runtime *rt, lc_task *t) {
  lua_State *co = t->co;
  int nres = 0, st, nargs, taskidx;
  push_anchored(L, rt, t);
  taskidx = lua_gettop(L);
  if (co == NULL || (lua_status(co) == LUA_OK && lua_gettop(co) == 0 &&
                     t->nargs < 0)) {
    /* its coroutine was closed from outside: the task is over */
    lua_pushnil(L);
    lua_pushliteral(L, "task's coroutine was closed");
    goto failed;
  }
  if (lua_status(co) != LUA_OK && lua_status(co) != LUA_YIELD) {
    lua_pushnil(L);
    lua_pushliteral(L, "task's coroutine is dead");
    goto failed;
  }
  if (t->nargs >= 0)
    nargs = t->nargs; /* first run: fn and its arguments are there */
  else if (t->w.fired == 0)
    nargs = 0; /* after a yield that was not ours */
  else {
    lua_pushinteger(co, t->w.fired);
    nargs = 1;
  }
  t->nargs = -1;
  t->w.state = WS_RUNNING;
  rt->current = t;
  rt->resumed++;
  st = lua_resume(co, L, nargs, &nres);
  rt->current = NULL;
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (t->w.state != WS_PARKED) /* a yield that is not ours: run it again */
      push_ready(rt, &t->w), t->w.fired = 0;
    lua_settop(L, taskidx - 1);
    return;
  }
  if (st == LUA_OK) {
    int i;
    t->status = TS_OK;
    if (nres == 0) { /* nothing to keep (the common case: no table) */
      finish(L, rt, t, taskidx);
      lua_settop(L, taskidx - 1);
      return;
    }
    luaL_checkstack(L, nres + 2, "too many results");
    lua_createtable(L, nres, 1);
    lua_xmove(co, L, nres);
    for (i = nres; i >= 1; i--) lua_rawseti(L, taskidx + 1, i);
    lua_pushinteger(L, nres);
    lua_setfield(L, -2, "n");
    lua_setiuservalue(L, taskidx, 2);
    finish(L, rt, t, taskidx);
    lua_settop(L, taskidx - 1);
    return;
  }
  /* it raised */
  lua_pushnil(L);
  lua_xmove(co, L, 1); /* the error */
  t->status = TS_FAILED;
  if (!is_sentinel(L, rt, -1)) report(L, rt, co, taskidx);
  lc_closethread(co, L);
failed:
  t->status = TS_FAILED;
  lua_createtable(L, 2, 1);
  lua_insert(L, -3);
  lua_rawseti(L, -3, 2);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, 2);
  lua_setfield(L, -2, "n");
  lua_setiuservalue(L, taskidx, 2);
  finish(L, rt, t, taskidx);
  lua_settop(L, taskidx - 1);
}

/*
** [-0, +0, m] Add (or remove) the callback at cbidx in the keep sets of
** every context whose cancel could end the one at ctxidx: itself and its
** cancellable ancestors, up to a root or a without_cancel, through every
** input of a merge. So a callback lives as long as something could still
** run it, as in Go, where parents hold their children.
*/
static void keep_chain(lua_State *L, lc_runtime *rt, int ctxidx, int cbidx,
                       int add) {
  int base, keep;
  ctxidx = lua_absindex(L, ctxidx);
  cbidx = lua_absindex(L, cbidx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_keep);
  keep = lua_gettop(L);
  base = keep;
  lua_pushvalue(L, ctxidx);
  while (lua_gettop(L) > base) {
    lc_ctx *c = (lc_ctx *)lua_touserdata(L, -1);
    if (lc_hasnode(c)) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, keep) != LUA_TTABLE) {
        lua_pop(L, 1);
        if (!add) goto next;
        lua_newtable(L);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, keep);
      }
      lua_pushvalue(L, cbidx);
      if (add) lua_pushboolean(L, 1); else lua_pushnil(L);
      lua_rawset(L, -3);
      lua_pop(L, 1);
    }
  next:
    if (c->kind == LK_MERGE) {
      int top = lua_gettop(L), i;
      luaL_checkstack(L, (int)c->klen, "too many merged contexts");
      for (i = (int)c->klen; i >= 1; i--) lua_getiuservalue(L, top, i);
      lua_remove(L, top);
    } else if (c->kind != LK_WITHOUT && c->parent != NULL &&
               c->parent->kind != LK_BACKGROUND && c->parent->kind != LK_TODO) {
      lua_getiuservalue(L, -1, 1);
      lua_replace(L, -2);
    } else
      lua_pop(L, 1);
  }
  lua_settop(L, keep - 1);
}

/* Anchor the callbacks that were kept alive by their contexts' chain and
** have been woken since: from now on the ready queue needs them. Call where
** the Lua API may be used, right after a cancel, before anything else. */
void lc_anchor_woken(lua_State *L, lc_runtime *rt) {
  while (rt->to_anchor != NULL) {
    lc_callback *cb = rt->to_anchor;
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_weakcb);
    if (lua_rawgetp(L, -1, cb) == LUA_TUSERDATA) anchor(L, rt, -1);
    lua_pop(L, 2);
    rt->to_anchor = cb->anext;
    cb->anext = NULL;
    cb->listed = 0;
  }
}

/*
** External watches (core._watch): a runtime that suspends its own way (the
** OpenResty backend, on ngx.semaphore) is told that a context is done by a
** call of its function, made here, after the cancel that ended the context
** has completed, and never from inside it.
*/
void lc_flush_external(lua_State *L, lc_runtime *rt) {
  while (rt->external != NULL) {
    lc_callback *cb = rt->external;
    rt->external = cb->anext;
    cb->anext = NULL;
    if (cb->w.state != WS_READY) continue; /* unwatched meanwhile */
    cb->w.state = WS_DONE;
    if (cb->weak) { /* kept by its contexts until now (see l_watch) */
      lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_weakcb);
      lua_rawgetp(L, -1, cb);
      lua_remove(L, -2);
      lua_getiuservalue(L, -1, 2);
      keep_chain(L, rt, -1, -2, 0);
      lua_pop(L, 1);
      cb->weak = 0;
    } else {
      push_anchored(L, rt, cb);
      unanchor(L, rt, cb);
    }
    lua_getiuservalue(L, -1, 1);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      lc_report("error in a context watch", L, -1);
      lua_pop(L, 1);
    }
  }
}

/* a waiter with a single wait of its own (callbacks, watches, signals) */
static void init_single(lc_waiter *w, lc_wait *x, int kind) {
  w->kind = (uint8_t)kind;
  w->waits = x;
  w->nwaits = 1;
  x->w = w;
  x->index = 1;
}

/* [-0, +1, m] a callback of after_func or _watch: fn (index 2) in user
** value 1, the context (index 1) in user value 2 */
static lc_callback *new_callback(lua_State *L, int kind) {
  lc_callback *cb =
      (lc_callback *)lua_newuserdatauv(L, sizeof(lc_callback), 2);
  memset(cb, 0, sizeof *cb);
  init_single(&cb->w, &cb->wait, kind);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 2);
  return cb;
}

/* [-0, +0, m] keep the parked callback on top alive while something could
** still run it: its context's chain, if only a cancel can end the context
** (the callback is "weak"), else the loop's anchors */
static void keep_callback(lua_State *L, lc_runtime *rt, lc_callback *cb,
                          int weak) {
  if (!weak) {
    anchor(L, rt, -1);
    return;
  }
  keep_chain(L, rt, 1, -1, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_weakcb);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, cb);
  lua_pop(L, 1);
  cb->weak = 1;
}

/* can only a cancel end c (no deadline, but a node)? */
#define cancel_only(c) ((c)->cn != NULL && (c)->cn->deadline == CTX_NEVER)

/* core._watch(ctx, fn [, "weak"]) -> handle, or nil if ctx is done already.
** fn(handle) is called once ctx is done (see lc_flush_external). A watch
** lives until it is called or unwatched; a "weak" one on a context with no
** deadline lives only while something could still cancel the context (as
** after_func's callbacks do), so a context nothing can end is collected
** with its watch. */
static int l_watch(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c = lc_checkctx(L, 1, "watch");
  lc_callback *cb;
  int weak;
  if (!iscallable(L, 2)) lc_typeerror(L, 2, "watch", "function");
  if (lc_ctx_err(L, c) != CTX_ERR_NONE) return 0;
  cb = new_callback(L, WK_EXTERNAL);
  arm_ctx(L, rt, &cb->wait, c);
  cb->w.state = WS_PARKED;
  weak = lua_type(L, 3) == LUA_TSTRING && strcmp(lua_tostring(L, 3), "weak") == 0;
  if (!weak || c->cn != NULL) /* a weak watch nothing can end: nothing keeps it */
    keep_callback(L, rt, cb, weak && cancel_only(c));
  return 1;
}

/* core._unwatch(handle) -> true if it stopped a call still to come */
static int l_unwatch(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_callback *cb = (lc_callback *)lua_touserdata(L, 1);
  if (cb == NULL || lua_type(L, 1) != LUA_TUSERDATA ||
      lua_rawlen(L, 1) != sizeof(lc_callback) || cb->w.kind != WK_EXTERNAL)
    return lc_typeerror(L, 1, "unwatch", "watch handle");
  if (cb->w.state == WS_PARKED || cb->w.state == WS_READY) {
    if (cb->w.state == WS_PARKED) detach_all(rt, &cb->w);
    cb->w.state = WS_DONE;
    if (cb->weak) {
      lua_getiuservalue(L, 1, 2);
      keep_chain(L, rt, -1, 1, 0);
      lua_pop(L, 1);
      cb->weak = 0;
    } else
      unanchor(L, rt, cb);
    lua_pushboolean(L, 1);
  } else
    lua_pushboolean(L, 0);
  return 1;
}

/* core._advance(): move the timer wheel to now (expired deadlines cancel
** their contexts), then call the watches that became due. For runtimes
** that drive the wheel themselves. */
static int l_advance(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  advance(rt);
  lc_anchor_woken(L, rt);
  lc_flush_external(L, rt);
  return 0;
}

/* core._next_wakeup() -> seconds until the wheel needs _advance, or nil */
static int l_next_wakeup(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int64_t next = tw_next_wakeup(&rt->wheel), now;
  if (next == TW_NEVER) return 0;
  now = clk_mono_ns();
  lua_pushnumber(L, next > now ? (lua_Number)(next - now) * 1e-9 : 0.0);
  return 1;
}

/* an after_func callback whose context is done: run fn in its own task */
static void start_callback(lua_State *L, lc_runtime *rt, lc_callback *cb) {
  push_anchored(L, rt, cb);
  cb->w.state = WS_DONE;
  rt->ncallbacks--;
  if (cb->weak) { /* its contexts need not keep it any more */
    lua_getiuservalue(L, -1, 2);
    keep_chain(L, rt, -1, -2, 0);
    lua_pop(L, 1);
    cb->weak = 0;
  }
  lua_getiuservalue(L, -1, 1);
  new_task(L, rt, -1, 0);
  lua_pop(L, 2);
  unanchor(L, rt, cb);
}

static void stop_signals(lc_runtime *rt, lc_sigctx *s) {
  int i;
  if (!s->active) return;
  s->active = 0;
  rt->nsig--;
  if (!rt->closed)
    for (i = 0; i < s->nsig; i++) ev_signal_stop(rt->loop, &s->sig[i]);
}

/* [-1, +0, e] the body of drain: resume what is ready, until nothing is */
static int drain_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 1);
  lc_waiter *w;
  int top = lua_gettop(L);
  lc_anchor_woken(L, rt);
  advance(rt);
  lc_flush_external(L, rt);
  while ((w = pop_ready(rt)) != NULL) {
    if (w->state != WS_READY) continue; /* stopped callback */
    switch (w->kind) {
    case WK_MAIN: w->state = WS_DONE; break;
    case WK_TASK: resume_task(L, rt, (lc_task *)w); break;
    case WK_CALLBACK: start_callback(L, rt, (lc_callback *)w); break;
    case WK_SIGNAL:
      w->state = WS_DONE;
      stop_signals(rt, (lc_sigctx *)w);
      unanchor(L, rt, w);
      break;
    }
    lua_settop(L, top);
    lc_anchor_woken(L, rt);
    lc_flush_external(L, rt);
    if (rt->ready == NULL) advance(rt);
  }
  return 0;
}

/* Resume what is ready, until nothing is. Runs on the main thread, under a
** protected call: an error that escapes (out of memory) is reported and
** the loop stays usable. */
static void drain(lc_runtime *rt) {
  lua_State *L = rt->L;
  if (rt->draining) return;
  rt->draining = 1;
  lua_pushcfunction(L, drain_p);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lc_report("error in the loop", L, -1);
    lua_pop(L, 1);
    if (rt->current != NULL && rt->current->w.state == WS_RUNNING)
      rt->current->w.state = WS_IDLE;
    rt->current = NULL;
  }
  rt->draining = 0;
  if (!rt->closed && rt->ready == NULL && ev_is_active(&rt->idle))
    ev_idle_stop(rt->loop, &rt->idle); /* active only with a loop */
  arm(rt);
}

/* }====================================================================== */

/* {======================================================================
** The loop
** ======================================================================= */

/* from libev, when the host runs the loop (run() drains by itself) */
static void host_drain(lc_runtime *rt) {
  if (rt->in_run || rt->draining) return;
  drain(rt);
}

static void wtimer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  lc_runtime *rt = (lc_runtime *)w->data;
  (void)loop;
  (void)revents;
  rt->wtimer_at = TW_NEVER; /* one-shot: it has stopped */
  advance(rt);
  arm(rt);
  host_drain(rt);
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  lc_runtime *rt = (lc_runtime *)w->data;
  (void)revents;
  if (rt->ready == NULL) ev_idle_stop(loop, w);
  host_drain(rt);
}

static void step_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
}

/* Tasks whose coroutine was closed from outside (coroutine.close) while
** parked: wake them, so that the loop ends them and releases their waits.
** Returns how many it found. Called when nothing else can happen. */
static int sweep_closed(lua_State *L, lc_runtime *rt) {
  int found = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TLIGHTUSERDATA) {
      lc_waiter *w = (lc_waiter *)lua_touserdata(L, -2);
      if (w->kind == WK_TASK && w->state == WS_PARKED) {
        lua_State *co = ((lc_task *)w)->co;
        if (co != NULL && lua_status(co) == LUA_OK && lua_gettop(co) == 0) {
          wake(rt, w, 0);
          found++;
        }
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return found;
}

/* could anything still happen without the main thread doing something? */
static int can_progress(lc_runtime *rt) {
  return rt->ready != NULL || tw_count(&rt->wheel) > 0 || rt->nio > 0 ||
         rt->nsig > 0;
}

static int alive(lc_runtime *rt) {
  return rt->ready != NULL || rt->ntasks > 0 || tw_count(&rt->wheel) > 0 ||
         rt->nio > 0;
}

/* one blocking (or not) iteration of libev, then the wheel */
static void iterate(lc_runtime *rt, int flags) {
  arm(rt);
  rt->in_run++;
  ev_run(rt->loop, flags);
  rt->in_run--;
  advance(rt);
}

/* libev's default loop is taken only when first needed: requiring lcontext
** for contexts alone leaves the process's signals (SIGCHLD) alone */
static void need_loop(lua_State *L, lc_runtime *rt) {
  if (rt->loop != NULL) return;
  rt->loop = ev_default_loop(0);
  if (rt->loop == NULL) luaL_error(L, "lcontext: cannot initialise libev");
  if (rt->ready != NULL) ev_idle_start(rt->loop, &rt->idle);
}

static void check_loop_caller(lua_State *L, lc_runtime *rt, const char *fname) {
  if (rt->current != NULL || rt->draining)
    luaL_error(L, "context.%s: cannot run the loop from inside a task or callback",
               fname);
  if (rt->closed) luaL_error(L, "context.%s: the state is closing", fname);
  need_loop(L, rt);
}

/* context.run([mode]) -> more work left (boolean) */
static int l_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  lc_runtime *rt = lc_rt(L);
  int mode = luaL_checkoption(L, 1, "default", modes);
  check_loop_caller(L, rt, "run");
  drain(rt);
  if (mode == 0) {
    while (alive(rt)) {
      if (!can_progress(rt) && sweep_closed(L, rt) > 0) {
        drain(rt);
        continue;
      }
      if (!can_progress(rt))
        return luaL_error(L, "context.run: deadlock: %d task(s) wait for "
                          "something nothing can bring", (int)rt->ntasks);
      iterate(rt, EVRUN_ONCE);
      drain(rt);
    }
  } else {
    if (mode == 2)
      iterate(rt, EVRUN_NOWAIT);
    else if (alive(rt) && can_progress(rt)) {
      uint64_t w0 = rt->wakeups;
      do /* until something happens, not just a move inside the wheel */
        iterate(rt, EVRUN_ONCE);
      while (rt->wakeups == w0 && rt->ready == NULL && can_progress(rt));
    }
    drain(rt);
  }
  lua_pushboolean(L, alive(rt));
  return 1;
}

/* context.step([timeout]) -> more work left (boolean) */
static int l_step(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Number t = lua_isnoneornil(L, 1) ? 0 : lc_checkduration(L, 1, "step");
  check_loop_caller(L, rt, "step");
  drain(rt);
  /* wait only if something is left: work that ended in the drain above
  ** (or none at all) leaves nothing to wait for */
  if (t > 0 && rt->ready == NULL && alive(rt)) {
    uint64_t w0 = rt->wakeups;
    ev_timer_set(&rt->steptimer, t, 0.0);
    ev_now_update(rt->loop);
    ev_timer_start(rt->loop, &rt->steptimer);
    do /* a wake-up of the wheel that only moves timers is not "more" */
      iterate(rt, EVRUN_ONCE);
    while (rt->wakeups == w0 && ev_is_active(&rt->steptimer));
    ev_timer_stop(rt->loop, &rt->steptimer);
  } else
    iterate(rt, EVRUN_NOWAIT);
  drain(rt);
  lua_pushboolean(L, alive(rt));
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** Parking: core._park(fname, waitable...)
** ======================================================================= */

static const char *const iomodes[] = {"r", "w", "rw", NULL};

/* Check the waitable at idx and describe it in x, arming nothing (so that
** a bad argument leaves nothing behind). */
static void prepare(lua_State *L, lc_runtime *rt, lc_wait *x, int idx,
                    const char *fname) {
  lc_ctx *c;
  lc_task *t;
  switch (lua_type(L, idx)) {
  case LUA_TNUMBER:
    x->kind = WAIT_SLEEP;
    {
      lua_Number secs = lua_tonumber(L, idx);
      if (secs != secs) lc_argerror(L, idx - 1, fname, "number is NaN");
      if (secs == HUGE_VAL || secs == -HUGE_VAL)
        lc_argerror(L, idx - 1, fname, "number is not finite");
      int64_t now = clk_mono_ns();
      if (secs <= 0)
        x->u.t.e.expires = now;
      else if (secs * 1e9 >= (lua_Number)(TW_NEVER - now))
        x->u.t.e.expires = TW_NEVER - 1;
      else
        x->u.t.e.expires = now + (int64_t)(secs * 1e9 + 0.999999);
      x->u.t.kind = secs <= 0 ? 0 : LT_SLEEP; /* 0: elapsed already */
    }
    return;
  case LUA_TTABLE: {
    int fd, isnum, mode;
    lua_getfield(L, idx, "fd");
    fd = (int)lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum || fd < 0) lc_argerror(L, idx - 1, fname, "bad file descriptor");
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
    x->kind = WAIT_IO;
    ev_io_init(&x->u.io, io_cb, fd,
               mode == 0 ? EV_READ : mode == 1 ? EV_WRITE : EV_READ | EV_WRITE);
    x->u.io.data = rt;
    return;
  }
  case LUA_TUSERDATA:
    if ((c = lc_testctx(L, idx)) != NULL) {
      x->kind = WAIT_CTX;
      x->u.ctx.c = c;
      return;
    }
    if ((t = test_task(L, idx)) != NULL) {
      x->kind = WAIT_TASK;
      x->u.task = t;
      return;
    }
    /* FALLTHROUGH */
  default:
    lc_argerror(L, idx - 1, fname,
                lua_pushfstring(L, "context, task, number of seconds or "
                                   "{fd=, mode=} expected, got %s",
                                luaL_typename(L, idx)));
  }
}

/* Arm the prepared wait x. Returns 1 if it is ready already (then nothing
** is armed). Raises nothing. */
static int arm_prepared(lua_State *L, lc_runtime *rt, lc_wait *x) {
  switch (x->kind) {
  case WAIT_SLEEP:
    if (x->u.t.kind == 0) return 1;
    {
      int64_t at = x->u.t.e.expires;
      tw_entry_init(&x->u.t.e);
      tw_insert(&rt->wheel, &x->u.t.e, at);
    }
    x->armed = 1;
    return 0;
  case WAIT_IO:
    ev_io_start(rt->loop, &x->u.io);
    rt->nio++;
    x->armed = 1;
    return 0;
  case WAIT_CTX: return arm_ctx(L, rt, x, x->u.ctx.c);
  default: return arm_task(x, x->u.task);
  }
}

/* The main thread waits: run the loop until one of its waits fires. */
static int park_main(lua_State *L, lc_runtime *rt, lc_waiter *w,
                     const char *fname) {
  w->state = WS_PARKED;
  while (w->state == WS_PARKED) {
    drain(rt);
    if (w->state != WS_PARKED) break;
    if (!can_progress(rt) && sweep_closed(L, rt) > 0) continue;
    if (!can_progress(rt)) {
      detach_all(rt, w);
      w->state = WS_IDLE;
      return luaL_error(L, "context.%s: deadlock: waiting for something "
                        "nothing can bring", fname);
    }
    iterate(rt, EVRUN_ONCE);
  }
  drain(rt);
  return w->fired;
}

static int l_park(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  const char *fname = luaL_checkstring(L, 1);
  int n = lua_gettop(L) - 1, i, ismain;
  lc_waiter *w;
  lc_wait *waits;
  lc_waiter mainw;
  if (n < 1) return lc_typeerror(L, 2, fname, "waitable");
  if (n > 0xffff) return lc_argerror(L, 1, fname, "too many waitables");
  ismain = lua_pushthread(L);
  lua_pop(L, 1);
  if (ismain) {
    check_loop_caller(L, rt, fname);
    memset(&mainw, 0, sizeof mainw);
    mainw.kind = WK_MAIN;
    w = &mainw;
  } else if (rt->current == NULL || rt->current->co != L)
    return luaL_error(L, "context.%s: called from a coroutine that lcontext "
                      "does not run (start it with context.go)", fname);
  else
    w = &rt->current->w;
  waits = (lc_wait *)lua_newuserdatauv(L, sizeof(lc_wait) * (size_t)n, n);
  memset(waits, 0, sizeof(lc_wait) * (size_t)n);
  w->waits = waits;
  w->nwaits = 0;
  for (i = 0; i < n; i++) { /* check everything before arming anything */
    lc_wait *x = &waits[i];
    x->w = w;
    x->index = (uint16_t)(i + 1);
    prepare(L, rt, x, i + 2, fname);
    lua_pushvalue(L, i + 2);
    lua_setiuservalue(L, -2, i + 1); /* keep what is waited on alive */
  }
  for (i = 0; i < n; i++) {
    w->nwaits = (uint16_t)(i + 1);
    if (arm_prepared(L, rt, &waits[i])) { /* ready already */
      detach_all(rt, w);
      w->nwaits = 0;
      w->waits = NULL;
      lua_pushinteger(L, i + 1);
      return 1;
    }
  }
  if (ismain) {
    int fired = park_main(L, rt, w, fname);
    w->waits = NULL;
    lua_pushinteger(L, fired);
    return 1;
  }
  push_anchored(L, rt, rt->current); /* the task anchors its waits */
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 3);
  lua_pop(L, 1);
  w->state = WS_PARKED;
  rt->nparked++;
  lua_pushlightuserdata(L, rt); /* the token the Lua side yields */
  return 1;
}

/* core._token() -> the value core._park returns when the caller must yield */
static int l_token(lua_State *L) {
  lua_pushlightuserdata(L, lc_rt(L));
  return 1;
}

/* core._in_task() -> boolean: is the running coroutine a task? */
static int l_in_task(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_pushboolean(L, rt->current != NULL && rt->current->co == L);
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** Task methods
** ======================================================================= */

static lc_task *check_task(lua_State *L, int idx, const char *fname) {
  lc_task *t = test_task(L, idx);
  if (t == NULL) lc_typeerror(L, idx, fname, "task");
  return t;
}

/* core._results(task) -> the values fn returned, or nil, err */
static int l_results(lua_State *L) {
  lc_task *t = check_task(L, 1, "wait");
  int n, i;
  if (t->status == TS_RUNNING) return 0;
  if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) return 0; /* none */
  lua_getfield(L, -1, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++) lua_rawgeti(L, 2, i);
  return n;
}

/* task:status() -> "running" | "ok" | "failed" */
static int l_task_status(lua_State *L) {
  lc_task *t = check_task(L, 1, "status");
  lua_pushstring(L, t->status == TS_RUNNING ? "running"
                    : t->status == TS_OK    ? "ok"
                                            : "failed");
  return 1;
}

static int l_task_tostring(lua_State *L) {
  lc_task *t = check_task(L, 1, "tostring");
  lua_pushfstring(L, "context.task (%s): %p",
                  t->status == TS_RUNNING ? "running"
                  : t->status == TS_OK    ? "ok"
                                          : "failed",
                  (void *)t);
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** after_func, signal, on_error
** ======================================================================= */

static int l_stop(lua_State *L) {
  lc_callback *cb = (lc_callback *)lua_touserdata(L, lua_upvalueindex(1));
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, lua_upvalueindex(2));
  if (cb->w.state == WS_PARKED || cb->w.state == WS_READY) {
    if (cb->w.state == WS_PARKED) detach_all(rt, &cb->w);
    cb->w.state = WS_DONE;
    rt->ncallbacks--;
    if (cb->weak) {
      lua_getiuservalue(L, lua_upvalueindex(1), 2);
      keep_chain(L, rt, -1, lua_upvalueindex(1), 0);
      lua_pop(L, 1);
      cb->weak = 0;
    }
    unanchor(L, rt, cb);
    lua_pushboolean(L, 1);
  } else
    lua_pushboolean(L, 0);
  return 1;
}

/* __gc of callbacks: one that can never run any more is not pending */
static int l_callback_gc(lua_State *L) {
  lc_callback *cb = (lc_callback *)lua_touserdata(L, 1);
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, lua_upvalueindex(1));
  if (cb->w.state == WS_PARKED || cb->w.state == WS_READY) {
    cb->w.state = WS_DONE;
    rt->ncallbacks--;
  }
  return 0;
}

/* context.after_func(ctx, fn) -> stop */
static int l_after_func(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c = lc_checkctx(L, 1, "after_func");
  lc_callback *cb;
  if (!iscallable(L, 2)) lc_typeerror(L, 2, "after_func", "function");
  cb = new_callback(L, WK_CALLBACK);
  rt->ncallbacks++;
  if (arm_ctx(L, rt, &cb->wait, c)) { /* done already: runs soon */
    anchor(L, rt, -1);
    push_ready(rt, &cb->w);
  } else {
    cb->w.state = WS_PARKED;
    if (c->cn != NULL) /* its deadline, or a cancel, will run it */
      keep_callback(L, rt, cb, cancel_only(c));
    if (c->cn == NULL || cb->weak) {
      /* it may be collected unrun: a finaliser keeps the count right */
      lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_cbmt);
      lua_setmetatable(L, -2);
    }
  }
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_stop, 2);
  return 1;
}

static const struct {
  const char *name;
  int signum;
} signames[] = {
  {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
  {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"ALRM", SIGALRM}, {"PIPE", SIGPIPE},
  {"CHLD", SIGCHLD}, {"WINCH", SIGWINCH}, {NULL, 0}
};

static int signum_of(lua_State *L, int idx, const char **name) {
  const char *s = lua_tostring(L, idx);
  int i;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (i = 0; signames[i].name != NULL; i++)
    if (strcmp(s, signames[i].name) == 0) {
      *name = signames[i].name;
      return signames[i].signum;
    }
  return 0;
}

static void signal_cb(struct ev_loop *loop, ev_signal *sw, int revents) {
  lc_sigctx *s = (lc_sigctx *)sw->data;
  lc_runtime *rt = s->rt;
  lua_State *L = rt->L;
  ctx_node *n = s->c->cn;
  const char *name = "?";
  int i;
  (void)loop;
  (void)revents;
  if (n == NULL || n->err != CTX_ERR_NONE) return;
  for (i = 0; signames[i].name != NULL; i++)
    if (signames[i].signum == sw->signum) name = signames[i].name;
  /* record the cause on the context, then cancel it */
  push_anchored(L, rt, s);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_causes);
  lua_getiuservalue(L, -2, 1);
  lua_pushfstring(L, "signal SIG%s", name);
  lua_rawset(L, -3);
  lua_pop(L, 2);
  ctx_cancel(&rt->tree, n, CTX_ERR_CANCELED);
  host_drain(rt);
}

/* context.signal(parent, "INT", "TERM", ...) -> ctx, cancel */
static int l_signal(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int n = lua_gettop(L) - 1, i, ctxidx;
  lc_sigctx *s;
  lc_ctx *c;
  const char *name;
  lc_checkctx(L, 1, "signal");
  if (n < 1) lc_argerror(L, 2, "signal", "signal name expected");
  need_loop(L, rt);
  for (i = 2; i <= n + 1; i++)
    if (signum_of(L, i, &name) == 0)
      lc_argerror(L, i, "signal",
                  lua_pushfstring(L, "unknown signal '%s'", luaL_tolstring(L, i, NULL)));
  lua_settop(L, n + 1);
  /* the context: with_cancel(parent) */
  lua_getfield(L, lc_uv(LC_UV_CTXMT), "__index");
  lua_getfield(L, -1, "with_cancel");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 2);
  lua_remove(L, -3);
  ctxidx = lua_gettop(L) - 1;
  c = (lc_ctx *)lua_touserdata(L, ctxidx);
  s = (lc_sigctx *)lua_newuserdatauv(
      L, sizeof(lc_sigctx) + (size_t)(n - 1) * sizeof(ev_signal), 1);
  memset(s, 0, sizeof *s);
  init_single(&s->w, &s->wait, WK_SIGNAL);
  s->rt = rt;
  s->c = c;
  s->nsig = n;
  lua_pushvalue(L, ctxidx);
  lua_setiuservalue(L, -2, 1);
  if (arm_ctx(L, rt, &s->wait, c)) { /* parent already done */
    lua_pop(L, 1);
    return 2;
  }
  anchor(L, rt, -1);
  s->w.state = WS_PARKED;
  for (i = 0; i < n; i++) {
    ev_signal_init(&s->sig[i], signal_cb, signum_of(L, i + 2, &name));
    s->sig[i].data = s;
    ev_signal_start(rt->loop, &s->sig[i]);
  }
  s->active = 1;
  rt->nsig++;
  lua_pop(L, 1);
  return 2;
}

/* context.on_error(fn | nil) -> the previous handler */
static int l_on_error(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  if (!lua_isnoneornil(L, 1) && !iscallable(L, 1))
    lc_typeerror(L, 1, "on_error", "function or nil");
  if (rt->ref_onerror != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_onerror);
  else
    lua_pushnil(L);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->ref_onerror);
  rt->ref_onerror = LUA_NOREF;
  if (!lua_isnoneornil(L, 1)) {
    lua_pushvalue(L, 1);
    rt->ref_onerror = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 1;
}

/* context.stats() -> table of scheduler figures */
static int l_sched_stats(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)rt->ntasks);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, (lua_Integer)tw_count(&rt->wheel));
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, (lua_Integer)rt->nio);
  lua_setfield(L, -2, "fd_waits");
  lua_pushinteger(L, (lua_Integer)rt->nsig);
  lua_setfield(L, -2, "signal_contexts");
  lua_pushinteger(L, (lua_Integer)rt->resumed);
  lua_setfield(L, -2, "resumed");
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** Set-up and tear-down
** ======================================================================= */

void lc_sched_init(lua_State *L, lc_runtime *rt) {
  rt->L = lc_mainthread(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LCONTEXT_LOOP_KEY);
  rt->loop = (struct ev_loop *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  /* NULL: libev's default loop, taken when first needed (need_loop) */
  tw_init(&rt->wheel, clk_mono_ns());
  ev_timer_init(&rt->wtimer, wtimer_cb, 0.0, 0.0);
  rt->wtimer.data = rt;
  rt->wtimer_at = TW_NEVER;
  ev_idle_init(&rt->idle, idle_cb);
  rt->idle.data = rt;
  ev_timer_init(&rt->steptimer, step_cb, 0.0, 0.0);
  rt->ready = NULL;
  rt->ready_tail = &rt->ready;
  rt->ref_onerror = LUA_NOREF;
  lua_newtable(L);
  rt->ref_anchors = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_weak_table(L, "k"); /* keep: an ephemeron table */
  rt->ref_keep = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_weak_table(L, "v"); /* weakcb */
  rt->ref_weakcb = luaL_ref(L, LUA_REGISTRYINDEX);
  rt->to_anchor = NULL;
  lua_createtable(L, 0, 1); /* the metatable of callbacks */
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, l_callback_gc, 1);
  lua_setfield(L, -2, "__gc");
  rt->ref_cbmt = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_metrics_init(L, rt);
  rt->tree.on_done = on_done;
  rt->tree.ud = rt;
}

/* __gc of the runtime (lua_close): stop every watcher it started */
int lc_runtime_gc(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 1);
  if (rt->closed || rt->loop == NULL) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TLIGHTUSERDATA) {
        lc_waiter *w = (lc_waiter *)lua_touserdata(L, -2);
        if (w->state == WS_PARKED) detach_all(rt, w);
        if (w->kind == WK_SIGNAL) stop_signals(rt, (lc_sigctx *)w);
        w->state = WS_DONE;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (ev_is_active(&rt->wtimer)) ev_timer_stop(rt->loop, &rt->wtimer);
  if (ev_is_active(&rt->idle)) ev_idle_stop(rt->loop, &rt->idle);
  if (ev_is_active(&rt->steptimer)) ev_timer_stop(rt->loop, &rt->steptimer);
  rt->closed = 1;
  return 0;
}

const luaL_Reg lc_sched_funcs[] = {
  {"go", l_go},
  {"run", l_run},
  {"step", l_step},
  {"after_func", l_after_func},
  {"signal", l_signal},
  {"on_error", l_on_error},
  {"sched_stats", l_sched_stats},
  {"_park", l_park},
  {"_watch", l_watch},
  {"_unwatch", l_unwatch},
  {"_advance", l_advance},
  {"_next_wakeup", l_next_wakeup},
  {"_token", l_token},
  {"_in_task", l_in_task},
  {"_results", l_results},
  {NULL, NULL}
};

const luaL_Reg lc_task_methods[] = {
  {"status", l_task_status},
  {NULL, NULL}
};

const luaL_Reg lc_task_meta[] = {
  {"__tostring", l_task_tostring},
  {NULL, NULL}
};
