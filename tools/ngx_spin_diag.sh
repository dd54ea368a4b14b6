#!/bin/sh
# ngx_spin_diag.sh PID [PREFIX] — what a spinning nginx worker is doing,
# taken while it spins: its state from /proc, three C backtraces (gdb), a
# 3 s profile with call graphs (perf), and the prefix's error log. Written
# to ${SPIN_DIAG_DIR:-/tmp}/lcontext-spin.PID/. Meant for
#   LCONTEXT_NGX_ON_SPIN=tools/ngx_spin_diag.sh make ngx-spin
# (spec/ngx/common.sh runs it on each nginx process that burns CPU, before
# it stops them). Needs gdb; perf is used when present. Only reads the
# process (gdb attaches and detaches; perf samples it).
set -u
pid=${1:?usage: ngx_spin_diag.sh PID [PREFIX]}
prefix=${2:-}
out=${SPIN_DIAG_DIR:-/tmp}/lcontext-spin.$pid
mkdir -p "$out" || exit 1
{
  echo "pid $pid, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  tr '\0' ' ' < "/proc/$pid/cmdline"; echo
  grep -E '^(State|voluntary_ctxt_switches|nonvoluntary_ctxt_switches)' "/proc/$pid/status"
  # where libluajit is mapped: backtrace addresses minus this base are
  # offsets in the library (objdump -d it to name the code)
  grep -m1 'libluajit' "/proc/$pid/maps"
} > "$out/info" 2>&1
if command -v gdb >/dev/null 2>&1; then
  for i in 1 2 3; do
    timeout 60 gdb -p "$pid" -batch -ex 'thread apply all bt' > "$out/bt.$i" 2>&1
    sleep 1
  done
else
  echo "no gdb: no backtraces" >> "$out/info"
fi
if command -v perf >/dev/null 2>&1; then
  timeout 30 perf record -q -g -o "$out/perf.data" -p "$pid" -- sleep 3 > "$out/perf.log" 2>&1
  perf report -i "$out/perf.data" --stdio > "$out/perf.txt" 2>&1
fi
[ -n "$prefix" ] && cp "$prefix/logs/error.log" "$out/" 2>/dev/null
echo "$out"
