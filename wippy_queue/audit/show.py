"""Reading an audit file for people: filters and a table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wippy_queue.audit.chain import FRAMING
from wippy_queue.registry.types import parse_duration

COLUMNS = (
    "seq",
    "time",
    "event",
    "action",
    "decision",
    "reason",
    "actor",
    "queue",
    "message_id",
    "outcome",
    "policy",
)


@dataclass(frozen=True)
class Filter:
    denied: bool = False
    actor: str | None = None
    queue: str | None = None
    since: datetime | None = None

    def keep(self, record: dict[str, Any]) -> bool:
        if record.get("event") in FRAMING:
            return False
        if self.denied and record.get("decision") != "deny":
            return False
        if self.actor and record.get("actor") != self.actor:
            return False
        if self.queue and record.get("queue") != self.queue:
            return False
        return not (self.since and parse_time(str(record.get("time", ""))) < self.since)


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-11-27T18:00:00Z``, or a date); naive times are UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO time (see ``parse_time``) or a duration ago with its unit: ``90s``, ``15m``,
    ``2h``, ``7d`` (a bare number is neither: ``2026`` is no year, nor seconds);
    ValueError."""
    try:
        return parse_time(text)
    except ValueError:
        pass
    text = text.strip()
    if not text or text[-1].isdigit():
        raise ValueError(f"{text!r} has no unit")
    if text.endswith("d") and text[:-1].replace(".", "", 1).isdigit():
        ago = float(text[:-1]) * 86_400
    else:
        ago = parse_duration(text)  # ValueError when it is not a duration either
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=ago)
    except OverflowError:
        raise ValueError(f"{text!r} is too long ago") from None


def records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a torn line; `audit verify` reports it
            if isinstance(record, dict):
                yield record


def merged(paths: list[Path]) -> list[dict[str, Any]]:
    """The records of several files (one per runtime instance) in time order; records
    of one millisecond keep their file's order."""
    rows = [(str(r.get("time", "")), i, n, r) for i, p in enumerate(paths) for n, r in
            enumerate(records(p))]  # fmt: skip
    rows.sort(key=lambda row: row[:3])
    return [row[3] for row in rows]


def _cell(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if column == "time" and isinstance(value, str):
        return value[:23].replace("T", " ")
    if column in ("message_id", "instance") and isinstance(value, str):
        return value[:8]
    if column == "outcome" and record.get("event") == "policy_reload":
        return f"{record.get('result')} {record.get('policy')}"
    return "-" if value is None else str(value)


def table(rows: list[dict[str, Any]], *, instances: bool = False) -> str:
    """``rows`` as a table; ``instances`` adds which runtime instance wrote each."""
    columns = (*COLUMNS[:2], "instance", *COLUMNS[2:]) if instances else COLUMNS
    cells = [[_cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
