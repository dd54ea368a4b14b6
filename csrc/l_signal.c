/*
** l_signal.c — signal contexts: context.signal(parent, "INT", ...) is a
** child of parent cancelled with cause "signal SIGINT" when a listed signal
** arrives (graceful shutdown).
**
** A signal context is a waiter on its own context: once the context is
** done (by a signal, its cancel or its parent), the waiter is woken and its
** libev watchers stop at once (from the cancel walk: no Lua involved).
** libev sets a signal to SIG_DFL when its last watcher stops; the
** disposition the process had before the first watcher (SIG_IGN under nohup
** or `trap '' PIPE`, a handler of the host's) is saved then and restored.
*/
#define _POSIX_C_SOURCE 200112L
#include <signal.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext_int.h"

static const struct {
  const char *name;
  int signum;
} signames[] = {
  {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
  {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"ALRM", SIGALRM}, {"PIPE", SIGPIPE},
  {"CHLD", SIGCHLD}, {"WINCH", SIGWINCH}, {NULL, 0}
};
#define NSIGNAMES 10

typedef struct lc_sigctx {
  lc_waiter w;
  lc_wait wait;     /* on the context: its end stops the watchers */
  lc_runtime *rt;
  lc_ctx *c;
  int nsig, active;
  ev_signal sig[1]; /* nsig of them */
} lc_sigctx;
/* signal user values: 1 ctx */

/* the runtime's saved dispositions, by signames index */
typedef struct sigsaved {
  struct sigaction old[NSIGNAMES];
} sigsaved;

static int sigindex(int signum) {
  int i;
  for (i = 0; signames[i].name != NULL; i++)
    if (signames[i].signum == signum) return i;
  return -1;
}

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

static void start_watcher(lc_runtime *rt, ev_signal *sw) {
  int i = sigindex(sw->signum);
  if (rt->sigcount[i]++ == 0) /* the first: save what the process had */
    sigaction(sw->signum, NULL, &((sigsaved *)rt->sigsaved)->old[i]);
  ev_signal_start(rt->loop, sw);
}

static void stop_watcher(lc_runtime *rt, ev_signal *sw) {
  int i = sigindex(sw->signum);
  ev_signal_stop(rt->loop, sw);
  if (--rt->sigcount[i] == 0) {
    struct sigaction cur;
    /* libev gave the signal up (SIG_DFL): give back what was there */
    if (sigaction(sw->signum, NULL, &cur) == 0 && cur.sa_handler == SIG_DFL)
      sigaction(sw->signum, &((sigsaved *)rt->sigsaved)->old[i], NULL);
  }
}

static void stop_signals(lc_runtime *rt, lc_sigctx *s) {
  int i;
  if (!s->active) return;
  s->active = 0;
  rt->nsig--;
  if (!rt->closed)
    for (i = 0; i < s->nsig; i++) stop_watcher(rt, &s->sig[i]);
}

/* the core tells: the context of a signal context is done (in the cancel
** walk): stop its watchers now */
void lc_signal_woken(lc_runtime *rt, lc_waiter *w) {
  stop_signals(rt, (lc_sigctx *)w);
}

/* the loop ran the woken waiter: it is over */
void lc_signal_done(lua_State *L, lc_runtime *rt, lc_waiter *w) {
  stop_signals(rt, (lc_sigctx *)w);
  w->state = WT_DONE;
  lc_unanchor(L, rt, w);
}

/* [-3, +0, e] the protected part of signal_cb: rt, s, signum */
static int signal_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 1);
  lc_sigctx *s = (lc_sigctx *)lua_touserdata(L, 2);
  int i = sigindex((int)lua_tointeger(L, 3)), ctxidx;
  ctx_node *n = s->c->cn;
  lc_push_anchored(L, rt, s);
  lua_getiuservalue(L, -1, 1);
  ctxidx = lua_gettop(L);
  lua_pushfstring(L, "signal SIG%s", i >= 0 ? signames[i].name : "?");
  lc_set_cause(L, rt, s->c, ctxidx, ctxidx + 1); /* allocates: before cancel */
  ctx_cancel(&rt->tree, n, CTX_ERR_CANCELED);
  lc_after_cancel(L, rt, ctxidx);
  return 0;
}

/* from libev: never calls the Lua API unprotected */
static void signal_cb(struct ev_loop *loop, ev_signal *sw, int revents) {
  lc_sigctx *s = (lc_sigctx *)sw->data;
  lc_runtime *rt = s->rt;
  lua_State *L = rt->L;
  (void)loop;
  (void)revents;
  if (rt->closed || s->c->cn == NULL ||
      ctx_poll(&rt->tree, s->c->cn, lc_now(rt)) != CTX_ERR_NONE)
    return; /* ended meanwhile (perhaps by a deadline noticed only now):
               its watchers have stopped */
  lua_pushcfunction(L, signal_p);
  lua_pushlightuserdata(L, rt);
  lua_pushlightuserdata(L, s);
  lua_pushinteger(L, sw->signum);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    if (rt->in_run) /* to the caller of run/step */
      lc_pending_error(L, rt, -1);
    else
      lc_report("error in a signal context", L, -1);
    lua_pop(L, 1);
  }
}

/* [-0, +0, m] tell tostring what the signal context c (at ctxidx) listens
** for: "SIGINT, SIGTERM" (each name once, in the order given at 2..n+1) in
** rt->ref_signames, and the LCF_SIGNAL flag once it is there */
static void set_names(lua_State *L, lc_runtime *rt, lc_ctx *c, int ctxidx,
                      int n) {
  luaL_Buffer b;
  const char *name;
  unsigned seen = 0;
  int i;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_signames);
  lua_pushvalue(L, ctxidx);
  luaL_buffinit(L, &b);
  for (i = 2; i <= n + 1; i++) {
    int k = sigindex(signum_of(L, i, &name));
    if (seen & (1u << k)) continue;
    if (seen) luaL_addstring(&b, ", ");
    seen |= 1u << k;
    luaL_addstring(&b, "SIG");
    luaL_addstring(&b, name);
  }
  luaL_pushresult(&b);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  c->flags |= LCF_SIGNAL;
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
  for (i = 2; i <= n + 1; i++)
    if (signum_of(L, i, &name) == 0)
      lc_argerror(L, i, "signal",
                  lua_pushfstring(L, "unknown signal '%s'", luaL_tolstring(L, i, NULL)));
  if (rt->closed) return luaL_error(L, "context.signal: the state is closing");
  lc_need_loop(L, rt);
  lua_settop(L, n + 1);
  /* the context: with_cancel(parent) */
  lua_getfield(L, lc_uv(LC_UV_CTXMT), "__index");
  lua_getfield(L, -1, "with_cancel");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 2);
  lua_remove(L, -3);
  ctxidx = lua_gettop(L) - 1;
  c = (lc_ctx *)lua_touserdata(L, ctxidx);
  set_names(L, rt, c, ctxidx, n);
  s = (lc_sigctx *)lua_newuserdatauv(
      L, sizeof(lc_sigctx) + (size_t)(n - 1) * sizeof(ev_signal), 1);
  memset(s, 0, sizeof *s);
  wt_waiter_init(&s->w, WK_SIGNAL, 0);
  s->w.flags = WT_WF_NOTIFY;
  s->rt = rt;
  s->c = c;
  s->nsig = n;
  lua_pushvalue(L, ctxidx);
  lua_setiuservalue(L, -2, 1);
  lc_anchor(L, rt, -1); /* allocated: now arm */
  /* a parent's deadline ends it, and its listening, on time (so run()
  ** waits for that deadline, as Go waits for NotifyContext's goroutine);
  ** with no deadline it does not keep run() alive */
  lc_wait_ctx(&s->wait, c);
  if (wt_park(&rt->sched, &s->w, &s->wait, 1, lc_now(rt)) != 0) {
    lc_unanchor(L, rt, s); /* parent already done */
    lua_pop(L, 1);
    return 2;
  }
  for (i = 0; i < n; i++) {
    ev_signal_init(&s->sig[i], signal_cb, signum_of(L, i + 2, &name));
    s->sig[i].data = s;
    start_watcher(rt, &s->sig[i]);
  }
  s->active = 1;
  rt->nsig++;
  lua_pop(L, 1);
  return 2;
}

void lc_signal_init(lua_State *L, lc_runtime *rt) {
  sigsaved *ss = (sigsaved *)lua_newuserdatauv(L, sizeof(sigsaved), 0);
  memset(ss, 0, sizeof *ss);
  luaL_ref(L, LUA_REGISTRYINDEX); /* for the state's life */
  rt->sigsaved = ss;
  lc_weak_table(L, "k");
  rt->ref_signames = luaL_ref(L, LUA_REGISTRYINDEX);
  memset(rt->sigcount, 0, sizeof rt->sigcount);
}

const luaL_Reg lc_signal_funcs[] = {
  {"signal", l_signal},
  {NULL, NULL}
};
