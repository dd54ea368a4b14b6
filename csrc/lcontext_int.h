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

typedef struct lc_waiter lc_waiter;
typedef struct ctx_watch lc_wait;

/* the per-lua_State runtime */
typedef struct lc_runtime {
  ctx_tree tree;
  const void *mt[2];    /* LC_UV_CTXMT, LC_UV_CTXMTGC as pointers (fast checks) */
  const void *cancelmt; /* LC_UV_CANCELMT as a pointer */
  const void *taskmt;   /* LC_UV_TASKMT as a pointer */
  /* the scheduler (l_sched.c) */
  lua_State *L;          /* the main thread: tasks are resumed from it */
  struct ev_loop *loop;  /* the host's loop, or libev's default loop */
  tw_wheel wheel;        /* deadlines someone waits on, and sleeps */
  ev_timer wtimer;       /* armed at the wheel's next wake-up */
  int64_t wtimer_at;     /* when wtimer is armed for; TW_NEVER: stopped */
  ev_idle idle;          /* active while the ready queue is not empty */
  ev_timer steptimer;    /* context.step's bound */
  lc_waiter *ready;      /* ready queue: head ... */
  lc_waiter **ready_tail;/* ... and where to append */
  struct lc_task *current; /* the task being resumed, or NULL */
  int draining;          /* inside drain: no blocking waits */
  int in_run;            /* inside run/step/a main-thread wait */
  int closed;            /* the state is closing: schedule nothing */
  int ref_anchors;       /* registry: lightuserdata -> waiter userdata */
  int ref_causes;        /* registry: the causes table (LC_UV_CAUSES) */
  int ref_onerror;       /* registry: the error handler, or LUA_NOREF */
  int ref_keep;          /* registry, weak keys: context -> {callback = true}:
                            after_func callbacks kept alive by the contexts
                            whose cancel could still run them */
  int ref_weakcb;        /* registry, weak values: address -> callback */
  int ref_cbmt;          /* registry: the metatable of callbacks */
  struct lc_callback *to_anchor; /* woken callbacks not yet anchored */
  struct lc_callback *external;  /* woken external watches, to call */
  long ntasks;           /* tasks not finished */
  long nio;              /* fd waits armed */
  long nsig;             /* signal contexts watching */
  /* counters for metrics (see context.metrics) */
  uint64_t resumed;      /* task resumptions */
  uint64_t fired;        /* deadline timers fired by the wheel */
  uint64_t collected;    /* cancellable contexts collected while running */
  long nparked;          /* tasks parked */
  long ncallbacks;       /* after_func callbacks not yet run or stopped */
  unsigned maxdepth;     /* the deepest context made */
  int tracking;          /* context.debug.track(true) */
  ctx_hist lateness;     /* how late the wheel fired deadlines */
  int64_t advance_now;   /* the time tw_advance was called with */
  int ref_tracked;       /* registry, weak keys: context -> creation record */
  uint64_t wakeups;      /* waiters queued, ever: "something happened" */
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
#define LCF_TCAUSE 1 /* a timer cause is stored in the causes table */

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
  uint32_t klen;         /* LK_VALUE, KT_STR: the key's length; LK_MERGE: inputs */
} lc_ctx;

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
} lc_vctx;

/* contexts with a node of their own (cancel, timer, merge) */
typedef struct lc_cctx {
  lc_ctx h;
  ctx_node node;
} lc_cctx;

/* a wheel entry and what it belongs to */
enum { LT_DEADLINE = 1, LT_SLEEP = 2 };
typedef struct lc_timer {
  tw_entry e;
  uint8_t kind; /* LT_* */
} lc_timer;

/* with_timeout / with_deadline: the node's timer enters the wheel only
** while something waits on the context or on a descendant it ends */
typedef struct lc_tctx {
  lc_cctx c;
  double epoch;   /* the deadline asked for, epoch seconds (deadline()) */
  lc_timer tm;
  uint32_t watch; /* waits that depend on this deadline */
} lc_tctx;

#define lc_hasnode(c) ((c)->kind == LK_CANCEL || (c)->kind == LK_TIMER || \
                       (c)->kind == LK_MERGE)
#define lc_node(c) (&((lc_cctx *)(c))->node)

/* a merge: the node, then its extra edges, then its inputs */
#define lc_merge_inputs(c) \
  ((lc_ctx **)(ctx_xlinks(lc_node(c)) + ((c)->klen - 1)))

/* cancel objects: a zero-byte userdata whose user value 1 is the context */

/* l_core.c */
int lc_argerror(lua_State *L, int arg, const char *fname, const char *msg);
int lc_typeerror(lua_State *L, int arg, const char *fname, const char *tname);
lua_Number lc_checkduration(lua_State *L, int arg, const char *fname);
int64_t lc_now(void);
void lc_weak_table(lua_State *L, const char *mode);
void lc_report(const char *what, lua_State *L, int idx);

#define lc_rt(L) ((lc_runtime *)lua_touserdata(L, lc_uv(LC_UV_RT)))

/* [-0, +0, -] the context at arg, or NULL: its metatable is one of ours */
static inline lc_ctx *lc_testctx_rt(lua_State *L, int arg,
                                     const lc_runtime *rt) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, arg);
  if (c != NULL && lua_getmetatable(L, arg)) {
    const void *mt = lua_topointer(L, -1);
    lua_settop(L, -2);
    if (mt == rt->mt[0] || mt == rt->mt[1]) return c;
  }
  return NULL;
}

static inline lc_ctx *lc_testctx(lua_State *L, int arg) {
  lc_ctx *c = (lc_ctx *)lua_touserdata(L, arg);
  if (c != NULL && lua_getmetatable(L, arg)) {
    const void *mt = lua_topointer(L, -1);
    const lc_runtime *rt = lc_rt(L);
    lua_settop(L, -2);
    if (mt == rt->mt[0] || mt == rt->mt[1]) return c;
  }
  return NULL;
}

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

/* l_ctx.c */
lc_ctx *lc_deadline_owner(lc_ctx *c);
extern const luaL_Reg lc_ctx_funcs[];   /* module functions */
extern const luaL_Reg lc_ctx_methods[]; /* methods of contexts */
extern const luaL_Reg lc_ctx_meta[];    /* metamethods of contexts */
extern const luaL_Reg lc_ctx_gcmeta[];  /* __gc of linked contexts */
void lc_push_err(lua_State *L, int err);
int lc_ctx_err(lua_State *L, lc_ctx *c);

/* l_cancel.c */
extern const luaL_Reg lc_cancel_meta[];
void lc_new_cancel(lua_State *L, int ctxidx);

/* l_sched.c */
extern const luaL_Reg lc_sched_funcs[];
extern const luaL_Reg lc_task_meta[];
extern const luaL_Reg lc_task_methods[];
void lc_sched_init(lua_State *L, lc_runtime *rt);
int lc_runtime_gc(lua_State *L);
void lc_timer_gc(lc_runtime *rt, lc_ctx *c);
void lc_anchor_woken(lua_State *L, lc_runtime *rt);
void lc_flush_external(lua_State *L, lc_runtime *rt);

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

#endif
