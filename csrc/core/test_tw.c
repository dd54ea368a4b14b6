/*
** test_tw.c — unit tests and a randomized model test for tw.c.
**
** Usage: test_tw [model_ops]   (default 4000000 random operations)
** Prints one final line "N passed, N failed"; exits non-zero on failure.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tw.h"

#define MS ((int64_t)1000000)
#define SEC (1000 * MS)
#define HOUR (3600 * SEC)
#define DAY (24 * HOUR)
#define YEAR (365 * DAY)

static long failed_checks;

#define CHECK(c) do { if (!(c)) { failed_checks++; \
  if (failed_checks < 50) fprintf(stderr, "%s:%d: CHECK failed: %s\n", \
                                  __FILE__, __LINE__, #c); } } while (0)


/*
** {======================================================
** Helpers
** =======================================================
*/

static uint64_t rng_next (uint64_t *s) {  /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

/* uniform in [0, n) (n > 0; slight bias is irrelevant here) */
static uint64_t rng_below (uint64_t *s, uint64_t n) {
  return rng_next(s) % n;
}

static int64_t sat_add (int64_t a, int64_t b) {
  if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
  if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
  return a + b;
}

/* a deadline rounded up to a whole tick, saturated */
static int64_t round_up (int64_t ns) {
  int64_t q = ns / MS;
  if (ns % MS > 0) q++;
  if (q > INT64_MAX / MS) return INT64_MAX;
  return q * MS;
}

/* an entry with bookkeeping; e must stay the first member */
typedef struct item {
  tw_entry e;
  int id;
  int nfired;
  int64_t fired_at;   /* wheel time of the (last) fire */
  int order;          /* sequence number of the (last) fire */
  /* actions run when it fires */
  struct item *cancel[4];
  int ncancel;
  int64_t rearm;      /* > 0: re-insert self at expires + rearm */
  struct item *arm;   /* insert this one at arm_at */
  int64_t arm_at;
} item;

typedef struct ctx {
  tw_wheel *w;
  int64_t now;        /* time given to the running advance */
  int seq;
  int64_t last_tick;  /* tick of the previous fire in this advance */
  int order_ok;
} ctx;

static void items_init (item *it, int n) {
  int i;
  memset(it, 0, sizeof(*it) * (size_t)n);
  for (i = 0; i < n; i++) { tw_entry_init(&it[i].e); it[i].id = i; }
}

static void ctx_init (ctx *c, tw_wheel *w) {
  c->w = w; c->now = 0; c->seq = 0; c->last_tick = INT64_MIN; c->order_ok = 1;
}

static void on_fire (tw_entry *e, void *ud) {
  item *it = (item *)e;
  ctx *c = (ctx *)ud;
  int64_t t = round_up(e->expires);
  int i;
  CHECK(!tw_pending(e));
  CHECK(e->expires <= c->now);       /* never early */
  if (t < c->last_tick) c->order_ok = 0;
  c->last_tick = t;
  it->nfired++;
  it->fired_at = c->now;
  it->order = c->seq++;
  for (i = 0; i < it->ncancel; i++) tw_cancel(c->w, &it->cancel[i]->e);
  if (it->rearm > 0) tw_insert(c->w, e, e->expires + it->rearm);
  if (it->arm != NULL) tw_insert(c->w, &it->arm->e, it->arm_at);
}

static size_t adv (ctx *c, int64_t now) {
  size_t n;
  c->now = now < c->w->now ? c->w->now : now;
  c->last_tick = INT64_MIN;
  n = tw_advance(c->w, now, on_fire, c);
  CHECK(tw_check(c->w) == 0);
  return n;
}

/* follows tw_next_wakeup until `it` fires or `max` steps; returns steps */
static int follow (ctx *c, item *it, int max) {
  int steps = 0;
  int before = it->nfired;
  while (it->nfired == before && steps < max) {
    int64_t nw = tw_next_wakeup(c->w);
    CHECK(nw != TW_NEVER);
    if (tw_pending(&it->e)) CHECK(nw <= round_up(it->e.expires));
    adv(c, nw);
    steps++;
  }
  return steps;
}

/* }====================================================== */


/*
** {======================================================
** Unit tests
** =======================================================
*/

static const int64_t T0 = 1234567890123LL;  /* not tick aligned */

static void test_sizes (void) {
  printf("  sizeof(tw_entry) = %u, sizeof(tw_wheel) = %u\n",
         (unsigned)sizeof(tw_entry), (unsigned)sizeof(tw_wheel));
  CHECK(sizeof(tw_entry) <= 32);
}

static void test_empty (void) {
  tw_wheel w;
  ctx c;
  tw_init(&w, T0);
  ctx_init(&c, &w);
  CHECK(tw_count(&w) == 0);
  CHECK(tw_next_wakeup(&w) == TW_NEVER);
  CHECK(adv(&c, T0 + HOUR) == 0);
  CHECK(adv(&c, INT64_MAX) == 0);
  CHECK(tw_next_wakeup(&w) == TW_NEVER);
  CHECK(tw_check(&w) == 0);
}

/* a deadline at many offsets: not fired 1 ns before, fired exactly at it */
static void test_never_early (void) {
  static const int64_t offs[] = {
    1, 999999, MS, MS + 1, 3 * MS / 2, 63 * MS + 1, 64 * MS, 64 * MS + 1,
    4095 * MS + 7, 4096 * MS, 4097 * MS, 262144 * MS + 5, 5 * SEC,
    HOUR + 3, DAY - 1, 30 * DAY + 11, 3 * YEAR + 17
  };
  static const int64_t bases[] = { 0, T0, 1000 * SEC, 64 * MS - 1, -7 * SEC };
  size_t i, b;
  for (b = 0; b < sizeof(bases) / sizeof(bases[0]); b++) {
    for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
      tw_wheel w;
      ctx c;
      item it;
      int64_t dl = bases[b] + offs[i];
      tw_init(&w, bases[b]);
      ctx_init(&c, &w);
      items_init(&it, 1);
      tw_insert(&w, &it.e, dl);
      CHECK(tw_pending(&it.e) && tw_count(&w) == 1);
      CHECK(tw_next_wakeup(&w) <= round_up(dl));
      CHECK(tw_next_wakeup(&w) > bases[b]);
      if (offs[i] < 10 * SEC) {   /* creep up in odd steps */
        int64_t t;
        for (t = bases[b]; t < dl - 1; t += MS / 3 + 17) adv(&c, t);
      }
      adv(&c, dl - 1);
      CHECK(it.nfired == 0 && tw_pending(&it.e));
      CHECK(adv(&c, dl) == 1);
      CHECK(it.nfired == 1 && it.fired_at == dl && !tw_pending(&it.e));
      CHECK(tw_count(&w) == 0 && tw_next_wakeup(&w) == TW_NEVER);
    }
  }
}

static void test_one_ms (void) {
  tw_wheel w;
  ctx c;
  item it;
  int64_t base = 5000 * MS;     /* aligned */
  tw_init(&w, base);
  ctx_init(&c, &w);
  items_init(&it, 1);
  tw_insert(&w, &it.e, base + MS);
  CHECK(tw_next_wakeup(&w) == base + MS);
  adv(&c, base + MS - 1);
  CHECK(it.nfired == 0);
  adv(&c, base + MS);
  CHECK(it.nfired == 1);
  /* unaligned: 1 ms from T0 is due at T0 + 1 ms, woken at the tick after */
  tw_init(&w, T0);
  ctx_init(&c, &w);
  tw_insert(&w, &it.e, T0 + MS);
  CHECK(tw_next_wakeup(&w) == round_up(T0 + MS));
  CHECK(follow(&c, &it, 10) == 1);
  CHECK(it.nfired == 2 && it.fired_at - (T0 + MS) < MS);
}

static void test_multi_year (void) {
  static const int64_t offs[] = {
    3 * YEAR + 123457, 10 * YEAR + 1, 150 * YEAR + 99, 250 * YEAR + 5
  };
  size_t i;
  for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
    tw_wheel w;
    ctx c;
    item it;
    int64_t dl = T0 + offs[i], t;
    int steps;
    tw_init(&w, T0);
    ctx_init(&c, &w);
    items_init(&it, 1);
    tw_insert(&w, &it.e, dl);
    /* big strides, never early */
    for (t = T0; t < dl - 40 * DAY; t += 37 * DAY) adv(&c, t);
    CHECK(it.nfired == 0);
    /* then follow the wheel's wake-ups: bounded number of cascade points */
    steps = follow(&c, &it, 200);
    CHECK(it.nfired == 1);
    CHECK(it.fired_at >= dl && it.fired_at - dl < MS);
    CHECK(steps <= 10);
    /* from scratch, only following wake-ups */
    tw_init(&w, T0);
    ctx_init(&c, &w);
    tw_insert(&w, &it.e, dl);
    steps = follow(&c, &it, 1000);
    CHECK(it.nfired == 2 && it.fired_at >= dl && it.fired_at - dl < MS);
    CHECK(steps <= 7 + (int)(offs[i] / (((int64_t)1 << 36) * MS)) + 1);
  }
}

/* beyond the wheel's range, and TW_NEVER, are clamped, never wrapped */
static void test_clamp (void) {
  tw_wheel w;
  ctx c;
  item it[3];
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, 3);
  tw_insert(&w, &it[0].e, TW_NEVER);
  tw_insert(&w, &it[1].e, INT64_MAX - 1);
  tw_insert(&w, &it[2].e, T0 + 200 * YEAR);
  CHECK(tw_next_wakeup(&w) > T0 + 100 * YEAR);
  adv(&c, T0 + 1);
  adv(&c, T0 + HOUR);
  adv(&c, T0 + 139 * YEAR);
  CHECK(it[0].nfired + it[1].nfired + it[2].nfired == 0);
  adv(&c, T0 + 200 * YEAR - 1);
  CHECK(it[2].nfired == 0);
  adv(&c, T0 + 200 * YEAR);
  CHECK(it[2].nfired == 1);
  adv(&c, INT64_MAX - 2 * MS);
  CHECK(it[0].nfired == 0 && it[1].nfired == 0 && tw_count(&w) == 2);
  CHECK(tw_next_wakeup(&w) == TW_NEVER);   /* saturated */
  adv(&c, INT64_MAX - 1);
  CHECK(it[0].nfired == 0 && it[1].nfired == 1);
  adv(&c, INT64_MAX);
  CHECK(it[0].nfired == 1 && tw_count(&w) == 0);
  /* a wheel living near the end of time */
  tw_init(&w, INT64_MAX - 5 * SEC);
  ctx_init(&c, &w);
  tw_insert(&w, &it[0].e, INT64_MAX - 2 * SEC);
  tw_insert(&w, &it[1].e, INT64_MAX);
  adv(&c, INT64_MAX - 2 * SEC - 1);
  CHECK(it[0].nfired == 1);
  adv(&c, INT64_MAX - 2 * SEC);
  CHECK(it[0].nfired == 2 && it[1].nfired == 1);
  adv(&c, INT64_MAX);
  CHECK(it[1].nfired == 2);
}

static void test_cancel (void) {
  static const int64_t offs[] = {
    0, MS / 2, MS, 50 * MS, 64 * MS, 5 * SEC, HOUR, 40 * DAY, 5 * YEAR,
    250 * YEAR, INT64_MAX, -SEC
  };
  tw_wheel w;
  ctx c;
  item it[16];
  size_t i, n = sizeof(offs) / sizeof(offs[0]);
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, 16);
  tw_cancel(&w, &it[15].e);   /* never inserted */
  CHECK(!tw_pending(&it[15].e) && tw_count(&w) == 0);
  for (i = 0; i < n; i++) tw_insert(&w, &it[i].e, sat_add(T0, offs[i]));
  CHECK(tw_count(&w) == n && tw_check(&w) == 0);
  for (i = 0; i < n; i++) {
    tw_cancel(&w, &it[i].e);
    tw_cancel(&w, &it[i].e);  /* idempotent */
    CHECK(!tw_pending(&it[i].e));
    CHECK(tw_count(&w) == n - i - 1);
    CHECK(tw_check(&w) == 0);
  }
  CHECK(tw_next_wakeup(&w) == TW_NEVER);
  CHECK(adv(&c, INT64_MAX) == 0);
  for (i = 0; i < n; i++) CHECK(it[i].nfired == 0);
}

static void test_cancel_in_fire (void) {
  tw_wheel w;
  ctx c;
  item it[6];
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, 6);
  /* 0 fires first and cancels entries due later in the same advance,
     in the same tick, in a coarse level, and one not due at all */
  it[0].cancel[0] = &it[2]; it[0].cancel[1] = &it[3];
  it[0].cancel[2] = &it[4]; it[0].ncancel = 3;
  tw_insert(&w, &it[0].e, T0 + 5 * MS);
  tw_insert(&w, &it[1].e, T0 + 5 * MS);
  tw_insert(&w, &it[2].e, T0 + 300 * MS);
  tw_insert(&w, &it[3].e, T0 + 10 * SEC);
  tw_insert(&w, &it[4].e, T0 + 2 * HOUR);
  tw_insert(&w, &it[5].e, T0 + 10 * SEC);
  CHECK(adv(&c, T0 + HOUR) == 3);
  CHECK(it[0].nfired == 1 && it[1].nfired == 1 && it[5].nfired == 1);
  CHECK(it[2].nfired == 0 && it[3].nfired == 0 && it[4].nfired == 0);
  CHECK(tw_count(&w) == 0);
  /* two entries in the same tick cancelling each other: exactly one runs */
  items_init(it, 2);
  it[0].cancel[0] = &it[1]; it[0].ncancel = 1;
  it[1].cancel[0] = &it[0]; it[1].ncancel = 1;
  tw_insert(&w, &it[0].e, T0 + HOUR + 7 * MS);
  tw_insert(&w, &it[1].e, T0 + HOUR + 7 * MS + 10);
  CHECK(adv(&c, T0 + HOUR + 10 * MS) == 1);
  CHECK(it[0].nfired + it[1].nfired == 1 && tw_count(&w) == 0);
  /* an entry cancelling itself (already unlinked): harmless */
  items_init(it, 1);
  it[0].cancel[0] = &it[0]; it[0].ncancel = 1;
  tw_insert(&w, &it[0].e, T0 + HOUR + 20 * MS);
  CHECK(adv(&c, T0 + HOUR + 20 * MS) == 1 && tw_count(&w) == 0);
}

static void test_reinsert_in_fire (void) {
  tw_wheel w;
  ctx c;
  item it[3];
  int64_t base = 1000 * SEC, t;
  tw_init(&w, base);
  ctx_init(&c, &w);
  items_init(it, 3);
  /* periodic 10 ms, driven tick by tick: exact */
  it[0].rearm = 10 * MS;
  tw_insert(&w, &it[0].e, base + 10 * MS);
  for (t = base; t <= base + SEC; t += MS) {
    adv(&c, t);
    CHECK(it[0].nfired == (int)((t - base) / (10 * MS)));
  }
  CHECK(it[0].fired_at == base + SEC && tw_pending(&it[0].e));
  /* after a big jump it fires once per advance (no livelock): the re-armed
     entry is due at once and fires on the next call */
  CHECK(adv(&c, base + HOUR) == 1);
  CHECK(tw_pending(&it[0].e) && tw_next_wakeup(&w) <= base + HOUR);
  CHECK(adv(&c, base + HOUR) == 1);
  CHECK(adv(&c, base + HOUR) == 1);
  CHECK(it[0].nfired == 103);
  tw_cancel(&w, &it[0].e);
  /* re-armed into the future: fires later, normally */
  base += HOUR;
  it[0].rearm = 5 * SEC;
  tw_insert(&w, &it[0].e, base + 3 * MS);
  CHECK(adv(&c, base + 3 * MS) == 1);
  CHECK(tw_pending(&it[0].e) && it[0].e.expires == base + 5003 * MS);
  CHECK(follow(&c, &it[0], 20) >= 1 && it[0].fired_at == base + 5003 * MS);
  tw_cancel(&w, &it[0].e);
  /* fire of 1 re-arms 2, which was due in the same advance: 2 moves */
  it[0].rearm = 0;
  it[1].arm = &it[2];
  it[1].arm_at = base + 7 * SEC;
  tw_insert(&w, &it[1].e, base + 6 * SEC);
  tw_insert(&w, &it[2].e, base + 6 * SEC + 500 * MS);
  CHECK(adv(&c, base + 6800 * MS) == 1);
  CHECK(it[2].nfired == 0 && tw_pending(&it[2].e));
  adv(&c, base + 7 * SEC - 1);
  CHECK(it[2].nfired == 0);
  adv(&c, base + 7 * SEC);
  CHECK(it[2].nfired == 1);
  /* re-arming a pending entry replaces its deadline */
  tw_insert(&w, &it[0].e, base + 100 * SEC);
  tw_insert(&w, &it[0].e, base + 50 * SEC);
  CHECK(tw_count(&w) == 1);
  tw_insert(&w, &it[0].e, base + 80 * SEC);
  CHECK(it[0].nfired == 105);
  adv(&c, base + 79 * SEC);
  CHECK(it[0].nfired == 105);
  adv(&c, base + 80 * SEC);
  CHECK(it[0].nfired == 106 && tw_count(&w) == 0);
}

static int cmp_i64 (const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* many entries, one huge advance: all fire, in tick order */
static void test_big_jump (void) {
  enum { N = 100000 };
  static item it[N];
  tw_wheel w;
  ctx c;
  uint64_t rs = 42;
  int i, ok = 1;
  clock_t t0;
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, N);
  for (i = 0; i < N; i++)
    tw_insert(&w, &it[i].e, T0 + 1 + (int64_t)rng_below(&rs, HOUR));
  CHECK(tw_check(&w) == 0);
  t0 = clock();
  CHECK(adv(&c, T0 + HOUR) == N);
  printf("  advance over 1 h with %d timers: %.1f ms\n", N,
         (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC);
  CHECK(c.order_ok && tw_count(&w) == 0);
  for (i = 0; i < N; i++) if (it[i].nfired != 1) ok = 0;
  CHECK(ok);
  /* idle wheel with a few far timers: a jump costs per occupied slot */
  t0 = clock();
  for (i = 0; i < 5; i++) tw_insert(&w, &it[i].e, w.now + (i + 1) * DAY);
  for (i = 0; i < 100000 && tw_count(&w) > 0; i++) adv(&c, w.now + HOUR);
  CHECK(tw_count(&w) == 0 && i == 5 * 24);
  printf("  120 one-hour jumps with 5 timers: %.3f ms\n",
         (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC);
}

/* adds d to dl[*n] unless a deadline of the same tick is there */
static void add_distinct (int64_t *dl, int *n, int64_t d) {
  int i;
  for (i = 0; i < *n; i++) if (round_up(dl[i]) == round_up(d)) return;
  dl[(*n)++] = d;
}

/* deadlines on every level boundary, shuffled: fire sorted */
static void test_order_levels (void) {
  enum { N = 64 };
  item it[N];
  int64_t dl[N], sorted[N];
  tw_wheel w;
  ctx c;
  uint64_t rs = 7;
  int i, j, n = 0, ok = 1;
  int64_t base = 64 * 64 * MS * 1000;   /* aligned to several levels */
  for (i = 0; i < 7 && n < N - 4; i++) {
    int64_t g = MS;
    for (j = 0; j < i; j++) g *= 64;
    add_distinct(dl, &n, base + g - MS);
    add_distinct(dl, &n, base + g);
    add_distinct(dl, &n, base + g + 1);
    add_distinct(dl, &n, base + 63 * g + 3);
  }
  while (n < N) add_distinct(dl, &n, base + 1 + (int64_t)rng_below(&rs, 200 * YEAR));
  for (i = N - 1; i > 0; i--) {   /* shuffle */
    int64_t t; j = (int)rng_below(&rs, (uint64_t)i + 1);
    t = dl[i]; dl[i] = dl[j]; dl[j] = t;
  }
  tw_init(&w, base);
  ctx_init(&c, &w);
  items_init(it, N);
  for (i = 0; i < N; i++) tw_insert(&w, &it[i].e, dl[i]);
  memcpy(sorted, dl, sizeof(dl));
  qsort(sorted, N, sizeof(int64_t), cmp_i64);
  for (i = 1; i < N; i++) CHECK(round_up(sorted[i]) > round_up(sorted[i-1]));
  CHECK(adv(&c, INT64_MAX) == N);
  CHECK(c.order_ok);
  for (i = 0; i < N; i++)
    if (sorted[it[i].order] != dl[i]) ok = 0;
  CHECK(ok);
  /* the same, following tw_next_wakeup: each fires < 1 tick late */
  tw_init(&w, base);
  ctx_init(&c, &w);
  items_init(it, N);
  for (i = 0; i < N; i++) tw_insert(&w, &it[i].e, dl[i]);
  for (i = 0; i < 100 * N && tw_count(&w) > 0; i++)
    adv(&c, tw_next_wakeup(&w));
  CHECK(tw_count(&w) == 0);
  for (i = 0; i < N; i++) {
    if (sorted[it[i].order] != dl[i]) ok = 0;
    if (it[i].fired_at < dl[i] || it[i].fired_at - dl[i] >= MS) ok = 0;
  }
  CHECK(ok);
}

/* tw_next_wakeup is never later than the earliest rounded-up deadline */
static void test_next_wakeup (void) {
  enum { N = 500 };
  static item it[N];
  tw_wheel w;
  ctx c;
  uint64_t rs = 99;
  int round, i;
  for (round = 0; round < 200; round++) {
    int64_t base = (int64_t)rng_below(&rs, 1000 * DAY) - 10 * DAY;
    int n = 1 + (int)rng_below(&rs, N);
    int64_t mn = TW_NEVER;
    tw_init(&w, base);
    ctx_init(&c, &w);
    items_init(it, n);
    for (i = 0; i < n; i++) {
      int64_t span = (int64_t)1 << rng_below(&rs, 62);
      int64_t d = sat_add(base, (int64_t)rng_below(&rs, (uint64_t)span) + 1);
      tw_insert(&w, &it[i].e, d);
      if (round_up(d) < mn) mn = round_up(d);
      CHECK(tw_next_wakeup(&w) <= mn);
    }
    /* cancel half, then follow wake-ups for a while */
    for (i = 0; i < n; i += 2) tw_cancel(&w, &it[i].e);
    for (i = 0; i < 300 && tw_count(&w) > 0; i++) {
      int k;
      int64_t nw = tw_next_wakeup(&w);
      mn = TW_NEVER;
      for (k = 0; k < n; k++)
        if (tw_pending(&it[k].e) && round_up(it[k].e.expires) < mn)
          mn = round_up(it[k].e.expires);
      CHECK(nw <= mn);
      CHECK(nw > w.now);  /* nothing overdue here */
      adv(&c, nw);
    }
  }
}

/* deadline inside the tick right before a level boundary, partial ticks */
static void test_partial_tick (void) {
  static const int64_t rows[] = { 64 * MS, 4096 * MS, 262144 * MS, 7 * MS };
  size_t r;
  for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
    tw_wheel w;
    ctx c;
    item it[3];
    int64_t b = rows[r] * 1000;   /* next tick boundary at b */
    tw_init(&w, b - MS + 100);    /* in the tick that ends at b */
    ctx_init(&c, &w);
    items_init(it, 3);
    tw_insert(&w, &it[0].e, b - 300000);
    tw_insert(&w, &it[1].e, b);
    tw_insert(&w, &it[2].e, b + 1);
    CHECK(tw_next_wakeup(&w) <= b - 300000);
    adv(&c, b - 300001);
    CHECK(it[0].nfired == 0);
    adv(&c, b - 300000);
    CHECK(it[0].nfired == 1 && it[1].nfired == 0);
    CHECK(tw_next_wakeup(&w) <= b);
    adv(&c, b - 1);
    CHECK(it[1].nfired == 0);
    adv(&c, b);
    CHECK(it[1].nfired == 1 && it[2].nfired == 0);
    CHECK(tw_next_wakeup(&w) == b + MS);
    adv(&c, b + MS - 1);
    CHECK(it[2].nfired == 1);
  }
}

static void test_time_backwards (void) {
  tw_wheel w;
  ctx c;
  item it[2];
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, 2);
  adv(&c, T0 + 10 * MS);
  tw_insert(&w, &it[0].e, T0 + 5 * MS);    /* already past */
  tw_insert(&w, &it[1].e, T0 + 11 * MS);
  CHECK(tw_next_wakeup(&w) <= T0 + 10 * MS);
  CHECK(adv(&c, T0) == 1);                 /* T0 counts as T0 + 10 ms */
  CHECK(it[0].nfired == 1 && it[0].fired_at == T0 + 10 * MS);
  CHECK(w.now == T0 + 10 * MS);
  CHECK(adv(&c, INT64_MIN) == 0 && it[1].nfired == 0);
  CHECK(adv(&c, T0 + 11 * MS) == 1);
}

static void test_insert_past (void) {
  tw_wheel w;
  ctx c;
  item it[2];
  tw_init(&w, T0);
  ctx_init(&c, &w);
  items_init(it, 2);
  tw_insert(&w, &it[0].e, T0 - 5 * SEC);
  tw_insert(&w, &it[1].e, INT64_MIN);
  CHECK(tw_next_wakeup(&w) <= T0);
  CHECK(adv(&c, T0) == 2 && tw_count(&w) == 0);
  tw_insert(&w, &it[0].e, T0);             /* exactly now: due */
  CHECK(tw_next_wakeup(&w) <= T0);
  CHECK(adv(&c, T0) == 1);
}

static void test_negative_times (void) {
  tw_wheel w;
  ctx c;
  item it[3];
  int64_t base = -5 * SEC - 123;
  tw_init(&w, base);
  ctx_init(&c, &w);
  items_init(it, 3);
  tw_insert(&w, &it[0].e, base + MS / 2);
  tw_insert(&w, &it[1].e, -1);
  tw_insert(&w, &it[2].e, 1);
  adv(&c, base + MS / 2 - 1);
  CHECK(it[0].nfired == 0);
  adv(&c, base + MS / 2);
  CHECK(it[0].nfired == 1);
  adv(&c, -2);
  CHECK(it[1].nfired == 0);
  adv(&c, 0);
  CHECK(it[1].nfired == 1 && it[2].nfired == 0);
  adv(&c, 1);
  CHECK(it[2].nfired == 1);
  tw_init(&w, INT64_MIN);
  tw_insert(&w, &it[0].e, INT64_MIN + 1);
  tw_insert(&w, &it[1].e, 0);
  adv(&c, INT64_MIN + 1);
  CHECK(it[0].nfired == 2 && it[1].nfired == 1);
  CHECK(follow(&c, &it[1], 20) >= 1 && it[1].nfired == 2);
  CHECK(it[1].fired_at == 0);
}

/* an event loop running 5 s timeouts, woken at tw_next_wakeup or earlier
** by unrelated events: lateness < 1 tick always */
static void test_lateness_5s (void) {
  enum { N = 20000 };
  static item it[N];
  tw_wheel w;
  ctx c;
  uint64_t rs = 5;
  int64_t now = T0, end = T0 + 20 * SEC, worst = 0;
  int armed = 0, i, ok = 1;
  long loops = 0;
  tw_init(&w, now);
  ctx_init(&c, &w);
  items_init(it, N);
  while ((now < end || tw_count(&w) > 0) && ++loops < 10000000) {
    int64_t nw;
    if (armed < N && now < end) {   /* arm a few, cancel a few */
      int k = (int)rng_below(&rs, 4);
      for (i = 0; i < k && armed < N; i++, armed++)
        tw_insert(&w, &it[armed].e, now + 5 * SEC);
      if (armed > 0) tw_cancel(&w, &it[rng_below(&rs, (uint64_t)armed)].e);
    }
    nw = tw_next_wakeup(&w);
    if (rng_below(&rs, 3) == 0)      /* an unrelated wake-up */
      now += (int64_t)rng_below(&rs, 2 * MS);
    else if (nw != TW_NEVER)
      now = nw > now ? nw : now;
    else
      now += MS;
    if (now > nw) now = nw > c.w->now ? nw : c.w->now;  /* don't oversleep */
    adv(&c, now);
  }
  for (i = 0; i < N; i++) {
    if (it[i].nfired == 0) continue;
    if (it[i].fired_at - it[i].e.expires > worst)
      worst = it[i].fired_at - it[i].e.expires;
    if (it[i].fired_at < it[i].e.expires) ok = 0;
  }
  printf("  5 s timers: worst lateness %lld ns\n", (long long)worst);
  CHECK(ok && worst < MS && tw_count(&w) == 0);
}

/* }====================================================== */


/*
** {======================================================
** Randomized model test
** =======================================================
*/

#define MAXK 512

typedef struct model {
  tw_wheel w;
  item it[MAXK];
  int k;               /* entries in use this phase */
  int64_t dl[MAXK];    /* model deadline */
  unsigned char pend[MAXK], due[MAXK];
  size_t npend;
  int64_t now;         /* model time */
  int64_t adv_now;     /* time of the running advance */
  int64_t last_tick;
  int64_t due_tick;    /* ns start of the cursor tick when advance began */
  int wheel_phase;     /* fired from the slots yet (due list is first) */
  size_t nfired;
  int cb_ops;          /* percent chance that a fire performs ops */
  uint64_t rs;
  long fails;
} model;

static int64_t m_delta (model *m) {
  uint64_t r = rng_below(&m->rs, 100);
  if (r < 45) return (int64_t)rng_below(&m->rs, 72 * MS) - 2 * MS;
  if (r < 65) return (int64_t)rng_below(&m->rs, 5 * SEC);
  if (r < 75) {  /* land on / next to a tick boundary */
    int64_t d = (int64_t)rng_below(&m->rs, 300) * MS - (m->now % MS);
    return d + (int64_t)rng_below(&m->rs, 3) - 1;
  }
  if (r < 85) return (int64_t)rng_below(&m->rs, (uint64_t)1 << (30 + rng_below(&m->rs, 33)));
  if (r < 90) return INT64_MAX;          /* saturates: huge / TW_NEVER */
  if (r < 95) return 100 * YEAR + (int64_t)rng_below(&m->rs, 180 * YEAR);
  return -(int64_t)rng_below(&m->rs, 10 * SEC);
}

static void m_insert (model *m, int j, int64_t base) {
  int64_t d = sat_add(base, m_delta(m));
  tw_insert(&m->w, &m->it[j].e, d);
  if (!m->pend[j]) m->npend++;
  m->pend[j] = 1;
  m->due[j] = 0;   /* (re)armed: not part of a running advance */
  m->dl[j] = d;
}

static void m_cancel (model *m, int j) {
  tw_cancel(&m->w, &m->it[j].e);
  if (m->pend[j]) m->npend--;
  m->pend[j] = 0;
  m->due[j] = 0;
}

#define MCHECK(m, c) do { if (!(c)) { (m)->fails++; CHECK(c); } } while (0)

static void m_fire (tw_entry *e, void *ud) {
  model *m = (model *)ud;
  int j = ((item *)e)->id;
  int64_t t = round_up(e->expires);
  MCHECK(m, m->due[j] && m->pend[j] && e->expires == m->dl[j]);
  MCHECK(m, m->dl[j] <= m->adv_now && !tw_pending(e));
  /* entries already overdue at the call (tick <= cursor) fire first, in
     any order; then the rest in tick order */
  if (t <= m->due_tick) MCHECK(m, !m->wheel_phase);
  else {
    MCHECK(m, t >= m->last_tick);
    m->last_tick = t;
    m->wheel_phase = 1;
  }
  if (m->pend[j]) m->npend--;
  m->pend[j] = 0;
  m->due[j] = 0;
  m->nfired++;
  while (rng_below(&m->rs, 100) < (uint64_t)m->cb_ops) {
    int x = (int)rng_below(&m->rs, (uint64_t)m->k);
    if (rng_below(&m->rs, 2)) m_insert(m, x, m->adv_now);
    else m_cancel(m, x);
  }
}

static void m_advance (model *m, int64_t to) {
  size_t n, expect = 0;
  int i;
  m->adv_now = to < m->now ? m->now : to;
  for (i = 0; i < m->k; i++) {
    m->due[i] = m->pend[i] && m->dl[i] <= m->adv_now;
    expect += m->due[i];
  }
  m->last_tick = INT64_MIN;
  m->due_tick = round_up(m->now);
  m->wheel_phase = 0;
  m->nfired = 0;
  n = tw_advance(&m->w, to, m_fire, m);
  m->now = m->adv_now;
  MCHECK(m, n == m->nfired && n <= expect);
  for (i = 0; i < m->k; i++) MCHECK(m, !m->due[i]);  /* all due fired */
}

static int64_t m_step (model *m) {
  uint64_t r = rng_below(&m->rs, 100);
  if (r < 55) return (int64_t)rng_below(&m->rs, 2 * MS);
  if (r < 75) return (int64_t)rng_below(&m->rs, 100 * MS);
  if (r < 87) {  /* like an event loop: to the next wake-up */
    int64_t nw = tw_next_wakeup(&m->w);
    return nw == TW_NEVER ? MS : nw - m->now;
  }
  if (r < 93) return (int64_t)rng_below(&m->rs, 10 * SEC);
  if (r < 96) return -(int64_t)rng_below(&m->rs, SEC);
  if (r < 99) return (int64_t)rng_below(&m->rs, 3 * DAY);
  return (int64_t)rng_below(&m->rs, 5 * YEAR);
}

static void m_check_state (model *m) {
  int i;
  int64_t mn = TW_NEVER, nw = tw_next_wakeup(&m->w);
  for (i = 0; i < m->k; i++) {
    MCHECK(m, tw_pending(&m->it[i].e) == m->pend[i]);
    if (m->pend[i] && round_up(m->dl[i]) < mn) mn = round_up(m->dl[i]);
  }
  MCHECK(m, tw_count(&m->w) == m->npend);
  MCHECK(m, nw <= mn);
  if (m->npend == 0) MCHECK(m, nw == TW_NEVER);
}

/* one phase: fresh wheel, random size and start time; returns ops done */
static long m_phase (model *m, long ops) {
  static const int sizes[] = { 1, 3, 16, 64, 256, MAXK };
  long done;
  int i;
  m->k = sizes[rng_below(&m->rs, sizeof(sizes) / sizeof(sizes[0]))];
  m->cb_ops = (int)rng_below(&m->rs, 4) * 20;
  m->now = (int64_t)rng_below(&m->rs, 100 * YEAR) - 2 * YEAR;
  tw_init(&m->w, m->now);
  items_init(m->it, m->k);
  for (i = 0; i < m->k; i++) { m->pend[i] = 0; m->due[i] = 0; }
  m->npend = 0;
  for (done = 0; done < ops && m->now < 150 * YEAR; done++) {
    uint64_t r = rng_below(&m->rs, 100);
    int j = (int)rng_below(&m->rs, (uint64_t)m->k);
    if (r < 40) m_insert(m, j, m->now);
    else if (r < 60) m_cancel(m, j);
    else m_advance(m, sat_add(m->now, m_step(m)));
    if ((done & 15) == 0) m_check_state(m);
    if ((done & 1023) == 0) MCHECK(m, tw_check(&m->w) == 0);
  }
  m_check_state(m);
  MCHECK(m, tw_check(&m->w) == 0);
  /* nothing lost: the end of time fires everything still pending */
  m->cb_ops = 0;
  m_advance(m, INT64_MAX);
  MCHECK(m, tw_count(&m->w) == 0 && m->npend == 0);
  return done + 1;
}

static long model_ops = 4000000;

static void test_model (void) {
  static model m;
  long done = 0;
  int phases = 0;
  m.rs = 20240601;
  m.fails = 0;
  while (done < model_ops && m.fails == 0) {
    done += m_phase(&m, 1 + (long)rng_below(&m.rs, 200000));
    phases++;
  }
  printf("  model: %ld ops in %d phases\n", done, phases);
}

/* }====================================================== */


static int passed, failed;

static void run (const char *name, void (*fn) (void)) {
  long before = failed_checks;
  clock_t t0 = clock();
  fn();
  if (failed_checks == before) passed++;
  else { failed++; printf("FAIL %s\n", name); }
  printf("%-24s %s (%.2f s)\n", name, failed_checks == before ? "ok" : "FAILED",
         (double)(clock() - t0) / CLOCKS_PER_SEC);
}

int main (int argc, char **argv) {
  if (argc > 1) model_ops = atol(argv[1]);
  run("sizes", test_sizes);
  run("empty", test_empty);
  run("never_early", test_never_early);
  run("one_ms", test_one_ms);
  run("multi_year", test_multi_year);
  run("clamp", test_clamp);
  run("cancel", test_cancel);
  run("cancel_in_fire", test_cancel_in_fire);
  run("reinsert_in_fire", test_reinsert_in_fire);
  run("big_jump", test_big_jump);
  run("order_levels", test_order_levels);
  run("next_wakeup", test_next_wakeup);
  run("partial_tick", test_partial_tick);
  run("time_backwards", test_time_backwards);
  run("insert_past", test_insert_past);
  run("negative_times", test_negative_times);
  run("lateness_5s", test_lateness_5s);
  run("model", test_model);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
