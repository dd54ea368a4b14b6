/*
** fuzz_tw.c — libFuzzer target for tw.c, checked against a reference model.
**
** The input is a program: each op byte selects insert / cancel / advance /
** callback behaviour / state check / re-init, followed by its operands.
** Running out of bytes reads zeros. Any divergence from the model aborts.
**
**   libFuzzer:  clang -fsanitize=fuzzer,address,undefined fuzz_tw.c tw.c
**   standalone: cc -DTW_FUZZ_STANDALONE fuzz_tw.c tw.c
**               ./fuzz_tw SECONDS [SEED]   random inputs for SECONDS
**               ./fuzz_tw FILE...          replay inputs (e.g. crashes)
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tw.h"

#define MS ((int64_t)1000000)
#define SEC (1000 * MS)
#define NE 32          /* entries */

typedef struct fz_item {
  tw_entry e;          /* first member */
  int id;
} fz_item;

typedef struct fz {
  const uint8_t *p, *end;   /* remaining input */
  tw_wheel w;
  fz_item it[NE];
  int64_t dl[NE];
  uint8_t pend[NE], due[NE];
  size_t npend;
  int64_t now;              /* model time */
  int64_t adv_now;          /* time of the running advance */
  int64_t due_tick, last_tick;
  int wheel_phase;
  size_t nfired;
  int cb_ops;               /* 0..3: ops a fire may perform */
} fz;

#define FZ_ASSERT(c) do { if (!(c)) { \
  fprintf(stderr, "fuzz_tw.c:%d: assertion failed: %s\n", __LINE__, #c); \
  abort(); } } while (0)


/*
** {======================================================
** Input and arithmetic
** =======================================================
*/

static uint8_t get8 (fz *f) {
  return f->p < f->end ? *f->p++ : 0;
}

static uint64_t get64 (fz *f) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++) v = (v << 8) | get8(f);
  return v;
}

static int64_t sat_add (int64_t a, int64_t b) {
  if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
  if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
  return a + b;
}

static int64_t round_up (int64_t ns) {
  int64_t q = ns / MS;
  if (ns % MS > 0) q++;
  if (q > INT64_MAX / MS) return INT64_MAX;
  return q * MS;
}

/* a non-negative value below 2^bits (bits in 1..62) */
static int64_t below_pow2 (uint64_t raw, unsigned bits) {
  return (int64_t)(raw & (((uint64_t)1 << bits) - 1));
}

/* }====================================================== */


/*
** {======================================================
** Model operations
** =======================================================
*/

static int64_t fz_deadline (fz *f, int64_t base) {
  uint8_t mode = get8(f);
  uint64_t raw = get64(f);
  switch (mode % 9) {
    case 0: return sat_add(base, (int64_t)(raw % (2 * MS)) - MS / 2);
    case 1: return sat_add(base, (int64_t)(raw % (100 * MS)));
    case 2: return sat_add(base, (int64_t)(raw % (10 * SEC)));
    case 3: {  /* on a tick boundary, +-1 ns */
      int64_t b = round_up(base);
      if (b > INT64_MAX - 400 * MS) return INT64_MAX;
      return b + (int64_t)(raw % 300) * MS + (int64_t)((raw >> 16) % 3) - 1;
    }
    case 4: return sat_add(base, below_pow2(raw, 1 + (unsigned)(raw >> 58) % 62));
    case 5: return TW_NEVER;
    case 6: return (int64_t)raw;       /* anywhere, past or future */
    case 7: return sat_add(base, -(int64_t)(raw % (10 * SEC)));
    default: return sat_add(base, below_pow2(raw, 62));
  }
}

static void fz_insert (fz *f, int j, int64_t base) {
  int64_t d = fz_deadline(f, base);
  tw_insert(&f->w, &f->it[j].e, d);
  if (!f->pend[j]) f->npend++;
  f->pend[j] = 1;
  f->due[j] = 0;
  f->dl[j] = d;
}

static void fz_cancel (fz *f, int j) {
  tw_cancel(&f->w, &f->it[j].e);
  if (f->pend[j]) f->npend--;
  f->pend[j] = 0;
  f->due[j] = 0;
}

static void fz_fire (tw_entry *e, void *ud) {
  fz *f = (fz *)ud;
  int j = ((fz_item *)e)->id, k;
  int64_t t = round_up(e->expires);
  FZ_ASSERT(j >= 0 && j < NE && &f->it[j].e == e);
  FZ_ASSERT(f->due[j] && f->pend[j] && e->expires == f->dl[j]);
  FZ_ASSERT(e->expires <= f->adv_now && !tw_pending(e));
  if (t <= f->due_tick) FZ_ASSERT(!f->wheel_phase);
  else {
    FZ_ASSERT(t >= f->last_tick);
    f->last_tick = t;
    f->wheel_phase = 1;
  }
  f->pend[j] = 0;
  f->due[j] = 0;
  f->npend--;
  f->nfired++;
  for (k = 0; k < f->cb_ops; k++) {
    uint8_t op = get8(f);
    int x = op % NE;
    if (op & 0x80) fz_insert(f, x, f->adv_now);
    else if (op & 0x40) fz_cancel(f, x);
  }
}

static void fz_advance (fz *f, int64_t to) {
  size_t n, expect = 0;
  int i;
  f->adv_now = to < f->now ? f->now : to;
  for (i = 0; i < NE; i++) {
    f->due[i] = f->pend[i] && f->dl[i] <= f->adv_now;
    expect += f->due[i];
  }
  f->due_tick = round_up(f->now);
  f->last_tick = INT64_MIN;
  f->wheel_phase = 0;
  f->nfired = 0;
  n = tw_advance(&f->w, to, fz_fire, f);
  f->now = f->adv_now;
  FZ_ASSERT(n == f->nfired && n <= expect);
  FZ_ASSERT(f->w.now == f->now);
  for (i = 0; i < NE; i++) FZ_ASSERT(!f->due[i]);
}

static int64_t fz_step (fz *f) {
  uint8_t mode = get8(f);
  uint64_t raw = get64(f);
  switch (mode % 7) {
    case 0: return sat_add(f->now, (int64_t)(raw % (3 * MS)));
    case 1: return sat_add(f->now, (int64_t)(raw % SEC));
    case 2: {  /* like an event loop */
      int64_t nw = tw_next_wakeup(&f->w);
      return nw == TW_NEVER ? f->now : nw;
    }
    case 3: return sat_add(f->now, below_pow2(raw, 1 + (unsigned)(raw >> 58) % 62));
    case 4: return (int64_t)raw;        /* anywhere: backwards is "now" */
    case 5: {
      int64_t nw = tw_next_wakeup(&f->w);
      return nw == TW_NEVER ? f->now : sat_add(nw, (int64_t)(raw % 3) - 1);
    }
    default: return f->now;
  }
}

static void fz_check (fz *f) {
  int i;
  int64_t mn = TW_NEVER, nw = tw_next_wakeup(&f->w);
  for (i = 0; i < NE; i++) {
    FZ_ASSERT(tw_pending(&f->it[i].e) == f->pend[i]);
    if (f->pend[i] && round_up(f->dl[i]) < mn) mn = round_up(f->dl[i]);
  }
  FZ_ASSERT(tw_count(&f->w) == f->npend);
  FZ_ASSERT(nw <= mn);
  if (f->npend == 0) FZ_ASSERT(nw == TW_NEVER);
  FZ_ASSERT(tw_check(&f->w) == 0);
}

static void fz_reset (fz *f, int64_t now) {
  int i;
  f->now = now;
  tw_init(&f->w, now);
  for (i = 0; i < NE; i++) {
    tw_entry_init(&f->it[i].e);
    f->it[i].id = i;
    f->pend[i] = f->due[i] = 0;
  }
  f->npend = 0;
}

/* }====================================================== */


int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  fz f;
  memset(&f, 0, sizeof(f));
  f.p = data;
  f.end = data + size;
  fz_reset(&f, (int64_t)get64(&f));
  while (f.p < f.end) {
    uint8_t op = get8(&f);
    switch (op % 12) {
      case 0: case 1: case 2: case 3:
        fz_insert(&f, get8(&f) % NE, f.now);
        break;
      case 4: case 5:
        fz_cancel(&f, get8(&f) % NE);
        break;
      case 6: case 7: case 8:
        fz_advance(&f, fz_step(&f));
        break;
      case 9:
        f.cb_ops = get8(&f) % 4;
        break;
      case 10:
        fz_check(&f);
        break;
      default:
        if (op < 64) fz_reset(&f, (int64_t)get64(&f));
        else fz_check(&f);
        break;
    }
  }
  fz_check(&f);
  f.cb_ops = 0;
  fz_advance(&f, INT64_MAX);   /* nothing lost */
  FZ_ASSERT(tw_count(&f.w) == 0 && f.npend == 0);
  fz_check(&f);
  return 0;
}


#ifdef TW_FUZZ_STANDALONE
/*
** {======================================================
** Standalone driver: random inputs for a bounded time, or replay files
** =======================================================
*/
#include <time.h>

static uint64_t sa_rand (uint64_t *s) {  /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static int sa_replay (int argc, char **argv) {
  static uint8_t buf[1 << 20];
  int i;
  for (i = 1; i < argc; i++) {
    FILE *fp = fopen(argv[i], "rb");
    size_t n;
    if (fp == NULL) { perror(argv[i]); return 2; }
    n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, n);
    printf("%s: ok (%u bytes)\n", argv[i], (unsigned)n);
  }
  return 0;
}

int main (int argc, char **argv) {
  static uint8_t buf[4096];
  double secs = 10;
  uint64_t seed, s;
  unsigned long runs = 0;
  time_t start = time(NULL);
  if (argc > 1 && (argv[1][0] < '0' || argv[1][0] > '9'))
    return sa_replay(argc, argv);
  if (argc > 1) secs = atof(argv[1]);
  seed = argc > 2 ? strtoull(argv[2], NULL, 0) : (uint64_t)start;
  s = seed;
  printf("fuzz_tw: %.0f s, seed %llu\n", secs, (unsigned long long)seed);
  fflush(stdout);
  do {
    int i;
    for (i = 0; i < 256; i++, runs++) {
      size_t n = (size_t)(sa_rand(&s) % sizeof(buf)), k;
      uint64_t style = sa_rand(&s) % 4;
      for (k = 0; k < n; k++) {
        uint64_t r = sa_rand(&s);
        /* mostly raw bytes; some inputs biased to small operands so that
           short deadlines and steps dominate */
        buf[k] = (uint8_t)(style == 0 && (r >> 40) % 3 ? r % 8 : r);
      }
      LLVMFuzzerTestOneInput(buf, n);
    }
  } while (difftime(time(NULL), start) < secs);
  printf("fuzz_tw: %lu inputs, ok\n", runs);
  return 0;
}

/* }====================================================== */
#endif
