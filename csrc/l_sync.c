/*
** l_sync.c — channels and semaphores in C, for the libev backend on Lua
** 5.3 and 5.4 (README, "Structured concurrency"; docs/concurrency.md).
** lua/lcontext/sync.lua puts its public API on these objects where they
** exist; on Lua 5.1, LuaJIT and in nginx it keeps its own Lua version,
** which follows the same rules and passes the same specs.
**
** A call that cannot complete at once is a record (lc_crec) in the
** object's queue, owned by its call (lc_sel). The task parks on its ctx,
** its bound and the call's source (sel.src), and yields from C
** (lua_yieldk): no Lua frame and no allocation per blocked call, the
** records and waits of a single call being part of the task. The other
** side of the operation (a send, a receive, a release, a close) does the
** whole transfer itself, marks the call done and ends its source; the
** woken call only reads its outcome in its continuation. So:
**   - done wins: an operation completed stays completed, whatever ended
**     the wait meanwhile (a close carries no value: then ctx comes first);
**   - a call that leaves unfinished unlinks its records before it returns:
**     a case that loses leaves nothing behind;
**   - the ctx (and the bound of a spawned task) is looked at first, even
**     when the operation could complete.
** Values cross between coroutines without a write of their own: a task's
** single send is read from its suspended C frame (argument 3, its top), and a
** value received is pushed onto the receiving task's suspended stack,
** where its continuation finds it; a select (or a call of the main
** thread) keeps them in user values of its own userdata. A task closed from outside while blocked is found
** by whoever walks its queue (or by the loop's sweep) and its records are
** dropped; units granted to it and never taken go back (lc_sync_abandon).
*/
#include <math.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

#if LUA_VERSION_NUM >= 503

typedef struct lc_chan {
  const void *magic; /* &rt->ref_chanmt: what it is (testobj) */
  lc_cq recvq, sendq;
  lua_Integer cap;   /* 0: unbuffered */
  lua_Integer count; /* values buffered (user value 1: slots 1..cap) */
  lua_Integer head;  /* the slot of the oldest */
  int closed;
} lc_chan;

typedef struct lc_sem {
  const void *magic; /* &rt->ref_semmt */
  lc_cq q;
  lua_Integer size, cur;
} lc_sem;

/* A select, or a call of the main thread: its call, records and waits in
** one userdata. User values: 1..nw the waitables (as waits[i - 1]: a
** task's user value 3 for context.dump), then two per record: its payload
** (r->slot) and its object (r->slot + 1). */
typedef struct lc_selud {
  lc_sel sel;
  lc_waiter mainw;  /* the main thread's waiter */
  lc_wait *waits;
  int *map;         /* waits[j] is argument map[j]; 0: sel.src, -1: the bound */
  uint16_t nw;
} lc_selud;

static const char *const kind_names[] = {"?", "send", "recv", "acquire"};

/* {======================================================================
** Queues, calls, completion
** ======================================================================= */

static void cq_push(lc_cq *q, lc_crec *r) {
  r->q = q;
  r->prev = q->tail;
  r->next = NULL;
  if (q->tail != NULL) q->tail->next = r; else q->head = r;
  q->tail = r;
  q->n++;
}

static void cq_remove(lc_crec *r) {
  lc_cq *q = r->q;
  if (q == NULL) return;
  if (r->prev != NULL) r->prev->next = r->next; else q->head = r->next;
  if (r->next != NULL) r->next->prev = r->prev; else q->tail = r->prev;
  r->q = NULL;
  r->prev = r->next = NULL;
  q->n--;
}

static void sel_unlink(lc_sel *s) {
  uint16_t k;
  for (k = 0; k < s->nrec; k++) cq_remove(&s->recs[k]);
}

/* Is the call of s gone: its task's coroutine closed from outside while it
** waited? Then its records leave every queue and the loop is told to end
** the task (as lc_sweep_closed would). */
static int sel_dead(lc_runtime *rt, lc_sel *s) {
  lc_task *t = s->task;
  if (t == NULL) return 0;
  if (!t->closed && lua_status(t->co) == LUA_YIELD) return 0;
  sel_unlink(s);
  if (!t->closed && t->w.state == WT_PARKED) {
    t->closed = 1;
    wt_push(&rt->sched, &t->w);
  }
  return 1;
}

/* the first record of q whose call still waits */
static lc_crec *q_first(lc_runtime *rt, lc_cq *q) {
  lc_crec *r;
  while ((r = q->head) != NULL) {
    if (r->sel->done)
      cq_remove(r); /* (not reached: a call done leaves every queue) */
    else if (!sel_dead(rt, r->sel))
      return r;
  }
  return NULL;
}

/* r's operation was done by the caller: its call is woken. vidx (0: none)
** is the value a receive gets. Allocates nothing. */
static void complete(lua_State *L, lc_runtime *rt, lc_crec *r, int vidx,
                     int ok) {
  lc_sel *s = r->sel;
  s->done = 1;
  s->fired = r->index;
  s->ok = (uint8_t)ok;
  if (vidx != 0) {
    if (r->slot == 0) { /* a task's single call: onto its suspended stack */
      lua_State *co = s->task->co;
      lua_pushvalue(L, vidx);
      lua_xmove(L, co, 1); /* (its C frame has LUA_MINSTACK slots: room) */
    } else {
      lc_push_anchored(L, rt, s->obj);
      lua_pushvalue(L, vidx);
      lua_setiuservalue(L, -2, r->slot);
      lua_pop(L, 1);
    }
  }
  sel_unlink(s);
  wt_source_end(&rt->sched, &s->src);
}

/* [-0, +1, -] the value r sends */
static void push_payload(lua_State *L, lc_runtime *rt, lc_crec *r) {
  lc_sel *s = r->sel;
  if (r->slot == 0) { /* a task's single send: its argument 3, the top of
    ** its suspended stack (read from the top: while a C function is
    ** suspended, Lua 5.3 shifts its frame's base onto its results) */
    lua_State *co = s->task->co;
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    return;
  }
  lc_push_anchored(L, rt, s->obj);
  lua_getiuservalue(L, -1, r->slot);
  lua_remove(L, -2);
}

/* grant the semaphore's units to the waiters at its head while their
** weight fits (FIFO: the head waits even if a later, smaller one fits) */
static void grant(lua_State *L, lc_runtime *rt, lc_sem *sem) {
  lc_crec *r;
  while ((r = q_first(rt, &sem->q)) != NULL && sem->size - sem->cur >= r->weight) {
    sem->cur += r->weight;
    complete(L, rt, r, 0, 1);
  }
}

/* }====================================================================== */

/* {======================================================================
** Checks
** ======================================================================= */

/* the name check.tname gives (a protected metatable's string, __name, or
** the type); may push a string */
static const char *tname(lua_State *L, int idx) {
  if (luaL_getmetafield(L, idx, "__metatable") != LUA_TNIL) {
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  if (luaL_getmetafield(L, idx, "__name") != LUA_TNIL) {
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  return lua_type(L, idx) == LUA_TNONE ? "nil" : luaL_typename(L, idx);
}

/* the channel or semaphore at idx, or NULL: a full userdata of its size
** whose first field is the address of its kind in the runtime (memory of
** this module's own that no other userdata can hold by chance, and that
** Lua code cannot write), which is cheaper to check than the metatable */
static void *testobj(lua_State *L, int idx, const void *magic, size_t size) {
  void *p;
  if (lua_type(L, idx) != LUA_TUSERDATA || lua_rawlen(L, idx) != size)
    return NULL;
  p = lua_touserdata(L, idx);
  return *(const void *const *)p == magic ? p : NULL;
}
#define testchan(L, idx, rt) \
  ((lc_chan *)testobj((L), (idx), &(rt)->ref_chanmt, sizeof(lc_chan)))
#define testsem(L, idx, rt) \
  ((lc_sem *)testobj((L), (idx), &(rt)->ref_semmt, sizeof(lc_sem)))

static lc_chan *check_chan(lua_State *L, lc_runtime *rt, const char *fname) {
  lc_chan *ch = testchan(L, 1, rt);
  if (ch == NULL)
    luaL_error(L, "calling '%s' on bad self (context.channel expected, got %s)",
               fname, tname(L, 1));
  return ch;
}

static lc_sem *check_sem(lua_State *L, lc_runtime *rt, const char *fname) {
  lc_sem *sem = testsem(L, 1, rt);
  if (sem == NULL)
    luaL_error(L, "calling '%s' on bad self (context.semaphore expected, got %s)",
               fname, tname(L, 1));
  return sem;
}

/* the context at idx, argument #n of fname as check.ctx numbers it */
static lc_ctx *check_ctx(lua_State *L, lc_runtime *rt, int idx,
                         const char *fname, int n) {
  lc_ctx *c = lc_testctx_rt(L, idx, rt);
  if (c == NULL)
    luaL_error(L, "bad argument #%d to '%s' (context expected, got %s)", n,
               fname, tname(L, idx));
  return c;
}

/* a weight at idx (default 1), argument #n of fname */
static lua_Integer check_weight(lua_State *L, lc_sem *sem, int idx,
                                const char *fname, int n) {
  lua_Number d;
  if (lua_isnoneornil(L, idx)) return 1;
  d = lua_tonumber(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER || d != floor(d) || d < 1) {
    luaL_tolstring(L, idx, NULL);
    luaL_error(L, "bad argument #%d to '%s' (weight must be a positive "
               "integer, got %s)", n, fname, lua_tostring(L, -1));
  }
  if (d > (lua_Number)sem->size)
    luaL_error(L, "bad argument #%d to '%s' (weight %I exceeds the "
               "semaphore's size %I)", n, fname, (lua_Integer)d, sem->size);
  return (lua_Integer)d;
}

/* the running task, or NULL (the main thread, a coroutine not run by
** lcontext) */
static lc_task *running_task(lua_State *L, lc_runtime *rt) {
  lc_task *t = rt->current;
  return t != NULL && t->co == L ? t : NULL;
}

static int is_main(lua_State *L) {
  int m = lua_pushthread(L);
  lua_pop(L, 1);
  return m;
}

/* [-0, +1, -] the bound of the running coroutine: t's, or the main's */
static void push_bound(lua_State *L, lc_runtime *rt, lc_task *t) {
  if (t != NULL) {
    lc_push_task(L, t);
    lua_getiuservalue(L, -1, LC_TUV_BOUND);
    lua_remove(L, -2);
  } else
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_mainbound);
}

static lc_ctx *bound_of(lua_State *L, lc_runtime *rt, lc_task *t) {
  if (t != NULL) return t->bound;
  if (rt->main_bound != NULL && is_main(L)) return rt->main_bound;
  return NULL;
}

/* the err of the bound of the running coroutine (0: none, or not done) */
static int bound_err(lua_State *L, lc_runtime *rt, lc_task *t) {
  lc_ctx *b = bound_of(L, rt, t);
  int e;
  if (b == NULL || b->cn == NULL) return CTX_ERR_NONE;
  if (b->cn->err != CTX_ERR_NONE || b->cn->deadline == CTX_NEVER)
    return b->cn->err;
  push_bound(L, rt, t);
  e = lc_ctx_err(L, rt, b, lua_gettop(L));
  lua_pop(L, 1);
  return e;
}

/* ctx's err (at idx), else the bound's */
static int err_of(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx,
                  lc_task *t) {
  int e = lc_ctx_err(L, rt, c, idx);
  return e != CTX_ERR_NONE ? e : bound_err(L, rt, t);
}

static int fail(lua_State *L, int e) {
  lua_pushnil(L);
  lc_push_err(L, e);
  return 2;
}

static int closed_send(lua_State *L) {
  return luaL_error(L, "context.channel: send on a closed channel");
}

static long *blocked_counter(lc_runtime *rt, int kind) {
  return kind == LC_CR_SEND ? &rt->sync_blocked_send
         : kind == LC_CR_RECV ? &rt->sync_blocked_recv
                              : &rt->sync_blocked_acquire;
}

/* }====================================================================== */

/* {======================================================================
** Channels: what completes at once
** ======================================================================= */

static void buf_push(lua_State *L, lc_chan *ch, int chidx, int vidx) {
  lua_Integer i = ch->head + ch->count;
  if (i > ch->cap) i -= ch->cap;
  lua_getiuservalue(L, chidx, 1);
  lua_pushvalue(L, vidx);
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
  ch->count++;
}

/* [-0, +1, -] the oldest buffered value */
static void buf_pop(lua_State *L, lc_chan *ch, int chidx) {
  lua_getiuservalue(L, chidx, 1);
  lua_rawgeti(L, -1, ch->head);
  lua_pushnil(L);
  lua_rawseti(L, -3, ch->head);
  lua_remove(L, -2);
  ch->head = ch->head == ch->cap ? 1 : ch->head + 1;
  ch->count--;
}

/* send the value at vidx now, if a receiver waits or there is room */
static int try_send(lua_State *L, lc_runtime *rt, lc_chan *ch, int chidx,
                    int vidx) {
  lc_crec *r = q_first(rt, &ch->recvq);
  if (r != NULL) {
    complete(L, rt, r, vidx, 1);
    rt->sync_sends++;
    rt->sync_recvs++;
    return 1;
  }
  if (ch->count < ch->cap) {
    buf_push(L, ch, chidx, vidx);
    rt->sync_sends++;
    return 1;
  }
  return 0;
}

/* [-0, +2 | +0, -] receive now: pushes v, ok and returns 1 (ok false:
** closed and drained), or returns 0 */
static int try_recv(lua_State *L, lc_runtime *rt, lc_chan *ch, int chidx) {
  lc_crec *s;
  if (ch->count > 0) {
    buf_pop(L, ch, chidx);
    s = q_first(rt, &ch->sendq); /* a sender waits for the room just made */
    if (s != NULL) {
      push_payload(L, rt, s);
      buf_push(L, ch, chidx, lua_gettop(L));
      lua_pop(L, 1);
      rt->sync_sends++;
      complete(L, rt, s, 0, 1);
    }
    rt->sync_recvs++;
    lua_pushboolean(L, 1);
    return 1;
  }
  s = q_first(rt, &ch->sendq);
  if (s != NULL) { /* unbuffered: straight from the sender */
    push_payload(L, rt, s);
    rt->sync_sends++;
    rt->sync_recvs++;
    complete(L, rt, s, 0, 1);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (ch->closed) {
    lua_pushnil(L);
    lua_pushboolean(L, 0);
    return 1;
  }
  return 0;
}

/* }====================================================================== */

/* {======================================================================
** Blocking: a single call (send, recv, acquire)
** ======================================================================= */

/* [-0, +1, m] a userdata for nrec records and nw waits (a select, or a call
** of the main thread), its call set up; not anchored */
static lc_selud *new_selud(lua_State *L, int nrec, int nw) {
  size_t head = (sizeof(lc_selud) + 15) & ~(size_t)15;
  size_t wsz = sizeof(lc_wait) * (size_t)nw;
  size_t rsz = sizeof(lc_crec) * (size_t)nrec;
  size_t msz = sizeof(int) * (size_t)nw;
  lc_selud *u = (lc_selud *)lua_newuserdatauv(L, head + wsz + rsz + msz,
                                              nw + 2 * nrec);
  memset(u, 0, head + wsz + rsz + msz);
  u->waits = (lc_wait *)(void *)((char *)u + head);
  u->sel.recs = (lc_crec *)(void *)((char *)u + head + wsz);
  u->map = (int *)(void *)((char *)u + head + wsz + rsz);
  u->nw = (uint16_t)nw;
  u->sel.nrec = (uint16_t)nrec;
  u->sel.obj = u;
  wt_waiter_init(&u->mainw, WK_MAIN, 0);
  return u;
}

/* The main thread waits for the call of u (its records queued, its waits
** described): the loop runs until one fires. Returns 1 once woken (*fired:
** that wait), 0 if an error is pending, -1 on a deadlock; either way u's
** waiter is out of its waits and queue. */
static int main_park(lua_State *L, lc_runtime *rt, lc_selud *u, int *fired) {
  int woken;
  *fired = wt_park(&rt->sched, &u->mainw, u->waits, u->nw, lc_now(rt));
  if (*fired != 0)
    woken = 1;
  else {
    woken = lc_main_wait(L, rt, &u->mainw);
    *fired = u->mainw.fired;
  }
  wt_release(&rt->sched, &u->mainw);
  return woken;
}

/* raise for a main-thread call that was not woken (main_park <= 0), once
** its records are unlinked */
static int main_not_woken(lua_State *L, lc_runtime *rt, int woken,
                          const char *fname) {
  if (woken < 0)
    return luaL_error(L, "context.%s: deadlock: waiting for something "
                      "nothing can bring%s", fname, lc_deadlock_hint(rt));
  lc_raise_pending(L, rt);
  return luaL_error(L, "context.%s: the wait ended with nothing fired", fname);
}

/* The outcome of a single call once its wait is over (its records are
** unlinked here). Stack: 1 object, 2 ctx[, 3 value]; t: its task or
** NULL (the main thread's: its userdata at uidx). fired: the wait that
** ended it. */
static int op_result(lua_State *L, lc_runtime *rt, lc_task *t, lc_sel *s,
                     int kind, int fired, int uidx) {
  lc_crec *r = s->recs;
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, 2);
  int e, nres;
  (*blocked_counter(rt, kind))--;
  if (t != NULL) t->sync = NULL;
  if (!s->done) {
    int was_head = r->q != NULL && r->q->head == r;
    sel_unlink(s);
    if (kind == LC_CR_ACQUIRE && was_head) /* those behind it may fit now */
      grant(L, rt, (lc_sem *)r->target);
  }
  /* a value received: a task's is on top already (complete put it on its
  ** stack); the main thread's is in its userdata */
  if (t == NULL) lua_getiuservalue(L, uidx, r->slot);
  nres = lua_gettop(L);
  if (s->done) {
    if (kind == LC_CR_ACQUIRE || (kind == LC_CR_SEND && s->ok)) {
      lua_pushboolean(L, 1);
      return 1;
    }
    if (!s->ok) { /* woken by a close: ctx first (a close carries no value) */
      e = err_of(L, rt, c, 2, t);
      if (e != CTX_ERR_NONE) return fail(L, e);
      if (kind == LC_CR_SEND) return closed_send(L);
      lua_pushnil(L);
      lua_pushboolean(L, 0);
      return 2;
    }
    lua_pushvalue(L, nres); /* received */
    lua_pushboolean(L, 1);
    return 2;
  }
  if (fired == 1) return fail(L, lc_ctx_err(L, rt, c, 2));
  if (fired == 3) { /* the bound */
    e = bound_err(L, rt, t);
    if (e != CTX_ERR_NONE) return fail(L, e);
  }
  return luaL_error(L, "context.%s: the wait ended with nothing done",
                    kind_names[kind]);
}

/* A task resumed by another than the loop while it waits in a call (a
** coroutine.resume of its coroutine): the call is given up as if the task
** had been closed, the loop will resume the task when it next can (it
** then goes on from its next yield, or is found ended), and the call
** raises. */
static int foreign(lua_State *L, lc_runtime *rt, lc_task *t,
                   const char *fname) {
  lc_sync_abandon(L, rt, t);
  t->w.fired = 0;
  wt_push(&rt->sched, &t->w); /* (out of its waits and queue first) */
  return luaL_error(L, "context.%s: the task was resumed from outside "
                    "lcontext while it waited", fname);
}

/* the continuation of a task's single call: resumed by the loop with the
** index of the wait that fired (its waiter keeps it too), above a value
** received */
static int k_op(lua_State *L, int status, lua_KContext kctx) {
  lc_runtime *rt = lc_rt(L);
  lc_task *t = (lc_task *)kctx;
  lc_sel *s = &t->sel;
  int kind = t->crec.kind;
  (void)status;
  if (rt->current != t || t->sync != s) return foreign(L, rt, t, kind_names[kind]);
  lua_settop(L, s->done && s->ok && kind == LC_CR_RECV ? 4 : 3);
  return op_result(L, rt, t, s, kind, t->w.fired, 0);
}

/* Block the running coroutine on a single call: the record of kind on
** target, in q. Stack: 1 object, 2 ctx (c), 3 the value sent (or nil). */
static int block(lua_State *L, lc_runtime *rt, int kind, void *target,
                 lc_cq *q, lua_Integer weight) {
  const char *fname = kind_names[kind];
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, 2);
  lc_task *t = running_task(L, rt);
  lc_sel *s;
  lc_crec *r;
  int n = 0, fired;
  int64_t now;
  lua_settop(L, 3);
  if (t == NULL) {
    lc_selud *u;
    lc_ctx *b;
    int uidx, woken;
    if (!is_main(L))
      return luaL_error(L, "context.%s: called from a coroutine that lcontext "
                        "does not run (start it with context.go)", fname);
    lc_loop_caller(L, rt, fname);
    b = rt->main_bound;
    u = new_selud(L, 1, b != NULL ? 3 : 2);
    uidx = lua_gettop(L);
    s = &u->sel;
    r = s->recs;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, uidx, 1);
    lc_wait_ctx(&u->waits[0], c);
    wt_wait_source(&u->waits[1], &s->src);
    if (b != NULL) {
      push_bound(L, rt, NULL);
      lua_setiuservalue(L, uidx, 3);
      lc_wait_ctx(&u->waits[2], b);
    }
    r->slot = u->nw + 1;
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, uidx, r->slot);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, uidx, r->slot + 1);
    lc_anchor(L, rt, uidx);
    r->sel = s;
    r->target = target;
    r->weight = weight;
    r->index = 1;
    r->kind = (uint8_t)kind;
    cq_push(q, r); /* armed last: what is above may fail, this may not */
    (*blocked_counter(rt, kind))++;
    woken = main_park(L, rt, u, &fired);
    lc_unanchor(L, rt, u);
    if (woken <= 0) { /* not woken: a deadlock, or an error pending */
      (*blocked_counter(rt, kind))--;
      sel_unlink(s);
      if (s->done && kind == LC_CR_ACQUIRE) { /* granted meanwhile */
        ((lc_sem *)target)->cur -= weight;
        grant(L, rt, (lc_sem *)target);
      }
      return main_not_woken(L, rt, woken, fname);
    }
    {
      int nres = op_result(L, rt, NULL, s, kind, fired, uidx);
      if (fired != 0) lc_drain(rt, 1); /* what woke it may have woken others */
      lc_raise_pending(L, rt);
      return nres;
    }
  }
  if (!lc_isyieldable(L, 1))
    return luaL_error(L, "context.%s: cannot wait here: a C function is on "
                      "the stack (a table.sort comparator, a gsub callback, "
                      "a metamethod called from C...), so the task cannot "
                      "yield", fname);
  /* anchors first (they may allocate), then the records and waits: the
  ** task keeps ctx and the object while a close from outside could free
  ** its stack (kept until the next call on others: no write in a loop
  ** on the same ones) */
  if (t->sctx_p != (const void *)c || t->sobj_p != target) {
    lc_push_task(L, t);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 4, LC_TUV_SCTX);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 4, LC_TUV_SOBJ);
    lua_settop(L, 3);
    t->sctx_p = c;
    t->sobj_p = target;
  }
  s = &t->sel;
  r = &t->crec;
  s->src.waits = NULL;
  s->src.ended = 0;
  s->obj = t;
  s->task = t;
  s->recs = r;
  s->nrec = 1;
  s->fired = 0;
  s->done = s->ok = 0;
  r->prev = r->next = NULL;
  r->q = NULL;
  r->sel = s;
  r->target = target;
  r->weight = weight;
  r->slot = 0; /* the value sent is argument 3, on the task's stack */
  r->index = 1;
  r->kind = (uint8_t)kind;
  lc_wait_ctx(&t->swaits[n++], c);
  wt_wait_source(&t->swaits[n++], &s->src);
  if (t->bound != NULL) lc_wait_ctx(&t->swaits[n++], t->bound);
  cq_push(q, r);
  (*blocked_counter(rt, kind))++;
  t->sync = s;
  now = lc_now(rt);
  t->parked_at = now;
  fired = wt_park(&rt->sched, &t->w, t->swaits, (uint16_t)n, now);
  if (fired != 0) { /* a deadline passed since it was looked at */
    t->w.fired = (uint16_t)fired;
    return op_result(L, rt, t, s, kind, fired, 0);
  }
  lua_pushlightuserdata(L, rt); /* the token the loop expects */
  return lua_yieldk(L, 1, (lua_KContext)t, k_op);
}

/* }====================================================================== */

/* {======================================================================
** Channel methods
** ======================================================================= */

/* core._channel(capacity) -> ch (capacity checked by sync.lua) */
static int l_channel(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Integer cap = luaL_checkinteger(L, 1);
  lc_chan *ch = (lc_chan *)lua_newuserdatauv(L, sizeof(lc_chan), 1);
  memset(ch, 0, sizeof *ch);
  ch->magic = &rt->ref_chanmt;
  ch->cap = cap < 0 ? 0 : cap;
  ch->head = 1;
  if (ch->cap > 0) {
    lua_createtable(L, ch->cap < 64 ? (int)ch->cap : 64, 0);
    lua_setiuservalue(L, -2, 1);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_chanmt);
  lua_setmetatable(L, -2);
  return 1;
}

/* ch:send(ctx, v) -> true | nil, err */
static int l_send(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = check_chan(L, rt, "send");
  lc_ctx *c = check_ctx(L, rt, 2, "send", 1);
  int e;
  lua_settop(L, 3);
  if (ch->closed) return closed_send(L);
  e = err_of(L, rt, c, 2, running_task(L, rt));
  if (e != CTX_ERR_NONE) return fail(L, e);
  if (try_send(L, rt, ch, 1, 3)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return block(L, rt, LC_CR_SEND, ch, &ch->sendq, 0);
}

/* ch:recv(ctx) -> v, true | nil, false | nil, err */
static int l_recv(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = check_chan(L, rt, "recv");
  lc_ctx *c = check_ctx(L, rt, 2, "recv", 1);
  int e;
  lua_settop(L, 2);
  e = err_of(L, rt, c, 2, running_task(L, rt));
  if (e != CTX_ERR_NONE) return fail(L, e);
  if (try_recv(L, rt, ch, 1)) return 2;
  return block(L, rt, LC_CR_RECV, ch, &ch->recvq, 0);
}

static int l_try_send(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = check_chan(L, rt, "try_send");
  lua_settop(L, 2);
  if (ch->closed) return closed_send(L);
  lua_pushboolean(L, try_send(L, rt, ch, 1, 2));
  return 1;
}

static int l_try_recv(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = check_chan(L, rt, "try_recv");
  lua_settop(L, 1);
  if (try_recv(L, rt, ch, 1)) return 2;
  lua_pushnil(L);
  lua_pushnil(L);
  return 2;
}

static void close_chan(lua_State *L, lc_runtime *rt, lc_chan *ch) {
  lc_crec *r;
  ch->closed = 1;
  while ((r = q_first(rt, &ch->recvq)) != NULL) complete(L, rt, r, 0, 0);
  while ((r = q_first(rt, &ch->sendq)) != NULL) complete(L, rt, r, 0, 0);
}

static int l_close(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = check_chan(L, rt, "close");
  if (ch->closed)
    return luaL_error(L, "context.channel: close of a closed channel");
  close_chan(L, rt, ch);
  return 0;
}

/* <close>: closes it on the way out, unless it is closed already */
static int l_chan_close_mm(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_chan *ch = testchan(L, 1, rt);
  if (ch != NULL && !ch->closed) close_chan(L, rt, ch);
  return 0;
}

static int l_len(lua_State *L) {
  lua_pushinteger(L, check_chan(L, lc_rt(L), "len")->count);
  return 1;
}

static int l_cap(lua_State *L) {
  lua_pushinteger(L, check_chan(L, lc_rt(L), "cap")->cap);
  return 1;
}

static int l_is_closed(lua_State *L) {
  lua_pushboolean(L, check_chan(L, lc_rt(L), "is_closed")->closed);
  return 1;
}

static int l_chan_tostring(lua_State *L) {
  lc_chan *ch = check_chan(L, lc_rt(L), "tostring");
  lua_pushfstring(L, "context.channel (%I/%I%s)", ch->count, ch->cap,
                  ch->closed ? ", closed" : "");
  return 1;
}

/* ch:recv_case(), ch:send_case(v) -> a case for context.select */
static int new_case(lua_State *L, const char *fname, const char *kind) {
  lc_runtime *rt = lc_rt(L);
  check_chan(L, rt, fname);
  lua_settop(L, 2);
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "ch");
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  if (kind[0] == 's') {
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "value");
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_casemt);
  lua_setmetatable(L, -2);
  return 1;
}
static int l_recv_case(lua_State *L) { return new_case(L, "recv_case", "recv"); }
static int l_send_case(lua_State *L) { return new_case(L, "send_case", "send"); }

/* }====================================================================== */

/* {======================================================================
** Semaphore methods
** ======================================================================= */

/* core._semaphore(n) -> sem (n checked by sync.lua) */
static int l_semaphore(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Integer n = luaL_checkinteger(L, 1);
  lc_sem *sem = (lc_sem *)lua_newuserdatauv(L, sizeof(lc_sem), 0);
  memset(sem, 0, sizeof *sem);
  sem->magic = &rt->ref_semmt;
  sem->size = n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_semmt);
  lua_setmetatable(L, -2);
  return 1;
}

/* sem:acquire(ctx [, w]) -> true | nil, err. ctx is looked at first, also
** when the units are free (as Go's x/sync/semaphore, golang/go#63615). */
static int l_acquire(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_sem *sem = check_sem(L, rt, "acquire");
  lc_ctx *c = check_ctx(L, rt, 2, "acquire", 1);
  lua_Integer w = check_weight(L, sem, 3, "acquire", 2);
  int e = err_of(L, rt, c, 2, running_task(L, rt));
  if (e != CTX_ERR_NONE) return fail(L, e);
  if (sem->size - sem->cur >= w && q_first(rt, &sem->q) == NULL) {
    sem->cur += w;
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_settop(L, 2);
  lua_pushnil(L);
  return block(L, rt, LC_CR_ACQUIRE, sem, &sem->q, w);
}

static int l_try_acquire(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_sem *sem = check_sem(L, rt, "try_acquire");
  lua_Integer w = check_weight(L, sem, 2, "try_acquire", 1);
  if (sem->size - sem->cur >= w && q_first(rt, &sem->q) == NULL) {
    sem->cur += w;
    lua_pushboolean(L, 1);
  } else
    lua_pushboolean(L, 0);
  return 1;
}

static int l_release(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_sem *sem = check_sem(L, rt, "release");
  lua_Integer w = check_weight(L, sem, 2, "release", 1);
  if (w > sem->cur)
    return luaL_error(L, "context.semaphore: released %I unit%s, but only %I "
                      "%s held", w, w == 1 ? "" : "s", sem->cur,
                      sem->cur == 1 ? "is" : "are");
  sem->cur -= w;
  if (sem->q.head != NULL) grant(L, rt, sem);
  return 0;
}

static int l_held(lua_State *L) {
  lua_pushinteger(L, check_sem(L, lc_rt(L), "held")->cur);
  return 1;
}

static int l_size(lua_State *L) {
  lua_pushinteger(L, check_sem(L, lc_rt(L), "size")->size);
  return 1;
}

/* sem:waiting() -> the calls waiting (those of closed tasks dropped) */
static int l_waiting(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_sem *sem = check_sem(L, rt, "waiting");
  lc_crec *r = sem->q.head, *nx;
  while (r != NULL) {
    nx = r->next;
    if (!r->sel->done) sel_dead(rt, r->sel);
    r = nx;
  }
  lua_pushinteger(L, (lua_Integer)sem->q.n);
  return 1;
}

static int l_sem_tostring(lua_State *L) {
  lc_sem *sem = check_sem(L, lc_rt(L), "tostring");
  lua_pushfstring(L, "context.semaphore (%I/%I held, %I waiting)", sem->cur,
                  sem->size, (lua_Integer)sem->q.n);
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** select with channel cases: core._select(fname, ...)
** -> nil, err (the bound) | i [, v, ok] (a receive case) | false (a send
** case on a channel closed: the caller raises) | -i (argument i is an fd
** that cannot be waited on). sync.lua maps events to their contexts and
** raises at its caller's level.
** ======================================================================= */

/* the case at idx, or NULL: its channel and kind (LC_CR_*) */
static lc_chan *get_case(lua_State *L, lc_runtime *rt, int idx, int *kind) {
  lc_chan *ch;
  const void *mt;
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  if (mt != rt->casemt) return NULL;
  lua_getfield(L, idx, "ch");
  ch = testchan(L, -1, rt);
  lua_pop(L, 1);
  if (ch == NULL) return NULL; /* (a forged case: not a waitable) */
  lua_getfield(L, idx, "kind");
  *kind = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "send") == 0
              ? LC_CR_SEND : LC_CR_RECV;
  lua_pop(L, 1);
  return ch;
}

/* the outcome of a select once its wait is over */
static int select_result(lua_State *L, lc_runtime *rt, lc_task *t,
                         lc_selud *u, int uidx, int fired) {
  lc_sel *s = &u->sel;
  int j, i, e;
  if (t != NULL) t->sync = NULL;
  lc_unanchor(L, rt, u);
  if (s->done) {
    lc_crec *r = NULL;
    for (j = 0; j < s->nrec; j++)
      if (s->recs[j].index == s->fired) r = &s->recs[j];
    if (r == NULL) return luaL_error(L, "context.select: lost its case");
    if (r->kind == LC_CR_SEND) {
      if (!s->ok) {
        lua_pushboolean(L, 0);
        return 1;
      }
      lua_pushinteger(L, r->index);
      return 1;
    }
    lua_pushinteger(L, r->index);
    if (s->ok)
      lua_getiuservalue(L, uidx, r->slot);
    else
      lua_pushnil(L);
    lua_pushboolean(L, s->ok);
    return 3;
  }
  sel_unlink(s);
  if (fired < 1 || fired > u->nw)
    return luaL_error(L, "context.select: the wait ended with nothing fired");
  i = u->map[fired - 1];
  if (i > 0) {
    lc_wait *x = &u->waits[fired - 1];
    int ioerr = x->src == WS_IO && (x->u.io.revents & WT_IO_ERROR);
    lua_pushinteger(L, ioerr ? -i : i);
    return 1;
  }
  if (i < 0) {
    e = bound_err(L, rt, t);
    if (e != CTX_ERR_NONE) return fail(L, e);
  }
  return luaL_error(L, "context.select: woken with nothing done");
}

static int k_select(lua_State *L, int status, lua_KContext kctx) {
  lc_runtime *rt = lc_rt(L);
  int uidx = (int)kctx;
  lc_selud *u = (lc_selud *)lua_touserdata(L, uidx);
  lc_task *t = u->sel.task;
  (void)status;
  if (rt->current != t || t->sync != &u->sel) return foreign(L, rt, t, "select");
  lua_settop(L, uidx);
  return select_result(L, rt, t, u, uidx, t->w.fired);
}

static int l_select(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  const char *fname = luaL_checkstring(L, 1);
  int n = lua_gettop(L) - 1, i, kind, ncase = 0, nw, j, k, e, uidx, fired;
  lc_task *t = running_task(L, rt);
  lc_ctx *b, *c;
  lc_chan *ch;
  lc_task *ot;
  lc_selud *u;
  lc_sel *s;
  if (n < 1) return lc_typeerror(L, 2, fname, "waitable");
  if (n > 0x7ff0) return lc_argerror(L, 1, fname, "too many waitables");
  e = bound_err(L, rt, t); /* the bound first, as every wait does */
  if (e != CTX_ERR_NONE) return fail(L, e);
  for (i = 2; i <= n + 1; i++) {
    if ((ch = get_case(L, rt, i, &kind)) != NULL) {
      ncase++;
      if (kind == LC_CR_SEND && ch->closed) {
        lua_pushboolean(L, 0);
        return 1;
      }
    }
  }
  /* the first ready, in argument order (fds: only the backend asks) */
  for (i = 2; i <= n + 1; i++) {
    if ((ch = get_case(L, rt, i, &kind)) != NULL) {
      int chidx;
      lua_getfield(L, i, "ch");
      chidx = lua_gettop(L);
      if (kind == LC_CR_SEND) {
        lua_getfield(L, i, "value");
        if (try_send(L, rt, ch, chidx, chidx + 1)) {
          lua_pushinteger(L, i - 1);
          return 1;
        }
      } else if (try_recv(L, rt, ch, chidx)) {
        lua_pushinteger(L, i - 1);
        lua_insert(L, -3);
        return 3;
      }
      lua_settop(L, n + 1);
    } else if ((c = lc_testctx_rt(L, i, rt)) != NULL) {
      if (lc_ctx_err(L, rt, c, i) != CTX_ERR_NONE) {
        lua_pushinteger(L, i - 1);
        return 1;
      }
    } else if (lua_type(L, i) == LUA_TNUMBER) {
      lua_Number d = lua_tonumber(L, i);
      if (d <= 0 && d == d) {
        lua_pushinteger(L, i - 1);
        return 1;
      }
    } else if ((ot = lc_testtask(L, i, rt)) != NULL) {
      if (ot->status != TS_RUNNING) {
        lua_pushinteger(L, i - 1);
        return 1;
      }
    }
  }
  /* nothing ready: one call with the cases' records; the rest are waits */
  if (t == NULL) {
    if (!is_main(L))
      return luaL_error(L, "context.%s: called from a coroutine that lcontext "
                        "does not run (start it with context.go)", fname);
    lc_loop_caller(L, rt, fname);
  } else if (!lc_isyieldable(L, 1))
    return luaL_error(L, "context.%s: cannot wait here: a C function is on "
                      "the stack (a table.sort comparator, a gsub callback, "
                      "a metamethod called from C...), so the task cannot "
                      "yield", fname);
  b = bound_of(L, rt, t);
  nw = n - ncase + 1 + (b != NULL);
  u = new_selud(L, ncase, nw);
  uidx = lua_gettop(L);
  s = &u->sel;
  s->task = t;
  for (i = 2, j = 0, k = 0; i <= n + 1; i++) {
    if ((ch = get_case(L, rt, i, &kind)) != NULL) {
      lc_crec *r = &s->recs[k++];
      r->sel = s;
      r->target = ch;
      r->kind = (uint8_t)kind;
      r->index = (uint16_t)(i - 1);
      r->slot = nw + 2 * k - 1;
      lua_getfield(L, i, "value");
      lua_setiuservalue(L, uidx, r->slot);
      lua_getfield(L, i, "ch");
      lua_setiuservalue(L, uidx, r->slot + 1);
    } else {
      lc_prepare_wait(L, rt, &u->waits[j], i, fname);
      lua_pushvalue(L, i);
      lua_setiuservalue(L, uidx, j + 1);
      u->map[j++] = i - 1;
    }
  }
  wt_wait_source(&u->waits[j], &s->src);
  u->map[j++] = 0;
  if (b != NULL) {
    lc_wait_ctx(&u->waits[j], b);
    push_bound(L, rt, t);
    lua_setiuservalue(L, uidx, j + 1);
    u->map[j++] = -1;
  }
  for (j = 0; j < nw; j++)
    if (u->waits[j].src == WS_IO) lc_need_loop(L, rt);
  if (t != NULL) { /* the task keeps it: context.dump, a close from outside */
    lc_push_task(L, t);
    lua_pushvalue(L, uidx);
    lua_setiuservalue(L, -2, 3);
    lua_pop(L, 1);
  }
  lc_anchor(L, rt, uidx); /* the last step that may fail (allocate) */
  /* armed last: what is above may fail, this may not */
  for (k = 0; k < s->nrec; k++) {
    lc_crec *r = &s->recs[k];
    ch = (lc_chan *)r->target;
    cq_push(r->kind == LC_CR_SEND ? &ch->sendq : &ch->recvq, r);
  }
  if (t != NULL) {
    int64_t now = lc_now(rt);
    t->sync = s;
    t->parked_at = now;
    fired = wt_park(&rt->sched, &t->w, u->waits, (uint16_t)nw, now);
    if (fired != 0) {
      t->w.fired = (uint16_t)fired;
      return select_result(L, rt, t, u, uidx, fired);
    }
    lua_pushlightuserdata(L, rt);
    return lua_yieldk(L, 1, (lua_KContext)uidx, k_select);
  }
  {
    int woken = main_park(L, rt, u, &fired), nres;
    if (woken <= 0) {
      sel_unlink(s);
      lc_unanchor(L, rt, u);
      return main_not_woken(L, rt, woken, fname);
    }
    nres = select_result(L, rt, NULL, u, uidx, fired);
    lc_drain(rt, 1);
    lc_raise_pending(L, rt);
    return nres;
  }
}

/* }====================================================================== */

/* A task ends while blocked in a call (its coroutine closed from outside):
** its records leave their queues; units granted to it and never taken go
** back. Allocates nothing. */
void lc_sync_abandon(lua_State *L, lc_runtime *rt, lc_task *t) {
  lc_sel *s = t->sync;
  uint16_t k;
  if (s == NULL) return;
  t->sync = NULL;
  if (s == &t->sel) (*blocked_counter(rt, s->recs[0].kind))--;
  if (!s->done) {
    for (k = 0; k < s->nrec; k++) {
      lc_crec *r = &s->recs[k];
      int was_head = r->q != NULL && r->q->head == r;
      cq_remove(r);
      if (r->kind == LC_CR_ACQUIRE && was_head) grant(L, rt, (lc_sem *)r->target);
    }
  } else {
    for (k = 0; k < s->nrec; k++) {
      lc_crec *r = &s->recs[k];
      if (r->index == s->fired && r->kind == LC_CR_ACQUIRE) {
        lc_sem *sem = (lc_sem *)r->target;
        sem->cur -= r->weight;
        grant(L, rt, sem);
      }
    }
  }
  if (s->obj != (void *)t) lc_unanchor(L, rt, s->obj);
}

/* [-0, +1, m] context.dump's view of t's call: its waits, as
** core._task_waits lists them, a record being { kind = "sync", what =
** "channel recv" | "channel send" | "semaphore acquire of w", value = the
** channel or semaphore } */
int lc_sync_waits(lua_State *L, lc_runtime *rt, lc_task *t, int taskidx) {
  lc_sel *s = t->sync;
  int j, k = 0, li, obj;
  lua_newtable(L);
  li = lua_gettop(L);
  if (s == &t->sel) { /* a single call: ctx, its record, the bound */
    lc_crec *r = &t->crec;
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "ctx");
    lua_setfield(L, -2, "kind");
    lua_getiuservalue(L, taskidx, LC_TUV_SCTX);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, li, ++k);
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, "sync");
    lua_setfield(L, -2, "kind");
    if (r->kind == LC_CR_ACQUIRE)
      lua_pushfstring(L, "semaphore acquire of %I", r->weight);
    else
      lua_pushfstring(L, "channel %s", kind_names[r->kind]);
    lua_setfield(L, -2, "what");
    lua_getiuservalue(L, taskidx, LC_TUV_SOBJ);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, li, ++k);
    if (t->bound != NULL) {
      lua_createtable(L, 0, 2);
      lua_pushliteral(L, "ctx");
      lua_setfield(L, -2, "kind");
      lua_getiuservalue(L, taskidx, LC_TUV_BOUND);
      lua_setfield(L, -2, "value");
      lua_rawseti(L, li, ++k);
    }
    return k;
  }
  /* a select: its waits, its cases in place of its source */
  lc_push_anchored(L, rt, s->obj);
  obj = lua_gettop(L);
  {
    lc_selud *u = (lc_selud *)s->obj;
    for (j = 0; j < u->nw; j++) {
      if (u->map[j] == 0) {
        int q;
        for (q = 0; q < s->nrec; q++) {
          lc_crec *r = &s->recs[q];
          lua_createtable(L, 0, 3);
          lua_pushliteral(L, "sync");
          lua_setfield(L, -2, "kind");
          lua_pushfstring(L, "channel %s", kind_names[r->kind]);
          lua_setfield(L, -2, "what");
          lua_getiuservalue(L, obj, r->slot + 1);
          lua_setfield(L, -2, "value");
          lua_rawseti(L, li, ++k);
        }
      } else {
        lc_push_wait_entry(L, &u->waits[j], obj, j + 1);
        lua_rawseti(L, li, ++k);
      }
    }
  }
  lua_settop(L, li);
  return k;
}

/* core._set_bound(ctx | nil): the bound of the running task (or of the
** main thread), as lua/lcontext/tasks.lua sets it */
static int l_set_bound(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *c = lua_isnoneornil(L, 1) ? NULL : lc_checkctx_rt(L, 1, "_set_bound", rt);
  lc_task *t = running_task(L, rt);
  lua_settop(L, 1);
  if (t != NULL) {
    lc_push_task(L, t);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, LC_TUV_BOUND);
    t->bound = c;
  } else if (is_main(L)) {
    luaL_unref(L, LUA_REGISTRYINDEX, rt->ref_mainbound);
    rt->ref_mainbound = LUA_NOREF;
    rt->main_bound = NULL;
    if (c != NULL) {
      lua_pushvalue(L, 1);
      rt->ref_mainbound = luaL_ref(L, LUA_REGISTRYINDEX);
      rt->main_bound = c;
    }
  }
  return 0;
}

/* core._sync_stats() -> sends, recvs, blocked sends, recvs, acquires */
static int l_sync_stats(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_pushinteger(L, (lua_Integer)rt->sync_sends);
  lua_pushinteger(L, (lua_Integer)rt->sync_recvs);
  lua_pushinteger(L, rt->sync_blocked_send);
  lua_pushinteger(L, rt->sync_blocked_recv);
  lua_pushinteger(L, rt->sync_blocked_acquire);
  return 5;
}

/* core._sync_init(case_mt): the metatable sync.lua gives select's cases,
** known here by pointer (and kept in the registry) */
static int l_sync_init(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->ref_casemt);
  lua_pushvalue(L, 1);
  rt->casemt = lua_topointer(L, 1);
  rt->ref_casemt = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static const luaL_Reg chan_methods[] = {
  {"send", l_send},
  {"recv", l_recv},
  {"try_send", l_try_send},
  {"try_recv", l_try_recv},
  {"close", l_close},
  {"len", l_len},
  {"cap", l_cap},
  {"is_closed", l_is_closed},
  {"recv_case", l_recv_case},
  {"send_case", l_send_case},
  {NULL, NULL}
};

static const luaL_Reg sem_methods[] = {
  {"acquire", l_acquire},
  {"try_acquire", l_try_acquire},
  {"release", l_release},
  {"held", l_held},
  {"size", l_size},
  {"waiting", l_waiting},
  {NULL, NULL}
};

const luaL_Reg lc_sync_funcs[] = {
  {"_channel", l_channel},
  {"_semaphore", l_semaphore},
  {"_select", l_select},
  {"_set_bound", l_set_bound},
  {"_sync_stats", l_sync_stats},
  {"_sync_init", l_sync_init},
  {NULL, NULL}
};

/* [-0, +0, m] a metatable, kept at *ref in the registry: methods (with
** the shared upvalues at uvt) as __index, metamethods, __name */
static void new_mt(lua_State *L, int uvt, const luaL_Reg *methods,
                   const luaL_Reg *meta, const char *name, int *ref) {
  int i;
  lua_newtable(L);
  lua_newtable(L);
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, uvt, i);
  luaL_setfuncs(L, methods, LC_NUP);
  lua_setfield(L, -2, "__index");
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, uvt, i);
  luaL_setfuncs(L, meta, LC_NUP);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* set up by luaopen: uvt is the table of the shared upvalues */
void lc_sync_init(lua_State *L, lc_runtime *rt, int uvt) {
  static const luaL_Reg chan_meta[] = {
    {"__tostring", l_chan_tostring},
    {"__close", l_chan_close_mm},
    {NULL, NULL}
  };
  static const luaL_Reg sem_meta[] = {
    {"__tostring", l_sem_tostring},
    {NULL, NULL}
  };
  rt->ref_mainbound = LUA_NOREF;
  rt->ref_casemt = LUA_NOREF;
  rt->sync_abandon = lc_sync_abandon;
  rt->sync_waits = lc_sync_waits;
  new_mt(L, uvt, chan_methods, chan_meta, "context.channel", &rt->ref_chanmt);
  new_mt(L, uvt, sem_methods, sem_meta, "context.semaphore", &rt->ref_semmt);
}

#else /* Lua 5.1, LuaJIT: sync.lua keeps its Lua channels and semaphores */

const luaL_Reg lc_sync_funcs[] = {
  {NULL, NULL}
};

void lc_sync_init(lua_State *L, lc_runtime *rt, int uvt) {
  (void)L;
  (void)uvt;
  rt->ref_mainbound = LUA_NOREF;
  rt->ref_casemt = LUA_NOREF;
  rt->sync_abandon = lc_sync_abandon;
  rt->sync_waits = lc_sync_waits;
}

void lc_sync_abandon(lua_State *L, lc_runtime *rt, lc_task *t) {
  (void)L;
  (void)rt;
  (void)t;
}

int lc_sync_waits(lua_State *L, lc_runtime *rt, lc_task *t, int taskidx) {
  (void)rt;
  (void)t;
  (void)taskidx;
  lua_newtable(L);
  return 0;
}

#endif
