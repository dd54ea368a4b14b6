/*
** l_open.c — luaopen_lcontext_core: the runtime, the shared upvalues, the
** metatables and the module table. The top of the binding: it calls every
** file's set-up, and no file calls it.
*/
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE */
#endif
#include <string.h>
#if defined(__linux__)
#include <dlfcn.h>
#endif

#include "lua.h"
#include "lauxlib.h"

#include "lcontext.h"
#include "lcontext_int.h"


/* the module's functions, by file (each with the shared upvalues) */
static const luaL_Reg *const module_funcs[] = {
  lc_ctx_funcs, lc_key_funcs, lc_task_funcs, lc_callback_funcs,
  lc_signal_funcs, lc_loop_funcs, lc_park_funcs, lc_metrics_funcs,
  lc_sync_funcs, lc_clock_funcs, lc_ffi_funcs, NULL
};

/* [-0, +LC_NUP, m] push the shared upvalues kept in table t */
static void push_upvalues(lua_State *L, int t) {
  int i;
  for (i = 1; i <= LC_NUP; i++) lua_rawgeti(L, t, i);
}

/* [-0, +0, m] the metatable at uvt[i]: funcs (with the shared upvalues),
** a __name and a protected __metatable */
static void setup_mt(lua_State *L, int uvt, int i, const luaL_Reg *funcs,
                     const char *name) {
  lua_rawgeti(L, uvt, i);
  push_upvalues(L, uvt);
  luaL_setfuncs(L, funcs, LC_NUP);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

static void new_root(lua_State *L, int kind) {
  lc_ctx *c = (lc_ctx *)lua_newuserdatauv(L, sizeof(lc_ctx), 0);
  memset(c, 0, sizeof *c);
  c->kind = (uint8_t)kind;
  c->magic = LC_CTX_MAGIC;
}

#if defined(__GNUC__)
#define LC_EXPORT __attribute__((visibility("default")))
#else
#define LC_EXPORT
#endif

/*
** Keep this module (and libev with it) mapped after lua_close unloads it:
** libev's default loop, with its signal handlers, outlives the lua_State.
*/
static void pin_module(void) {
#if defined(__linux__) && defined(RTLD_NODELETE)
  Dl_info info;
  if (dladdr((void *)(size_t)pin_module, &info) && info.dli_fname != NULL)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
#endif
}

/* require "lcontext.core" */
LC_EXPORT int luaopen_lcontext_core(lua_State *L) {
  int uvt, i;
  lc_runtime *rt;
  pin_module();
  lua_createtable(L, LC_NUP, 0); /* the upvalues, by index */
  uvt = lua_gettop(L);
  lua_newtable(L);
  lua_rawseti(L, uvt, LC_UV_CTXMT);
  lua_newtable(L);
  lua_rawseti(L, uvt, LC_UV_CTXMTGC);
  lua_newtable(L);
  lua_rawseti(L, uvt, LC_UV_CANCELMT);
  rt = (lc_runtime *)lua_newuserdatauv(L, sizeof(lc_runtime), 0);
  memset(rt, 0, sizeof *rt);
  ctx_tree_init(&rt->tree);
  rt->tree.clock = lc_tree_clock; /* the runtime's: virtual time too */
  rt->tree.clock_ud = rt;
  lua_rawseti(L, uvt, LC_UV_RT);
  lc_new_sentinels(L);
  lua_rawseti(L, uvt, LC_UV_DEADLINE);
  lua_rawseti(L, uvt, LC_UV_CANCELED);
  lc_weak_table(L, "k"); /* causes */
  lua_rawseti(L, uvt, LC_UV_CAUSES);
  lua_newtable(L);
  lua_rawseti(L, uvt, LC_UV_KEYMT);
  lua_newtable(L);
  lua_rawseti(L, uvt, LC_UV_TASKMT);
  lc_weak_table(L, "v"); /* vmap */
  lua_rawseti(L, uvt, LC_UV_VMAP);
  lua_rawgeti(L, uvt, LC_UV_CTXMT);
  new_root(L, LK_BACKGROUND);
  lua_pushvalue(L, -2);
  lua_setmetatable(L, -2);
  lua_rawseti(L, uvt, LC_UV_BG);
  new_root(L, LK_TODO);
  lua_pushvalue(L, -2);
  lua_setmetatable(L, -2);
  lua_rawseti(L, uvt, LC_UV_TODO);
  lua_pop(L, 1);
  lua_rawgeti(L, uvt, LC_UV_CANCELMT);
  rt->cancelmt = lua_topointer(L, -1);
  lua_pop(L, 1);
  lua_rawgeti(L, uvt, LC_UV_TASKMT);
  rt->taskmt = lua_topointer(L, -1);
  lua_pop(L, 1);

  /* the scheduler; the runtime's __gc stops its watchers at lua_close */
  lua_rawgeti(L, uvt, LC_UV_TASKMT);
  rt->ref_taskmt = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_loop_init(L, rt);
  lc_sync_init(L, rt, uvt);
  lc_clock_init(L, rt, uvt);
  lua_rawgeti(L, uvt, LC_UV_CANCELED);
  rt->canceled_p = lua_topointer(L, -1);
  lua_rawgeti(L, uvt, LC_UV_DEADLINE);
  rt->deadline_p = lua_topointer(L, -1);
  lua_pop(L, 2);
  lua_rawgeti(L, uvt, LC_UV_CAUSES);
  rt->ref_causes = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
  lua_rawgeti(L, uvt, LC_UV_CANCELED);
  lua_setfield(L, -2, "canceled");
  lua_rawgeti(L, uvt, LC_UV_DEADLINE);
  lua_setfield(L, -2, "deadline_exceeded");
  lua_pop(L, 1);
  lua_rawgeti(L, uvt, LC_UV_RT);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lc_runtime_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);

  /* methods table, shared by both context metatables */
  lua_newtable(L);
  push_upvalues(L, uvt);
  luaL_setfuncs(L, lc_ctx_methods, LC_NUP);
  for (i = 0; i < 2; i++) {
    lua_rawgeti(L, uvt, LC_UV_CTXMT + i);
    push_upvalues(L, uvt);
    luaL_setfuncs(L, lc_ctx_meta, LC_NUP);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "context");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "context");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  lua_rawgeti(L, uvt, LC_UV_CTXMTGC); /* only linked contexts pay for __gc */
  push_upvalues(L, uvt);
  luaL_setfuncs(L, lc_ctx_gcmeta, LC_NUP);
  lua_pop(L, 1);

  setup_mt(L, uvt, LC_UV_CANCELMT, lc_cancel_meta, "context.cancel");
  setup_mt(L, uvt, LC_UV_TASKMT, lc_task_meta, "context.task");
  setup_mt(L, uvt, LC_UV_KEYMT, lc_key_meta, "context.key");
  lua_rawgeti(L, uvt, LC_UV_TASKMT); /* task methods */
  lua_newtable(L);
  push_upvalues(L, uvt);
  luaL_setfuncs(L, lc_task_methods, LC_NUP);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  /* the module: every file's functions, then what Lua-level modules build on */
  lua_newtable(L);
  for (i = 0; module_funcs[i] != NULL; i++) {
    push_upvalues(L, uvt);
    luaL_setfuncs(L, module_funcs[i], LC_NUP);
  }
  lua_rawgeti(L, uvt, LC_UV_CANCELED);
  lua_setfield(L, -2, "canceled");
  lua_rawgeti(L, uvt, LC_UV_DEADLINE);
  lua_setfield(L, -2, "deadline_exceeded");
  lua_rawgeti(L, uvt, LC_UV_CTXMT);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "_methods"); /* for lua/lcontext to add methods */
  lua_pop(L, 1);
  lua_rawgeti(L, uvt, LC_UV_TASKMT);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "_task_methods");
  lua_pop(L, 1);
  return 1;
}
