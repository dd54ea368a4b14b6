#!/bin/sh
# bench/callgrind.sh [REV] — instruction counts (valgrind's callgrind) of the
# scheduler's work, for this checkout and, given REV, for that revision
# built in a temporary worktree, side by side with their ratio. Counts are
# repeatable where times drift on a loaded machine: use this to check that
# a change costs nothing on the scheduler's paths (`make bench-cg
# BASE=<rev>`). Scenarios (bench/cg_*.lua): 20,000 tasks parked on one
# context until a cancel resumes them all; 20,000 tasks each sleeping 1 ms;
# 200,000 with_timeout+cancel beside 20,000 deadlines waited on; 20,000
# channel handoffs between two tasks.
set -u
cd "$(dirname "$0")/.." || exit 1
BASE=${1:-}
LUA=${LUA:-lua5.4}
command -v valgrind >/dev/null 2>&1 || { echo "bench-cg: valgrind is not installed"; exit 0; }
make -s build >/dev/null || exit 1

count() { # count DIR SCRIPT -> instructions
  (cd "$1" && LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" \
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$LUA" "$2" 2>&1) |
    sed -n 's/.*refs: *//p' | tr -d ','
}

WT=
if [ -n "$BASE" ]; then
  WT=$(mktemp -d "${TMPDIR:-/tmp}/lcontext-base.XXXXXX")
  trap 'git worktree remove --force "$WT" >/dev/null 2>&1; rm -rf "$WT"' EXIT
  git worktree add --detach "$WT" "$BASE" >/dev/null 2>&1 || { echo "bench-cg: no revision $BASE"; exit 1; }
  make -s -C "$WT" build >/dev/null || exit 1
fi

printf '%-36s %14s %14s %7s\n' "scenario" "this" "${BASE:-(no base)}" "ratio"
for s in bench/cg_*.lua; do
  name=$(basename "$s" .lua)
  now=$(count . "$PWD/$s")
  if [ -n "$WT" ]; then
    base=$(count "$WT" "$PWD/$s")
    ratio=$(awk "BEGIN { printf \"%.3f\", $now / $base }")
  else
    base=-; ratio=-
  fi
  printf '%-36s %14s %14s %7s\n' "$name" "$now" "$base" "$ratio"
done
