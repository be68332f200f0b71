"""``wippy-queue audit verify|show``: check and read audit trail files.

Both take several files (one per runtime instance); ``show`` merges their records by
time. Exit codes: 0 intact; 1 a file tampered (``show`` prints the records anyway);
2 no such file, a file that is no audit trail at all (no line of it is an audit
record), or an audit key that cannot be read; 3 a keyed chain and no audit key to
check it with (``--audit-key``, ``WIPPY_QUEUE_AUDIT_KEY``). With several files the
worst of them decides, in that order: 1, 2, 3.

Its arguments are parsed by ``cli_args``; this module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wippy_queue.audit.chain import VerifyResult, verify_files
from wippy_queue.audit.config import given_key
from wippy_queue.audit.show import Filter, merged, parse_since, table
from wippy_queue.errors import ConfigError


def _verify(files: list[Path], key: str | None) -> tuple[dict[Path, VerifyResult], int]:
    """Each readable audit file's result, and the exit code of what could not be read."""
    code = 0
    for file in files:
        if not file.is_file():
            what = "a directory, not an audit file" if file.is_dir() else "no such file"
            print(f"wippy-queue audit: {file}: {what}", file=sys.stderr)
            code = 2
    results = verify_files([f for f in files if f.is_file()], key)
    for file, result in list(results.items()):
        if result.not_audit:  # another file given by mistake: bad input, not tampering
            print(f"wippy-queue audit: {file}: {result.summary()}", file=sys.stderr)
            code = 2
            del results[file]
    return results, code


def _worst(results: dict[Path, VerifyResult], code: int) -> int:
    if any(not r.ok and not r.unverifiable for r in results.values()):
        return 1
    if code:
        return code
    return 3 if any(r.unverifiable for r in results.values()) else 0


def run(args: argparse.Namespace) -> int:
    try:
        key = given_key(args.audit_key)
    except ConfigError as err:  # bad input, not a tampered file
        print(f"wippy-queue audit: {err.problems[0]}", file=sys.stderr)
        return 2
    results, code = _verify(args.file, key)
    if args.audit_command == "verify":
        for file, result in results.items():
            print(f"{file}: {result.summary()}")
        return _worst(results, code)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        print(
            f"wippy-queue audit: --since {args.since!r} is neither an ISO time "
            "(2026-11-27T18:00:00Z) nor a duration ago (90s, 15m, 2h, 7d)",
            file=sys.stderr,
        )
        return 2
    if not results:  # nothing readable: no empty table
        return code
    keep = Filter(args.denied, args.actor, args.queue, since)
    rows = [r for r in merged(list(results)) if keep.keep(r)]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        print(table(rows, instances=len(results) > 1))
        print(f"({len(rows)} records)")
    for file, result in results.items():
        _warn(file, result)
    return _worst(results, code)


def _warn(file: Path, result: VerifyResult) -> None:
    # Records are shown as written; a reader must not take a tampered file at its word.
    if not result.ok:
        print(
            f"wippy-queue audit: WARNING: {file} fails verification ({result.summary()}); "
            "records from that line on cannot be trusted",
            file=sys.stderr,
        )
    elif result.torn_lines:
        lines = ", ".join(map(str, result.torn_lines))
        print(
            f"wippy-queue audit: note: {file}: line(s) {lines} torn by a crash, not shown "
            "(not tampering)",
            file=sys.stderr,
        )
