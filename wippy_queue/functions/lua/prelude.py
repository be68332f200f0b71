"""The Lua side of the sandbox, run once in every fresh Lua state.

It captures what the host needs (``debug.sethook``, ``debug.traceback``, the raw
loaders) in locals, builds the safe base environment handlers see, and returns a
table of internal functions to Python. Python then empties the real global table,
so nothing reachable from handler code leads to ``os``, ``io``, ``debug``,
``package`` or lupa's ``python`` module. Every internal function uses only
upvalues, so a handler cannot redirect them through globals.
"""

from __future__ import annotations

#: Instructions between two runs of the count hook.
HOOK_STEP = 1000
#: Instructions (and charged work) between two cancellation checks (a call into Python).
CHECK_TICKS = 100_000

PRELUDE = r"""
local check, print_host, lift_memory_limit, STEP, CHECK_TICKS, CANCELLED, MATCHER,
  FUNCTIONS = ...
local sethook, traceback = debug.sethook, debug.traceback
local loadstring, setfenv = loadstring, setfenv
local setmetatable, getmetatable = setmetatable, getmetatable
local type, error, pairs, ipairs, select, tostring, rawget, xpcall, pcall, unpack =
  type, error, pairs, ipairs, select, tostring, rawget, xpcall, pcall, unpack
local collectgarbage, assert, tonumber, floor, log = collectgarbage, assert, tonumber,
  math.floor, math.log
local now = os.time  -- cheap (a second's resolution): cancellation is also checked by time
local co_create, co_resume = coroutine.create, coroutine.resume
local byte, format, concat, sort = string.byte, string.format, table.concat, table.sort

-- instruction budget, cancellation ---------------------------------------------------
-- ctl.stop, once set, ends the call: every protected call below re-raises it, so no
-- pcall, xpcall or coroutine of the handler can catch it (nor a memory error).
local NO_MEMORY = "not enough memory"
-- (no budget until the first call: setting the state up runs only our own code)
local ctl = {budget = math.huge, ticks = 0, owed = 0, stop = false, second = 0}
local hook

local function halt()
  sethook(hook, "", 1)  -- from now on every instruction of this thread fails too
  error(ctl.stop, 0)
end

-- Spend `cost` instructions of the budget. Python is asked whether to cancel every
-- CHECK_TICKS, and at least once a second: instructions that each copy megabytes
-- (`..` of long strings) are few but slow.
local function charge(cost)
  if not ctl.stop then
    local budget = ctl.budget - cost
    ctl.budget = budget
    if budget <= 0 then
      ctl.stop = "instruction limit exceeded"
    else
      local ticks, second = ctl.ticks + cost, now()
      if ticks >= CHECK_TICKS or second ~= ctl.second then
        ticks, ctl.second = 0, second
        if check() then ctl.stop = CANCELLED end
      end
      ctl.ticks = ticks
    end
  end
  if ctl.stop then halt() end
end

hook = function() charge(STEP) end
sethook(hook, "", STEP)

-- What comes back from a protected call: a stop (or memory error) goes on up.
local function relay(ok, ...)
  if not ok and not ctl.stop and (...) == NO_MEMORY then ctl.stop = NO_MEMORY end
  if ctl.stop then halt() end
  return ok, ...
end

-- Hooks are per coroutine in Lua 5.1 and a fresh coroutine's count starts at zero, so
-- its first STEP instructions are paid for up front: short-lived coroutines cannot
-- run uncounted.
local function new_coroutine(f)
  charge(STEP)
  local co = co_create(f)
  sethook(co, hook, "", STEP)
  return co
end

-- A host (Python) function: it may have owed work to the budget, or stopped the call.
local function metered(fn)
  return function(...)
    local r = fn(...)
    local owed = ctl.owed
    if owed > 0 then
      ctl.owed = 0
      charge(owed)
    end
    if ctl.stop then halt() end
    return r
  end
end

local function rethrow(ok, ...)
  if not ok then error((...), 0) end
  return ...
end

-- the safe base environment --------------------------------------------------------
local function copy(t, drop)
  local out = {}
  for k, v in pairs(t) do if not (drop and drop[k]) then out[k] = v end end
  return out
end

local array_mt = {}  -- marks tables made from Python lists: {} stays [] on the way back
local string_lib = copy(string, {dump = true})
-- pattern functions run in Lua (patterns.py); C loops the hook cannot see are charged
local matcher = assert(loadstring(MATCHER, "=patterns"))(charge, string)
local patterns = assert(loadstring(FUNCTIONS, "=patterns"))(charge, string, matcher)
for _, name in ipairs({"find", "match", "gmatch", "gsub"}) do string_lib[name] = patterns[name] end
local C = {rep = string.rep}
string_lib.rep = function(s, n)
  local count, ts = tonumber(n), type(s)
  if count and count > 0 and (ts == "string" or ts == "number") then
    local size = #tostring(s)  -- the memory limit bounds the bytes, not a loop over ""
    charge(floor(size == 0 and count or count * size / 16))
  end
  local r = C.rep(s, n)
  return r
end
getmetatable("").__index = string_lib
getmetatable("").__metatable = "string"

local base = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  rawequal = rawequal, rawget = rawget, rawset = rawset, select = select,
  tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
  setmetatable = setmetatable, _VERSION = _VERSION,
  string = string_lib, table = copy(table), math = copy(math),
}
-- table functions that loop in C over a whole table are charged what they will do
local T = {sort = table.sort, insert = table.insert, remove = table.remove}
local function length(t) return type(t) == "table" and #t or 0 end
base.table.sort = function(t, less)
  local n = length(t)
  if n > 1 then charge(floor(n * log(n) / log(2))) end
  T.sort(t, less)
end
base.table.insert = function(t, ...)  -- at a position: moves the items after it
  if select("#", ...) > 1 then charge(length(t)) end
  T.insert(t, ...)
end
base.table.remove = function(t, ...)
  if select("#", ...) > 0 then charge(length(t)) end
  local r = T.remove(t, ...)
  return r
end
base.pcall = function(f, ...) return relay(pcall(f, ...)) end
-- An error raised inside the hook runs the message handler with hooks off: a user
-- handler that loops would never be stopped. Once a call is stopped, skip it.
base.xpcall = function(f, handler)
  return relay(xpcall(f, function(e)
    if ctl.stop then return e end
    return handler(e)
  end))
end
base.getmetatable = function(v)
  if type(v) == "userdata" then return nil end
  return getmetatable(v)
end
base.collectgarbage = function(opt, arg)
  if opt == nil or opt == "collect" or opt == "step" then
    charge(floor(collectgarbage("count") * 64))  -- a full cycle walks the whole heap
  end
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
    return collectgarbage(opt, arg)
  end
  error(format("collectgarbage(%q) is not available in the sandbox", tostring(opt)), 2)
end
base.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  print_host(concat(parts, "\t"))
end
base.table.unpack = unpack
base.coroutine = copy(coroutine)
base.coroutine.create = new_coroutine
base.coroutine.resume = function(co, ...) return relay(co_resume(co, ...)) end
base.coroutine.wrap = function(f)
  local co = new_coroutine(f)
  return function(...) return rethrow(relay(co_resume(co, ...))) end
end

local function loaders(env)
  local function load_string(s, name)
    if type(s) ~= "string" then return nil, "loadstring: expected a string of Lua source" end
    if byte(s, 1) == 27 then return nil, "precompiled (binary) chunks cannot be loaded" end
    local f, err = loadstring(s, name)
    if not f then return nil, err end
    setfenv(f, env)
    return f
  end
  local function load(reader, name)
    if type(reader) == "string" then return load_string(reader, name) end
    if type(reader) ~= "function" then return nil, "load: expected a function or a string" end
    local parts = {}
    while true do
      local piece = reader()
      if piece == nil or piece == "" then break end
      if type(piece) ~= "string" then return nil, "load: the reader returned a non-string" end
      parts[#parts + 1] = piece
    end
    return load_string(concat(parts), name or "=(load)")
  end
  return load_string, load
end

-- units (function.lua entries) and require ------------------------------------------
local units, loaded, loading, envs = {}, {}, {}, {}
local makers, modules = {}, {}
local run_unit

local function make_require(unit)
  return function(name)
    if type(name) ~= "string" then error("require: expected a module name (a string)", 2) end
    if unit.modules[name] then
      local m = modules[name]
      if m == nil then m = makers[name](); modules[name] = m end
      return m
    end
    local target = unit.imports[name]
    if target then return (run_unit(target)) end
    error(format("module '%s' is not available to %s; it may require: %s", name, unit.id,
      unit.available), 2)
  end
end

local function new_env(unit)
  local env = copy(base)
  env._G = env
  env.require = make_require(unit)
  env.loadstring, env.load = loaders(env)
  return env
end

run_unit = function(id)
  local value = loaded[id]
  if value ~= nil then return value, envs[id] end
  if loading[id] then error("circular import of " .. id, 0) end
  local unit = units[id]
  local f, err = loadstring(unit.source, unit.chunkname)
  if not f then error(err, 0) end
  local env = new_env(unit)
  setfenv(f, env)
  loading[id] = true
  local ok, result = pcall(f)
  loading[id] = nil
  if not ok then error(result, 0) end
  if result == nil then result = true end
  loaded[id], envs[id] = result, env
  return result, env
end

local api = {ctl = ctl, array_mt = array_mt, setmetatable = setmetatable,
             getmetatable = getmetatable, rawequal = rawequal}

function api.add_unit(id, source, chunkname, module_list, imports)
  local allowed, names = {}, {}
  for _, name in ipairs(module_list) do allowed[name] = true; names[#names + 1] = name end
  for alias in pairs(imports) do names[#names + 1] = alias end
  sort(names)
  units[id] = {id = id, source = source, chunkname = chunkname, modules = allowed,
               imports = imports, available = #names > 0 and concat(names, ", ") or "nothing"}
end

function api.add_module(name, shim, host)
  local f = assert(loadstring(shim, "=module " .. name))
  setfenv(f, copy(base))
  local make = f()
  local functions = {}
  for key, fn in pairs(host) do functions[key] = metered(fn) end
  makers[name] = function() return make(functions) end
end

local function load_main(id, method)
  local value, env = run_unit(id)
  if method then
    local fn
    if type(value) == "table" then fn = rawget(value, method) end
    if fn == nil then fn = rawget(env, method) end
    if type(fn) ~= "function" then
      error(format("%s has no function '%s' (method): return a table holding it, "
        .. "or define it as a global function", id, method), 0)
    end
    return fn
  end
  if type(value) ~= "function" then
    error(format("%s returned a %s, not the handler function: end the file with "
      .. "'return handler' or set 'method'", id, type(value)), 0)
  end
  return value
end

local function on_error(e)
  return {err = e, traceback = traceback("", 2)}
end

-- Lift the memory limit before returning to Python, which then converts the
-- results (that allocates outside any protected call: see memory.py).
local function finish(...)
  lift_memory_limit()
  return ...
end

function api.load_main(id, method)
  return finish(xpcall(function() return load_main(id, method) end, on_error))
end

function api.call(fn, arg)
  return finish(xpcall(function() return fn(arg) end, on_error))
end

return api
"""
