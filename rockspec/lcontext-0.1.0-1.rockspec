-- The release rockspec. `make rock` builds, from the checkout, its source
-- tarball and dist/lcontext-0.1.0-1.src.rock, which installs offline:
--   luarocks --lua-version 5.4 install dist/lcontext-0.1.0-1.src.rock
rockspec_format = "3.0"
package = "lcontext"
version = "0.1.0-1"
source = {
  url = "https://example.invalid/lcontext/releases/download/v0.1.0/lcontext-0.1.0.tar.gz",
  dir = "lcontext-0.1.0",
  tag = "v0.1.0",
}
description = {
  summary = "Go's context package for Lua: cancellation trees, deadlines, values, causes",
  detailed = [[
    lcontext brings Go's context package to Lua. A C core holds the context
    tree and a hierarchical timer wheel; a libev loop drives it, so Lua
    coroutines (tasks) suspend on ctx:done(), sleeps and fd waits.
  ]],
  license = "MIT",
  homepage = "https://example.invalid/lcontext",
  issues_url = "https://example.invalid/lcontext/issues",
  maintainer = "the lcontext authors",
  labels = { "context", "cancellation", "deadline", "timeout", "libev", "coroutines" },
}
dependencies = {
  "lua >= 5.1",
  -- optional, for context.logger's JSON: lua-cjson, or dkjson
  -- optional, for lcontext.socket (libev backend): luasocket
}
external_dependencies = {
  LIBEV = { header = "ev.h", library = "ev" },
}
build = {
  type = "builtin",
  modules = {
    ["lcontext"] = "lua/lcontext/init.lua",
    ["lcontext.check"] = "lua/lcontext/check.lua",
    ["lcontext.ffi"] = "lua/lcontext/ffi.lua",
    ["lcontext.group"] = "lua/lcontext/group.lua",
    ["lcontext.retry"] = "lua/lcontext/retry.lua",
    ["lcontext.sync"] = "lua/lcontext/sync.lua",
    ["lcontext.tasks"] = "lua/lcontext/tasks.lua",
    ["lcontext.vclock"] = "lua/lcontext/vclock.lua",
    ["lcontext.socket"] = "lua/lcontext/socket.lua",
    ["lcontext.breaker"] = "lua/lcontext/breaker.lua",
    ["lcontext.hedge"] = "lua/lcontext/hedge.lua",
    ["lcontext.patterns"] = "lua/lcontext/patterns.lua",
    ["lcontext.metrics"] = "lua/lcontext/metrics.lua",
    ["lcontext.ngx"] = "lua/lcontext/ngx.lua",
    ["lcontext.ngx_socket"] = "lua/lcontext/ngx_socket.lua",
    ["lcontext.observe"] = "lua/lcontext/observe.lua",
    ["lcontext.trace"] = "lua/lcontext/trace.lua",
    ["lcontext.core"] = {
      sources = {
        "csrc/core/clock.c", "csrc/core/ctx.c", "csrc/core/tw.c",
        "csrc/core/wait.c",
        "csrc/l_core.c", "csrc/l_key.c", "csrc/l_cancel.c", "csrc/l_value.c",
        "csrc/l_ctx.c",
        "csrc/l_task.c", "csrc/l_callback.c", "csrc/l_signal.c",
        "csrc/l_loop.c", "csrc/l_park.c", "csrc/l_metrics.c",
        "csrc/l_sync.c", "csrc/l_clock.c", "csrc/l_ffi.c", "csrc/l_open.c",
      },
      incdirs = { "csrc", "$(LIBEV_INCDIR)" },
      libdirs = { "$(LIBEV_LIBDIR)" },
      libraries = { "ev", "m" },
    },
  },
  install = {
    -- the embedding header: $(luarocks show --rock-dir lcontext)/conf/lcontext.h
    conf = { ["lcontext.h"] = "csrc/lcontext.h" },
  },
  copy_directories = { "examples" },
}
-- `luarocks test`: the busted specs on the targeted Lua, with busted as
-- installed (offline; see tools/rocktest.lua)
test = {
  type = "command",
  script = "tools/rocktest.lua",
}
