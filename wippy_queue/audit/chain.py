"""The hash chain: each record carries the SHA-256 of the previous one and its own.

Keyed (an audit key set): each hash is an HMAC-SHA256 under the key instead, and the
header says so (``mac``, ``key_id``), so that nobody without the key can rewrite a
record and recompute the chain; a verifier without the key says it cannot check.

A record's ``hash`` is SHA-256 over its line as written up to its final ``hash``
member, which includes ``prev`` (the previous record's hash); a verifier hashes those
bytes and never re-encodes. Editing a record breaks its own hash; deleting,
inserting or reordering breaks ``seq`` and ``prev``. The first record of
a file is a header anchoring the chain. A crash can tear the LAST line; on restart
the writer ends the torn line and writes an ``audit_resumed`` record naming it,
chained to the last intact record, so a torn line is told apart from tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
HEADER = "audit_header"
RESUMED = "audit_resumed"
#: written at a clean stop: a file whose last record is not this one is still being
#: written, or its writer crashed, or records were cut from its end (a chain alone
#: cannot tell these apart: compare the last seq and hash with a copy kept elsewhere)
CLOSED = "audit_closed"
#: a runtime instance took up an existing file (its id, host and pid)
OPENED = "audit_opened"
#: the records that frame a chain (who wrote it, when it started and stopped)
FRAMING = (HEADER, RESUMED, OPENED, CLOSED)


#: the header's ``mac`` of a keyed chain
KEYED = "hmac-sha256"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_LENIENT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_HASH_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')


def encode(value: Any) -> str:
    """Compact JSON; a value JSON does not know is recorded as its ``str()``."""
    try:
        return _ENCODER.encode(value)
    except TypeError:
        return _LENIENT.encode(value)


def fragment(fields: dict[str, Any]) -> str:
    """``fields`` as JSON object members without the braces, for ``seal_fragment``."""
    return encode(fields)[1:-1] if fields else ""


def mac(key: str | bytes) -> hmac.HMAC:
    """The keyed hash a keyed chain's records are sealed with (copied per record)."""
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, digestmod=hashlib.sha256)


def digest(body: bytes, key: hmac.HMAC | None = None) -> str:
    """The hash of a record's hashed bytes (which hold its ``prev``): SHA-256, or
    HMAC-SHA256 under ``key`` for a keyed chain."""
    if key is None:
        return hashlib.sha256(body).hexdigest()
    keyed = key.copy()
    keyed.update(body)
    return keyed.hexdigest()


def seal_fragment(
    seq: int, time: str, members: str, prev: str, key: hmac.HMAC | None = None
) -> tuple[bytes, str]:
    """The line of record ``seq`` holding ``members`` (JSON object members), and its hash.

    The hash covers the record's JSON up to its final ``hash`` member (``prev``
    included), exactly as written, so a verifier hashes the line's own bytes and
    never re-encodes anything. ``time`` must need no JSON escaping (ISO 8601).
    """
    if members:
        head = f'{{"seq":{seq},"time":"{time}",{members},"prev":"{prev}"'.encode()
    else:
        head = f'{{"seq":{seq},"time":"{time}","prev":"{prev}"'.encode()
    hashed = hashlib.sha256(head) if key is None else key.copy()
    if key is not None:
        hashed.update(head)
    hashed.update(b"}")
    value = hashed.hexdigest()
    return b"".join((head, b',"hash":"', value.encode(), b'"}\n')), value


def seal(record: dict[str, Any], prev: str, key: hmac.HMAC | None = None) -> bytes:
    """Re-chain a parsed record (``seq``, ``time`` and the rest) after ``prev``."""
    fields = {k: v for k, v in record.items() if k not in ("seq", "time", "prev", "hash")}
    members = fragment(fields)
    line, record["hash"] = seal_fragment(record["seq"], record["time"], members, prev, key)
    record["prev"] = prev
    return line


def split_line(raw: bytes) -> tuple[bytes, str] | None:
    """A line's hashed body and its hash, or None if it does not end in a hash."""
    match = _HASH_SUFFIX.search(raw)
    if match is None:
        return None
    return raw[: match.start()] + b"}", match.group(1).decode()


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
    #: whether the last record is ``audit_closed`` (the writer stopped cleanly)
    closed: bool = False
    #: not ok because no line of the file is an audit record: not tampering, another file
    not_audit: bool = False
    #: the key id of a keyed chain (its hashes are HMACs), None for plain SHA-256
    key_id: str | None = None
    #: not ok because the chain is keyed and no key was given: nothing was checked
    unverifiable: bool = False
    #: the header's ``file_id``
    file_id: str | None = None
    #: the file this one continues (its ``file_id``, last ``seq`` and ``hash``): the
    #: runtime found it gone at a restart; ``verify_files`` checks it was given too
    predecessor: dict[str, Any] | None = None

    def summary(self) -> str:
        if self.not_audit:
            return str(self.problem)
        if self.unverifiable:
            return f"CANNOT CHECK: {self.problem}"
        if not self.ok:
            return f"TAMPERED: line {self.bad_line}: {self.problem}"
        text = f"ok: {self.records} records, chain intact"
        if self.key_id is not None:
            text += f" (keyed: HMAC-SHA256, key id {self.key_id})"
        if self.torn_lines:
            lines = ", ".join(str(n) for n in self.torn_lines)
            text += f"; torn line(s) after a crash: {lines} (not tampering)"
        state = "closed at a clean stop" if self.closed else (
            "not closed: still being written, or its writer crashed, or records were cut "
            "from its end"
        )  # fmt: skip
        text = f"{text}; {state}; last seq {self.last_seq} hash {self.last_hash}"
        if self.predecessor is not None:
            p = self.predecessor
            text += (
                f"; continues file {p.get('file_id')} (its last seq {p.get('seq')}, hash "
                f"{p.get('hash')}), found gone at a restart"
            )
        return text


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(number, content) for each line; the last may lack its newline."""
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


def verify_file(path: str | Path, key: str | bytes | None = None) -> VerifyResult:
    """Walk the chain; stop at the first line that is not what the chain says.

    ``key``: the audit key of a keyed chain. Without it a keyed chain is not checked
    (``unverifiable``); with it, a chain that is not keyed is refused: it was written
    without the key, or rewritten by someone who did not have it.
    """
    result = VerifyResult()
    pending_torn: int | None = None
    last_event = None
    data = Path(path).read_bytes()
    no_header = _no_header(data)
    if no_header:
        return _not_audit(result, data, no_header)
    header = _parse(next(_lines(data))[1]) or {}
    result.file_id = str(header.get("file_id"))
    predecessor = header.get("predecessor")
    result.predecessor = predecessor if isinstance(predecessor, dict) else None
    keyed = _keyed(header, key, result)
    if keyed is False:
        return result
    for number, raw in _lines(data):
        record = _parse(raw)
        if record is None:
            if pending_torn is None:
                pending_torn = number  # maybe torn by a crash: the next record must say so
                continue
            return _bad(result, number, "not a JSON record")
        problem = _check(raw, record, result, pending_torn, number == 1, keyed)
        if problem:
            return _bad(result, number, problem)
        if pending_torn is not None:
            result.torn_lines.append(pending_torn)
            pending_torn = None
        result.records += 1
        result.last_seq = int(record["seq"])
        result.last_hash = str(record["hash"])
        last_event = record.get("event")
    if pending_torn is not None:
        if data.endswith(b"\n"):  # a crash tears the unfinished last line: no newline
            return _bad(result, pending_torn, "not a record, yet a complete line (edited)")
        result.torn_lines.append(pending_torn)  # the last line, torn: a crash, not tampering
        result.trailing_torn = pending_torn
    result.closed = last_event == CLOSED
    return result


def verify_files(paths: list[Path], key: str | bytes | None = None) -> dict[Path, VerifyResult]:
    """``verify_file`` each, then link them: a file that names a predecessor (one found
    gone at a restart) fails unless that file is among ``paths`` and ends where it says."""
    results = {path: verify_file(path, key) for path in paths}
    ends = {r.file_id: r for r in results.values() if r.ok and r.file_id is not None}
    for result in results.values():
        p = result.predecessor
        if p is None or not result.ok:
            continue
        before = ends.get(str(p.get("file_id")))
        if before is None:
            _bad(result, 1, (
                f"its predecessor, file {p.get('file_id')} (last seq {p.get('seq')}, hash "
                f"{p.get('hash')}), was gone when this file was started and is not given: "
                "its records are missing (give it too to check the link)"
            ))  # fmt: skip
        elif before.last_seq < int(p.get("seq", -1)) or (
            before.last_seq == p.get("seq") and before.last_hash != p.get("hash")
        ):
            _bad(result, 1, (
                f"its predecessor, file {p.get('file_id')}, ends at seq {before.last_seq} "
                f"hash {before.last_hash}, not at seq {p.get('seq')} hash {p.get('hash')} as "
                "recorded: records were cut from it or it was replaced"
            ))  # fmt: skip
    return results


def _no_header(data: bytes) -> str | None:
    """Why the file does not start with an audit header, or None."""
    first = next(_lines(data), None)
    if first is None:
        return "it is empty (no header)"
    record = _parse(first[1])
    if record is None or record.get("event") != HEADER:
        return "its first line is not an audit header"
    return None


def _keyed(
    header: dict[str, Any], key: str | bytes | None, result: VerifyResult
) -> hmac.HMAC | bool:
    """The MAC to check a keyed chain with, True for a plain one, False (``result`` says
    why) when it cannot be checked as asked."""
    if header.get("mac") is None:
        if key is None:
            return True
        _bad(result, 1, "the chain is not keyed, yet an audit key was given: it was written "
             "without a key, or rewritten by someone without it")  # fmt: skip
        return False
    result.key_id = str(header.get("key_id"))
    if header.get("mac") != KEYED:
        _bad(result, 1, f"unknown mac {header.get('mac')!r} in the header (expected {KEYED})")
        return False
    if key is None:
        result.ok, result.unverifiable = False, True
        result.problem = (
            f"the chain is keyed (HMAC-SHA256, key id {result.key_id}): give its key "
            "(--audit-key, or WIPPY_QUEUE_AUDIT_KEY) to check it"
        )
        return False
    return mac(key)


def _not_audit(result: VerifyResult, data: bytes, problem: str) -> VerifyResult:
    """The file does not start as an audit trail: tampered if any line of it is an audit
    record (its header edited away), else some other file given by mistake."""
    result.not_audit = not any(
        (record := _parse(raw)) is not None and {"seq", "hash"} <= record.keys()
        for _, raw in _lines(data)
    )
    if result.not_audit:
        return _bad(result, 1, f"not an audit file: {problem}")
    return _bad(result, 1, f"{problem}, yet audit records follow (its header edited or removed)")


def _bad(result: VerifyResult, line: int, problem: str) -> VerifyResult:
    result.ok = False
    result.bad_line = line
    result.problem = problem
    return result


def _check(
    raw: bytes,
    record: dict[str, Any],
    state: VerifyResult,
    torn: int | None,
    first: bool,
    keyed: hmac.HMAC | bool,
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
    parts = split_line(raw)
    if parts is None:
        return "the record does not end with its hash"
    body, value = parts
    key = keyed if isinstance(keyed, hmac.HMAC) else None
    if digest(body, key) != value:
        if first and key is not None:
            return (
                f"the header's hash does not match under the key given: not key id "
                f"{state.key_id}'s key, or the header was edited"
            )
        return "the record's content does not match its hash (edited)"
    return None
