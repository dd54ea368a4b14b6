/*
** host.c — a C program that runs its own libev loop and embeds Lua 5.4
** with lcontext on that loop (see csrc/lcontext.h).
**
** It hands its loop to lcontext, runs script.lua (which starts tasks with
** deadlines), then drives everything with its own ev_run: lcontext's tasks,
** sleeps and deadlines fire from the host's loop, next to the host's own
** watchers (here a heartbeat timer). Exit status 0 when the script's
** expectations held.
**
** Build: make build/embed-host   (lcontext's sources compiled in; README's
**        "Embedding in a C host" builds it against an installed rock)
** Run:   ./build/embed-host examples/embed/script.lua   (from the repository root)
*/
#include <stdio.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#include "lcontext.h"

static int beats;

static void heartbeat(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)revents;
  if (++beats >= 20) ev_timer_stop(loop, w); /* the host's own work */
}

int main(int argc, char **argv) {
  const char *script = argc > 1 ? argv[1] : "examples/embed/script.lua";
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  lua_State *L;
  ev_timer hb;
  int ok;
  if (loop == NULL) {
    fprintf(stderr, "host: no libev loop\n");
    return 1;
  }
  ev_timer_init(&hb, heartbeat, 0.005, 0.005);
  ev_timer_start(loop, &hb);

  L = luaL_newstate();
  luaL_openlibs(L);
  lcontext_use_loop(L, loop); /* before lcontext loads */
  luaL_requiref(L, "lcontext.core", luaopen_lcontext_core, 0);
  lua_pop(L, 1);
  /* find lua/lcontext/init.lua in this checkout */
  (void)luaL_dostring(L, "package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path");

  if (luaL_dofile(L, script) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    lua_close(L);
    ev_loop_destroy(loop);
    return 1;
  }
  printf("host: script loaded, running the host's loop\n");
  ev_run(loop, 0); /* lcontext's tasks run from here */
  printf("host: loop ended after %d heartbeats\n", beats);

  /* the script leaves a function `check` that says whether all went well */
  lua_getglobal(L, "check");
  ok = lua_pcall(L, 0, 1, 0) == LUA_OK && lua_toboolean(L, -1);
  if (!ok) fprintf(stderr, "host: check failed: %s\n", lua_tostring(L, -1));
  lua_close(L); /* stops lcontext's watchers */
  ev_loop_destroy(loop);
  printf("host: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
