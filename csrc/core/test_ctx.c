/*
** test_ctx.c — unit tests of the Lua-free context tree.
** Prints `N passed, N failed` last; exits non-zero on any failure.
*/
#include <stdio.h>
#include <stdlib.h>

#include "ctx.h"
#include "unit.h"


static int done_calls;
static void count_done(ctx_tree *t, ctx_node *n) {
  (void)t;
  (void)n;
  done_calls++;
}

static int64_t fake_now;
static int64_t fake_clock(void *ud) {
  (void)ud;
  return fake_now;
}

static ctx_tree *tree(void) {
  static ctx_tree t;
  ctx_tree_init(&t);
  t.on_done = count_done;
  t.clock = fake_clock;
  fake_now = 0;
  done_calls = 0;
  return &t;
}

static void mk(ctx_tree *t, ctx_node *n, ctx_node *p, int64_t dl, int64_t now) {
  ctx_node_init(n);
  ctx_attach(t, n, p, dl, now);
}

static void test_cascade(void) {
  ctx_tree *t = tree();
  ctx_node a, b, c, d;
  mk(t, &a, NULL, CTX_NEVER, 0);
  mk(t, &b, &a, CTX_NEVER, 0);
  mk(t, &c, &b, CTX_NEVER, 0);
  mk(t, &d, &a, CTX_NEVER, 0);
  CHECK(ctx_is_linked(&b) && ctx_is_linked(&c));
  CHECK(ctx_cancel(t, &b, CTX_ERR_CANCELED) == 1);
  CHECK(b.err == CTX_ERR_CANCELED && c.err == CTX_ERR_CANCELED);
  CHECK(b.o.origin == &b && c.o.origin == &b);
  CHECK(a.err == CTX_ERR_NONE && d.err == CTX_ERR_NONE);
  CHECK(!ctx_is_linked(&b) && !ctx_is_linked(&c));
  CHECK(a.children == &d.link); /* b removed itself from a */
  /* first cancel wins */
  CHECK(ctx_cancel(t, &b, CTX_ERR_DEADLINE) == 0);
  CHECK(b.err == CTX_ERR_CANCELED);
  ctx_cancel(t, &a, CTX_ERR_DEADLINE);
  CHECK(d.err == CTX_ERR_DEADLINE && d.o.origin == &a);
  CHECK(c.err == CTX_ERR_CANCELED && c.o.origin == &b);
}

static void test_done_parent(void) {
  ctx_tree *t = tree();
  ctx_node a, b;
  mk(t, &a, NULL, CTX_NEVER, 0);
  ctx_cancel(t, &a, CTX_ERR_CANCELED);
  mk(t, &b, &a, CTX_NEVER, 0);
  CHECK(b.err == CTX_ERR_CANCELED && b.o.origin == &a && !ctx_is_linked(&b));
}

static void test_deadlines(void) {
  ctx_tree *t = tree();
  ctx_node a, b, c, d;
  mk(t, &a, NULL, 1000, 0);
  mk(t, &b, &a, 2000, 0); /* later than parent: ignored */
  mk(t, &c, &b, 500, 0);  /* earlier: its own */
  CHECK(a.flags & CTX_F_OWN_DEADLINE);
  CHECK(!(b.flags & CTX_F_OWN_DEADLINE) && b.deadline == 1000);
  CHECK((c.flags & CTX_F_OWN_DEADLINE) && c.deadline == 500);
  CHECK(ctx_deadline_owner(&b) == &a && ctx_deadline_owner(&c) == &c);
  CHECK(ctx_poll(t, &c, 499) == CTX_ERR_NONE); /* never early */
  CHECK(ctx_poll(t, &c, 500) == CTX_ERR_DEADLINE && c.o.origin == &c);
  CHECK(b.err == CTX_ERR_NONE);
  CHECK(ctx_poll(t, &b, 1000) == CTX_ERR_DEADLINE && b.o.origin == &a);
  CHECK(a.err == CTX_ERR_DEADLINE);
  mk(t, &d, NULL, 10, 20); /* already passed */
  CHECK(d.err == CTX_ERR_DEADLINE && d.o.origin == &d);
}

static void test_merge(void) {
  ctx_tree *t = tree();
  ctx_node a, b;
  struct { ctx_node n; ctx_xlink x[1]; } mm;
  ctx_node *mp = &mm.n;
#define m (*mp)
  mk(t, &a, NULL, 900, 0);
  mk(t, &b, NULL, 300, 0);
  ctx_node_init(&m);
  ctx_merge_init(&m, 1);
  ctx_attach(t, &m, &a, CTX_NEVER, 0);
  ctx_attach_extra(t, &m, 0, &b);
  CHECK(m.deadline == 300 && ctx_deadline_owner(&m) == &b);
  CHECK(ctx_poll(t, &m, 300) == CTX_ERR_DEADLINE && m.o.origin == &b);
  CHECK(!ctx_is_linked(&m) && a.children == NULL);
  CHECK(a.err == CTX_ERR_NONE);
#undef m
}

static void test_detach(void) {
  ctx_tree *t = tree();
  ctx_node a, b, c;
  mk(t, &a, NULL, CTX_NEVER, 0);
  mk(t, &b, &a, CTX_NEVER, 0);
  mk(t, &c, &b, CTX_NEVER, 0);
  ctx_detach(t, &b);
  CHECK(a.children == NULL && b.children == NULL && !ctx_is_linked(&c));
  ctx_detach(t, &b); /* idempotent */
  ctx_cancel(t, &a, CTX_ERR_CANCELED);
  CHECK(b.err == CTX_ERR_NONE && c.err == CTX_ERR_NONE);
}

static void test_watched(void) {
  ctx_tree *t = tree();
  ctx_node a, b, c;
  mk(t, &a, NULL, CTX_NEVER, 0);
  mk(t, &b, &a, CTX_NEVER, 0);
  mk(t, &c, &b, CTX_NEVER, 0);
  a.flags |= CTX_F_WATCHED;
  c.flags |= CTX_F_WATCHED;
  ctx_cancel(t, &a, CTX_ERR_CANCELED);
  CHECK(done_calls == 2);
}

/* a child's deadline passed unobserved, then its parent is cancelled: the
** child ended first, by its own deadline */
static void test_unobserved_expiry(void) {
  ctx_tree *t = tree();
  ctx_node a, b, c, d;
  mk(t, &a, NULL, CTX_NEVER, 0);
  mk(t, &b, &a, 100, 0);
  mk(t, &c, &b, CTX_NEVER, 0);
  mk(t, &d, &a, 500, 0);
  fake_now = 200;
  ctx_cancel(t, &a, CTX_ERR_CANCELED);
  CHECK(b.err == CTX_ERR_DEADLINE && b.o.origin == &b);
  CHECK(c.err == CTX_ERR_DEADLINE && c.o.origin == &b);
  CHECK(d.err == CTX_ERR_CANCELED && d.o.origin == &a);
}

/* a child that ends with its parent's cancel but not its deadline */
static void test_no_parent_deadline(void) {
  ctx_tree *t = tree();
  ctx_node g, p, c, d, e;
  mk(t, &g, NULL, CTX_NEVER, 0);
  mk(t, &p, &g, 100, 0);
  ctx_node_init(&c);
  c.flags |= CTX_F_NO_PARENT_DEADLINE;
  ctx_attach(t, &c, &p, 500, 0);
  CHECK(c.deadline == 500 && (c.flags & CTX_F_OWN_DEADLINE));
  ctx_node_init(&d);
  d.flags |= CTX_F_NO_PARENT_DEADLINE;
  ctx_attach(t, &d, &p, CTX_NEVER, 0);
  CHECK(d.deadline == CTX_NEVER && ctx_is_linked(&d));
  CHECK(ctx_poll(t, &p, 100) == CTX_ERR_DEADLINE); /* the parent's deadline */
  CHECK(c.err == CTX_ERR_NONE && d.err == CTX_ERR_NONE);
  CHECK(!ctx_is_linked(&c) && !ctx_is_linked(&d)); /* cut loose */
  ctx_node_init(&e);                                 /* made after: runs */
  e.flags |= CTX_F_NO_PARENT_DEADLINE;
  ctx_attach(t, &e, &p, CTX_NEVER, 0);
  CHECK(e.err == CTX_ERR_NONE);
  /* a cancel does reach it */
  {
    ctx_node q, r;
    mk(t, &q, &g, CTX_NEVER, 0);
    ctx_node_init(&r);
    r.flags |= CTX_F_NO_PARENT_DEADLINE;
    ctx_attach(t, &r, &q, CTX_NEVER, 0);
    ctx_cancel(t, &g, CTX_ERR_CANCELED);
    CHECK(r.err == CTX_ERR_CANCELED && r.o.origin == &g);
  }
}

#define BIG 100000

static void test_deep_chain(void) {
  ctx_tree *t = tree();
  ctx_node *n = (ctx_node *)malloc(sizeof(ctx_node) * BIG);
  int i;
  CHECK(n != NULL);
  if (n == NULL) return;
  mk(t, &n[0], NULL, CTX_NEVER, 0);
  for (i = 1; i < BIG; i++) mk(t, &n[i], &n[i - 1], CTX_NEVER, 0);
  ctx_cancel(t, &n[0], CTX_ERR_CANCELED);
  for (i = 0; i < BIG; i++)
    if (n[i].err != CTX_ERR_CANCELED || n[i].o.origin != &n[0]) break;
  CHECK(i == BIG);
  free(n);
}

static void test_wide(void) {
  ctx_tree *t = tree();
  ctx_node *n = (ctx_node *)malloc(sizeof(ctx_node) * BIG);
  int i;
  CHECK(n != NULL);
  if (n == NULL) return;
  mk(t, &n[0], NULL, CTX_NEVER, 0);
  for (i = 1; i < BIG; i++) mk(t, &n[i], &n[0], CTX_NEVER, 0);
  for (i = 1; i < BIG; i += 2) ctx_detach(t, &n[i]); /* half collected */
  ctx_cancel(t, &n[0], CTX_ERR_DEADLINE);
  for (i = 2; i < BIG; i += 2)
    if (n[i].err != CTX_ERR_DEADLINE) break;
  CHECK(i >= BIG);
  CHECK(n[1].err == CTX_ERR_NONE);
  free(n);
}

int main(void) {
  RUN(test_cascade);
  RUN(test_done_parent);
  RUN(test_deadlines);
  RUN(test_merge);
  RUN(test_detach);
  RUN(test_watched);
  RUN(test_unobserved_expiry);
  RUN(test_no_parent_deadline);
  RUN(test_deep_chain);
  RUN(test_wide);
  return UNIT_SUMMARY();
}
