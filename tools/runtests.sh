#!/bin/sh
# runtests.sh — every test suite of lcontext, as `make test` runs it.
# Each suite prints its own counts; the last line is the sum over all of
# them: `N passed, N failed`. Exits non-zero if anything failed.
#
# Suites: C unit tests (sanitized), busted on Lua 5.4, busted with the
# module under ASan+UBSan, busted under valgrind, busted with an aggressive
# GC hook. SUITES="c lua asan valgrind gc" selects some of them.

SUITES=${SUITES:-"c lua asan valgrind gc lua5.3 lua5.1 luajit luajit-noffi ngx allocfail fuzz"}
MAKE=${MAKE:-make}
LUA=${LUA:-lua5.4}
BUSTED="$LUA /usr/bin/busted"
OUT=${TMPDIR:-/tmp}/lcontext-test.$$
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
P=0; F=0

# add_counts NAME FILE: read `N passed, N failed` (C) or busted's summary
add_counts() {
  name=$1; file=$2; rc=$3
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$file" | tail -1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  else
    line=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$file" | tail -1)
    if [ -n "$line" ]; then
      p=$(echo "$line" | grep -oE '[0-9]+ success' | grep -oE '[0-9]+')
      f1=$(echo "$line" | grep -oE '[0-9]+ failure' | grep -oE '[0-9]+')
      f2=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
      f=$((f1 + f2))
    else
      p=0; f=1
      echo "$name: no summary found (crashed?)"
    fi
  fi
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    f=1; echo "$name: exited with status $rc (memory errors or a crash)"
  fi
  echo "== $name: $p passed, $f failed"
  echo "$name: $p passed, $f failed" >> "$OUT/summary"
  if [ "$f" != 0 ]; then
    # what failed, kept for the digest at the end (CI shows only the tail)
    echo "-- $name:" >> "$OUT/failures"
    grep -E -A3 '^(Failure|Error) -> |^not ok|^FAIL|^==[0-9]+== |runtime error:|AddressSanitizer' \
        "$file" | head -60 > "$OUT/digest"
    [ -s "$OUT/digest" ] || tail -20 "$file" > "$OUT/digest"
    cat "$OUT/digest" >> "$OUT/failures"
  fi
  P=$((P + p)); F=$((F + f))
}

run() { # run NAME CMD...: run a suite, show its output, count it
  name=$1; shift
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  cat "$OUT/$name.log"
  add_counts "$name" "$OUT/$name.log" "$rc"
}

for s in $SUITES; do
  case $s in
  c)
    $MAKE -s build/test_ctx build/test_tw build/test_wait >/dev/null || { echo "C tests: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run c-ctx ./build/test_ctx
    run c-tw ./build/test_tw
    run c-wait ./build/test_wait
    ;;
  lua)
    run lua5.4 $BUSTED
    ;;
  asan)
    $MAKE -s asan >/dev/null || { echo "asan: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    ASAN_LIB=$(${CC:-cc} -print-file-name=libasan.so)
    run asan env LD_PRELOAD="$ASAN_LIB" ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 LCONTEXT_BUILD=build-asan \
        $BUSTED --cpath='./build-asan/?.so' --exclude-tags=novalgrind
    ;;
  valgrind)
    run valgrind env LCONTEXT_VALGRIND=1 valgrind -q --leak-check=full \
        --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        --error-exitcode=99 $BUSTED --exclude-tags=novalgrind
    ;;
  lua5.3|lua5.1|luajit)
    # the same specs on the other runtimes; *_54_spec.lua files test what
    # exists only in Lua 5.4 (each says why) and are left out
    case $s in lua5.3) b=build-5.3;; lua5.1) b=build-5.1;; luajit) b=build-jit;; esac
    $MAKE -s "$b" >/dev/null || { echo "$s: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run "$s" env LCONTEXT_LUA="$s" "$s" /usr/bin/busted --cpath="./$b/?.so" \
        --exclude-pattern=_54_spec --exclude-tags=novalgrind,only54
    ;;
  luajit-noffi)
    # the LuaJIT suite again through the classic C functions: the FFI path
    # (lua/lcontext/ffi.lua) off, as where LuaJIT has no ffi module
    $MAKE -s build-jit >/dev/null || { echo "$s: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run "$s" env LCONTEXT_NO_FFI=1 LCONTEXT_LUA=luajit luajit /usr/bin/busted --cpath="./build-jit/?.so" \
        --exclude-pattern=_54_spec --exclude-tags=novalgrind,only54
    ;;
  ngx)
    # OpenResty: a real nginx with ngx_lua on LuaJIT
    $MAKE -s build-jit >/dev/null || { echo "ngx: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run ngx sh spec/ngx/run.sh
    run ngx-lazy sh spec/ngx/lazy.sh
    # the backend-neutral spec files, unchanged, inside a real nginx worker
    run ngx-shared sh spec/ngx/shared.sh
    ;;
  fuzz)
    # the API fuzzer (tools/fuzz_api.lua): bounded seeds under ASan and
    # valgrind; the seeds are printed, each replayable (`make fuzz` runs more)
    $MAKE -s build asan >/dev/null || { echo "fuzz: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run fuzz sh tools/fuzz_api.sh
    ;;
  allocfail)
    # the allocation-failure sweep (tools/allocfail.c): every N-th
    # allocation of each scenario fails; one test per scenario
    $MAKE -s build/allocfail >/dev/null || { echo "allocfail: build failed" | tee -a "$OUT/failures"; F=$((F + 1)); continue; }
    run allocfail ./build/allocfail
    ;;
  gc)
    run gc-stress env LCONTEXT_GC_STRESS=1 $BUSTED --helper=spec/gc_stress_helper.lua --exclude-tags=novalgrind
    ;;
  esac
done

# The digest: every suite's counts, then what failed, so that the last
# screenful of a long run says where to look.
echo "== summary"
cat "$OUT/summary" 2>/dev/null
if [ -s "$OUT/failures" ]; then
  echo "== what failed"
  cat "$OUT/failures"
fi
echo "$P passed, $F failed"
[ "$F" = 0 ]
