--- lcontext.retry: retries with exponential backoff and jitter, deadline
-- aware, with a structured give-up and retry budgets (docs/resilience.md).
--
--   context.retry(ctx, fn, opts) -> fn's results | nil, last_err, attempts, reason
--   context.backoff(opts)        -> b; b:next() gives the successive delays (pure)
--   context.retry_budget(opts)   -> a budget shared by many retry calls
--
-- reason: "exhausted", "not_retryable", "deadline", "canceled" or "budget".
return function(context)
  local type, pcall, getmetatable = type, pcall, getmetatable
  local min, max, floor = math.min, math.max, math.floor
  local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded

  -- check.argerr raises "bad argument #n to 'fname' (msg)" at the first
  -- caller outside lcontext's files (the user's code)
  local check = require "lcontext.check"
  -- fn may wait: check.pcall lets it on Lua 5.1 too
  local pack, unpack, wpcall = check.pack, check.unpack, check.pcall
  local argerr = check.argerr

  local callable = check.callable

  -- the options, read through lcontext.check (one validator for every
  -- options table of the API)
  local options, number, func, oneof = check.options, check.number, check.func, check.oneof
  local names = check.names

  local BACKOFF_OPTS = names { "base", "factor", "max", "jitter", "random" }
  local RETRY_OPTS = names { "attempts", "base", "factor", "max", "jitter", "random",
    "max_elapsed", "attempt_timeout", "retryable", "on_retry", "budget" }
  local BUDGET_OPTS = names { "kind", "max_tokens", "token_ratio", "ratio", "min_per_second", "ttl", "clock" }

  -----------------------------------------------------------------------------
  -- Backoff: the delays, as a pure computation (no clock, no sleeping).
  -- AWS, "Exponential Backoff And Jitter" (2015), with n the retry number
  -- (1 for the delay after the first failure) and cap = max:
  --   none:         min(cap, base * factor^(n-1))
  --   full:         random(0, min(cap, base * factor^(n-1)))
  --   equal:        t/2 + random(0, t/2), t = min(cap, base * factor^(n-1))
  --   decorrelated: min(cap, random(base, previous * 3)), previous starting at base
  -----------------------------------------------------------------------------
  local jitters = { "full", "equal", "decorrelated", "none" }

  local Backoff = {}
  Backoff.__index = Backoff
  Backoff.__name = "context.backoff"

  local function backoff_opts(fname, argn, opts)
    return {
      base = number(opts, "base", fname, argn, { default = 0.1, lo = 0 }),
      factor = number(opts, "factor", fname, argn, { default = 2, lo = 1 }),
      max = number(opts, "max", fname, argn, { default = 5, lo = 0 }),
      jitter = oneof(opts, "jitter", fname, argn, jitters, "full"),
      random = func(opts, "random", fname, argn) or check.random,
    }
  end

  local function new_backoff(o)
    return setmetatable({ o = o, n = 0, prev = o.base }, Backoff)
  end

  --- b:next() -> the delay before the next retry (seconds)
  function Backoff:next()
    local o = self.o
    self.n = self.n + 1
    local rnd = o.random
    if o.jitter == "decorrelated" then
      local hi = max(o.base, self.prev * 3)
      local d = min(o.max, o.base + rnd() * (hi - o.base))
      self.prev = d
      return d
    end
    local t = min(o.max, o.base * o.factor ^ (self.n - 1))
    if o.jitter == "none" then return t end
    if o.jitter == "full" then return rnd() * t end
    return t / 2 + rnd() * (t / 2) -- equal
  end

  --- b:reset(): start again from the first delay
  function Backoff:reset()
    self.n, self.prev = 0, self.o.base
    return self
  end

  --- context.backoff{base, factor, max, jitter, random} -> b
  local function backoff(opts)
    opts = options(opts, "backoff", 1, BACKOFF_OPTS)
    return new_backoff(backoff_opts("backoff", 1, opts))
  end

  -----------------------------------------------------------------------------
  -- Retry budgets, shared between calls. The interface retry uses (a budget
  -- of your own may implement it, e.g. over shared memory):
  --   budget:on_request()  once per retry() call, before the first attempt
  --   budget:on_success()  after an attempt that succeeded
  --   budget:on_failure()  after an attempt that failed with a retryable error
  --   budget:try_retry()   -> boolean: may this call retry? (a retry it allows
  --                        is counted against the budget)
  -----------------------------------------------------------------------------
  local TokenBucket = {}
  TokenBucket.__index = TokenBucket
  TokenBucket.__name = "context.retry_budget"

  -- gRPC retry throttling: tokens start at max_tokens; each failure takes 1,
  -- each success gives back token_ratio (never above max_tokens); retries are
  -- allowed only while tokens > max_tokens / 2.
  function TokenBucket:on_request() end
  function TokenBucket:on_success()
    self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)
  end
  function TokenBucket:on_failure()
    self.tokens = max(0, self.tokens - 1)
  end
  function TokenBucket:try_retry()
    if self.tokens > self.max_tokens / 2 then
      self.retries = self.retries + 1
      return true
    end
    self.refused = self.refused + 1
    return false
  end
  function TokenBucket:stats()
    return { kind = "token_bucket", tokens = self.tokens, max_tokens = self.max_tokens,
      retries = self.retries, refused = self.refused }
  end

  -- Ratio budget (Finagle's RetryBudget): over a sliding window of `ttl`
  -- seconds, retries may be at most `ratio` of the requests, plus
  -- `min_per_second` retries a second that are always allowed.
  local Ratio = {}
  Ratio.__index = Ratio
  Ratio.__name = "context.retry_budget"
  local NBUCKETS = 10

  -- the bucket for now, reset if it holds an older period
  local function ratio_bucket(self)
    local idx = floor(self.clock() / (self.ttl / NBUCKETS))
    local slot = idx % NBUCKETS + 1
    local b = self.buckets[slot]
    if b.idx ~= idx then b.idx, b.requests, b.retries = idx, 0, 0 end
    return b, idx
  end

  local function ratio_sums(self)
    local _, idx = ratio_bucket(self)
    local req, ret = 0, 0
    for _, b in ipairs(self.buckets) do
      if b.idx and b.idx > idx - NBUCKETS and b.idx <= idx then
        req, ret = req + b.requests, ret + b.retries
      end
    end
    return req, ret
  end

  function Ratio:on_request()
    local b = ratio_bucket(self)
    b.requests = b.requests + 1
  end
  function Ratio:on_success() end
  function Ratio:on_failure() end
  function Ratio:try_retry()
    local req, ret = ratio_sums(self)
    if ret + 1 <= self.ratio * req + self.min_per_second * self.ttl then
      local b = ratio_bucket(self)
      b.retries = b.retries + 1
      return true
    end
    self.refused = self.refused + 1
    return false
  end
  function Ratio:stats()
    local req, ret = ratio_sums(self)
    return { kind = "ratio", requests = req, retries = ret, refused = self.refused,
      ratio = self.ratio, min_per_second = self.min_per_second, ttl = self.ttl }
  end

  --- context.retry_budget{kind = "token_bucket", max_tokens = 10, token_ratio = 0.1}
  --- context.retry_budget{kind = "ratio", ratio = 0.2, min_per_second = 10, ttl = 10, clock = fn}
  local function retry_budget(opts)
    local F = "retry_budget"
    opts = options(opts, F, 1, BUDGET_OPTS)
    local kind = oneof(opts, "kind", F, 1, { "token_bucket", "ratio" },
      opts.ratio ~= nil and "ratio" or "token_bucket")
    if kind == "token_bucket" then
      local mt = number(opts, "max_tokens", F, 1, { default = 10, lo = 0, lo_open = true })
      local tr = number(opts, "token_ratio", F, 1, { default = 0.1, lo = 0, lo_open = true })
      return setmetatable({ max_tokens = mt, token_ratio = tr, tokens = mt,
        retries = 0, refused = 0 }, TokenBucket)
    end
    local clock = func(opts, "clock", F, 1) or context.now
    local b = setmetatable({
      ratio = number(opts, "ratio", F, 1, { default = 0.2, lo = 0 }),
      min_per_second = number(opts, "min_per_second", F, 1, { default = 10, lo = 0 }),
      ttl = number(opts, "ttl", F, 1, { default = 10, lo = 0, lo_open = true }),
      clock = clock, buckets = {}, refused = 0,
    }, Ratio)
    for i = 1, NBUCKETS do b.buckets[i] = { requests = 0, retries = 0 } end
    return b
  end

  -----------------------------------------------------------------------------
  -- retry
  -----------------------------------------------------------------------------
  local function is_context(v) return getmetatable(v) == "context" end

  -- A retry_after hint: the third value of `nil, err, retry_after`, or the
  -- field err.retry_after of a table error.
  local function retry_after_of(err, hint)
    if type(hint) == "number" and hint == hint and hint >= 0 then return hint end
    if type(err) == "table" then
      local ok, v = pcall(function() return err.retry_after end)
      if ok and type(v) == "number" and v == v and v >= 0 then return v end
    end
    return nil
  end

  local function reason_of_ctx(ctx)
    local e = ctx:err()
    if e == canceled then return "canceled" end
    if e == deadline_exceeded then return "deadline" end
    return nil
  end

  -- figures for context.metrics_text (lcontext_retry_*)
  local stats = { calls = 0, attempts = 0, succeeded = 0, gave_up = {} }
  local function give_up(err, n, why)
    stats.gave_up[why] = (stats.gave_up[why] or 0) + 1
    return nil, err, n, why
  end

  --- context.retry(ctx, fn, opts) -> fn's results | nil, last_err, attempts, reason
  local function retry(ctx, fn, opts)
    if not is_context(ctx) then
      argerr("retry", 1, ("context expected, got %s"):format(type(ctx)))
    end
    if not callable(fn) then
      argerr("retry", 2, ("function expected, got %s"):format(type(fn)))
    end
    opts = options(opts, "retry", 3, RETRY_OPTS)
    local attempts = number(opts, "attempts", "retry", 3,
      { default = 3, lo = 1, integer = true, inf = true })
    local max_elapsed = number(opts, "max_elapsed", "retry", 3, { lo = 0, inf = true })
    local attempt_timeout = number(opts, "attempt_timeout", "retry", 3, { lo = 0, lo_open = true })
    local retryable = func(opts, "retryable", "retry", 3)
    local on_retry = func(opts, "on_retry", "retry", 3)
    local budget = opts.budget
    if budget ~= nil and (type(budget) ~= "table" or not callable(budget.try_retry)) then
      argerr("retry", 3, "option 'budget': a retry budget expected (see context.retry_budget)")
    end
    local bo = new_backoff(backoff_opts("retry", 3, opts))
    local now = context.now
    local start = now()

    stats.calls = stats.calls + 1
    if budget then budget:on_request() end
    local n, last_err = 0, nil
    while true do
      local why = reason_of_ctx(ctx)
      if why then return give_up(last_err or ctx:err(), n, why) end
      n = n + 1
      stats.attempts = stats.attempts + 1
      local actx, cancel = ctx, nil
      if attempt_timeout then actx, cancel = context.with_timeout(ctx, attempt_timeout) end
      local r = pack(wpcall(fn, actx, n))
      if cancel then cancel() end
      local err, hint
      if not r[1] then
        err = r[2]
      elseif r[2] == nil and r.n >= 3 and r[3] ~= nil then
        err, hint = r[3], r[4]
      else
        if budget then budget:on_success() end
        stats.succeeded = stats.succeeded + 1
        return unpack(r, 2, r.n)
      end
      last_err = err

      -- the rules, in order; the first that says stop gives the reason
      why = reason_of_ctx(ctx)
      if why then return give_up(err, n, why) end
      if err == canceled then return give_up(err, n, "canceled") end
      if retryable then
        if not retryable(err) then return give_up(err, n, "not_retryable") end
      elseif err ~= nil and rawequal(err, context.breaker_open) then
        -- by default an open circuit breaker is an answer, not a hiccup
        return give_up(err, n, "not_retryable")
      end
      if budget then budget:on_failure() end
      if n >= attempts then return give_up(err, n, "exhausted") end
      local delay = bo:next()
      local after = retry_after_of(err, hint)
      if after then delay = after end
      if max_elapsed and now() - start + delay > max_elapsed then
        return give_up(err, n, "exhausted")
      end
      local left = ctx:remaining()
      if left then
        if delay >= left then return give_up(err, n, "deadline") end
        if err == deadline_exceeded and left <= 2 * delay then
          return give_up(err, n, "deadline")
        end
      end
      if budget and not budget:try_retry() then return give_up(err, n, "budget") end
      if on_retry then on_retry(n, err, delay) end
      local slept, serr = context.sleep(ctx, delay)
      if not slept then -- ctx ended, or a spawned task's own context
        return give_up(err, n, reason_of_ctx(ctx) or
          (serr == deadline_exceeded and "deadline" or "canceled"))
      end
    end
  end

  local function metrics_families()
    local gave = {}
    for _, why in ipairs({ "exhausted", "not_retryable", "deadline", "canceled", "budget" }) do
      gave[#gave + 1] = { labels = { reason = why }, value = stats.gave_up[why] or 0 }
    end
    return {
      { name = "lcontext_retry_calls_total", help = "context.retry calls.", type = "counter",
        samples = { { value = stats.calls } } },
      { name = "lcontext_retry_attempts_total", help = "Attempts made by context.retry (first tries included).",
        type = "counter", samples = { { value = stats.attempts } } },
      { name = "lcontext_retry_succeeded_total", help = "context.retry calls that succeeded.",
        type = "counter", samples = { { value = stats.succeeded } } },
      { name = "lcontext_retry_gave_up_total", help = "context.retry calls that gave up, by reason.",
        type = "counter", samples = gave },
    }
  end

  return { retry = retry, backoff = backoff, retry_budget = retry_budget,
    _metrics_retry = metrics_families }
end
