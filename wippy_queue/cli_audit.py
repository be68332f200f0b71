"""``wippy-queue audit verify|show``: check and read audit trail files.

Exit codes: 0 intact; 1 tampered (``verify``; ``show`` prints the records anyway); 2 no
such file, or a file that is no audit trail at all (no line of it is an audit record);
3 a keyed chain and no audit key to check it with (``--audit-key``,
``WIPPY_QUEUE_AUDIT_KEY``).

Its arguments are parsed by ``cli_args``; this module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from wippy_queue.audit.chain import verify_file
from wippy_queue.audit.config import given_key
from wippy_queue.audit.show import Filter, parse_since, records, table


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        what = "a directory, not an audit file" if args.file.is_dir() else "no such file"
        print(f"wippy-queue audit: {args.file}: {what}", file=sys.stderr)
        return 2
    result = verify_file(args.file, given_key(args.audit_key))
    if result.not_audit:  # another file given by mistake: bad input, not tampering
        print(f"wippy-queue audit: {args.file}: {result.summary()}", file=sys.stderr)
        return 2
    if args.audit_command == "verify":
        print(f"{args.file}: {result.summary()}")
        return 0 if result.ok else 3 if result.unverifiable else 1
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError:
        print(
            f"wippy-queue audit: --since {args.since!r} is neither an ISO time "
            "(2026-11-27T18:00:00Z) nor a duration ago (90s, 15m, 2h, 7d)",
            file=sys.stderr,
        )
        return 2
    keep = Filter(args.denied, args.actor, args.queue, since)
    rows = [r for r in records(args.file) if keep.keep(r)]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        print(table(rows))
        print(f"({len(rows)} records)")
    # Records are shown as written; a reader must not take a tampered file at its word.
    if not result.ok:
        print(
            f"wippy-queue audit: WARNING: {args.file} fails verification ({result.summary()}); "
            "records from that line on cannot be trusted",
            file=sys.stderr,
        )
        return 3 if result.unverifiable else 1
    if result.torn_lines:
        lines = ", ".join(map(str, result.torn_lines))
        print(
            f"wippy-queue audit: note: line(s) {lines} torn by a crash, not shown (not tampering)",
            file=sys.stderr,
        )
    return 0
