local context = require "lcontext"
local h = require "spec.helpers"

-- with_value / key and ctx:value(key) (README, "Deriving" and "Asking").

local bg = context.background()

describe("ctx:value(key)", function()
  it("finds a value set with with_value, in both call forms", function()
    assert.are.equal("v", context.with_value(bg, "k", "v"):value("k"))
    assert.are.equal("w", bg:with_value("k", "w"):value("k"))
    assert.is_nil(context.with_value(bg, "k", "v"):value("other"))
  end)

  it("returns the nearest value up the chain", function()
    local a = context.with_value(bg, "k", 1)
    local b = context.with_value(a, "k", 2)
    local c = context.with_value(b, "other", 3)
    assert.are.equal(1, a:value("k"))
    assert.are.equal(2, b:value("k"))
    assert.are.equal(2, c:value("k"))
    assert.are.equal(3, c:value("other"))
    assert.is_nil(b:value("other"))
  end)

  it("returns false when the nearest value is false", function()
    local a = context.with_value(bg, "k", "outer")
    local b = context.with_value(a, "k", false)
    assert.is_false(b:value("k"))
    assert.are.equal("outer", a:value("k"))
  end)

  it("does not leak between siblings", function()
    local p = context.with_value(bg, "shared", "p")
    local a = context.with_value(p, "k", "a")
    local b = context.with_value(p, "k", "b")
    assert.are.equal("a", a:value("k"))
    assert.are.equal("b", b:value("k"))
    assert.are.equal("p", a:value("shared"))
    assert.are.equal("p", b:value("shared"))
    assert.is_nil(p:value("k"))
  end)

  it("returns the stored value itself (identity)", function()
    local t, f = {}, function() end
    local co = coroutine.create(f)
    local inner = context.with_cancel(bg)
    local ctx = context.with_value(context.with_value(context.with_value(
      context.with_value(bg, "t", t), "f", f), "co", co), "ctx", inner)
    h.is(ctx:value("t"), t, "table value")
    h.is(ctx:value("f"), f, "function value")
    h.is(ctx:value("co"), co, "thread value")
    h.is(ctx:value("ctx"), inner, "context value")
  end)

  describe("keys", function()
    local key_obj = context.key("request_id")
    local tkey, fkey = {}, function() end
    local co = coroutine.create(fkey)
    local keys = {
      { "a string", "user" },
      { "an empty string", "" },
      { "an integer", 42 },
      { "zero", 0 },
      { "a negative integer", -7 },
      { "a float", 2.5 },
      { "a huge float", 1e300 },
      { "math.huge", math.huge },
      { "-math.huge", -math.huge },
      { "math.mininteger", h.mininteger }, -- (5.1, LuaJIT: -2^53)
      { "a table", tkey },
      { "true", true },
      { "false", false },
      { "a context.key", key_obj },
      { "a function", fkey },
      { "a coroutine", co },
      { "a context", context.todo() },
      { "a userdata (io.stdout)", io.stdout },
    }
    for _, k in ipairs(keys) do
      it("works with " .. k[1] .. " as key", function()
        local marker = {}
        local ctx = context.with_value(bg, k[2], marker)
        h.is(ctx:value(k[2]), marker, "value")
        h.is(context.with_cancel(ctx):value(k[2]), marker, "value through with_cancel")
        h.is(context.with_value(ctx, "zzz", 1):value(k[2]), marker, "value through with_value")
      end)
    end

    it("treats different keys as different", function()
      local ctx = bg
      for i, k in ipairs(keys) do ctx = context.with_value(ctx, k[2], i) end
      for i, k in ipairs(keys) do
        assert.are.equal(i, ctx:value(k[2]), k[1])
      end
      assert.is_nil(ctx:value({}), "a fresh table")
      assert.is_nil(ctx:value(function() end), "a fresh function")
      assert.is_nil(ctx:value(43))
      assert.is_nil(ctx:value("User"))
    end)

    it("treats 1 and 1.0 as the same key, as Lua tables do", function()
      assert.are.equal("int", context.with_value(bg, 1, "int"):value(1.0))
      assert.are.equal("float", context.with_value(bg, 1.0, "float"):value(1))
      assert.are.equal("z", context.with_value(bg, 0, "z"):value(-0.0))
      assert.are.equal("big", context.with_value(bg, 2^53, "big"):value(h.tointeger(2^53)))
      local ctx = context.with_value(context.with_value(bg, 1, "first"), 1.0, "second")
      assert.are.equal("second", ctx:value(1))
    end)

    it("does not treat the number 1 and the string \"1\" as the same key", function()
      assert.is_nil(context.with_value(bg, 1, "n"):value("1"))
      assert.is_nil(context.with_value(bg, "1", "s"):value(1))
      assert.is_nil(context.with_value(bg, true, "t"):value("true"))
    end)

    it("compares long strings (> 40 chars) by content", function()
      local parts = {}
      for i = 1, 60 do parts[i] = string.char(97 + i % 26) end
      local k1 = table.concat(parts)
      local k2 = table.concat(parts) -- equal content, built separately
      local k3 = string.rep("x", 100) .. tostring(os.time())
      local ctx = context.with_value(context.with_value(bg, k1, "long"), k3, "longer")
      assert.are.equal("long", ctx:value(k2))
      assert.are.equal("longer", ctx:value(string.rep("x", 100) .. tostring(os.time())))
      assert.is_nil(ctx:value(k2 .. "!"))
      assert.is_nil(ctx:value(k2:sub(1, 59)))
    end)

    it("accepts a long string key that differs from another only at the end", function()
      local base = string.rep("k", 50)
      local ctx = context.with_value(context.with_value(bg, base .. "1", "one"), base .. "2", "two")
      assert.are.equal("one", ctx:value(base .. "1"))
      assert.are.equal("two", ctx:value(base .. "2"))
    end)
  end)

  it("passes through cancellable layers, also after cancel", function()
    local v = context.with_value(bg, "k", "v")
    local c1, cancel = context.with_cancel(v)
    local c2 = context.with_timeout(c1, 3600)
    local c3 = context.with_deadline(c2, os.time() + 3600)
    local c4 = context.with_cancel_cause(c3)
    local c5 = context.merge(c4, bg)
    for _, c in ipairs { c1, c2, c3, c4, c5 } do assert.are.equal("v", c:value("k")) end
    cancel()
    for _, c in ipairs { c1, c2, c3, c4, c5 } do
      assert.is_true(c:is_done())
      assert.are.equal("v", c:value("k"))
    end
  end)

  it("passes through without_cancel", function()
    local p, cancel = context.with_cancel(context.with_value(bg, "k", "v"))
    local w = context.without_cancel(p)
    local ww = context.with_value(w, "k2", "v2")
    assert.are.equal("v", w:value("k"))
    assert.are.equal("v", ww:value("k"))
    assert.are.equal("v2", ww:value("k2"))
    cancel()
    assert.are.equal("v", ww:value("k"))
  end)

  it("passes through a 1000-deep chain", function()
    local root = context.with_value(bg, "root", "r")
    local ctx = root
    for i = 1, 1000 do
      if i % 3 == 0 then ctx = context.with_value(ctx, i, i)
      elseif i % 3 == 1 then ctx = context.with_cancel(ctx)
      else ctx = context.with_timeout(ctx, 3600) end
    end
    assert.are.equal("r", ctx:value("root"))
    assert.are.equal(999, ctx:value(999))
    assert.are.equal(3, ctx:value(3))
    assert.is_nil(ctx:value(1000))
  end)

  it("with a NaN or nil key is nil or an error naming 'value', never a crash", function()
    local ctx = context.with_value(bg, "k", "v")
    for _, k in ipairs { 0 / 0, "nil" } do
      if k == "nil" then k = nil end
      local ok, res = pcall(function() local r = ctx:value(k); return r end)
      if ok then
        assert.is_nil(res)
      else
        assert.is_true(h.names_arg(res, { 1, 2 }, "value"), tostring(res))
      end
    end
  end)
end)

describe("context.key(name)", function()
  it("prints as its name", function()
    assert.are.equal("x", tostring(context.key("x")))
    assert.are.equal("request id", tostring(context.key("request id")))
  end)

  it("gives a different key on every call with the same name", function()
    local k1, k2 = context.key("x"), context.key("x")
    assert.is_false(rawequal(k1, k2))
    assert.is_false(k1 == k2)
    local ctx = context.with_value(bg, k1, "one")
    assert.are.equal("one", ctx:value(k1))
    assert.is_nil(ctx:value(k2))
    local both = context.with_value(ctx, k2, "two")
    assert.are.equal("one", both:value(k1))
    assert.are.equal("two", both:value(k2))
  end)

  it("is not the same key as its name string", function()
    local k = context.key("x")
    assert.is_nil(context.with_value(bg, k, 1):value("x"))
    assert.is_nil(context.with_value(bg, "x", 1):value(k))
  end)

  it("is usable as a Lua table key", function()
    local k1, k2 = context.key("a"), context.key("a")
    local t = { [k1] = 1, [k2] = 2 }
    assert.are.equal(1, t[k1])
    assert.are.equal(2, t[k2])
  end)
end)
