/*
** lcontext_int.h — shared by the binding's files (not installed).
**
** Every Lua-facing C function of the module shares the same upvalues (the
** LC_UV_* indices below): the metatables are compared against them instead
** of looked up by name, and the per-state runtime comes from one of them, so
** there is no global mutable state and each lua_State has its own tree.
*/
#ifndef LCONTEXT_INT_H
#define LCONTEXT_INT_H

#include <stdint.h>

#include "lua.h"
#include "lauxlib.h"

#include "lc_compat.h"

#include <ev.h>

#include "core/clock.h"
#include "core/ctx.h"
#include "core/tw.h"
#include "core/wait.h"

/* Internal: hidden from the module's dynamic symbol table whatever CFLAGS
** the build uses (only luaopen_lcontext_core is exported). After the
** includes, since the pragma also marks external declarations. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

/* upvalues shared by every function of the module */
#define LC_UV_CTXMT 1    /* metatable of contexts without __gc */
#define LC_UV_CTXMTGC 2  /* metatable of contexts linked below a parent */
#define LC_UV_CANCELMT 3 /* metatable of cancel objects */
#define LC_UV_RT 4       /* the runtime (lc_runtime userdata) */
#define LC_UV_CANCELED 5 /* context.canceled */
#define LC_UV_DEADLINE 6 /* context.deadline_exceeded */
#define LC_UV_CAUSES 7   /* weak-keyed: origin context -> cause */
#define LC_UV_KEYMT 8    /* metatable of context.key objects */
#define LC_UV_BG 9       /* context.background() */
#define LC_UV_TODO 10    /* context.todo() */
#define LC_UV_TASKMT 11  /* metatable of tasks */
#define LC_UV_VMAP 12    /* weak values: value context's address -> itself */
#define LC_NUP 12

#define lc_uv(i) lua_upvalueindex(i)

typedef wt_waiter lc_waiter;
typedef wt_wait lc_wait;
struct lc_callback;

/*
** The per-lua_State runtime.
** Files of the binding, each calling only those above it:
**   l_core (upvalues, checks) < l_key < l_cancel (cancel objects, causes,
**   keep sets, the after-cancel epilogue) < l_value < l_ctx < l_task
**   (tasks, errors) < l_callback (after_func, watches) < l_signal < l_loop
**   (libev, drain, run/step) < l_park (waiting) < l_sync (channels,
**   semaphores) < l_clock (virtual time) < l_metrics < l_open (luaopen:
**   sets every file up). l_task reaches l_sync only through
**   rt->sync_abandon and rt->sync_waits.
*/
typedef struct lc_runtime {
  ctx_tree tree;
  wt_sched sched;       /* waiters, the wheel, the ready queue (core) */
  const void *cancelmt; /* LC_UV_CANCELMT as a pointer */
  const void *taskmt;   /* LC_UV_TASKMT as a pointer */
  lua_State *L;          /* the main thread: tasks are resumed from it */
  struct ev_loop *loop;  /* the host's loop, or libev's default loop */
  int loopfd;            /* its epoll fd when known, else -1 */
  ev_timer wtimer;       /* armed at the wheel's next wake-up */
  int64_t wtimer_at;     /* when wtimer is armed for; TW_NEVER: stopped */
  ev_idle idle;          /* active while the ready queue is not empty */
  ev_timer steptimer;    /* context.step's bound */
  struct lc_task *current; /* the task being resumed, or NULL */
  int draining;          /* inside drain: no blocking waits */
  int in_run;            /* inside run/step/a main-thread wait */
  int closed;            /* the state is closing: schedule nothing */
  int ref_anchors;       /* registry: lightuserdata -> waiter userdata */
  int ref_causes;        /* registry: the causes table (LC_UV_CAUSES) */
  int ref_onerror;       /* registry: the error handler, or LUA_NOREF */
  int ref_keep;          /* registry, weak keys: context -> keep set
                            {[lightuserdata] = waiter}: the weak waiters
                            (callbacks, watches) its cancel could wake */
  int ref_cbmt;          /* registry: the metatable of collectable callbacks */
  int ref_taskmt;        /* registry: the metatable of tasks */
  int ref_pending;       /* registry: {[1] = error raised inside the loop
                            that must reach run/step's caller, or false} */
  struct lc_callback *to_anchor; /* weak waiters woken, to anchor */
  struct lc_callback *external;  /* woken external watches, to call */
  long ntasks;           /* tasks not finished ... */
  struct lc_task *tasks; /* ... and their list */
  int64_t swept_at;      /* when lc_sweep_closed last ran */
  long nsig;             /* signal contexts watching */
  int sigcount[16];      /* watchers started, by signal (lc_signals index) */
  void *sigsaved;        /* dispositions saved at the first watcher */
  /* counters for metrics (see context.metrics) */
  uint64_t resumed;      /* task resumptions */
  uint64_t collected;    /* cancellable contexts collected while running */
  long ncallbacks;       /* after_func callbacks not yet run or stopped */
  unsigned maxdepth;     /* the deepest context made */
  int tracking;          /* context.debug.track(true) */
  long lost;             /* woken weak waiters no keep set held (a bug) */
  const void *canceled_p, *deadline_p; /* the sentinels, as pointers */
  int ref_tracked;       /* registry, weak keys: context -> creation record */
  int ref_signames;      /* registry, weak keys: signal context -> the names
                            of its signals ("SIGINT, SIGTERM"), for tostring */
  /* l_sync.c */
  int ref_chanmt, ref_semmt; /* registry: the metatables of channels and
                            semaphores (their objects hold the refs'
                            addresses: testobj) */
  const void *casemt;    /* select's cases' metatable (sync.lua's) ... */
  int ref_casemt;        /* ... kept in the registry */
  struct lc_ctx *main_bound;   /* the main thread's bound (a shield), or NULL ... */
  int ref_mainbound;     /* ... kept in the registry (LUA_NOREF: none) */
  uint64_t sync_sends, sync_recvs; /* values passed through channels */
  long sync_blocked_send, sync_blocked_recv, sync_blocked_acquire;
  /* l_clock.c: the clock. lc_now() is vnow while a virtual clock is
  ** installed (vclock), else clk_mono_ns() + clk_offset */
  int64_t clk_offset;    /* how far virtual time moved the clock ahead */
  int64_t vnow;          /* virtual monotonic time, ns */
  int64_t vbase;         /* vnow when the clock was installed */
  double vepoch;         /* context.time() at vbase */
  double vstart;         /* clock:now() at vbase */
  double autojump_real;  /* autojump past real waits after that many real
                            seconds of nothing happening; < 0: never */
  uint32_t vgen;         /* installations so far (which clock is it) */
  uint8_t vclock;        /* a virtual clock is installed */
  uint8_t autojump;      /* it jumps when only its timers can wake anyone */
  int ref_clockmt;       /* registry: the metatable of clocks */
  /* set by l_sync.c (files call only those before them: these reach up) */
  void (*sync_abandon)(lua_State *L, struct lc_runtime *rt, struct lc_task *t);
  int (*sync_waits)(lua_State *L, struct lc_runtime *rt, struct lc_task *t,
                    int taskidx);
} lc_runtime;

/* kinds of context */
enum lc_kind {
  LK_BACKGROUND,
  LK_TODO,
  LK_CANCEL,  /* with_cancel, with_cancel_cause */
  LK_TIMER,   /* with_timeout, with_deadline */
  LK_MERGE,   /* merge */
  LK_VALUE,   /* with_value */
  LK_WITHOUT  /* without_cancel */
};

/* key descriptors of with_value (how a key compares, without the Lua API) */
enum lc_keytype {
  KT_PTR = 1, /* collectable or light userdata: identity (x.p) */
  KT_STR,     /* string: same bytes (x.s, klen) */
  KT_INT,     /* integer, or float with an integral value (x.i) */
  KT_NUM,     /* other float, never NaN (x.n) */
  KT_TRUE,
  KT_FALSE
};

/* lc_ctx.flags */
#define LCF_TCAUSE 1 /* a timer cause is stored (see lc_set_cause) */
#define LCF_UVT 2    /* Lua 5.1: has a user-value table of its own */
#define LCF_SIGNAL 4 /* a signal context (LK_CANCEL): its signals' names are
                        in the rt->ref_signames table (l_signal.c) */

/*
** The head of every context userdata.
** User value 1 anchors `parent` (unless the parent is a root); a value
** context keeps its key in user value 2 and its value in 3; a merge keeps
** its inputs in user values 1..nin.
*/
typedef struct lc_ctx {
  ctx_node *cn;          /* node whose state this context reports: its own,
                            the nearest cancellable ancestor's, or NULL
                            (never done) */
  struct lc_ctx *parent; /* the (first) parent; NULL for roots */
  uint8_t kind;          /* enum lc_kind */
  uint8_t flags;         /* LCF_* */
  uint16_t depth;        /* contexts above it to its root (saturates) */
  uint32_t magic;        /* LC_CTX_MAGIC: what the self checks look at */
} lc_ctx;

/* Every context's magic. The checks of a context argument (lc_testctx)
** read it from any full userdata whose payload is long enough, instead of
** fetching its metatable and the runtime's: a third of ctx:err()'s cost.
** Not a pointer's high half, nor a small integer, float or flag set. */
#define LC_CTX_MAGIC 0x9E3C7A51u

/* with_value: the key, described for comparison in C */
typedef union lc_keyx {
  const void *p;
  const char *s;
  lua_Integer i;
  lua_Number n;
} lc_keyx;

typedef struct lc_vctx {
  lc_ctx h;
  lc_keyx x;
  uint8_t ktype; /* enum lc_keytype */
  uint8_t ptype; /* KT_PTR: the key's Lua type */
  uint32_t klen; /* KT_STR: the key's length */
} lc_vctx;

/* contexts with a node of their own (cancel, timer, merge) */
typedef struct lc_cctx {
  lc_ctx h;
  ctx_node node;
} lc_cctx;

/* with_timeout / with_deadline: the node's deadline enters the wheel only
** while something waits on the context or on a descendant it ends */
typedef struct lc_tctx {
  lc_cctx c;
  double epoch;   /* the deadline asked for, epoch seconds (deadline()) */
  wt_deadline dl; /* dl.node is &c.node */
} lc_tctx;

#define lc_hasnode(c) ((c)->kind == LK_CANCEL || (c)->kind == LK_TIMER || \
                       (c)->kind == LK_MERGE)
#define lc_node(c) (&((lc_cctx *)(c))->node)

/* a merge: the node, then its extra edges, then its inputs (how many) */
#define lc_merge_n(c) ((uint32_t)lc_node(c)->nx + 1u)
#define lc_merge_inputs(c) \
  ((lc_ctx **)(ctx_xlinks(lc_node(c)) + lc_node(c)->nx))

/* cancel objects: a userdata whose user value 1 is the context. On LuaJIT
** its payload also holds the context's address, for the FFI path
** (l_ffi.c), which cannot read user values; elsewhere it has none. LuaJIT
** 2.1 is told from PUC 5.1 by luaL_newlib, a macro of its lauxlib.h (5.1 has
** none; 5.2+ are not 501). */
#if LUA_VERSION_NUM == 501 && defined(luaL_newlib)
#define LC_CANCEL_SIZE sizeof(struct lc_ctx *)
#else
#define LC_CANCEL_SIZE 0
#endif

/* l_core.c */
int lc_argerror(lua_State *L, int arg, const char *fname, const char *msg);
int lc_typeerror(lua_State *L, int arg, const char *fname, const char *tname);
lua_Number lc_checkduration(lua_State *L, int arg, const char *fname);
struct lc_runtime;
int64_t lc_now(const struct lc_runtime *rt);
double lc_real(const struct lc_runtime *rt);
lua_Number lc_ceil_ns(lua_Number secs);
int64_t lc_tree_clock(void *rt);
void lc_weak_table(lua_State *L, const char *mode);
void lc_report(const char *what, lua_State *L, int idx);

#define lc_rt(L) ((lc_runtime *)lua_touserdata(L, lc_uv(LC_UV_RT)))

/* [-0, +0, -] the context at arg, or NULL: a full userdata (a light one's
** length is 0) long enough to be a context, with a context's magic */
static inline lc_ctx *lc_testctx(lua_State *L, int arg) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, arg);
  if (c != NULL && lua_rawlen(L, arg) >= sizeof(lc_ctx) &&
      c->magic == LC_CTX_MAGIC)
    return c;
  return NULL;
}

/* (callers that have the runtime at hand: the check no longer needs it) */
#define lc_testctx_rt(L, arg, rt) ((void)(rt), lc_testctx((L), (arg)))

/* [-0, +0, v] the context at arg, or an argument error */
static inline lc_ctx *lc_checkctx(lua_State *L, int arg, const char *fname) {
  lc_ctx *c = lc_testctx(L, arg);
  if (c == NULL) lc_typeerror(L, arg, fname, "context");
  return c;
}

/* the same, with the runtime at hand (one lookup less on hot paths) */
static inline lc_ctx *lc_checkctx_rt(lua_State *L, int arg, const char *fname,
                                     const lc_runtime *rt) {
  lc_ctx *c = lc_testctx_rt(L, arg, rt);
  if (c == NULL) lc_typeerror(L, arg, fname, "context");
  return c;
}

/* {======================================================================
** Scheduler types, shared by l_task, l_callback, l_signal and l_loop
** ======================================================================= */

/* waiter kinds (wt_waiter.kind) */
enum { WK_MAIN, WK_TASK, WK_CALLBACK, WK_SIGNAL, WK_EXTERNAL };
/* task outcomes */
enum { TS_RUNNING, TS_OK, TS_FAILED };

/* l_sync.c: a blocked channel or semaphore operation (a record in the
** object's queue) and the call it belongs to (one record, or a select's
** cases). The call parks on its contexts and on sel.src, which the
** operation's other side ends once it has done the whole transfer. */
struct lc_crec;
typedef struct lc_cq {
  struct lc_crec *head, *tail;
  long n;
} lc_cq;
typedef struct lc_sel {
  wt_source src;        /* ended when one record's operation is done */
  void *obj;            /* anchored object whose user values hold payloads */
  struct lc_task *task; /* the blocked task; NULL: the main thread */
  struct lc_crec *recs; /* its records ... */
  uint16_t nrec;        /* ... and how many */
  uint16_t fired;       /* the index of the record done (0: none) */
  uint8_t done;         /* a record's operation was done */
  uint8_t ok;           /* false: done by a close */
} lc_sel;
typedef struct lc_crec {
  struct lc_crec *prev, *next;
  lc_cq *q;             /* the queue it is in; NULL: none */
  lc_sel *sel;
  void *target;         /* the lc_chan or lc_sem */
  lua_Integer weight;   /* an acquire's */
  int slot;             /* user value of sel->obj: the value sent / received */
  uint16_t index;       /* select's argument position; 1 for a single call */
  uint8_t kind;         /* LC_CR_* */
} lc_crec;
enum { LC_CR_SEND = 1, LC_CR_RECV, LC_CR_ACQUIRE };

typedef struct lc_task {
  lc_waiter w;       /* counted in sched.nparked while parked */
  lua_State *co;     /* the coroutine (user value 1 anchors it) */
  wt_source end;     /* waits of others on this task's end */
  int nargs;         /* values to pass at the first resume; -1 after */
  int nres;          /* TS_OK: how many results (on the coroutine's stack) */
  uint8_t status;    /* TS_* */
  uint8_t reason;    /* TS_FAILED with no error value: why (TR_*) */
  uint8_t closed;    /* its coroutine was closed from outside */
  int64_t parked_at; /* when it last parked (lc_now), for context.dump */
  struct lc_task *tnext, **tpprev; /* in rt->tasks while it runs */
  int ref;           /* registry reference to its userdata while it runs
                        (lc_push_task: one array lookup, for hot paths) */
  lc_sel *sync;      /* the channel/semaphore call it is blocked in, or NULL */
  lc_ctx *bound;     /* its bound (lua/lcontext/tasks.lua), or NULL */
  const void *sctx_p, *sobj_p; /* what its user values 6 and 7 hold */
  lc_sel sel;        /* a single call's (no allocation per call) ... */
  lc_crec crec;      /* ... its record ... */
  lc_wait swaits[3]; /* ... and its waits: ctx, sel.src, the bound */
} lc_task;
/* task user values: 1 coroutine, 2 the error it raised, 3 current waits,
** 4 its end function (core._on_end), 5 its function (context.dump),
** 6 the ctx of its last channel/semaphore call, 7 the object of that call,
** 8 its bound */
#define LC_TUV_SCTX 6
#define LC_TUV_SOBJ 7
#define LC_TUV_BOUND 8
#define LC_TASK_NUV 8

/* [-0, +1, -] the userdata of a task that has not finished */
#define lc_push_task(L, t) lua_rawgeti((L), LUA_REGISTRYINDEX, (t)->ref)

/* after_func callbacks and external watches (core._watch): one wait on a
** context. A "weak" one is kept alive by the keep sets of the contexts whose
** cancel could wake it, not by the anchors; its anchors slot is reserved
** (false) so that anchoring it once woken cannot fail. */
typedef struct lc_callback {
  lc_waiter w;
  lc_wait wait;
  struct lc_callback *anext; /* in rt->to_anchor (while listed) */
  struct lc_callback *xnext; /* external watches: in rt->external ... */
  struct lc_callback **xpprev; /* ... (NULL: not in it) */
  uint8_t weak;   /* kept by keep sets, not (yet) by the anchors */
  uint8_t listed; /* in rt->to_anchor */
} lc_callback;
/* callback user values: 1 fn, 2 ctx */

/* }====================================================================== */

/* l_core.c: the chain walk */
#define LC_WALK_CANCEL 1 /* only through cancellation (not past without_cancel) */
typedef int (*lc_visit)(lua_State *L, lc_ctx *c, int idx, void *arg);
int lc_walk(lua_State *L, int idx, int flags, lc_visit visit, void *arg);

/* l_core.c: anchors (registry table: lightuserdata -> object) */
void lc_anchor(lua_State *L, lc_runtime *rt, int idx);
void lc_unanchor(lua_State *L, lc_runtime *rt, void *p);
void lc_push_anchored(lua_State *L, lc_runtime *rt, void *p);
int lc_iscallable(lua_State *L, int idx);

/* l_cancel.c */
extern const luaL_Reg lc_cancel_meta[];
void lc_new_cancel(lua_State *L, int ctxidx);
void lc_set_cause(lua_State *L, lc_runtime *rt, lc_ctx *c, int ctxidx,
                  int causeidx);
int lc_push_cause(lua_State *L, lc_runtime *rt, int ctxidx);
void lc_keep(lua_State *L, lc_runtime *rt, int ctxidx, int cbidx, int add);
void lc_after_cancel(lua_State *L, lc_runtime *rt, int ctxidx);
void lc_external_add(lc_runtime *rt, lc_callback *cb);
void lc_external_remove(lc_callback *cb);

/* l_ffi.c */
extern const luaL_Reg lc_ffi_funcs[];

/* l_value.c */
int lc_with_value(lua_State *L);
int lc_value(lua_State *L);

/* l_ctx.c */
lc_ctx *lc_deadline_owner(lc_ctx *c);
extern const luaL_Reg lc_ctx_funcs[];   /* module functions */
extern const luaL_Reg lc_ctx_methods[]; /* methods of contexts */
extern const luaL_Reg lc_ctx_meta[];    /* metamethods of contexts */
extern const luaL_Reg lc_ctx_gcmeta[];  /* __gc of linked contexts */
void lc_push_err(lua_State *L, int err);
int lc_ctx_err(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx);
/* the same at the clock reading now (one reading for a check and the wait
** armed after it: a deadline cannot pass between the two) */
int lc_ctx_err_at(lua_State *L, lc_runtime *rt, lc_ctx *c, int idx, int64_t now);
void lc_wait_ctx(lc_wait *x, lc_ctx *c);

/* l_task.c */
extern const luaL_Reg lc_task_funcs[];
extern const luaL_Reg lc_task_meta[];
extern const luaL_Reg lc_task_methods[];
void lc_task_init(lua_State *L, lc_runtime *rt);
lc_task *lc_testtask(lua_State *L, int idx, const lc_runtime *rt);
lc_task *lc_new_task(lua_State *L, lc_runtime *rt, int fidx, int n);
int lc_new_task_p(lua_State *L);
void lc_resume_task(lua_State *L, lc_runtime *rt, lc_task *t);
int lc_sweep_closed(lc_runtime *rt);
void lc_pending_error(lua_State *L, lc_runtime *rt, int idx);
int lc_take_pending(lua_State *L, lc_runtime *rt);
int lc_has_pending(lua_State *L, lc_runtime *rt);
void lc_raise_pending(lua_State *L, lc_runtime *rt);

/* l_callback.c */
extern const luaL_Reg lc_callback_funcs[];
void lc_callback_init(lua_State *L, lc_runtime *rt);
void lc_start_callback(lua_State *L, lc_runtime *rt, lc_callback *cb);
void lc_callback_woken(wt_sched *s, wt_waiter *w);

/* l_signal.c */
extern const luaL_Reg lc_signal_funcs[];
void lc_signal_init(lua_State *L, lc_runtime *rt);
void lc_signal_woken(lc_runtime *rt, lc_waiter *w);
void lc_signal_done(lua_State *L, lc_runtime *rt, lc_waiter *w);

/* l_loop.c */
extern const luaL_Reg lc_loop_funcs[];
void lc_loop_init(lua_State *L, lc_runtime *rt);
int lc_runtime_gc(lua_State *L);
void lc_need_loop(lua_State *L, lc_runtime *rt);
void lc_loop_caller(lua_State *L, lc_runtime *rt, const char *fname);
int lc_drain(lc_runtime *rt, int can_raise);
void lc_iterate(lc_runtime *rt, int flags);
int lc_can_progress(lc_runtime *rt);
const char *lc_deadlock_hint(lc_runtime *rt);
void lc_turn(lc_runtime *rt);
int lc_vadvance(lc_runtime *rt, int64_t target);
void lc_rearm(lc_runtime *rt);

/* l_park.c */
extern const luaL_Reg lc_park_funcs[];

/* l_park.c */
int lc_prepare_wait(lua_State *L, lc_runtime *rt, lc_wait *x, int idx,
                    const char *fname);
int lc_main_wait(lua_State *L, lc_runtime *rt, lc_waiter *w);

/* l_clock.c */
extern const luaL_Reg lc_clock_funcs[];
void lc_clock_init(lua_State *L, lc_runtime *rt, int uvt);

/* l_sync.c */
extern const luaL_Reg lc_sync_funcs[];
void lc_sync_init(lua_State *L, lc_runtime *rt, int uvt);
void lc_sync_abandon(lua_State *L, lc_runtime *rt, lc_task *t);
int lc_sync_waits(lua_State *L, lc_runtime *rt, lc_task *t, int taskidx);
/* l_task.c: context.dump's entry for the wait x, whose waitable is user
** value uv of the userdata at holder */
void lc_push_wait_entry(lua_State *L, lc_wait *x, int holder, int uv);

/* l_metrics.c */
extern const luaL_Reg lc_metrics_funcs[];
void lc_metrics_init(lua_State *L, lc_runtime *rt);
void lc_track_new(lua_State *L, lc_runtime *rt, int idx);

static inline void lc_set_depth(lc_runtime *rt, lc_ctx *c, const lc_ctx *p) {
  unsigned d = (unsigned)p->depth + 1;
  c->depth = (uint16_t)(d > 0xffff ? 0xffff : d);
  if (c->depth > rt->maxdepth) rt->maxdepth = c->depth;
}

/* l_key.c */
extern const luaL_Reg lc_key_funcs[];
extern const luaL_Reg lc_key_meta[];
void lc_new_sentinels(lua_State *L); /* pushes canceled, deadline_exceeded */
void lc_validate_value(lua_State *L, int kidx, int vidx);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
