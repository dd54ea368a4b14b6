/*
** l_metrics.c — the figures the core keeps (context.metrics) and leak
** tracking (context.debug). Counters are plain increments, always on;
** lifetime histograms cost a clock read per context and are off until
** asked for; tracking costs a traceback and a finaliser per context and is
** off until asked for.
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

void lc_metrics_init(lua_State *L, lc_runtime *rt) {
  lc_weak_table(L, "k"); /* tracked */
  rt->ref_tracked = luaL_ref(L, LUA_REGISTRYINDEX);
}

static void set_int(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* [-0, +1, m] a histogram as {bounds = {s...}, counts = {...}, count, sum} */
static void push_hist(lua_State *L, const ctx_hist *h) {
  int i;
  lua_createtable(L, 0, 4);
  lua_createtable(L, h->nb, 0);
  for (i = 0; i < h->nb; i++) {
    lua_pushnumber(L, (lua_Number)h->bounds[i] * 1e-9);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "bounds");
  lua_createtable(L, h->nb + 1, 0);
  for (i = 0; i <= h->nb; i++) {
    lua_pushinteger(L, (lua_Integer)h->counts[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "counts");
  set_int(L, "count", h->count);
  lua_pushnumber(L, (lua_Number)h->sum_ns * 1e-9);
  lua_setfield(L, -2, "sum");
}

/* context.metrics() -> a table of the core's figures */
static int l_metrics(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  const ctx_tree *t = &rt->tree;
  uint64_t done = t->done[1][0] + t->done[1][1] + t->done[2][0] + t->done[2][1];
  uint64_t gone = done + rt->collected;
  lua_createtable(L, 0, 24);
  set_int(L, "created", t->created);
  set_int(L, "active", t->created > gone ? t->created - gone : 0);
  set_int(L, "canceled", t->done[1][0] + t->done[1][1]);
  set_int(L, "canceled_own", t->done[1][0]);
  set_int(L, "canceled_inherited", t->done[1][1]);
  set_int(L, "deadline_exceeded", t->done[2][0] + t->done[2][1]);
  set_int(L, "deadline_exceeded_own", t->done[2][0]);
  set_int(L, "deadline_exceeded_inherited", t->done[2][1]);
  set_int(L, "collected_uncanceled", rt->collected);
  set_int(L, "timers_pending", tw_count(&rt->sched.wheel));
  set_int(L, "timers_fired", rt->sched.fired);
  set_int(L, "tasks", (uint64_t)rt->ntasks);
  set_int(L, "tasks_waiting", (uint64_t)rt->sched.nparked);
  set_int(L, "tasks_resumed", rt->resumed);
  set_int(L, "callbacks_pending", (uint64_t)rt->ncallbacks);
  set_int(L, "fd_waits", (uint64_t)rt->sched.nio);
  set_int(L, "signal_contexts", (uint64_t)rt->nsig);
  set_int(L, "depth_max", rt->maxdepth);
  lua_pushboolean(L, t->metrics);
  lua_setfield(L, -2, "histograms");
  lua_pushboolean(L, rt->tracking);
  lua_setfield(L, -2, "tracking");
  push_hist(L, &t->lifetime);
  lua_setfield(L, -2, "lifetime");
  push_hist(L, &rt->sched.lateness);
  lua_setfield(L, -2, "lateness");
  return 1;
}

/* context.debug.histograms([on]) -> whether they were on */
static int l_histograms(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_pushboolean(L, rt->tree.metrics);
  if (!lua_isnoneornil(L, 1)) rt->tree.metrics = lua_toboolean(L, 1);
  return 1;
}

/* context.debug.track([on]) -> whether it was on */
static int l_track(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_pushboolean(L, rt->tracking);
  if (!lua_isnoneornil(L, 1)) rt->tracking = lua_toboolean(L, 1);
  return 1;
}

/* [-0, +1, m] a short traceback of the caller: at most 8 Lua frames, in
** luaL_traceback's format (cheaper: no C frames, no full depth) */
static void push_site(lua_State *L) {
  lua_Debug ar;
  luaL_Buffer b;
  int level = 1, n = 0;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "stack traceback:");
  while (n < 8 && lua_getstack(L, level++, &ar)) {
    lua_getinfo(L, "Sln", &ar);
    if (ar.currentline <= 0) continue; /* C functions */
    lua_pushfstring(L, "\n\t%s:%d: in ", ar.short_src, ar.currentline);
    luaL_addvalue(&b);
    if (ar.name != NULL)
      lua_pushfstring(L, "%s '%s'", *ar.namewhat ? ar.namewhat : "function", ar.name);
    else if (*ar.what == 'm')
      lua_pushliteral(L, "main chunk");
    else
      lua_pushfstring(L, "function <%s:%d>", ar.short_src, ar.linedefined);
    luaL_addvalue(&b);
    n++;
  }
  luaL_pushresult(&b);
}

/* [-0, +0, m] remember where the context at idx was made, and when */
void lc_track_new(lua_State *L, lc_runtime *rt, int idx) {
  idx = lua_absindex(L, idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_tracked);
  lua_pushvalue(L, idx);
  lua_createtable(L, 0, 3);
  push_site(L);
  lua_setfield(L, -2, "site");
  lua_pushnumber(L, (lua_Number)lc_now(rt) * 1e-9);
  lua_setfield(L, -2, "created");
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* core._tracked() -> the table of tracked contexts (weak keys) */
static int l_tracked(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, lc_rt(L)->ref_tracked);
  return 1;
}

/* core._kind(ctx) -> "cancel" | "timer" | "merge" | "value" | ... */
static int l_kind(lua_State *L) {
  static const char *const names[] = {"background", "todo", "cancel",
                                      "timer", "merge", "value", "without"};
  lc_ctx *c = lc_testctx(L, 1);
  if (c == NULL) return lc_typeerror(L, 1, "kind", "context");
  lua_pushstring(L, names[c->kind]);
  lua_pushinteger(L, c->depth);
  return 2;
}

static int bench_noop(lua_State *L) {
  (void)L;
  return 0;
}

/* core.bench_alloc("ctx" | "cancel") -> what with_cancel(background)
** allocates for each of its two results, and nothing else: the
** allocation floor `make bench` compares with_cancel against.
** core.bench_alloc("pair") -> both, from one call, the second callable
** (a __call that does nothing): the floor of `ctx, cancel =
** with_cancel(bg); cancel()`, in the same loop shape. */
static int l_bench_alloc(lua_State *L) {
  const char *what = luaL_checkstring(L, 1);
  if (strcmp(what, "pair") == 0) {
    lc_ctx *c = (lc_ctx *)lua_newuserdatauv(L, sizeof(lc_cctx), 0);
    memset(c, 0, sizeof(lc_cctx));
    c->kind = LK_WITHOUT;
    lua_pushvalue(L, lc_uv(LC_UV_CTXMT));
    lua_setmetatable(L, -2);
    lua_newuserdatauv(L, 0, 1);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 1);
    if (luaL_newmetatable(L, "lcontext.bench_noop")) {
      lua_pushcfunction(L, bench_noop);
      lua_setfield(L, -2, "__call");
    }
    lua_setmetatable(L, -2);
    return 2;
  }
  if (strcmp(what, "ctx") == 0) {
    lc_ctx *c = (lc_ctx *)lua_newuserdatauv(L, sizeof(lc_cctx), 0);
    memset(c, 0, sizeof(lc_cctx));
    c->kind = LK_WITHOUT; /* harmless if it escapes: a never-done context */
    lua_pushvalue(L, lc_uv(LC_UV_CTXMT));
  } else {
    lua_newuserdatauv(L, 0, 1);
    lua_pushliteral(L, "bench");
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, lc_uv(LC_UV_KEYMT)); /* a metatable of the same cost */
  }
  lua_setmetatable(L, -2);
  return 1;
}

const luaL_Reg lc_metrics_funcs[] = {
  {"bench_alloc", l_bench_alloc},
  {"metrics", l_metrics},
  {"_histograms", l_histograms},
  {"_track", l_track},
  {"_tracked", l_tracked},
  {"_kind", l_kind},
  {NULL, NULL}
};
