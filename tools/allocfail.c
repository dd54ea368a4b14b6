/*
** allocfail.c — the allocation-failure sweep (README, "Tests").
**
** A C host with lcontext's C sources linked in (and so instrumented: build
** it with -fsanitize=address,undefined, `make build/allocfail`) whose Lua
** allocator makes the N-th allocation fail, for every N, across the
** scenarios of tools/allocfail_scenarios.lua, as Lua's own test suite checks
** its allocation paths (ltests.c, T.alloccount).
**
** One run = one (scenario, mode, N), in a child process of its own (fork),
** so that a memory error, a crash or a hang in one run is reported with its
** sanitizer stack and the sweep goes on:
**   1. a fresh lua_State on the counting allocator, the standard libraries,
**      lcontext.core in package.preload, package.path at the checkout's
**      lua/, the scenarios file loaded, require "lcontext" — nothing fails;
**   2. armed: the N-th allocation that grows or makes a block fails (a free
**      or a shrink never does); in "sticky" mode every later one fails too,
**      until disarmed (Lua's emergency collection retries a failed
**      allocation once, so a single failure is never seen by the code that
**      asked for it), in "once" mode only that one (the emergency full
**      collection then runs at that allocation point: a GC at every
**      allocation point of the scenario);
**   3. the scenario runs under lua_pcall: it must succeed or fail with a
**      memory error (LUA_ERRMEM, or a message containing "not enough
**      memory"); anything else is a failure;
**   4. disarmed: the epilogue (from the scenarios file) checks that the
**      runtime is consistent: collections, context.run() returns (the
**      process's alarm guards it), metrics sane, nothing left anchored,
**      the loop still usable;
**   5. lua_close, then no libev watcher may be left active on the loop;
**      the child's exit runs LeakSanitizer.
** N goes 1, 2, ... until a run ends without the failure being injected
** (the scenario made fewer than N allocations).
**
** Output: one line per scenario and mode, the failures grouped by what went
** wrong (the first with the sanitizer's top frames and the stack of the
** allocation that failed), and last `N passed, N failed`, where each
** (scenario, mode) is one test: it passes when every N passed.
**
** Usage: build/allocfail [-j jobs] [-m sticky|once|both] [-s name,...]
**                        [-n maxN] [-t seconds] [-r root] [-f scenarios.lua]
**        build/allocfail -1 scenario N [-m mode]   one run, in process, verbose
** Environment: ALLOCFAIL_JOBS, ALLOCFAIL_MODE, ALLOCFAIL_ONLY,
** ALLOCFAIL_MAXN, ALLOCFAIL_TIMEOUT, ALLOCFAIL_DETAIL (failures shown in
** full per group, default 1), ALLOCFAIL_VERBOSE=1 (every run's outcome).
*/
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#define _GNU_SOURCE     /* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#include "lcontext.h"

#if defined(__SANITIZE_ADDRESS__)
#define AF_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AF_ASAN 1
#endif
#endif

#ifdef AF_ASAN
#include <sanitizer/common_interface_defs.h>
/* defaults for this binary (the environment still overrides them) */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
  return "detect_leaks=1:abort_on_error=0:exitcode=66:halt_on_error=1:"
         "detect_stack_use_after_return=0:print_summary=1";
}
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "exitcode=67"; }
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void) {
  return "print_stacktrace=1:halt_on_error=1:exitcode=68";
}
#endif

/* exit codes of a child, beside the sanitizers' 66, 67, 68 */
enum { AF_OK = 0, AF_SETUP = 2, AF_HANG = 3, AF_PANIC = 4 };

static struct af_alloc_ *the_alloc_fwd;
#define the_alloc the_alloc_fwd

/* {======================================================================
** The counting allocator
** ======================================================================= */

typedef struct af_alloc_ {
  int armed;
  int sticky;          /* keep failing after the first failure */
  int trace;           /* print the C stack of the first injected failure */
  unsigned long count; /* growing allocations since armed */
  unsigned long failat;/* 0: never */
  unsigned long injected;
  long live;           /* blocks allocated and not freed */
  int phase;           /* where the run is (phases[]) */
  int nsite;
  unsigned long site[12]; /* where the first injected failure was: the
                         ** first frames in this executable (offsets) */
} af_alloc; /* in memory shared with the parent: it reads what a dead run did */

static void *af_realloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  af_alloc *a = (af_alloc *)ud;
  void *p;
  if (nsize == 0) {
    if (ptr != NULL) a->live--;
    free(ptr);
    return NULL;
  }
  if (ptr == NULL) osize = 0; /* osize is then the object's type */
  if (a->armed && nsize > osize) {
    a->count++;
    if (a->failat != 0 &&
        (a->count == a->failat || (a->sticky && a->count > a->failat))) {
      if (a->injected == 0) { /* where? cheap: symbolized by the parent */
        void *pcs[48];
        Dl_info self, di;
        int k = backtrace(pcs, 48), i;
        if (dladdr((void *)&the_alloc, &self)) /* an object of this executable */
          for (i = 1; i < k && a->nsite < 12; i++)
            if (dladdr(pcs[i], &di) && di.dli_fbase == self.dli_fbase)
              a->site[a->nsite++] =
                  (unsigned long)((char *)pcs[i] - (char *)di.dli_fbase) - 1;
      }
      if (a->injected++ == 0 && a->trace) {
        fprintf(stderr, "ALLOCFAIL: allocation #%lu (%lu -> %lu bytes) failed, at:\n",
                a->count, (unsigned long)osize, (unsigned long)nsize);
#ifdef AF_ASAN
        __sanitizer_print_stack_trace();
#endif
        fflush(stderr);
      }
      return NULL;
    }
  }
  p = realloc(ptr, nsize);
  if (p != NULL && ptr == NULL) a->live++;
  return p;
}

/* }====================================================================== */

/* {======================================================================
** One run (in a child process)
** ======================================================================= */

static const char *root = ".";
static const char *scenfile = NULL; /* default: <root>/tools/allocfail_scenarios.lua */
static int timeout_s = 5;
static volatile sig_atomic_t phase = 0;
static void set_phase(int p) { phase = p; the_alloc->phase = p; }
static const char *const phases[] = {"setup", "scenario", "epilogue", "lua_close", "exit"};

static void on_alarm(int sig) {
  const char *p = phases[phase];
  (void)sig;
  (void)!write(2, "HANG: no progress in phase ", 27);
  (void)!write(2, p, strlen(p));
  (void)!write(2, " (the run's alarm fired)\n", 25);
  _exit(AF_HANG);
}

static int on_panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  fprintf(stderr, "PANIC: unprotected error in phase %s: %s\n", phases[phase],
          m != NULL ? m : "(not a string)");
  fflush(stderr);
  _exit(AF_PANIC);
  return 0;
}

static int signum_of(const char *s) {
  static const struct { const char *n; int s; } t[] = {
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"HUP", SIGHUP}, {"INT", SIGINT},
    {"TERM", SIGTERM}, {"WINCH", SIGWINCH}, {NULL, 0}};
  int i;
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (i = 0; t[i].n != NULL; i++)
    if (strcmp(s, t[i].n) == 0) return t[i].s;
  return 0;
}

/* env.raise("USR1") -> true if sent: only while a handler is installed
** (never kills the run when the signal context did not get made) */
static int l_raise(lua_State *L) {
  int sig = signum_of(luaL_checkstring(L, 1));
  struct sigaction sa;
  if (sig == 0 || sigaction(sig, NULL, &sa) != 0 || sa.sa_handler == SIG_DFL ||
      sa.sa_handler == SIG_IGN) {
    lua_pushboolean(L, 0);
    return 1;
  }
  raise(sig);
  lua_pushboolean(L, 1);
  return 1;
}

/* env.armed() -> is the allocator armed? (scenarios may skip assertions on
** values a swallowed memory error could change) */
static int l_armed(lua_State *L) {
  lua_pushboolean(L, the_alloc->armed);
  return 1;
}
static int l_injected(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)the_alloc->injected);
  return 1;
}

static int msg_is_memerr(lua_State *L, int idx) {
  const char *m = lua_tostring(L, idx);
  return m != NULL && strstr(m, "not enough memory") != NULL;
}

static const char *errtext(lua_State *L, int idx) {
  const char *m = lua_tostring(L, idx);
  if (m != NULL) return m;
  return lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

/* Run scenario `name` with failure point N (0: none) in this process.
** Prints `RESULT <injected> <count> ok|FAIL <what>` on stdout; returns the
** exit status. */
static int run_one(af_alloc *ap, const char *name, int sticky, unsigned long n,
                   int trace) {
#define a (*ap) /* the allocator's state, shared with the parent */
  lua_State *L;
  struct ev_loop *loop;
  int st, base, fds[2], scen, env, ok = 1;
  char what[1024];
  what[0] = '\0';
  memset(ap, 0, sizeof *ap);
  a.sticky = sticky;
  a.trace = trace;
  the_alloc = ap;
  signal(SIGALRM, on_alarm);
  alarm((unsigned)timeout_s);
  signal(SIGPIPE, SIG_IGN);
  if (pipe(fds) != 0) {
    perror("allocfail: pipe");
    return AF_SETUP;
  }
  loop = ev_default_loop(0); /* the loop lcontext will take */
  base = ev_run(loop, EVRUN_NOWAIT); /* nonzero: active watchers */

  set_phase(0);
  L = lua_newstate(af_realloc, ap);
  if (L == NULL) return AF_SETUP;
  lua_atpanic(L, on_panic);
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_lcontext_core);
  lua_setfield(L, -2, "lcontext.core");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  /* the scenarios file returns {scenarios = {{name=, run=fn}...}, epilogue = fn} */
  if (scenfile != NULL)
    lua_pushstring(L, scenfile);
  else
    lua_pushfstring(L, "%s/tools/allocfail_scenarios.lua", root);
  if (luaL_dofile(L, lua_tostring(L, -1)) != LUA_OK) {
    fprintf(stderr, "allocfail: %s\n", lua_tostring(L, -1));
    return AF_SETUP;
  }
  scen = lua_gettop(L);
  lua_newtable(L); /* env: what the host gives the scenarios */
  env = lua_gettop(L);
  lua_pushinteger(L, fds[0]);
  lua_setfield(L, env, "pipe_r"); /* never readable */
  lua_pushinteger(L, fds[1]);
  lua_setfield(L, env, "pipe_w"); /* always writable */
  lua_pushcfunction(L, l_raise);
  lua_setfield(L, env, "raise");
  lua_pushcfunction(L, l_armed);
  lua_setfield(L, env, "armed");
  lua_pushcfunction(L, l_injected);
  lua_setfield(L, env, "injected");
  lua_pushstring(L, name);
  lua_setfield(L, env, "name");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lcontext");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "allocfail: require \"lcontext\": %s\n", lua_tostring(L, -1));
    return AF_SETUP;
  }
  lua_setfield(L, env, "context");
  /* the scenario's function */
  lua_getfield(L, scen, "scenarios");
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_getfield(L, -1, "name");
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), name) == 0) {
      lua_pop(L, 1);
      break;
    }
    lua_pop(L, 2);
  }
  if (!lua_istable(L, -1)) {
    fprintf(stderr, "allocfail: no scenario named '%s'\n", name);
    return AF_SETUP;
  }
  lua_getfield(L, -1, "run");
  lua_getfield(L, env, "context");
  lua_pushvalue(L, env);
  lua_gc(L, LUA_GCCOLLECT, 0); /* the same start for every N */

  /* armed */
  set_phase(1);
  a.failat = n;
  a.armed = 1;
  st = lua_pcall(L, 2, 0, 0);
  a.armed = 0;
  if (st == LUA_OK || st == LUA_ERRMEM)
    ;
  else if (st == LUA_ERRRUN && msg_is_memerr(L, -1))
    ;
  else {
    ok = 0;
    snprintf(what, sizeof what, "scenario raised a %s: %s",
             st == LUA_ERRRUN ? "non-memory error" : "error (not LUA_ERRRUN)",
             errtext(L, -1));
  }
  if (ok && st != LUA_OK && a.injected == 0) {
    ok = 0;
    snprintf(what, sizeof what, "scenario failed with no failure injected: %s",
             errtext(L, -1));
  }
  lua_settop(L, env);

  /* disarmed: is the runtime consistent? */
  set_phase(2);
  alarm((unsigned)timeout_s);
  lua_getfield(L, scen, "epilogue");
  lua_getfield(L, env, "context");
  lua_pushvalue(L, env);
  st = lua_pcall(L, 2, 1, 0);
  if (st != LUA_OK) {
    if (ok) snprintf(what, sizeof what, "epilogue raised: %s", errtext(L, -1));
    ok = 0;
  } else if (!lua_isnil(L, -1)) {
    if (ok) snprintf(what, sizeof what, "inconsistent: %s", errtext(L, -1));
    ok = 0;
  }
  lua_settop(L, 0);

  set_phase(3);
  lua_close(L);
  if (a.live != 0 && ok) {
    ok = 0;
    snprintf(what, sizeof what, "%ld Lua blocks not freed by lua_close", a.live);
  }
  /* nothing of lcontext's may be left on the loop (its memory is gone:
  ** a watcher left there is run on freed memory here, and ASan says so) */
  if (ev_pending_count(loop) != 0 || ev_run(loop, EVRUN_NOWAIT) != base) {
    if (ok)
      snprintf(what, sizeof what,
               "after lua_close: libev watchers still active on the loop");
    ok = 0;
  }
  set_phase(4);
  close(fds[0]);
  close(fds[1]);
  printf("RESULT %lu %lu %s %s\n", a.injected, a.count, ok ? "ok" : "FAIL", what);
  fflush(stdout);
  return AF_OK;
#undef a
}

/* }====================================================================== */


/* {======================================================================
** The sweep (the parent: forks the runs, several at a time)
** ======================================================================= */

typedef struct { /* a kind of failure and the N that showed it */
  char sig[600];
  unsigned long *ns;
  int nn, cap;
  char *detail;
} af_group;

typedef struct {
  af_group *g;
  int ng, cap;
  int runs, failed;
  unsigned long calib; /* allocations of the run with no failure */
} af_result;

typedef struct {
  pid_t pid;
  unsigned long n;
  char out[128];
} af_job;

static int verbose;
static int detail_max = 1;
static char tmpdir[64] = "";
static af_alloc *shared; /* one slot per job */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long len;
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = (char *)malloc((size_t)(len < 0 ? 0 : len) + 1);
  if (buf == NULL) {
    fclose(f);
    return NULL;
  }
  len = (long)fread(buf, 1, (size_t)(len < 0 ? 0 : len), f);
  buf[len] = '\0';
  fclose(f);
  return buf;
}

static pid_t spawn(int slot, const char *name, int sticky, unsigned long n,
                   int trace, const char *out) {
  pid_t pid;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid == 0) {
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) _exit(AF_SETUP);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    exit(run_one(&shared[slot], name, sticky, n, trace)); /* exit: LSan runs */
  }
  return pid;
}

/* one line of a sanitizer stack, shortened: "#3 l_park csrc/l_park.c:153" */
static int frame_line(const char *l, char *buf, size_t sz) {
  const char *p = l, *in, *fn, *end;
  while (*p == ' ') p++;
  if (*p != '#' || !(p[1] >= '0' && p[1] <= '9')) return 0;
  end = strchr(p, '\n');
  if (end == NULL) end = p + strlen(p);
  in = strstr(p, " in ");
  if (in == NULL || in > end) {
    snprintf(buf, sz, "%.*s", (int)(end - p), p);
    return 1;
  }
  fn = in + 4;
  snprintf(buf, sz, "%.*s %.*s", (int)(strchr(p, ' ') - p), p, (int)(end - fn), fn);
  /* drop the checkout's absolute prefix, if any */
  return 1;
}

static int boring_frame(const char *f) {
  return strstr(f, "libasan") != NULL || strstr(f, "libubsan") != NULL ||
         strstr(f, "__sanitizer") != NULL || strstr(f, "__interceptor") != NULL ||
         strstr(f, "af_realloc") != NULL || strstr(f, "sanitizer_common") != NULL ||
         strstr(f, "asan_") != NULL;
}

/* is this frame in lcontext's own C code (csrc/)? */
static int own_frame(const char *f) { return strstr(f, "csrc/") != NULL; }

/* the function name of a frame line "#3 l_park csrc/...": into buf */
static void frame_func(const char *f, char *buf, size_t sz) {
  const char *s = strchr(f, ' ');
  size_t k = 0;
  if (s == NULL) { snprintf(buf, sz, "?"); return; }
  s++;
  while (s[k] != '\0' && s[k] != ' ' && k + 1 < sz) { buf[k] = s[k]; k++; }
  buf[k] = '\0';
}

/* append the frames of the stack starting at text p (at most max of them,
** from the first interesting one) to the detail; returns where it ended */
static const char *add_stack(const char *p, char *det, size_t sz, int max,
                             char *firstown, size_t fsz) {
  char fb[400];
  int shown = 0;
  while (p != NULL && *p != '\0') {
    const char *nl = strchr(p, '\n');
    if (frame_line(p, fb, sizeof fb)) {
      if (strstr(fb, "tools/allocfail.c") != NULL && strstr(fb, "af_realloc") == NULL)
        break; /* the harness: run_one, main */
      if (!boring_frame(fb) && strstr(fb, " 0x") == NULL && shown < max) {
        size_t len = strlen(det);
        snprintf(det + len, sz - len, "        %s\n", fb);
        shown++;
      }
      if (firstown != NULL && firstown[0] == '\0' && own_frame(fb))
        frame_func(fb, firstown, fsz);
    } else if (shown > 0 || (p[0] != ' ' && p[0] != '#' && p[0] != '\n'))
      if (shown > 0) break;
    if (nl == NULL) break;
    p = nl + 1;
  }
  return p;
}

static void normalize(char *s) { /* numbers and addresses vary: group anyway */
  char *r = s, *w = s;
  while (*r) {
    if (*r >= '0' && *r <= '9') {
      if (r[0] == '0' && r[1] == 'x') r += 2;
      while ((*r >= '0' && *r <= '9') || (*r >= 'a' && *r <= 'f')) r++;
      *w++ = '#';
    } else
      *w++ = *r++;
  }
  *w = '\0';
}

/* the function at an offset in this executable (addr2line, cached) */
static const char *symbolize(unsigned long off) {
  static struct { unsigned long off; char name[96]; } cache[512];
  static int n;
  char cmd[256], buf[256];
  FILE *f;
  int i;
  for (i = 0; i < n; i++)
    if (cache[i].off == off) return cache[i].name;
  if (n == 512) return "?";
  cache[n].off = off;
  snprintf(cache[n].name, sizeof cache[n].name, "0x%lx", off);
  snprintf(cmd, sizeof cmd, "addr2line -f -s -i -e /proc/%d/exe 0x%lx 2>/dev/null",
           (int)getpid(), off);
  if ((f = popen(cmd, "r")) != NULL) {
    if (fgets(buf, sizeof buf, f) != NULL && buf[0] != '?') {
      buf[strcspn(buf, "\n")] = '\0';
      snprintf(cache[n].name, sizeof cache[n].name, "%.95s", buf);
    }
    pclose(f);
  }
  return cache[n++].name;
}

/* "l_go < new_task < anchor": where the failure was injected */
static void site_of(const af_alloc *a, char *buf, size_t sz) {
  int i;
  buf[0] = '\0';
  const char *fs[12];
  int k = 0;
  for (i = 0; i < a->nsite && k < 3; i++) { /* the innermost 3 of lcontext's */
    const char *f = symbolize(a->site[i]);
    if (strcmp(f, "run_one") == 0 || strcmp(f, "main") == 0) break;
    if (strcmp(f, "af_realloc") != 0) fs[k++] = f;
  }
  for (i = k - 1; i >= 0; i--) {
    size_t len = strlen(buf);
    snprintf(buf + len, sz - len, "%s%s", len ? " > " : "", fs[i]);
  }
}

/* What went wrong in a run: a signature (to group runs by) and a detail
** (what the log says). Returns 0 when the run passed. */
static int judge1(const char *log, int status, const af_alloc *a, char *sig,
                  size_t ssz, char *det, size_t dsz);
static char calib_sig[700]; /* what the run with no failure showed */
static int judge(const char *log, int status, const af_alloc *a, char *sig,
                 size_t ssz, char *det, size_t dsz) {
  int r = judge1(log, status, a, sig, ssz, det, dsz);
  /* where the failure was injected, unless the run without one failed
  ** the same way (then the failure has nothing to do with it) */
  if (r && a->injected > 0 && a->nsite > 0 && strcmp(sig, calib_sig) != 0) {
    char where[300];
    size_t len = strlen(sig);
    site_of(a, where, sizeof where);
    snprintf(sig + len, ssz - len, "\n    failed allocation in: %s", where);
  }
  return r;
}
static int judge1(const char *log, int status, const af_alloc *a, char *sig,
                  size_t ssz, char *det, size_t dsz) {
  const char *res = log ? strstr(log, "RESULT ") : NULL;
  const char *p;
  char own[200] = "";
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  det[0] = '\0';
  sig[0] = '\0';
  if (log == NULL) log = "";
  if ((p = strstr(log, "ERROR: AddressSanitizer: ")) != NULL ||
      (p = strstr(log, "ERROR: LeakSanitizer: ")) != NULL) {
    const char *kind = strstr(p, "Sanitizer: ") + 11;
    const char *eol = strchr(kind, '\n');
    char k[200];
    int leak = strstr(p, "LeakSanitizer") != NULL;
    const char *q;
    snprintf(k, sizeof k, "%.*s", (int)(eol ? eol - kind : (long)strlen(kind)), kind);
    if (!leak) { /* "heap-use-after-free on address 0x... at pc": the kind */
      char *sp = strchr(k, ' ');
      if (sp) *sp = '\0';
    } else
      snprintf(k, sizeof k, "detected memory leaks");
    snprintf(det, dsz, "      %s%s\n", leak ? "LeakSanitizer: " : "AddressSanitizer: ",
             leak ? "detected memory leaks" : kind);
    if ((eol = strchr(det + 6, '\n')) != NULL) ((char *)eol)[1] = '\0';
    q = add_stack(eol ? strchr(p, '\n') : p, det, dsz, 8, own, sizeof own);
    (void)q;
    snprintf(sig, ssz, "[%s] %s: %s in %s", phases[a->phase],
             leak ? "LeakSanitizer" : "AddressSanitizer", k, own[0] ? own : "?");
    return 1;
  }
  if ((p = strstr(log, "runtime error: ")) != NULL) {
    const char *eol = strchr(p, '\n');
    const char *bol = p;
    while (bol > log && bol[-1] != '\n') bol--;
    snprintf(det, dsz, "      %.*s\n", (int)(eol ? eol - bol : (long)strlen(bol)), bol);
    add_stack(eol, det, dsz, 8, own, sizeof own);
    snprintf(sig, ssz, "[%s] UBSan: %.*s", phases[a->phase],
             (int)(eol ? eol - p - 15 : (long)strlen(p + 15)), p + 15);
    normalize(sig);
    return 1;
  }
  if ((p = strstr(log, "HANG: ")) != NULL || (p = strstr(log, "PANIC: ")) != NULL) {
    const char *eol = strchr(p, '\n');
    snprintf(sig, ssz, "%.*s", (int)(eol ? eol - p : (long)strlen(p)), p);
    snprintf(det, dsz, "      %s\n", sig);
    normalize(sig);
    return 1;
  }
  if (res == NULL || code != 0) {
    const char *tail = log + strlen(log);
    int lines = 0;
    if (WIFSIGNALED(status))
      snprintf(sig, ssz, "[%s] killed by signal %d", phases[a->phase], WTERMSIG(status));
    else
      snprintf(sig, ssz, "[%s] exit status %d%s", phases[a->phase], code,
               res == NULL ? ", no result" : "");
    while (tail > log && lines < 12) if (*--tail == '\n') lines++;
    snprintf(det, dsz, "      %s\n      log tail:\n%s\n", sig, tail);
    return 1;
  }
  {
    unsigned long inj, cnt;
    char verdict[8];
    const char *what = res;
    if (sscanf(res, "RESULT %lu %lu %7s", &inj, &cnt, verdict) != 3) {
      snprintf(sig, ssz, "unreadable result");
      return 1;
    }
    if (strcmp(verdict, "ok") == 0) return 0;
    for (int i = 0; i < 4 && what; i++) what = strchr(what + 1, ' ');
    what = what ? what + 1 : "";
    {
      const char *eol = strchr(what, '\n');
      snprintf(det, dsz, "      %.*s\n", (int)(eol ? eol - what : (long)strlen(what)), what);
      snprintf(sig, ssz, "[%s] %.*s", a->injected ? "after failure" : "no failure injected",
               (int)(eol ? eol - what : (long)strlen(what)), what);
    }
    /* group by the message up to the details (a traceback, values) */
    {
      char *cut = strstr(sig, "\nstack traceback");
      if (cut) *cut = '\0';
      if (strlen(sig) > 160) sig[160] = '\0';
    }
    normalize(sig);
    return 1;
  }
}

static void add_failure(af_result *r, const char *sig, unsigned long n,
                        const char *det) {
  af_group *g = NULL;
  int i;
  for (i = 0; i < r->ng; i++)
    if (strcmp(r->g[i].sig, sig) == 0) g = &r->g[i];
  if (g == NULL) {
    if (r->ng == r->cap) {
      r->cap = r->cap ? 2 * r->cap : 8;
      r->g = (af_group *)realloc(r->g, sizeof *r->g * (size_t)r->cap);
    }
    g = &r->g[r->ng++];
    memset(g, 0, sizeof *g);
    snprintf(g->sig, sizeof g->sig, "%s", sig);
  }
  if (g->nn == g->cap) {
    g->cap = g->cap ? 2 * g->cap : 16;
    g->ns = (unsigned long *)realloc(g->ns, sizeof *g->ns * (size_t)g->cap);
  }
  g->ns[g->nn++] = n;
  if (g->detail == NULL && det != NULL) g->detail = strdup(det);
}

static int cmp_ul(const void *x, const void *y) {
  unsigned long a = *(const unsigned long *)x, b = *(const unsigned long *)y;
  return a < b ? -1 : a > b;
}

static void print_ranges(unsigned long *ns, int nn) {
  int i = 0, shown = 0;
  qsort(ns, (size_t)nn, sizeof *ns, cmp_ul);
  while (i < nn) {
    int j = i;
    while (j + 1 < nn && ns[j + 1] == ns[j] + 1) j++;
    if (shown++ == 24) { printf(",..."); break; }
    if (j == i) printf("%s%lu", i ? "," : "", ns[i]);
    else printf("%s%lu-%lu", i ? "," : "", ns[i], ns[j]);
    i = j + 1;
  }
}

/* A traced re-run of (name, N), with full malloc/free stacks (liblua has
** no frame pointers: the fast unwinder stops in it): exec'd afresh, since
** ASan reads its options at start. The stack of the allocation that
** failed, and who freed and allocated what the first run's report is about. */
static const char *mode_sticky(int sticky) { return sticky ? "sticky" : "once"; }
static char *injection_stack(const char *name, int sticky, unsigned long n) {
  char out[160], nbuf[32], *log, *det;
  int status;
  pid_t pid;
  const char *p;
  snprintf(out, sizeof out, "%s/trace.log", tmpdir);
  snprintf(nbuf, sizeof nbuf, "%lu", n);
  fflush(stdout);
  pid = fork();
  if (pid == 0) {
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const char *argv[12];
    int k = 0;
    if (fd < 0) _exit(AF_SETUP);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    setenv("ASAN_OPTIONS", "fast_unwind_on_malloc=0:malloc_context_size=16:detect_leaks=1", 1);
    argv[k++] = "allocfail";
    argv[k++] = "-1";
    argv[k++] = name;
    argv[k++] = nbuf;
    argv[k++] = "-m";
    argv[k++] = mode_sticky(sticky);
    argv[k++] = "-r";
    argv[k++] = root;
    if (scenfile != NULL) {
      argv[k++] = "-f";
      argv[k++] = scenfile;
    }
    argv[k] = NULL;
    execv("/proc/self/exe", (char *const *)argv);
    _exit(AF_SETUP);
  }
  waitpid(pid, &status, 0);
  log = slurp(out);
  if (log == NULL) return NULL;
  det = (char *)calloc(1, 8192);
  p = strstr(log, "ALLOCFAIL: allocation #");
  if (p != NULL && det != NULL) {
    const char *eol = strchr(p, '\n');
    snprintf(det, 8192, "      re-run with N=%lu: %.*s\n", n,
             (int)(eol ? eol - p - 11 : 0), p + 11);
    add_stack(eol, det, 8192, 12, NULL, 0);
  }
  if (det != NULL && (p = strstr(log, "freed by thread")) != NULL) {
    size_t len = strlen(det);
    snprintf(det + len, 8192 - len, "      the memory was freed by:\n");
    add_stack(strchr(p, '\n'), det, 8192, 10, NULL, 0);
  }
  if (det != NULL && (p = strstr(log, "allocated by thread")) != NULL) {
    size_t len = strlen(det);
    snprintf(det + len, 8192 - len, "      and allocated by:\n");
    add_stack(strchr(p, '\n'), det, 8192, 10, NULL, 0);
  }
  free(log);
  return det;
}

/* Sweep one scenario in one mode. */
static af_result sweep(const char *name, int sticky, int jobs,
                       unsigned long maxn) {
  af_result r;
  af_job *js = (af_job *)calloc((size_t)jobs, sizeof *js);
  unsigned long next = 1, stop = maxn, bound;
  int running = 0, i, status;
  char sig[700];
  static char det[16384];
  memset(&r, 0, sizeof r);
  /* calibration: N = 0, nothing fails; how many allocations? */
  snprintf(js[0].out, sizeof js[0].out, "%s/job0.log", tmpdir);
  js[0].pid = spawn(0, name, sticky, 0, 0, js[0].out);
  waitpid(js[0].pid, &status, 0);
  {
    char *log = slurp(js[0].out);
    r.runs++;
    r.calib = shared[0].count;
    calib_sig[0] = '\0';
    if (judge(log, status, &shared[0], sig, sizeof sig, det, sizeof det)) {
      snprintf(calib_sig, sizeof calib_sig, "%s", sig);
      r.failed++;
      add_failure(&r, sig, 0, det);
    }
    if (verbose) printf("  %s N=0: %lu allocations, %s\n", name, r.calib, sig[0] ? sig : "ok");
    free(log);
  }
  bound = r.calib + 1; /* the first N that cannot fail; more if timing varies */
  js[0].pid = 0;
  for (;;) {
    while (running < jobs && next <= stop && next <= maxn) {
      for (i = 0; i < jobs && js[i].pid != 0; i++) ;
      js[i].n = next++;
      snprintf(js[i].out, sizeof js[i].out, "%s/job%d.log", tmpdir, i);
      js[i].pid = spawn(i, name, sticky, js[i].n, 0, js[i].out);
      if (js[i].pid < 0) { perror("allocfail: fork"); exit(2); }
      running++;
    }
    if (running == 0) break;
    {
      pid_t pid = waitpid(-1, &status, 0);
      char *log;
      int failed;
      if (pid < 0) { if (errno == EINTR) continue; perror("waitpid"); exit(2); }
      for (i = 0; i < jobs && js[i].pid != pid; i++) ;
      if (i == jobs) continue;
      running--;
      js[i].pid = 0;
      log = slurp(js[i].out);
      r.runs++;
      failed = judge(log, status, &shared[i], sig, sizeof sig, det, sizeof det);
      if (failed) {
        r.failed++;
        add_failure(&r, sig, js[i].n, det);
      }
      if (verbose)
        printf("  %s N=%lu: injected %lu, %lu allocations, phase %s: %s\n", name,
               js[i].n, shared[i].injected, shared[i].count, phases[shared[i].phase],
               failed ? sig : "ok");
      /* a run the failure never reached ends the sweep (a crashed run
      ** counts too: shared memory says whether it was reached) */
      if (shared[i].injected == 0 && js[i].n < stop) stop = js[i].n;
      if (js[i].n >= bound && shared[i].injected == 0) stop = js[i].n;
      free(log);
    }
  }
  free(js);
  return r;
}

static void usage(void) {
  fprintf(stderr,
          "usage: allocfail [-j jobs] [-m sticky|once|both] [-s name,...] [-n maxN]\n"
          "                 [-t seconds] [-r root] [-f scenarios.lua] [-v]\n"
          "       allocfail -1 scenario N [-m sticky|once]   (one run, here, verbose)\n");
  exit(2);
}

/* the scenario names, from the scenarios file (a state of its own) */
static int list_scenarios(char ***names) {
  lua_State *L = luaL_newstate();
  int n = 0, cap = 16;
  *names = (char **)malloc(sizeof **names * (size_t)cap);
  luaL_openlibs(L);
  if (scenfile != NULL)
    lua_pushstring(L, scenfile);
  else
    lua_pushfstring(L, "%s/tools/allocfail_scenarios.lua", root);
  if (luaL_dofile(L, lua_tostring(L, -1)) != LUA_OK) {
    fprintf(stderr, "allocfail: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  lua_getfield(L, -1, "scenarios");
  for (int i = 1; lua_rawgeti(L, -1, i) == LUA_TTABLE; i++) {
    lua_getfield(L, -1, "name");
    if (n == cap) *names = (char **)realloc(*names, sizeof **names * (size_t)(cap *= 2));
    (*names)[n++] = strdup(lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  lua_close(L);
  return n;
}

static int selected(const char *only, const char *name) {
  const char *p = only;
  size_t k = strlen(name);
  if (only == NULL || *only == '\0') return 1;
  while ((p = strstr(p, name)) != NULL) {
    if ((p == only || p[-1] == ',') && (p[k] == '\0' || p[k] == ','))
      return 1;
    p += k;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *mode = getenv("ALLOCFAIL_MODE");
  const char *only = getenv("ALLOCFAIL_ONLY");
  const char *e;
  long jobs = sysconf(_SC_NPROCESSORS_ONLN);
  unsigned long maxn = 20000;
  char **names;
  int nnames, i, m, passed = 0, failed = 0;
  double t0 = now_s();
  if ((e = getenv("ALLOCFAIL_JOBS")) != NULL) jobs = atol(e);
  if ((e = getenv("ALLOCFAIL_MAXN")) != NULL) maxn = strtoul(e, NULL, 10);
  if ((e = getenv("ALLOCFAIL_TIMEOUT")) != NULL) timeout_s = atoi(e);
  if ((e = getenv("ALLOCFAIL_DETAIL")) != NULL) detail_max = atoi(e);
  if ((e = getenv("ALLOCFAIL_VERBOSE")) != NULL) verbose = atoi(e);
  if (mode == NULL) mode = "both";
  for (i = 1; i < argc; i++) {
    const char *o = argv[i];
    if (strcmp(o, "-v") == 0) { verbose = 1; continue; }
    if (strcmp(o, "-1") == 0) {
      af_alloc one;
      int sticky = strcmp(mode, "once") != 0, rc, j;
      if (i + 2 >= argc) usage();
      for (j = i + 3; j + 1 < argc; j += 2) {
        if (strcmp(argv[j], "-m") == 0) sticky = strcmp(argv[j + 1], "once") != 0;
        else if (strcmp(argv[j], "-r") == 0) root = argv[j + 1];
        else if (strcmp(argv[j], "-f") == 0) scenfile = argv[j + 1];
      }
      rc = run_one(&one, argv[i + 1], sticky, strtoul(argv[i + 2], NULL, 10), 1);
      printf("allocations: %lu, injected failures: %lu, exit %d\n", one.count,
             one.injected, rc);
      return rc;
    }
    if (i + 1 >= argc) usage();
    if (strcmp(o, "-j") == 0) jobs = atol(argv[++i]);
    else if (strcmp(o, "-m") == 0) mode = argv[++i];
    else if (strcmp(o, "-s") == 0) only = argv[++i];
    else if (strcmp(o, "-n") == 0) maxn = strtoul(argv[++i], NULL, 10);
    else if (strcmp(o, "-t") == 0) timeout_s = atoi(argv[++i]);
    else if (strcmp(o, "-r") == 0) root = argv[++i];
    else if (strcmp(o, "-f") == 0) scenfile = argv[++i];
    else usage();
  }
  if (jobs < 1) jobs = 1;
  if (strcmp(mode, "sticky") != 0 && strcmp(mode, "once") != 0 &&
      strcmp(mode, "both") != 0)
    usage();
  shared = (af_alloc *)mmap(NULL, sizeof *shared * (size_t)jobs,
                            PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) { perror("allocfail: mmap"); return 2; }
  snprintf(tmpdir, sizeof tmpdir, "%s/allocfail.XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  if (strlen(tmpdir) > 40 || mkdtemp(tmpdir) == NULL) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/allocfail.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) { perror("allocfail: mkdtemp"); return 2; }
  }
  nnames = list_scenarios(&names);
  printf("allocfail: %d scenarios, mode %s, %ld jobs, a run's timeout %d s "
         "(a test = one scenario in one mode: it passes when every N passes)\n",
         nnames, mode, jobs, timeout_s);
  for (i = 0; i < nnames; i++) {
    if (!selected(only, names[i])) continue;
    for (m = 0; m < 2; m++) {
      int sticky = m == 0;
      double t1 = now_s();
      af_result r;
      int g;
      if (sticky && strcmp(mode, "once") == 0) continue;
      if (!sticky && strcmp(mode, "sticky") == 0) continue;
      r = sweep(names[i], sticky, (int)jobs, maxn);
      printf("%-24s %-6s %4d runs (N=0..%d, %lu allocations unfailed), %d failed, %.1f s\n",
             names[i], sticky ? "sticky" : "once", r.runs, r.runs - 1, r.calib,
             r.failed, now_s() - t1);
      for (g = 0; g < r.ng; g++) {
        af_group *gr = &r.g[g];
        unsigned long first;
        printf("  FAIL %d run(s): %s\n    N=", gr->nn, gr->sig);
        print_ranges(gr->ns, gr->nn);
        printf("\n");
        first = gr->ns[0];
        if (g < detail_max * 8 && gr->detail != NULL) printf("%s", gr->detail);
        if (g < detail_max * 8 && first > 0) {
          char *st = injection_stack(names[i], sticky, first);
          if (st != NULL) printf("%s", st);
          free(st);
        }
        free(gr->detail);
        free(gr->ns);
      }
      free(r.g);
      if (r.failed) failed++; else passed++;
      fflush(stdout);
    }
  }
  {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "allocfail: could not remove %s\n", tmpdir);
  }
  for (i = 0; i < nnames; i++) free(names[i]);
  free(names);
  printf("allocfail: %.1f s\n", now_s() - t0);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

/* }====================================================================== */
