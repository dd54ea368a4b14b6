# lcontext — Go's context package for Lua.
#
#   make demo    install what is missing, build, run examples/demo.lua
#   make repl    a lua5.4 prompt with this build and `context` loaded
#                (LUA=luajit, LUA=lua5.3, LUA=lua5.1: that runtime's build)
#   make test    install what is missing, build, run every test suite
#   make bench   the benchmark table (lcontext beside Go and plain Lua)
#   make fuzz    the fuzzers (timer wheel, public API) for longer than make test
#   make rock    dist/: the release tarball and .src.rock, from the checkout, offline
#
# Dependencies come from Debian packages only (see `deps`; `deps-demo` is
# the part `make demo` needs).

LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
LUA_INC     ?= /usr/include/lua$(LUA_VERSION)
CC          ?= cc
CSTD         = -std=c99 -Wall -Wextra -pedantic
OPT         ?= -O2
CFLAGS      ?= $(OPT) -g
ALL_CFLAGS   = $(CSTD) $(CFLAGS) -fPIC -fvisibility=hidden -I$(LUA_INC) -Icsrc
LIBS         = -lev -lm
# never unloaded: libev's default loop (and its signal handlers) outlive a
# lua_close, so the code they point into must stay mapped
LDFLAGS_MOD  = -Wl,-z,nodelete

BUILD       ?= build
CORE_SRC     = $(wildcard csrc/core/*.c)
CORE_LIB_SRC = $(filter-out csrc/core/test_%.c csrc/core/fuzz_%.c,$(CORE_SRC))
BIND_SRC     = $(wildcard csrc/l_*.c)
HDRS         = $(wildcard csrc/*.h csrc/core/*.h)
MODULE       = $(BUILD)/lcontext/core.so

# what `make demo` needs (build + run on Lua 5.4), then what the tests add
DEMO_PKGS    = lua5.4 liblua5.4-dev libev-dev
DEB_PKGS     = $(DEMO_PKGS) lua-busted luarocks lua-socket lua-cjson lua-dkjson valgrind prometheus \
               lua-luv lua-cqueues
# the other runtimes and OpenResty (nginx with ngx_lua on OpenResty's LuaJIT)
RUNTIME_PKGS = lua5.3 liblua5.3-dev lua5.1 liblua5.1-0-dev luajit2 libluajit2-5.1-dev \
               nginx libnginx-mod-http-lua lua-resty-core
BENCH_PKGS   = golang-go
FUZZ_PKGS    = clang

.PHONY: all build deps deps-demo demo repl test bench bench-cg bench-cg-jit fuzz stress clean allocfail rock dist ngx-spin

all: build
build: $(MODULE)

$(MODULE): $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -shared $(LDFLAGS_MOD) -o $@ $(CORE_LIB_SRC) $(BIND_SRC) $(LIBS)

# The module for the other runtimes (README, "Runtimes"): build-5.3, build-5.1,
# build-jit (LuaJIT 2.1, OpenResty's fork). Same sources, lc_compat.h.
OTHER_CFLAGS = $(CSTD) $(OPT) -g -fPIC -fvisibility=hidden -Icsrc
build-5.3/lcontext/core.so: $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(OTHER_CFLAGS) -I/usr/include/lua5.3 -shared $(LDFLAGS_MOD) -o $@ $(CORE_LIB_SRC) $(BIND_SRC) $(LIBS)
build-5.1/lcontext/core.so: $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(OTHER_CFLAGS) -I/usr/include/lua5.1 -shared $(LDFLAGS_MOD) -o $@ $(CORE_LIB_SRC) $(BIND_SRC) $(LIBS)
build-jit/lcontext/core.so: $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(OTHER_CFLAGS) -I/usr/include/luajit-2.1 -shared $(LDFLAGS_MOD) -o $@ $(CORE_LIB_SRC) $(BIND_SRC) $(LIBS)
.PHONY: build-5.3 build-5.1 build-jit runtimes
build-5.3: build-5.3/lcontext/core.so
build-5.1: build-5.1/lcontext/core.so
build-jit: build-jit/lcontext/core.so
runtimes: build-5.3 build-5.1 build-jit

# deps: install what is missing (Debian, as root); does nothing when all is
# present. deps-demo: only what `make demo` needs.
deps:
	@sh tools/deps.sh $(DEB_PKGS) $(RUNTIME_PKGS)
deps-demo:
	@sh tools/deps.sh $(DEMO_PKGS)

demo: deps-demo build
	$(LUA) tools/with_paths.lua examples/demo.lua

# The prompt: `$(LUA) -i tools/with_paths.lua` with the build of that runtime
# (made if missing) and `context` loaded. README, "At the prompt".
REPL_BUILD = $(if $(findstring jit,$(LUA)),build-jit,$(if $(findstring 5.3,$(LUA)),build-5.3,$(if $(findstring 5.1,$(LUA)),build-5.1,$(BUILD))))
repl: $(REPL_BUILD)/lcontext/core.so
	@LCONTEXT_BUILD=$(REPL_BUILD) $(LUA) -i $(CURDIR)/tools/with_paths.lua

# Every suite; the last line is `N passed, N failed` summed over all of them.
test: deps build $(BUILD)/embed-host $(BUILD)/embed-poll-host $(BUILD)/stall.so
	@sh tools/runtests.sh

# C unit tests of the Lua-free core
$(BUILD)/test_%: csrc/core/test_%.c $(CORE_LIB_SRC) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) $(OPT) -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	    -Icsrc -o $@ $< $(CORE_LIB_SRC) -lm

# examples/embed: a C host with its own libev loop, lcontext linked in
$(BUILD)/embed-host: examples/embed/host.c $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) -I$(LUA_INC) -Icsrc -o $@ examples/embed/host.c \
	    $(CORE_LIB_SRC) $(BIND_SRC) -llua$(LUA_VERSION) $(LIBS)

# examples/embed: a C host whose loop is poll(2), driving lcontext's loop
# through lcontext_pollfd/lcontext_timeout_ms/lcontext_step
$(BUILD)/embed-poll-host: examples/embed/poll_host.c $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) -I$(LUA_INC) -Icsrc -o $@ examples/embed/poll_host.c \
	    $(CORE_LIB_SRC) $(BIND_SRC) -llua$(LUA_VERSION) $(LIBS)

# The allocation-failure sweep (README, "Tests"): a host with lcontext linked in,
# under ASan + UBSan (+ LeakSanitizer: not a module, so LSan works), whose
# allocator fails the N-th allocation, for every N of each scenario in
# tools/allocfail_scenarios.lua. `make allocfail` builds and runs it.
$(BUILD)/allocfail: tools/allocfail.c $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=undefined -I$(LUA_INC) -Icsrc -o $@ tools/allocfail.c \
	    $(CORE_LIB_SRC) $(BIND_SRC) -llua$(LUA_VERSION) $(LIBS)

allocfail: $(BUILD)/allocfail
	./$(BUILD)/allocfail

# The module built with AddressSanitizer + UBSan (run with libasan preloaded)
asan: $(CORE_LIB_SRC) $(BIND_SRC) $(HDRS)
	@mkdir -p build-asan/lcontext
	$(CC) $(CSTD) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	    -fno-sanitize-recover=undefined -fPIC -I$(LUA_INC) -Icsrc -shared $(LDFLAGS_MOD) \
	    -o build-asan/lcontext/core.so $(CORE_LIB_SRC) $(BIND_SRC) $(LIBS)

# instruction counts of the scheduler's paths, beside a base revision:
# make bench-cg BASE=<rev>
bench-cg: build
	@sh bench/callgrind.sh $(BASE)

# instructions per operation on LuaJIT, through the FFI path and through
# the classic C functions (README, "Performance")
bench-cg-jit: build-jit
	@sh bench/callgrind_jit.sh

bench: build
	@sh tools/deps.sh $(DEB_PKGS) $(BENCH_PKGS)
	-@$(MAKE) -s build-jit # the LuaJIT rows (no LuaJIT: bench/run.sh says so)
	@sh bench/run.sh

# The fuzzers, for longer than `make test` runs them: the timer wheel's
# (FUZZ_SECONDS) and the API fuzzer under ASan and valgrind (FUZZ_ASAN_SEEDS
# x FUZZ_ASAN_OPS, FUZZ_VG_SEEDS x FUZZ_VG_OPS), and the OpenResty backend's
# under ASan (FUZZ_NGX_SEEDS x FUZZ_NGX_OPS); FUZZ_SEED to replay.
fuzz: deps build asan
	@sh tools/deps.sh $(FUZZ_PKGS)
	@sh tools/fuzz.sh
	@FUZZ_ASAN_SEEDS=$${FUZZ_ASAN_SEEDS:-200} FUZZ_ASAN_OPS=$${FUZZ_ASAN_OPS:-5000} \
	 FUZZ_VG_SEEDS=$${FUZZ_VG_SEEDS:-10} FUZZ_NGX_SEEDS=$${FUZZ_NGX_SEEDS:-60} sh tools/fuzz_api.sh

# The Lua 5.4 suite with random pauses at clock reads (tools/stall.c):
# finds timing-fragile tests. Not part of `make test`.
stress: deps build $(BUILD)/stall.so
	@sh tools/stress.sh

# The stress test of the spinning worker (docs/openresty.md, "A worker that
# spun"): spec/ngx/run.sh, with the requests that die (200 aborted, half
# cancelled by on_abort and half killed, interleaved; ngx.exit; body
# timeouts), NGX_SPIN_RUNS times (6); a run whose worker spins fails.
# LCONTEXT_NGX_ON_SPIN=tools/ngx_spin_diag.sh catches a spinning worker.
ngx-spin: deps build-jit
	@i=0; f=0; while [ $$i -lt $${NGX_SPIN_RUNS:-6} ]; do i=$$((i + 1)); \
	  if LCONTEXT_NGX_ABORTS=1 LCONTEXT_NGX_MIX=1 sh spec/ngx/run.sh > /tmp/lcontext-ngx-spin.$$i.log 2>&1; then echo "run $$i: ok"; \
	  else f=$$((f + 1)); echo "run $$i: failed (/tmp/lcontext-ngx-spin.$$i.log)"; grep '^not ok' /tmp/lcontext-ngx-spin.$$i.log; fi; done; \
	  echo "$$((i - f)) passed, $$f failed"; [ $$f = 0 ]

$(BUILD)/stall.so: tools/stall.c
	@mkdir -p $(BUILD)
	$(CC) $(CSTD) -O2 -shared -fPIC -o $@ tools/stall.c -ldl

# The release (rockspec/lcontext-$(VERSION)-$(ROCKREV).rockspec): the source
# tarball, `git archive` of ROCK_REV (HEAD: commit first) under the prefix
# lcontext-$(VERSION)/, and the .src.rock, a zip of the release rockspec and
# that tarball (what `luarocks pack` makes, but without fetching source.url:
# offline). `luarocks install dist/lcontext-$(VERSION)-$(ROCKREV).src.rock`
# installs it.
VERSION     = 0.1.0
ROCKREV     = 1
ROCK_REV   ?= HEAD
DIST       ?= dist
ROCKSPEC    = rockspec/lcontext-$(VERSION)-$(ROCKREV).rockspec
TARBALL     = $(DIST)/lcontext-$(VERSION).tar.gz
SRC_ROCK    = $(DIST)/lcontext-$(VERSION)-$(ROCKREV).src.rock

rock: $(SRC_ROCK)
dist: rock

$(TARBALL): FORCE
	@mkdir -p $(DIST)
	git archive --format=tar.gz --prefix=lcontext-$(VERSION)/ -o $@ $(ROCK_REV)

$(SRC_ROCK): $(TARBALL) $(ROCKSPEC)
	@command -v zip >/dev/null || sh tools/deps.sh zip
	rm -rf $@ $(DIST)/pack && mkdir -p $(DIST)/pack
	cp $(ROCKSPEC) $(TARBALL) $(DIST)/pack/
	cd $(DIST)/pack && zip -q -X ../$(notdir $@) $(notdir $(ROCKSPEC)) $(notdir $(TARBALL))
	rm -rf $(DIST)/pack
	@echo "$@: luarocks install $@"

.PHONY: FORCE
FORCE:

# Also what `luarocks make` leaves in the checkout (it builds in place):
# csrc/**/*.o and lcontext/core.so.
clean:
	rm -rf $(BUILD) build-asan build-5.3 build-5.1 build-jit dist lcontext
	rm -f csrc/*.o csrc/core/*.o
