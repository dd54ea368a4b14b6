-- shutdown.lua — workers that stop cleanly on SIGINT or SIGTERM.
--
--   lua5.4 tools/with_paths.lua examples/shutdown.lua    (then press Ctrl-C)
--
-- context.signal gives a context that is cancelled, with the cause
-- "signal SIGINT" (or SIGTERM), when the signal arrives. Each worker checks
-- it between jobs and while it waits, finishes what it holds, and returns.
-- The program gives up by itself after 20 s (exit status 1) so that it
-- never runs forever unattended.
local context = require "lcontext"

local bg = context.background()
local shutdown, stop = context.signal(bg, "INT", "TERM")
local ctx, cancel = context.with_timeout(shutdown, 20, "nobody sent a signal")

local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
print(("pid %s: 3 workers running; send SIGINT or SIGTERM to stop"):format(pid))
io.stdout:flush()

local function worker(wctx, id)
  local jobs = 0
  while not wctx:is_done() do
    -- a job takes 10 ms; the wait ends early if the context is cancelled
    if context.sleep(wctx, 0.01) then jobs = jobs + 1 end
  end
  print(("worker %d: stopping after %d jobs (%s)"):format(id, jobs,
    tostring(context.cause(wctx))))
  io.stdout:flush()
  return jobs
end

local workers = {}
for id = 1, 3 do workers[id] = context.go(worker, ctx, id) end

context.run()
cancel()
stop()

local why = context.cause(ctx)
local clean = true
for id = 1, 3 do clean = clean and workers[id]:status() == "ok" end
print(("all workers stopped %s; cause: %s"):format(clean and "cleanly" or "with errors",
  tostring(why)))
os.exit(clean and type(why) == "string" and why:match("^signal SIG") and 0 or 1)
