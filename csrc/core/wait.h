/*
** wait.h — waiters, their waits, and the ready queue (Lua-free).
**
** A waiter (a task, the main thread, a callback, a signal context, an
** external watch) parks on one or more waits: a context becoming done, a
** sleep, an fd becoming ready, another waiter's source ending (a task). The
** first wait to fire wakes the waiter: all its waits are detached at once
** and it joins the ready queue. Nothing runs where a wait fires (inside a
** cancel walk, a timer or an fd callback): the binding drains the queue.
**
** The one invariant, and its one exit
**   - A wait is armed (linked into its source) only while its waiter is
**     PARKED; a PARKED waiter has all of its waits armed.
**   - A waiter is in the ready queue if and only if it is READY.
**   - Every way out of PARKED or READY (woken, cancelled, stopped, its task
**     closed or collected, a yield that failed, an error) goes through
**     wt_release, which detaches what is armed and unqueues what is queued.
**     wt_wake is the other way out of PARKED: it detaches and queues.
**
** Sources report through this module only: a node that becomes done
** (ctx_tree.on_done), a timer of the wheel (wt_advance), an fd (wt_io_ready)
** and a source that ends (wt_source_end).
**
** fd waits are started and stopped by the binding (wt_ops): this core does
** not know the event loop. Nothing here allocates or recurses.
*/
#ifndef LCONTEXT_WAIT_H
#define LCONTEXT_WAIT_H

#include <stddef.h>
#include <stdint.h>

#include "ctx.h"
#include "tw.h"

/* Internal: hidden from the module's dynamic symbol table whatever CFLAGS
** the build uses (only luaopen_lcontext_core is exported). After the
** includes, since the pragma also marks external declarations. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

typedef struct wt_sched wt_sched;
typedef struct wt_waiter wt_waiter;
typedef struct ctx_watch wt_wait; /* what ctx.h calls a node's watch */

/* waiter states */
enum wt_state {
  WT_IDLE,    /* no waits armed, not queued */
  WT_PARKED,  /* every wait armed */
  WT_READY,   /* in the ready queue; no wait armed */
  WT_RUNNING, /* being run by the binding */
  WT_DONE,    /* finished for good */
  WT_HELD     /* woken, but held by the binding (WT_WF_HOLD), not queued */
};

/* waiter flags */
enum {
  WT_WF_NOTIFY = 1, /* tell the binding when woken (wt_ops.woken) */
  WT_WF_HOLD = 2    /* when woken, do not queue: state WT_HELD */
};

/* what a wait waits on */
enum wt_src {
  WS_NONE,
  WS_CTX,   /* a context node becoming done */
  WS_SLEEP, /* a time */
  WS_IO,    /* an fd becoming ready */
  WS_SOURCE /* a wt_source ending (a task) */
};

/* timers of the wheel */
enum { WT_T_DEADLINE = 1, WT_T_SLEEP = 2 };
typedef struct wt_timer {
  tw_entry e;
  uint8_t kind; /* WT_T_* */
} wt_timer;

/* A node's own deadline: it enters the wheel only while some wait depends
** on it (watch > 0). Embedded by the binding beside the node it ends. */
typedef struct wt_deadline {
  wt_timer tm;
  ctx_node *node;
  uint32_t watch; /* waits that depend on this deadline */
} wt_deadline;

/* Something others wait to end (a task): its waits, until it ends. */
typedef struct wt_source {
  wt_wait *waits;
  int ended;
} wt_source;

/* io readiness bits (events asked, revents seen) */
enum { WT_IO_READ = 1, WT_IO_WRITE = 2, WT_IO_ERROR = 4 };

struct ctx_watch {        /* wt_wait */
  wt_wait *next, **pprev; /* in its source's list (node, wt_source) */
  wt_waiter *w;
  uint8_t src;            /* enum wt_src */
  uint8_t armed;          /* linked into its source */
  uint16_t index;         /* its position among the waiter's waits (from 1) */
  union {
    struct {
      ctx_node *n;          /* the node waited on (NULL: never done) */
      wt_deadline *owner;   /* the deadline it depends on, or NULL */
    } ctx;
    wt_timer t;             /* WS_SLEEP: t.e.expires is the due time */
    struct {
      int fd;
      uint8_t events;       /* WT_IO_READ | WT_IO_WRITE */
      uint8_t revents;      /* what was seen (WT_IO_ERROR: not pollable) */
      /* the binding's watcher (an ev_io), opaque here */
      union { void *p; uint64_t u; double d; } impl[8];
    } io;
    wt_source *source;      /* WS_SOURCE */
  } u;
};

struct wt_waiter {
  wt_waiter *rnext;   /* ready queue links (while READY) */
  wt_waiter **rpprev;
  wt_wait *waits;     /* its waits (memory the binding keeps alive) */
  uint16_t nwaits;    /* how many of them are in use */
  uint16_t fired;     /* 1-based index of the wait that fired; 0: none */
  uint8_t state;      /* enum wt_state */
  uint8_t kind;       /* the binding's kind of waiter */
  uint8_t counted;    /* counts in wt_sched.nparked while PARKED */
  uint8_t flags;      /* WT_WF_* */
};

/* what the binding does for this core */
typedef struct wt_ops {
  /* start watching x->u.io.fd: 0 on success, -1 if it cannot be watched
  ** (not an open fd): the wait then fires at once with WT_IO_ERROR */
  int (*io_start)(wt_sched *s, wt_wait *x);
  void (*io_stop)(wt_sched *s, wt_wait *x);
  /* the ready queue was empty and is not any more (may be NULL) */
  void (*queued)(wt_sched *s);
  /* a waiter with WT_WF_NOTIFY was woken (queued, or WT_HELD) */
  void (*woken)(wt_sched *s, wt_waiter *w);
} wt_ops;

struct wt_sched {
  ctx_tree *tree;
  tw_wheel wheel;          /* deadlines someone waits on, and sleeps */
  wt_waiter *ready;        /* ready queue: head ... */
  wt_waiter **ready_tail;  /* ... and where to append */
  const wt_ops *ops;
  void *ud;                /* the binding's */
  long nparked;            /* counted waiters parked */
  long nio;                /* fd waits armed */
  long nready;             /* waiters in the ready queue */
  uint64_t wakeups;        /* waiters queued, ever: "something happened" */
  uint64_t fired;          /* deadline timers fired by the wheel */
  int64_t advance_now;     /* the time of the running (or last) advance */
  ctx_hist lateness;       /* how late the wheel fired deadlines */
};

/* Set s up on tree t (it takes t's on_done hook), at monotonic time now. */
void wt_init(wt_sched *s, ctx_tree *t, int64_t now, const wt_ops *ops,
             void *ud);

void wt_waiter_init(wt_waiter *w, int kind, int counted);

/* Describe waits (arming nothing): fill x, then wt_park arms them. */
void wt_wait_ctx(wt_wait *x, ctx_node *n, wt_deadline *owner);
void wt_wait_sleep(wt_wait *x, int64_t at); /* at <= now: elapsed */
void wt_wait_io(wt_wait *x, int fd, int events);
void wt_wait_source(wt_wait *x, wt_source *src);

/*
** Park w (IDLE) on its n waits (w->waits, filled by wt_wait_*), at time
** now. A wait that is ready already (a done node, an elapsed sleep, an
** ended source, an fd that cannot be watched) wins at once: nothing stays
** armed, w stays IDLE and its index is returned. Otherwise every wait is
** armed, w is PARKED and 0 is returned. Contexts are polled first (a
** passed deadline is noticed), so arming never cancels anything.
*/
int wt_park(wt_sched *s, wt_waiter *w, wt_wait *waits, uint16_t n,
            int64_t now);

/* The one way out: detach what w has armed, unqueue it if queued; w is
** IDLE afterwards (the caller may then mark it DONE or RUNNING). A HELD
** waiter just becomes IDLE: whoever holds it checks its state. */
void wt_release(wt_sched *s, wt_waiter *w);

/* The first wait of w to fire (index, 1-based): if w is PARKED, detach
** all its waits and queue it (or hold it: WT_WF_HOLD), then tell the
** binding (WT_WF_NOTIFY). Otherwise nothing. */
void wt_wake(wt_sched *s, wt_waiter *w, int index);

/* Queue an IDLE waiter (a task to start, a callback due at once). */
void wt_push(wt_sched *s, wt_waiter *w);

/* Take the first READY waiter off the queue (it becomes RUNNING); NULL if
** the queue is empty. */
wt_waiter *wt_pop(wt_sched *s);

/* A source ended: wake every waiter waiting on it. Idempotent. */
void wt_source_end(wt_sched *s, wt_source *src);

/* The binding's fd watcher for x saw revents (WT_IO_* bits). */
void wt_io_ready(wt_sched *s, wt_wait *x, int revents);

/* A deadline of a node leaves the wheel for good (its memory goes). */
void wt_deadline_gone(wt_sched *s, wt_deadline *d);

/* Fire the timers due at now: deadlines cancel their nodes, sleeps wake.
** Returns how many fired. */
size_t wt_advance(wt_sched *s, int64_t now);

/* When wt_advance should next run (TW_NEVER: nothing pending). */
int64_t wt_next_wakeup(const wt_sched *s);

/* Is anything pending that could wake a waiter without outside help? */
int wt_pending(const wt_sched *s);

/* For tests: verify the invariants of w (0 if they hold, else a code). */
int wt_check_waiter(const wt_sched *s, const wt_waiter *w);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
