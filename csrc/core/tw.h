/*
** tw.h — hierarchical timer wheel (Lua-free, no malloc).
**
** Times are monotonic nanoseconds (int64_t). The wheel counts in ticks of
** exactly 1 ms; an entry's tick is its deadline rounded UP to a tick, so an
** entry is never fired before its exact deadline. See tw.c for the full
** accuracy contract.
**
** Usage: embed a tw_entry in your object, tw_entry_init() it once, then
** tw_insert()/tw_cancel() it freely. Drive the wheel with tw_advance(),
** sleeping until tw_next_wakeup() in between.
*/
#ifndef LCONTEXT_TW_H
#define LCONTEXT_TW_H

#include <stddef.h>
#include <stdint.h>

/* Internal: hidden from the module's dynamic symbol table whatever CFLAGS
** the build uses (only luaopen_lcontext_core is exported). After the
** includes, since the pragma also marks external declarations. */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define TW_NEVER INT64_MAX     /* "no deadline" / "nothing to wait for" */
#define TW_TICK_NS 1000000     /* one tick: 1 ms */
#define TW_LEVEL_BITS 6
#define TW_SLOTS 64            /* slots per level: 1 << TW_LEVEL_BITS */
#define TW_LEVELS 7            /* level n: slots of 64^n ticks */
#define TW_NSLOTS (TW_LEVELS * TW_SLOTS)

typedef struct tw_entry {
  struct tw_entry *next;  /* next entry in the same list */
  struct tw_entry **pprev;/* where the pointer to this entry is; NULL: not
                             pending (pprev != NULL <=> counted in w->count) */
  int64_t expires;        /* exact deadline, monotonic ns (valid if pending) */
  uint32_t where;         /* while pending: index of its list, level * 64 +
                             slot, or TW_NSLOTS for the due list */
} tw_entry;

typedef struct tw_wheel {
  int64_t now;            /* latest time given to tw_init/tw_advance (ns);
                             never decreases */
  uint64_t tick;          /* cursor: ticks up to and including it are
                             processed; == tick of `now` between calls */
  int64_t due_min;        /* <= min expires over `due`; TW_NEVER if empty */
  size_t count;           /* pending entries (slots + due list) */
  tw_entry *due;          /* entries whose tick <= cursor: overdue, or in the
                             current partly elapsed tick; checked by exact
                             expires at each advance */
  uint64_t occupied[TW_LEVELS]; /* bit s set <=> slot[level*64+s] != NULL */
  tw_entry *slot[TW_NSLOTS];    /* level-major slot lists */
} tw_wheel;

/* Empties the wheel and sets its time. Entries that were pending in it are
** forgotten: tw_entry_init them before reuse. */
void    tw_init(tw_wheel *w, int64_t now_ns);
void    tw_entry_init(tw_entry *e);
/* Arms e to expire at deadline_ns; re-arms it if already pending. A deadline
** <= the wheel's current time is due at once (fired by the next advance). */
void    tw_insert(tw_wheel *w, tw_entry *e, int64_t deadline_ns);
/* Disarms e; no-op if not pending. O(1). */
void    tw_cancel(tw_wheel *w, tw_entry *e);
int     tw_pending(const tw_entry *e);
size_t  tw_count(const tw_wheel *w);
/* When tw_advance should next be called: never later than the earliest
** pending deadline rounded up to a tick (it may be earlier: an internal
** cascade point, or <= now if something is overdue); TW_NEVER if empty
** (and, saturated, if the earliest deadline is in the last ms of int64). */
int64_t tw_next_wakeup(const tw_wheel *w);
/* Moves time to now_ns (an earlier time counts as the current one) and
** fires every entry that was pending at the call with expires <= now_ns,
** each unlinked before fire(e, ud) runs. Order: entries that were already
** overdue (or in the current tick) at the call first, in any order; then
** the others in deadline-tick order (any order within a tick). fire may
** insert and cancel anything; an entry armed or re-armed while the advance
** runs is not fired by it even if already due (it is due at once, for the
** next call). fire must not call tw_advance, tw_init or tw_check. Returns
** how many entries fired. */
size_t  tw_advance(tw_wheel *w, int64_t now_ns,
                   void (*fire)(tw_entry *e, void *ud), void *ud);
/* Verifies the wheel's invariants in O(count + slots), for tests: returns 0
** if consistent, else a positive code naming the broken invariant. Must not
** be called from inside fire. */
int     tw_check(const tw_wheel *w);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
