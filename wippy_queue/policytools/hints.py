"""Small helpers for messages: suggestions and paths as a person reads them."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path


def did_you_mean(value: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest other candidate, or an empty string."""
    options = sorted(set(candidates) - {value})
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if not close:
        # an unqualified name that one registry ID ends with: 'tenants' -> 'app.mt:tenants'
        close = [o for o in options if o.endswith(f":{value}")][:1]
    return f"; did you mean {close[0]!r}?" if close else ""


def listing(values: Iterable[str], limit: int = 8) -> str:
    """``a, b, c`` (at most ``limit``, then ``and N more``), or ``none``."""
    items = sorted(set(values))
    if not items:
        return "none"
    shown = ", ".join(repr(v) if v == "" else v for v in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def display_path(file: str) -> str:
    """``file`` relative to the working directory when it lies below it."""
    try:
        relative = Path(file).resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return file
    return os.fspath(relative)
