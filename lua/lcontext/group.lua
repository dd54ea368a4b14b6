--- lcontext.group: Go's errgroup (README, "Resilience and
-- deadline patterns"; docs/resilience.md), with what its users asked for.
--
--   local g, gctx = context.group(parent [, limit])
--   g:go(fn, ...)      -- runs fn(gctx, ...) as a task; false once the group failed
--   g:try_go(fn, ...)  -- the same, but never waits for a free slot
--   g:wait()           -- nil, or the first failure; gctx is cancelled when it returns
--   g:errors()         -- every failure, in completion order (and their tracebacks)
--
-- A task fails by raising or by returning nil, err (err ~= nil). The first
-- failure cancels gctx with the failure as its cause. A raised string error
-- becomes a failure string that carries its traceback; any other raised value
-- (a table, context.canceled, ...) is kept as it is, so `==` still works, and
-- its traceback is in the second list that g:errors() returns.
return function(context)
  local go, select_ = context.go, context.select
  local type, error, tostring, getmetatable = type, error, tostring, getmetatable
  local running_co, co_status = coroutine.running, coroutine.status
  local check = require "lcontext.check"
  -- check.*: the runtime shims (Lua 5.1: an xpcall fn may wait in, and the
  -- traceback of the raise as seen from its message handler)
  local pack, unpack, xpcall, traceback = check.pack, check.unpack, check.xpcall, check.traceback

  local callable = check.callable

  local Group = {}
  Group.__index = Group
  Group.__name = "context.group"

  local reap -- (below)

  function Group:__tostring()
    reap(self)
    return ("context.group (%d running%s)"):format(self._running,
      self._failed and ", failed" or "")
  end

  local function check_self(g, fname)
    if getmetatable(g) ~= Group then
      error(("calling '%s' on bad self (context.group expected, got %s)")
        :format(fname, type(g)), 3)
    end
  end

  -- figures for context.metrics_text (lcontext_group_*)
  local stats = { groups = 0, ok = 0, failed = 0 }

  -- Record one task's failure: the first one cancels gctx with it as cause.
  local function fail(g, err, tb)
    local n = #g._errors + 1
    g._errors[n] = err
    g._tracebacks[n] = tb or false
    if not g._failed then
      g._failed = true
      g._first = err
      g._cancel(err)
    end
  end

  -- A member that ended without its body's bookkeeping: its coroutine was
  -- closed from outside (coroutine.close of a member parked in a wait), or
  -- it died outside the xpcall. It counts as a finished, failed member, at
  -- once: it must not stay "running" (a limit would never free its slot,
  -- and select would return at once for it, again and again).
  -- g._tasks maps each member to its coroutine (true until its body starts).
  -- reap_one(g, t) -> true if t was such a member (now counted)
  local CLOSED = "task's coroutine was closed"
  local function reap_one(g, t)
    local co = g._tasks[t]
    if co == nil then return false end
    local ended = t:status() ~= "running"
    if not ended and (co == true or co_status(co) ~= "dead") then return false end
    local err = CLOSED
    if ended then -- the core ended it: its own error (nil, err); no wait
      local _, e = t:wait()
      if e ~= nil then err = e end
    end
    g._tasks[t] = nil
    g._running = g._running - 1
    stats.failed = stats.failed + 1
    fail(g, err, false)
    return true
  end

  -- every member (O(members): where a count is asked for, or a slot awaited)
  function reap(g)
    for t in pairs(g._tasks) do
      reap_one(g, t) -- (clearing a field while pairs() runs is allowed)
    end
  end

  local function start(g, fn, ...)
    local args = pack(...)
    local me
    local function body()
      if g._tasks[me] then g._tasks[me] = running_co() end
      local tb
      local res = pack(xpcall(fn, function(e)
        if type(e) == "string" then
          tb = traceback(e, 2)
          return tb
        end
        tb = traceback("error object: " .. tostring(e), 2)
        if e == nil then return tb end -- error(nil): keep something to report
        return e
      end, g.ctx, unpack(args, 1, args.n)))
      g._running = g._running - 1
      g._tasks[me] = nil
      if not res[1] then
        stats.failed = stats.failed + 1
        fail(g, res[2], tb)
      elseif res[2] == nil and res.n >= 3 and res[3] ~= nil then
        stats.failed = stats.failed + 1
        fail(g, res[3], false)
      else
        stats.ok = stats.ok + 1
      end
    end
    me = go(body)
    g._running = g._running + 1
    g._tasks[me] = true
    return true
  end

  --- g:go(fn, ...) -> true | false, first_failure
  -- With a limit, suspends the caller while `limit` tasks run.
  function Group:go(fn, ...)
    check_self(self, "go")
    if not callable(fn) then
      error(("bad argument #1 to 'go' (function expected, got %s)"):format(type(fn)), 2)
    end
    while true do
      if self._failed or self._finished then return false, self._first end
      if not self._limit or self._running < self._limit then break end
      -- all slots taken: wait for one of the running tasks to end. Those that
      -- ended unseen (closed) are counted first: select must not get them.
      local waiting, n = {}, 0
      for t in pairs(self._tasks) do
        if not reap_one(self, t) then n = n + 1; waiting[n] = t end
      end
      if n == 0 then
        self._running = 0 -- (no member left: the count cannot say otherwise)
      elseif self._running >= self._limit and not self._failed then
        local t = waiting[select_(unpack(waiting, 1, n))]
        -- it ended, so its body or reap_one removes it: never wait on it again
        if not reap_one(self, t) and self._tasks[t] ~= nil then
          error("lcontext.group: select returned for a member still running", 2)
        end
      end
    end
    return start(self, fn, ...)
  end

  --- g:try_go(fn, ...) -> true | false: starts fn only if a slot is free now.
  function Group:try_go(fn, ...)
    check_self(self, "try_go")
    if not callable(fn) then
      error(("bad argument #1 to 'try_go' (function expected, got %s)"):format(type(fn)), 2)
    end
    if self._limit and self._running >= self._limit then reap(self) end
    if self._failed or self._finished then return false, self._first end
    if self._limit and self._running >= self._limit then return false end
    return start(self, fn, ...)
  end

  --- g:wait() -> nil | first failure. Waits for every task (those started
  -- while waiting too), then cancels gctx (with the first failure as cause).
  function Group:wait()
    check_self(self, "wait")
    while true do
      local t = next(self._tasks)
      if not t then break end
      if not reap_one(self, t) then
        t:wait()
        reap_one(self, t) -- if its body did not remove it
      end
    end
    if not self._finished then
      self._finished = true
      if self._failed then self._cancel(self._first) else self._cancel() end
    end
    return self._first
  end

  --- g:errors() -> { failure, ... }, { traceback or false, ... }
  -- Every failure so far, in completion order; the second list holds the
  -- traceback of each failure that was raised (false for `nil, err` returns).
  function Group:errors()
    check_self(self, "errors")
    return { unpack(self._errors) }, { unpack(self._tracebacks) }
  end

  --- g:running() -> the number of tasks of the group still running
  function Group:running()
    check_self(self, "running")
    reap(self)
    return self._running
  end

  --- context.group(parent [, limit]) -> g, gctx
  local function group(parent, limit)
    if getmetatable(parent) ~= "context" then
      error(("bad argument #1 to 'group' (context expected, got %s)"):format(type(parent)), 2)
    end
    if limit ~= nil then
      if type(limit) ~= "number" then
        error(("bad argument #2 to 'group' (number expected, got %s)"):format(type(limit)), 2)
      elseif limit ~= limit or limit < 1 or limit ~= math.floor(limit) then
        error("bad argument #2 to 'group' (limit must be a positive integer)", 2)
      end
      if limit == math.huge then limit = nil end
    end
    local gctx, cancel = context.with_cancel_cause(parent)
    stats.groups = stats.groups + 1
    local g = setmetatable({
      ctx = gctx, _cancel = cancel, _limit = limit,
      _running = 0, _tasks = {}, _errors = {}, _tracebacks = {},
      _failed = false, _finished = false, _first = nil,
    }, Group)
    return g, gctx
  end

  local function metrics_families()
    return {
      { name = "lcontext_groups_total", help = "Groups made with context.group.", type = "counter",
        samples = { { value = stats.groups } } },
      { name = "lcontext_group_tasks_total", help = "Group tasks finished, by outcome.",
        type = "counter", samples = { { labels = { outcome = "ok" }, value = stats.ok },
          { labels = { outcome = "failed" }, value = stats.failed } } },
    }
  end

  return { group = group, _metrics_group = metrics_families }
end
