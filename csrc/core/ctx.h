/*
** ctx.h — the context tree (Lua-free).
**
** A node is one cancellable context: with_cancel, with_timeout/with_deadline
** and merge make one each. Contexts that cannot be cancelled on their own
** (roots, with_value, without_cancel) have no node: the binding points them
** at the nearest cancellable ancestor's node, or at none.
**
** Invariants
**   - A node is running (err == CTX_ERR_NONE) or done (err != 0). Once done
**     it stays done; err and origin never change again.
**   - A running node is linked into the child list of each running parent
**     it has (one parent, or several for a merge); a done node is linked
**     into nothing and has no children: the cancel walk unlinks as it goes.
**   - deadline is the effective deadline: min(own deadline, parents'). A
**     node has CTX_F_OWN_DEADLINE only when its own deadline is strictly
**     earlier than its parents' (a later one is ignored, as in Go).
**   - Nothing here allocates, recurses or calls back into the binding except
**     through ctx_tree.on_done, which must not touch the tree.
*/
#ifndef LCONTEXT_CTX_H
#define LCONTEXT_CTX_H

#include <stddef.h>
#include <stdint.h>

/* Internal: hidden from the module's dynamic symbol table whatever CFLAGS
** the build uses (only luaopen_lcontext_core is exported). After the
** includes, since the pragma also marks external declarations. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define CTX_NEVER INT64_MAX /* "no deadline", in monotonic nanoseconds */

enum ctx_err {
  CTX_ERR_NONE = 0,     /* running */
  CTX_ERR_CANCELED = 1, /* someone called cancel */
  CTX_ERR_DEADLINE = 2  /* a deadline passed */
};

enum ctx_flag {
  CTX_F_OWN_DEADLINE = 1, /* deadline is this node's own (it has a timer) */
  CTX_F_WATCHED = 2,      /* call tree->on_done when this node becomes done */
  CTX_F_MERGE = 4,        /* node has nx extra parent links (xlinks) */
  CTX_F_NO_PARENT_DEADLINE = 8 /* ends with its parent's cancel, not with its
                                  parent's deadline (with_min_timeout) */
};

typedef struct ctx_node ctx_node;
struct ctx_watch; /* what waits on a node: defined by the binding */

/*
** One edge of the tree: lives in the child, is linked into the parent.
** A node's own edge (its first member, `link`) leads back to the node by
** its address; the extra edges of a merge are ctx_xlinks, which say whose
** they are, and are marked by bit 0 of `parent`.
*/
typedef struct ctx_link {
  struct ctx_link *next;   /* next sibling edge in the parent's list */
  struct ctx_link **pprev; /* where the pointer to this edge is; NULL: unlinked */
  uintptr_t parent;        /* the parent node while linked (| 1: an xlink);
                              the cancel walk also threads its work stack
                              through the (unlinked) edges of done nodes */
} ctx_link;

typedef struct ctx_xlink {
  ctx_link l;
  ctx_node *child; /* the merge owning this edge */
} ctx_xlink;

struct ctx_node {
  ctx_link link;       /* edge to the (first) parent: must come first */
  ctx_link *children;  /* list of edges to children; NULL when done */
  union {
    ctx_node *origin;  /* once done: the node whose cancel or timer ended it */
    int64_t born;      /* while running, with metrics on: when it was made */
  } o;
  int64_t deadline;    /* effective deadline, monotonic ns, or CTX_NEVER */
  struct ctx_watch *watch; /* the binding's list of what waits on it */
  uint16_t nx;         /* CTX_F_MERGE: number of xlinks */
  uint8_t err;         /* enum ctx_err */
  uint8_t flags;       /* enum ctx_flag */
};

/* A merge's nx extra edges (to its parents 2..nx+1) follow the node in
** memory: the caller allocates sizeof(ctx_node) + nx * sizeof(ctx_xlink). */
#define ctx_xlinks(n) ((ctx_xlink *)((n) + 1))

/* A histogram of durations (for metrics): counts[i] counts values <=
** bounds[i] and > bounds[i-1]; counts[nb] those above the last bound. */
#define CTX_HIST_MAX 16
typedef struct ctx_hist {
  const int64_t *bounds; /* nb upper bounds, ns, ascending */
  int nb;
  uint64_t counts[CTX_HIST_MAX + 1];
  uint64_t count;
  int64_t sum_ns;
} ctx_hist;

void ctx_hist_init(ctx_hist *h, const int64_t *bounds, int nb);
void ctx_hist_add(ctx_hist *h, int64_t ns);

typedef struct ctx_tree ctx_tree;
struct ctx_tree {
  /* Called for each CTX_F_WATCHED node as the cancel walk marks it done.
  ** It may queue work but must not cancel, attach or detach nodes. */
  void (*on_done)(ctx_tree *t, ctx_node *n);
  void *ud;
  /* monotonic ns: clk_mono_ns by default; the binding gives the runtime's
  ** clock (virtual time), tests inject theirs. clock_ud is its argument. */
  int64_t (*clock)(void *clock_ud);
  void *clock_ud;
  /* counters (for metrics) */
  uint64_t created;      /* nodes attached */
  uint64_t done[3][2];   /* nodes done, by err and by [0] own / [1] inherited */
  int metrics;           /* record lifetimes (a clock read per context) */
  ctx_hist lifetime;     /* how long nodes ran, made to done (metrics on) */
};

void ctx_tree_init(ctx_tree *t);
void ctx_node_init(ctx_node *n);

/*
** Attach n (fresh from ctx_node_init) below parent p (NULL for none) with
** its own deadline own_deadline (CTX_NEVER for none). If p is done, n is done
** at once with p's err and origin; else if own_deadline <= now, n is done at
** once with CTX_ERR_DEADLINE and origin n. The caller must have polled p
** (ctx_poll) so that a passed deadline of p is noticed. Returns n->err.
*/
int ctx_attach(ctx_tree *t, ctx_node *n, ctx_node *p, int64_t own_deadline,
               int64_t now);

/*
** Merge: give n (fresh from ctx_node_init) nx extra parent edges, in the
** memory that follows it (ctx_xlinks). Call before ctx_attach.
*/
void ctx_merge_init(ctx_node *n, uint16_t nx);

/*
** Merge: add parent p through extra link i, after ctx_attach (with the first
** parent, or NULL). If p is done and n is not, n becomes done with p's err
** and origin; n's effective deadline becomes the earlier of the two.
*/
int ctx_attach_extra(ctx_tree *t, ctx_node *n, uint16_t i, ctx_node *p);

/*
** Cancel n and its whole subtree with err (first cancel wins: a done node is
** left alone). A descendant whose own deadline has passed unobserved ends
** with CTX_ERR_DEADLINE as its own origin, as its timer would have ended it
** first; its subtree inherits that. Iterative: no recursion, no allocation.
** Returns 1 if n was running before the call.
*/
int ctx_cancel(ctx_tree *t, ctx_node *n, int err);

/*
** The state of n at monotonic time now: a passed deadline is noticed here
** and cancels the subtree of the node that owns it, exactly as its timer
** would have. Returns n->err.
*/
int ctx_poll(ctx_tree *t, ctx_node *n, int64_t now);

/* The node whose own deadline is n's effective one (n itself, or an
** ancestor); NULL if n has no deadline. */
ctx_node *ctx_deadline_owner(ctx_node *n);

/*
** Take n out of the tree before its memory goes (garbage collection):
** unlink it from its parents and orphan its children. Idempotent.
*/
void ctx_detach(ctx_tree *t, ctx_node *n);

/* Is n linked below some parent (needs ctx_detach before it is freed)? */
int ctx_is_linked(const ctx_node *n);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
