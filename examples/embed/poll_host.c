/*
** poll_host.c — a C program whose event loop is poll(2), not libev, with
** Lua 5.4 and lcontext embedded (see csrc/lcontext.h, "A host whose loop is
** not libev").
**
** lcontext keeps libev's default loop to itself; the host polls that
** loop's fd (lcontext_pollfd) beside its own, for at most
** lcontext_timeout_ms, and calls lcontext_step after each poll. The host's
** own work: a pipe it writes a byte into at its third tick (a task of
** poll_script.lua waits on the pipe's other end with context.wait_fd and
** reads the byte through host_read(), a C function the host gives Lua),
** and a tick every 30 ms, 6 of them. Exit status 0 when the script's
** expectations held.
**
** Build: make build/embed-poll-host   (lcontext's sources compiled in)
** Run:   ./build/embed-poll-host examples/embed/poll_script.lua   (from the repository root)
*/
#define _POSIX_C_SOURCE 200112L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#include "lcontext.h"

#define TICK_MS 30
#define TICKS 6

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* host_read(fd) -> the byte read from fd as a string, or nil */
static int host_read(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  char c;
  if (read(fd, &c, 1) != 1) return 0;
  lua_pushlstring(L, &c, 1);
  return 1;
}

static int fail(lua_State *L, const char *what) {
  fprintf(stderr, "poll-host: %s: %s\n", what, lua_tostring(L, -1));
  lua_close(L);
  return 1;
}

int main(int argc, char **argv) {
  const char *script = argc > 1 ? argv[1] : "examples/embed/poll_script.lua";
  lua_State *L;
  int pipefd[2], lcfd, ticks = 0, polls = 0, more = 1, ok;
  double next_tick;

  if (pipe(pipefd) != 0) {
    perror("poll-host: pipe");
    return 1;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "lcontext.core", luaopen_lcontext_core, 0);
  lua_pop(L, 1);
  /* find lua/lcontext/init.lua in this checkout */
  (void)luaL_dostring(L, "package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path");
  lua_pushinteger(L, pipefd[0]);
  lua_setglobal(L, "host_fd");
  lua_pushcfunction(L, host_read);
  lua_setglobal(L, "host_read");
  if (luaL_dofile(L, script) != LUA_OK) return fail(L, "script");

  lcfd = lcontext_pollfd(L); /* libev's epoll fd (its loop is lcontext's) */
  if (lcfd < 0) return fail(L, "lcontext_pollfd");
  printf("poll-host: script loaded, polling lcontext's fd beside the host's own work\n");

  next_tick = now_ms() + TICK_MS;
  while (more || ticks < TICKS) {
    struct pollfd p[1];
    int wait = -1, lc;
    if (lcontext_step(L, &more) != LUA_OK) return fail(L, "lcontext_step");
    if (ticks < TICKS) { /* the host's own timer */
      double left = next_tick - now_ms();
      wait = left <= 0 ? 0 : (int)left + 1;
    }
    lc = more ? lcontext_timeout_ms(L) : -1; /* just before blocking */
    if (lc >= 0 && (wait < 0 || lc < wait)) wait = lc;
    if (!more && ticks >= TICKS) break;
    p[0].fd = lcfd;
    p[0].events = POLLIN;
    p[0].revents = 0;
    if (poll(p, 1, wait) < 0 && errno != EINTR) {
      perror("poll-host: poll");
      break;
    }
    polls++;
    if (ticks < TICKS && now_ms() >= next_tick) {
      ticks++;
      next_tick += TICK_MS;
      if (ticks == 3) { /* the host's event, for a task waiting on the pipe */
        if (write(pipefd[1], "!", 1) != 1) perror("poll-host: write");
      }
    }
  }
  printf("poll-host: loop ended after %d ticks (%d polls)\n", ticks, polls);

  /* the script leaves a function `check` that says whether all went well */
  lua_getglobal(L, "check");
  ok = lua_pcall(L, 0, 1, 0) == LUA_OK && lua_toboolean(L, -1);
  if (!ok) fprintf(stderr, "poll-host: check failed: %s\n", lua_tostring(L, -1));
  lua_close(L);
  close(pipefd[0]);
  close(pipefd[1]);
  printf("poll-host: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
