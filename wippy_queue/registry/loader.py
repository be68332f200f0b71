"""Entry files -> a validated Registry, or a ConfigError listing EVERY problem found."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from wippy_queue.errors import ConfigError, Problem
from wippy_queue.registry.entry import Entry, Location, Reference
from wippy_queue.registry.fields import locate
from wippy_queue.registry.graph import find_cycles
from wippy_queue.registry.ids import valid_part
from wippy_queue.registry.kinds import KindTable
from wippy_queue.registry.partial import written_references
from wippy_queue.registry.registry import Registry
from wippy_queue.registry.source import LineDict, RawEntry, read_entries


@dataclass(frozen=True, slots=True)
class _Invalid:
    """An entry that failed validation: the references its valid fields still make."""

    id: str
    location: Location
    references: list[Reference]


def load_registry(paths: Iterable[str | os.PathLike[str]], kinds: KindTable) -> Registry:
    raws, problems, files = read_entries(paths)
    entries: dict[str, Entry] = {}
    invalid: list[_Invalid] = []
    seen: dict[str, Location] = {}
    for raw in raws:
        result = _validate(raw, kinds, seen, problems)
        if isinstance(result, Entry):
            entries[result.id] = result
        elif result is not None:
            invalid.append(result)
    dependencies, fields = _check_references(entries, invalid, _declared(raws, kinds), problems)
    problems += _find_cycles(entries, dependencies, fields)
    registry = Registry(entries, dependencies)
    warnings: list[Problem] = []
    for check in kinds.checks:
        try:
            findings = list(check(registry))
        except Exception:
            if problems:
                continue  # the registry is incomplete; its own problems are reported
            raise
        for found in findings:
            (warnings if found.severity == "warning" else problems).append(found)
    if [p for p in problems if p.severity == "error"]:
        raise ConfigError(problems)
    return Registry(entries, dependencies, tuple(warnings), files)


def _declared(raws: list[RawEntry], kinds: KindTable) -> dict[str, str | None]:
    """Every ID written, valid or not, with its kind (None when that is no known kind).

    An entry written but invalid already has its own problems: a reference to it is
    not reported again as "not defined", only when its kind is wrong.
    """
    declared: dict[str, str | None] = {}
    for raw in raws:
        if isinstance(raw.name, str):
            known = isinstance(raw.kind, str) and kinds.model(raw.kind) is not None
            key = f"{raw.namespace}:{raw.name}"
            if declared.get(key) is None:  # the first of an ID with a known kind is the one
                declared[key] = raw.kind if known else None
    return declared


def _validate(
    raw: RawEntry, kinds: KindTable, seen: dict[str, Location], problems: list[Problem]
) -> Entry | _Invalid | None:
    def problem(message: str, field: str | None = None, entry_id: str | None = None) -> None:
        line = raw.field_lines.get(field, raw.line) if field else raw.line
        problems.append(Problem(message, raw.file, line, entry_id, field))

    wrong = _not_text(raw.name, "name", "every entry needs a name")
    if wrong:
        problem(wrong, "name")
        return None
    entry_id = f"{raw.namespace}:{raw.name}"
    if not valid_part(raw.name) or not valid_part(raw.namespace):
        problem("a name is letters, digits, '_', '.' and '-'; rename it", "name", entry_id)
        return None
    wrong = _not_text(raw.kind, "kind", "say what this entry is, e.g. queue.queue")
    if wrong:
        problem(wrong, "kind", entry_id)
        return None
    model = kinds.model(raw.kind)
    if model is None:
        known = ", ".join(kinds.known())
        problem(f"unknown kind {raw.kind!r}; known kinds: {known}", "kind", entry_id)
        return None
    if entry_id in seen:
        first = seen[entry_id]
        problem(
            f"duplicate ID: already defined at {first.file}:{first.line}; rename one",
            "name",
            entry_id,
        )
        return None
    location = Location(raw.file, raw.line, _field_lines(raw.field_lines, raw.data))
    seen[entry_id] = location  # valid or not: a second entry of this ID is a duplicate
    context = {"namespace": raw.namespace}
    try:
        config = model.model_validate(raw.data, context=context)
    except ValidationError as err:
        wrong_fields = _report(err, model, raw, entry_id, problems) | raw.unset_fields
        refs = written_references(model, raw.data, context)
        refs = [ref for ref in refs if not _overlaps(ref.field, wrong_fields)]
        return _Invalid(entry_id, location, refs)
    if raw.unset_fields:  # reported by the reader; what the entry would be is unknown
        refs = [r for r in config.references() if not _overlaps(r.field, set(raw.unset_fields))]
        return _Invalid(entry_id, location, refs)
    return Entry(entry_id, raw.kind, raw.namespace, raw.name, raw.meta, config, location)


@dataclass(frozen=True, slots=True)
class _Found:
    field: str
    line: int
    text: str
    #: the value is not of one union alternative's type (pool: neither int nor a block)
    mismatch: bool
    #: what ``text`` ends with when it shows the value: `` (got 'abc')``
    got: str = ""


def _report(
    err: ValidationError, model: type, raw: RawEntry, entry_id: str, problems: list[Problem]
) -> set[str]:
    """One problem per validation error; the fields they name.

    A value that fits no alternative of a union is one problem; when one alternative
    got further (an unknown field inside a ``pool`` block), only its errors are told.
    """
    found = []
    for error in err.errors():
        place = locate(model, tuple(error["loc"]))
        field, line = _locate(place.path, raw)
        if raw.unset_fields and (not field or _overlaps(field, set(raw.unset_fields))):
            # reported as the unset ${env:...}, not as what its "" made of the entry
            continue
        text, got = _explain(error, place.block), f" (got {error.get('input')!r})"
        found.append(_Found(field, line, text, place.member_mismatch, got))
    for item in _without_union_noise(found):
        problems.append(Problem(item.text, raw.file, item.line, entry_id, item.field or None))
    return {item.field for item in found}


def _without_union_noise(found: list[_Found]) -> list[_Found]:
    deeper = [f.field for f in found if not f.mismatch]
    kept: dict[str, _Found] = {}
    for item in found:
        if not item.mismatch:
            kept[f"{len(kept)}"] = item
        elif not any(d == item.field or d.startswith(f"{item.field}.") for d in deeper):
            first = kept.get(item.field)
            text = f"{first.text.removesuffix(item.got)}; or {item.text}" if first else item.text
            kept[item.field] = _Found(item.field, item.line, text, True, item.got)
    return list(kept.values())


def _overlaps(field: str, wrong_fields: set[str]) -> bool:
    """Whether ``field`` has an error itself, in a part of it, or in a field around it."""
    return any(
        wrong and (f"{field}.".startswith(f"{wrong}.") or wrong.startswith(f"{field}."))
        for wrong in wrong_fields
    )


def _field_lines(lines: dict[str, int], node: dict[Any, Any], prefix: str = "") -> dict[str, int]:
    """Line of every field, nested ones by dotted path (``lifecycle.requires``)."""
    out = dict(lines) if not prefix else {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if prefix and isinstance(node, LineDict) and key in node.key_lines:
            out[path] = node.key_lines[key]
        if isinstance(value, LineDict):
            out.update(_field_lines({}, value, f"{path}."))
    return out


def _not_text(value: Any, key: str, hint: str) -> str | None:
    """Why ``value`` is no usable ``name``/``kind`` (None when it is one)."""
    if value is None or value == "":
        return f"missing '{key}': {hint}"
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {value!r}; {hint}"
    return None


def _locate(loc: tuple[int | str, ...], raw: RawEntry) -> tuple[str, int]:
    """The dotted field path and the best line we know for it."""
    parts = [str(p) for p in loc]
    line = raw.field_lines.get(parts[0], raw.line) if parts else raw.line
    node: Any = raw.data.get(parts[0]) if parts else None
    for part in loc[1:]:
        if isinstance(node, LineDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            line = getattr(node, "line", line)
        else:
            break
    return ".".join(parts), line


def _explain(error: Any, block: type | None) -> str:
    """What is wrong, in words; ``block`` is the model the field was written in."""
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "extra_forbidden":
        fields = list(getattr(block, "model_fields", {}))
        if not fields:
            return "unknown field"
        close = difflib.get_close_matches(str(error["loc"][-1]), fields, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        return f"unknown field;{hint} known fields: {', '.join(fields)}"
    if kind == "missing":
        return "required field is missing"
    if kind in ("value_error", "assertion_error"):
        return str(msg).removeprefix("Value error, ")
    if kind == "less_than_equal":
        return f"{value!r} is too large: {msg.lower()}"
    return f"{msg} (got {value!r})"


def _check_references(
    entries: dict[str, Entry],
    invalid: list[_Invalid],
    declared: dict[str, str | None],
    problems: list[Problem],
) -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, str], str]]:
    """Each entry's dependencies, and the field that makes each dependency edge.

    The references of invalid entries are checked too (so that every problem is
    reported at once), but make no dependency edges: those entries never run.
    """
    dependencies: dict[str, tuple[str, ...]] = {}
    fields: dict[tuple[str, str], str] = {}
    found: dict[Problem, None] = {}  # a target written twice in one field is one problem
    for entry in entries.values():
        deps: list[str] = []
        for ref in entry.config.references():
            wrong = _reference_problem(ref, entry.id, entry.location, declared)
            if wrong is not None:
                found[wrong] = None
            elif ref.dependency and ref.target in entries and ref.target not in deps:
                deps.append(ref.target)
                fields[(entry.id, ref.target)] = ref.field
        dependencies[entry.id] = tuple(deps)
    for bad in invalid:
        for ref in bad.references:
            wrong = _reference_problem(ref, bad.id, bad.location, declared)
            if wrong is not None:
                found[wrong] = None
    problems += found
    return dependencies, fields


def _reference_problem(
    ref: Reference, entry_id: str, where: Location, declared: dict[str, str | None]
) -> Problem | None:
    """What is wrong with ``ref`` (written by ``entry_id``), or None."""
    if ref.target not in declared:
        message = f"refers to {ref.target!r}, which is not defined; check the name or add the entry"
    else:
        kind = declared[ref.target]
        if kind is None or ref.allows(kind):
            return None
        message = f"refers to {ref.target!r}, a {kind}; it must be {' or '.join(ref.kinds)}"
    return Problem(message, where.file, where.line_of(ref.field), entry_id, ref.field)


def _find_cycles(
    entries: dict[str, Entry],
    deps: dict[str, tuple[str, ...]],
    fields: dict[tuple[str, str], str],
) -> list[Problem]:
    problems = []
    for cycle in find_cycles(entries, lambda node: deps.get(node, ())):
        # reported where the cycle's first entry names the next one
        first = cycle[0]
        entry, field = entries[first], fields[(first, cycle[1])]
        problems.append(
            Problem(
                f"dependency cycle: {' -> '.join(cycle)}; remove one of these "
                "requires/depends_on or references",
                entry.location.file,
                entry.location.line_of(field),
                first,
                field,
            )
        )
    return problems
