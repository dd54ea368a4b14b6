/*
** tw_bench.c — insert+cancel cost of the timer wheel (csrc/core/tw.c)
** beside libev's timer heap, with 1k / 100k / 1M resident timers.
**
**   cc -std=c99 -O2 -Icsrc/core bench/tw_bench.c csrc/core/tw.c -lev \
**      -o build/tw_bench && build/tw_bench [SCALE]
**
** Method: N timers are armed with deadlines uniform in [1 ms, 60 s] from a
** fixed "now" (time does not advance; nothing fires). One op picks a
** resident timer at random, cancels it and re-arms it with a new random
** deadline in the same range, so N stays resident: the cost of one
** context with a timeout created and cancelled while N others wait.
** Random indexes and deadlines are precomputed (identical sequences for
** both implementations). libev: ev_timer_stop + ev_timer_set +
** ev_timer_start on an ev_loop_new(EVFLAG_AUTO) loop, which is never run.
** Each figure: one warm-up run, then RUNS runs of OPS ops (x SCALE),
** alternating the two implementations; the median run is reported, in ns
** per op (one cancel + one insert). ratio = libev_ns / wheel_ns.
*/
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <ev.h>

#include "tw.h"

#define RUNS 5
#define OPS 2000000
#define T0 ((int64_t)1000000000000)  /* arbitrary fixed wheel time, ns */
#define MIN_NS ((int64_t)1000000)
#define SPAN_NS ((int64_t)60000000000)

typedef struct work {
  size_t n, ops;
  uint32_t *idx;     /* timer to re-arm, per op */
  int64_t *delay;    /* its new delay, ns */
  double *delay_s;   /* the same in seconds, for libev */
} work;


/*
** {======================================================
** Helpers
** =======================================================
*/

static uint64_t rnd (uint64_t *s) {  /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

static int64_t rnd_delay (uint64_t *s) {
  return MIN_NS + (int64_t)(rnd(s) % (uint64_t)SPAN_NS);
}

static double now_s (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *xmalloc (size_t sz) {
  void *p = malloc(sz);
  if (p == NULL) { fprintf(stderr, "tw_bench: out of memory\n"); exit(1); }
  return p;
}

static int cmp_double (const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void work_init (work *wk, size_t n, size_t ops, uint64_t seed) {
  size_t i;
  wk->n = n;
  wk->ops = ops;
  wk->idx = xmalloc(ops * sizeof(*wk->idx));
  wk->delay = xmalloc(ops * sizeof(*wk->delay));
  wk->delay_s = xmalloc(ops * sizeof(*wk->delay_s));
  for (i = 0; i < ops; i++) {
    wk->idx[i] = (uint32_t)(rnd(&seed) % n);
    wk->delay[i] = rnd_delay(&seed);
    wk->delay_s[i] = (double)wk->delay[i] * 1e-9;
  }
}

static void work_free (work *wk) {
  free(wk->idx);
  free(wk->delay);
  free(wk->delay_s);
}

/* }====================================================== */


/*
** {======================================================
** The two implementations
** =======================================================
*/

typedef struct wheel_bench {
  tw_wheel w;
  tw_entry *e;
} wheel_bench;

static void wheel_setup (wheel_bench *b, size_t n, uint64_t seed) {
  size_t i;
  tw_init(&b->w, T0);
  b->e = xmalloc(n * sizeof(*b->e));
  for (i = 0; i < n; i++) {
    tw_entry_init(&b->e[i]);
    tw_insert(&b->w, &b->e[i], T0 + rnd_delay(&seed));
  }
}

static double wheel_run (wheel_bench *b, const work *wk) {
  tw_wheel *w = &b->w;
  size_t i;
  double t = now_s();
  for (i = 0; i < wk->ops; i++) {
    tw_entry *e = &b->e[wk->idx[i]];
    tw_cancel(w, e);
    tw_insert(w, e, T0 + wk->delay[i]);
  }
  t = now_s() - t;
  if (tw_count(w) != wk->n) { fprintf(stderr, "tw_bench: bad count\n"); exit(1); }
  return t * 1e9 / (double)wk->ops;
}

typedef struct libev_bench {
  struct ev_loop *loop;
  ev_timer *t;
} libev_bench;

static void libev_cb (struct ev_loop *loop, ev_timer *t, int revents) {
  (void)loop; (void)t; (void)revents;
}

static void libev_setup (libev_bench *b, size_t n, uint64_t seed) {
  size_t i;
  b->loop = ev_loop_new(EVFLAG_AUTO);
  if (b->loop == NULL) { fprintf(stderr, "tw_bench: ev_loop_new failed\n"); exit(1); }
  b->t = xmalloc(n * sizeof(*b->t));
  for (i = 0; i < n; i++) {
    ev_timer_init(&b->t[i], libev_cb, (double)rnd_delay(&seed) * 1e-9, 0.);
    ev_timer_start(b->loop, &b->t[i]);
  }
}

static double libev_run (libev_bench *b, const work *wk) {
  struct ev_loop *loop = b->loop;
  size_t i;
  double t = now_s();
  for (i = 0; i < wk->ops; i++) {
    ev_timer *tm = &b->t[wk->idx[i]];
    ev_timer_stop(loop, tm);
    ev_timer_set(tm, wk->delay_s[i], 0.);
    ev_timer_start(loop, tm);
  }
  t = now_s() - t;
  return t * 1e9 / (double)wk->ops;
}

static void libev_teardown (libev_bench *b, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) ev_timer_stop(b->loop, &b->t[i]);
  ev_loop_destroy(b->loop);
  free(b->t);
}

/* }====================================================== */


int main (int argc, char **argv) {
  static const size_t sizes[] = { 1000, 100000, 1000000 };
  static wheel_bench wb;
  double scale = argc > 1 ? atof(argv[1]) : 1.0;
  size_t ops = (size_t)(OPS * (scale > 0 ? scale : 1.0));
  size_t s;
  if (ops < 1000) ops = 1000;
  printf("# insert+cancel, ns per op (median of %d runs of %lu ops); "
         "ratio = libev_ns / wheel_ns\n", RUNS, (unsigned long)ops);
  printf("# sizeof(tw_entry) = %u, sizeof(tw_wheel) = %u, sizeof(ev_timer) = %u\n",
         (unsigned)sizeof(tw_entry), (unsigned)sizeof(tw_wheel),
         (unsigned)sizeof(ev_timer));
  printf("%-9s %9s %9s %7s\n", "size", "wheel_ns", "libev_ns", "ratio");
  for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
    size_t n = sizes[s];
    double tw_ns[RUNS], ev_ns[RUNS];
    libev_bench lb;
    work wk;
    int r;
    work_init(&wk, n, ops, 12345 + n);
    wheel_setup(&wb, n, 777 + n);
    libev_setup(&lb, n, 777 + n);
    wheel_run(&wb, &wk);   /* warm-up */
    libev_run(&lb, &wk);
    for (r = 0; r < RUNS; r++) {
      tw_ns[r] = wheel_run(&wb, &wk);
      ev_ns[r] = libev_run(&lb, &wk);
    }
    qsort(tw_ns, RUNS, sizeof(double), cmp_double);
    qsort(ev_ns, RUNS, sizeof(double), cmp_double);
    printf("%-9lu %9.1f %9.1f %7.2f\n", (unsigned long)n, tw_ns[RUNS / 2],
           ev_ns[RUNS / 2], ev_ns[RUNS / 2] / tw_ns[RUNS / 2]);
    fflush(stdout);
    libev_teardown(&lb, n);
    free(wb.e);
    work_free(&wk);
  }
  return 0;
}
