--- lcontext.hedge: hedged requests, "The Tail at Scale" (Dean & Barroso,
-- 2013); docs/resilience.md.
--
--   context.hedge(ctx, fn, { delay = 0.05 [, attempts = 2] })
--     -> the first success's results | nil, err
--
-- fn(actx, attempt) runs as a task; if it has not succeeded after `delay`
-- seconds, a second attempt starts beside it (and so on, up to `attempts`).
-- The first success wins: the other attempts' contexts are cancelled and the
-- winner's results returned. A failed attempt starts the next one at once.
-- Every attempt's context is a child of ctx, and the wait is bounded by ctx:
-- nothing runs past the caller's deadline.
--
-- `delay` may be a number, a function returning one (asked once per call),
-- or an object with :delay() and, optionally, :observe(seconds), which is
-- told the duration of each winning attempt: context.latency_estimator{}
-- gives the p95 (or any quantile) of the recent durations.
return function(context)
  local type, error, tostring, getmetatable, pcall = type, error, tostring, getmetatable, pcall
  local min, max, ceil, huge = math.min, math.max, math.ceil, math.huge
  local sort = table.sort
  local now = context.now

  local check = require "lcontext.check"
  -- attempts may wait: check.pcall lets them on Lua 5.1 too
  local pack, unpack, wpcall = check.pack, check.unpack, check.pcall
  local argerr = check.argerr

  local callable = check.callable

  local finite = check.finite

  -----------------------------------------------------------------------------
  -- A latency estimator: a quantile of the last `size` observations.
  -----------------------------------------------------------------------------
  local Estimator = {}
  Estimator.__index = Estimator
  Estimator.__name = "context.latency_estimator"

  --- est:observe(seconds): record a duration
  function Estimator:observe(d)
    if not finite(d) or d < 0 then
      argerr("observe", 1, ("non-negative finite number expected, got %s"):format(tostring(d)))
    end
    self.pos = self.pos % self.size + 1
    self.samples[self.pos] = d
    if self.n < self.size then self.n = self.n + 1 end
    self.cached = nil
  end

  --- est:count() -> the number of durations held
  function Estimator:count() return self.n end

  --- est:delay() -> the quantile of the held durations (nearest rank),
  -- clamped to [min, max]; `initial` until min_samples are held
  function Estimator:delay()
    if self.n < self.min_samples then return self.initial end
    if not self.cached then
      local s = { unpack(self.samples, 1, self.n) }
      sort(s)
      local q = s[max(1, ceil(self.quantile * self.n))]
      self.cached = min(self.max, max(self.min, q))
    end
    return self.cached
  end

  -- the options, read through lcontext.check (one validator for every
  -- options table of the API)
  local options, number, func = check.options, check.number, check.func
  local ESTIMATOR_OPTS = check.names { "quantile", "size", "min_samples", "initial", "min", "max" }
  local HEDGE_OPTS = check.names { "delay", "attempts", "on_attempt", "retryable" }

  --- context.latency_estimator{quantile = 0.95, size = 100, min_samples = 10,
  ---   initial = 0.05, min = 0, max = math.huge} -> est
  local function latency_estimator(opts)
    local F = "latency_estimator"
    opts = options(opts, F, 1, ESTIMATOR_OPTS)
    local e = setmetatable({
      quantile = number(opts, "quantile", F, 1, { default = 0.95, lo = 0, hi = 1 }),
      size = number(opts, "size", F, 1, { default = 100, lo = 1, integer = true }),
      min_samples = number(opts, "min_samples", F, 1, { default = 10, lo = 0 }),
      initial = number(opts, "initial", F, 1, { default = 0.05, lo = 0 }),
      min = number(opts, "min", F, 1, { default = 0, lo = 0 }),
      max = number(opts, "max", F, 1, { default = huge, lo = 0, inf = true }),
      samples = {}, n = 0, pos = 0,
    }, Estimator)
    if e.min > e.max then argerr("latency_estimator", 1, "option 'min' exceeds 'max'") end
    e.min_samples = min(e.min_samples, e.size)
    return e
  end

  -----------------------------------------------------------------------------
  -- hedge
  -----------------------------------------------------------------------------
  local function failure_of(r)
    -- r: pack(pcall(fn, ...)); the error, or nil for a success
    if not r[1] then
      if r[2] == nil then return "error (nil) raised by the attempt" end
      return r[2]
    end
    if r[2] == nil and r.n >= 3 and r[3] ~= nil then return r[3] end
    return nil
  end

  local function hedge(ctx, fn, opts)
    if getmetatable(ctx) ~= "context" then
      argerr("hedge", 1, ("context expected, got %s"):format(type(ctx)))
    end
    if not callable(fn) then
      argerr("hedge", 2, ("function expected, got %s"):format(type(fn)))
    end
    if opts == nil then argerr("hedge", 3, "table expected, got nil") end
    options(opts, "hedge", 3, HEDGE_OPTS)
    local d, est = opts.delay, nil
    if type(d) == "table" and not callable(d) then
      local ok, f = pcall(function() return d.delay end)
      if not ok or not callable(f) then
        argerr("hedge", 3, "option 'delay': an object with a :delay() method expected")
      end
      est = d
      d = est:delay()
    elseif callable(d) then
      d = d()
    end
    if not finite(d) or d < 0 then
      argerr("hedge", 3, ("option 'delay': non-negative finite number expected, got %s")
        :format(tostring(d)))
    end
    local attempts = number(opts, "attempts", "hedge", 3, { default = 2, lo = 1, integer = true })
    local on_attempt = func(opts, "on_attempt", "hedge", 3)
    local retryable = func(opts, "retryable", "hedge", 3)
    local observe = est and est.observe

    local e = ctx:err()
    if e then return nil, e end

    local tasks, cancels, starts, live = {}, {}, {}, {}
    local started, running, next_at = 0, 0, 0
    local last_err

    local function launch()
      started = started + 1
      local i = started
      local actx, cancel = context.with_cancel(ctx)
      cancels[i] = cancel
      if on_attempt then on_attempt(i) end
      starts[i] = now()
      tasks[i] = context.go(function() return pack(wpcall(fn, actx, i)) end)
      live[i] = true
      running = running + 1
      next_at = now() + d
    end

    local function cancel_all()
      for i = 1, started do cancels[i]() end
    end

    local function finish(...)
      cancel_all()
      return ...
    end

    local function run()
      launch()
      while true do
        local w, which = { ctx }, {}
        for i = 1, started do
          if live[i] then
            w[#w + 1] = tasks[i]
            which[#w] = i
          end
        end
        local hedge_slot
        if started < attempts then
          w[#w + 1] = max(0, next_at - now())
          hedge_slot = #w
        end
        local k, kerr = context.select(unpack(w))
        if k == nil then -- a spawned task's own context ended (lcontext.tasks)
          return finish(nil, kerr)
        elseif k == 1 or ctx:err() then
          return finish(nil, ctx:err())
        elseif k == hedge_slot then
          launch()
        else
          local i = which[k]
          live[i] = nil
          running = running - 1
          local r, werr = tasks[i]:wait()
          local err
          if type(r) ~= "table" then
            -- the task ended before its function returned: its coroutine
            -- was closed (nil, "task's coroutine was closed"): a failed attempt
            err = werr
            if err == nil then err = "attempt " .. i .. " ended without a result" end
          else
            err = failure_of(r)
          end
          if err == nil then
            if observe then observe(est, now() - starts[i]) end
            return finish(unpack(r, 2, r.n))
          end
          last_err = err
          if retryable and not retryable(err) then return finish(nil, err) end
          if started < attempts then
            launch()                     -- a failure: the next attempt at once
          elseif running == 0 then
            return finish(nil, last_err) -- every attempt failed
          end
        end
      end
    end

    -- if a callback raises, no attempt is left running unasked
    local r = pack(wpcall(run))
    if not r[1] then
      cancel_all()
      error(r[2], 0)
    end
    return unpack(r, 2, r.n)
  end

  return { hedge = hedge, latency_estimator = latency_estimator }
end
