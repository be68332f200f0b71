"""Reading entry files: YAML with line numbers, ``${env:NAME}`` and ``file://`` paths.

An entry file holds ``version`` (optional), ``namespace`` (required), file-level
``meta`` and ``entries``. Problems are collected, never raised one at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wippy_queue.errors import Problem
from wippy_queue.files import read_regular
from wippy_queue.registry.yaml_limits import BoundedLoader, YamlLimitError, check_expansion

ENTRY_SUFFIXES = (".yaml", ".yml")
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE_KEYS = frozenset({"version", "namespace", "meta", "entries"})


class LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class _LineLoader(BoundedLoader):
    duplicate_keys: list[tuple[Any, int]]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    mapping = LineDict()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in mapping.key_lines:
            loader.duplicate_keys.append((key, line))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


@dataclass
class RawEntry:
    """An entry as written, before its kind's model validates it."""

    file: str
    line: int
    namespace: str
    name: Any
    kind: Any
    meta: dict[str, Any]
    data: dict[str, Any]
    field_lines: dict[str, int] = field(default_factory=dict)
    #: fields whose ``${env:NAME}`` is unset: reported once, never validated as ""
    unset_fields: frozenset[str] = frozenset()


def entry_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, bool]]:
    """Yield each entry file once (a file named twice, or also found in a named folder,
    is one file) and whether it was named explicitly (not found by a walk)."""
    seen: set[Path] = set()
    for path, explicit in _candidates(paths):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            yield path, explicit


def _candidates(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, bool]]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.suffix in ENTRY_SUFFIXES and found.is_file():
                    yield found, False
        else:
            yield path, True


@dataclass(frozen=True, slots=True)
class _Unset:
    """An ``${env:NAME}`` without a default whose variable is not set."""

    name: str
    field: str
    line: int


def _interpolate(value: Any, unset: list[_Unset], field: str = "", line: int = 0) -> Any:
    """``value`` with ``${env:...}`` replaced; each unset variable noted in ``unset`` with
    the dotted field (``lifecycle.start_timeout``) and line that name it."""
    if isinstance(value, str):

        def env(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            unset.append(_Unset(name, field, line))
            return ""

        return _ENV.sub(env, value)
    if isinstance(value, LineDict):
        out = LineDict(
            {
                k: _interpolate(v, unset, f"{field}.{k}" if field else str(k), value.key_lines[k])
                for k, v in value.items()
            }
        )
        out.line, out.key_lines = value.line, value.key_lines
        return out
    if isinstance(value, list):
        return [_interpolate(v, unset, field, getattr(v, "line", line)) for v in value]
    return value


def _resolve_files(value: Any, base: Path) -> Any:
    """Make ``file://relative`` values absolute, relative to the entry file. Links stay
    links: a policy file swapped by re-pointing its link is the file a watcher sees."""
    if isinstance(value, str) and value.startswith("file://"):
        rel = value.removeprefix("file://")
        return "file://" + os.path.abspath(base / rel)
    if isinstance(value, LineDict):
        out = LineDict({k: _resolve_files(v, base) for k, v in value.items()})
        out.line, out.key_lines = value.line, value.key_lines
        return out
    if isinstance(value, list):
        return [_resolve_files(v, base) for v in value]
    return value


def read_yaml(path: Path, problems: list[Problem], digests: dict[str, str] | None = None) -> Any:
    """A YAML file with line numbers (``LineDict``); problems go to ``problems``, and
    the SHA-256 of the bytes read to ``digests`` (a watcher compares with those)."""
    try:
        data = read_regular(path)
        if digests is not None:
            digests[str(path)] = hashlib.sha256(data).hexdigest()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem(f"cannot read entry file: {err}", file=str(path)))
        return None
    loader = _LineLoader(text)
    loader.duplicate_keys = []
    try:
        document = _bounded_document(loader)
    except YamlLimitError as err:
        problems.append(Problem(str(err), file=str(path), line=err.line))
        return None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(err, "problem", None) or str(err)
        problems.append(
            Problem(f"malformed YAML: {reason}; fix the syntax", file=str(path), line=line)
        )
        return None
    finally:
        loader.dispose()
    for key, line in loader.duplicate_keys:
        problems.append(
            Problem(f"key {key!r} is written twice; keep one", file=str(path), line=line)
        )
    return document


def _bounded_document(loader: _LineLoader) -> Any:
    """The document, built only once it is known to stay within the YAML limits."""
    node = loader.get_single_node()
    if node is None:
        return None
    check_expansion(node)
    return loader.construct_document(node)


def read_entries(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[RawEntry], list[Problem], dict[str, str]]:
    """The raw entries, the problems found, and the digest of each file read.

    Finding no entry at all is a problem: it names every file looked at and why it
    was skipped (a runtime with nothing to run would idle forever).
    """
    paths = list(paths)
    entries: list[RawEntry] = []
    problems: list[Problem] = []
    digests: dict[str, str] = {}
    skipped: list[str] = []
    for path, explicit in entry_files(paths):
        if not path.exists():
            problems.append(Problem("no such file or directory", file=str(path)))
            continue
        known = len(problems)
        document = read_yaml(path, problems, digests)
        if len(problems) > known:
            continue  # reported already (unreadable, malformed YAML)
        reason = None if explicit else _skip_reason(document)
        found = [] if reason else _file_entries(path, document, problems)
        if not found and len(problems) == known:
            skipped.append(f"{path} ({reason or 'its entries list is empty'})")
        entries.extend(found)
    if not entries and not problems:
        problems.append(_nothing_found(paths, skipped))
    return entries, problems, digests


def _skip_reason(document: Any) -> str | None:
    """Why a YAML file found in a folder is no entry file (None when it is one)."""
    if document is None:
        return "empty"
    if not isinstance(document, LineDict):
        return f"its top level is a {_yaml_type(document)}, not a mapping"
    if "namespace" not in document and "entries" not in document:
        keys = ", ".join(str(key) for key in list(document)[:5]) or "none"
        return f"no 'namespace' or 'entries' at its top level; its keys: {keys}"
    return None


def _yaml_type(value: Any) -> str:
    return "list" if isinstance(value, list) else f"single value ({type(value).__name__})"


def _nothing_found(paths: list[str | os.PathLike[str]], skipped: list[str]) -> Problem:
    where = ", ".join(str(p) for p in paths) or "<no paths>"
    if not skipped:
        return Problem(
            "no entries: no .yaml or .yml file here; give the entry files or the folder that "
            "holds them (policy and Lua files are found through their entries)",
            file=where,
        )
    listed = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more" if skipped[10:] else "")
    return Problem(
        f"no entries found; an entry file is a YAML mapping with 'namespace' and 'entries'. "
        f"Looked at: {listed}",
        file=where,
    )


def _not_a_mapping(path: Path) -> str:
    message = "an entry file is a mapping with 'namespace' and 'entries'"
    if path.suffix in ENTRY_SUFFIXES:
        return message
    return (
        f"{message}; {path.name} is not an entry file (.yaml): pass the entry files, or the "
        "folder that holds them (policy files are found through their entries)"
    )


def _file_entries(path: Path, document: Any, problems: list[Problem]) -> list[RawEntry]:
    file = str(path)
    if not isinstance(document, LineDict):
        problems.append(Problem(_not_a_mapping(path), file=file))
        return []
    for key in document:
        if key not in _FILE_KEYS:
            problems.append(
                Problem(
                    f"unknown file-level key {key!r}; known: {', '.join(sorted(_FILE_KEYS))}",
                    file=file,
                    line=document.key_lines.get(key),
                )
            )
    namespace = document.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        problems.append(
            Problem(
                "missing 'namespace': add e.g. 'namespace: app.queue' at the top of the file",
                file=file,
                line=document.key_lines.get("namespace", 1),
            )
        )
        return []
    file_meta = _mapping(document, "meta", file, None, problems)
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        problems.append(
            Problem(
                "'entries' must be a list of entries",
                file=file,
                line=document.key_lines.get("entries", document.line),
            )
        )
        return []
    out = []
    for item in raw_entries:
        entry = _raw_entry(path, namespace, file_meta, item, problems)
        if entry is not None:
            out.append(entry)
    return out


def _raw_entry(
    path: Path, namespace: str, file_meta: Any, item: Any, problems: list[Problem]
) -> RawEntry | None:
    file = str(path)
    if not isinstance(item, LineDict):
        problems.append(Problem(f"an entry must be a mapping, got {item!r}", file=file))
        return None
    unset: list[_Unset] = []
    item = _resolve_files(_interpolate(item, unset), path.parent)
    name, kind = item.get("name"), item.get("kind")
    entry_id = f"{namespace}:{name}" if name else None
    # a field given under `data:` is validated (and reported) by its own name
    fields = [u.field.removeprefix("data.") for u in unset]
    for var, field_name in zip(unset, fields, strict=True):
        problems.append(
            Problem(
                f"environment variable {var.name} is not set; export it or write "
                f"${{env:{var.name}:-default}}",
                file,
                var.line,
                entry_id,
                field_name,
            )
        )
    meta = {**file_meta, **_mapping(item, "meta", file, entry_id, problems)}
    data = {k: v for k, v in item.items() if k not in ("name", "kind", "meta", "data")}
    lines = dict(item.key_lines)
    explicit = _mapping(item, "data", file, entry_id, problems)
    for key in sorted(explicit.keys() & data.keys()):  # (which was meant: say, never pick)
        problems.append(
            Problem(
                f"{key!r} is given twice, beside 'data' and under it; keep one",
                file,
                explicit.key_lines.get(key, item.line),
                entry_id,
                key,
            )
        )
    data.update(explicit)
    lines.update(explicit.key_lines)
    return RawEntry(file, item.line, namespace, name, kind, meta, data, lines, frozenset(fields))


def _mapping(
    node: LineDict, key: str, file: str, entry_id: str | None, problems: list[Problem]
) -> LineDict:
    """``node[key]`` if it is a mapping; empty when absent; a problem when it is not."""
    value = node.get(key)
    if isinstance(value, LineDict):
        return value
    if value is not None:
        problems.append(
            Problem(
                f"'{key}' must be a mapping of names to values, got {value!r}",
                file,
                node.key_lines.get(key, node.line),
                entry_id,
                key,
            )
        )
    empty = LineDict()
    empty.key_lines = {}
    return empty
