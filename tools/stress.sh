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
# Last line: `N passed, N failed` over all runs; exit status non-zero if any
# test failed.
RUNS=${STRESS_RUNS:-3}
SEED0=${STALL_SEED:-$(date +%s)}
LUA=${LUA:-lua5.4}
SHIM=$(pwd)/build/stall.so
OUT=${TMPDIR:-/tmp}/lcontext-stress.$$
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
P=0; F=0
i=1
while [ "$i" -le "$RUNS" ]; do
  seed=$((SEED0 + i))
  log="$OUT/run$i.log"
  env LD_PRELOAD="$SHIM" STALL_SEED="$seed" STALL_P="${STALL_P:-0.005}" \
      STALL_MS="${STALL_MS:-40}" $LUA /usr/bin/busted > "$log" 2>&1
  line=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -1)
  if [ -z "$line" ]; then
    echo "run $i (seed $seed): no summary (crashed?)"; tail -20 "$log"; F=$((F + 1))
  else
    p=$(echo "$line" | grep -oE '^[0-9]+')
    f1=$(echo "$line" | grep -oE '[0-9]+ failure' | grep -oE '[0-9]+')
    f2=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
    echo "run $i (seed $seed): $line"
    grep -E -A2 '^(Failure|Error) -> ' "$log"
    P=$((P + p)); F=$((F + f1 + f2))
  fi
  i=$((i + 1))
done
echo "$P passed, $F failed"
[ "$F" = 0 ]
