-- worker_pool.lua — a bounded worker pool fed by a channel, that drains
-- cleanly on SIGINT or SIGTERM.
--
--   lua5.4 tools/with_paths.lua examples/worker_pool.lua    (then press Ctrl-C)
--
-- A producer puts jobs on a buffered channel (the queue: at most 5 jobs
-- wait), and 3 workers take them off, one at a time each: never more than
-- 3 jobs run, never more than 5 wait, and a producer faster than the
-- workers simply waits in send.
--
-- Shutdown, Go's way. Only the producer listens to the signal: it runs
-- under context.signal(bg, "INT", "TERM"), so its blocked send returns nil,
-- err when the signal comes (that job was not queued: nothing is half
-- sent). It then closes the queue -- closing is the sender's call -- and
-- the workers, which know nothing of signals, finish what is queued: a
-- receive on a closed channel gets what is buffered first, then nil, false,
-- and each worker returns. Every job that was queued is done; none is lost.
--
-- The drain is bounded: the program waits for the workers with
-- task:wait(drain), a context of 2 s; if they take longer it cancels their
-- context and they stop at their next wait. The program gives up by itself
-- after 20 s (exit status 1) so that it never runs forever unattended.
local context = require "lcontext"

local WORKERS, QUEUE, JOB_TIME, DRAIN = 3, 5, 0.01, 2

local bg = context.background()
local shutdown, stop_listening = context.signal(bg, "INT", "TERM")
local ctx, cancel = context.with_timeout(shutdown, 20, "nobody sent a signal")

local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
print(("pid %s: %d workers, a queue of %d; send SIGINT or SIGTERM to stop"):format(pid,
  WORKERS, QUEUE))
io.stdout:flush()

local function say(fmt, ...)
  print(fmt:format(...))
  io.stdout:flush()
end

local jobs = context.channel(QUEUE)

-- the producer: queues jobs until its context ends, then closes the queue
local producer = context.spawn(ctx, function(pctx)
  local queued = 0
  while true do
    local ok, err = jobs:send(pctx, queued + 1)
    if not ok then
      say("producer: job %d not queued (%s, cause: %s)", queued + 1, tostring(err),
        tostring(pctx:cause()))
      break
    end
    queued = queued + 1
  end
  jobs:close() -- no more jobs: the workers drain the queue, then stop
  say("producer: %d jobs queued; queue closed with %d still waiting", queued, jobs:len())
  return queued
end)

-- a worker: takes jobs until the queue is closed and drained
local function worker(wctx, id)
  local done = 0
  while true do
    local job, ok = jobs:recv(wctx) -- job, true | nil, false (closed, drained) | nil, err
    if ok == false then break end
    if ok ~= true then
      say("worker %d: stopped after %d jobs: %s", id, done, tostring(ok))
      return done
    end
    assert(context.sleep(wctx, JOB_TIME), "job cut short") -- the job's work
    done = done + 1
  end
  say("worker %d: queue drained, %d jobs done", id, done)
  return done
end

-- the workers' context is not the signal's: they drain after it
local work, stop_work = context.with_cancel_cause(bg)
local workers = {}
for id = 1, WORKERS do workers[id] = context.spawn(work, worker, id) end

local queued = producer:wait()
local drain, drain_cancel = context.with_timeout(bg, DRAIN)
local done, clean = 0, true
for id = 1, WORKERS do
  local n, err = workers[id]:wait(drain) -- bounded: nil, err if the drain runs late
  if n == nil and drain:err() then
    stop_work("drain took longer than " .. DRAIN .. " s")
    n = workers[id]:wait()
    clean = false
  end
  done = done + (n or 0)
end
drain_cancel()
stop_work()
cancel()
stop_listening()

local why = context.cause(ctx)
local s = context.sync_stats()
say("queued %d jobs, done %d, lost %d; queue: %d buffered, %d tasks blocked", queued, done,
  queued - done, s.channel_buffered, s.channel_blocked_send + s.channel_blocked_recv)
clean = clean and done == queued
say("all workers stopped %s; cause: %s", clean and "cleanly" or "with jobs lost", tostring(why))
os.exit(clean and type(why) == "string" and why:match("^signal SIG") and 0 or 1)
