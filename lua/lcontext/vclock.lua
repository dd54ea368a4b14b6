--- lcontext.vclock: virtual time, for tests of code that waits
-- (docs/testing.md; README, "Testing code that uses lcontext").
--
--   local clock = context.virtual_clock([start | { start =, epoch =, autojump = }])
--   clock:now()            -> start + virtual seconds since it was installed
--   clock:advance(seconds) -> clock:now(), once everything due has fired and
--                             what it woke has run, in order
--   clock:autojump(false | true | seconds); clock:installed()
--   clock:uninstall()      -- also <close>
--   context.random_seed(n) -- the helpers' jitter repeats
--
-- While a virtual clock is installed, every reading of time of the runtime
-- (context.now(), context.time(), deadlines, sleeps, remaining(), the
-- helpers' backoffs, cooldowns and estimators, the metrics) is virtual,
-- and no real timer is armed. The clock itself lives in the core
-- (csrc/l_clock.c), so it is the same on both backends; only advance
-- differs: on libev it runs the loop, in nginx it lets the light threads
-- it woke run (lua/lcontext/ngx.lua wraps the clock: check.vclock_wrap).
return function(context)
  local check = require "lcontext.check"
  local core = check.load_core()
  local new_clock = core._virtual_clock
  local type, tostring = type, tostring
  local argerr = check.argerr

  local M = {}

  local OPTS = { start = true, epoch = true, autojump = true }

  --- context.virtual_clock([start | opts]) -> clock, installed
  function M.virtual_clock(opts)
    local start, epoch, autojump = 0, nil, false
    if type(opts) == "number" then
      start = opts
    elseif type(opts) == "table" then
      for k in pairs(opts) do
        if not OPTS[k] then
          argerr("virtual_clock", 1, ("unknown option '%s' (start, epoch, autojump)"):format(tostring(k)))
        end
      end
      if opts.start ~= nil then start = opts.start end
      epoch, autojump = opts.epoch, opts.autojump
      if autojump == nil then autojump = false end
    elseif opts ~= nil then
      argerr("virtual_clock", 1, "number or table expected, got " .. check.tname(opts))
    end
    if type(start) ~= "number" or start ~= start or start == math.huge or start == -math.huge then
      argerr("virtual_clock", 1, "start: a finite number expected, got " .. tostring(start))
    end
    if epoch ~= nil and (type(epoch) ~= "number" or epoch ~= epoch or epoch < 946684800) then
      argerr("virtual_clock", 1, "epoch: epoch seconds expected (after the year 2000), got " .. tostring(epoch))
    end
    local clock = new_clock(start, epoch, autojump)
    if check.vclock_wrap then -- (nginx: its own advance and autojump, lua/lcontext/ngx.lua)
      return check.vclock_wrap(clock, autojump)
    end
    return clock
  end

  --- context.random_seed(n): the helpers' jitter (retry's backoff) repeats
  function M.random_seed(n)
    if type(n) ~= "number" or n ~= n or n == math.huge or n == -math.huge then
      argerr("random_seed", 1, "finite number expected, got " .. tostring(n))
    end
    check.random_seed(n)
  end

  return M
end
