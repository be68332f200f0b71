"""Lua 5.1's pattern matching, in Lua, so that the instruction hook can stop it.

The C matcher (``string.find``/``match``/``gmatch``/``gsub``) backtracks without
bound inside one C call: ``("a"):rep(40):find(("a*"):rep(40) .. "b")`` would hold
its thread for ever, out of reach of the instruction limit and of cancellation, and
a long enough pattern overflows the C stack. This chunk is a port of Lua 5.1.5's
``lstrlib.c`` matcher (same results, captures and error messages), run as ordinary
Lua: every backtracking step is counted, so a runaway pattern is stopped like a
runaway loop (and a pattern too deep for Lua's stack is a "stack overflow" error).
Only single items, which cannot backtrack, go to C (a quantified item's longest
run, the next place a pattern can start): linear scans, charged as such.

Errors are C's, word for word, and name the caller's line as C does, except after a
tail call (``return s:match(p)``: no line) and in an argument error of a method call
(``s:find({})`` counts ``s``, as C does not). ``MATCHER`` is called with
``(charge, string)``: the prelude's budget function and the original string library;
it returns the matcher's parts, on which ``FUNCTIONS`` (pattern_functions.py) builds
``find``, ``match``, ``gmatch`` and ``gsub``.
"""

from __future__ import annotations

MATCHER = r"""
local charge, string = ...
local byte, sub, char, c_find = string.byte, string.sub, string.char, string.find
local error, unpack, floor = error, unpack, math.floor

-- The matcher's own errors; the library functions re-raise them at their caller's line,
-- as C reports them (its other errors, from a gsub replacement function, pass as they are).
local MINE = {}
local function fail(message) error({MINE, message}, 0) end

local ESC, CAP_UNFINISHED, CAP_POSITION, MAXCAPTURES = 37, -1, -2, 32
local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"
local CLASSES, LETTERS = {}, "acdlpsuwxz"  -- class letters (lower case) -> true
for i = 1, #LETTERS do CLASSES[byte(LETTERS, i)] = true end
local class_sets = {}  -- lazily: class letter -> {[byte] = matches}

local function class_set(letter)
  local set = class_sets[letter]
  if not set then  -- the C matcher on one character: what the C locale says
    set = {}
    local pattern = "%" .. char(letter)
    for c = 0, 255 do set[c] = c_find(char(c), pattern) ~= nil end
    class_sets[letter] = set
  end
  return set
end

local function match_class(c, cl)
  local lower = (cl >= 65 and cl <= 90) and cl + 32 or cl
  if not CLASSES[lower] then return cl == c end
  local res = class_set(lower)[c]
  if lower == cl then return res end
  return not res
end

-- p[pi] is '[', p[ec] the closing ']'
local function match_bracket(c, p, pi, ec)
  local sig = true
  if byte(p, pi + 1) == 94 then sig = false; pi = pi + 1 end
  pi = pi + 1
  while pi < ec do
    local pc = byte(p, pi)
    if pc == ESC then
      pi = pi + 1
      if match_class(c, byte(p, pi)) then return sig end
    elseif byte(p, pi + 1) == 45 and pi + 2 < ec then
      if pc <= c and c <= byte(p, pi + 2) then return sig end
      pi = pi + 2
    elseif pc == c then
      return sig
    end
    pi = pi + 1
  end
  return not sig
end

local function single(c, p, pi, ep)
  local pc = byte(p, pi)
  if pc == 46 then return true end
  if pc == ESC then return match_class(c, byte(p, pi + 1)) end
  if pc == 91 then return match_bracket(c, p, pi, ep - 1) end
  return pc == c
end

local function class_end(ms, pi)
  local p, plen = ms.p, ms.plen
  local pc = byte(p, pi)
  pi = pi + 1
  if pc == ESC then
    if pi > plen then fail("malformed pattern (ends with '%')") end
    return pi + 1
  end
  if pc == 91 then
    if byte(p, pi) == 94 then pi = pi + 1 end
    repeat
      if pi > plen then fail("malformed pattern (missing ']')") end
      local c = byte(p, pi)
      pi = pi + 1
      if c == ESC and pi <= plen then pi = pi + 1 end
    until byte(p, pi) == 93
    return pi + 1
  end
  return pi
end

local match

-- The longest run of the item p[pi..ep-1] is counted in C: "^item*" alone cannot
-- backtrack (a linear scan), and it is charged as such.
local function max_expand(ms, si, pi, ep)
  local run = ms.runs[pi]
  if not run then
    run = "^" .. sub(ms.p, pi, ep - 1) .. "*"
    ms.runs[pi] = run
  end
  local _, last = c_find(ms.s, run, si)
  local i = last - si + 1
  charge(floor(i / 16))
  while i >= 0 do
    local res = match(ms, si + i, ep + 1)
    if res then return res end
    i = i - 1
  end
  return nil
end

local function min_expand(ms, si, pi, ep)
  while true do
    local res = match(ms, si, ep + 1)
    if res then return res end
    if si <= ms.slen and single(byte(ms.s, si), ms.p, pi, ep) then
      si = si + 1
    else
      return nil
    end
  end
end

local function start_capture(ms, si, pi, what)
  local level = ms.level + 1
  if level > MAXCAPTURES then fail("too many captures") end
  ms.init[level], ms.len[level], ms.level = si, what, level
  local res = match(ms, si, pi)
  if not res then ms.level = ms.level - 1 end
  return res
end

local function end_capture(ms, si, pi)
  local l = ms.level
  while l >= 1 and ms.len[l] ~= CAP_UNFINISHED do l = l - 1 end
  if l < 1 then fail("invalid pattern capture") end
  ms.len[l] = si - ms.init[l]
  local res = match(ms, si, pi)
  if not res then ms.len[l] = CAP_UNFINISHED end
  return res
end

local function match_balance(ms, si, pi)
  if pi + 1 > ms.plen then fail("unbalanced pattern") end
  local s, b, e = ms.s, byte(ms.p, pi), byte(ms.p, pi + 1)
  if byte(s, si) ~= b then return nil end
  local cont = 1
  for i = si + 1, ms.slen do
    local c = byte(s, i)
    if c == e then
      cont = cont - 1
      if cont == 0 then return i + 1 end
    elseif c == b then
      cont = cont + 1
    end
  end
  return nil
end

local function match_capture(ms, si, digit)
  local l = digit - 48
  if l < 1 or l > ms.level or ms.len[l] == CAP_UNFINISHED then
    fail("invalid capture index")
  end
  local len, init = ms.len[l], ms.init[l]
  if len < 0 or ms.slen - si + 1 < len then return nil end
  charge(floor(len / 16))  -- one comparison of up to the whole subject
  if sub(ms.s, init, init + len - 1) == sub(ms.s, si, si + len - 1) then return si + len end
  return nil
end

match = function(ms, si, pi)
  local s, p, plen = ms.s, ms.p, ms.plen
  while true do
    if pi > plen then return si end
    local pc, next_pc = byte(p, pi), byte(p, pi + 1)
    if pc == 40 then
      if next_pc == 41 then return start_capture(ms, si, pi + 2, CAP_POSITION) end
      return start_capture(ms, si, pi + 1, CAP_UNFINISHED)
    elseif pc == 41 then
      return end_capture(ms, si, pi + 1)
    elseif pc == 36 and pi == plen then
      if si == ms.slen + 1 then return si end
      return nil
    elseif pc == ESC and next_pc == 98 then
      si = match_balance(ms, si, pi + 2)
      if not si then return nil end
      pi = pi + 4
    elseif pc == ESC and next_pc == 102 then
      pi = pi + 2
      if byte(p, pi) ~= 91 then fail("missing '[' after '%f' in pattern") end
      local ep = class_end(ms, pi)
      local previous = si == 1 and 0 or byte(s, si - 1)
      if match_bracket(previous, p, pi, ep - 1)
          or not match_bracket(byte(s, si) or 0, p, pi, ep - 1) then
        return nil
      end
      pi = ep
    elseif pc == ESC and next_pc and next_pc >= 48 and next_pc <= 57 then
      si = match_capture(ms, si, next_pc)
      if not si then return nil end
      pi = pi + 2
    else
      local ep = class_end(ms, pi)
      local m = si <= ms.slen and single(byte(s, si), p, pi, ep)
      local q = byte(p, ep)
      if q == 63 then
        local res = m and match(ms, si + 1, ep + 1)
        if res then return res end
        pi = ep + 1
      elseif q == 42 then
        return max_expand(ms, si, pi, ep)
      elseif q == 43 then
        if not m then return nil end
        return max_expand(ms, si + 1, pi, ep)
      elseif q == 45 then
        return min_expand(ms, si, pi, ep)
      else
        if not m then return nil end
        si, pi = si + 1, ep
      end
    end
  end
end

-- captures --------------------------------------------------------------------------

local function capture(ms, i, si, e)
  if i > ms.level then
    if i == 1 then return sub(ms.s, si, e - 1) end
    fail("invalid capture index")
  end
  local len = ms.len[i]
  if len == CAP_UNFINISHED then fail("unfinished capture") end
  if len == CAP_POSITION then return ms.init[i] end
  return sub(ms.s, ms.init[i], ms.init[i] + len - 1)
end

local function captures(ms, si, e, whole)
  local n = (ms.level == 0 and whole) and 1 or ms.level
  local out = {}
  for i = 1, n do out[i] = capture(ms, i, si, e) end
  return unpack(out, 1, n)
end

local function state(s, p)
  local nul = c_find(p, "\0", 1, true)  -- C stops reading a pattern at a zero byte
  if nul then p = sub(p, 1, nul - 1) end
  return {s = s, slen = #s, p = p, plen = #p, level = 0, init = {}, len = {}, runs = {}}
end

return {match = match, capture = capture, captures = captures, state = state, fail = fail,
        class_end = class_end, MINE = MINE, SPECIALS = SPECIALS}
"""
