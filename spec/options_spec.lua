-- Options tables: every function of the API that takes one refuses a key it
-- does not know (a misspelled option would otherwise be ignored, and its
-- default used), naming the key and, when a known one is close, suggesting
-- it; the correctly spelled option is accepted. One validator serves them
-- all (lua/lcontext/check.lua: check.options).
local context = require "lcontext"
local trace = require "lcontext.trace"
local h = require "spec.helpers"

local bg = context.background()
local f = function() return true end

-- the exact message of an argument error raised by fn, or nil if it did not raise
local function raised(fn)
  local ok, msg = pcall(fn)
  if ok then return nil end
  return tostring(msg)
end

-- One case per options table: fname and the argument number it reports,
-- call(opts) (made as a statement, so that the error is the API's own),
-- a misspelled option and the one it should be, and a value for the latter.
local cases = {
  { "retry", 3, function(o) context.retry(bg, f, o) end, "attemps", "attempts", 2 },
  { "group", 2, function(o) context.group(bg, o) end, "qourum", "quorum", 2 },
  { "group_scope", 3, function(o) context.group_scope(bg, f, o) end, "limt", "limit", 2 },
  { "backoff", 1, function(o) context.backoff(o) end, "jiter", "jitter", "none" },
  { "retry_budget", 1, function(o) context.retry_budget(o) end, "max_token", "max_tokens", 5 },
  { "breaker", 1, function(o) context.breaker(o) end, "treshold", "threshold", 2 },
  { "hedge", 3, function(o) o.delay = 0; context.hedge(bg, f, o) end, "atempts", "attempts", 1 },
  { "latency_estimator", 1, function(o) context.latency_estimator(o) end, "quantil", "quantile", 0.5 },
  { "adaptive_timeout", 1, function(o) context.adaptive_timeout(o) end, "multiplyer", "multiplier", 2 },
  { "split", 3, function(o) context.split(bg, { a = 1 }, o) end, "reserv", "reserve", 0.1 },
  { "service_timeouts", 1, function(o) o.auth = 1; context.service_timeouts(o) end,
    "defualt", "default", 2 },
  { "fallback", 4, function(o) context.fallback(bg, f, f, o) end, "timout", "timeout", 1 },
  { "errors", 1, function(o) context.errors(o) end, "treshold", "threshold", 2 },
  { "logger", 2, function(o) context.logger(function() end, o) end, "levle", "level", "warn" },
  { "extract", 3, function(o) trace.extract({}, bg, o) end, "max_timout", "max_timeout", 5 },
  { "start", 2, function(o) trace.start(bg, o) end, "sampeld", "sampled", false },
}

describe("options tables", function()
  for _, c in ipairs(cases) do
    local fname, n, call, wrong, right, value = c[1], c[2], c[3], c[4], c[5], c[6]

    it(fname .. " refuses a misspelled option and accepts the right one", function()
      local msg = raised(function() call({ [wrong] = value }) end)
      assert.is_truthy(msg, fname .. " accepted the unknown option '" .. wrong .. "'")
      assert.is_truthy(h.names_arg(msg, n, fname), msg)
      local want = ("(unknown option '%s'; did you mean '%s'?)"):format(wrong, right)
      assert.is_truthy(msg:find(want, 1, true), "expected " .. want .. " in: " .. msg)
      -- reported at the caller's line, not inside lcontext
      assert.is_truthy(msg:find("^[^:]*options_spec.lua:%d+:"), "position: " .. msg)
      assert.is_nil(raised(function() call({ [right] = value }) end))
    end)
  end

  it("suggest nothing when no known option is close", function()
    local msg = raised(function() context.retry(bg, f, { bogus = 1 }) end)
    assert.is_truthy(msg:find("(unknown option 'bogus')", 1, true), msg)
    msg = raised(function() context.breaker { [1] = true } end)
    assert.is_truthy(msg:find("(unknown option [1])", 1, true), msg)
  end)

  it("are checked before the values they hold", function()
    -- a typo beside a bad value: the typo is what is reported
    local msg = raised(function() context.retry(bg, f, { base = -1, attemps = 2 }) end)
    assert.is_truthy(msg:find("unknown option 'attemps'", 1, true), msg)
  end)

  it("service_timeouts: a service name one edit from a reserved key is refused", function()
    local msg = raised(function() context.service_timeouts { auth = 1, overhaed = 0.1 } end)
    assert.is_truthy(msg:find("(unknown option 'overhaed'; did you mean 'overhead'?)", 1, true), msg)
    -- names farther away are services
    assert.is_nil(raised(function() context.service_timeouts { overload = 1, defer = 2 } end))
  end)

  it("policy and request info name their unknown fields, with a suggestion", function()
    local msg = raised(function() context.policy { defualt_timeout = 1 } end)
    assert.is_truthy(msg:find('unknown field "defualt_timeout"; did you mean "default_timeout"?', 1, true), msg)
    msg = raised(function() context.policy { rules = { { when = f, timeout = 1, nme = "x" } } } end)
    assert.is_truthy(msg:find('rules[1]: unknown field "nme"; did you mean "name"?', 1, true), msg)
    msg = raised(function() context.with_request_info(bg, { usr_id = 1 }) end)
    assert.is_truthy(msg:find('unknown field "usr_id"; did you mean "user_id"?', 1, true), msg)
    assert.is_nil(raised(function() context.with_request_info(bg, { user_id = 1 }) end))
  end)

  it("the shared helpers: numbers, functions and choices keep their messages", function()
    local msg = raised(function() context.retry(bg, f, { base = "1" }) end)
    assert.is_truthy(msg:find("(option 'base': number expected, got string)", 1, true), msg)
    msg = raised(function() context.breaker { threshold = 1.5 } end)
    assert.is_truthy(msg:find("(option 'threshold' must be an integer, got 1.5)", 1, true), msg)
    msg = raised(function() context.hedge(bg, f, { delay = 0, on_attempt = 1 }) end)
    assert.is_truthy(msg:find("(option 'on_attempt': function expected, got number)", 1, true), msg)
    msg = raised(function() context.backoff { jitter = "some" } end)
    assert.is_truthy(msg:find([[(option 'jitter': "full", "equal", "decorrelated" or "none" expected, got "some")]],
      1, true), msg)
  end)

  it("the edit distance counts a swap of neighbours as one edit", function()
    local check = require "lcontext.check"
    assert.are.equal(1, check.distance("attemps", "attempts"))
    assert.are.equal(1, check.distance("defualt", "default"))
    assert.are.equal(3, check.distance("", "abc"))
    assert.are.equal(0, check.distance("x", "x"))
    assert.is_nil(check.closest("zzz", check.names { "attempts" }))
  end)
end)
