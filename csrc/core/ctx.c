/*
** ctx.c — the context tree: attach, cancel walk, lazy deadlines, detach.
** See ctx.h for the invariants.
*/
#include "ctx.h"
#include "clock.h"

/* {======================================================================
** Links
** ======================================================================= */

#define PARENT(l) ((ctx_node *)((l)->parent & ~(uintptr_t)1))

/* the node owning edge l */
static ctx_node *link_child(ctx_link *l) {
  if (l->parent & 1) return ((ctx_xlink *)l)->child;
  return (ctx_node *)l; /* a node's own edge is its first member */
}

static void link_insert(ctx_link *l, ctx_node *parent, int extra) {
  l->parent = (uintptr_t)parent | (uintptr_t)(extra != 0);
  l->next = parent->children;
  if (l->next != NULL) l->next->pprev = &l->next;
  l->pprev = &parent->children;
  parent->children = l;
}

static void link_remove(ctx_link *l) {
  if (l->pprev == NULL) return;
  *l->pprev = l->next;
  if (l->next != NULL) l->next->pprev = l->pprev;
  l->next = NULL;
  l->pprev = NULL;
  l->parent = 0;
}

/* Unlink every edge from n to its parents. */
static void unlink_parents(ctx_node *n) {
  uint16_t i;
  link_remove(&n->link);
  if (n->flags & CTX_F_MERGE)
    for (i = 0; i < n->nx; i++) link_remove(&ctx_xlinks(n)[i].l);
}

/* }====================================================================== */

/* lifetimes: 1 ms .. 1 h */
static const int64_t life_bounds[] = {
  1000000, 10000000, 100000000, 500000000, 1000000000, 5000000000,
  10000000000, 30000000000, 60000000000, 300000000000, 3600000000000
};

void ctx_hist_init(ctx_hist *h, const int64_t *bounds, int nb) {
  int i;
  h->bounds = bounds;
  h->nb = nb > CTX_HIST_MAX ? CTX_HIST_MAX : nb;
  for (i = 0; i <= CTX_HIST_MAX; i++) h->counts[i] = 0;
  h->count = 0;
  h->sum_ns = 0;
}

void ctx_hist_add(ctx_hist *h, int64_t ns) {
  int i = 0;
  if (ns < 0) ns = 0;
  while (i < h->nb && ns > h->bounds[i]) i++;
  h->counts[i]++;
  h->count++;
  h->sum_ns += ns;
}

static int64_t mono(void *ud) {
  (void)ud;
  return clk_mono_ns();
}

void ctx_tree_init(ctx_tree *t) {
  int i;
  t->on_done = NULL;
  t->ud = NULL;
  t->clock = mono;
  t->clock_ud = NULL;
  t->created = 0;
  for (i = 0; i < 3; i++) t->done[i][0] = t->done[i][1] = 0;
  t->metrics = 0;
  ctx_hist_init(&t->lifetime, life_bounds,
                (int)(sizeof life_bounds / sizeof life_bounds[0]));
}

/* n becomes done with err, ended by origin: count it, and with metrics on,
** how long it ran (*now: the clock, read once when first needed) */
static void record_done(ctx_tree *t, ctx_node *n, int err, ctx_node *origin,
                        int64_t *now) {
  if (t->metrics && n->o.born > 0) {
    if (*now < 0) *now = t->clock(t->clock_ud);
    ctx_hist_add(&t->lifetime, *now - n->o.born);
  }
  n->err = (uint8_t)err;
  n->o.origin = origin;
  t->done[err][origin != n]++;
}

void ctx_node_init(ctx_node *n) {
  n->link.next = NULL;
  n->link.pprev = NULL;
  n->link.parent = 0;
  n->children = NULL;
  n->o.born = 0;
  n->deadline = CTX_NEVER;
  n->watch = NULL;
  n->nx = 0;
  n->err = CTX_ERR_NONE;
  n->flags = 0;
}

int ctx_is_linked(const ctx_node *n) {
  uint16_t i;
  if (n->link.pprev != NULL || n->children != NULL) return 1;
  if (n->flags & CTX_F_MERGE)
    for (i = 0; i < n->nx; i++)
      if (ctx_xlinks(n)[i].l.pprev != NULL) return 1;
  return 0;
}

/* Mark n done without walking (n has no children yet). */
static void set_done(ctx_tree *t, ctx_node *n, int err, ctx_node *origin) {
  int64_t now = -1;
  record_done(t, n, err, origin, &now);
  unlink_parents(n);
  if ((n->flags & CTX_F_WATCHED) && t->on_done != NULL) t->on_done(t, n);
}

int ctx_attach(ctx_tree *t, ctx_node *n, ctx_node *p, int64_t own_deadline,
               int64_t now) {
  t->created++;
  if (t->metrics) n->o.born = t->clock(t->clock_ud);
  if (p != NULL && !(n->flags & CTX_F_NO_PARENT_DEADLINE))
    n->deadline = p->deadline;
  if (own_deadline < n->deadline) {
    n->deadline = own_deadline;
    n->flags |= CTX_F_OWN_DEADLINE;
  }
  if (p != NULL && p->err == CTX_ERR_DEADLINE &&
      (n->flags & CTX_F_NO_PARENT_DEADLINE))
    p = NULL; /* its parent ended by a deadline: that does not end it */
  if (p != NULL && p->err != CTX_ERR_NONE)
    set_done(t, n, p->err, p->o.origin);
  else if ((n->flags & CTX_F_OWN_DEADLINE) && own_deadline <= now)
    set_done(t, n, CTX_ERR_DEADLINE, n);
  else if (p != NULL)
    link_insert(&n->link, p, 0);
  return n->err;
}

void ctx_merge_init(ctx_node *n, uint16_t nx) {
  ctx_xlink *x = ctx_xlinks(n);
  uint16_t i;
  n->flags |= CTX_F_MERGE;
  n->nx = nx;
  for (i = 0; i < nx; i++) {
    x[i].l.next = NULL;
    x[i].l.pprev = NULL;
    x[i].l.parent = 0;
    x[i].child = n;
  }
}

int ctx_attach_extra(ctx_tree *t, ctx_node *n, uint16_t i, ctx_node *p) {
  ctx_link *x = &ctx_xlinks(n)[i].l;
  if (p->deadline < n->deadline) n->deadline = p->deadline;
  if (n->err != CTX_ERR_NONE) return n->err;
  if (p->err != CTX_ERR_NONE) {
    set_done(t, n, p->err, p->o.origin);
    return n->err;
  }
  link_insert(x, p, 1);
  return n->err;
}

/* {======================================================================
** The cancel walk
** A done node is unlinked from its parents, so its link.parent field is
** free: the walk threads its work stack through it. Each node is pushed at
** most once (when it is marked done), so the walk is O(subtree size).
** ======================================================================= */

int ctx_cancel(ctx_tree *t, ctx_node *n, int err) {
  ctx_node *top, *cur;
  int64_t now = -1; /* read once, when first needed */
  if (n->err != CTX_ERR_NONE) return 0;
  record_done(t, n, err, n, &now);
  unlink_parents(n);
  n->link.parent = 0;
  top = n;
  while (top != NULL) {
    ctx_link *l;
    cur = top;
    top = (ctx_node *)cur->link.parent;
    cur->link.parent = 0;
    while ((l = cur->children) != NULL) {
      ctx_node *c = link_child(l);
      link_remove(l);
      if (c->err != CTX_ERR_NONE) continue;
      if ((c->flags & CTX_F_NO_PARENT_DEADLINE) && cur->err == CTX_ERR_DEADLINE)
        continue; /* cut loose, still running */
      if (c->flags & CTX_F_OWN_DEADLINE) {
        /* a deadline that passed unobserved had ended c before this */
        if (now < 0) now = t->clock(t->clock_ud);
        if (c->deadline <= now) record_done(t, c, CTX_ERR_DEADLINE, c, &now);
      }
      if (c->err == CTX_ERR_NONE) record_done(t, c, cur->err, cur->o.origin, &now);
      unlink_parents(c);
      c->link.parent = (uintptr_t)top; /* push */
      top = c;
    }
    if ((cur->flags & CTX_F_WATCHED) && t->on_done != NULL) t->on_done(t, cur);
  }
  return 1;
}

/* }====================================================================== */

/* The parent through which n inherits its effective deadline, or NULL. */
static ctx_node *deadline_parent(ctx_node *n) {
  uint16_t i;
  if (n->link.pprev != NULL && PARENT(&n->link)->deadline == n->deadline)
    return PARENT(&n->link);
  if (n->flags & CTX_F_MERGE)
    for (i = 0; i < n->nx; i++) {
      ctx_link *x = &ctx_xlinks(n)[i].l;
      if (x->pprev != NULL && PARENT(x)->deadline == n->deadline)
        return PARENT(x);
    }
  return NULL;
}

ctx_node *ctx_deadline_owner(ctx_node *n) {
  if (n->deadline == CTX_NEVER) return NULL;
  while (!(n->flags & CTX_F_OWN_DEADLINE)) {
    ctx_node *p = deadline_parent(n);
    if (p == NULL) break; /* detached (being collected): stop here */
    n = p;
  }
  return n;
}

int ctx_poll(ctx_tree *t, ctx_node *n, int64_t now) {
  if (n->err == CTX_ERR_NONE && n->deadline <= now)
    ctx_cancel(t, ctx_deadline_owner(n), CTX_ERR_DEADLINE);
  return n->err;
}

void ctx_detach(ctx_tree *t, ctx_node *n) {
  ctx_link *l;
  (void)t;
  unlink_parents(n);
  while ((l = n->children) != NULL) link_remove(l);
}
