--- lcontext: Go's context package for Lua.
-- The C core (lcontext.core) holds the context tree; this module is the
-- public face: it re-exports the core and adds what is written in Lua.
local core = require "lcontext.core"

local M = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" then M[k] = v end
end

M._VERSION = "lcontext scm"

return M
