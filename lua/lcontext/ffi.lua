--- lcontext.ffi: LuaJIT's FFI path into the C core (README, "Runtimes").
--
-- On LuaJIT every call of a classic C function (lua_CFunction) leaves the
-- compiled trace; FFI calls and reads of C fields are compiled into it. So
-- on LuaJIT the questions a context answers most often are answered here,
-- in Lua, by reading the context's node through the userdata's payload
-- (ffi.cast of a userdata gives the address of its payload), and a cancel
-- without a cause is one FFI call into the core (csrc/l_ffi.c):
--
--   ctx:err(), ctx:is_done(), ctx:check()   direct reads of the node
--   ctx:deadline(), ctx:remaining()         reads, and the core's clock
--   ctx:value(key)                          a walk of the chain's payloads
--   cancel()                                lc_ffi_cancel
--
-- Same objects, same semantics, same messages: every case the fast path
-- does not handle itself (a bad self, which raises; a deadline that has
-- passed but was not noticed yet, whose notice runs the epilogue of a
-- cancel; a cancel with a cause, or that woke waiters) is handed to the
-- classic C function as a tail call, with the caller's arguments as they
-- were, so that its error messages name the call as before ("calling 'err'
-- on bad self" for ctx.err used as a method). Constructors (with_cancel,
-- with_timeout, with_deadline, with_value, ...) stay classic C functions:
-- the FFI cannot allocate the userdata they return (README, "Performance").
--
-- install(core) is called by lcontext.check.load_core(), so both backends
-- (lcontext on libev, lcontext.ngx in OpenResty) share it through the
-- methods of contexts. LCONTEXT_NO_FFI=1 in the environment keeps the
-- classic functions (to run the suite both ways); so does any mismatch
-- between the layout declared here and the one the core reports.
local M = {}

local jit = rawget(_G, "jit")

-- what install() decided: true, or false and why (for the specs and tools)
M.active, M.reason = false, "not installed"

local function decline(core, why)
  M.active, M.reason = false, why
  core._ffi_path = false
  return false, why
end

function M.install(core)
  if core._ffi_path ~= nil then return core._ffi_path, M.reason end
  if type(jit) ~= "table" then return decline(core, "not LuaJIT") end
  local env = os.getenv("LCONTEXT_NO_FFI")
  if env ~= nil and env ~= "" and env ~= "0" then
    return decline(core, "LCONTEXT_NO_FFI is set")
  end
  local okf, ffi = pcall(require, "ffi")
  if not okf or type(ffi) ~= "table" then return decline(core, "no ffi module") end
  if type(core._ffi) ~= "function" then return decline(core, "core without _ffi") end
  local info = core._ffi()

  -- the layout (csrc/lcontext_int.h, csrc/core/ctx.h), under names of our
  -- own: ffi.cdef is shared by the whole lua_State
  if not pcall(ffi.typeof, "struct lcontext_ffi_ctx") then
    local ok, e = pcall(ffi.cdef, [[
      struct lcontext_ffi_link { void *next; void *pprev; uintptr_t parent; };
      struct lcontext_ffi_node {
        struct lcontext_ffi_link link; void *children; int64_t o;
        int64_t deadline; void *watch; uint16_t nx; uint8_t err; uint8_t flags;
      };
      struct lcontext_ffi_ctx {
        struct lcontext_ffi_node *cn; struct lcontext_ffi_ctx *parent;
        uint8_t kind; uint8_t flags; uint16_t depth; uint32_t magic;
      };
      struct lcontext_ffi_vctx {
        struct lcontext_ffi_ctx h;
        union { const void *p; const char *s; int64_t i; double n; } x;
        uint8_t ktype; uint8_t ptype; uint32_t klen;
      };
      struct lcontext_ffi_api {
        int64_t (*now)(const void *rt);
        double (*deadline)(const void *rt, struct lcontext_ffi_ctx *c);
        int (*cancel)(void *rt, struct lcontext_ffi_ctx *c);
        const void *(*find)(struct lcontext_ffi_ctx *c, int kt, int pt,
                            const void *p, size_t len, int64_t i, double n);
      };
    ]])
    if not ok then return decline(core, "ffi.cdef failed: " .. tostring(e)) end
  end
  local CTX = "struct lcontext_ffi_ctx"
  local NODE = "struct lcontext_ffi_node"
  local VCTX = "struct lcontext_ffi_vctx"
  local expect = {
    sizeof_api = ffi.sizeof("struct lcontext_ffi_api"),
    sizeof_ctx = ffi.sizeof(CTX),
    ctx_cn = ffi.offsetof(CTX, "cn"),
    ctx_parent = ffi.offsetof(CTX, "parent"),
    ctx_kind = ffi.offsetof(CTX, "kind"),
    ctx_flags = ffi.offsetof(CTX, "flags"),
    sizeof_node = ffi.sizeof(NODE),
    node_deadline = ffi.offsetof(NODE, "deadline"),
    node_err = ffi.offsetof(NODE, "err"),
    sizeof_cancel = ffi.sizeof("void *"),
    never_hi = 0x7fffffff, never_lo = 0xffffffff,
    err_canceled = 1, err_deadline = 2,
    sizeof_vctx = ffi.sizeof(VCTX),
    vctx_x = ffi.offsetof(VCTX, "x"),
    vctx_ktype = ffi.offsetof(VCTX, "ktype"),
    vctx_ptype = ffi.offsetof(VCTX, "ptype"),
    sizeof_integer = 8,
    lk_value = 5, lk_merge = 4,
    kt_ptr = 1, kt_str = 2, kt_int = 3, kt_num = 4, kt_true = 5, kt_false = 6,
    t_userdata = 7,
  }
  for k, v in pairs(expect) do
    if info[k] ~= v then
      return decline(core, ("layout mismatch: %s is %s in the core, %s here")
        :format(k, tostring(info[k]), tostring(v)))
    end
  end

  local cast, type, tonumber = ffi.cast, type, tonumber
  local dgetmt = debug.getmetatable
  local CTXP = ffi.typeof("struct lcontext_ffi_ctx *")
  local CANCELP = ffi.typeof("struct lcontext_ffi_ctx **")
  local api = cast("const struct lcontext_ffi_api *", info.api)
  local api_now, api_deadline, api_cancel, api_find = api.now, api.deadline, api.cancel, api.find
  local MERGE = cast("const void *", info.api) -- what find returns for a merge on the way
  local rt = cast("void *", info.rt)
  local MT, MTGC, CANCELMT = info.mt, info.mtgc, info.cancelmt
  local CANCELED, DEADLINE = info.canceled, info.deadline_exceeded
  local NEVER = ffi.cast("int64_t", 0x7fffffff) * 4294967296 + 0xffffffff
  local after_cancel = core._ffi_after_cancel
  local fetch_value = core._ffi_value
  local UINTPTR = ffi.typeof("uintptr_t")
  local KEYMT = info.keymt
  local floor = math.floor

  local methods = core._methods
  local c_err, c_is_done, c_check = methods.err, methods.is_done, methods.check
  local c_deadline, c_remaining = methods.deadline, methods.remaining
  local c_value = methods.value
  local c_cancel = rawget(CANCELMT, "__call")
  if type(c_err) ~= "function" or type(c_cancel) ~= "function" then
    return decline(core, "core methods missing")
  end

  -- Each function below: a bad self goes to the classic function, which
  -- raises (a tail call, with the arguments as given: "got no value" stays).

  -- ctx:err() -> nil | canceled | deadline_exceeded (csrc/l_ctx.c, l_err)
  local function err(...)
    local self = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_err(...) end
    local n = cast(CTXP, self).cn
    if n == nil then return nil end
    local e = n.err
    if e == 0 then
      -- running; a deadline that has passed is noticed (and its epilogue
      -- run) by the classic function, as if its timer had fired
      if n.deadline == NEVER or api_now(rt) < n.deadline then return nil end
      return c_err(...)
    end
    if e == 1 then return CANCELED end
    return DEADLINE
  end

  -- ctx:is_done() -> boolean
  local function is_done(...)
    local self = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_is_done(...) end
    local n = cast(CTXP, self).cn
    if n == nil then return false end
    if n.err ~= 0 then return true end
    if n.deadline == NEVER or api_now(rt) < n.deadline then return false end
    return c_is_done(...)
  end

  -- ctx:check() -> ctx, or raises ctx:err()
  local function check(...)
    local self = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_check(...) end
    local n = cast(CTXP, self).cn
    if n == nil then return self end
    if n.err == 0 and (n.deadline == NEVER or api_now(rt) < n.deadline) then return self end
    return c_check(...)
  end

  -- ctx:deadline() -> epoch seconds, or nil
  local function deadline(...)
    local self = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_deadline(...) end
    local p = cast(CTXP, self)
    local n = p.cn
    if n == nil or n.deadline == NEVER then return nil end
    return api_deadline(rt, p)
  end

  -- ctx:remaining() -> seconds left (<= 0 once passed), or nil
  local function remaining(...)
    local self = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_remaining(...) end
    local n = cast(CTXP, self).cn
    if n == nil or n.deadline == NEVER then return nil end
    local now = api_now(rt)
    if n.err == 0 and n.deadline <= now then return c_remaining(...) end
    return tonumber(n.deadline - now) / 1e9
  end

  -- ctx:value(key) -> the nearest value for key, or nil (csrc/l_value.c).
  -- The chain is walked by one FFI call (a loop here would stop the trace
  -- of the caller's loop: "inner loop in root trace"), with the key
  -- described as the core describes it: a string by its bytes, a number
  -- as an integer or a float, a boolean by its kind, a context.key by its
  -- payload's address (lua_topointer's). Other keys (tables, functions,
  -- foreign userdata, NaN), a merge on the way, or a bad self: the
  -- classic function.
  -- The value of the context found is the Lua value in its user value 3,
  -- which the FFI cannot read: it comes from the core once
  -- (core._ffi_value) and is then remembered by the context's address in
  -- two weak-valued tables, the context itself in U (a live entry there
  -- says the address still holds that context: a context is collected, and
  -- its entry cleared, before its memory can serve another) and the value
  -- in V (weak too: a value that refers to its own context does not keep
  -- it alive; the context keeps the value alive while it lives).
  local U = setmetatable({}, { __mode = "v" })
  local V = setmetatable({}, { __mode = "v" })
  local NILV = U -- the value nil, in V
  local function value(...)
    local self, key = ...
    local mt = dgetmt(self)
    if (mt ~= MT and mt ~= MTGC) or type(self) ~= "userdata" then return c_value(...) end
    local tk = type(key)
    local p
    if tk == "string" then
      p = api_find(cast(CTXP, self), 2, 0, key, #key, 0, 0)
    elseif tk == "number" then
      if key >= -9.2e18 and key < 9.2e18 and key == floor(key) then
        p = api_find(cast(CTXP, self), 3, 0, nil, 0, key, 0)
      elseif key == key then
        p = api_find(cast(CTXP, self), 4, 0, nil, 0, 0, key)
      else
        return c_value(...)
      end
    elseif tk == "boolean" then
      p = api_find(cast(CTXP, self), key and 5 or 6, 0, nil, 0, 0, 0)
    elseif tk == "userdata" and dgetmt(key) == KEYMT then
      p = api_find(cast(CTXP, self), 1, 7, key, 0, 0, 0)
    else
      return c_value(...)
    end
    if p == nil then return nil end
    if p == MERGE then return c_value(...) end
    local a = tonumber(cast(UINTPTR, p))
    if U[a] ~= nil then
      local x = V[a]
      if x ~= nil then
        if x == NILV then return nil end
        return x
      end
    end
    local u, x = fetch_value(self, a)
    if u == nil then return c_value(...) end
    U[a] = u
    if x == nil then V[a] = NILV else V[a] = x end
    return x
  end

  -- cancel([cause]): without a cause, one FFI call; the epilogue (waiters
  -- woken to anchor, external watches to call) is the classic one
  local function cancel(...)
    local self, cause = ...
    if cause ~= nil or dgetmt(self) ~= CANCELMT or type(self) ~= "userdata" then
      return c_cancel(...)
    end
    local r = api_cancel(rt, cast(CANCELP, self)[0])
    if r == 0 then return end
    if r == 1 then
      after_cancel(self)
      return
    end
    return c_cancel(...)
  end

  methods.err, methods.is_done, methods.check = err, is_done, check
  methods.deadline, methods.remaining, methods.value = deadline, remaining, value
  rawset(CANCELMT, "__call", cancel)

  M.active, M.reason = true, "installed"
  core._ffi_path = true
  -- for the specs: the classic functions, to compare the two paths
  M.classic = { err = c_err, is_done = c_is_done, check = c_check,
    deadline = c_deadline, remaining = c_remaining, value = c_value, cancel = c_cancel }
  return true
end

return M
