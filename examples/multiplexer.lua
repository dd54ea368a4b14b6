-- multiplexer.lua — Go's multiplexer: one select over many channels, with
-- a deadline.
--
--   lua5.4 tools/with_paths.lua examples/multiplexer.lua
--
-- From "Go Concurrency Patterns": several talkers each send on a channel of
-- their own, and one loop listens to all of them with a select:
--
--   for {
--       select {
--       case s := <-joe:  fmt.Println(s)
--       case s := <-ann:  fmt.Println(s)
--       case <-timeout:   fmt.Println("You talk too much."); return
--       }
--   }
--
-- Here context.select takes the receive cases of every channel, a context
-- whose deadline ends the whole conversation, and a number: the longest
-- silence allowed between two messages (a fresh sleep on each pass, like
-- Go's time.After in the loop). It returns the index of the case that won
-- and, for a receive, the value and ok (false once the channel is closed
-- and drained: that talker has left, and its case is dropped).
--
-- The talkers are tasks of context.spawn under one context: when the
-- listener is done it cancels that context and every talker stops, its
-- blocked send returning nil, err (the message was not sent).
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

-- a talker: says something every `every` seconds on ch, `limit` times or
-- until its context ends, then closes ch (the sender closes, whatever the
-- reason: "nothing more from me")
local function talker(ctx, ch, name, every, limit)
  local n, err = 0, nil
  while (limit == nil or n < limit) and err == nil do
    local ok
    ok, err = context.sleep(ctx, every)
    if ok then ok, err = ch:send(ctx, ("%s says %d"):format(name, n + 1)) end
    if ok then n = n + 1 end -- (a send that failed: the message was not sent)
  end
  ch:close()
  if err ~= nil then return ("%s stopped after %d messages: %s"):format(name, n, tostring(err)) end
  return ("%s left after %d messages"):format(name, n)
end

local function converse(title, talkers, deadline, silence)
  say("%s: %d talkers, deadline %.0f ms, silence limit %.0f ms", title, #talkers,
    deadline * 1000, silence * 1000)
  local talk, stop = context.with_cancel(bg)
  local listening = {} -- { name, ch } of the talkers still there
  local tasks = {}
  for i, t in ipairs(talkers) do
    local ch = context.channel()
    listening[i] = { name = t[1], ch = ch }
    tasks[i] = context.spawn(talk, talker, ch, t[1], t[2], t[3])
  end

  local ctx, cancel <close> = context.with_timeout(bg, deadline)
  local heard, why = 0, nil
  while #listening > 0 do
    -- the cases: ctx, the silence limit, then one receive per channel
    local cases = { ctx, silence }
    for i, l in ipairs(listening) do cases[i + 2] = l.ch:recv_case() end
    local i, _, msg, ok = context.select(table.unpack(cases))
    if i == 1 then
      why = "deadline: " .. tostring(ctx:err())
      break
    elseif i == 2 then
      why = ("nobody spoke for %.0f ms"):format(silence * 1000)
      break
    elseif ok then
      heard = heard + 1
      say("  %s", msg)
    else -- closed and drained: that talker is gone
      local gone = table.remove(listening, i - 2)
      say("  (%s has left)", gone.name)
    end
  end
  say("%s: heard %d messages, stopped listening (%s)", title, heard, why or "everyone left")
  stop() -- the talkers still there stop at their next wait
  for _, t in ipairs(tasks) do say("  %s", t:wait()) end
end

context.go(function()
  -- (the timings keep 50 ms or more between the events that must not swap,
  -- so the story holds on a loaded machine)
  -- Bob says 2 things and leaves; Joe and Ann talk until the deadline
  converse("meeting", { { "Joe", 0.06 }, { "Ann", 0.09 }, { "Bob", 0.025, 2 } }, 0.4, 0.3)
  print()
  -- Ann talks twice, then everyone falls silent for longer than allowed
  converse("lunch", { { "Ann", 0.02, 2 }, { "Joe", 1 } }, 2, 0.15)
end)
context.run()
local s = context.sync_stats()
say("channels: %d made, %d values passed, %d tasks still blocked", s.channels_created,
  s.channel_recvs, s.channel_blocked_send + s.channel_blocked_recv)
