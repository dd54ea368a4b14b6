# spec/ngx/common.sh — what the real-nginx tests (run.sh, lazy.sh) share:
# paths, counting, and a cleanup that stops the nginx master they started,
# by its pid, whatever happened, and removes their prefix (KEEP=1 keeps it).
# Sourced; sets ROOT NGINX LUA MODULES BUILD, DIR and MASTER (empty).
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NGINX=${NGINX:-nginx}
LUA=${LUA:-lua5.4}
MODULES=${NGX_MODULES:-/usr/lib/nginx/modules}
BUILD=${LCONTEXT_JIT_BUILD:-$ROOT/build-jit}

P=0; F=0
pass() { P=$((P + 1)); echo "ok - $*"; }
fail() { F=$((F + 1)); echo "not ok - $*"; }

DIR=
MASTER=
WORKERS= # the workers' pids, recorded once nginx answers (record_workers)
# the pids of the master's children (its workers), from /proc
workers_of() {
  for d in /proc/[0-9]*; do
    [ "$(awk '{ print $4 }' "$d/stat" 2>/dev/null)" = "$1" ] && echo "${d#/proc/}"
  done
}
record_workers() {
  i=0
  while [ $i -lt 20 ]; do # (forked after the pid file is written)
    WORKERS=$(workers_of "$MASTER" | tr '\n' ' ')
    [ -n "$WORKERS" ] && return
    sleep 0.1; i=$((i + 1))
  done
}
# is pid $1 still an nginx process (not a pid reused by something else)?
is_nginx() { { tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null | grep -q '^nginx: '; }
# a process's CPU time in clock ticks (utime + stime, /proc/PID/stat)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
# LCONTEXT_NGX_ON_SPIN=CMD: before cleanup stops them, `CMD PID DIR` runs
# for each of the pids $1... that used more than half a core over 0.5 s (a
# spinning worker, caught alive: e.g. tools/ngx_spin_diag.sh)
on_spin() {
  [ -n "${LCONTEXT_NGX_ON_SPIN:-}" ] || return 0
  t0=
  for p in "$@"; do t0="$t0 $p:$(cpu_ticks "$p")"; done
  sleep 0.5
  for pt in $t0; do
    p=${pt%%:*}; a=${pt#*:}; b=$(cpu_ticks "$p")
    [ -n "$a" ] && [ -n "$b" ] && [ $((b - a)) -gt 25 ] && $LCONTEXT_NGX_ON_SPIN "$p" "$DIR"
  done
  return 0
}
cleanup() {
  # the master we started and its workers, by pid: those recorded at the
  # start (a worker orphaned when its master died first is no child of
  # anything we know any more) and those it has now; a worker spinning in
  # Lua never reads its signals, so what TERM leaves is killed
  pids=
  if [ -n "$MASTER" ] && is_nginx "$MASTER"; then pids="$MASTER $(workers_of "$MASTER")"; fi
  for p in $WORKERS; do is_nginx "$p" && pids="$pids $p"; done
  if [ -n "$pids" ]; then
    on_spin $pids
    kill -TERM $pids 2>/dev/null
    i=0
    while [ $i -lt 20 ]; do
      alive=
      for p in $pids; do is_nginx "$p" && alive="$alive $p"; done
      [ -z "$alive" ] && break
      sleep 0.1; i=$((i + 1))
    done
    for p in $pids; do is_nginx "$p" && kill -KILL "$p" 2>/dev/null; done
  fi
  if [ -n "$DIR" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# nginx_start: start nginx on the prefix $DIR (nginx.conf) from the working
# directory the caller is in, and wait for its pid file: MASTER is set, or
# the start log is shown and it returns 1
nginx_start() {
  rm -f "$DIR/logs/nginx.pid"
  if ! "$NGINX" -p "$DIR/" -c nginx.conf > "$DIR/start.log" 2>&1; then
    cat "$DIR/start.log"
    return 1
  fi
  i=0
  while [ ! -s "$DIR/logs/nginx.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  MASTER=$(cat "$DIR/logs/nginx.pid" 2>/dev/null)
  [ -n "$MASTER" ] || { cat "$DIR/start.log" "$DIR/logs/error.log" 2>/dev/null; return 1; }
}
# nginx_quit: `nginx -s quit`, and wait (10 s at most) for the pid file to
# go (a daemon's exit may leave a zombie where nothing reaps orphans); 0 and
# MASTER emptied once it has, and QUIT_SECONDS says how long it took
nginx_quit() {
  "$NGINX" -p "$DIR/" -c nginx.conf -s quit > "$DIR/quit.log" 2>&1
  i=0
  while [ -e "$DIR/logs/nginx.pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  QUIT_SECONDS=$(awk "BEGIN { printf \"%.1f\", $i / 10 }")
  [ -e "$DIR/logs/nginx.pid" ] && return 1
  MASTER=
}
# log_clean PREFIX: a check that the error log has no [error], [alert],
# [crit] or [emerg] line (but those LOG_EXPECTED, an ERE, if set: what a
# test provokes on purpose, each said where it is set)
log_clean() {
  bad=$(grep -E '\[(error|alert|crit|emerg)\]' "$DIR/logs/error.log" \
    | { if [ -n "${LOG_EXPECTED:-}" ]; then grep -vE "$LOG_EXPECTED"; else cat; fi; })
  if [ -z "$bad" ]; then
    pass "${1:-}the error log has no [error], [alert], [crit] or [emerg] line"
  else
    echo "$bad" | head -20
    fail "${1:-}the error log has no [error], [alert], [crit] or [emerg] line"
  fi
}

finish() {
  echo "$P passed, $F failed"
  [ "$F" = 0 ]
  exit $?
}
