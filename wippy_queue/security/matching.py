"""Regular-expression matching for policies, where ``$`` means the end of the value.

Python's ``$`` also matches just before a trailing newline, so ``^proj-a$`` would
accept ``"proj-a\\n"``: a header value (or resource, or actor id) that is not the
one a rule names. Every pattern a policy gives (a native ``matches`` condition,
Casbin's ``regexMatch`` and the ``keyMatch2``-``keyMatch5`` patterns built on
regular expressions) is run with each ``$`` outside a character class read as
``\\Z``: anchored at both ends, a pattern matches the whole value and nothing else.

- native ``matches`` / ``nmatches``: a search (as Wippy's Go runtime does):
  unanchored, the pattern may match anywhere; ``^...$`` matches the whole value;
- Casbin ``regexMatch``: pycasbin's, anchored at the start (``re.match``), with ``$``
  as above; ``keyMatchN`` as pycasbin's, matching the whole value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import casbin.util.builtin_operators as ops


def _end_anchored(pattern: str) -> str:
    """``pattern`` with each ``$`` outside a character class written ``\\Z``."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ']' is a literal
                out.append("]")
                i += 1
            continue
        elif char == "$":
            char = r"\Z"
        out.append(char)
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled pattern with ``$`` as the end of the value (``re.error`` if broken).

    A pattern that turns multi-line mode on (``(?m)``) keeps its ``$`` as written.
    """
    compiled = re.compile(pattern)
    if compiled.flags & re.MULTILINE or "$" not in pattern:
        return compiled
    return re.compile(_end_anchored(pattern))


def search(pattern: str, value: str) -> bool:
    """Native ``matches``: the pattern found anywhere in ``value``."""
    return compile_pattern(pattern).search(value) is not None


def regex_match(key1: Any, key2: Any) -> bool:
    """Casbin ``regexMatch(value, pattern)``: pycasbin's ``re.match``, ``$`` at the end."""
    return compile_pattern(str(key2)).match(str(key1)) is not None


def _whole(value: str, body: str) -> bool:
    return compile_pattern(f"^{body}$").match(value) is not None


def key_match2(key1: str, key2: str) -> bool:
    body = ops.KEY_MATCH2_PATTERN.sub(r"\g<1>[^\/]+\g<2>", key2.replace("/*", "/.*"), 0)
    return _whole(key1, "(.*)" if body == "*" else body)


def key_match3(key1: str, key2: str) -> bool:
    body = ops.KEY_MATCH3_PATTERN.sub(r"\g<1>[^\/]+\g<2>", key2.replace("/*", "/.*"), 0)
    return _whole(key1, body)


def key_match4(key1: str, key2: str) -> bool:
    tokens: list[str] = []

    def capture(found: re.Match[str]) -> str:
        tokens.append(found.group(1))
        return "([^/]+)"

    body = ops.KEY_MATCH4_PATTERN.sub(capture, key2.replace("/*", "/.*"))
    found = compile_pattern(f"^{body}$").match(key1)
    if found is None:
        return False
    values: dict[str, str] = {}
    for token, value in zip(tokens, found.groups(), strict=False):
        if values.setdefault(token, value) != value:
            return False
    return True


def key_match5(key1: str, key2: str) -> bool:
    key1 = key1.split("?", 1)[0]
    body = ops.KEY_MATCH5_PATTERN.sub(r"[^/]+", key2.replace("/*", "/.*"), 0)
    return _whole(key1, body)


def _pair(fn: Callable[[str, str], bool]) -> Callable[..., bool]:
    def call(*args: Any) -> bool:
        return fn(args[0], args[1])

    return call


#: Casbin matcher functions put in place of pycasbin's (whose ``$`` skips a newline)
CASBIN_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "regexMatch": _pair(regex_match),
    "keyMatch2": _pair(key_match2),
    "keyMatch3": _pair(key_match3),
    "keyMatch4": _pair(key_match4),
    "keyMatch5": _pair(key_match5),
}
