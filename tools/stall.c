/*
** stall.c — an LD_PRELOAD shim for `make stress`: pauses the process now
** and then, as a loaded machine would, to find tests whose outcome depends
** on timing they cannot count on.
**
** Every clock_gettime() of the monotonic clock sleeps first, with
** probability STALL_P (default 0.005), for a uniformly random 0..STALL_MS
** milliseconds (default 40). The clock is where a pause hurts: between
** reading what time is left and acting on it. The wall clock is read
** without pauses: lcontext reads it right after the monotonic one to pair
** the two (an epoch deadline), a window of nanoseconds that a real
** preemption practically never splits, but the shim always would.
** STALL_SEED (default 1) makes a run repeatable. Processes started from
** the test (the examples) inherit the shim through the environment.
**
** Not linked into lcontext; a test tool only.
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

typedef int (*clock_fn)(clockid_t, struct timespec *);

static clock_fn real_clock_gettime;
static int configured;
static double stall_p = 0.005, stall_ms = 40;
static unsigned int seed = 1;

static double uniform(void) {
  return (double)rand_r(&seed) / ((double)RAND_MAX + 1.0);
}

static void configure(void) {
  const char *p = getenv("STALL_P"), *ms = getenv("STALL_MS");
  const char *s = getenv("STALL_SEED");
  void *sym = dlsym(RTLD_NEXT, "clock_gettime");
  /* (a data pointer to a function pointer, as dlsym's manual shows) */
  *(void **)&real_clock_gettime = sym;
  if (p != NULL) stall_p = atof(p);
  if (ms != NULL) stall_ms = atof(ms);
  if (s != NULL) seed = (unsigned int)strtoul(s, NULL, 10);
  configured = 1;
}

static void maybe_stall(void) {
  if (uniform() < stall_p) {
    double ms = uniform() * stall_ms;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000) * 1e6);
    nanosleep(&ts, NULL);
  }
}

int clock_gettime(clockid_t id, struct timespec *tp) {
  if (!configured) configure();
  if (id != CLOCK_REALTIME) maybe_stall();
  return real_clock_gettime(id, tp);
}
