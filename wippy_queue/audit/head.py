"""The chain's head kept beside the audit file (``audit.jsonl.head``).

The last record known written (file id, seq, hash), saved at start, every 100 ms
while records are written, at stop, and when the file is found gone. A restart reads
it so that a file deleted, replaced or cut short is not taken for a fresh start: a
missing file makes the new file's header name its predecessor (which ``audit verify``
flags unless that file is given too); a replaced or shortened one is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wippy_queue.audit.chain import VerifyResult


@dataclass(frozen=True, slots=True)
class Head:
    file_id: str
    seq: int
    hash: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def read_head(path: Path) -> Head | None:
    """The head saved for the audit file ``path``, or None (none saved, or unreadable)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(head_path(path).read_bytes())
        return Head(str(data["file_id"]), int(data["seq"]), str(data["hash"]))
    return None


def save_head(path: Path, head: Head) -> None:
    """Replace the head file atomically (write aside, fsync, rename); OSError."""
    target = head_path(path)
    aside = target.with_name(f".{target.name}.{os.getpid()}")
    with open(aside, "wb") as f:
        f.write(json.dumps(head.as_record()).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(aside, target)


def continues(path: Path, state: VerifyResult, head: Head | None) -> str | None:
    """Why the verified file at ``path`` is not the chain its head says was written, or None."""
    if head is None:
        return None
    if state.file_id != head.file_id:
        return (
            f"it is not the file this path held: its file_id is {state.file_id}, the last "
            f"one written here was {head.file_id} (seq {head.seq}); it was replaced"
        )
    if state.last_seq < head.seq or (state.last_seq == head.seq and state.last_hash != head.hash):
        return (
            f"records were cut from its end: it ends at seq {state.last_seq}, but seq "
            f"{head.seq} (hash {head.hash}) was written"
        )
    return None
