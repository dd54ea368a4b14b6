--- lcontext.group: Go's errgroup (README, "Resilience and
-- deadline patterns"; docs/resilience.md), with what its users asked for,
-- and the policies of structured concurrency's other scopes.
--
--   local g, gctx = context.group(parent [, limit | opts])
--   g:go(fn, ...)      -- runs fn(gctx, ...) as a task; false once the group is decided
--   g:try_go(fn, ...)  -- the same, but never waits for a free slot
--   g:wait()           -- nil, or the group's failure (policy "any": nil, the winner's values)
--   g:errors()         -- every failure, in completion order (and their tracebacks)
--   g:results()        -- every member's outcome, in start order
--   g:cancel([cause])  -- cancels gctx; nothing starts any more
--   context.group_scope(parent, fn [, opts])  -- fn(g, gctx), then g:wait(), always
--
-- opts: limit, policy = "fail_fast" (default: the first failure cancels
-- gctx) | "supervise" (failures are recorded, the rest go on) | "any" (the
-- first success cancels the rest) | "quorum" (quorum = k successes do),
-- results = false (keep no outcomes).
--
-- A task fails by raising or by returning nil, err (err ~= nil). A raised
-- string error becomes a failure string that carries its traceback; any
-- other raised value (a table, context.canceled, ...) is kept as it is, so
-- `==` still works, and its traceback is in the second list that
-- g:errors() returns.
return function(context)
  local go, select_ = context.go, context.select
  local type, error, tostring, getmetatable, setmetatable, next =
    type, error, tostring, getmetatable, setmetatable, next
  local running_co, co_status = coroutine.running, coroutine.status
  local check = require "lcontext.check"
  -- check.*: the runtime shims (Lua 5.1: an xpcall fn may wait in, and the
  -- traceback of the raise as seen from its message handler)
  local pack, unpack, xpcall, pcall, traceback =
    check.pack, check.unpack, check.xpcall, check.pcall, check.traceback
  local callable, argerr, tname = check.callable, check.argerr, check.tname
  local bound = check.bound
  local bound_ctx, MAIN = bound.ctx, bound.MAIN

  -- Sentinels, printed (and concatenated) as their messages, like the core's.
  local function sentinel(name, msg)
    return setmetatable({}, {
      __name = name,
      __tostring = function() return msg end,
      __concat = function(a, b) return tostring(a) .. tostring(b) end,
      __newindex = function() error(name .. " is read-only", 2) end,
      __metatable = name,
    })
  end
  -- the cause gctx is cancelled with once an "any" or "quorum" group has
  -- the successes it needs: the members still running are not needed
  local group_done = sentinel("context.group_done", "group: done")
  -- the failure of an "any" or "quorum" group that had too few members to
  -- reach its count, none of them failed (no member failure to report)
  local group_short = sentinel("context.group_short", "group: too few members to succeed")

  local Group = {}
  Group.__index = Group
  Group.__name = "context.group"

  local reap -- (below)

  function Group:__tostring()
    reap(self)
    return ("context.group (%s%d running%s)"):format(
      self._policy == "fail_fast" and "" or self._policy .. ", ", self._running,
      self._failed and ", failed" or (self._decided and ", done" or ""))
  end

  local function check_self(g, fname)
    if getmetatable(g) ~= Group then
      error(("calling '%s' on bad self (context.group expected, got %s)")
        :format(fname, type(g)), 3)
    end
  end

  -- figures for context.metrics_text (lcontext_group_*)
  local stats = { groups = 0, ok = 0, failed = 0 }

  -- The state of a group (fields of g):
  --   _policy, _k       the policy; _k: the successes that decide it ("any": 1)
  --   _running, _tasks  members not ended; member task -> its coroutine
  --   _records          one per member in start order (false: results = false)
  --   _errors, _tracebacks, _first   every failure; the first of them
  --   _ok               successes so far
  --   _decided          the policy's outcome is known: gctx is cancelled and
  --                     g:go starts nothing. _failed: that outcome is a failure
  --   _failure          what wait returns first (nil: no failure)
  --   _winner           "any": the winner's values (a pack)
  --   _waiting          wait() has been called: the set of members is closed,
  --                     so "any" and "quorum" can tell that they cannot succeed
  --   _stopped, _finished   g:cancel was called; wait returned

  -- "any" and "quorum": once wait() closed the set of members, fail as soon
  -- as the members still running cannot bring the successes to _k.
  local function judge(g)
    if g._decided or not g._waiting then return end
    if g._ok + g._running < g._k then
      g._decided, g._failed = true, true
      local f = g._first
      if f == nil then f = group_short end
      g._failure = f
      g._cancel(f)
    end
  end

  -- A member ended. ok: values is its returned values (a pack); else err is
  -- its failure and tb the traceback of a raise (or false). outside: it was
  -- ended from outside (its coroutine closed): failed, whatever gctx says
  -- (a sibling closed first made CLOSED gctx's cause)
  local function ended(g, rec, ok, values, err, tb, outside)
    if ok then
      stats.ok = stats.ok + 1
      g._ok = g._ok + 1
      if rec then rec.status, rec.values = "ok", values end
      if g._k and not g._decided and g._ok >= g._k then
        g._decided = true
        if g._policy == "any" then g._winner = values end
        g._cancel(group_done)
      end
    else
      stats.failed = stats.failed + 1
      if rec then
        -- it stopped because gctx ended (its err or cause is what it
        -- returned), rather than on its own
        local cerr = g.ctx:err()
        local canceled = not outside and cerr ~= nil and (err == cerr or err == g.ctx:cause())
        rec.status, rec.err = canceled and "canceled" or "failed", err
        if tb then rec.traceback = tb end
      end
      local n = #g._errors + 1
      g._errors[n] = err
      g._tracebacks[n] = tb or false
      if n == 1 then g._first = err end
      local policy = g._policy
      if policy == "fail_fast" then
        if not g._failed then
          g._decided, g._failed, g._failure = true, true, err
          g._cancel(err)
        end
      elseif policy == "supervise" then
        if n == 1 then g._failure = err end
      end
    end
    if g._k then judge(g) end
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
    local is_over = t:status() ~= "running"
    if not is_over and (co == true or co_status(co) ~= "dead") then return false end
    local err = CLOSED
    if is_over then -- the core ended it: its own error (nil, err); no wait
      local _, e = t:wait()
      if e ~= nil then err = e end
    end
    g._tasks[t] = nil
    g._running = g._running - 1
    ended(g, g._recs[t], false, nil, err, false, true)
    g._recs[t] = nil
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
    local rec = g._records and { status = "running" }
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
      g._recs[me] = nil
      if not res[1] then
        ended(g, rec, false, nil, res[2], tb)
      elseif res[2] == nil and res.n >= 3 and res[3] ~= nil then
        ended(g, rec, false, nil, res[3], false)
      else
        ended(g, rec, true, pack(unpack(res, 2, res.n)))
      end
    end
    me = go(body)
    g._running = g._running + 1
    g._tasks[me] = true
    if rec then
      g._recs[me] = rec
      g._records[#g._records + 1] = rec
    end
    return true
  end

  -- The bound of the calling spawned task (context.spawn) when it has
  -- ended: the backends' waits return at once then, so a group waiting for
  -- its members there must act on it rather than wait again.
  local function bound_ended()
    if not bound.active then return nil end
    local b = bound_ctx[running_co() or MAIN]
    if b ~= nil and b:err() ~= nil then return b end
    return nil
  end

  --- g:go(fn, ...) -> true | false, the group's failure
  -- With a limit, suspends the caller while `limit` tasks run.
  function Group:go(fn, ...)
    check_self(self, "go")
    if not callable(fn) then
      error(("bad argument #1 to 'go' (function expected, got %s)"):format(type(fn)), 2)
    end
    while true do
      if self._decided or self._stopped or self._finished then return false, self._failure end
      if not self._limit or self._running < self._limit then break end
      -- all slots taken: wait for one of the running tasks to end. Those that
      -- ended unseen (closed) are counted first: select must not get them.
      local waiting, n = {}, 0
      for t in pairs(self._tasks) do
        if not reap_one(self, t) then n = n + 1; waiting[n] = t end
      end
      if n == 0 then
        self._running = 0 -- (no member left: the count cannot say otherwise)
      elseif self._running >= self._limit and not self._decided then
        local i, err = select_(unpack(waiting, 1, n))
        -- a spawned caller that is cancelled starts nothing more
        if i == nil then return false, err end
        local t = waiting[i]
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
    if self._decided or self._stopped or self._finished then return false, self._failure end
    if self._limit and self._running >= self._limit then return false end
    return start(self, fn, ...)
  end

  -- wait for every member; "bound" if the caller's bound ended first
  local function wait_members(g)
    while true do
      local t = next(g._tasks)
      if not t then return nil end
      if not reap_one(g, t) then
        if bound_ended() then return "bound" end
        t:wait()
        reap_one(g, t) -- if its body did not remove it
      end
    end
  end

  --- g:wait() -> nil | the group's failure; "any": nil, the winner's values.
  -- Waits for every task (those started while waiting too), then cancels
  -- gctx (with the failure as cause). In a spawned task that is cancelled
  -- meanwhile, the group is cancelled with the task's cause, and wait goes
  -- on waiting for the members: none outlives it.
  function Group:wait()
    check_self(self, "wait")
    if not self._waiting then
      self._waiting = true
      if self._k then judge(self) end
    end
    if wait_members(self) == "bound" then
      local key = running_co() or MAIN
      local b = bound_ctx[key]
      self._stopped = true
      self._cancel(b:cause())
      -- lifted while the members end, as Trio's nursery waits for its
      -- children in a cancelled scope (the scope cancelled them too)
      check.set_bound(key, nil)
      local ok, e = pcall(wait_members, self)
      check.set_bound(key, b)
      if not ok then error(e, 0) end
    end
    if not self._finished then
      self._finished = true
      if self._failed then self._cancel(self._failure) else self._cancel() end
    end
    local w = self._winner
    if w then return nil, unpack(w, 1, w.n) end
    return self._failure
  end

  --- g:cancel([cause]): cancels gctx (cause: any non-nil value;
  -- context.canceled by default); g:go starts nothing after it. The members
  -- end at their next wait; g:wait() still waits for them.
  function Group:cancel(cause)
    check_self(self, "cancel")
    self._stopped = true
    if cause == nil then self._cancel() else self._cancel(cause) end
  end

  -- <close> (Lua 5.4): cancel, with the error that closes the block as
  -- cause, then wait. Waiting yields in a task: the runtime must allow a
  -- yield in __close there (5.4.4 does); where it cannot, the wait raises,
  -- with the members cancelled already.
  function Group:__close(err)
    self:cancel(err)
    self:wait()
  end

  --- g:errors() -> { failure, ... }, { traceback or false, ... }
  -- Every failure so far, in completion order; the second list holds the
  -- traceback of each failure that was raised (false for `nil, err` returns).
  function Group:errors()
    check_self(self, "errors")
    return { unpack(self._errors) }, { unpack(self._tracebacks) }
  end

  --- g:results() -> { { status = "ok" | "failed" | "canceled" | "running",
  --   values = { n = ..., ... } (ok), err = ..., traceback = ... }, ... }
  -- Every member, in start order; fresh tables at each call.
  function Group:results()
    check_self(self, "results")
    if not self._records then
      error("calling 'results' on a group made with results = false", 2)
    end
    reap(self)
    local out = {}
    for i, r in ipairs(self._records) do
      local c = { status = r.status, err = r.err, traceback = r.traceback }
      local v = r.values
      if v then c.values = pack(unpack(v, 1, v.n)) end
      out[i] = c
    end
    return out
  end

  --- g:running() -> the number of tasks of the group still running
  function Group:running()
    check_self(self, "running")
    reap(self)
    return self._running
  end

  local POLICIES = { "fail_fast", "supervise", "any", "quorum" }
  local OPTS = check.names { "limit", "policy", "quorum", "results" }

  -- parse(fname, n, arg) -> limit (nil: none), policy, k, keep_results
  -- arg: nil, a limit (as context.group always took), or an options table
  local function parse(fname, n, arg)
    if arg == nil then return nil, "fail_fast", nil, true end
    if type(arg) == "number" then
      if arg ~= arg or arg < 1 or arg ~= math.floor(arg) then
        argerr(fname, n, "limit must be a positive integer")
      end
      if arg == math.huge then return nil, "fail_fast", nil, true end
      return arg, "fail_fast", nil, true
    end
    if type(arg) ~= "table" then
      argerr(fname, n, "number or options table expected, got " .. tname(arg))
    end
    check.options(arg, fname, n, OPTS)
    local limit = check.number(arg, "limit", fname, n, { lo = 1, integer = true, inf = true })
    if limit == math.huge then limit = nil end
    local k = check.number(arg, "quorum", fname, n, { lo = 1, integer = true })
    local policy = check.oneof(arg, "policy", fname, n, POLICIES, k and "quorum" or "fail_fast")
    if policy == "quorum" and k == nil then
      argerr(fname, n, "policy \"quorum\" needs option 'quorum' (the successes that decide)")
    elseif k ~= nil and policy ~= "quorum" then
      argerr(fname, n, ("option 'quorum' goes with policy \"quorum\", not %q"):format(policy))
    end
    if policy == "any" then k = 1 end
    local keep = arg.results
    if keep ~= nil and type(keep) ~= "boolean" then
      argerr(fname, n, "option 'results': boolean expected, got " .. tname(keep))
    end
    return limit, policy, k, keep ~= false
  end

  local function new(parent, limit, policy, k, keep)
    local gctx, cancel = context.with_cancel_cause(parent)
    stats.groups = stats.groups + 1
    local g = setmetatable({
      ctx = gctx, _cancel = cancel, _limit = limit, _policy = policy, _k = k,
      _running = 0, _tasks = {}, _recs = {}, _records = keep and {},
      _errors = {}, _tracebacks = {}, _first = nil, _ok = 0,
      _decided = false, _failed = false, _failure = nil, _winner = nil,
      _waiting = false, _stopped = false, _finished = false,
    }, Group)
    return g, gctx
  end

  --- context.group(parent [, limit | opts]) -> g, gctx
  local function group(parent, opts)
    if getmetatable(parent) ~= "context" then
      error(("bad argument #1 to 'group' (context expected, got %s)"):format(type(parent)), 2)
    end
    return new(parent, parse("group", 2, opts))
  end

  --- context.group_scope(parent, fn [, limit | opts]) -> what g:wait() returns
  -- fn(g, gctx) starts members; the members never outlive the call: it
  -- waits for them, and if fn raises, it cancels gctx (the error as cause),
  -- waits, then raises the error again.
  local function group_scope(parent, fn, opts)
    check.ctx(parent, "group_scope", 1)
    if not callable(fn) then
      argerr("group_scope", 2, "function expected, got " .. tname(fn))
    end
    local g, gctx = new(parent, parse("group_scope", 3, opts))
    local ok, err = pcall(fn, g, gctx)
    if not ok then
      g:cancel(err)
      g:wait()
      error(err, 0)
    end
    return g:wait()
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

  return { group = group, group_scope = group_scope, group_done = group_done,
    group_short = group_short, _metrics_group = metrics_families }
end
