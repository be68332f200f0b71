"""The hash chain: each record carries the SHA-256 of the previous one and its own.

A record's ``hash`` is SHA-256 over the previous record's hash and the record's
canonical JSON (sorted keys, no ``hash`` field), so editing a record breaks its
own hash, deleting or reordering breaks ``seq`` and ``prev``. The first record of
a file is a header anchoring the chain. A crash can tear the LAST line; on restart
the writer ends the torn line and writes an ``audit_resumed`` record naming it,
chained to the last intact record, so a torn line is told apart from tampering.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
HEADER = "audit_header"
RESUMED = "audit_resumed"


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def seal(record: dict[str, Any], prev: str) -> dict[str, Any]:
    """Set ``prev`` and ``hash`` on ``record`` (in place) and return it."""
    record["prev"] = prev
    record["hash"] = hashlib.sha256(prev.encode() + canonical(record)).hexdigest()
    return record


def line_of(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


@dataclass
class VerifyResult:
    records: int = 0
    ok: bool = True
    bad_line: int | None = None
    problem: str | None = None
    torn_lines: list[int] = field(default_factory=list)
    last_seq: int = -1
    last_hash: str = GENESIS
    #: the last line, when it is torn and not yet marked by an ``audit_resumed`` record
    trailing_torn: int | None = None

    def summary(self) -> str:
        if not self.ok:
            return f"TAMPERED: line {self.bad_line}: {self.problem}"
        text = f"ok: {self.records} records, chain intact"
        if self.torn_lines:
            lines = ", ".join(str(n) for n in self.torn_lines)
            text += f"; torn line(s) after a crash: {lines} (not tampering)"
        return text


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, content) for each line; the last may lack its newline."""
    data = path.read_bytes()
    parts = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        parts = parts[:-1]
    for i, part in enumerate(parts):
        yield i + 1, part


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def verify_file(path: str | Path) -> VerifyResult:
    """Walk the chain; stop at the first line that is not what the chain says."""
    result = VerifyResult()
    pending_torn: int | None = None
    for number, raw in _lines(Path(path)):
        record = _parse(raw)
        if record is None:
            if pending_torn is None:
                pending_torn = number  # maybe torn by a crash: the next record must say so
                continue
            return _bad(result, number, "not a JSON record")
        problem = _check(record, result, pending_torn, number == 1)
        if problem:
            return _bad(result, number, problem)
        if pending_torn is not None:
            result.torn_lines.append(pending_torn)
            pending_torn = None
        result.records += 1
        result.last_seq = int(record["seq"])
        result.last_hash = str(record["hash"])
    if pending_torn is not None:
        result.torn_lines.append(pending_torn)  # the last line, torn: a crash, not tampering
        result.trailing_torn = pending_torn
    return result


def _bad(result: VerifyResult, line: int, problem: str) -> VerifyResult:
    result.ok = False
    result.bad_line = line
    result.problem = problem
    return result


def _check(
    record: dict[str, Any], state: VerifyResult, torn: int | None, first: bool
) -> str | None:
    if first and record.get("event") != HEADER:
        return "the first record is not the audit header"
    if not first and record.get("event") == HEADER:
        return "a second header record (records inserted from another file?)"
    if torn is not None and (record.get("event") != RESUMED or record.get("torn_line") != torn):
        return f"line {torn} is not a record and this record does not mark it torn"
    if record.get("seq") != state.last_seq + 1:
        return (
            f"sequence {record.get('seq')!r} where {state.last_seq + 1} was expected "
            "(a record was deleted, inserted or moved)"
        )
    if record.get("prev") != state.last_hash:
        return "prev does not match the previous record's hash (deleted, inserted or reordered)"
    expected = hashlib.sha256(str(record.get("prev")).encode() + canonical(record)).hexdigest()
    if record.get("hash") != expected:
        return "the record's content does not match its hash (edited)"
    return None
