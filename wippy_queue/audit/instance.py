"""Runtime instances and their audit files: an id per start, path placeholders, and
who holds a file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import uuid
from pathlib import Path

#: what an audit path may hold, filled per runtime instance: ``audit-{instance}.jsonl``
PLACEHOLDERS = ("instance", "host", "pid")
_PLACEHOLDER = re.compile(r"\{(instance|host|pid)\}")


def new_instance() -> str:
    """A runtime instance's id: random, fixed for the life of one start."""
    return uuid.uuid4().hex[:16]


def expand(path: str, instance: str) -> str:
    """``path`` with ``{instance}``, ``{host}`` and ``{pid}`` filled in."""
    values = {"instance": instance, "host": socket.gethostname(), "pid": str(os.getpid())}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], path)


def holder(path: Path) -> str:
    """Who the file's last start record says writes it (instance, host, pid)."""
    found = "an unknown process"
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for raw in f:
            if b'"pid":' not in raw:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                r = json.loads(raw)
                found = f"instance {r['instance']} on host {r['host']}, pid {r['pid']}"
    return found
