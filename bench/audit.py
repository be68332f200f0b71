"""Audited vs unaudited throughput on the memory driver, in one process.

The core bench's run (publish N messages, drain with a no-op async handler,
concurrency 4, prefetch 20) with and without a ``security.audit`` entry, for each
fsync mode. With auditing, every consume writes one hash-chained record that is
awaited before the message is acked. Target (issue 4): audited >= 70% of unaudited.

    python bench/audit.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wippy_queue import Runtime
from wippy_queue.security.audit import verify_file

HANDLERS_MODULE = "wippy_bench_audit_handlers"
HANDLERS = "import itertools\ndone = itertools.count()\n\nasync def noop(data):\n    next(done)\n"


def entries(n: int, audit: Path | None, fsync: str) -> dict[str, Any]:
    listed: list[dict[str, Any]] = [
        {"name": "memory", "kind": "queue.driver.memory", "lifecycle": {"auto_start": True}},
        {
            "name": "jobs",
            "kind": "queue.queue",
            "driver": "memory",
            "driver_options": {"memory": {"max_length": n}},
        },
        {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"},
        {
            "name": "worker",
            "kind": "queue.consumer",
            "queue": "jobs",
            "func": "noop",
            "concurrency": 4,
            "prefetch": 20,
            "lifecycle": {"auto_start": True},
        },
    ]
    if audit is not None:
        listed.append(
            {"name": "audit", "kind": "security.audit", "path": str(audit), "fsync": fsync}
        )
    return {"namespace": "bench", "entries": listed}


@dataclass
class Row:
    key: str
    fsync: str | None
    folder: Path
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


async def run_once(row: Row, n: int) -> tuple[float, float]:
    """Messages per second (wall) and CPU microseconds per message (all threads)."""
    handlers: Any = sys.modules[HANDLERS_MODULE]
    handlers.done = itertools.count()
    audit = row.folder / "audit.jsonl"
    audit.unlink(missing_ok=True)
    runtime = Runtime.load(row.folder / "entries.yaml")
    async with runtime:
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await runtime.publish("bench:jobs", {"i": i})
        await runtime.join("bench:jobs")
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    if next(handlers.done) != n:
        raise SystemExit(f"{row.key}: messages were lost")
    if row.fsync is not None:
        result = verify_file(audit)
        if not result.ok or result.records != n + 1:  # + the header
            raise SystemExit(f"{row.key}: audit file has {result.records} records for {n}")
    return n / elapsed, cpu / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="wq-bench-audit-"))
    (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS)
    sys.path.insert(0, str(root))
    __import__(HANDLERS_MODULE)
    rows = []
    for key, fsync in (("unaudited", None), ("audit never", "never"), ("audit batch", "batch"),
                       ("audit always", "always")):  # fmt: skip
        folder = root / key.replace(" ", "_")
        folder.mkdir()
        audit = folder / "audit.jsonl" if fsync else None
        (folder / "entries.yaml").write_text(json.dumps(entries(args.n, audit, fsync or "")))
        rows.append(Row(key, fsync, folder))
    for row in rows:
        asyncio.run(run_once(row, max(args.n // 10, 100)))  # warm-up
    for round_no in range(args.repeat):
        for row in rows:
            rate, cpu_us = asyncio.run(run_once(row, args.n))
            row.rates.append(rate)
            row.cpu_us.append(cpu_us)
            print(
                f"  round {round_no + 1} {row.key:<13} {rate:>9,.0f} {cpu_us:6.1f}", file=sys.stderr
            )
    base, base_cpu = rows[0].median, statistics.median(rows[0].cpu_us)
    print(f"\nN = {args.n:,}, {args.repeat} runs per row (medians), concurrency 4, prefetch 20\n")
    print("| row | median msg/s | range msg/s | vs unaudited | CPU µs/msg | CPU vs unaudited |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        low, high = min(row.rates), max(row.rates)
        cpu = statistics.median(row.cpu_us)
        print(
            f"| {row.key} | {row.median:,.0f} | {low:,.0f}-{high:,.0f} | {row.median / base:.0%} "
            f"| {cpu:.1f} | {base_cpu / cpu:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
