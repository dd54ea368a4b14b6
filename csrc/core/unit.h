/*
** unit.h — the little test harness of the core's C unit tests: CHECK a
** condition inside a test, RUN a test function; print `N passed, N failed`
** at the end with UNIT_SUMMARY() (and exit non-zero on any failure).
*/
#ifndef LCONTEXT_UNIT_H
#define LCONTEXT_UNIT_H

#include <stdio.h>

static int passed, failed, cur_failed;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      printf("  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
      cur_failed = 1;                                                    \
    }                                                                    \
  } while (0)

#define RUN(fn)                                                          \
  do {                                                                   \
    cur_failed = 0;                                                      \
    fn();                                                                \
    if (cur_failed) {                                                    \
      failed++;                                                          \
      printf("not ok %s\n", #fn);                                        \
    } else {                                                             \
      passed++;                                                          \
      printf("ok %s\n", #fn);                                            \
    }                                                                    \
  } while (0)

#define UNIT_SUMMARY()                                                   \
  (printf("%d passed, %d failed\n", passed, failed), failed != 0)

#endif
