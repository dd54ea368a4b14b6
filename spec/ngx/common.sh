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
# the pids of the master's children (its workers), from /proc
workers_of() {
  for d in /proc/[0-9]*; do
    [ "$(awk '{ print $4 }' "$d/stat" 2>/dev/null)" = "$1" ] && echo "${d#/proc/}"
  done
}
cleanup() {
  if [ -n "$MASTER" ] && kill -0 "$MASTER" 2>/dev/null; then
    # the master we started and its workers, by pid: a worker orphaned by
    # a master killed hard would otherwise live on (and may spin)
    pids="$MASTER $(workers_of "$MASTER")"
    kill -TERM $pids 2>/dev/null
    sleep 1
    for p in $pids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  fi
  if [ -n "$DIR" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

finish() {
  echo "$P passed, $F failed"
  [ "$F" = 0 ]
  exit $?
}
