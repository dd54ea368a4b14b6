/*
** tw.c — hierarchical timer wheel.
**
** Accuracy contract
**   - Resolution: one tick = exactly 1 ms (TW_TICK_NS). An entry's tick is
**     its deadline rounded UP to a whole tick.
**   - Never early: tw_advance(now) fires an entry only if expires <= now,
**     compared on the exact nanosecond deadline (the partly elapsed tick
**     is checked entry by entry, see the due list).
**   - Never missed: tw_advance(now) fires every entry pending at the call
**     whose expires <= now, however far now jumps. An entry (re)armed from
**     a fire callback is not fired by the running advance even if already
**     due: it is due at once (tw_next_wakeup() <= now) and fires on the
**     next call. So each advance is finite, even with self re-arming
**     periodic entries after a long jump.
**   - Lateness: tw_next_wakeup() is never later than the earliest pending
**     deadline rounded up to a tick. If the caller calls tw_advance at that
**     time (it may be a cascade point: then again at the next one), every
**     entry fires less than one tick after its deadline, plus the caller's
**     own wake-up and processing delay. Cascading is exact: an entry in a
**     coarse level is re-inserted relative to the current time when its
**     slot comes due, so coarse levels add no slack.
**   - Range: 7 levels of 64 slots cover 64^7 ms (about 139 years) ahead of
**     the current time. A deadline further away is clamped into the last
**     top-level slot of the range and re-inserted (with its true deadline)
**     when that slot comes due; it never wraps into "fire now" and is
**     never fired early. A deadline of TW_NEVER is a valid (unreachable in
**     practice) deadline: tw_next_wakeup then saturates at TW_NEVER.
**   - Any int64_t deadline and time is accepted, negative ones included.
**
** Layout
**   Ticks are kept as uint64_t biased by TW_BIAS so that every int64_t
**   nanosecond time maps to a positive tick, in order. Let E be the cursor
**   (w->tick). An entry of tick T > E lives in level L = msb(T ^ E) / 6
**   (L < 6), slot (T >> 6L) & 63: T shares every digit above L with E and
**   its digit L is strictly greater than E's. So all entries of level L are
**   earlier than all entries of level L+1, the earliest event is the first
**   occupied slot above E's digit in the lowest non-empty level (found with
**   the occupancy bitmaps), and the cursor may jump straight to it. Level 6
**   is cyclic over blocks of 64^6 ticks: an entry whose block differs from
**   E's goes to slot (block mod 64), 1..63 blocks ahead of E's block
**   (clamped to 63). Entries whose tick is <= E sit in the due list.
**
**   Invariant (between and during calls): every slot entry's slot starts
**   after E; every due entry's tick is <= E.
*/

#include "tw.h"

#define TW_BIAS ((uint64_t)1 << 44) /* > INT64_MAX / TW_TICK_NS + 1 */
#define TW_TOP (TW_LEVELS - 1)
#define TW_TOP_SHIFT (TW_TOP * TW_LEVEL_BITS)
#define TW_MASK ((uint64_t)TW_SLOTS - 1)
#define TW_DUE ((uint32_t)TW_NSLOTS) /* e->where of due-list entries */


/*
** {======================================================
** Bit helpers
** =======================================================
*/

#if (defined(__GNUC__) || defined(__clang__)) && !defined(TW_NO_BUILTIN)

static int tw_ctz (uint64_t x) { return __builtin_ctzll(x); }
static int tw_msb (uint64_t x) { return 63 - __builtin_clzll(x); }

#else

/* index of lowest set bit; x != 0 */
static int tw_ctz (uint64_t x) {
  int n = 0;
  if ((x & 0xffffffffu) == 0) { n += 32; x >>= 32; }
  if ((x & 0xffffu) == 0) { n += 16; x >>= 16; }
  if ((x & 0xffu) == 0) { n += 8; x >>= 8; }
  if ((x & 0xfu) == 0) { n += 4; x >>= 4; }
  if ((x & 0x3u) == 0) { n += 2; x >>= 2; }
  if ((x & 0x1u) == 0) n += 1;
  return n;
}

/* index of highest set bit; x != 0 */
static int tw_msb (uint64_t x) {
  int n = 0;
  if (x >> 32) { n += 32; x >>= 32; }
  if (x >> 16) { n += 16; x >>= 16; }
  if (x >> 8) { n += 8; x >>= 8; }
  if (x >> 4) { n += 4; x >>= 4; }
  if (x >> 2) { n += 2; x >>= 2; }
  if (x >> 1) n += 1;
  return n;
}

#endif

/* }====================================================== */


/*
** {======================================================
** Time conversion
** =======================================================
*/

/* biased tick of a time: ceil(ns / TW_TICK_NS) + TW_BIAS */
static uint64_t tw_tick_of (int64_t ns) {
  int64_t q = ns / TW_TICK_NS;      /* truncates toward zero */
  if (ns % TW_TICK_NS > 0) q++;     /* round positive remainders up */
  return (uint64_t)(q + (int64_t)TW_BIAS);  /* q > -TW_BIAS: positive */
}

/* start of a biased tick in ns, saturated at TW_NEVER */
static int64_t tw_ns_of (uint64_t tick) {
  int64_t t = (int64_t)tick - (int64_t)TW_BIAS;
  if (t > INT64_MAX / TW_TICK_NS) return TW_NEVER;
  return t * TW_TICK_NS;
}

/* }====================================================== */


/*
** {======================================================
** Lists
** =======================================================
*/

static void tw_push (tw_entry **head, tw_entry *e) {
  e->next = *head;
  if (e->next != NULL) e->next->pprev = &e->next;
  e->pprev = head;
  *head = e;
}

/* unlinks a pending entry from whatever list holds it (a slot, the due
** list, or a list detached by tw_advance) and keeps the bitmaps and due_min
** exact for emptied lists; does not touch w->count */
static void tw_unlink (tw_wheel *w, tw_entry *e) {
  if (e->next != NULL) e->next->pprev = e->pprev;
  *e->pprev = e->next;
  e->next = NULL;
  e->pprev = NULL;
  if (e->where < TW_DUE) {
    if (w->slot[e->where] == NULL)
      w->occupied[e->where / TW_SLOTS] &= ~((uint64_t)1 << (e->where & TW_MASK));
  }
  else if (w->due == NULL)
    w->due_min = TW_NEVER;
}

static void tw_link_due (tw_wheel *w, tw_entry *e) {
  e->where = TW_DUE;
  tw_push(&w->due, e);
  if (e->expires < w->due_min) w->due_min = e->expires;
}

static void tw_link_slot (tw_wheel *w, tw_entry *e, int level, unsigned s) {
  e->where = (uint32_t)(level * TW_SLOTS) + s;
  tw_push(&w->slot[e->where], e);
  w->occupied[level] |= (uint64_t)1 << s;
}

/* moves list *from (non-empty or not) to *to, fixing the first back link */
static void tw_detach (tw_entry **from, tw_entry **to) {
  *to = *from;
  *from = NULL;
  if (*to != NULL) (*to)->pprev = to;
}

/* }====================================================== */


/*
** {======================================================
** Placement and search
** =======================================================
*/

/* links e (tick t) where it belongs relative to the cursor */
static void tw_place (tw_wheel *w, tw_entry *e, uint64_t t) {
  uint64_t x = t ^ w->tick;
  if (t <= w->tick)
    tw_link_due(w, e);
  else if ((x >> TW_TOP_SHIFT) == 0) {
    int level = tw_msb(x) / TW_LEVEL_BITS;
    tw_link_slot(w, e, level, (unsigned)((t >> (level * TW_LEVEL_BITS)) & TW_MASK));
  }
  else {  /* top level, cyclic; 1..63 blocks ahead, clamped */
    uint64_t cur = w->tick >> TW_TOP_SHIFT, blk = t >> TW_TOP_SHIFT;
    if (blk - cur > TW_MASK) blk = cur + TW_MASK;
    tw_link_slot(w, e, TW_TOP, (unsigned)(blk & TW_MASK));
  }
}

/* first occupied slot of a non-top level after the cursor's digit; sets
** *at to its start tick; returns the slot or -1 */
static int tw_scan_level (const tw_wheel *w, int level, uint64_t *at) {
  int shift = level * TW_LEVEL_BITS;
  int digit = (int)((w->tick >> shift) & TW_MASK);
  uint64_t later = (w->occupied[level] >> digit) >> 1;  /* slots > digit */
  int s;
  if (later == 0) return -1;
  s = digit + 1 + tw_ctz(later);
  *at = ((w->tick >> (shift + TW_LEVEL_BITS)) << (shift + TW_LEVEL_BITS))
        | ((uint64_t)s << shift);
  return s;
}

/* first occupied top-level slot, cyclically after the cursor's block */
static int tw_scan_top (const tw_wheel *w, uint64_t *at) {
  uint64_t occ = w->occupied[TW_TOP];
  uint64_t blk = (w->tick >> TW_TOP_SHIFT) + 1;
  int r = (int)(blk & TW_MASK);
  int d;  /* blocks after blk */
  if (occ == 0) return -1;
  if ((occ >> r) != 0) d = tw_ctz(occ >> r);      /* slots r..63 */
  else d = TW_SLOTS - r + tw_ctz(occ);            /* wrapped: 0..r-1 */
  *at = (blk + (uint64_t)d) << TW_TOP_SHIFT;
  return (r + d) & (int)TW_MASK;
}

/* earliest slot event: sets *at (its start tick), returns the slot index
** (level-major) or -1 if no slot is occupied */
static int tw_next_event (const tw_wheel *w, uint64_t *at) {
  int l, s;
  for (l = 0; l < TW_TOP; l++) {
    if (w->occupied[l] != 0 && (s = tw_scan_level(w, l, at)) >= 0)
      return l * TW_SLOTS + s;
  }
  s = tw_scan_top(w, at);
  return s < 0 ? -1 : TW_TOP * TW_SLOTS + s;
}

/* }====================================================== */


/*
** {======================================================
** Advancing
** =======================================================
*/

typedef void (*tw_fire_fn) (tw_entry *e, void *ud);

/* pops the first entry of a detached list */
static tw_entry *tw_pop (tw_wheel *w, tw_entry **list) {
  tw_entry *e = *list;
  if (e != NULL) tw_unlink(w, e);
  return e;
}

static void tw_fire (tw_wheel *w, tw_entry *e, tw_fire_fn fire, void *ud) {
  w->count--;
  fire(e, ud);
}

/* re-examines the due list: fires what is due by `now`, keeps the rest */
static size_t tw_run_due (tw_wheel *w, int64_t now, tw_fire_fn fire,
                          void *ud) {
  tw_entry *list, *e;
  size_t n = 0;
  tw_detach(&w->due, &list);
  w->due_min = TW_NEVER;
  while ((e = tw_pop(w, &list)) != NULL) {
    if (e->expires <= now) { tw_fire(w, e, fire, ud); n++; }
    else tw_link_due(w, e);
  }
  return n;
}

/* processes slot `idx` whose start tick is the cursor: entries of the
** cursor's tick fire (or, if in the partly elapsed last tick and not yet
** due, go to the due list); the others cascade down */
static size_t tw_run_slot (tw_wheel *w, int idx, int64_t now,
                           tw_fire_fn fire, void *ud) {
  tw_entry *list, *e;
  size_t n = 0;
  tw_detach(&w->slot[idx], &list);
  w->occupied[idx / TW_SLOTS] &= ~((uint64_t)1 << (idx & TW_MASK));
  while ((e = tw_pop(w, &list)) != NULL) {
    uint64_t t = tw_tick_of(e->expires);
    if (t <= w->tick && e->expires <= now) { tw_fire(w, e, fire, ud); n++; }
    else tw_place(w, e, t);
  }
  return n;
}

/* }====================================================== */


/*
** {======================================================
** API
** =======================================================
*/

void tw_init (tw_wheel *w, int64_t now_ns) {
  int i;
  w->now = now_ns;
  w->tick = tw_tick_of(now_ns);
  w->due_min = TW_NEVER;
  w->count = 0;
  w->due = NULL;
  for (i = 0; i < TW_LEVELS; i++) w->occupied[i] = 0;
  for (i = 0; i < TW_NSLOTS; i++) w->slot[i] = NULL;
}

void tw_entry_init (tw_entry *e) {
  e->next = NULL;
  e->pprev = NULL;
  e->expires = 0;
  e->where = 0;
}

void tw_insert (tw_wheel *w, tw_entry *e, int64_t deadline_ns) {
  if (e->pprev != NULL) tw_unlink(w, e);
  else w->count++;
  e->expires = deadline_ns;
  /* within an advance the cursor may lag `now`: test the time itself */
  if (deadline_ns <= w->now) tw_link_due(w, e);
  else tw_place(w, e, tw_tick_of(deadline_ns));
}

void tw_cancel (tw_wheel *w, tw_entry *e) {
  if (e->pprev == NULL) return;
  tw_unlink(w, e);
  w->count--;
}

int tw_pending (const tw_entry *e) {
  return e->pprev != NULL;
}

size_t tw_count (const tw_wheel *w) {
  return w->count;
}

int64_t tw_next_wakeup (const tw_wheel *w) {
  uint64_t at;
  if (w->due != NULL) return w->due_min;  /* due ticks are <= the cursor */
  if (tw_next_event(w, &at) < 0) return TW_NEVER;
  return tw_ns_of(at);
}

size_t tw_advance (tw_wheel *w, int64_t now_ns, tw_fire_fn fire, void *ud) {
  size_t n = 0;
  uint64_t target, at;
  int idx;
  if (now_ns < w->now) now_ns = w->now;
  w->now = now_ns;  /* from here on, inserts due by now_ns go to `due` */
  target = tw_tick_of(now_ns);
  if (w->due != NULL && w->due_min <= now_ns)
    n += tw_run_due(w, now_ns, fire, ud);
  while ((idx = tw_next_event(w, &at)) >= 0 && at <= target) {
    w->tick = at;
    n += tw_run_slot(w, idx, now_ns, fire, ud);
  }
  w->tick = target;  /* no slot starts at or before target: invariant holds */
  return n;
}

/* }====================================================== */


/*
** {======================================================
** Consistency check (tests)
** =======================================================
*/

/* start tick of slot s of `level` relative to the cursor, or 0 if the slot
** cannot be occupied */
static uint64_t tw_slot_start (const tw_wheel *w, int level, unsigned s) {
  int shift = level * TW_LEVEL_BITS;
  if (level < TW_TOP) {
    if (s <= ((w->tick >> shift) & TW_MASK)) return 0;
    return ((w->tick >> (shift + TW_LEVEL_BITS)) << (shift + TW_LEVEL_BITS))
           | ((uint64_t)s << shift);
  }
  else {
    uint64_t cur = w->tick >> TW_TOP_SHIFT;
    uint64_t d = (s + TW_SLOTS - (cur & TW_MASK)) & TW_MASK;
    return d == 0 ? 0 : (cur + d) << TW_TOP_SHIFT;
  }
}

/* checks one list: back links, `where`, tick ranges; adds its length */
static int tw_check_list (const tw_wheel *w, tw_entry *const *head,
                          uint32_t where, uint64_t lo, uint64_t hi,
                          size_t *n) {
  const tw_entry *e;
  tw_entry *const *pp = head;
  for (e = *head; e != NULL; pp = &e->next, e = e->next) {
    uint64_t t = tw_tick_of(e->expires);
    if (e->pprev != pp) return 10;
    if (e->where != where) return 11;
    if (t < lo || t > hi) return 12;
    if (where == TW_DUE && e->expires < w->due_min) return 13;
    (*n)++;
  }
  return 0;
}

int tw_check (const tw_wheel *w) {
  size_t n = 0;
  int level, r;
  if (w->tick < tw_tick_of(w->now)) return 1;  /* lags only inside advance */
  if (w->due == NULL && w->due_min != TW_NEVER) return 2;
  r = tw_check_list(w, &w->due, TW_DUE, 0, w->tick, &n);
  if (r) return r;
  for (level = 0; level < TW_LEVELS; level++) {
    unsigned s;
    for (s = 0; s < TW_SLOTS; s++) {
      uint32_t idx = (uint32_t)level * TW_SLOTS + s;
      uint64_t start = tw_slot_start(w, level, s), hi;
      int bit = (int)((w->occupied[level] >> s) & 1);
      if (bit != (w->slot[idx] != NULL)) return 3;
      if (w->slot[idx] == NULL) continue;
      if (start == 0 || start <= w->tick) return 4;
      /* top slots may hold clamped entries (clamped to the last slot of
         the range at their insertion, which may be nearer by now) */
      hi = level == TW_TOP ? UINT64_MAX
                           : start + ((uint64_t)1 << (level * TW_LEVEL_BITS)) - 1;
      r = tw_check_list(w, &w->slot[idx], idx, start, hi, &n);
      if (r) return r;
    }
  }
  return n == w->count ? 0 : 5;
}

/* }====================================================== */
