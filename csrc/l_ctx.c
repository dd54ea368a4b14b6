/*
** l_ctx.c — the context type: roots, derivations, and the questions a
** context answers (README, "API reference": Roots, Deriving, Asking).
**
** Layout of a context userdata: see lc_ctx in lcontext_int.h. Contexts
** linked below a running parent get the metatable with __gc (so the parent's
** child list never holds a dangling link); all others have no finaliser,
** which keeps the common case (children of background) cheap.
*/
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

#define isroot(c) ((c)->kind == LK_BACKGROUND || (c)->kind == LK_TODO)

/* [-0, +1, -] push the sentinel for err (nil for none) */
void lc_push_err(lua_State *L, int err) {
  if (err == CTX_ERR_CANCELED)
    lua_pushvalue(L, lc_uv(LC_UV_CANCELED));
  else if (err == CTX_ERR_DEADLINE)
    lua_pushvalue(L, lc_uv(LC_UV_DEADLINE));
  else
    lua_pushnil(L);
}

/* [-0, +0, m] Notice whether the node n (of the context at idx) has passed
** its deadline at now: if that ends it, the epilogue of a cancel runs
** (lc_after_cancel), as a fired timer or a cancel would. Returns n->err. */
static int poll(lua_State *L, lc_runtime *rt, ctx_node *n, int idx,
                int64_t now) {
  if (n->err == CTX_ERR_NONE && n->deadline != CTX_NEVER &&
      ctx_poll(&rt->tree, n, now) != CTX_ERR_NONE)
    lc_after_cancel(L, rt, idx);
  return n->err;
}

/* The state of the context c at idx now, noticing a passed deadline. */
int lc_ctx_err(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx) {
  ctx_node *n = c->cn;
  if (n == NULL) return CTX_ERR_NONE;
  if (n->err != CTX_ERR_NONE || n->deadline == CTX_NEVER) return n->err;
  return poll(L, rt, n, idx, lc_now(rt));
}

int lc_ctx_err_at(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx, int64_t now) {
  ctx_node *n = c->cn;
  if (n == NULL) return CTX_ERR_NONE;
  if (n->err != CTX_ERR_NONE || n->deadline == CTX_NEVER) return n->err;
  return poll(L, rt, n, idx, now);
}

/* the same for argument 1, the runtime fetched only to poll a deadline */
static int ctx_err_public(lua_State *L, lc_ctx *c) {
  ctx_node *n = c->cn;
  if (n == NULL) return CTX_ERR_NONE;
  if (n->err != CTX_ERR_NONE || n->deadline == CTX_NEVER) return n->err;
  return poll(L, lc_rt(L), n, 1, lc_now(lc_rt(L)));
}

/* {======================================================================
** Deriving
** ======================================================================= */

/* Monotonic deadline `secs` seconds after now, rounded up, clamped. */
static int64_t deadline_after(int64_t now, lua_Number secs) {
  lua_Number ns = lc_ceil_ns(secs);
  if (ns < -4e18) ns = -4e18; /* long past: still ordered, never wraps */
  if (ns >= (lua_Number)(CTX_NEVER - now)) return CTX_NEVER - 1;
  return now + (int64_t)ns;
}

/*
** [-0, +2, m] the common part of with_cancel, with_timeout, with_deadline:
** a context with a node of its own below the parent at index 1, and its
** cancel object. own: its own deadline (CTX_NEVER for none).
*/
static lc_ctx *derive_rt(lua_State *L, lc_runtime *rt, lc_ctx *p, int kind,
                         int64_t own, int64_t now, int nflags) {
  size_t size = kind == LK_TIMER ? sizeof(lc_tctx) : sizeof(lc_cctx);
  ctx_node *pn = p->cn;
  int anchored = !isroot(p);
  lc_cctx *c;
  if (pn != NULL && pn->err == CTX_ERR_NONE && pn->deadline != CTX_NEVER) {
    if (now == 0) now = lc_now(rt);
    poll(L, rt, pn, 1, now);
  }
  c = (lc_cctx *)lua_newuserdatauv(L, size, anchored);
  memset(&c->h, 0, sizeof c->h);
  c->h.cn = &c->node;
  c->h.parent = p;
  c->h.kind = (uint8_t)kind;
  c->h.magic = LC_CTX_MAGIC;
  ctx_node_init(&c->node);
  c->node.flags |= (uint8_t)nflags;
  if (kind == LK_TIMER) {
    lc_tctx *t = (lc_tctx *)c;
    tw_entry_init(&t->dl.tm.e);
    t->dl.tm.kind = WT_T_DEADLINE;
    t->dl.node = &c->node;
    t->dl.watch = 0;
  }
  lc_set_depth(rt, &c->h, p);
  ctx_attach(&rt->tree, &c->node, pn, own, now);
  lua_pushvalue(L, ctx_is_linked(&c->node) || rt->tracking
                       ? lc_uv(LC_UV_CTXMTGC)
                       : lc_uv(LC_UV_CTXMT));
  lua_setmetatable(L, -2);
  if (anchored) {
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
  }
  if (rt->tracking) lc_track_new(L, rt, lua_gettop(L));
  lc_new_cancel(L, lua_gettop(L));
  return &c->h;
}


/* context.with_cancel(parent) -> ctx, cancel */
static int l_with_cancel(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *p = lc_checkctx_rt(L, 1, "with_cancel", rt);
  derive_rt(L, rt, p, LK_CANCEL, CTX_NEVER, 0, 0);
  return 2;
}

/* context.with_cancel_cause(parent) -> ctx, cancel   (cancel(cause)) */
static int l_with_cancel_cause(lua_State *L) {
  lc_ctx *p = lc_checkctx(L, 1, "with_cancel_cause");
  derive_rt(L, lc_rt(L), p, LK_CANCEL, CTX_NEVER, 0, 0);
  return 2;
}

/* [-0, +2, m] with_timeout / with_deadline, once the deadline is known */
static int derive_timer(lua_State *L, lc_runtime *rt, lc_ctx *p, int64_t own,
                        int64_t now, double epoch) {
  lc_ctx *c;
  int hascause = !lua_isnoneornil(L, 3);
  lua_settop(L, 3);
  c = derive_rt(L, rt, p, LK_TIMER, own, now, 0);
  ((lc_tctx *)c)->epoch = epoch;
  if (hascause) {
    c->flags |= LCF_TCAUSE;
    lc_set_cause(L, rt, c, lua_gettop(L) - 1, 3);
  }
  return 2;
}

/* context.with_timeout(parent, seconds [, cause]) -> ctx, cancel */
static int l_with_timeout(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lc_ctx *p = lc_checkctx_rt(L, 1, "with_timeout", rt);
  lua_Number secs = lc_checkduration(L, 2, "with_timeout");
  int64_t now = lc_now(rt);
  return derive_timer(L, rt, p, deadline_after(now, secs), now,
                      lc_real(rt) + secs);
}

/* The least deadline with_deadline takes: 2000-01-01T00:00:00Z. Anything
** earlier is no wall-clock time of this century: most likely a monotonic
** time (context.now() + n), which would give a context done at once. */
#define LC_MIN_EPOCH 946684800.0

/* context.with_deadline(parent, epoch_seconds [, cause]) -> ctx, cancel */
static int l_with_deadline(lua_State *L) {
  lc_ctx *p = lc_checkctx(L, 1, "with_deadline");
  lua_Number at = lc_checkduration(L, 2, "with_deadline");
  int64_t now;
  if (at < LC_MIN_EPOCH)
    lc_argerror(L, 2, "with_deadline",
                lua_pushfstring(L, "epoch seconds expected (context.time() + "
                                   "n), got %f, before the year 2000",
                                at));
  now = lc_now(lc_rt(L));
  return derive_timer(L, lc_rt(L), p, deadline_after(now, at - lc_real(lc_rt(L))),
                      now, at);
}

/* core.detached(parent [, seconds]) -> ctx, cancel
** A child that keeps the parent's values and ends with the parent's
** cancellation (at once, inside cancel()), but not with a deadline of the
** parent or of its ancestors: its deadline is its own (now + seconds), or
** none. The base of context.with_min_timeout and context.fallback. */
static int l_detached(lua_State *L) {
  lc_ctx *p = lc_checkctx(L, 1, "with_min_timeout");
  int64_t own = CTX_NEVER, now = 0;
  double epoch = 0;
  int hasdl = !lua_isnoneornil(L, 2);
  lc_ctx *c;
  if (hasdl) {
    lua_Number secs = lc_checkduration(L, 2, "with_min_timeout");
    now = lc_now(lc_rt(L));
    own = deadline_after(now, secs);
    epoch = lc_real(lc_rt(L)) + secs;
  }
  lua_settop(L, 1);
  c = derive_rt(L, lc_rt(L), p, hasdl ? LK_TIMER : LK_CANCEL, own, now,
               CTX_F_NO_PARENT_DEADLINE);
  if (hasdl) ((lc_tctx *)c)->epoch = epoch;
  return 2;
}

/* context.without_cancel(parent) -> ctx   (values only) */
static int l_without_cancel(lua_State *L) {
  lc_ctx *p = lc_checkctx(L, 1, "without_cancel");
  lc_ctx *c = (lc_ctx *)lua_newuserdatauv(L, sizeof(lc_ctx), 1);
  memset(c, 0, sizeof *c);
  c->kind = LK_WITHOUT;
  c->magic = LC_CTX_MAGIC;
  c->parent = p;
  lc_set_depth(lc_rt(L), c, p);
  lua_pushvalue(L, lc_uv(LC_UV_CTXMT));
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* context.merge(a, b, ...) -> ctx, cancel */
static int l_merge(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int n = lua_gettop(L), i;
  int64_t now = 0;
  lc_cctx *m;
  lc_ctx **in;
  if (n == 0) lc_typeerror(L, 1, "merge", "context");
  if (n > 0xffff) lc_argerror(L, 0x10000, "merge", "too many contexts");
  for (i = 1; i <= n; i++) {
    lc_ctx *c = lc_checkctx(L, i, "merge");
    if (c->cn != NULL && c->cn->err == CTX_ERR_NONE &&
        c->cn->deadline != CTX_NEVER) {
      if (now == 0) now = lc_now(rt);
      poll(L, rt, c->cn, i, now);
    }
  }
  m = (lc_cctx *)lua_newuserdatauv(
      L, sizeof(lc_cctx) + (size_t)(n - 1) * sizeof(ctx_xlink) +
             (size_t)n * sizeof(lc_ctx *), n);
  memset(&m->h, 0, sizeof m->h);
  m->h.cn = &m->node;
  m->h.kind = LK_MERGE;
  m->h.magic = LC_CTX_MAGIC;
  m->h.parent = (lc_ctx *)lua_touserdata(L, 1);
  ctx_node_init(&m->node);
  ctx_merge_init(&m->node, (uint16_t)(n - 1)); /* (how many inputs: nx + 1) */
  in = lc_merge_inputs(&m->h);
  for (i = 0; i < n; i++) in[i] = (lc_ctx *)lua_touserdata(L, i + 1);
  ctx_attach(&rt->tree, &m->node, in[0]->cn, CTX_NEVER, now);
  for (i = 1; i < n; i++) {
    if (in[i]->cn != NULL)
      ctx_attach_extra(&rt->tree, &m->node, (uint16_t)(i - 1), in[i]->cn);
    if (in[i]->depth > in[0]->depth) lc_set_depth(rt, &m->h, in[i]);
  }
  if (m->h.depth == 0) lc_set_depth(rt, &m->h, in[0]);
  lua_pushvalue(L, ctx_is_linked(&m->node) || rt->tracking
                       ? lc_uv(LC_UV_CTXMTGC)
                       : lc_uv(LC_UV_CTXMT));
  lua_setmetatable(L, -2);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_setiuservalue(L, -2, i);
  }
  if (rt->tracking) lc_track_new(L, rt, lua_gettop(L));
  lc_new_cancel(L, n + 1);
  return 2;
}

/* }====================================================================== */


/* {======================================================================
** Asking
** ======================================================================= */

/* ctx:err() -> nil | context.canceled | context.deadline_exceeded */
static int l_err(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "err"); /* (the runtime only if needed) */
  lc_push_err(L, ctx_err_public(L, c));
  return 1;
}

/* ctx:is_done() -> boolean */
static int l_is_done(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "is_done");
  lua_pushboolean(L, ctx_err_public(L, c) != CTX_ERR_NONE);
  return 1;
}

/* ctx:check() -> ctx, or raises ctx:err() */
static int l_check(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "check");
  int e = ctx_err_public(L, c);
  if (e != CTX_ERR_NONE) {
    lc_push_err(L, e);
    return lua_error(L);
  }
  lua_settop(L, 1);
  return 1;
}

/* The context (c or an ancestor) whose own deadline is c's; NULL if none.
** Walks the contexts, not the tree: it works on done contexts too. */
lc_ctx *lc_deadline_owner(lc_ctx *c) {
  int64_t d;
  if (c->cn == NULL || c->cn->deadline == CTX_NEVER) return NULL;
  d = c->cn->deadline;
  while (c != NULL) {
    if (c->kind == LK_TIMER && (lc_node(c)->flags & CTX_F_OWN_DEADLINE) &&
        lc_node(c)->deadline == d)
      return c;
    if (c->kind == LK_MERGE) {
      lc_ctx **in = lc_merge_inputs(c);
      uint32_t i;
      lc_ctx *next = NULL;
      for (i = 0; i < lc_merge_n(c) && next == NULL; i++)
        if (in[i]->cn != NULL && in[i]->cn->deadline == d) next = in[i];
      c = next;
    } else
      c = c->parent;
  }
  return NULL;
}

/* Describe a wait on the context c (see wt_wait_ctx). */
void lc_wait_ctx(lc_wait *x, lc_ctx *c) {
  lc_ctx *o = lc_deadline_owner(c);
  wt_wait_ctx(x, c->cn, o != NULL ? &((lc_tctx *)o)->dl : NULL);
}

/* ctx:deadline() -> epoch seconds, or nil */
static int l_deadline(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "deadline");
  lc_ctx *o = lc_deadline_owner(c);
  if (o != NULL)
    lua_pushnumber(L, ((lc_tctx *)o)->epoch);
  else if (c->cn != NULL && c->cn->deadline != CTX_NEVER)
    lua_pushnumber(L, lc_real(lc_rt(L)) +
                          (double)(c->cn->deadline - lc_now(lc_rt(L))) / 1e9);
  else
    lua_pushnil(L);
  return 1;
}

/* ctx:remaining() -> seconds left (<= 0 once passed), or nil */
static int l_remaining(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "remaining");
  int64_t now;
  if (c->cn == NULL || c->cn->deadline == CTX_NEVER) {
    lua_pushnil(L);
    return 1;
  }
  now = lc_now(lc_rt(L));
  poll(L, lc_rt(L), c->cn, 1, now);
  lua_pushnumber(L, (lua_Number)(c->cn->deadline - now) / 1e9);
  return 1;
}

static int is_node(lua_State *L, lc_ctx *c, int idx, void *arg) {
  (void)L;
  (void)idx;
  return lc_hasnode(c) && lc_node(c) == (const ctx_node *)arg;
}

/* [-0, +1, m] the context that ended the one at idx (nil if running) */
static int push_origin(lua_State *L, int idx, lc_ctx *c) {
  if (lc_ctx_err(L, lc_rt(L), c, idx) == CTX_ERR_NONE ||
      !lc_walk(L, idx, 0, is_node, c->cn->o.origin)) {
    lua_pushnil(L);
    return 0;
  }
  return 1;
}

/* context.origin(ctx) -> the context whose cancel or timer ended ctx */
static int l_origin(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "origin");
  push_origin(L, 1, c);
  return 1;
}

/* ctx:cause() / context.cause(ctx) -> nil | the cause | ctx:err() */
static int l_cause(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "cause");
  int e = ctx_err_public(L, c);
  if (e == CTX_ERR_NONE) {
    lua_pushnil(L);
    return 1;
  }
  if (push_origin(L, 1, c) && lc_push_cause(L, lc_rt(L), lua_gettop(L))) return 1;
  lc_push_err(L, e);
  return 1;
}

/* context.background() / context.todo() */
static int l_background(lua_State *L) {
  lua_pushvalue(L, lc_uv(LC_UV_BG));
  return 1;
}

static int l_todo(lua_State *L) {
  lua_pushvalue(L, lc_uv(LC_UV_TODO));
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** tostring, in Go's style
** ======================================================================= */

static void add_time(luaL_Buffer *b, double epoch) {
  char buf[64];
  time_t s = (time_t)floor(epoch);
  struct tm tm;
  int ms = (int)((epoch - floor(epoch)) * 1000.0);
  if (ms > 999) ms = 999;
  if (epoch < -6e16 || epoch > 6e16 || gmtime_r(&s, &tm) == NULL)
    snprintf(buf, sizeof buf, "%.3f", epoch);
  else
    snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%03d +0000 UTC",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ms);
  luaL_addstring(b, buf);
}

/* add the string form of the value on top, popping it (a __tostring may
** run); the value sits right above the buffer's box, as luaL_addvalue needs */
static void add_tostring(lua_State *L, luaL_Buffer *b) {
  luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  luaL_addvalue(b);
}

static int l_tostring(lua_State *L) {
  lc_ctx *c = lc_checkctx(L, 1, "tostring"), *p;
  int top, i;
  luaL_Buffer b;
  lua_settop(L, 1);
  /* push the chain, leaf first, up to a root or a merge */
  for (p = c; p->kind != LK_MERGE && p->parent != NULL && !isroot(p->parent);
       p = p->parent) {
    luaL_checkstack(L, 4, "context chain too deep");
    lua_getiuservalue(L, -1, 1);
  }
  top = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (i = top; i >= 1; i--) {
    lc_ctx *x = (lc_ctx *)lua_touserdata(L, i);
    if (i == top) { /* the start of the chain */
      if (x->kind == LK_MERGE) {
        uint32_t j;
        luaL_addstring(&b, "context.Merge(");
        for (j = 1; j <= lc_merge_n(x); j++) {
          if (j > 1) luaL_addstring(&b, ", ");
          lua_getiuservalue(L, i, (int)j);
          add_tostring(L, &b);
        }
        luaL_addstring(&b, ")");
        continue;
      }
      if (x->parent != NULL) /* a child of a root */
        luaL_addstring(&b, x->parent->kind == LK_TODO ? "context.TODO"
                                                      : "context.Background");
    }
    switch (x->kind) {
    case LK_BACKGROUND: luaL_addstring(&b, "context.Background"); break;
    case LK_TODO: luaL_addstring(&b, "context.TODO"); break;
    case LK_CANCEL:
      if (x->flags & LCF_SIGNAL) { /* context.signal: the signals it ends on */
        luaL_addstring(&b, ".WithSignal(");
        lua_rawgeti(L, LUA_REGISTRYINDEX, lc_rt(L)->ref_signames);
        lua_pushvalue(L, i);
        lua_rawget(L, -2);
        lua_remove(L, -2);
        add_tostring(L, &b);
        luaL_addstring(&b, ")");
      } else
        luaL_addstring(&b, ".WithCancel");
      break;
    case LK_WITHOUT: luaL_addstring(&b, ".WithoutCancel"); break;
    case LK_TIMER:
      if (lc_node(x)->flags & CTX_F_OWN_DEADLINE) {
        char buf[48];
        luaL_addstring(&b, ".WithDeadline(");
        add_time(&b, ((lc_tctx *)x)->epoch);
        snprintf(buf, sizeof buf, " [%.3fs])",
                 (double)(lc_node(x)->deadline - lc_now(lc_rt(L))) * 1e-9);
        luaL_addstring(&b, buf);
      } else
        luaL_addstring(&b, ".WithCancel");
      break;
    case LK_VALUE:
      luaL_addstring(&b, ".WithValue(");
      lua_getiuservalue(L, i, 2);
      add_tostring(L, &b);
      luaL_addstring(&b, ", ");
      lua_getiuservalue(L, i, 3);
      add_tostring(L, &b);
      luaL_addstring(&b, ")");
      break;
    default: break;
    }
  }
  luaL_pushresult(&b);
  return 1;
}

/* }====================================================================== */

/* __gc of linked contexts: take the node out of the tree */
static int l_gc(lua_State *L) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, 1);
  if (c != NULL && lc_hasnode(c)) {
    if (lc_node(c)->err == CTX_ERR_NONE) lc_rt(L)->collected++; /* never cancelled */
    ctx_detach(&lc_rt(L)->tree, lc_node(c));
    if (c->kind == LK_TIMER)
      wt_deadline_gone(&lc_rt(L)->sched, &((lc_tctx *)c)->dl);
  }
  return 0;
}

#define DERIVATIONS                          \
  {"with_cancel", l_with_cancel},            \
  {"with_cancel_cause", l_with_cancel_cause},\
  {"with_timeout", l_with_timeout},          \
  {"with_deadline", l_with_deadline},        \
  {"with_value", lc_with_value},             \
  {"without_cancel", l_without_cancel},      \
  {"merge", l_merge}

const luaL_Reg lc_ctx_funcs[] = {
  DERIVATIONS,
  {"background", l_background},
  {"_detached", l_detached},
  {"todo", l_todo},
  {"cause", l_cause},
  {"origin", l_origin},
  {NULL, NULL}
};

const luaL_Reg lc_ctx_methods[] = {
  DERIVATIONS,
  {"err", l_err},
  {"is_done", l_is_done},
  {"check", l_check},
  {"deadline", l_deadline},
  {"remaining", l_remaining},
  {"value", lc_value},
  {"cause", l_cause},
  {"origin", l_origin},
  {NULL, NULL}
};

const luaL_Reg lc_ctx_meta[] = {
  {"__tostring", l_tostring},
  {NULL, NULL}
};

const luaL_Reg lc_ctx_gcmeta[] = {
  {"__gc", l_gc},
  {NULL, NULL}
};
