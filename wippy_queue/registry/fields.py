"""What a pydantic error's location names inside an entry's model.

pydantic locates an error by a path that may pass through union members
(``pool.function-after[_sized(), LuaPool].sise``). A person wants the path as
written (``pool.sise``), and, for an unknown field, the fields of the block it was
written in (``lifecycle.auto_strat`` lists the fields of ``lifecycle``, not of the
entry).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


@dataclass(frozen=True, slots=True)
class ErrorPlace:
    """An error's path as written, the model block its last part is in, and whether
    pydantic's path ended on a union member (the value is not of that member's type)."""

    path: tuple[int | str, ...]
    block: type[BaseModel] | None
    member_mismatch: bool


def _members(annotation: Any) -> list[Any]:
    """The alternatives of ``annotation`` (one unless it is a union), unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _model(member: Any) -> type[BaseModel] | None:
    return member if isinstance(member, type) and issubclass(member, BaseModel) else None


def _name(member: Any) -> str:
    return getattr(member, "__name__", str(member))


def _is_tag(part: int | str, members: list[Any]) -> Any:
    """The union member ``part`` names (``int``, ``function-after[_sized(), LuaPool]``)."""
    if len(members) < 2 or not isinstance(part, str):
        return None
    for member in members:
        name = _name(member)
        if part == name or part.endswith(f", {name}]") or part.startswith(f"{name}["):
            return member
    return None


def _step(annotation: Any, part: int | str) -> Any:
    """The annotation one step below ``annotation``, through field, item or key ``part``."""
    members = _members(annotation)
    for member in members:
        model = _model(member)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            return model.model_fields[part].annotation
    for member in members:
        args = get_args(member)
        if get_origin(member) in (list, tuple, set, frozenset) and isinstance(part, int):
            return args[0] if args else Any
        if get_origin(member) is dict and args:
            return args[1]
    return Any


def locate(model: type[BaseModel], loc: tuple[int | str, ...]) -> ErrorPlace:
    """Where ``loc`` (a pydantic error's ``loc``) points in ``model``."""
    annotation: Any = model
    path: list[int | str] = []
    block: type[BaseModel] | None = model
    mismatch = False
    for part in loc:
        members = _members(annotation)
        member = _is_tag(part, members)
        if member is not None:
            annotation, mismatch = member, True
            continue
        mismatch = False
        block = next((m for m in map(_model, members) if m is not None), None)
        annotation = _step(annotation, part)
        path.append(part)
    return ErrorPlace(tuple(path), block, mismatch)
