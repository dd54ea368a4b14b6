#!/bin/sh
# stress.sh — `make stress`: the Lua 5.4 suite (examples included) run
# STRESS_RUNS times (default 3) with random pauses injected at every clock
# read by tools/stall.c, each run with its own seed. A test that fails here
# depends on timing a loaded 2-core machine does not give: widen its
# margins or make it wait on events instead of time. Not part of
# `make test`: the pauses are random, so the outcome may vary.
#
#   make stress                              # 3 runs, pauses of up to 40 ms
#   STRESS_RUNS=10 STALL_P=0.01 STALL_MS=60 make stress
#
# Each run is tools/runtests.sh's "lua" suite (with its digest of what
# failed). Last line: `N passed, N failed` over all runs; exit status
# non-zero if any test failed.
RUNS=${STRESS_RUNS:-3}
SEED0=${STALL_SEED:-$(date +%s)}
SHIM=$(pwd)/build/stall.so
LOG=${TMPDIR:-/tmp}/lcontext-stress.$$.log
trap 'rm -f "$LOG"' EXIT
P=0; F=0
i=1
while [ "$i" -le "$RUNS" ]; do
  seed=$((SEED0 + i))
  echo "== stress run $i of $RUNS (STALL_SEED=$seed)"
  env LD_PRELOAD="$SHIM" STALL_SEED="$seed" STALL_P="${STALL_P:-0.005}" \
      STALL_MS="${STALL_MS:-40}" SUITES=lua sh tools/runtests.sh > "$LOG" 2>&1
  cat "$LOG"
  last=$(tail -1 "$LOG")
  p=$(echo "$last" | sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1/p')
  f=$(echo "$last" | sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\2/p')
  P=$((P + ${p:-0})); F=$((F + ${f:-1}))
  i=$((i + 1))
done
echo "$P passed, $F failed"
[ "$F" = 0 ]
