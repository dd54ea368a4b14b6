/*
** clock.c — monotonic and wall clocks (POSIX clock_gettime).
*/
#define _POSIX_C_SOURCE 200112L
#include <time.h>

#include "clock.h"

int64_t clk_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double clk_real(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
