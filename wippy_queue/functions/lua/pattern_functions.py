"""``string.find``, ``match``, ``gmatch`` and ``gsub`` over the Lua matcher (patterns.py).

Argument handling, results and error messages are Lua 5.1.5's ``lstrlib.c``; a plain
search (``plain``, or a pattern without special characters) stays in C and is charged
what it can cost before it runs. ``FUNCTIONS`` is called with ``(charge, string,
matcher)`` and returns ``{find, match, gmatch, gsub}``.
"""

from __future__ import annotations

FUNCTIONS = r"""
local charge, string, matcher = ...
local byte, sub, char, c_find, concat = string.byte, string.sub, string.char, string.find,
  table.concat
local type, tostring, tonumber, error, floor, pcall, select, format = type, tostring,
  tonumber, error, math.floor, pcall, select, string.format
local match, capture, captures, state, fail, class_end, MINE, SPECIALS = matcher.match,
  matcher.capture, matcher.captures, matcher.state, matcher.fail, matcher.class_end,
  matcher.MINE, matcher.SPECIALS

local function is_text(v)
  local t = type(v)
  return t == "string" or t == "number"
end

local function int(x)  -- as C casts a number to an integer
  if x >= 0 then return floor(x) end
  return -floor(-x)
end

local function arg_error(n, name, expected, value, given)
  local got = n > given and "no value" or type(value)
  fail(format("bad argument #%d to '%s' (%s)", n, name, expected .. " expected, got " .. got))
end

-- s and p as C reads them (a number is text too); `given`: how many arguments came
local function texts(name, s, p, given)
  if not is_text(s) then arg_error(1, name, "string", s, given) end
  if not is_text(p) then arg_error(2, name, "string", p, given) end
  return tostring(s), tostring(p)
end

local function start_of(init, slen)
  init = init and int(init) or 1  -- 5.1: beyond either end is clamped, not nil
  if init < 0 then init = init + slen + 1 end
  if init < 1 then return 1 end
  if init > slen + 1 then return slen + 1 end
  return init
end

-- A pattern whose first item must match one character (a character, class or set,
-- alone or with '+') cannot match where that item does not: C finds the next place
-- it does (one item, no backtracking: a linear scan), instead of a match tried at
-- every position. Returns that item as a C pattern (and whether it is plain), or nil.
local function leader(ms, pi)
  local p = ms.p
  local c, d = byte(p, pi), byte(p, pi + 1)
  if c == nil or c == 40 or c == 41 or c == 36 then return nil end
  if c == 37 and (d == 98 or d == 102 or (d and d >= 48 and d <= 57)) then return nil end
  local ep = class_end(ms, pi)
  local q = byte(p, ep)
  if q == 42 or q == 63 or q == 45 then return nil end
  local plain = c ~= 37 and c ~= 91 and c ~= 46
  return sub(p, pi, ep - 1), plain
end

-- The next position at or after si where the leading item matches (nil: none).
local function skip(ms, item, plain, si)
  local at = c_find(ms.s, item, si, plain)
  charge(floor(((at or ms.slen) - si) / 16))
  return at
end

local function find_aux(name, given, s, p, init, plain)
  local i = tonumber(init)
  s, p = texts(name, s, p, given)
  if init ~= nil and i == nil then arg_error(3, name, "number", init, given) end
  local is_find = name == "find"
  local slen = #s
  local si = start_of(i, slen)
  local ms = state(s, p)
  if is_find and (plain or not c_find(ms.p, SPECIALS)) then
    local plen = #p  -- a plain search in C: at most one comparison per position
    charge(floor((slen - si + 2) * (plen + 1) / 16))
    return c_find(s, p, si, true)
  end
  local anchor = byte(ms.p, 1) == 94
  local pi = anchor and 2 or 1
  local lead, lead_plain
  if not anchor then lead, lead_plain = leader(ms, pi) end
  repeat
    if lead then
      si = skip(ms, lead, lead_plain, si)
      if not si then return nil end
    end
    ms.level = 0
    local e = match(ms, si, pi)
    if e then
      if is_find then return si, e - 1, captures(ms, si, e, false) end
      return captures(ms, si, e, true)
    end
    si = si + 1
  until anchor or si > slen + 1
  return nil
end

local M = {}

local function finish(ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) == "table" and e[1] == MINE then
    error(e[2], 3)  -- 1: finish, 2: the library function (a tail call), 3: its caller
  end
  error(e, 0)
end

function M.find(...)
  return finish(pcall(find_aux, "find", select("#", ...), ...))
end

function M.match(...)
  return finish(pcall(find_aux, "match", select("#", ...), ...))
end

local function gmatch(given, s, p)
  s, p = texts("gmatch", s, p, given)
  local ms, si, lead, lead_plain = state(s, p), 1, nil, nil
  local function step()
    if lead == nil then  -- not before the first call: C raises pattern errors only then
      local item, plain = leader(ms, 1)
      lead, lead_plain = item or false, plain
    end
    while si <= ms.slen + 1 do
      if lead then
        si = skip(ms, lead, lead_plain, si)
        if not si then
          si = ms.slen + 2
          return
        end
      end
      ms.level = 0
      local start, e = si, match(ms, si, 1)
      if e then
        si = e == start and e + 1 or e
        return captures(ms, start, e, true)
      end
      si = si + 1
    end
  end
  return function() return finish(pcall(step)) end
end

function M.gmatch(...)
  return finish(pcall(gmatch, select("#", ...), ...))
end

local function add_s(ms, si, e, news)
  local parts, i = {}, 1
  while true do
    local j = c_find(news, "%", i, true)
    if not j then
      parts[#parts + 1] = sub(news, i)
      return concat(parts)
    end
    parts[#parts + 1] = sub(news, i, j - 1)
    local d = byte(news, j + 1)
    if d == nil then
      parts[#parts + 1] = "\0"  -- as C reads the string's terminator
    elseif d == 48 then
      parts[#parts + 1] = sub(ms.s, si, e - 1)
    elseif d >= 49 and d <= 57 then
      parts[#parts + 1] = tostring(capture(ms, d - 48, si, e))
    else
      parts[#parts + 1] = char(d)
    end
    i = j + 2
  end
end

local function value(ms, si, e, repl, kind)
  local r
  if kind == "function" then
    r = repl(captures(ms, si, e, true))
  elseif kind == "table" then
    r = repl[capture(ms, 1, si, e)]
  else
    return add_s(ms, si, e, tostring(repl))
  end
  if not r then return sub(ms.s, si, e - 1) end
  if not is_text(r) then fail("invalid replacement value (a " .. type(r) .. ")") end
  return tostring(r)
end

local REPLACEMENTS = {string = true, number = true, ["function"] = true, table = true}

local function gsub(given, s, p, repl, n)
  local kind, max_n = type(repl), tonumber(n)
  s, p = texts("gsub", s, p, given)
  if n ~= nil and max_n == nil then arg_error(4, "gsub", "number", n, given) end
  if not REPLACEMENTS[kind] then
    fail("bad argument #3 to 'gsub' (string/function/table expected)")
  end
  local ms = state(s, p)
  local slen = ms.slen
  max_n = max_n and int(max_n) or slen + 1
  local anchor = byte(ms.p, 1) == 94
  local pi = anchor and 2 or 1
  local out, count, si, copied, lead, lead_plain = {}, 0, 1, 1, nil, nil
  while count < max_n do
    ms.level = 0
    local e = match(ms, si, pi)
    if e then
      count = count + 1
      out[#out + 1] = sub(s, copied, si - 1)
      out[#out + 1] = value(ms, si, e, repl, kind)
      copied = e
    end
    if anchor then break end
    if e and e > si then
      si = e
    elseif si <= slen then
      si = si + 1
      if lead == nil then  -- after a first try, as C raises pattern errors then
        local item, plain = leader(ms, pi)
        lead, lead_plain = item or false, plain
      end
      if lead and si <= slen then si = skip(ms, lead, lead_plain, si) or slen + 1 end
    else
      break
    end
  end
  out[#out + 1] = sub(s, copied)
  return concat(out), count
end

function M.gsub(...)
  return finish(pcall(gsub, select("#", ...), ...))
end

return M
"""
