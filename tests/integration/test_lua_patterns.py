"""Pattern matching runs in Lua (patterns.py): same results as Lua 5.1's C matcher, and
a pattern that backtracks for ever is stopped like any runaway loop."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lua_support import one_call, run
from lupa import lua51

from wippy_queue.functions.lua.config import LuaLimits
from wippy_queue.functions.lua.pattern_functions import FUNCTIONS
from wippy_queue.functions.lua.patterns import MATCHER
from wippy_queue.functions.lua.program import LuaLimitError

# -- the port gives what C gives ----------------------------------------------------------

#: the port (M), built as the prelude builds it, without a budget
PORT = r"""
local matcher, functions = ...
local M = assert(loadstring(functions))(function() end, string,
  assert(loadstring(matcher))(function() end, string))
"""

COMPARE = (
    PORT
    + r"""
-- each library function called from a line of Lua code, as a handler calls it (C names
-- that line in its errors)
local function site(lib)
  local code = "local lib = ... return {find = function(...) return 0, lib.find(...) end, "
    .. "match = function(...) return 0, lib.match(...) end, "
    .. "gsub = function(...) return 0, lib.gsub(...) end, "
    .. "gmatch = function(...) return 0, lib.gmatch(...) end, "
    .. "call = function(f) return 0, f() end}"
  return assert(loadstring(code, "=site"))(lib)
end
local C_SITE, LUA_SITE = site(string), site(M)
local function show(ok, ...)
  local out = {tostring(ok)}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    out[#out + 1] = type(v) .. ":" .. tostring(v)
  end
  return table.concat(out, " | ")
end
local function all(lib, s, p)  -- every match of a gmatch, or its error
  local ok, _, iter = pcall(lib.gmatch, s, p)
  if not ok then return show(ok, _) end
  local out = {}
  for i = 1, 50 do
    local r = show(pcall(lib.call, iter))
    out[#out + 1] = r
    if r == "true | number:0" or r:sub(1, 5) == "false" then break end
  end
  return table.concat(out, " / ")
end
local upper = {a = "A", b = 1.5, c = false}
local REPL = {string = "<%1%0>", table = upper, ["function"] = function(...)
  return select("#", ...) > 1 and (...) or nil
end}
return function(name, s, p, extra, plain)
  if name == "gmatch" then return all(C_SITE, s, p), all(LUA_SITE, s, p) end
  if name == "gsub" then
    local repl = REPL[extra]
    if repl == nil then repl = extra end
    return show(pcall(C_SITE.gsub, s, p, repl)), show(pcall(LUA_SITE.gsub, s, p, repl))
  end
  return show(pcall(C_SITE[name], s, p, extra, plain)),
    show(pcall(LUA_SITE[name], s, p, extra, plain))
end
"""
)


@pytest.fixture(scope="module")
def compare() -> Any:
    return lua51.LuaRuntime().execute(COMPARE, MATCHER, FUNCTIONS)


ATOMS = ["a", "b", ".", "%a", "%A", "%d", "%s", "%%", "[ab]", "[^a]", "[a-c]", "[%a_]", "%z"]
SPECIAL = ["(", ")", "()", "%1", "%2", "%b()", "%bab", "%f[%a]", "%f[^a]", "^", "$", "%", "[", "]"]
QUANT = ["", "", "*", "+", "-", "?"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 3)) == 0:
            items.append(draw(st.sampled_from(SPECIAL)))
        else:
            items.append(draw(st.sampled_from(ATOMS)) + draw(st.sampled_from(QUANT)))
    return "".join(items)


subjects = st.text(alphabet="ab(c) 1_\x00", max_size=10)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(["find", "match", "gmatch", "gsub"]),
    s=subjects,
    p=patterns(),
    init=st.sampled_from([None, 1, 3, -2, 0, 20]),
    repl=st.sampled_from(["string", "table", "function"]),
)
def test_the_port_matches_lua_5_1(
    compare: Any, name: str, s: str, p: str, init: int | None, repl: str
) -> None:
    expected, got = compare(name, s, p, repl if name == "gsub" else init)
    assert got == expected


@pytest.mark.parametrize(
    ("name", "s", "p", "extra"),
    [
        ("find", "abc", "", 10),
        ("find", None, "a", None),
        ("find", "a", {}, None),
        ("find", "a", "a", "x"),
        ("match", 12345, 3, None),
        ("gsub", "abc", "%w", "string"),
        ("gsub", "abc", "(", "string"),
        ("find", "a\x00*b", "\x00*", None),  # C reads a pattern up to a zero byte
        ("match", "f(a(b)c)", "%b()", None),
        ("match", "x", "%f", None),
        ("match", "x", "(x", None),
        ("match", "x", "x)", None),
        ("gsub", "abc", "%w", True),
    ],
)
def test_the_port_matches_lua_5_1_on_edge_cases(
    compare: Any, name: str, s: Any, p: Any, extra: Any
) -> None:
    expected, got = compare(name, s, p, extra)
    assert got == expected


def test_a_plain_find_matches_lua_5_1(compare: Any) -> None:
    for s, p, init in [("a.b", ".", 1), ("a%b", "%b", -2), ("abc", "", 9), ("a", "abc", None)]:
        expected, got = compare("find", s, p, init, True)
        assert got == expected


def test_gsub_replacement_errors_and_limits_match(compare: Any) -> None:
    runtime = lua51.LuaRuntime()
    check = runtime.execute(
        PORT
        + """
        return function(code)
          local f = assert(loadstring("local gsub = ... return 0, " .. code, "=site"))
          local a = {pcall(f, string.gsub)}
          local b = {pcall(f, M.gsub)}
          return table.concat({tostring(a[1]), tostring(a[2]), tostring(a[3]), tostring(a[4])}),
                 table.concat({tostring(b[1]), tostring(b[2]), tostring(b[3]), tostring(b[4])})
        end
        """,
        MATCHER,
        FUNCTIONS,
    )
    for code in [
        'gsub("abc", "%w", "%9")',
        'gsub("abc", "%w", {a = {}})',
        'gsub("abc", "%w", true)',
        'gsub("abc", "%w", "x", 2)',
        'gsub("abc", "%w", "x", -1)',
        'gsub("abc", "%w", "x", 1.7)',
        'gsub("abc", "", "-")',
        'gsub("abc", "^a", "%%")',
        'gsub("abc", "()", "%1")',
        'gsub("abc", "b", "%")',
    ]:
        expected, got = check(code)
        assert got == expected, code


# -- a runaway pattern is stopped ------------------------------------------------------------

SMALL = LuaLimits(instructions=1_000_000, memory_mb=16)
BOUND_S = 5.0
EXPLODING = {
    "find": 'string.find(string.rep("a", 40), string.rep("a*", 40) .. "b")',
    "match": '(string.rep("a", 40)):match(string.rep("a?", 40) .. string.rep("a", 40) .. "b")',
    "gmatch": 'for m in string.rep("a", 40):gmatch(string.rep("a-", 40) .. "b") do end',
    "gsub": 'string.gsub(string.rep("a", 40), string.rep("a*", 40) .. "b", "")',
    "back-reference": 'string.find(string.rep("a", 3000), "(a*)%1%1b")',
}


@pytest.mark.parametrize("code", EXPLODING.values(), ids=EXPLODING.keys())
def test_an_exponential_pattern_is_stopped(code: str) -> None:
    lua = f"return function() pcall(function() {code} end) return 'survived' end"
    with pytest.raises(LuaLimitError, match="stopped after 1,000,000 Lua instructions"):
        run(one_call(lua, limits=SMALL), timeout_s=BOUND_S)


def test_a_pattern_deeper_than_the_stack_is_an_error_not_a_crash() -> None:
    # C recursed once per item: a million of them overflowed its stack (segfault)
    lua = """
        return function()
            local ok, err = pcall(string.find, string.rep("a", 1e6), string.rep("a?", 1e6))
            return {ok = ok, err = err}
        end
    """
    result, _ = run(one_call(lua, limits=LuaLimits(instructions=10**9)), timeout_s=BOUND_S)
    assert result["ok"] is False and "stack overflow" in result["err"]


def test_patterns_work_in_a_handler() -> None:
    lua = """
        return function(body)
            local k, v = body.line:match("^(%w+)%s*=%s*(.-)%s*$")
            local words = {}
            for w in body.text:gmatch("%a+") do words[#words + 1] = w end
            return {k = k, v = v, words = words, swapped = (body.text:gsub("(%a+) (%a+)", "%2 %1")),
                    at = {body.text:find("are", 1, true)}}
        end
    """
    data = {"line": "name = some value  ", "text": "pigs are flying"}
    result, _ = run(one_call(lua, data))
    assert result == {
        "k": "name",
        "v": "some value",
        "words": ["pigs", "are", "flying"],
        "swapped": "are pigs flying",
        "at": [6, 8],
    }
