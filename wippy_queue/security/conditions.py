"""Wippy's condition operators, evaluated against a Request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wippy_queue.identity import Request
from wippy_queue.security.matching import search

OPERATORS = (
    "eq",
    "ne",
    "lt",
    "gt",
    "lte",
    "gte",
    "in",
    "nin",
    "exists",
    "nexists",
    "contains",
    "ncontains",
    "matches",
    "nmatches",
)
UNARY = ("exists", "nexists")


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        if left is None or right is None:
            return False
        try:
            a, b = float(left), float(right)
        except (TypeError, ValueError):
            return op(str(left), str(right))
        if a != a or b != b:  # NaN ("nan" in a header) has no order: a deny on it
            # would never hold, so deciding on it is an error, and an error denies
            raise ValueError(f"cannot order {left!r} and {right!r}: not a number")
        return op(a, b)

    return compare


#: (tuples: a ``list | tuple | set`` union would be built anew at every check)
_LISTS = (list, tuple, set)
_COLLECTIONS = (list, tuple, set, dict)


def _in(left: Any, right: Any) -> bool:
    return isinstance(right, _LISTS) and left in right


def _contains(left: Any, right: Any) -> bool:
    if isinstance(left, str):
        return isinstance(right, str) and right in left
    return isinstance(left, _COLLECTIONS) and right in left


def _matches(left: Any, right: Any) -> bool:
    # '$' is the end of the value: '^proj-a$' never matches 'proj-a\n' (security/matching.py)
    return isinstance(left, str) and right is not None and search(str(right), left)


def _eq(left: Any, right: Any) -> bool:
    # an absent side equals nothing: str(None) would equal the header value "None"
    return left is not None and right is not None and (left == right or str(left) == str(right))


_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _eq,
    "lt": _cmp(lambda a, b: a < b),
    "gt": _cmp(lambda a, b: a > b),
    "lte": _cmp(lambda a, b: a <= b),
    "gte": _cmp(lambda a, b: a >= b),
    "in": _in,
    "contains": _contains,
    "matches": _matches,
}
_NEGATED = {"ne": "eq", "nin": "in", "ncontains": "contains", "nmatches": "matches"}


def evaluate(
    field: str, operator: str, request: Request, value: Any = None, value_from: str | None = None
) -> bool:
    left = request.value(field)
    if operator == "exists":
        return left is not None
    if operator == "nexists":
        return left is None
    right = request.value(value_from) if value_from else value
    if operator in _NEGATED:
        return not _BINARY[_NEGATED[operator]](left, right)
    return _BINARY[operator](left, right)
