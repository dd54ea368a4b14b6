--- lcontext.tasks: tasks that own a context (README, "Structured
-- concurrency"; docs/concurrency.md). The same on libev and in nginx.
--
--   local t = context.spawn(ctx, fn, ...)  -- fn(task_ctx, ...) in a task
--   t:cancel([cause]); t:context()         -- task_ctx: a child of ctx
--   context.current()                      -- the running task's context
--   context.shield(seconds, fn, ...)       -- fn(sctx, ...), out of reach of
--                                          -- outer cancellation, for at most seconds
--
-- The bound rule (Trio's cancel scopes, at every checkpoint): inside a
-- spawned task every wait of the backend (ctx:done(), sleep, wait_fd,
-- select, task:wait, channel and semaphore operations, and so every
-- helper) also ends when the task's context ends, even when the code waits
-- on another context: sleep and the operations return nil, task_ctx:err();
-- select returns nil, task_ctx:err(). So a library that knows nothing of
-- contexts still stops when its task is cancelled. The backends apply the
-- bound (check.bound); this module says which context bounds which
-- coroutine. A task started with context.go, even from a spawned task, has
-- no bound: spawn it with context.current() to keep it inside.
--
-- task_ctx is cancelled when fn returns, or raises (then with the error as
-- its cause, as errgroup's), so nothing started under it outlives the task
-- by accident.
return function(context)
  local check = require "lcontext.check"
  local go, with_cancel_cause, with_timeout, without_cancel, background =
    context.go, context.with_cancel_cause, context.with_timeout,
    context.without_cancel, context.background
  local running = coroutine.running
  local error, setmetatable = error, setmetatable
  local pack, unpack, pcall = check.pack, check.unpack, check.pcall
  local bound = check.bound
  local bound_ctx, MAIN = bound.ctx, bound.MAIN
  local set_bound = check.set_bound
  local check_ctx, argerr, tname, callable = check.ctx, check.argerr, check.tname, check.callable
  local task_methods, on_task_end = check.task_methods, check.on_task_end

  local M = {}

  -- task -> { ctx = task_ctx, cancel = its cancel }, while the task lives
  local owned = setmetatable({}, { __mode = "k" })

  local function body(tctx, fn, ...)
    set_bound(running() or MAIN, tctx)
    return fn(tctx, ...)
  end

  --- context.spawn(ctx, fn, ...) -> task running fn(task_ctx, ...)
  function M.spawn(ctx, fn, ...)
    check_ctx(ctx, "spawn", 1)
    if not callable(fn) then
      argerr("spawn", 2, "function expected, got " .. tname(fn))
    end
    local tctx, cancel = with_cancel_cause(ctx)
    bound.active = true
    local t = go(body, tctx, fn, ...)
    local o = { ctx = tctx, cancel = cancel, parent = running() or MAIN, fn = fn }
    owned[t] = o
    on_task_end(t, function(err) -- its error becomes the cause (as errgroup's)
      o.fn, o.parent = nil, nil -- (context.dump's: not kept once it has ended)
      if err ~= nil then cancel(err) else cancel() end
    end)
    return t
  end

  local function owner(t, fname)
    local o = owned[t]
    if o == nil then
      if not pcall(task_methods.status, t) then
        error(("calling '%s' on bad self (task expected, got %s)"):format(fname, tname(t)), 3)
      end
      error(("calling '%s' on a task started by context.go: only a task of "
        .. "context.spawn owns a context"):format(fname), 3)
    end
    return o
  end

  --- task:cancel([cause]): cancels the task's context (cause: any non-nil
  -- value; context.canceled by default). The task stops at its next wait.
  function task_methods.cancel(t, cause)
    local o = owner(t, "cancel")
    if cause == nil then o.cancel() else o.cancel(cause) end
  end

  --- task:context() -> the task's context
  function task_methods.context(t)
    return owner(t, "context").ctx
  end

  --- context.current() -> the running spawned task's context (inside a
  -- shield: the shield's), or background() elsewhere
  function M.current()
    return bound_ctx[running() or MAIN] or background()
  end

  --- context.shield(seconds, fn, ...) -> what fn(sctx, ...) returned.
  -- sctx keeps the values of context.current() but none of its
  -- cancellation, and ends after seconds: cleanup that an outer cancel
  -- cannot interrupt, but that cannot hang either. A raise in fn is raised
  -- again, once the shield is gone.
  function M.shield(seconds, fn, ...)
    check.seconds(seconds, "shield", 1)
    if not callable(fn) then
      argerr("shield", 2, "function expected, got " .. tname(fn))
    end
    local key = running() or MAIN
    local outer = bound_ctx[key]
    local sctx, cancel = with_timeout(without_cancel(outer or background()), seconds)
    bound.active = true
    set_bound(key, sctx)
    local r = pack(pcall(fn, sctx, ...))
    set_bound(key, outer)
    cancel()
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end

  -- {=== context.dump ===
  local getinfo, tostring, format = debug.getinfo, tostring, string.format
  local concat, ipairs = table.concat, ipairs

  local function secs(x) return format("%.3f s", x) end

  -- is this chunk one of lcontext's own Lua files?
  -- (or lua-resty-core's, which lcontext.ngx waits in: ngx/semaphore.lua)
  local function ours(src)
    return src:find("lcontext[/\\][%w_]+%.lua$") ~= nil
      or src:find("[/\\]ngx[/\\][%w_]+%.lua$") ~= nil
      or src:find("resty[/\\]core") ~= nil
  end

  -- where the task's function was defined: spawn knows it; for a task of
  -- go, the bottom Lua frame of its coroutine outside lcontext (a tail
  -- call may have replaced it: then "?")
  local function origin_of(e)
    local o = owned[e.task]
    local fn = o and o.fn or e.fn
    if type(fn) == "function" then
      local info = getinfo(fn, "S")
      if info.what == "C" then return "[C]" end
      return format("%s:%d", info.short_src, info.linedefined)
    end
    local co = e.co
    if co == nil then return "?" end
    local level, last = 0, nil
    while level < 200 do
      local info = getinfo(co, level, "S")
      if not info then break end
      if info.what ~= "C" and info.what ~= "tail" and not ours(info.source) then last = info end
      level = level + 1
    end
    if not last then return "?" end
    return format("%s:%d", last.short_src, last.linedefined)
  end

  -- the frames of the task's coroutine outside lcontext, innermost first
  local function user_frames(co)
    local out, level = {}, 0
    while level < 200 and #out < 12 do
      local info = getinfo(co, level, "Sln")
      if not info then break end
      if info.what ~= "C" and info.what ~= "tail" and not ours(info.source) then
        out[#out + 1] = format("%s:%d: in %s", info.short_src, info.currentline,
          info.name and ("function '" .. info.name .. "'")
          or info.what == "main" and "main chunk"
          or format("function <%s:%d>", info.short_src, info.linedefined))
      end
      level = level + 1
    end
    return out
  end

  local function describe_ctx(c)
    local recs = check.blocked_on and check.blocked_on[c]
    if recs then
      local parts = {}
      for k, r in ipairs(recs) do
        if r.kind == "acquire" then
          parts[k] = format("semaphore acquire of %d (%s)", r.weight, tostring(r.sem))
        else
          parts[k] = format("channel %s (%s)", r.kind, tostring(r.ch))
        end
      end
      return concat(parts, ", ")
    end
    local ev = check.event_of and check.event_of[c]
    if ev then return tostring(ev) end
    local line = tostring(c)
    local r = c:remaining()
    if r then line = line .. format(" (ends in %s)", secs(r)) end
    if c:is_done() then line = line .. " (done: " .. tostring(c:err()) .. ")" end
    return line
  end

  local function describe_wait(w, name_of)
    if w.kind == "ctx" then return describe_ctx(w.value)
    elseif w.kind == "task" then return "the end of " .. (name_of[w.value] or tostring(w.value))
    elseif w.kind == "sleep" then return format("a sleep, due in %s", secs(w.due or 0))
    elseif w.kind == "fd" then return format("fd %d (%s)", w.fd or -1, w.mode or "?")
    elseif w.kind == "sync" then return format("%s (%s)", w.what, tostring(w.value))
    end
    return w.kind
  end

  --- context.dump([file]) -> the live task tree as text; with a file
  -- (io.stderr, say), also writes it there. Each task: its name, state,
  -- how long it has waited, what it waits on, its context if spawned, and
  -- its traceback; spawned tasks under the task that spawned them.
  function M.dump(file)
    if file ~= nil and (type(file) ~= "userdata" and type(file) ~= "table" or not file.write) then
      argerr("dump", 1, "file expected (an object with :write), got " .. tname(file))
    end
    local list = check.task_list()
    local by_co, name_of, kids, roots = {}, {}, {}, {}
    for i, e in ipairs(list) do
      e.name = format("task %d", i)
      name_of[e.task] = e.name
      if e.co then by_co[e.co] = e end
    end
    for _, e in ipairs(list) do
      local o = owned[e.task]
      local p = o and by_co[o.parent]
      if p then
        kids[p] = kids[p] or {}
        kids[p][#kids[p] + 1] = e
      else
        roots[#roots + 1] = e
      end
    end
    local out = { format("lcontext: %d live task%s (%s backend)", #list, #list == 1 and "" or "s",
      context.backend or "libev") }
    -- iterative depth-first walk (no recursion over the tree)
    local stack = {}
    for i = #roots, 1, -1 do stack[#stack + 1] = { roots[i], 0 } end
    while #stack > 0 do
      local top = stack[#stack]
      stack[#stack] = nil
      local e, depth = top[1], top[2]
      local pad = string.rep("  ", depth)
      local head = format("%s%s (function at %s): %s", pad, e.name, origin_of(e), e.state or "?")
      if e.since then head = head .. format(" for %s", secs(e.since)) end
      out[#out + 1] = head
      local o = owned[e.task]
      if o then out[#out + 1] = pad .. "  context: " .. describe_ctx(o.ctx) end
      if e.waits then
        for _, w in ipairs(e.waits) do
          out[#out + 1] = pad .. "  waits on: " .. describe_wait(w, name_of)
        end
      end
      if e.co and e.state ~= "running" then
        local frames = user_frames(e.co)
        if #frames == 0 then
          out[#out + 1] = pad .. "  at: (no frame of its own: a tail call into lcontext)"
        end
        for k, line in ipairs(frames) do
          out[#out + 1] = pad .. (k == 1 and "  at: " or "      ") .. line
        end
      end
      local ks = kids[e]
      if ks then
        for i = #ks, 1, -1 do stack[#stack + 1] = { ks[i], depth + 1 } end
      end
    end
    local text = concat(out, "\n") .. "\n"
    if file then file:write(text) end
    return text
  end
  -- ===}

  return M
end
