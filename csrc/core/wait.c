/*
** wait.c — waiters, their waits, and the ready queue. See wait.h for the
** invariant and its one exit (wt_release).
*/
#include "wait.h"

#include <string.h>

/* deadline lateness: 0.1 ms .. 1 s */
static const int64_t late_bounds[] = {
  100000, 500000, 1000000, 2000000, 5000000, 10000000, 50000000,
  100000000, 1000000000
};

/* {======================================================================
** Source lists
** ======================================================================= */

static void list_add(wt_wait **head, wt_wait *x) {
  x->next = *head;
  if (x->next != NULL) x->next->pprev = &x->next;
  x->pprev = head;
  *head = x;
}

static void list_remove(wt_wait *x) {
  if (x->pprev == NULL) return;
  *x->pprev = x->next;
  if (x->next != NULL) x->next->pprev = x->pprev;
  x->next = NULL;
  x->pprev = NULL;
}

/* }====================================================================== */

/* {======================================================================
** Deadlines: in the wheel while watched
** ======================================================================= */

static void watch_deadline(wt_sched *s, wt_deadline *d) {
  if (d->watch++ == 0) tw_insert(&s->wheel, &d->tm.e, d->node->deadline);
}

static void unwatch_deadline(wt_sched *s, wt_deadline *d) {
  if (d->watch > 0 && --d->watch == 0) tw_cancel(&s->wheel, &d->tm.e);
}

void wt_deadline_gone(wt_sched *s, wt_deadline *d) {
  tw_cancel(&s->wheel, &d->tm.e);
  d->watch = 0;
}

/* }====================================================================== */

/* {======================================================================
** Arming and detaching one wait
** ======================================================================= */

/* Is x ready already (so that parking on it would never wait)? */
static int is_ready(const wt_sched *s, const wt_wait *x, int64_t now) {
  (void)s;
  switch (x->src) {
  case WS_CTX: return x->u.ctx.n != NULL && x->u.ctx.n->err != CTX_ERR_NONE;
  case WS_SLEEP: return x->u.t.e.expires <= now;
  case WS_SOURCE: return x->u.source->ended;
  default: return 0;
  }
}

/* Arm x (not ready). Returns 0, or -1 if it fired on arming (io error). */
static int arm(wt_sched *s, wt_wait *x) {
  switch (x->src) {
  case WS_CTX: {
    ctx_node *n = x->u.ctx.n;
    if (n == NULL) break; /* never done: nothing to link, still "armed" */
    list_add(&n->watch, x);
    n->flags |= CTX_F_WATCHED;
    if (x->u.ctx.owner != NULL) watch_deadline(s, x->u.ctx.owner);
    break;
  }
  case WS_SLEEP: {
    int64_t at = x->u.t.e.expires;
    tw_entry_init(&x->u.t.e);
    x->u.t.kind = WT_T_SLEEP;
    tw_insert(&s->wheel, &x->u.t.e, at);
    break;
  }
  case WS_IO:
    x->u.io.revents = 0;
    if (s->ops->io_start(s, x) != 0) {
      x->u.io.revents = WT_IO_ERROR;
      return -1;
    }
    s->nio++;
    break;
  case WS_SOURCE: list_add(&x->u.source->waits, x); break;
  default: break;
  }
  x->armed = 1;
  return 0;
}

static void detach(wt_sched *s, wt_wait *x) {
  if (!x->armed) return;
  x->armed = 0;
  switch (x->src) {
  case WS_CTX: {
    ctx_node *n = x->u.ctx.n;
    if (n == NULL) break;
    list_remove(x);
    if (n->watch == NULL) n->flags &= (uint8_t)~CTX_F_WATCHED;
    if (x->u.ctx.owner != NULL) unwatch_deadline(s, x->u.ctx.owner);
    break;
  }
  case WS_SLEEP: tw_cancel(&s->wheel, &x->u.t.e); break;
  case WS_IO:
    s->ops->io_stop(s, x);
    s->nio--;
    break;
  case WS_SOURCE: list_remove(x); break;
  default: break;
  }
}

static void detach_all(wt_sched *s, wt_waiter *w) {
  uint16_t i;
  for (i = 0; i < w->nwaits; i++) detach(s, &w->waits[i]);
}

/* }====================================================================== */

/* {======================================================================
** The ready queue
** ======================================================================= */

static void enqueue(wt_sched *s, wt_waiter *w) {
  int was_empty = s->ready == NULL;
  s->wakeups++;
  s->nready++;
  w->state = WT_READY;
  w->rnext = NULL;
  w->rpprev = s->ready_tail;
  *s->ready_tail = w;
  s->ready_tail = &w->rnext;
  if (was_empty && s->ops->queued != NULL) s->ops->queued(s);
}

static void unqueue(wt_sched *s, wt_waiter *w) {
  if (w->rpprev == NULL) return;
  *w->rpprev = w->rnext;
  if (w->rnext != NULL)
    w->rnext->rpprev = w->rpprev;
  else
    s->ready_tail = w->rpprev;
  w->rnext = NULL;
  w->rpprev = NULL;
  s->nready--;
}

void wt_push(wt_sched *s, wt_waiter *w) {
  if (w->state != WT_IDLE) wt_release(s, w);
  enqueue(s, w);
}

wt_waiter *wt_pop(wt_sched *s) {
  wt_waiter *w = s->ready;
  if (w == NULL) return NULL;
  unqueue(s, w);
  w->state = WT_RUNNING;
  return w;
}

/* }====================================================================== */

/* {======================================================================
** Parking, waking, releasing
** ======================================================================= */

void wt_waiter_init(wt_waiter *w, int kind, int counted) {
  memset(w, 0, sizeof *w);
  w->kind = (uint8_t)kind;
  w->counted = (uint8_t)(counted != 0);
  w->state = WT_IDLE;
}

void wt_wait_ctx(wt_wait *x, ctx_node *n, wt_deadline *owner) {
  x->src = WS_CTX;
  x->u.ctx.n = n;
  x->u.ctx.owner = owner;
}

void wt_wait_sleep(wt_wait *x, int64_t at) {
  x->src = WS_SLEEP;
  x->u.t.e.expires = at;
}

void wt_wait_io(wt_wait *x, int fd, int events) {
  x->src = WS_IO;
  x->u.io.fd = fd;
  x->u.io.events = (uint8_t)events;
  x->u.io.revents = 0;
}

void wt_wait_source(wt_wait *x, wt_source *src) {
  x->src = WS_SOURCE;
  x->u.source = src;
}

int wt_park(wt_sched *s, wt_waiter *w, wt_wait *waits, uint16_t n,
            int64_t now) {
  uint16_t i;
  if (w->state != WT_IDLE) wt_release(s, w);
  w->waits = waits;
  w->nwaits = n;
  w->fired = 0;
  for (i = 0; i < n; i++) {
    wt_wait *x = &waits[i];
    x->w = w;
    x->index = (uint16_t)(i + 1);
    x->armed = 0;
    x->next = NULL;
    x->pprev = NULL;
  }
  /* first notice passed deadlines (a poll may cancel a subtree: nothing of
  ** w is armed yet), and what is ready already */
  for (i = 0; i < n; i++) {
    wt_wait *x = &waits[i];
    if (x->src == WS_CTX && x->u.ctx.n != NULL)
      ctx_poll(s->tree, x->u.ctx.n, now);
    if (is_ready(s, x, now)) {
      w->fired = (uint16_t)(i + 1);
      w->nwaits = 0;
      return i + 1;
    }
  }
  for (i = 0; i < n; i++) {
    if (arm(s, &waits[i]) != 0) { /* fired on arming: undo the others */
      w->nwaits = i;
      detach_all(s, w);
      w->nwaits = 0;
      w->fired = (uint16_t)(i + 1);
      return i + 1;
    }
  }
  w->state = WT_PARKED;
  if (w->counted) s->nparked++;
  return 0;
}

void wt_release(wt_sched *s, wt_waiter *w) {
  if (w->state == WT_PARKED) {
    detach_all(s, w);
    if (w->counted) s->nparked--;
  } else if (w->state == WT_READY)
    unqueue(s, w);
  w->nwaits = 0;
  w->state = WT_IDLE;
}

void wt_wake(wt_sched *s, wt_waiter *w, int index) {
  if (w->state != WT_PARKED) return;
  detach_all(s, w);
  if (w->counted) s->nparked--;
  w->nwaits = 0;
  w->fired = (uint16_t)index;
  if (w->flags & WT_WF_HOLD) {
    s->wakeups++;
    w->state = WT_HELD;
  } else
    enqueue(s, w);
  if ((w->flags & WT_WF_NOTIFY) && s->ops->woken != NULL) s->ops->woken(s, w);
}

void wt_source_end(wt_sched *s, wt_source *src) {
  wt_wait *x;
  src->ended = 1;
  while ((x = src->waits) != NULL) {
    if (x->w->state == WT_PARKED)
      wt_wake(s, x->w, x->index);
    else
      detach(s, x); /* not reached while the invariant holds */
  }
}

void wt_io_ready(wt_sched *s, wt_wait *x, int revents) {
  if (!x->armed) return;
  x->u.io.revents = (uint8_t)revents;
  wt_wake(s, x->w, x->index);
}

/* the tree's hook: a watched node is done */
static void on_done(ctx_tree *t, ctx_node *n) {
  wt_sched *s = (wt_sched *)t->ud;
  wt_wait *x;
  while ((x = n->watch) != NULL) {
    if (x->w->state == WT_PARKED)
      wt_wake(s, x->w, x->index);
    else
      detach(s, x); /* not reached while the invariant holds */
  }
  n->flags &= (uint8_t)~CTX_F_WATCHED;
}

/* }====================================================================== */

/* {======================================================================
** The wheel
** ======================================================================= */

static void fire(tw_entry *e, void *ud) {
  wt_sched *s = (wt_sched *)ud;
  wt_timer *t = (wt_timer *)e;
  if (t->kind == WT_T_DEADLINE) {
    wt_deadline *d = (wt_deadline *)t;
    s->fired++;
    ctx_hist_add(&s->lateness, s->advance_now - d->node->deadline);
    d->watch = 0; /* out of the wheel: its watchers are woken now */
    ctx_cancel(s->tree, d->node, CTX_ERR_DEADLINE);
  } else {
    wt_wait *x = (wt_wait *)((char *)t - offsetof(wt_wait, u));
    wt_wake(s, x->w, x->index);
  }
}

size_t wt_advance(wt_sched *s, int64_t now) {
  if (tw_count(&s->wheel) == 0) return 0;
  s->advance_now = now;
  return tw_advance(&s->wheel, now, fire, s);
}

int64_t wt_next_wakeup(const wt_sched *s) {
  return tw_next_wakeup(&s->wheel);
}

int wt_pending(const wt_sched *s) {
  return s->ready != NULL || tw_count(&s->wheel) > 0 || s->nio > 0;
}

/* }====================================================================== */

void wt_init(wt_sched *s, ctx_tree *t, int64_t now, const wt_ops *ops,
             void *ud) {
  s->tree = t;
  tw_init(&s->wheel, now);
  s->ready = NULL;
  s->ready_tail = &s->ready;
  s->ops = ops;
  s->ud = ud;
  s->nparked = 0;
  s->nio = 0;
  s->nready = 0;
  s->wakeups = 0;
  s->fired = 0;
  s->advance_now = now;
  ctx_hist_init(&s->lateness, late_bounds,
                (int)(sizeof late_bounds / sizeof late_bounds[0]));
  t->on_done = on_done;
  t->ud = s;
}

int wt_check_waiter(const wt_sched *s, const wt_waiter *w) {
  uint16_t i;
  const wt_waiter *q;
  int queued = 0;
  for (q = s->ready; q != NULL; q = q->rnext)
    if (q == w) queued = 1;
  if ((w->state == WT_READY) != queued) return 1;
  if (w->state == WT_PARKED) {
    for (i = 0; i < w->nwaits; i++)
      if (!w->waits[i].armed) return 2;
  } else {
    for (i = 0; i < w->nwaits; i++)
      if (w->waits[i].armed) return 3;
  }
  return 0;
}
