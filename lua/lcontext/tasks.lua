--- lcontext.tasks: tasks that own a context (README, "Structured
-- concurrency"; docs/concurrency.md). The same on libev and in nginx.
--
--   local t = context.spawn(ctx, fn, ...)  -- fn(task_ctx, ...) in a task
--   t:cancel([cause]); t:context()         -- task_ctx: a child of ctx
--   context.current()                      -- the running task's context
--   context.shield(seconds, fn, ...)       -- fn(sctx, ...), out of reach of
--                                          -- outer cancellation, for at most seconds
--
-- The bound rule (Trio's cancel scopes, at every checkpoint): inside a
-- spawned task every wait of the backend (ctx:done(), sleep, wait_fd,
-- select, task:wait, channel and semaphore operations, and so every
-- helper) also ends when the task's context ends, even when the code waits
-- on another context: sleep and the operations return nil, task_ctx:err();
-- select returns nil, task_ctx:err(). So a library that knows nothing of
-- contexts still stops when its task is cancelled. The backends apply the
-- bound (check.bound); this module says which context bounds which
-- coroutine. A task started with context.go, even from a spawned task, has
-- no bound: spawn it with context.current() to keep it inside.
--
-- task_ctx is cancelled when fn returns or raises (as errgroup's context is
-- after Wait), so nothing started under it outlives the task by accident.
return function(context)
  local check = require "lcontext.check"
  local go, with_cancel_cause, with_timeout, without_cancel, background =
    context.go, context.with_cancel_cause, context.with_timeout,
    context.without_cancel, context.background
  local running = coroutine.running
  local error, setmetatable = error, setmetatable
  local pack, unpack, pcall = check.pack, check.unpack, check.pcall
  local bound = check.bound
  local bound_ctx, MAIN = bound.ctx, bound.MAIN
  local check_ctx, argerr, tname, callable = check.ctx, check.argerr, check.tname, check.callable
  local task_methods, on_task_end = check.task_methods, check.on_task_end

  local M = {}

  -- task -> { ctx = task_ctx, cancel = its cancel }, while the task lives
  local owned = setmetatable({}, { __mode = "k" })

  local function body(tctx, fn, ...)
    bound_ctx[running() or MAIN] = tctx
    return fn(tctx, ...)
  end

  --- context.spawn(ctx, fn, ...) -> task running fn(task_ctx, ...)
  function M.spawn(ctx, fn, ...)
    check_ctx(ctx, "spawn", 1)
    if not callable(fn) then
      argerr("spawn", 2, "function expected, got " .. tname(fn))
    end
    local tctx, cancel = with_cancel_cause(ctx)
    bound.active = true
    local t = go(body, tctx, fn, ...)
    owned[t] = { ctx = tctx, cancel = cancel }
    on_task_end(t, cancel)
    return t
  end

  local function owner(t, fname)
    local o = owned[t]
    if o == nil then
      if not pcall(task_methods.status, t) then
        error(("calling '%s' on bad self (task expected, got %s)"):format(fname, tname(t)), 3)
      end
      error(("calling '%s' on a task started by context.go: only a task of "
        .. "context.spawn owns a context"):format(fname), 3)
    end
    return o
  end

  --- task:cancel([cause]): cancels the task's context (cause: any non-nil
  -- value; context.canceled by default). The task stops at its next wait.
  function task_methods.cancel(t, cause)
    local o = owner(t, "cancel")
    if cause == nil then o.cancel() else o.cancel(cause) end
  end

  --- task:context() -> the task's context
  function task_methods.context(t)
    return owner(t, "context").ctx
  end

  --- context.current() -> the running spawned task's context (inside a
  -- shield: the shield's), or background() elsewhere
  function M.current()
    return bound_ctx[running() or MAIN] or background()
  end

  --- context.shield(seconds, fn, ...) -> what fn(sctx, ...) returned.
  -- sctx keeps the values of context.current() but none of its
  -- cancellation, and ends after seconds: cleanup that an outer cancel
  -- cannot interrupt, but that cannot hang either. A raise in fn is raised
  -- again, once the shield is gone.
  function M.shield(seconds, fn, ...)
    check.seconds(seconds, "shield", 1)
    if not callable(fn) then
      argerr("shield", 2, "function expected, got " .. tname(fn))
    end
    local key = running() or MAIN
    local outer = bound_ctx[key]
    local sctx, cancel = with_timeout(without_cancel(outer or background()), seconds)
    bound.active = true
    bound_ctx[key] = sctx
    local r = pack(pcall(fn, sctx, ...))
    bound_ctx[key] = outer
    cancel()
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end

  return M
end
