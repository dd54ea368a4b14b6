/*
** test_wait.c — unit tests and a randomized model test of the wait core
** (waiters, their waits, the ready queue). Built with ASan + UBSan by the
** Makefile, so a wait left linked into freed memory is caught here.
** Prints `N passed, N failed` last; exits non-zero on any failure.
**   test_wait [seed [steps]]
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "unit.h"
#include "wait.h"


/* {======================================================================
** A fake event loop: fds 0..NFD-1 are "open" unless closed[]
** ======================================================================= */

#define NFD 8
static int fd_closed[NFD];
static int fd_watchers[NFD]; /* started and not stopped */
static int queued_calls, woken_calls;

static int io_start(wt_sched *s, wt_wait *x) {
  (void)s;
  if (x->u.io.fd < 0 || x->u.io.fd >= NFD || fd_closed[x->u.io.fd]) return -1;
  fd_watchers[x->u.io.fd]++;
  return 0;
}

static void io_stop(wt_sched *s, wt_wait *x) {
  (void)s;
  fd_watchers[x->u.io.fd]--;
}

static void queued(wt_sched *s) {
  (void)s;
  queued_calls++;
}

static void woken(wt_sched *s, wt_waiter *w) {
  (void)s;
  (void)w;
  woken_calls++;
}

static const wt_ops ops = {io_start, io_stop, queued, woken};

static int64_t fake_now;
static int64_t fake_clock(void *ud) {
  (void)ud;
  return fake_now;
}

static ctx_tree tree;
static wt_sched sched;

static wt_sched *setup(void) {
  ctx_tree_init(&tree);
  tree.clock = fake_clock;
  fake_now = 1000000000;
  wt_init(&sched, &tree, fake_now, &ops, NULL);
  memset(fd_closed, 0, sizeof fd_closed);
  memset(fd_watchers, 0, sizeof fd_watchers);
  queued_calls = woken_calls = 0;
  return &sched;
}

static void mk(ctx_node *n, ctx_node *p, int64_t dl) {
  ctx_node_init(n);
  ctx_attach(&tree, n, p, dl, fake_now);
}

static int nodes_watched(ctx_node *n) { return n->watch != NULL; }

/* }====================================================================== */

/* a context wait wakes its waiter once, detaching every other wait */
static void test_ctx_wakes(void) {
  wt_sched *s = setup();
  ctx_node a, b;
  wt_waiter w;
  wt_wait x[3];
  mk(&a, NULL, CTX_NEVER);
  mk(&b, NULL, CTX_NEVER);
  wt_waiter_init(&w, 1, 1);
  wt_wait_ctx(&x[0], &a, NULL);
  wt_wait_sleep(&x[1], fake_now + 5000000);
  wt_wait_io(&x[2], 3, WT_IO_READ);
  CHECK(wt_park(s, &w, x, 3, fake_now) == 0);
  CHECK(w.state == WT_PARKED);
  CHECK(s->nparked == 1 && s->nio == 1 && tw_count(&s->wheel) == 1);
  CHECK(nodes_watched(&a) && fd_watchers[3] == 1);
  CHECK(wt_check_waiter(s, &w) == 0);
  ctx_cancel(&tree, &a, CTX_ERR_CANCELED);
  CHECK(w.state == WT_READY && w.fired == 1);
  CHECK(s->nparked == 0 && s->nio == 0 && tw_count(&s->wheel) == 0);
  CHECK(!nodes_watched(&a) && fd_watchers[3] == 0);
  CHECK(wt_check_waiter(s, &w) == 0);
  CHECK(wt_pop(s) == &w && w.state == WT_RUNNING);
  CHECK(wt_pop(s) == NULL);
  (void)b;
}

/* what is ready already wins at once and leaves nothing armed */
static void test_ready_at_once(void) {
  wt_sched *s = setup();
  ctx_node a, d;
  wt_waiter w;
  wt_wait x[3];
  mk(&a, NULL, CTX_NEVER);
  mk(&d, NULL, fake_now + 1000);
  wt_waiter_init(&w, 1, 1);
  wt_wait_io(&x[0], 2, WT_IO_READ);
  wt_wait_sleep(&x[1], fake_now + 1000000);
  wt_wait_ctx(&x[2], &d, NULL);
  fake_now += 2000; /* d's deadline passed unobserved */
  CHECK(wt_park(s, &w, x, 3, fake_now) == 3);
  CHECK(d.err == CTX_ERR_DEADLINE);
  CHECK(w.state == WT_IDLE && s->nparked == 0 && s->nio == 0);
  CHECK(tw_count(&s->wheel) == 0 && fd_watchers[2] == 0);
  /* an fd that cannot be watched fires, with an error, and undoes the rest */
  fd_closed[5] = 1;
  wt_wait_sleep(&x[0], fake_now + 1000000);
  wt_wait_ctx(&x[1], &a, NULL);
  wt_wait_io(&x[2], 5, WT_IO_READ);
  CHECK(wt_park(s, &w, x, 3, fake_now) == 3);
  CHECK(x[2].u.io.revents == WT_IO_ERROR);
  CHECK(w.state == WT_IDLE && tw_count(&s->wheel) == 0 && !nodes_watched(&a));
  CHECK(wt_check_waiter(s, &w) == 0);
}

/* release is the one way out: from PARKED and from READY */
static void test_release(void) {
  wt_sched *s = setup();
  ctx_node a;
  wt_waiter w, v;
  wt_wait x[2], y;
  mk(&a, NULL, CTX_NEVER);
  wt_waiter_init(&w, 1, 1);
  wt_waiter_init(&v, 1, 0);
  wt_wait_ctx(&x[0], &a, NULL);
  wt_wait_sleep(&x[1], fake_now + 1000000);
  wt_wait_ctx(&y, &a, NULL);
  CHECK(wt_park(s, &w, x, 2, fake_now) == 0);
  CHECK(wt_park(s, &v, &y, 1, fake_now) == 0);
  wt_release(s, &w);
  CHECK(w.state == WT_IDLE && s->nparked == 0 && tw_count(&s->wheel) == 0);
  CHECK(a.watch == &y);
  ctx_cancel(&tree, &a, CTX_ERR_CANCELED);
  CHECK(v.state == WT_READY && s->nready == 1);
  wt_release(s, &v); /* a stop() of a queued callback */
  CHECK(v.state == WT_IDLE && s->ready == NULL && s->nready == 0);
  CHECK(wt_pop(s) == NULL);
}

/* the queue keeps its order, and unqueues from the middle and the tail */
static void test_queue(void) {
  wt_sched *s = setup();
  wt_waiter w[4];
  int i;
  for (i = 0; i < 4; i++) {
    wt_waiter_init(&w[i], 1, 0);
    wt_push(s, &w[i]);
  }
  CHECK(queued_calls == 1 && s->nready == 4);
  wt_release(s, &w[3]);
  wt_release(s, &w[1]);
  CHECK(wt_pop(s) == &w[0]);
  wt_push(s, &w[1]);
  CHECK(wt_pop(s) == &w[2]);
  CHECK(wt_pop(s) == &w[1]);
  CHECK(wt_pop(s) == NULL && s->nready == 0);
}

/* sleeps and deadlines through the wheel; a deadline watched by several */
static void test_wheel(void) {
  wt_sched *s = setup();
  ctx_node d, c;
  wt_deadline dl;
  wt_waiter w1, w2, w3;
  wt_wait x1, x2, x3;
  mk(&d, NULL, fake_now + 10000000);
  mk(&c, &d, CTX_NEVER);
  tw_entry_init(&dl.tm.e);
  dl.tm.kind = WT_T_DEADLINE;
  dl.node = &d;
  dl.watch = 0;
  wt_waiter_init(&w1, 1, 1);
  wt_waiter_init(&w2, 1, 1);
  wt_waiter_init(&w3, 1, 1);
  wt_wait_ctx(&x1, &d, &dl);
  wt_wait_ctx(&x2, &c, &dl);
  wt_wait_sleep(&x3, fake_now + 5000000);
  CHECK(wt_park(s, &w1, &x1, 1, fake_now) == 0);
  CHECK(wt_park(s, &w2, &x2, 1, fake_now) == 0);
  CHECK(wt_park(s, &w3, &x3, 1, fake_now) == 0);
  CHECK(dl.watch == 2 && tw_count(&s->wheel) == 2);
  wt_release(s, &w1);
  CHECK(dl.watch == 1 && tw_count(&s->wheel) == 2);
  fake_now += 4999999;
  wt_advance(s, fake_now);
  CHECK(w3.state == WT_PARKED); /* never early */
  fake_now += 1;
  wt_advance(s, fake_now);
  CHECK(w3.state == WT_READY && w3.fired == 1);
  fake_now += 5000000;
  wt_advance(s, fake_now);
  CHECK(d.err == CTX_ERR_DEADLINE && c.err == CTX_ERR_DEADLINE);
  CHECK(w2.state == WT_READY && s->fired == 1 && tw_count(&s->wheel) == 0);
  CHECK(dl.watch == 0);
}

/* tasks as sources; held and notified waiters */
static void test_source_and_hold(void) {
  wt_sched *s = setup();
  wt_source src;
  ctx_node a;
  wt_waiter w, h;
  wt_wait x, y;
  memset(&src, 0, sizeof src);
  mk(&a, NULL, CTX_NEVER);
  wt_waiter_init(&w, 1, 1);
  wt_waiter_init(&h, 2, 0);
  h.flags = WT_WF_HOLD | WT_WF_NOTIFY;
  wt_wait_source(&x, &src);
  wt_wait_ctx(&y, &a, NULL);
  CHECK(wt_park(s, &w, &x, 1, fake_now) == 0);
  CHECK(wt_park(s, &h, &y, 1, fake_now) == 0);
  wt_source_end(s, &src);
  CHECK(w.state == WT_READY && src.waits == NULL);
  CHECK(wt_park(s, &w, &x, 1, fake_now) == 1); /* ended: at once */
  CHECK(w.state == WT_IDLE && s->nready == 0); /* parking released it */
  ctx_cancel(&tree, &a, CTX_ERR_CANCELED);
  CHECK(h.state == WT_HELD && woken_calls == 1 && s->nready == 0);
  wt_release(s, &h);
  CHECK(h.state == WT_IDLE && s->nready == 0);
}

/* {======================================================================
** The model test: random parks, cancels, advances, fd events, releases
** and pops over a small world, checking after each step that a wait is
** armed iff its waiter is parked, the queue holds exactly the READY ones,
** and the counters agree with a recount.
** ======================================================================= */

#define NN 12 /* nodes */
#define NW 10 /* waiters */
#define MAXW 4

static unsigned long rng;
static unsigned rnd(unsigned n) {
  rng = rng * 6364136223846793005UL + 1442695040888963407UL;
  return (unsigned)((rng >> 33) % n);
}

static ctx_node nodes[NN];
static wt_deadline dls[NN];
static wt_waiter ws[NW];
static wt_wait wx[NW][MAXW];
static wt_source srcs[2];

static void new_node(int i) {
  int p = i > 0 && rnd(3) ? (int)rnd((unsigned)i) : -1;
  int64_t dl = rnd(3) == 0 ? fake_now + (int64_t)rnd(50) * 1000000 : CTX_NEVER;
  if (nodes[i].watch != NULL || (nodes[i].link.pprev != NULL) ||
      nodes[i].children != NULL)
    return; /* still in use */
  wt_deadline_gone(&sched, &dls[i]);
  mk(&nodes[i], p >= 0 ? &nodes[p] : NULL, dl);
  tw_entry_init(&dls[i].tm.e);
  dls[i].tm.kind = WT_T_DEADLINE;
  dls[i].node = &nodes[i];
  dls[i].watch = 0;
}

/* the deadline owner of node i, by walking parents (for the waits) */
static wt_deadline *owner_of(int i) {
  ctx_node *o = ctx_deadline_owner(&nodes[i]);
  if (o == NULL) return NULL;
  return &dls[o - nodes];
}

static int model_check(void) {
  int i, k;
  long parked = 0, ready = 0, nio = 0;
  size_t timers = 0;
  const wt_waiter *q;
  for (q = sched.ready; q != NULL; q = q->rnext) ready++;
  if (ready != sched.nready) return 100;
  for (i = 0; i < NW; i++) {
    int e = wt_check_waiter(&sched, &ws[i]);
    if (e) return e * 10 + i;
    if (ws[i].state == WT_PARKED) {
      parked += ws[i].counted;
      for (k = 0; k < ws[i].nwaits; k++) {
        if (wx[i][k].src == WS_IO) nio++;
        if (wx[i][k].src == WS_SLEEP) timers++;
        if (wx[i][k].src == WS_CTX && wx[i][k].u.ctx.n->err != CTX_ERR_NONE)
          return 200 + i; /* parked on a done node */
      }
    }
  }
  for (i = 0; i < NN; i++) {
    if (dls[i].watch > 0) timers++;
    if (nodes[i].err != CTX_ERR_NONE && nodes[i].watch != NULL) return 300 + i;
  }
  if (parked != sched.nparked) return 400;
  if (nio != sched.nio) return 401;
  if (timers != tw_count(&sched.wheel)) return 402;
  for (i = 0; i < NFD; i++)
    if (fd_watchers[i] < 0) return 500 + i;
  return tw_check(&sched.wheel) ? 403 : 0;
}

static void test_model(unsigned long seed, int steps) {
  int step, i;
  wt_sched *s = setup();
  rng = seed;
  memset(nodes, 0, sizeof nodes);
  memset(dls, 0, sizeof dls);
  memset(srcs, 0, sizeof srcs);
  for (i = 0; i < NN; i++) {
    ctx_node_init(&nodes[i]);
    tw_entry_init(&dls[i].tm.e);
    new_node(i);
  }
  for (i = 0; i < NW; i++) wt_waiter_init(&ws[i], 1, (int)rnd(2));
  for (step = 0; step < steps; step++) {
    int w = (int)rnd(NW), e;
    switch (rnd(9)) {
    case 0: case 1: { /* park w on 1..MAXW random waits */
      int n = 1 + (int)rnd(MAXW), k;
      if (ws[w].state == WT_RUNNING) break;
      wt_release(s, &ws[w]); /* its waits' memory is described anew */
      for (k = 0; k < n; k++) {
        int j = (int)rnd(NN);
        switch (rnd(4)) {
        case 0: wt_wait_ctx(&wx[w][k], &nodes[j], owner_of(j)); break;
        case 1: wt_wait_sleep(&wx[w][k], fake_now + (int64_t)rnd(30) * 1000000); break;
        case 2: wt_wait_io(&wx[w][k], (int)rnd(NFD + 1), WT_IO_READ); break;
        default: wt_wait_source(&wx[w][k], &srcs[rnd(2)]); break;
        }
      }
      wt_park(s, &ws[w], wx[w], (uint16_t)n, fake_now);
      break;
    }
    case 2: ctx_cancel(&tree, &nodes[rnd(NN)], CTX_ERR_CANCELED); break;
    case 3: fake_now += (int64_t)rnd(10) * 1000000; wt_advance(s, fake_now); break;
    case 4: wt_release(s, &ws[w]); break;
    case 5: { /* an fd event, for some armed io wait */
      int k;
      for (k = 0; k < ws[w].nwaits; k++)
        if (ws[w].state == WT_PARKED && wx[w][k].src == WS_IO) {
          wt_io_ready(s, &wx[w][k], rnd(4) ? WT_IO_READ : WT_IO_ERROR);
          break;
        }
      break;
    }
    case 6: { wt_waiter *p = wt_pop(s); if (p) p->state = WT_IDLE; break; }
    case 7:
      if (rnd(4) == 0) {
        int j = (int)rnd(2);
        if (!srcs[j].ended) wt_source_end(s, &srcs[j]);
        else memset(&srcs[j], 0, sizeof srcs[j]); /* a new task */
      } else
        fd_closed[rnd(NFD)] ^= 1;
      break;
    default: new_node((int)rnd(NN)); break;
    }
    if ((e = model_check()) != 0) {
      printf("  FAIL model seed %lu step %d: invariant %d\n", seed, step, e);
      cur_failed = 1;
      return;
    }
  }
}

static unsigned long model_seed = 1;
static int model_steps = 200000;

static void test_model_runs(void) {
  unsigned long k;
  for (k = 0; k < 8 && !cur_failed; k++)
    test_model(model_seed + k, model_steps / 8);
  printf("  model: seeds %lu..%lu, %d steps\n", model_seed, model_seed + 7,
         model_steps);
}

int main(int argc, char **argv) {
  if (argc > 1) model_seed = strtoul(argv[1], NULL, 10);
  if (argc > 2) model_steps = atoi(argv[2]);
  RUN(test_ctx_wakes);
  RUN(test_ready_at_once);
  RUN(test_release);
  RUN(test_queue);
  RUN(test_wheel);
  RUN(test_source_and_hold);
  RUN(test_model_runs);
  return UNIT_SUMMARY();
}
