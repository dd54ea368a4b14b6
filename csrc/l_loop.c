/*
** l_loop.c — the libev loop that drives the wait core: the wheel's timer,
** fd watchers, the drain of the ready queue, run and step. README,
** "Scheduler". (Waiting itself is l_park.c.)
**
** Errors: the drain runs under a protected call on the main thread. An
** error that escapes it (an interrupt from lua.c's SIGINT hook, a memory
** error) is kept (lc_pending_error) and raised to the caller of run, step
** or the main-thread wait, once the loop is consistent again; libev's
** callbacks never raise through libev.
*/
#define _POSIX_C_SOURCE 200112L
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcontext.h"
#include "lcontext_int.h"

/* an ev_io fits in the core's opaque room for it */
typedef char lc_evio_fits[sizeof(ev_io) <= sizeof(((wt_wait *)0)->u.io.impl)
                              ? 1 : -1];
#define evio_of(x) ((ev_io *)(void *)(x)->u.io.impl)

/* {======================================================================
** What the core asks of the loop
** ======================================================================= */

static void io_cb(struct ev_loop *loop, ev_io *io, int revents) {
  lc_runtime *rt = (lc_runtime *)io->data;
  lc_wait *x = (lc_wait *)(void *)((char *)io - offsetof(lc_wait, u.io.impl));
  int r = (revents & EV_ERROR) ? WT_IO_ERROR /* libev stopped it */
          : ((revents & EV_READ) ? WT_IO_READ : 0) |
            ((revents & EV_WRITE) ? WT_IO_WRITE : 0);
  (void)loop;
  wt_io_ready(&rt->sched, x, r);
}

static int io_start(wt_sched *s, lc_wait *x) {
  lc_runtime *rt = (lc_runtime *)s->ud;
  ev_io *io = evio_of(x);
  int ev = ((x->u.io.events & WT_IO_READ) ? EV_READ : 0) |
           ((x->u.io.events & WT_IO_WRITE) ? EV_WRITE : 0);
  /* libev aborts on an fd that is not open, or that is its own epoll fd
  ** (a closed fd whose number the loop took): ask first */
  if (rt->closed || rt->loop == NULL || x->u.io.fd == rt->loopfd ||
      fcntl(x->u.io.fd, F_GETFD) == -1)
    return -1;
  ev_io_init(io, io_cb, x->u.io.fd, ev);
  io->data = rt;
  ev_io_start(rt->loop, io);
  return 0;
}

static void io_stop(wt_sched *s, lc_wait *x) {
  lc_runtime *rt = (lc_runtime *)s->ud;
  if (!rt->closed) ev_io_stop(rt->loop, evio_of(x));
}

static void queued(wt_sched *s) {
  lc_runtime *rt = (lc_runtime *)s->ud;
  if (!rt->closed && rt->loop != NULL && !ev_is_active(&rt->idle))
    ev_idle_start(rt->loop, &rt->idle);
}

static void woken(wt_sched *s, wt_waiter *w) {
  if (w->kind == WK_SIGNAL)
    lc_signal_woken((lc_runtime *)s->ud, w);
  else
    lc_callback_woken(s, w);
}

static const wt_ops ops = {io_start, io_stop, queued, woken};

/* }====================================================================== */

/* resumptions in one drain before the loop gets a turn (see drain_p) */
#define LC_DRAIN_ROUND 1024

/* {======================================================================
** The wheel's timer, and the drain
** ======================================================================= */

static void arm(lc_runtime *rt) {
  int64_t next;
  if (rt->closed || rt->loop == NULL) return; /* armed once a loop exists */
  /* a virtual clock moves by advance or autojump (lc_turn), never by a
  ** real timer */
  next = rt->vclock ? TW_NEVER : wt_next_wakeup(&rt->sched);
  if (next == rt->wtimer_at) return;
  if (ev_is_active(&rt->wtimer)) ev_timer_stop(rt->loop, &rt->wtimer);
  rt->wtimer_at = next;
  if (next != TW_NEVER) {
    int64_t now = lc_now(rt);
    double after = next > now ? (double)(next - now) * 1e-9 : 0.0;
    ev_now_update(rt->loop);
    ev_timer_set(&rt->wtimer, after, 0.0);
    ev_timer_start(rt->loop, &rt->wtimer);
  }
}

static void advance(lc_runtime *rt) { wt_advance(&rt->sched, lc_now(rt)); }
static void iterate_for(lc_runtime *rt, double secs);

/* [-1, +0, e] the body of drain: run what is ready, until nothing is */
static int drain_p(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 1);
  wt_waiter *w;
  int top = lua_gettop(L), n = 0;
  lc_after_cancel(L, rt, 0);
  advance(rt);
  lc_after_cancel(L, rt, 0);
  while ((w = wt_pop(&rt->sched)) != NULL) {
    switch (w->kind) {
    case WK_MAIN: w->state = WT_IDLE; break; /* its park_main sees it */
    case WK_TASK: lc_resume_task(L, rt, (lc_task *)w); break;
    case WK_CALLBACK: lc_start_callback(L, rt, (lc_callback *)w); break;
    case WK_SIGNAL: lc_signal_done(L, rt, w); break;
    default: w->state = WT_DONE; break; /* not queued */
    }
    lua_settop(L, top);
    lc_after_cancel(L, rt, 0);
    if (rt->sched.ready == NULL) {
      advance(rt);
      lc_after_cancel(L, rt, 0);
    } else if (++n == LC_DRAIN_ROUND) {
      /* A round: what is due fires, and the loop polls fds and signals
      ** before the next (the idle watcher stays on while work is ready),
      ** so that tasks that keep each other ready, or one that only
      ** yields, starve nothing. */
      advance(rt);
      lc_after_cancel(L, rt, 0);
      break;
    }
  }
  return 0;
}

/* Run what is ready, until nothing is or a round ends (LC_DRAIN_ROUND
** resumptions: then what is ready waits for the next drain), on the main
** thread, protected.
** Returns 0 if an error escaped: it is pending for the Lua caller if there
** is one (can_raise), else reported. */
int lc_drain(lc_runtime *rt, int can_raise) {
  lua_State *L = rt->L;
  int ok = 1;
  if (rt->draining) return 1;
  rt->draining = 1;
  lua_pushcfunction(L, drain_p);
  lua_pushlightuserdata(L, rt);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    if (can_raise)
      lc_pending_error(L, rt, -1);
    else
      lc_report("error in the loop", L, -1);
    lua_pop(L, 1);
    rt->current = NULL;
    ok = 0;
  }
  rt->draining = 0;
  if (!rt->closed && rt->sched.ready == NULL && ev_is_active(&rt->idle))
    ev_idle_stop(rt->loop, &rt->idle); /* active only with a loop */
  arm(rt);
  return ok;
}

/* }====================================================================== */

/* {======================================================================
** libev's side
** ======================================================================= */

/* from libev, when the host runs the loop (run() drains by itself) */
static void host_drain(lc_runtime *rt) {
  if (rt->in_run || rt->draining) return;
  lc_drain(rt, 0);
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
  if (rt->sched.ready == NULL) ev_idle_stop(loop, w);
  host_drain(rt);
}

static void step_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
}

/* could anything still happen without the main thread doing something?
** (with a virtual clock that does not jump, its timers cannot) */
int lc_can_progress(lc_runtime *rt) {
  if (rt->vclock && !rt->autojump)
    return rt->sched.ready != NULL || rt->sched.nio > 0 || rt->nsig > 0;
  return wt_pending(&rt->sched) || rt->nsig > 0;
}

/* the deadlock error's words when only virtual time is left to wait for */
const char *lc_deadlock_hint(lc_runtime *rt) {
  return rt->vclock && !rt->autojump && tw_count(&rt->sched.wheel) > 0
             ? " (only virtual time can wake it: clock:advance(seconds), or "
               "context.virtual_clock{autojump = true})"
             : "";
}

static int alive(lc_runtime *rt) {
  return rt->sched.ready != NULL || rt->ntasks > 0 ||
         tw_count(&rt->sched.wheel) > 0 || rt->sched.nio > 0;
}

#define SWEEP_NS 50000000 /* 50 ms */

/* Before the loop may block: find tasks closed from outside while they
** waited (lc_sweep_closed), if tasks wait and the block may be long or the
** last look is 50 ms old: a closed task is released before the loop sleeps
** on its behalf, and its cost stays small next to the loop's. */
static void sweep(lc_runtime *rt) {
  int64_t now, next;
  if (rt->sched.nparked == 0 || rt->sched.ready != NULL) return;
  now = lc_now(rt);
  next = wt_next_wakeup(&rt->sched);
  if (now - rt->swept_at < SWEEP_NS && next != TW_NEVER &&
      next - now < SWEEP_NS)
    return;
  rt->swept_at = now;
  lc_sweep_closed(rt);
}

/* one blocking (or not) iteration of libev, then the wheel */
void lc_iterate(lc_runtime *rt, int flags) {
  if (!(flags & EVRUN_NOWAIT)) sweep(rt);
  arm(rt);
  rt->in_run++;
  ev_run(rt->loop, flags);
  rt->in_run--;
  advance(rt);
}

/* an iteration that blocks for at most secs (steptimer bounds it) */
static void iterate_for(lc_runtime *rt, double secs) {
  ev_timer_set(&rt->steptimer, secs, 0.0);
  ev_now_update(rt->loop);
  ev_timer_start(rt->loop, &rt->steptimer);
  lc_iterate(rt, EVRUN_ONCE);
  ev_timer_stop(rt->loop, &rt->steptimer);
}

/* The virtual clock moves to the wheel's next wake-up (its due times are
** exact to the wheel's 1 ms tick); the drain that follows fires what is
** due there. */
static void vjump(lc_runtime *rt) {
  int64_t next = wt_next_wakeup(&rt->sched);
  if (next != TW_NEVER && next > rt->vnow) rt->vnow = next;
  advance(rt);
}

/* One turn of the loop where it may block (run, a main-thread wait). With
** a virtual clock that jumps (autojump), a turn in which only its timers
** can wake anyone moves it to the next due time instead: at once when no
** fd is waited on (signal contexts do not hold it back: a signal may come
** at any virtual time), else once autojump_real seconds of real time have
** passed with nothing happening (if set). */
void lc_turn(lc_runtime *rt) {
  if (rt->vclock && rt->autojump && rt->sched.ready == NULL &&
      tw_count(&rt->sched.wheel) > 0) {
    if (rt->sched.nio == 0) { /* (a signal context is no wait: it may come any time) */
      vjump(rt);
      return;
    }
    if (rt->autojump_real >= 0) {
      uint64_t w0 = rt->sched.wakeups;
      iterate_for(rt, rt->autojump_real);
      if (rt->sched.wakeups == w0 && rt->sched.ready == NULL) vjump(rt);
      return;
    }
  }
  lc_iterate(rt, EVRUN_ONCE);
}

/* Move the virtual clock to target (ns), firing what falls due in order
** and running what is ready at each due time before the next, so that a
** task woken at t that sleeps d wakes at t + d within the same move.
** Returns 0 if an error is pending for the caller (lc_raise_pending). */
int lc_vadvance(lc_runtime *rt, int64_t target) {
  for (;;) {
    int64_t next;
    do { /* what is ready now, in rounds, fds polled between them */
      if (!lc_drain(rt, 1)) return 0;
      if (rt->sched.ready != NULL) lc_iterate(rt, EVRUN_NOWAIT);
    } while (rt->sched.ready != NULL);
    next = wt_next_wakeup(&rt->sched);
    if (next == TW_NEVER || next > target) break;
    if (next > rt->vnow) rt->vnow = next;
    advance(rt);
  }
  if (target > rt->vnow) rt->vnow = target;
  advance(rt);
  do {
    if (!lc_drain(rt, 1)) return 0;
  } while (rt->sched.ready != NULL);
  return 1;
}

/* re-arm the wheel's timer after the clock changed (l_clock.c) */
void lc_rearm(lc_runtime *rt) {
  if (rt->loop != NULL && !rt->closed) {
    rt->wtimer_at = -1; /* (whatever it was armed for) */
    arm(rt);
  }
}

/* The fd of the loop's own backend (epoll), if this call made it, else -1:
** it is the lowest free fd just before, and /proc says it is an epoll fd.
** (libev has no accessor for it; watching it aborts libev.) */
static struct ev_loop *default_loop(int *loopfd) {
  struct ev_loop *loop;
  char path[64], link[64];
  ssize_t n;
  int f0 = open("/dev/null", O_RDONLY);
  if (f0 >= 0) close(f0);
  loop = ev_default_loop(0);
  *loopfd = -1;
  if (loop != NULL && f0 >= 0) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", f0);
    n = readlink(path, link, sizeof link - 1);
    if (n > 0) {
      link[n] = '\0';
      if (strstr(link, "eventpoll") != NULL) *loopfd = f0;
    }
  }
  return loop;
}

/* libev's default loop is taken only when first needed: requiring lcontext
** for contexts alone leaves the process's signals (SIGCHLD) alone */
static int find_loopfd(lc_runtime *rt);

void lc_need_loop(lua_State *L, lc_runtime *rt) {
  if (rt->loop != NULL) return;
  rt->loop = default_loop(&rt->loopfd);
  if (rt->loop == NULL) luaL_error(L, "lcontext: cannot initialise libev");
  /* the default loop was made before (another lua_State, C code): find its
  ** epoll fd now, so that io_start refuses it from the first wait */
  if (rt->loopfd < 0 && (ev_backend(rt->loop) & EVBACKEND_EPOLL))
    rt->loopfd = find_loopfd(rt);
  if (rt->sched.ready != NULL) ev_idle_start(rt->loop, &rt->idle);
}

void lc_loop_caller(lua_State *L, lc_runtime *rt, const char *fname) {
  if (rt->current != NULL || rt->draining)
    luaL_error(L, "context.%s: cannot run the loop from inside a task or callback",
               fname);
  if (rt->closed) luaL_error(L, "context.%s: the state is closing", fname);
  lc_need_loop(L, rt);
}



/* context.run([mode]) -> more work left (boolean) */
static int l_run(lua_State *L) {
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  lc_runtime *rt = lc_rt(L);
  int mode = 0;
  if (!lua_isnoneornil(L, 1)) {
    const char *m = lua_tostring(L, 1);
    if (lua_type(L, 1) != LUA_TSTRING) return lc_typeerror(L, 1, "run", "string");
    for (mode = 0; modes[mode] != NULL && strcmp(modes[mode], m) != 0; mode++)
      ;
    if (modes[mode] == NULL)
      return lc_argerror(L, 1, "run", lua_pushfstring(L, "invalid option '%s' "
                         "(\"once\" or \"nowait\" expected)", m));
  }
  lc_loop_caller(L, rt, "run");
  if (!lc_drain(rt, 1)) lc_raise_pending(L, rt);
  if (mode == 0) {
    while (alive(rt)) {
      if (!lc_can_progress(rt) && lc_sweep_closed(rt) > 0) {
        lc_drain(rt, 1);
        lc_raise_pending(L, rt);
        continue;
      }
      if (!lc_can_progress(rt))
        return luaL_error(L, "context.run: deadlock: %d task(s) wait for "
                          "something nothing can bring%s", (int)rt->ntasks,
                          lc_deadlock_hint(rt));
      lc_turn(rt);
      lc_drain(rt, 1);
      lc_raise_pending(L, rt);
    }
  } else {
    if (mode == 2)
      lc_iterate(rt, EVRUN_NOWAIT);
    else if (alive(rt) && lc_can_progress(rt)) {
      uint64_t w0 = rt->sched.wakeups;
      do { /* until something happens, not just a move inside the wheel */
        lc_turn(rt);
        lc_raise_pending(L, rt);
      } while (rt->sched.wakeups == w0 && rt->sched.ready == NULL &&
               lc_can_progress(rt));
    }
    lc_drain(rt, 1);
    lc_raise_pending(L, rt);
  }
  lua_pushboolean(L, alive(rt));
  return 1;
}

/* Would autojump move the virtual clock now? Nothing is ready, and only
** its timers can wake anyone (no fd is waited on): lc_turn's first rule. */
static int jump_now(lc_runtime *rt) {
  return rt->vclock && rt->autojump && rt->sched.ready == NULL &&
         tw_count(&rt->sched.wheel) > 0 && rt->sched.nio == 0;
}

static int after_cancel_p(lua_State *L) {
  lc_after_cancel(L, (lc_runtime *)lua_touserdata(L, 1), 0);
  return 0;
}

/* Apply the loop's pending changes: libev queues an ev_io_start (and the
** signal pipe's) and only tells the backend (epoll_ctl) at the start of
** its next iteration. A foreign loop that sleeps on context.pollfd() after
** step needs them applied, or it would sleep while a task waits on an fd
** that epoll does not watch. One non-blocking iteration does it; what its
** callbacks find only queues work (in_run is set), which context.timeout()
** then reports as 0. */
static void reify(lc_runtime *rt) {
  lua_State *L = rt->L;
  if (rt->closed || rt->loop == NULL) return;
  lc_iterate(rt, EVRUN_NOWAIT);
  /* a deadline found due there woke waiters: the weak ones are anchored
  ** now, as the drain does after each advance, before the host's code
  ** runs (and collects) */
  if (rt->to_anchor != NULL || rt->external != NULL) {
    lua_pushcfunction(L, after_cancel_p);
    lua_pushlightuserdata(L, rt);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      lc_pending_error(L, rt, -1); /* for the next step */
      lua_pop(L, 1);
    }
  }
}

/* context.step([timeout]) -> more work left (boolean) */
static int l_step(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_Number t = lua_isnoneornil(L, 1) ? 0 : lc_checkduration(L, 1, "step");
  lc_loop_caller(L, rt, "step");
  if (!lc_drain(rt, 1)) lc_raise_pending(L, rt);
  /* wait only if something is left: work that ended in the drain above
  ** (or none at all) leaves nothing to wait for. Under a virtual clock
  ** with autojump, when only its timers can wake anyone, step jumps to
  ** the next due time instead, as run does (and context.timeout() says 0
  ** so that a foreign loop calls step) */
  if (jump_now(rt)) {
    vjump(rt);
    lc_iterate(rt, EVRUN_NOWAIT);
  } else if (t > 0 && rt->sched.ready == NULL && alive(rt)) {
    uint64_t w0 = rt->sched.wakeups;
    ev_timer_set(&rt->steptimer, t, 0.0);
    ev_now_update(rt->loop);
    ev_timer_start(rt->loop, &rt->steptimer);
    do /* a wake-up of the wheel that only moves timers is not "more" */
      lc_iterate(rt, EVRUN_ONCE);
    while (rt->sched.wakeups == w0 && ev_is_active(&rt->steptimer) &&
           !lc_has_pending(L, rt));
    ev_timer_stop(rt->loop, &rt->steptimer);
  } else
    lc_iterate(rt, EVRUN_NOWAIT);
  lc_drain(rt, 1);
  reify(rt); /* what the drain started is watched before step returns */
  lc_raise_pending(L, rt);
  lua_pushboolean(L, alive(rt));
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** Foreign loops: context.pollfd() and context.timeout()
** ======================================================================= */

static void probe_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
}

/* does the epoll fd epfd watch fd? (its /proc fdinfo lists "tfd: <fd>") */
static int epoll_watches(int epfd, int fd) {
  char path[64], line[256];
  int found = 0, n;
  FILE *f;
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epfd);
  f = fopen(path, "r");
  if (f == NULL) return 0;
  while (!found && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "tfd: %d", &n) == 1 && n == fd) found = 1;
  fclose(f);
  return found;
}

/* The loop's epoll fd when default_loop could not tell (the default loop
** was made before, by another lua_State or by C code): the eventpoll fd
** that holds a pipe this probe has libev watch. -1 if none does. */
static int find_loopfd(lc_runtime *rt) {
  int p[2], fd = -1;
  ev_io probe;
  DIR *d;
  struct dirent *e;
  if (pipe(p) != 0) return -1;
  ev_io_init(&probe, probe_cb, p[0], EV_READ);
  ev_io_start(rt->loop, &probe);
  reify(rt); /* epoll_ctl: the pipe joins the set */
  d = opendir("/proc/self/fd");
  while (d != NULL && fd < 0 && (e = readdir(d)) != NULL) {
    char path[64], link[64];
    ssize_t n;
    int cand;
    char *end;
    long v = strtol(e->d_name, &end, 10);
    if (*end != '\0' || end == e->d_name || v < 0 || v > INT_MAX) continue;
    cand = (int)v;
    snprintf(path, sizeof path, "/proc/self/fd/%d", cand);
    n = readlink(path, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = '\0';
    if (strstr(link, "eventpoll") != NULL && epoll_watches(cand, p[0]))
      fd = cand;
  }
  if (d != NULL) closedir(d);
  ev_io_stop(rt->loop, &probe);
  reify(rt); /* (the pipe leaves the set before it closes) */
  close(p[0]);
  close(p[1]);
  return fd;
}

/* context.pollfd() -> an fd that is readable when an fd a task waits on is
** ready: libev's epoll fd. The loop is made if there is none yet. A
** foreign loop polls it for at most context.timeout() and calls step(0). */
static int l_pollfd(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int host;
  if (lua_gettop(L) > 0)
    return lc_argerror(L, 1, "pollfd", "no value expected");
  if (rt->closed) return luaL_error(L, "context.pollfd: the state is closing");
  lua_getfield(L, LUA_REGISTRYINDEX, LCONTEXT_LOOP_KEY);
  host = lua_touserdata(L, -1) != NULL;
  lua_pop(L, 1);
  if (host)
    return luaL_error(L, "context.pollfd: lcontext runs on the host's libev "
                      "loop (lcontext_use_loop): the host owns that loop and "
                      "drives it itself");
  lc_need_loop(L, rt);
  if (rt->loopfd < 0 && (ev_backend(rt->loop) & EVBACKEND_EPOLL))
    rt->loopfd = find_loopfd(rt);
  if (rt->loopfd < 0 && (ev_backend(rt->loop) & EVBACKEND_EPOLL))
    return luaL_error(L, "context.pollfd: cannot find the fd of libev's "
                      "epoll backend (/proc/self/fd and fdinfo)");
  if (rt->loopfd < 0)
    return luaL_error(L, "context.pollfd: libev's loop has no pollable fd "
                      "(its backend is not epoll: ev_backend() = %d; "
                      "LIBEV_FLAGS?)", (int)ev_backend(rt->loop));
  lua_pushinteger(L, rt->loopfd);
  return 1;
}

/* The longest a foreign loop may sleep while a signal context listens.
** libev's signal handler writes to its pipe (and so makes the epoll fd
** readable) only while libev itself blocks in epoll_wait; otherwise it
** leaves the signal for its next iteration. A foreign loop blocks in its
** own poll, so a signal only reaches lcontext at the next step: timeout()
** bounds the wait, and a signal is noticed within this much. */
#define LC_SIGNAL_POLL 0.05

/* context.timeout() -> seconds until step is needed again: 0 when work is
** ready (or an error is pending), the time to the wheel's next wake-up,
** or nil when nothing is timed; at most LC_SIGNAL_POLL while a signal
** context listens. Under a virtual clock its timers are not real time:
** nil for them, or 0 when autojump would jump now (step jumps).
** On the main thread, outside the loop, it does what the loop does before
** it blocks: applies the loop's pending changes (reify, as step does
** before returning) and looks for closed tasks (sweep); the answer then
** holds for a poll on context.pollfd(). */
static int l_timeout(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int64_t next, now;
  lua_Number secs;
  if (lua_gettop(L) > 0) /* (a mix-up with context.with_timeout?) */
    return lc_argerror(L, 1, "timeout", "no value expected; "
                       "context.with_timeout(parent, seconds) makes a context");
  if (rt->closed) {
    lua_pushnil(L);
    return 1;
  }
  if (rt->current == NULL && !rt->draining && !rt->in_run) {
    lua_getfield(L, LUA_REGISTRYINDEX, LCONTEXT_LOOP_KEY);
    if (lua_touserdata(L, -1) == NULL) { /* (not the host's loop) */
      sweep(rt);
      reify(rt);
    }
    lua_pop(L, 1);
  }
  if (rt->sched.ready != NULL || rt->to_anchor != NULL ||
      rt->external != NULL || lc_has_pending(L, rt) || jump_now(rt)) {
    lua_pushnumber(L, 0.0);
    return 1;
  }
  /* (virtual timers: no real time to wait for) */
  next = rt->vclock ? TW_NEVER : wt_next_wakeup(&rt->sched);
  if (next == TW_NEVER)
    secs = -1;
  else {
    now = lc_now(rt);
    secs = next > now ? (lua_Number)(next - now) * 1e-9 : 0.0;
  }
  if (rt->nsig > 0 && (secs < 0 || secs > LC_SIGNAL_POLL)) secs = LC_SIGNAL_POLL;
  if (secs < 0)
    lua_pushnil(L);
  else
    lua_pushnumber(L, secs);
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** For runtimes that drive the wheel themselves, and figures
** ======================================================================= */

/* core._advance(): move the timer wheel to now (expired deadlines cancel
** their contexts), then call the watches that became due. For runtimes
** that drive the wheel themselves. */
static int l_advance(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  advance(rt);
  lc_after_cancel(L, rt, 0);
  return 0;
}

/* core._next_wakeup() -> seconds until the wheel needs _advance, or nil */
static int l_next_wakeup(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  int64_t next = wt_next_wakeup(&rt->sched), now;
  if (next == TW_NEVER) return 0;
  now = lc_now(rt);
  lua_pushnumber(L, next > now ? (lua_Number)(next - now) * 1e-9 : 0.0);
  return 1;
}

/* context.sched_stats() -> table of scheduler figures */
static int l_sched_stats(lua_State *L) {
  lc_runtime *rt = lc_rt(L);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)rt->ntasks);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, (lua_Integer)tw_count(&rt->sched.wheel));
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, (lua_Integer)rt->sched.nio);
  lua_setfield(L, -2, "fd_waits");
  lua_pushinteger(L, (lua_Integer)rt->nsig);
  lua_setfield(L, -2, "signal_contexts");
  lua_pushinteger(L, (lua_Integer)rt->resumed);
  lua_setfield(L, -2, "resumed");
  lua_pushinteger(L, (lua_Integer)rt->sched.nparked);
  lua_setfield(L, -2, "parked");
  lua_pushinteger(L, (lua_Integer)rt->sched.nready);
  lua_setfield(L, -2, "ready");
  lua_pushinteger(L, (lua_Integer)rt->lost);
  lua_setfield(L, -2, "lost");
  return 1;
}

/* }====================================================================== */

/* {======================================================================
** Set-up and tear-down
** ======================================================================= */

void lc_loop_init(lua_State *L, lc_runtime *rt) {
  rt->L = lc_mainthread(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LCONTEXT_LOOP_KEY);
  rt->loop = (struct ev_loop *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  /* NULL: libev's default loop, taken when first needed (lc_need_loop) */
  wt_init(&rt->sched, &rt->tree, lc_now(rt), &ops, rt);
  rt->loopfd = -1;
  ev_timer_init(&rt->wtimer, wtimer_cb, 0.0, 0.0);
  rt->wtimer.data = rt;
  rt->wtimer_at = TW_NEVER;
  ev_idle_init(&rt->idle, idle_cb);
  rt->idle.data = rt;
  ev_timer_init(&rt->steptimer, step_cb, 0.0, 0.0);
  lua_newtable(L);
  rt->ref_anchors = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_weak_table(L, "k"); /* keep sets: an ephemeron table */
  rt->ref_keep = luaL_ref(L, LUA_REGISTRYINDEX);
  lc_task_init(L, rt);
  lc_callback_init(L, rt);
  lc_signal_init(L, rt);
  lc_metrics_init(L, rt);
}

/* __gc of the runtime (lua_close): stop every watcher it started */
int lc_runtime_gc(lua_State *L) {
  lc_runtime *rt = (lc_runtime *)lua_touserdata(L, 1);
  if (rt->closed) return 0;
  if (rt->loop != NULL) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->ref_anchors);
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TLIGHTUSERDATA &&
            lua_type(L, -1) == LUA_TUSERDATA) {
          lc_waiter *w = (lc_waiter *)lua_touserdata(L, -2);
          if (w->kind == WK_SIGNAL) lc_signal_woken(rt, w);
          wt_release(&rt->sched, w);
          w->state = WT_DONE;
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    if (ev_is_active(&rt->wtimer)) ev_timer_stop(rt->loop, &rt->wtimer);
    if (ev_is_active(&rt->idle)) ev_idle_stop(rt->loop, &rt->idle);
    if (ev_is_active(&rt->steptimer)) ev_timer_stop(rt->loop, &rt->steptimer);
  }
  rt->closed = 1;
  return 0;
}

const luaL_Reg lc_loop_funcs[] = {
  {"run", l_run},
  {"step", l_step},
  {"pollfd", l_pollfd},
  {"timeout", l_timeout},
  {"sched_stats", l_sched_stats},
  {"_advance", l_advance},
  {"_next_wakeup", l_next_wakeup},
  {NULL, NULL}
};
