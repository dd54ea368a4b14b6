#!/bin/sh
# bench/callgrind_jit.sh [OP ...]: instructions per operation on LuaJIT
# (valgrind's callgrind; repeatable where times drift), through the FFI
# path and through the classic C functions (LCONTEXT_NO_FFI=1), for the
# loops of bench/cg_jit_ops.lua: each figure is the slope between 100,000
# and 300,000 iterations. Needs build-jit/ (make build-jit).
set -u
cd "$(dirname "$0")/.." || exit 1
command -v valgrind >/dev/null 2>&1 || { echo "callgrind_jit: valgrind is not installed"; exit 0; }
[ -f build-jit/lcontext/core.so ] || make -s build-jit >/dev/null || exit 1
OPS=${*:-"err errt is_done deadline remaining value wc wt wt100k c_api alloc"}
count() { # count ENV OP N
  env $1 LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build-jit/?.so;;" \
    valgrind --tool=callgrind --callgrind-out-file=/dev/null luajit bench/cg_jit_ops.lua "$2" "$3" 2>&1 |
    sed -n 's/.*refs: *//p' | tr -d ','
}
per_op() { a=$(count "$1" "$2" 100000); b=$(count "$1" "$2" 300000); echo $(( (b - a) / 200000 )); }
printf '%-10s %12s %12s\n' "op" "FFI path" "classic"
for op in $OPS; do
  printf '%-10s %12s %12s\n' "$op" "$(per_op LCONTEXT_NO_FFI= "$op")" "$(per_op LCONTEXT_NO_FFI=1 "$op")"
done
