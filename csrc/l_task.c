/*
** l_task.c — tasks: coroutines run by the loop (README, "Scheduler").
**
** A task is anchored (rt->ref_anchors) from context.go until it ends, so
** nothing it waits on or holds can be collected while it may still run. It
** is resumed on the main thread by the loop (l_loop.c drains the ready
** queue); it suspends by yielding the token core._park hands back.
**
** Ending a task allocates nothing: its results stay on its coroutine's
** stack (user value 1) and are read from there by task:wait().
**
** A task whose coroutine is closed from outside (coroutine.close, 5.4)
** while it waits is found by lc_sweep_closed, which the loop runs before it
** blocks (and at least every 50 ms while tasks wait): its waits are
** released and it ends as failed ("task's coroutine was closed").
*/
#include <stdio.h>
#include <limits.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

#if LUA_VERSION_NUM >= 504 && defined(LUA_VERSION_RELEASE_NUM) && \
    LUA_VERSION_RELEASE_NUM >= 50406
#define lc_closethread(co, L) lua_closethread(co, L)
#elif LUA_VERSION_NUM >= 504
#define lc_closethread(co, L) lua_resetthread(co)
#else
#define lc_closethread(co, L) ((void)(co), (void)(L)) /* no <close> to run */
#endif

/* why a task failed without an error value of its own */
enum { TR_NONE, TR_CLOSED, TR_DEAD };

lc_task *lc_testtask(lua_State *L, int idx, const lc_runtime *rt) {
  lc_task *t = (lc_task *)lua_touserdata(L, idx);
  if (t != NULL && lua_getmetatable(L, idx)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == rt->taskmt) return t;
  }
  return NULL;
}

static lc_task *check_task(lua_State *L, int idx, const char *fname) {
  lc_task *t = lc_testtask(L, idx, lc_rt(L));
  if (t == NULL) lc_typeerror(L, idx, fname, "task");
  return t;
}

/* {======================================================================
** Errors that must reach the caller of run/step (an interrupt, a memory
** error raised inside the loop): kept in a preallocated box until then
** ======================================================================= */

/* [-0, +0, -] remember the value at idx (never allocates) */
void lc_pending_error(lua_State *L, lc_runtime *rt, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_pending);
  lua_rawgeti(L, -1, 1);
  if (lua_toboolean(L, -1) == 0 && !lua_isnil(L, idx)) { /* the first wins */
    lua_pushvalue(L, idx);
    lua_rawseti(L, -3, 1);
  }
  lua_pop(L, 2);
}

/* [-0, +(0|1), -] push the pending error and forget it (1), or nothing (0) */
int lc_take_pending(lua_State *L, lc_runtime *rt) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_pending);
  lua_rawgeti(L, -1, 1);
  if (lua_toboolean(L, -1) == 0) {
    lua_pop(L, 2);
    return 0;
  }
  lua_pushboolean(L, 0);
  lua_rawseti(L, -3, 1);
  lua_remove(L, -2);
  return 1;
}

/* is an error pending? (looks, takes nothing) */
int lc_has_pending(lua_State *L, lc_runtime *rt) {
  int r;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_pending);
  lua_rawgeti(L, -1, 1);
  r = lua_toboolean(L, -1);
  lua_pop(L, 2);
  return r;
}

/* raise the pending error, if any (once the caller made everything
** consistent again) */
void lc_raise_pending(lua_State *L, lc_runtime *rt) {
  if (lc_take_pending(L, rt)) lua_error(L);
}

/* }====================================================================== */

/* {======================================================================
** Making and running tasks
** ======================================================================= */

/* [-0, +1, m] a new task running the function at fidx with n arguments
** after it; queued, not started. Everything is allocated before the task
** counts or is queued. */
lc_task *lc_new_task(lua_State *L, lc_runtime *rt, int fidx, int n) {
  lc_task *t;
  lua_State *co;
  fidx = lua_absindex(L, fidx);
  luaL_checkstack(L, n + 4, "too many arguments");
  t = (lc_task *)lua_newuserdatauv(L, sizeof(lc_task), LC_TASK_NUV);
  memset(t, 0, sizeof *t);
  wt_waiter_init(&t->w, WK_TASK, 1);
  t->status = TS_RUNNING;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_taskmt);
  lua_setmetatable(L, -2);
  co = lua_newthread(L);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, fidx); /* its function, for context.dump */
  lua_setiuservalue(L, -2, 5);
  luaL_checkstack(co, n + 1, "too many arguments");
  lua_pushvalue(L, fidx);
  lua_xmove(L, co, 1);
  if (n > 0) {
    int i;
    for (i = 1; i <= n; i++) lua_pushvalue(L, fidx + i);
    lua_xmove(L, co, n);
  }
  t->co = co;
  t->nargs = n;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_anchor(L, rt, -1);
  rt->ntasks++;
  t->tnext = rt->tasks; /* the list of live tasks */
  if (t->tnext != NULL) t->tnext->tpprev = &t->tnext;
  t->tpprev = &rt->tasks;
  rt->tasks = t;
  wt_push(&rt->sched, &t->w);
  return t;
}

/* [-2, +1, m] lc_new_task as a Lua function: (fn, rt) -> task */
int lc_new_task_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 2);
  lua_settop(L, 1);
  lc_new_task(L, rt, 1, 0);
  return 1;
}

/* context.go(fn, ...) -> task */
static int l_go(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  if (!lc_iscallable(L, 1)) lc_typeerror(L, 1, "go", "function");
  if (rt->closed) return luaL_error(L, "context.go: the state is closing");
  lc_new_task(L, rt, 1, lua_gettop(L) - 1);
  return 1;
}

/* [-1, +1, e] tostring(v), as luaL_tolstring does it */
static int tostring_p(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* [-4, +0, e] the protected part of report: err, co, task, rt. The
** handler gets the error value itself; the traceback is headed by its
** text, or, when its __tostring raises or gives no string, by lua.c's
** "(error object is a %s value)". */
static int report_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 4);
  lua_State *co = lua_tothread(L, 2);
  const char *msg;
  if (lua_type(L, 1) == LUA_TSTRING) {
    msg = lua_tostring(L, 1);
  } else {
    lua_pushcfunction(L, tostring_p);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    msg = lua_tostring(L, -1);
  }
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

/* Report the error on top (raised in the task at taskidx, coroutine co) to
** the handler (default: stderr). Whatever the handler (or a __tostring)
** does, the loop goes on. Pops the error. */
static void report(lua_State *L, lc_runtime *rt, lua_State *co, int taskidx) {
  int err = lua_gettop(L);
  lua_pushcfunction(L, report_p);
  lua_pushvalue(L, err);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, taskidx);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    lc_report("error while reporting an error in a task", L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, err - 1);
}

/* A task ended: wake who waits on it, release it. Allocates nothing. */
static void finish(lua_State *L, lc_runtime *rt, lc_task *t, int status,
                   int reason) {
  t->status = (uint8_t)status;
  t->reason = (uint8_t)reason;
  wt_release(&rt->sched, &t->w);
  if (t->sync != NULL) /* blocked in a channel/semaphore call (l_sync.c) */
    rt->sync_abandon(L, rt, t);
  t->w.state = WT_DONE;
  wt_source_end(&rt->sched, &t->end);
  rt->ntasks--;
  *t->tpprev = t->tnext;
  if (t->tnext != NULL) t->tnext->tpprev = t->tpprev;
  t->tnext = NULL;
  t->tpprev = NULL;
  lc_unanchor(L, rt, t);
  luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
}

/* After t ended: its end function (core._on_end: context.spawn cancels the
** task's context), if any, runs once, protected, given the error the task
** raised (nil if it returned); an error in it is reported. */
static void run_on_end(lua_State *L, lc_runtime *rt, int taskidx) {
  (void)rt;
  lua_pushnil(L); /* its function is not kept once it has ended */
  lua_setiuservalue(L, taskidx, 5);
  lua_getiuservalue(L, taskidx, 4);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  lua_setiuservalue(L, taskidx, 4);
  /* its argument: the error it raised (nil when it returned) */
  if (((lc_task *)lua_touserdata(L, taskidx))->status == TS_FAILED)
    lua_getiuservalue(L, taskidx, 2);
  else
    lua_pushnil(L);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lc_report("error in the end function of a task", L, -1);
    lua_pop(L, 1);
  }
}

/* Resume t (popped from the ready queue: RUNNING). The values it gets: its
** function and arguments at the first run; the index of the wait that
** fired (negated if it is an fd that cannot be waited on) after a park; nothing
** after a yield that was not lcontext's. */
void lc_resume_task(lua_State *L, lc_runtime *rt, lc_task *t) {
  lua_State *co = t->co;
  int nres = 0, st, nargs, taskidx, first = t->nargs >= 0, runnable;
  lc_push_task(L, t);
  taskidx = lua_gettop(L);
  if (t->closed)
    runnable = 0;
  else if (lua_status(co) == LUA_YIELD)
    runnable = !first;
  else if (lua_status(co) == LUA_OK)
    runnable = first && lua_gettop(co) == t->nargs + 1;
  else
    runnable = 0;
  if (!runnable) { /* closed from outside, or run to its end by another */
    finish(L, rt, t, TS_FAILED, t->closed || lua_status(co) == LUA_OK
                                    ? TR_CLOSED : TR_DEAD);
    run_on_end(L, rt, taskidx);
    lua_settop(L, taskidx - 1);
    return;
  }
  if (first)
    nargs = t->nargs;
  else if (t->w.fired == 0)
    nargs = 0; /* after a yield that was not ours */
  else {
    lc_wait *x = &t->w.waits[t->w.fired - 1];
    int ioerr = x->src == WS_IO && (x->u.io.revents & WT_IO_ERROR);
    lua_pushinteger(co, ioerr ? -(int)t->w.fired : t->w.fired);
    nargs = 1;
  }
  t->nargs = -1;
  rt->current = t;
  rt->resumed++;
  st = lua_resume(co, L, nargs, &nres);
  rt->current = NULL;
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (t->w.state != WT_PARKED) { /* a yield that is not ours: again */
      t->w.fired = 0;
      wt_push(&rt->sched, &t->w);
    }
  } else if (st == LUA_OK) {
    t->nres = nres;
    finish(L, rt, t, TS_OK, TR_NONE);
    run_on_end(L, rt, taskidx);
  } else { /* it raised: the error goes to user value 2, for task:wait() */
    const void *e = lua_topointer(co, -1);
    int sentinel = e != NULL && (e == rt->canceled_p || e == rt->deadline_p);
    lua_xmove(co, L, 1);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, taskidx, 2); /* a slot of its own: no allocation */
    finish(L, rt, t, TS_FAILED, TR_NONE);
    if (!sentinel)
      report(L, rt, co, taskidx);
    run_on_end(L, rt, taskidx);
    lc_closethread(co, L); /* runs its pending <close>s */
  }
  lua_settop(L, taskidx - 1);
}

/* Tasks whose coroutine was closed from outside (coroutine.close) while
** they waited: release their waits and queue them, so that the loop ends
** them. Returns how many it found. O(live tasks). */
int lc_sweep_closed(lc_runtime *rt) {
  lc_task *t;
  int found = 0;
  for (t = rt->tasks; t != NULL; t = t->tnext) {
    lua_State *co = t->co;
    /* a parked task's coroutine is suspended in a yield; if it is not,
    ** it was closed (whatever its __close handlers left on its stack) */
    if (t->w.state == WT_PARKED && !t->closed && lua_status(co) != LUA_YIELD) {
      t->closed = 1;
      wt_push(&rt->sched, &t->w);
      found++;
    }
  }
  return found;
}

/* }====================================================================== */

/* {======================================================================
** Task methods
** ======================================================================= */

/* core._results(task) -> the values fn returned, or nil, err; nothing
** while the task runs */
static int l_results(lua_State *L) {
  lc_task *t = check_task(L, 1, "wait");
  lua_State *co;
  int n, i, top;
  if (t->status == TS_RUNNING) return 0;
  if (t->status == TS_FAILED) {
    lua_pushnil(L);
    if (t->reason == TR_CLOSED)
      lua_pushliteral(L, "task's coroutine was closed");
    else if (t->reason == TR_DEAD)
      lua_pushliteral(L, "task's coroutine is dead");
    else
      lua_getiuservalue(L, 1, 2);
    return 2;
  }
  lua_getiuservalue(L, 1, 1);
  co = lua_tothread(L, -1);
  lua_pop(L, 1);
  top = co != NULL ? lua_gettop(co) : 0;
  n = t->nres < top ? t->nres : top; /* the top n values of co */
  luaL_checkstack(L, n + 1, "too many results");
  if (!lua_checkstack(co, 1)) return luaL_error(L, "too many results");
  for (i = top - n + 1; i <= top; i++) {
    lua_pushvalue(co, i);
    lua_xmove(co, L, 1);
  }
  return n;
}

static const char *status_name(const lc_task *t) {
  return t->status == TS_RUNNING ? "running"
         : t->status == TS_OK    ? "ok"
                                 : "failed";
}

/* task:status() -> "running" | "ok" | "failed" */
static int l_task_status(lua_State *L) {
  lc_task *t = check_task(L, 1, "status");
  lua_pushstring(L, status_name(t));
  return 1;
}

static int l_task_tostring(lua_State *L) {
  lc_task *t = check_task(L, 1, "tostring");
  lua_pushfstring(L, "context.task (%s): %p", status_name(t), (void *)t);
  return 1;
}

/* core._in_task() -> boolean: is the running coroutine a task? */
static int l_in_task(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_pushboolean(L, rt->current != NULL && rt->current->co == L);
  return 1;
}

/* context.on_error(fn | nil) -> the previous handler */
static int l_on_error(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  if (!lua_isnoneornil(L, 1) && !lc_iscallable(L, 1))
    lc_typeerror(L, 1, "on_error", "function or nil");
  if (rt->ref_onerror != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_onerror);
  else
    lua_pushnil(L);
  if (!lua_isnoneornil(L, 1)) {
    int ref;
    lua_pushvalue(L, 1);
    ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may fail: nothing changed yet */
    luaL_unref(L, LUA_REGISTRYINDEX, rt->ref_onerror);
    rt->ref_onerror = ref;
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, rt->ref_onerror);
    rt->ref_onerror = LUA_NOREF;
  }
  return 1;
}

/* }====================================================================== */

/* (rt->ref_taskmt is set by luaopen) */
void lc_task_init(lua_State *L, lc_runtime *rt) {
  lua_createtable(L, 1, 0); /* the pending-error box */
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 1);
  rt->ref_pending = luaL_ref(L, LUA_REGISTRYINDEX);
  rt->ref_onerror = LUA_NOREF;
}

/* core._on_end(task, fn): fn(err) runs once the task has ended (at once if
** it has); err: what it raised, nil if it returned */
static int l_on_end(lua_State *L) {
  lc_task *t = check_task(L, 1, "_on_end");
  if (!lc_iscallable(L, 2)) lc_typeerror(L, 2, "_on_end", "function");
  lua_settop(L, 2);
  if (t->status != TS_RUNNING) {
    if (t->status == TS_FAILED)
      lua_getiuservalue(L, 1, 2);
    else
      lua_pushnil(L);
    lua_call(L, 1, 0);
    return 0;
  }
  lua_setiuservalue(L, 1, 4);
  return 0;
}

/* core._tasks() -> a list of the live tasks (for context.dump) */
static int l_tasks(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_task *t;
  lua_Integer i = 0;
  lua_createtable(L, rt->ntasks > 0 && rt->ntasks < INT_MAX ? (int)rt->ntasks : 0, 0);
  for (t = rt->tasks; t != NULL; t = t->tnext) {
    lc_push_anchored(L, rt, t);
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* core._task_waits(task) -> state, seconds parked, waits | nil. state:
** "parked", "ready" (woken, queued), "running" (the caller), "ended";
** waits: a list of { kind = "ctx" | "task" | "sleep" | "fd", value =
** what is waited on, due = seconds left (sleep), fd =, mode = } */
static int l_task_waits(lua_State *L) {
  lc_task *t = check_task(L, 1, "_task_waits");
  int i;
  const char *st;
  if (t->status != TS_RUNNING) st = "ended";
  else if (t->w.state == WT_PARKED) st = "parked";
  else if (t->w.state == WT_READY) st = "ready";
  else st = "running";
  lua_pushstring(L, st);
  if (t->w.state != WT_PARKED || t->status != TS_RUNNING) return 1;
  lua_pushnumber(L, (lua_Number)(lc_now(lc_rt(L)) - t->parked_at) / 1e9);
  if (t->sync != NULL) { /* in a channel or semaphore call (l_sync.c) */
    lc_rt(L)->sync_waits(L, lc_rt(L), t, 1);
    return 3;
  }
  lua_createtable(L, t->w.nwaits, 0);
  lua_getiuservalue(L, 1, 3); /* the waits' userdata: its user values are the waitables */
  for (i = 0; i < t->w.nwaits; i++) {
    if (lua_type(L, -1) == LUA_TUSERDATA)
      lc_push_wait_entry(L, &t->w.waits[i], lua_gettop(L), i + 1);
    else
      lc_push_wait_entry(L, &t->w.waits[i], 0, 0);
    lua_rawseti(L, -3, i + 1);
  }
  lua_pop(L, 1);
  return 3;
}

/* [-0, +1, m] context.dump's entry for the wait x: { kind = "ctx" | "task"
** | "sleep" | "fd", value = user value uv of the userdata at holder (0:
** none), due = seconds left (sleep), fd =, mode = } */
void lc_push_wait_entry(lua_State *L, lc_wait *x, int holder, int uv) {
  lua_createtable(L, 0, 4);
  switch (x->src) {
  case WS_CTX: lua_pushliteral(L, "ctx"); break;
  case WS_SLEEP: lua_pushliteral(L, "sleep"); break;
  case WS_IO: lua_pushliteral(L, "fd"); break;
  case WS_SOURCE: lua_pushliteral(L, "task"); break;
  default: lua_pushliteral(L, "none"); break;
  }
  lua_setfield(L, -2, "kind");
  if (holder != 0) {
    lua_getiuservalue(L, holder, uv);
    lua_setfield(L, -2, "value");
  }
  if (x->src == WS_SLEEP) {
    lua_pushnumber(L, (lua_Number)(x->u.t.e.expires - lc_now(lc_rt(L))) / 1e9);
    lua_setfield(L, -2, "due");
  } else if (x->src == WS_IO) {
    lua_pushinteger(L, x->u.io.fd);
    lua_setfield(L, -2, "fd");
    lua_pushstring(L, x->u.io.events == WT_IO_READ ? "r"
                      : x->u.io.events == WT_IO_WRITE ? "w" : "rw");
    lua_setfield(L, -2, "mode");
  }
}

/* core._task_thread(task) -> its coroutine, its function */
static int l_task_thread(lua_State *L) {
  check_task(L, 1, "_task_thread");
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, 1, 5);
  return 2;
}

const luaL_Reg lc_task_funcs[] = {
  {"_tasks", l_tasks},
  {"_task_waits", l_task_waits},
  {"_task_thread", l_task_thread},
  {"_on_end", l_on_end},
  {"go", l_go},
  {"on_error", l_on_error},
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
