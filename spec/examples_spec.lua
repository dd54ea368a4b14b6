-- examples_spec.lua — every program in examples/ runs, and says what it should.
-- Each runs in its own process with this checkout's module (tools/with_paths.lua).
--
-- Lua 5.4 only: the examples are Lua 5.4 programs (they may use `<close>`),
-- run with lua5.4 and the 5.4 build (build/), and examples/embed/host.c is
-- linked with liblua5.4. The Lua 5.4 suite runs them; under 5.3, 5.1 and
-- LuaJIT this file only says so (one pending test).
local h = require "spec.helpers"
if not h.LUA54 then
  describe("examples", function()
    it("are Lua 5.4 programs, run by the Lua 5.4 suite", function()
      pending("the examples are Lua 5.4 programs (they may use <close>), run with lua5.4 "
        .. "by the Lua 5.4 suite; this is " .. h.RUNTIME)
    end)
  end)
  return
end

local LUA = os.getenv("LUA") or "lua5.4"

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, how, code = p:close()
  return out, ok and 0 or code, how
end

local function lua_example(name, args)
  return run(LUA .. " tools/with_paths.lua " .. sh_quote("examples/" .. name)
    .. (args or ""))
end

-- what each example must print (a pattern per line, in order)
local expect = {
  ["metrics_server.lua"] = {
    "scraped %d+ bytes from /metrics",
    "lcontext_contexts_created_total %d+",
    'lcontext_operations_total{operation="db.query",outcome="finished"} 2',
    "promtool check metrics: ok",
  },
  ["leaks.lua"] = {
    "4 contexts still running:",
    "timer  age [%d.]+ s  deadline yes  made at examples/leaks.lua:%d+: in local 'handle_request'",
    "cancel age [%d.]+ s  deadline no   made at examples/leaks.lua:%d+: in local 'open_session'",
    "collected without a cancel: 3",
  },
  ["tracing.lua"] = {
    "frontend: request 1, budget 1000 ms, trace %x+",
    "frontend %-> inventory: traceparent 00%-%x+%-%x+%-01, grpc%-timeout %d+u, x%-request%-timeout%-ms %d+",
    "inventory: trace %x+ continued from span %x+",
    '"msg":"request received"',
    "inventory: work done",
    "frontend: request 1 answered 200: 3 items %(same trace: true%)",
    "frontend: request 2, budget 200 ms",
    -- what the frontend had left of its 200 ms when it sent the request
    "inventory: %d+ ms left %(propagated [12]%d%d ms, minus 50 ms reserve%)",
    "inventory: work cut off at step %d: context deadline exceeded",
    '"msg":"work cut off"',
    "frontend: request 2 failed",
    "done: request 2's work stopped %d+ ms before the frontend's own deadline",
  },
  ["demo.lua"] = {
    "request req%-42 arrives",
    "auth   answered",
    "db     gave up: context deadline exceeded %(ended by its own timeout",
    "cache  gave up: context canceled %(ended by the request; cause: client went away%)",
    "after_func: request req%-42 cleaned up",
    "request: err=context canceled  cause=client went away",
  },
  ["fetch_with_deadline.lua"] = {
    "GET /fast with a 200 ms deadline",
    "%-> \"hello from /fast\\n\"\n", -- on one line
    "GET /slow with a 200 ms deadline",
    "gave up: context deadline exceeded",
  },
  ["workflow.lua"] = {
    "order A%-100: 5 checks, at most 3 at once",
    "order A%-100: all checks passed",
    "failures, in completion order: 0",
    "order A%-101: 5 checks, at most 3 at once",
    "shipping +FAILED: shipping: quote service unavailable",
    "stopped: context canceled %(cause: shipping: quote service unavailable%)",
    "inventory +not started: the group already failed",
    "order A%-101: group failed: shipping: quote service unavailable",
    "failures, in completion order: 3",
    "1%. shipping: quote service unavailable",
    "group context after wait: context canceled, cause: shipping: quote service unavailable",
  },
  ["retry_breaker.lua"] = {
    "req +1: ok after 1 attempt",
    "attempt 1 failed %(connection reset%), retrying in 5 ms",
    "req +2: ok after 2 attempt",
    "breaker: closed %-> open",
    "failed after 3 attempt%(s%): 503 inventory unavailable %(exhausted%)",
    "rejected at once: circuit breaker is open %(not_retryable%)",
    "breaker: open %-> half_open",
    "breaker: half_open %-> closed",
    "ok after 1 attempt",
    "summary: %d+ requests, %d+ served, %d+ rejected by the open breaker",
  },
  ["hedge.lua"] = {
    "without hedging: +p50 +%d+ ms, p95 +%d+ ms, max +%d+ ms; backend calls 20 %(0 cancelled%)",
    "request +%d+: no answer yet, hedge sent",
    "hedged after 10 ms: +p50",
    "hedges sent: [1-9]",
    "adaptive delay: p90 of 20 observed latencies",
    "hedged after the observed p90: +p50",
    "hedges sent: [1-9]",
  },
  ["budget.lua"] = {
    "request 1: budget 300 ms",
    "auth +gets %d+ ms",
    "process +gets %d+ ms",
    "user +answered",
    "search +gave up: context deadline exceeded %(local deadline%)",
    "respond +gets %d+ ms",
    "request 1: answered",
    "request 2: budget 100 ms",
    "auth +failed fast: context deadline exceeded %(split: stage 'auth' gets %d+ ms, needs at least 20 ms%)",
    "request 2: rejected",
    "user +not called: context deadline exceeded %(service_timeouts: no time left for 'user'",
  },
  ["pipeline.lua"] = {
    "load +sent 3 items for alice",
    "price +priced 3 items",
    "total +summed 3 items",
    "req%-1: done for alice, total 58%.50",
    "load +stopped after sending %d of 3 items: context canceled",
    "price +stopped pricing the %a+, after %d items?: context canceled",
    "total +stopped after %d items?: context canceled",
    "req%-2: stopped: context canceled %(canceled; cause: client went away%)",
    "load +stopped after sending 1 of 3 items: context deadline exceeded",
    "price +stopped pricing the book, after 0 items: context deadline exceeded",
    "total +stopped after 0 items: context deadline exceeded",
    "req%-3: stopped: context deadline exceeded %(deadline_exceeded",
  },
  ["multiplexer.lua"] = {
    "meeting: 3 talkers, deadline 400 ms, silence limit 300 ms",
    "Bob says 1",
    "Bob says 2",
    "%(Bob has left%)",
    "meeting: heard %d+ messages, stopped listening %(deadline: context deadline exceeded%)",
    "Joe stopped after %d+ messages: context canceled",
    "Ann stopped after %d+ messages: context canceled",
    "Bob left after 2 messages",
    "lunch: 2 talkers, deadline 2000 ms, silence limit 150 ms",
    "Ann says 2",
    "%(Ann has left%)",
    "lunch: heard 2 messages, stopped listening %(nobody spoke for 150 ms%)",
    "Ann left after 2 messages",
    "Joe stopped after 0 messages: context canceled",
    "channels: 5 made, %d+ values passed, 0 tasks still blocked",
  },
  -- (orders with margins of 50 ms or more: ticks every 30 ms, a 250 ms deadline)
  ["luv_host.lua"] = {
    "task: slept 30 ms: true",
    "luv tick 3",
    "task: pipe readable, read \"ping\"",
    "request done: context deadline exceeded",
    "uv.run returned: 6 luv ticks, reader got \"ping\", slow: context deadline exceeded",
    "luv_host: ok",
  },
  ["cqueues_host.lua"] = {
    "task: slept 30 ms: true",
    "cqueues tick 3",
    "task: socket readable, read \"ping\"",
    "cqueues tick 4\n", -- (its own line)
    "task started from a cqueues coroutine",
    "request done: context deadline exceeded",
    "cq:loop returned: 6 cqueues ticks, reader got \"ping\", slow: context deadline exceeded",
    "cqueues_host: ok",
  },
  ["pool.lua"] = {
    "A got conn%-1",
    "B got conn%-2",
    "D gave up waiting: context deadline exceeded",
    "C crashes while holding conn%-1",
    "conn%-1 back in the pool %(C's context ended: C crashed%)",
    "E got conn%-1",
    "conn%-2 back in the pool %(B's context ended: context deadline exceeded%)",
    "F got conn%-2",
    "pool: 2 open, 2 idle, 0 lent, 0 waiting",
    "semaphores: 0 units held, 0 waiting",
  },
}

local function assert_lines(out, patterns)
  local pos = 1
  for _, pat in ipairs(patterns) do
    local s, e = out:find(pat, pos)
    assert(s, ("expected %q after position %d in:\n%s"):format(pat, pos, out))
    pos = e + 1
  end
end

describe("examples", function()
  local names = {}
  for name in io.popen("ls examples"):lines() do
    if name:match("%.lua$") then names[#names + 1] = name end
  end

  it("are all covered by this spec", function()
    local covered = { ["shutdown.lua"] = true, ["worker_pool.lua"] = true }
    for k in pairs(expect) do covered[k] = true end
    for _, name in ipairs(names) do
      assert.is_true(covered[name] ~= nil, "no expectations for examples/" .. name)
    end
  end)

  for name, patterns in pairs(expect) do
    it(name .. " runs and tells its story", function()
      local out, code = lua_example(name)
      assert.are.equal(0, code, out)
      assert_lines(out, patterns)
    end)
  end

  -- runs examples/name, sends it signal sig once it printed "pid N:" on its
  -- first line, and returns all it printed, then its exit status on a line
  local function run_and_signal(name, sig)
    local tmp = os.tmpname()
    local p = assert(io.popen(LUA .. " tools/with_paths.lua examples/" .. name .. " > "
      .. tmp .. " 2>&1; echo $? >> " .. tmp))
    local pid
    for _ = 1, 200 do -- wait for its first line (at most ~10 s)
      local f = io.open(tmp)
      local first = f and f:read("l")
      if f then f:close() end
      pid = first and first:match("^pid (%d+):")
      if pid then break end
      os.execute("sleep 0.05")
    end
    assert.is_truthy(pid, name .. " did not start")
    os.execute("sleep 0.1")
    os.execute("kill -" .. sig .. " " .. pid)
    p:read("a")
    p:close()
    local f = assert(io.open(tmp))
    local out = f:read("a")
    f:close()
    os.remove(tmp)
    return out
  end

  it("shutdown.lua stops its workers cleanly on SIGTERM", function()
    local out = run_and_signal("shutdown.lua", "TERM")
    assert_lines(out, {
      "worker %d: stopping after %d+ jobs %(signal SIGTERM%)",
      "all workers stopped cleanly; cause: signal SIGTERM",
    })
    assert.is_truthy(out:match("\n0\n$"), "exit status not 0:\n" .. out)
  end)

  it("worker_pool.lua drains its queue cleanly on SIGINT", function()
    local out = run_and_signal("worker_pool.lua", "INT")
    assert_lines(out, {
      "pid %d+: 3 workers, a queue of 5",
      "producer: job %d+ not queued %(context canceled, cause: signal SIGINT%)",
      "producer: %d+ jobs queued; queue closed with %d still waiting",
      "worker %d: queue drained, %d+ jobs done",
      "worker %d: queue drained, %d+ jobs done",
      "worker %d: queue drained, %d+ jobs done",
      "queued (%d+) jobs, done %1, lost 0; queue: 0 buffered, 0 tasks blocked",
      "all workers stopped cleanly; cause: signal SIGINT",
    })
    assert.is_truthy(out:match("\n0\n$"), "exit status not 0:\n" .. out)
  end)

  it("embed/host.c runs lcontext on the host's own libev loop", function()
    local host = "build/embed-host"
    local f = io.open(host)
    if not f then
      local out, code = run("make -s " .. host)
      assert.are.equal(0, code, out)
    else
      f:close()
    end
    local out, code = run("./" .. host .. " examples/embed/script.lua")
    assert.are.equal(0, code, out)
    assert_lines(out, {
      "context.pollfd%(%) here: .*lcontext_use_loop.*the host owns that loop",
      "script loaded, running the host's loop",
      "fast step finished: true",
      "request done after %d+ ms: context deadline exceeded",
      "loop ended after 20 heartbeats",
      "host: ok",
    })
  end)

  it("embed/poll_host.c drives lcontext's loop from its own poll(2) loop", function()
    local host = "build/embed-poll-host"
    local f = io.open(host)
    if not f then
      local out, code = run("make -s " .. host)
      assert.are.equal(0, code, out)
    else
      f:close()
    end
    local out, code = run("./" .. host .. " examples/embed/poll_script.lua")
    assert.are.equal(0, code, out)
    assert_lines(out, {
      "polling lcontext's fd beside the host's own work",
      "fast step finished: true",
      "host's pipe readable after %d+ ms: \"!\"",
      "request done after %d+ ms: context deadline exceeded",
      "loop ended after 6 ticks",
      "poll%-host: ok",
    })
  end)
end)
