-- repl_spec.lua — the prompt, driven for real: `make repl` (and the command
-- it runs, `LUA -i tools/with_paths.lua`) under a pseudo-terminal made by
-- util-linux's `script`, typed into line by line, on the runtime running
-- the suite (lua5.4, lua5.3, lua5.1 or luajit, each with its own build).
-- README, "At the prompt": `context` is loaded; a callback queued at the
-- prompt runs in the next loop call (context.step()), not in other calls;
-- step() says whether work is left; Ctrl-C during a wait prints lua.c's
-- "interrupted!" at once and gives the prompt back, twice in a row.
--
-- Each session is bounded (coreutils' `timeout` around `script`; when
-- `script` ends, the terminal hangs up and the REPL with it) and is ended
-- at the end of its test whatever happened.
--
-- The REPL is a process of its own, not the module under the suite's
-- instrumentation: under valgrind, ASan and the GC-stress hook this file
-- only says so (one pending test). It is not tagged novalgrind because the
-- 5.3, 5.1 and LuaJIT suites leave novalgrind out, and it runs there.
local h = require "spec.helpers"

if os.getenv("LCONTEXT_VALGRIND") or os.getenv("LCONTEXT_GC_STRESS")
    or (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) then
  describe("the prompt", function()
    it("is driven by the plain suites", function()
      pending("the REPL runs in processes of its own, without this suite's "
        .. "instrumentation: the plain 5.4, 5.3, 5.1 and LuaJIT suites drive it")
    end)
  end)
  return
end

local WAIT = 15   -- seconds for one expected answer
local LIMIT = 90  -- seconds for a whole session

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function sh(cmd) -- true if cmd exited 0 (os.execute differs by runtime)
  local r = os.execute(cmd)
  return r == true or r == 0
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- A session: `cmd` run by `script` on a new pseudo-terminal, its input a
-- FIFO (held open read-write here, so a write never meets a closed pipe),
-- its output (echoes of what is typed included) a file.
local Session = {}
Session.__index = Session

local function start(cmd)
  local dir = os.tmpname()
  os.remove(dir)
  assert(sh("mkdir " .. dir), "mkdir " .. dir)
  local s = setmetatable({ dir = dir, input = dir .. "/in", out = dir .. "/out",
    cmd = cmd, seen = 0 }, Session)
  assert(sh("mkfifo " .. s.input), "mkfifo")
  s.fifo = assert(io.open(s.input, "r+"))
  -- TERM=dumb: no escape sequences from readline
  -- `script` runs the command with $SHELL -c: SHELL=/bin/sh makes that the
  -- same everywhere, and `exec` leaves no shell between the terminal and
  -- the command (dash, waiting on a child when Ctrl-C comes, kills itself
  -- with SIGINT once the child has exited: status 130 for a clean exit)
  assert(sh(("(TERM=dumb SHELL=/bin/sh timeout -k 2 %d script -qfec %s /dev/null < %s > %s 2>&1 & "
      .. "echo $! > %s/pid; wait $!; echo \"__rc=$?\" >> %s) > /dev/null 2>&1 &")
    :format(LIMIT, sh_quote("exec " .. cmd), s.input, s.out, dir, s.out)))
  return s
end

function Session:type(text)
  self.fifo:write(text)
  self.fifo:flush()
end

function Session:output() return slurp(self.out) end

-- wait until the output after what earlier expects consumed holds `plain`;
-- returns the output up to and including it, and the seconds waited
function Session:expect(plain, what)
  local t0 = h.now()
  while true do
    local all = self:output()
    local i, j = all:find(plain, self.seen + 1, true)
    if i then
      local upto = all:sub(self.seen + 1, j)
      self.seen = j
      return upto, h.now() - t0
    end
    if all:find("__rc=%d+") or h.now() - t0 > WAIT then
      error(("%s: %q did not appear (%s) in the output of %s:\n%s"):format(what or "expect",
        plain, all:find("__rc=") and "the session ended" or ("after %d s"):format(WAIT),
        self.cmd, all), 2)
    end
    h.sleep(0.02)
  end
end

-- the session's exit status, once it has ended (nil if it does not in time)
function Session:wait_exit()
  local t0 = h.now()
  repeat
    local rc = self:output():match("__rc=(%d+)")
    if rc then return tonumber(rc) end
    h.sleep(0.02)
  until h.now() - t0 > WAIT
end

function Session:close()
  local pid = slurp(self.dir .. "/pid"):match("%d+")
  -- still running: `timeout` passes TERM on to `script`, whose end hangs
  -- up the terminal, which ends the REPL (and make)
  if pid and not self:output():find("__rc=%d+") then
    sh("kill -TERM " .. pid .. " 2>/dev/null")
  end
  self.fifo:close()
  self:wait_exit()
  os.remove(self.out)
  os.remove(self.input)
  os.remove(self.dir .. "/pid")
  os.remove(self.dir)
end

-- run `body(session)` with the session closed afterwards, whatever happens
local function with_session(cmd, body)
  local s = start(cmd)
  local ok, err = pcall(body, s)
  s:close()
  if not ok then error(err, 0) end
end

-- the build that `make repl LUA=...` and with_paths.lua use on this runtime
local BUILD = ({ ["5.4"] = "build", ["5.3"] = "build-5.3", ["5.1"] = "build-5.1",
  luajit = "build-jit" })[h.RUNTIME]

-- Markers: what the REPL prints is typed as `"R" .. "1"` so that the echo
-- of the typed line never matches the printed "R1".
describe("the prompt (" .. h.LUA .. ")", function()
  it("make repl: context loaded; a queued callback runs in step(), not before", function()
    with_session("make -s repl LUA=" .. h.LUA, function(s)
      local banner = s:expect('context = require "lcontext"', "the banner")
      assert(banner and s:expect("/" .. BUILD .. " (", "the build named in the banner"))

      s:type("ctx, cancel = context.with_timeout(context.background(), 0.05)\n")
      s:type('print("R" .. "1", ctx:done())\n')
      s:expect("R1\tcontext deadline exceeded", "ctx:done()")
      s:type('print("R" .. "2", context.step())\n')
      s:expect("R2\tfalse", "step() with nothing left")

      -- the context is done: after_func queues the callback at once ...
      s:type('stop = context.after_func(ctx, function() print("C" .. "B ran") end)\n')
      -- ... and other lcontext calls do not run it
      s:type('print("R" .. "3", ctx:err(), ctx:remaining() < 0, context.now() > 0)\n')
      local upto = s:expect("R3\tcontext deadline exceeded\ttrue\ttrue", "other calls")
      assert(not upto:find("CB ran", 1, true),
        "the callback ran before a loop call:\n" .. s:output())
      -- a loop call runs it, before it returns
      s:type('print("R" .. "4", context.step(0))\n')
      s:expect("CB ran", "the callback in step(0)")
      s:expect("R4\tfalse", "step(0) after the callback")

      -- step() is true while work is left: a deadline something waits on
      s:type('c2 = context.with_timeout(context.background(), 60)\n')
      s:type('stop2 = context.after_func(c2, function() end)\n')
      s:type('print("R" .. "5", context.step())\n')
      s:expect("R5\ttrue", "step() with a pending deadline")
      s:type('print("R" .. "6", stop2(), context.step())\n')
      s:expect("R6\ttrue\tfalse", "step() once stopped")

      s:type("os.exit(0)\n")
      local rc = s:wait_exit()
      assert(rc == 0, ("make repl exited with %s:\n%s"):format(tostring(rc), s:output()))
    end)
  end)

  it("Ctrl-C during a wait prints \"interrupted!\" at once and gives the prompt back", function()
    with_session(h.LUA .. " -i tools/with_paths.lua", function(s)
      s:expect('context = require "lcontext"', "the banner")
      for round = 1, 2 do -- the second Ctrl-C must not kill the interpreter
        s:type(('print("S" .. "%d"); context.sleep(context.background(), 10)\n'):format(round))
        s:expect("S" .. round, "the sleep started")
        h.sleep(0.1)
        s:type("\3") -- what the terminal turns into SIGINT for the REPL
        local _, took = s:expect("interrupted!", "the interrupt")
        assert(took < 3, ("\"interrupted!\" took %.2f s to come"):format(took))
        s:type(('print("T" .. "%d", context.sleep(context.background(), 0.1))\n'):format(round))
        s:expect("T" .. round .. "\ttrue", "a sleep after the interrupt")
      end
      s:type('print("T" .. "3", context.step())\n')
      s:expect("T3\tfalse", "the loop is idle")
      local out = s:output()
      assert(not out:find("error in the loop", 1, true),
        "the interrupt was reported as a loop error:\n" .. out)
      s:type("os.exit(0)\n")
      local rc = s:wait_exit()
      assert(rc == 0, ("the REPL exited with %s:\n%s"):format(tostring(rc), s:output()))
    end)
  end)
end)
