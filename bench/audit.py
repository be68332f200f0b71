"""Audited vs unaudited throughput on the memory driver, in one process.

The core bench's run (publish N messages, drain with a no-op async handler,
concurrency 4, prefetch 20) with and without a ``security.audit`` entry, for each
fsync mode. With auditing, every consume writes one hash-chained record that is
awaited before the message is acked. Target (issue 4): audited >= 70% of unaudited.

    python bench/audit.py [--n 20000] [--repeat 5] [--json results.json] [--svg chart.svg]
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_audited, check_handled, clock, since

from wippy_queue import Runtime

HANDLERS_MODULE = "wippy_bench_audit_handlers"
HANDLERS = "import itertools\ndone = itertools.count()\n\nasync def noop(data):\n    next(done)\n"
#: row key -> the audit entry's fsync mode (None: no audit entry)
TARGET = 0.70  # audit batch throughput / unaudited (issue 4)
ROWS = {"unaudited": None, "audit never": "never", "audit batch": "batch", "audit always": "always"}


def entries(n: int, audit: Path | None, fsync: str) -> dict[str, Any]:
    noop = {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"}
    document = harness.bench_entries(noop, max_length=n)
    if audit is not None:
        document["entries"].append(
            {"name": "audit", "kind": "security.audit", "path": str(audit), "fsync": fsync}
        )
    return document


@dataclass
class AuditRow(harness.Row):
    fsync: str | None
    folder: Path


async def run_once(row: AuditRow, n: int) -> Timing:
    """One run: wall and CPU time (all threads); the audit file must verify."""
    handlers: Any = sys.modules[HANDLERS_MODULE]
    handlers.done = itertools.count()
    audit = row.folder / "audit.jsonl"
    harness.fresh_audit(audit)
    runtime = Runtime.load(row.folder / "entries.yaml")
    async with runtime:
        gc.collect()
        started = clock()
        for i in range(n):
            await runtime.publish("bench:jobs", {"i": i})
        await runtime.join("bench:jobs")
        elapsed = since(started)
    check_handled(next(handlers.done), n, row.key)
    if row.fsync is not None:
        check_audited(audit, n, row.key)
    return elapsed


def write_rows(root: Path, n: int) -> list[AuditRow]:
    rows = []
    for key, fsync in ROWS.items():
        folder = root / key.replace(" ", "_")
        folder.mkdir()
        audit = folder / "audit.jsonl" if fsync else None
        (folder / "entries.yaml").write_text(json.dumps(entries(n, audit, fsync or "")))
        rows.append(AuditRow(key, fsync, folder))
    return rows


def _cells(row: AuditRow, base: AuditRow) -> list[str]:
    rate, cpu = f"{row.median / base.median:.0%}", f"{base.cpu_us / row.cpu_us:.0%}"
    return [row.key, f"{row.median:,.0f}", row.rate_range, rate, f"{row.cpu_us:.1f}", cpu]


def table(rows: list[AuditRow]) -> str:
    header = ["row", "median msg/s", "range msg/s", "vs unaudited"]
    header += ["CPU µs/msg", "CPU vs unaudited"]
    return harness.markdown_table(header, [_cells(row, rows[0]) for row in rows])


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__doc__, with_json=True), argv)
    with tempfile.TemporaryDirectory(prefix="wq-bench-audit-") as tmp:
        root = Path(tmp)
        (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS)
        sys.path.insert(0, str(root))
        __import__(HANDLERS_MODULE)
        rows = write_rows(root, args.n)
        harness.measure(
            rows,
            lambda row, n: asyncio.run(run_once(row, n)),
            n=args.n,
            repeat=args.repeat,
            warmup=max(args.n // 10, 100),
        )
    settings = f"concurrency {CONCURRENCY}, prefetch {PREFETCH}"
    print(f"\nN = {args.n:,}, {args.repeat} runs per row (medians), {settings}\n")
    print(table(rows))
    batch = next(row for row in rows if row.key == "audit batch")
    ratio = batch.median / rows[0].median
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"\naudit batch: {ratio:.0%} of unaudited ({verdict} the {TARGET:.0%} target)")
    if args.json:
        results = {r.key: {"rates": r.rates, "cpu_us": r.cpu_us_runs} for r in rows}
        harness.write_json(
            args.json,
            {"n": args.n, "rows": results, "ratio_batch": ratio, "machine": harness.machine()},
        )
    if args.svg:
        harness.write_chart(
            args.svg,
            [row.bar() for row in rows],
            title="bench/audit.py: throughput with the audit trail, per fsync mode",
            n=args.n,
            repeat=args.repeat,
            settings=settings,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
