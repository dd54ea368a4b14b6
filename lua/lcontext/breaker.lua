--- lcontext.breaker: a circuit breaker (docs/resilience.md).
--
--   local br = context.breaker{ threshold = 5, cooldown = 30 }
--   local res, err = br:call(ctx, fn, ...)   -- nil, context.breaker_open while open
--   local done, err = br:allow()              -- two-step: ... later, done(err)
--   br:state(), br:counts(), br:reset()
--
-- Two ways to trip: "consecutive" failures (gobreaker), or a failure "ratio"
-- over a rolling window of buckets with a minimum throughput (Polly,
-- resilience4j). After `cooldown` seconds open, the breaker is half-open and
-- lets at most `half_open_max` probes through at once; a probe that neither
-- reports within `probe_timeout` nor is cancelled gives its slot back.
-- `success_threshold` probe successes close it, one failure opens it again.
-- Every state change starts a new generation: results of calls allowed in an
-- older generation are ignored. Cancellations never count; deadline
-- expiries (the call's own timeout included) count as failures.
--
-- All the state lives in a store (opts.store) under keys prefixed with
-- `opts.name`, so that processes can share one breaker. A store is any object
-- with these methods (ngx.shared.DICT has them all, with these meanings):
--   store:get(key)               -> value | nil
--   store:set(key, value [, ttl]) stores (ttl seconds, nil or 0: forever)
--   store:add(key, value [, ttl]) -> true if key was absent (or expired) and
--                                    is now stored; false otherwise
--   store:incr(key, delta, init) -> the new value (init + delta when absent)
--   store:delete(key)
-- Values are numbers and strings. The default store lives in this process
-- and uses the breaker's clock for its ttls (context.breaker_store(clock)).
return function(context)
  local type, error, tostring, pcall, getmetatable = type, error, tostring, pcall, getmetatable
  local floor, huge = math.floor, math.huge
  local canceled = context.canceled

  local check = require "lcontext.check"
  -- fn may wait: check.pcall lets it on Lua 5.1 too
  local pack, unpack, wpcall = check.pack, check.unpack, check.pcall
  local argerr = check.argerr

  local callable = check.callable

  -- the sentinel returned while the breaker is open; like the core's
  -- sentinels it prints, and concatenates, as its message
  local breaker_open = setmetatable({}, {
    __name = "context.breaker_open",
    __tostring = function() return "circuit breaker is open" end,
    __concat = function(a, b) return tostring(a) .. tostring(b) end,
    __newindex = function() error("context.breaker_open is read-only", 2) end,
    __metatable = "context.breaker_open",
  })

  -----------------------------------------------------------------------------
  -- The in-process store
  -----------------------------------------------------------------------------
  local MemStore = {}
  MemStore.__index = MemStore
  MemStore.__name = "context.breaker_store"

  local function live(s, k)
    local e = s.expires[k]
    if e and s.clock() >= e then s.data[k], s.expires[k] = nil, nil end
    return s.data[k]
  end

  function MemStore:get(k) return live(self, k) end

  function MemStore:set(k, v, ttl)
    self.data[k] = v
    self.expires[k] = (ttl and ttl > 0) and self.clock() + ttl or nil
    return true
  end

  function MemStore:add(k, v, ttl)
    if live(self, k) ~= nil then return false, "exists" end
    return self:set(k, v, ttl)
  end

  function MemStore:incr(k, delta, init)
    local v = live(self, k)
    if v == nil then
      if init == nil then return nil, "not found" end
      v = init
    end
    v = v + delta
    self.data[k] = v
    return v
  end

  function MemStore:delete(k)
    self.data[k], self.expires[k] = nil, nil
    return true
  end

  --- context.breaker_store([clock]) -> an in-process store (clock: seconds)
  local function breaker_store(clock)
    if clock ~= nil and not callable(clock) then
      argerr("breaker_store", 1, ("function expected, got %s"):format(type(clock)))
    end
    return setmetatable({ data = {}, expires = {}, clock = clock or context.now }, MemStore)
  end

  -----------------------------------------------------------------------------
  -- The breaker
  -----------------------------------------------------------------------------
  local Breaker = {}
  Breaker.__index = Breaker
  Breaker.__name = "context.breaker"

  function Breaker:__tostring()
    return ("context.breaker(%s: %s)"):format(self.name, self:state())
  end

  local COUNTS = { "req", "ok", "fail", "cf", "cs", "rej" }

  local function key(br, k) return br.prefix .. k end

  local function get_num(br, k) return br.store:get(br.prefix .. k) or 0 end

  local function raw_state(br) return br.store:get(br.prefix .. "state") or "closed" end

  local function window_slot_keys(br, slot)
    local b = br.prefix .. "w:" .. slot
    return b .. ":id", b .. ":n", b .. ":f"
  end

  local function window_clear(br)
    for slot = 0, br.buckets - 1 do
      local kid, kn, kf = window_slot_keys(br, slot)
      br.store:delete(kid); br.store:delete(kn); br.store:delete(kf)
    end
  end

  local function window_index(br)
    return floor(br.clock() / (br.window / br.buckets))
  end

  local function window_add(br, failed)
    local idx = window_index(br)
    local kid, kn, kf = window_slot_keys(br, idx % br.buckets)
    local st = br.store
    if st:get(kid) ~= idx then
      st:set(kn, 0); st:set(kf, 0); st:set(kid, idx)
    end
    st:incr(kn, 1, 0)
    if failed then st:incr(kf, 1, 0) end
  end

  local function window_sums(br)
    local idx = window_index(br)
    local st = br.store
    local n, f = 0, 0
    for slot = 0, br.buckets - 1 do
      local kid, kn, kf = window_slot_keys(br, slot)
      local id = st:get(kid)
      if id and id > idx - br.buckets and id <= idx then
        n, f = n + (st:get(kn) or 0), f + (st:get(kf) or 0)
      end
    end
    return n, f
  end

  -- from -> to, only if the state is still `from` (unless forced); a new
  -- generation with fresh counts
  local function transition(br, from, to, force)
    local st = br.store
    if not force and raw_state(br) ~= from then return false end
    st:set(key(br, "state"), to)
    st:incr(key(br, "gen"), 1, 0)
    for _, c in ipairs(COUNTS) do st:set(key(br, "n:" .. c), 0) end
    if to == "open" then
      st:set(key(br, "opened_at"), br.clock())
    elseif to == "half_open" then
      for i = 1, br.half_open_max do st:delete(key(br, "probe:" .. i)) end
    end
    if br.mode == "ratio" then window_clear(br) end
    if br.on_state_change and from ~= to then br.on_state_change(from, to) end
    return true
  end

  -- the state, moving open -> half_open once the cooldown has passed
  local function current_state(br)
    local s = raw_state(br)
    if s == "open" then
      local at = br.store:get(key(br, "opened_at")) or -huge
      if br.clock() - at >= br.cooldown then
        transition(br, "open", "half_open")
        s = raw_state(br)
      end
    end
    return s
  end

  local function check_self(br, fname)
    if getmetatable(br) ~= Breaker then
      error(("calling '%s' on bad self (context.breaker expected, got %s)")
        :format(fname, type(br)), 3)
    end
  end

  -- the verdict on an error: "success", "failure" or nil (no verdict)
  local function verdict(br, err)
    if err == nil then return "success" end
    if err == canceled then return nil end
    if br.is_failure and not br.is_failure(err) then return "success" end
    return "failure"
  end

  local function record(br, v)
    local st = br.store
    local s = raw_state(br)
    if v == "success" then
      st:incr(key(br, "n:ok"), 1, 0)
      st:set(key(br, "n:cf"), 0)
      local cs = st:incr(key(br, "n:cs"), 1, 0)
      if s == "closed" then
        if br.mode == "ratio" then window_add(br, false) end
      elseif s == "half_open" and cs >= br.success_threshold then
        transition(br, "half_open", "closed")
      end
    else
      st:incr(key(br, "n:fail"), 1, 0)
      st:set(key(br, "n:cs"), 0)
      local cf = st:incr(key(br, "n:cf"), 1, 0)
      if s == "half_open" then
        transition(br, "half_open", "open")
      elseif s == "closed" then
        if br.mode == "ratio" then
          window_add(br, true)
          local n, f = window_sums(br)
          if n >= br.min_throughput and f >= br.failure_ratio * n then
            transition(br, "closed", "open")
          end
        elseif cf >= br.threshold then
          transition(br, "closed", "open")
        end
      end
    end
  end

  --- br:allow() -> done | nil, context.breaker_open
  -- done(err) reports the outcome: nil for success, an error for a failure,
  -- context.canceled for "no verdict" (gives a probe slot back). It returns
  -- true if the outcome was counted, false if it was ignored (reported twice,
  -- from an older generation, a probe whose slot was re-armed, no verdict).
  function Breaker:allow()
    check_self(self, "allow")
    local st = self.store
    local s = current_state(self)
    if s == "open" then
      st:incr(key(self, "n:rej"), 1, 0)
      return nil, breaker_open
    end
    local gen = get_num(self, "gen")
    local slot, lease
    if s == "half_open" then
      lease = st:incr(key(self, "lease"), 1, 0)
      for i = 1, self.half_open_max do
        if st:add(key(self, "probe:" .. i), lease, self.probe_timeout) then
          slot = key(self, "probe:" .. i)
          break
        end
      end
      if not slot then
        st:incr(key(self, "n:rej"), 1, 0)
        return nil, breaker_open
      end
    end
    st:incr(key(self, "n:req"), 1, 0)
    local used = false
    return function(err)
      if used then return false end
      used = true
      if slot then
        if st:get(slot) ~= lease then return false end -- re-armed: too late
        st:delete(slot)
      end
      local v = verdict(self, err)
      if v == nil then return false end
      if get_num(self, "gen") ~= gen then return false end
      record(self, v)
      return true
    end
  end

  --- br:call(ctx, fn, ...) -> fn(ctx, ...)'s results | nil, context.breaker_open
  -- fn fails by raising (re-raised here) or by returning nil, err.
  function Breaker:call(ctx, fn, ...)
    check_self(self, "call")
    if getmetatable(ctx) ~= "context" then
      argerr("call", 1, ("context expected, got %s"):format(type(ctx)))
    end
    if not callable(fn) then
      argerr("call", 2, ("function expected, got %s"):format(type(fn)))
    end
    local e = ctx:err()
    if e then return nil, e end
    local done, err = self:allow()
    if not done then return nil, err end
    local cctx, cancel = ctx, nil
    if self.timeout then cctx, cancel = context.with_timeout(ctx, self.timeout) end
    local r = pack(wpcall(fn, cctx, ...))
    if cancel then cancel() end
    local ferr
    if not r[1] then
      ferr = r[2]
      if ferr == nil then ferr = "error (nil) raised by the call" end
    elseif r[2] == nil and r.n >= 3 and r[3] ~= nil then
      ferr = r[3]
    end
    if ferr ~= nil and ctx:err() == canceled then
      done(canceled) -- the caller gave up: no verdict on the dependency
    else
      done(ferr)
    end
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end

  --- br:state() -> "closed", "open" or "half_open"
  function Breaker:state()
    check_self(self, "state")
    return current_state(self)
  end

  --- br:counts() -> counts since the last state change, and more
  function Breaker:counts()
    check_self(self, "counts")
    local s = current_state(self)
    local c = {
      state = s,
      generation = get_num(self, "gen"),
      requests = get_num(self, "n:req"),
      successes = get_num(self, "n:ok"),
      failures = get_num(self, "n:fail"),
      consecutive_successes = get_num(self, "n:cs"),
      consecutive_failures = get_num(self, "n:cf"),
      rejected = get_num(self, "n:rej"),
      probes = 0,
    }
    if s == "half_open" then
      for i = 1, self.half_open_max do
        if self.store:get(key(self, "probe:" .. i)) ~= nil then c.probes = c.probes + 1 end
      end
    end
    if self.mode == "ratio" then
      c.window_requests, c.window_failures = window_sums(self)
    end
    return c
  end

  --- br:reset(): back to closed, whatever the state (a new generation, with
  -- fresh counts; on_state_change is told if the state changes)
  function Breaker:reset()
    check_self(self, "reset")
    transition(self, raw_state(self), "closed", true)
  end

  -- the options, read through lcontext.check (one validator for every
  -- options table of the API)
  local options, number, func, oneof = check.options, check.number, check.func, check.oneof
  local BREAKER_OPTS = check.names { "mode", "clock", "name", "store", "threshold",
    "failure_ratio", "window", "buckets", "min_throughput", "cooldown", "half_open_max",
    "success_threshold", "probe_timeout", "timeout", "is_failure", "on_state_change" }
  local function count_opt(opts, name, default, F, n)
    return number(opts, name, F, n, { default = default, lo = 1, integer = true })
  end
  local function seconds_opt(opts, name, default, F, n)
    return number(opts, name, F, n, { default = default, lo = 0, lo_open = true })
  end

  local live_breakers = setmetatable({}, { __mode = "k" })

  -- new_breaker(opts, fname, n): context.breaker(opts), its options being
  -- argument n of fname (context.shared_breaker's are its second)
  local function new_breaker(opts, F, n)
    opts = options(opts, F, n, BREAKER_OPTS)
    local mode = oneof(opts, "mode", F, n, { "consecutive", "ratio" },
      opts.failure_ratio ~= nil and "ratio" or "consecutive")
    local clock = func(opts, "clock", F, n) or context.now
    local name = opts.name
    if name == nil then name = "breaker" end
    if type(name) ~= "string" then
      argerr(F, n, ("option 'name': string expected, got %s"):format(type(name)))
    end
    local store = opts.store
    if store == nil then
      store = breaker_store(clock)
    else
      for _, m in ipairs({ "get", "set", "add", "incr", "delete" }) do
        local ok, f = pcall(function() return store[m] end)
        if not ok or not callable(f) then
          argerr(F, n, ("option 'store': no method '%s'"):format(m))
        end
      end
    end
    local cooldown = number(opts, "cooldown", F, n, { default = 30, lo = 0 })
    local br = setmetatable({
      name = name, prefix = name .. ":", mode = mode, clock = clock, store = store,
      threshold = count_opt(opts, "threshold", 5, F, n),
      failure_ratio = number(opts, "failure_ratio", F, n, { default = 0.5, lo = 0, lo_open = true, hi = 1 }),
      window = seconds_opt(opts, "window", 10, F, n),
      buckets = count_opt(opts, "buckets", 10, F, n),
      min_throughput = count_opt(opts, "min_throughput", 10, F, n),
      cooldown = cooldown,
      half_open_max = count_opt(opts, "half_open_max", 1, F, n),
      success_threshold = count_opt(opts, "success_threshold", 1, F, n),
      probe_timeout = seconds_opt(opts, "probe_timeout", cooldown > 0 and cooldown or 30, F, n),
      timeout = seconds_opt(opts, "timeout", nil, F, n),
      is_failure = func(opts, "is_failure", F, n),
      on_state_change = func(opts, "on_state_change", F, n),
    }, Breaker)
    live_breakers[br] = true
    return br
  end

  --- context.breaker(opts) -> br
  local function breaker(opts)
    local br = new_breaker(opts, "breaker", 1) -- (not a tail call: on Lua 5.1
    return br                                   -- errors would lose the position)
  end

  -- figures for context.metrics_text (lcontext_breaker_*), per breaker name
  local function metrics_families()
    local state, transitions, requests, rejected = {}, {}, {}, {}
    local list = {}
    for br in pairs(live_breakers) do list[#list + 1] = br end
    table.sort(list, function(a, b) return a.name < b.name end)
    local seen = {}
    for _, br in ipairs(list) do
      if not seen[br.name] then -- one series per name (a shared store shares it)
        seen[br.name] = true
        local c = br:counts()
        for _, s in ipairs({ "closed", "open", "half_open" }) do
          state[#state + 1] = { labels = { breaker = br.name, state = s },
            value = c.state == s and 1 or 0 }
        end
        transitions[#transitions + 1] = { labels = { breaker = br.name }, value = c.generation }
        requests[#requests + 1] = { labels = { breaker = br.name }, value = c.requests }
        rejected[#rejected + 1] = { labels = { breaker = br.name }, value = c.rejected }
      end
    end
    if #list == 0 then return {} end
    return {
      { name = "lcontext_breaker_state", help = "Circuit breaker state (1 for the current one).",
        type = "gauge", samples = state },
      { name = "lcontext_breaker_state_changes_total", help = "Circuit breaker state changes.",
        type = "counter", samples = transitions },
      { name = "lcontext_breaker_requests", help = "Calls let through since the last state change.",
        type = "gauge", samples = requests },
      { name = "lcontext_breaker_rejected", help = "Calls refused since the last state change.",
        type = "gauge", samples = rejected },
    }
  end

  return { breaker = breaker, _new_breaker = new_breaker, breaker_open = breaker_open, breaker_store = breaker_store,
    _metrics_breaker = metrics_families }
end
