--- lcontext.patterns: deadline patterns from the field (docs/patterns.md).
--
-- adaptive_timeout, split, with_min_timeout, service_timeouts, classify,
-- classify_timeout, scope, fallback and errors. Built only from the public
-- API (contexts, after_func, the scheduler); nothing here blocks: whatever
-- waits does so by suspending the calling task. docs/patterns.md documents
-- every function and its rules.
--
-- init.lua calls the function this file returns with the public module and
-- adds the entries of the table it returns.
return function(context)
  local with_cancel, with_timeout = context.with_cancel, context.with_timeout
  local with_deadline = context.with_deadline
  local without_cancel, after_func = context.without_cancel, context.after_func
  local origin, now, time = context.origin, context.now, context.time
  local CANCELED, DEADLINE = context.canceled, context.deadline_exceeded

  local type, getmetatable, setmetatable = type, getmetatable, setmetatable
  local error, pcall, pairs, ipairs, tostring = error, pcall, pairs, ipairs, tostring
  local huge, ceil, floor = math.huge, math.ceil, math.floor
  local max, min = math.max, math.min
  local sort, fmt = table.sort, string.format
  local check = require "lcontext.check"
  -- primary and fallback may wait: check.pcall lets them on Lua 5.1 too
  local pack, unpack, wpcall = check.pack, check.unpack, check.pcall

  ---------------------------------------------------------------------------
  -- Argument checking, in luaL_argerror's words. `level` 3 points at the
  -- caller of the API function that called the check.

  local tname = check.tname

  local function argerror(n, fname, msg, level)
    error(fmt("bad argument #%d to '%s' (%s)", n, fname, msg), (level or 2) + 1)
  end

  local check_ctx = check.ctx

  local function check_self(self, mt, fname)
    if getmetatable(self) ~= mt then
      error(fmt("calling '%s' on bad self (%s expected, got %s)", fname,
        mt.__name, tname(self)), 3)
    end
  end

  local function check_table(v, fname, n, optional)
    if v == nil and optional then return {} end
    if type(v) ~= "table" then
      argerror(n, fname, "table expected, got " .. tname(v), 3)
    end
    return v
  end

  local function check_function(v, fname, n, optional)
    if v == nil and optional then return nil end
    if type(v) ~= "function" then
      argerror(n, fname, "function expected, got " .. tname(v), 3)
    end
    return v
  end

  -- a finite number (what `what` says about its sign is checked by `ok`)
  local function number_ok(v, ok)
    return type(v) == "number" and v == v and v ~= huge and v ~= -huge
      and (ok == nil or ok(v))
  end
  local function positive(v) return v > 0 end
  local function non_negative(v) return v >= 0 end
  local function integer_ge1(v) return v >= 1 and v == floor(v) end

  local function check_seconds(v, fname, n, optional)
    if v == nil and optional then return nil end
    if type(v) ~= "number" then
      argerror(n, fname, "number expected, got " .. tname(v), 3)
    elseif not number_ok(v) then
      argerror(n, fname, "number is not finite", 3)
    end
    return v
  end

  -- the options, read through lcontext.check (one validator for every
  -- options table of the API)
  local options, number, func, names = check.options, check.number, check.func, check.names
  local ADAPTIVE_OPTS = names { "base", "max", "window", "percentile", "multiplier", "min_samples", "clock" }
  local SPLIT_OPTS = names { "min", "reserve", "total" }
  local FALLBACK_OPTS = names { "timeout", "fallback_timeout", "any_error", "on_fallback" }
  local ERRORS_OPTS = names { "threshold" }
  -- service_timeouts' keys are service names, but for these two
  local SERVICE_RESERVED = names { "default", "overhead" }

  local function ms(s) return fmt("%.0f ms", s * 1000) end

  -- A cancel object written in Lua: callable with an optional cause, and
  -- closable (`local ctx, cancel <close> = ...`), like the core's.
  local Cancel = { __name = "context.cancel" }
  Cancel.__call = function(self, cause) self[1](cause) end
  Cancel.__close = function(self) self[1]() end
  Cancel.__tostring = function() return "context.cancel" end
  local function cancel_object(fn) return setmetatable({ fn }, Cancel) end

  local function call_cancel(cancel, cause)
    if cause == nil then cancel() else cancel(cause) end
  end

  local M = {}

  ---------------------------------------------------------------------------
  -- classify(err), classify_timeout(ctx)

  --- context.classify(err) -> "canceled" | "deadline_exceeded" | "other" | nil
  -- nil for nil (no error at all).
  local function classify(err)
    if err == nil then return nil end
    if rawequal(err, CANCELED) then return "canceled" end
    if rawequal(err, DEADLINE) then return "deadline_exceeded" end
    return "other"
  end
  M.classify = classify

  --- context.classify_timeout(ctx) -> "local" | "inherited" | nil
  -- "local": ctx's own timer ended it; "inherited": an ancestor's deadline
  -- did; nil: ctx is running, or ended by a cancellation.
  function M.classify_timeout(ctx)
    check_ctx(ctx, "classify_timeout", 1)
    if ctx:err() ~= DEADLINE then return nil end
    return rawequal(origin(ctx), ctx) and "local" or "inherited"
  end

  ---------------------------------------------------------------------------
  -- with_min_timeout(parent, seconds)

  -- A child of `parent` that keeps its values and explicit cancellation but
  -- none of its deadlines; `seconds` (or nil: no deadline of its own). The
  -- core links it below the parent for cancellation only, so a cancel of the
  -- parent (or of an ancestor, while the parent runs) reaches it at once,
  -- inside cancel(), with the same err and cause; a deadline does not.
  local detached = require("lcontext.core")._detached

  --- context.with_min_timeout(parent, seconds) -> ctx, cancel
  function M.with_min_timeout(parent, seconds)
    check_ctx(parent, "with_min_timeout", 1)
    check_seconds(seconds, "with_min_timeout", 2)
    return detached(parent, seconds)
  end

  ---------------------------------------------------------------------------
  -- adaptive_timeout{base, max, window, percentile, multiplier, min_samples}

  local Adaptive = { __name = "context.adaptive_timeout" }
  Adaptive.__index = Adaptive

  --- context.adaptive_timeout([opts]) -> at
  function M.adaptive_timeout(opts)
    local F = "adaptive_timeout"
    opts = options(opts, F, 1, ADAPTIVE_OPTS)
    local base = number(opts, "base", F, 1, { default = 1, lo = 0, lo_open = true })
    local maxv = number(opts, "max", F, 1, { default = base * 10,
      ok = function(v) return v >= base end, what = "a number >= base (" .. base .. ")" })
    local window = number(opts, "window", F, 1, { default = 100, lo = 1, integer = true })
    local p = number(opts, "percentile", F, 1, { default = 0.95,
      ok = function(v) return v > 0 and v <= 100 end, what = "in (0, 1], or a percent in (1, 100]" })
    if p > 1 then p = p / 100 end
    local mult = number(opts, "multiplier", F, 1, { default = 1.5, lo = 0, lo_open = true })
    local min_samples = number(opts, "min_samples", F, 1, { default = min(10, window),
      lo = 1, integer = true, hi = window })
    local clock = func(opts, "clock", F, 1) or now
    return setmetatable({
      base = base, max = maxv, window = window, p = p, mult = mult,
      min_samples = min_samples, clock = clock,
      buf = {}, n = 0, pos = 0,          -- the window: a ring of samples
      observed = 0, timeouts = 0, abandoned = 0,
      cached = nil,                      -- the learned timeout, until a sample
    }, Adaptive)
  end

  local function record(self, seconds)
    local pos = self.pos % self.window + 1
    self.buf[pos], self.pos = seconds, pos
    if self.n < self.window then self.n = self.n + 1 end
    self.observed = self.observed + 1
    self.cached = nil
  end

  -- the configured quantile of the window (nearest rank), or nil
  local function quantile(self)
    local n = self.n
    if n == 0 then return nil end
    local s = {}
    for i = 1, n do s[i] = self.buf[i] end
    sort(s)
    return s[max(1, ceil(self.p * n - 1e-9))], s
  end

  local function learned(self)
    local t = self.cached
    if t then return t end
    if self.n < self.min_samples then
      t = self.base
    else
      t = min(max(quantile(self) * self.mult, self.base), self.max)
    end
    self.cached = t
    return t
  end

  --- at:observe(seconds): record a duration
  function Adaptive.observe(self, seconds)
    check_self(self, Adaptive, "observe")
    if not number_ok(seconds, non_negative) then
      argerror(1, "observe", "non-negative finite number expected, got "
        .. (type(seconds) == "number" and tostring(seconds) or tname(seconds)), 2)
    end
    record(self, seconds)
  end

  --- at:timeout([ctx]) -> seconds: the learned timeout, clamped to what ctx
  -- has left (never below 0)
  function Adaptive.timeout(self, ctx)
    check_self(self, Adaptive, "timeout")
    local t = learned(self)
    if ctx ~= nil then
      check_ctx(ctx, "timeout", 1)
      local r = ctx:remaining()
      if r and r < t then t = max(r, 0) end
    end
    return t
  end

  --- at:with_timeout(parent) -> ctx, cancel
  -- The child ends by the learned timeout (or earlier with the parent).
  -- Its duration is recorded once, when it ends: at cancel() (the time
  -- since it was made), or when its own timer fires (the timeout value).
  -- Ended by the parent first: not a sample (counted as abandoned).
  function Adaptive.with_timeout(self, parent)
    check_self(self, Adaptive, "with_timeout")
    check_ctx(parent, "with_timeout", 1)
    local t = learned(self)
    local clock = self.clock
    local start = clock()
    local child, cancel = with_timeout(parent, t)
    local finished, stop = false, nil
    local function finish()
      if finished then return end
      finished = true
      if stop then stop() end
      local err = child:err()
      if err == nil then
        record(self, max(clock() - start, 0))
      elseif err == DEADLINE and rawequal(origin(child), child) then
        self.timeouts = self.timeouts + 1
        record(self, t)
      else
        self.abandoned = self.abandoned + 1
      end
    end
    stop = after_func(child, finish)
    return child, cancel_object(function(cause)
      finish()
      call_cancel(cancel, cause)
    end)
  end

  --- at:stats() -> table
  function Adaptive.stats(self)
    check_self(self, Adaptive, "stats")
    local q, sorted = quantile(self)
    local sum = 0
    for i = 1, self.n do sum = sum + self.buf[i] end
    return {
      timeout = learned(self),
      learning = self.n < self.min_samples,
      samples = self.n, observed = self.observed,
      timeouts = self.timeouts, abandoned = self.abandoned,
      percentile = self.p, quantile = q,
      min = sorted and sorted[1], max = sorted and sorted[#sorted],
      mean = self.n > 0 and sum / self.n or nil,
    }
  end

  ---------------------------------------------------------------------------
  -- split(ctx, shares [, opts])

  local Split = { __name = "context.split" }
  Split.__index = Split

  --- context.split(ctx, shares [, opts]) -> s
  -- shares: { name = weight, ... } or { {name, weight}, ... } (ordered).
  -- opts: min (seconds, or { name = seconds }), reserve (seconds kept back),
  -- total (the budget in seconds, clamped to what ctx has left).
  function M.split(ctx, shares, opts)
    local F = "split"
    check_ctx(ctx, F, 1)
    check_table(shares, F, 2)
    opts = options(opts, F, 3, SPLIT_OPTS)
    local weight, order, count = {}, nil, 0
    local function add(name, w, where)
      if type(name) ~= "string" then
        argerror(2, F, fmt("stage name must be a string, got %s%s", tname(name), where), 3)
      end
      if weight[name] then
        argerror(2, F, fmt("stage '%s' given twice", name), 3)
      end
      if not number_ok(w, positive) then
        argerror(2, F, fmt("share of '%s' must be a positive number, got %s", name,
          type(w) == "number" and tostring(w) or tname(w)), 3)
      end
      weight[name] = w
      count = count + 1
    end
    if shares[1] ~= nil then
      order = {}
      for i, entry in ipairs(shares) do
        if type(entry) ~= "table" then
          argerror(2, F, fmt("entry %d must be a {name, share} pair, got %s", i, tname(entry)), 2)
        end
        add(entry[1], entry[2], fmt(" (entry %d)", i))
        order[i] = entry[1]
      end
      for k in pairs(shares) do
        if type(k) ~= "number" or k < 1 or k > #shares or k ~= floor(k) then
          argerror(2, F, "mixes list entries and named shares", 2)
        end
      end
    else
      for name, w in pairs(shares) do add(name, w, "") end
    end
    if count == 0 then argerror(2, F, "no stages", 2) end
    local mins = opts.min
    if type(mins) == "table" then
      for name, m in pairs(mins) do
        if not weight[name] then
          argerror(3, F, fmt("field 'min' names an unknown stage '%s'", tostring(name)), 2)
        end
        if not number_ok(m, non_negative) then
          argerror(3, F, fmt("field 'min' of '%s' must be a non-negative number", name), 2)
        end
      end
    else
      mins = number(opts, "min", F, 3, { default = 0, lo = 0 })
    end
    local reserve = number(opts, "reserve", F, 3, { default = 0, lo = 0 })
    local total = number(opts, "total", F, 3, { lo = 0, lo_open = true })
    return setmetatable({
      ctx = ctx, weight = weight, order = order, started = {},
      mins = mins, reserve = reserve,
      end_at = total and time() + total,
    }, Split)
  end

  -- seconds the split may still hand out (after the reserve), or nil: no
  -- budget; and the time (epoch seconds) it was reckoned at. A stage ends
  -- at that time plus its share, so that no pause between the reckoning and
  -- the making of the stage can move its end into the reserve.
  local function available(self)
    local t = time()
    local d = self.ctx:deadline()
    if self.end_at and (d == nil or self.end_at < d) then d = self.end_at end
    if d == nil then return nil end
    return d - t - self.reserve, t
  end

  local function start_stage(self, name)
    self.started[name] = true
    local left = self.weight[name] -- the weights of the stages not yet started
    for n, w in pairs(self.weight) do
      if not self.started[n] then left = left + w end
    end
    local avail, at = available(self)
    if avail == nil then return with_cancel(self.ctx) end
    local give = avail * (self.weight[name] / left)
    local need = type(self.mins) == "table" and (self.mins[name] or 0) or self.mins
    if give <= 0 or give < need then
      return with_timeout(self.ctx, 0, fmt("split: stage '%s' gets %s, needs at least %s",
        name, ms(max(give, 0)), ms(need)))
    end
    return with_deadline(self.ctx, at + give)
  end

  --- s:stage(name) -> ctx, cancel
  -- Starts the stage: it gets its share of what is left now, among the
  -- stages not yet started (so the leftover of earlier stages is passed on).
  function Split.stage(self, name)
    check_self(self, Split, "stage")
    if self.weight[name] == nil then
      argerror(1, "stage", "unknown stage '" .. tostring(name) .. "'", 2)
    end
    if self.started[name] then
      argerror(1, "stage", "stage '" .. name .. "' already started", 2)
    end
    return start_stage(self, name)
  end

  --- s:next() -> name, ctx, cancel (the ordered list form only), or nil when
  -- every stage has started
  function Split.next(self)
    check_self(self, Split, "next")
    if not self.order then
      error("split: next() needs the ordered list form { {name, share}, ... }", 2)
    end
    for _, name in ipairs(self.order) do
      if not self.started[name] then
        return name, start_stage(self, name)
      end
    end
    return nil
  end

  --- s:remaining() -> seconds the stages not yet started share, or nil
  function Split.remaining(self)
    check_self(self, Split, "remaining")
    local a = available(self)
    return a and max(a, 0)
  end

  ---------------------------------------------------------------------------
  -- service_timeouts{ name = seconds, ..., default = s, overhead = s }

  local Services = { __name = "context.service_timeouts" }
  Services.__index = Services

  --- context.service_timeouts(t) -> st
  function M.service_timeouts(t)
    local F = "service_timeouts"
    check_table(t, F, 1)
    local timeouts = {}
    for name, v in pairs(t) do
      if type(name) ~= "string" then
        argerror(1, F, "service names must be strings, got " .. tname(name), 2)
      end
      -- a service name one edit away from a reserved key is taken for its
      -- misspelling (docs/patterns.md)
      local near = not SERVICE_RESERVED[name] and check.closest(name, SERVICE_RESERVED, 1)
      if near then check.unknown(F, 1, name, SERVICE_RESERVED) end
      local ok = name == "overhead" and non_negative or positive
      if not number_ok(v, ok) then
        argerror(1, F, fmt("'%s' must be a %s number of seconds, got %s", name,
          name == "overhead" and "non-negative" or "positive",
          type(v) == "number" and tostring(v) or tname(v)), 2)
      end
      if name ~= "overhead" then timeouts[name] = v end
    end
    return setmetatable({ timeouts = timeouts, overhead = t.overhead or 0 }, Services)
  end

  -- seconds for `name` under ctx: min(its timeout, remaining - overhead),
  -- and whether the second one is the smaller
  local function service_timeout(self, fname, ctx, name)
    if name ~= nil and type(name) ~= "string" then
      argerror(2, fname, "string expected, got " .. tname(name), 3)
    end
    local t = self.timeouts[name or "default"] or self.timeouts.default
    if not t then
      argerror(2, fname, fmt("unknown service '%s', and no default", tostring(name)), 3)
    end
    local r = ctx:remaining()
    if r and r - self.overhead < t then return r - self.overhead, true end
    return t, false
  end

  --- st:timeout(ctx, name) -> seconds (<= 0: nothing left)
  function Services.timeout(self, ctx, name)
    check_self(self, Services, "timeout")
    check_ctx(ctx, "timeout", 1)
    return (service_timeout(self, "timeout", ctx, name))
  end

  --- st:with(ctx, name) -> ctx, cancel
  function Services.with(self, ctx, name)
    check_self(self, Services, "with")
    check_ctx(ctx, "with", 1)
    local t, clamped = service_timeout(self, "with", ctx, name)
    if t <= 0 then
      return with_timeout(ctx, 0, fmt("service_timeouts: no time left for '%s' (reserve %s)",
        name or "default", ms(self.overhead)))
    end
    if clamped then
      -- clamped by the reserve: the child ends at the parent's deadline
      -- minus the reserve, so that no pause between reading what is left
      -- and making the child can move its end into the reserve
      return with_deadline(ctx, ctx:deadline() - self.overhead)
    end
    return with_timeout(ctx, t)
  end

  ---------------------------------------------------------------------------
  -- scope(parent)

  local Scope = { __name = "context.scope" }
  Scope.__index = Scope

  --- context.scope(parent) -> sc
  function M.scope(parent)
    check_ctx(parent, "scope", 1)
    local ctx, cancel = with_cancel(parent)
    return setmetatable({ ctx = ctx, cancel_scope = cancel, children = {},
      size = 0, swept = 0 }, Scope)
  end

  -- the running child called `name`, dropping it if it has ended
  local function live(self, name)
    local c = self.children[name]
    if c and c.ctx:is_done() then
      self.children[name] = nil
      self.size = self.size - 1
      c = nil
    end
    return c
  end

  local function sweep(self)
    for name in pairs(self.children) do live(self, name) end
    self.swept = self.size
  end

  local function check_name(name, fname)
    if type(name) ~= "string" then
      argerror(1, fname, "string expected, got " .. tname(name), 3)
    end
  end

  --- sc:start(name [, seconds]) -> ctx, cancel
  -- A name that is running is cancelled first (cause "scope: 'name' replaced").
  function Scope.start(self, name, seconds)
    check_self(self, Scope, "start")
    check_name(name, "start")
    check_seconds(seconds, "start", 2, true)
    local old = live(self, name)
    if old then
      old.cancel(fmt("scope: '%s' replaced", name))
      self.children[name] = nil
      self.size = self.size - 1
    end
    if self.size >= max(16, 2 * self.swept) then sweep(self) end
    local ctx, cancel
    if seconds then
      ctx, cancel = with_timeout(self.ctx, seconds)
    else
      ctx, cancel = with_cancel(self.ctx)
    end
    self.children[name] = { ctx = ctx, cancel = cancel }
    self.size = self.size + 1
    return ctx, cancel
  end

  --- sc:get(name) -> ctx of the running child, or nil
  function Scope.get(self, name)
    check_self(self, Scope, "get")
    check_name(name, "get")
    local c = live(self, name)
    return c and c.ctx
  end

  --- sc:cancel(name [, cause]) -> true if a running child was cancelled
  function Scope.cancel(self, name, cause)
    check_self(self, Scope, "cancel")
    check_name(name, "cancel")
    local c = live(self, name)
    if not c then return false end
    self.children[name] = nil
    self.size = self.size - 1
    call_cancel(c.cancel, cause)
    return true
  end

  --- sc:cancel_all([cause]) -> how many running children were cancelled.
  -- The scope stays usable.
  function Scope.cancel_all(self, cause)
    check_self(self, Scope, "cancel_all")
    local list = {}
    for name in pairs(self.children) do
      local c = live(self, name)
      if c then list[#list + 1] = c end
    end
    self.children, self.size, self.swept = {}, 0, 0
    for _, c in ipairs(list) do call_cancel(c.cancel, cause) end
    return #list
  end

  --- sc:names() -> sorted list of the running children's names
  function Scope.names(self)
    check_self(self, Scope, "names")
    sweep(self)
    local list = {}
    for name in pairs(self.children) do list[#list + 1] = name end
    sort(list)
    return list
  end

  --- sc:close([cause]): cancel the scope itself; children started later
  -- are done at once. Also runs at the end of a `<close>` variable.
  function Scope.close(self, cause)
    check_self(self, Scope, "close")
    call_cancel(self.cancel_scope, cause)
    self.children, self.size, self.swept = {}, 0, 0
  end
  Scope.__close = function(self) Scope.close(self) end

  --- sc:context() -> the scope's context (the children's parent)
  function Scope.context(self)
    check_self(self, Scope, "context")
    return self.ctx
  end

  ---------------------------------------------------------------------------
  -- fallback(ctx, primary, fallback [, opts])

  -- fn's outcome under the group/retry convention: failure is raising or
  -- returning nil, err. Returns ok, results (packed) or false, err.
  local function outcome(fn, ...)
    local r = pack(wpcall(fn, ...))
    if not r[1] then return false, r[2] end
    if r[2] == nil and r[3] ~= nil then return false, r[3] end
    return true, r
  end

  --- context.fallback(ctx, primary, fallback [, opts]) -> results
  -- opts: timeout (for primary), fallback_timeout, any_error (fall back on
  -- any failure, not only timeouts and cancellations), on_fallback(err).
  function M.fallback(ctx, primary, fb, opts)
    local F = "fallback"
    check_ctx(ctx, F, 1)
    check_function(primary, F, 2)
    check_function(fb, F, 3)
    opts = options(opts, F, 4, FALLBACK_OPTS)
    local ptimeout = number(opts, "timeout", F, 4)
    local ftimeout = number(opts, "fallback_timeout", F, 4)
    local on_fallback = func(opts, "on_fallback", F, 4)
    if ctx:is_done() then return nil, ctx:err() end

    local pctx, pcancel
    if ptimeout then pctx, pcancel = with_timeout(ctx, ptimeout)
    else pctx, pcancel = with_cancel(ctx) end
    local ok, r = outcome(primary, pctx)
    local primary_ended = pctx:is_done()
    pcancel()
    if ok then return unpack(r, 2, r.n) end
    local err = r
    -- the caller's own end: no time, or nobody, for a fallback
    if ctx:is_done() then return nil, ctx:err() end
    if classify(err) == "other" and not primary_ended and not opts.any_error then
      return nil, err
    end

    if on_fallback then on_fallback(err) end
    local fctx, fcancel = detached(ctx, ftimeout)
    local fok, fr = outcome(fb, fctx, err)
    fcancel()
    if fok then return unpack(fr, 2, fr.n) end
    return nil, fr
  end

  ---------------------------------------------------------------------------
  -- errors([opts]): an error collector

  local Errors = { __name = "context.errors" }
  Errors.__index = Errors

  --- context.errors([opts]) -> ec; opts.threshold: real failures that make
  -- should_abort() true (1)
  function M.errors(opts)
    opts = options(opts, "errors", 1, ERRORS_OPTS)
    local threshold = number(opts, "threshold", "errors", 1, { default = 1, lo = 1, integer = true })
    return setmetatable({ entries = {}, threshold = threshold,
      counts = { canceled = 0, deadline_exceeded = 0, other = 0 } }, Errors)
  end

  --- ec:add(op, err) -> the error's class, or nil (err nil: nothing added)
  function Errors.add(self, op, err)
    check_self(self, Errors, "add")
    if op == nil or op ~= op then
      argerror(1, "add", "operation name expected, got " .. (op == nil and "nil" or "NaN"), 2)
    end
    local kind = classify(err)
    if not kind then return nil end
    self.entries[#self.entries + 1] = { op = op, err = err, kind = kind }
    self.counts[kind] = self.counts[kind] + 1
    return kind
  end

  --- ec:should_abort([threshold]) -> true once `threshold` real failures
  -- (not canceled / deadline_exceeded) were added
  function Errors.should_abort(self, threshold)
    check_self(self, Errors, "should_abort")
    if threshold ~= nil and not number_ok(threshold, integer_ge1) then
      argerror(1, "should_abort", "integer >= 1 expected, got " ..
        (type(threshold) == "number" and tostring(threshold) or tname(threshold)), 2)
    end
    return self.counts.other >= (threshold or self.threshold)
  end

  --- ec:summary() -> { total, canceled, deadline_exceeded, other,
  --    by_op = { [op] = { total, canceled, deadline_exceeded, other } } }
  function Errors.summary(self)
    check_self(self, Errors, "summary")
    local c = self.counts
    local s = { total = #self.entries, canceled = c.canceled,
      deadline_exceeded = c.deadline_exceeded, other = c.other, by_op = {} }
    for _, e in ipairs(self.entries) do
      local o = s.by_op[e.op]
      if not o then
        o = { total = 0, canceled = 0, deadline_exceeded = 0, other = 0 }
        s.by_op[e.op] = o
      end
      o.total = o.total + 1
      o[e.kind] = o[e.kind] + 1
    end
    return s
  end

  --- ec:first() -> err, op: the first real failure, else the first error
  -- of any kind, else nil
  function Errors.first(self)
    check_self(self, Errors, "first")
    for _, e in ipairs(self.entries) do
      if e.kind == "other" then return e.err, e.op end
    end
    local e = self.entries[1]
    if e then return e.err, e.op end
    return nil
  end

  --- ec:list() -> { {op=, err=, kind=}, ... } in the order added (a copy)
  function Errors.list(self)
    check_self(self, Errors, "list")
    local out = {}
    for i, e in ipairs(self.entries) do
      out[i] = { op = e.op, err = e.err, kind = e.kind }
    end
    return out
  end

  return M
end
