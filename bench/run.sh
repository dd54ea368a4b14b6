#!/bin/sh
# bench/run.sh: what `make bench` runs.
#
# Measures Go's context (bench/go), then lcontext and the plain-Lua baseline
# (bench/bench.lua), and prints one table with the ratios and the targets.
# It builds nothing of lcontext itself: run `make` first (without it the
# lcontext columns stay empty). Raw figures are kept in bench/out/.
#
# Environment:
#   LUA           the Lua 5.4 interpreter (default lua5.4)
#   GO            the go command (default go)
#   LUAJIT        the LuaJIT interpreter (default luajit): bench.lua runs again
#                 with build-jit/ (`make build-jit`), through the FFI path
#                 and with LCONTEXT_NO_FFI=1 (the classic C functions)
#   BENCH_SCALE   multiplies iteration counts (default 1; 0.1 = quick, noisy)
#
# Always exits 0: this reports, it does not gate.

cd "$(dirname "$0")/.." || exit 0

LUA=${LUA:-lua5.4}
GO=${GO:-go}
BENCH_SCALE=${BENCH_SCALE:-1}
export BENCH_SCALE
OUT=bench/out
mkdir -p "$OUT"
GO_TSV=$OUT/go.tsv
LUA_TSV=$OUT/lua.tsv
LUAJIT=${LUAJIT:-luajit}
JIT_TSV=$OUT/jit.tsv
JIT_NOFFI_TSV=$OUT/jit_noffi.tsv
: >"$GO_TSV"
: >"$LUA_TSV"
: >"$JIT_TSV"
: >"$JIT_NOFFI_TSV"

say() { printf 'bench: %s\n' "$*" >&2; }

# A directory we can write to, for Go's build cache when HOME is unset or
# read-only.
# (`go env GOCACHE` says "off" when it cannot find one: only absolute paths
# count.)
writable_dir() {
	case $1 in
	/*) mkdir -p "$1" 2>/dev/null && [ -w "$1" ] ;;
	*) false ;;
	esac
}

run_go() {
	if ! command -v "$GO" >/dev/null 2>&1; then
		say "Go is not installed ('$GO' not found): the Go column stays empty"
		return
	fi
	# Stdlib only, no network: keep the go command off the module proxy and
	# out of any workspace or GOPATH mode the caller may have set.
	GOFLAGS='' GO111MODULE=on GOWORK=off GOPROXY=off GOTOOLCHAIN=local
	export GOFLAGS GO111MODULE GOWORK GOPROXY GOTOOLCHAIN
	tmp=${TMPDIR:-/tmp}
	if ! writable_dir "$("$GO" env GOCACHE 2>/dev/null)"; then
		GOCACHE=$tmp/lcbench-go-cache
		export GOCACHE
	fi
	if ! writable_dir "$("$GO" env GOPATH 2>/dev/null)"; then
		GOPATH=$tmp/lcbench-go-path
		export GOPATH
	fi
	say "building bench/go with $("$GO" version 2>/dev/null)"
	if ! (cd bench/go && "$GO" build -o ../out/lcbench-go .); then
		say "building bench/go failed: the Go column stays empty"
		return
	fi
	say "running Go's context (about 15 s)"
	if ! "$OUT/lcbench-go" -scale="$BENCH_SCALE" >"$GO_TSV"; then
		say "bench/go failed: its figures may be incomplete"
	fi
}

run_lua() {
	if ! command -v "$LUA" >/dev/null 2>&1; then
		say "'$LUA' not found: no Lua figures"
		return 1
	fi
	say "running lcontext and plain Lua (about 1 min)"
	LUA_PATH="./lua/?.lua;./lua/?/init.lua;./bench/?.lua;;" \
	LUA_CPATH="./build/?.so;;" \
		"$LUA" bench/bench.lua >"$LUA_TSV" ||
		say "bench.lua failed: its figures may be incomplete"
	return 0
}

# LuaJIT (README, "Runtimes": the FFI path), then the same without it
run_jit() {
	if ! command -v "$LUAJIT" >/dev/null 2>&1 || [ ! -f build-jit/lcontext/core.so ]; then
		say "no LuaJIT figures ('$LUAJIT' or build-jit/lcontext/core.so missing: make build-jit)"
		return
	fi
	say "running lcontext on LuaJIT, FFI path (about 1 min)"
	LUA_PATH="./lua/?.lua;./lua/?/init.lua;./bench/?.lua;;" \
	LUA_CPATH="./build-jit/?.so;;" \
		"$LUAJIT" bench/bench.lua floor lcontext >"$JIT_TSV" ||
		say "bench.lua on LuaJIT failed: its figures may be incomplete"
	say "running lcontext on LuaJIT, classic C API (LCONTEXT_NO_FFI=1, about 1 min)"
	LCONTEXT_NO_FFI=1 LUA_PATH="./lua/?.lua;./lua/?/init.lua;./bench/?.lua;;" \
	LUA_CPATH="./build-jit/?.so;;" \
		"$LUAJIT" bench/bench.lua lcontext >"$JIT_NOFFI_TSV" ||
		say "bench.lua on LuaJIT (no FFI) failed: its figures may be incomplete"
}

run_go
if run_lua; then
	run_jit
	"$LUA" bench/report.lua "$GO_TSV" "$LUA_TSV" "$JIT_TSV" "$JIT_NOFFI_TSV"
else
	say "Go's figures:"
	cat "$GO_TSV"
fi

# The timer wheel in C beside libev's own timer heap, in one run.
say "timer wheel vs libev's heap (C, about 30 s)"
if ${CC:-cc} -std=c99 -O2 -Icsrc/core bench/tw_bench.c csrc/core/tw.c -lev \
	-o "$OUT/tw_bench" 2>"$OUT/tw_bench.err"; then
	echo ""
	echo "timer insert+cancel, ns per op (median of 5); ratio = libev / wheel"
	"$OUT/tw_bench" || say "tw_bench failed"
else
	say "building bench/tw_bench.c failed: $(cat "$OUT/tw_bench.err")"
fi

# The scheduler: parked tasks, deadline lateness, a loaded wheel.
say "scheduler figures (about 20 s)"
LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" \
	"$LUA" bench/sched_bench.lua || say "sched_bench.lua failed"

# I/O: lcontext.socket beside blocking LuaSocket (bench/io_bench.lua)
say "sockets: a loopback echo (about 20 s)"
LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" LUA="$LUA" \
	"$LUA" bench/io_bench.lua || say "io_bench.lua failed"
exit 0
