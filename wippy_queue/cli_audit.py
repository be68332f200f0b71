"""``wippy-queue audit verify|show``: check and read audit trail files.

Exit codes: 0 intact; 1 tampered (``verify``; ``show`` prints the records anyway); 2 no
such file, or a file that is no audit trail at all (no line of it is an audit record).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wippy_queue.audit.chain import verify_file
from wippy_queue.audit.show import Filter, parse_since, records, table


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify or show an audit trail file")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = commands.add_parser("verify", help="check the hash chain; exit 1 if tampered")
    verify.add_argument("file", type=Path, help="an audit trail (JSON lines)")
    show = commands.add_parser("show", help="print records as a table")
    show.add_argument("file", type=Path, help="an audit trail (JSON lines)")
    show.add_argument("--denied", action="store_true", help="only denied decisions")
    show.add_argument("--actor", metavar="ID", help="only records of this actor")
    show.add_argument("--queue", metavar="ID", help="only records of this queue")
    show.add_argument(
        "--since",
        metavar="TIME",
        help="an ISO time (2026-11-27T18:00:00Z) or a duration ago (90s, 15m, 2h, 7d)",
    )
    show.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        what = "a directory, not an audit file" if args.file.is_dir() else "no such file"
        print(f"wippy-queue audit: {args.file}: {what}", file=sys.stderr)
        return 2
    result = verify_file(args.file)
    if result.not_audit:  # another file given by mistake: bad input, not tampering
        print(f"wippy-queue audit: {args.file}: {result.summary()}", file=sys.stderr)
        return 2
    if args.audit_command == "verify":
        print(f"{args.file}: {result.summary()}")
        return 0 if result.ok else 1
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
        return 1
    if result.torn_lines:
        lines = ", ".join(map(str, result.torn_lines))
        print(
            f"wippy-queue audit: note: line(s) {lines} torn by a crash, not shown (not tampering)",
            file=sys.stderr,
        )
    return 0
