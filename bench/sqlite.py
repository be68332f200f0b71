"""Durable queues on SQLite: wippy-queue's sqlite driver against huey and persist-queue.

Each system gets a fresh database file per run, publishes N no-op jobs, then drains
them with 4 workers; the clock runs from the first publish until the last job is
acked. wippy-queue publishes from 100 concurrent producers (its commits share an
fsync); the peers' publish calls are synchronous, one after another. Rows run
interleaved round by round; the table gives medians, and the fsyncs per message of
one more run of each row counted by strace (when it is installed).

    pip install -e '.[bench]'
    python bench/sqlite.py [--n 5000] [--repeat 5] [--svg sqlite.svg] [--json out.json]

Rows (all with their defaults unless said):
- ``wippy-full``: ``queue.driver.sqlite`` with ``synchronous: full`` (every returned
  publish and ack on disk);
- ``wippy-normal``: ``synchronous: normal`` (survives a process crash, not a power cut);
- ``wippy-full-p100``: ``synchronous: full`` with prefetch 100 instead of 20: a consumer
  holds up to prefetch + concurrency messages, so up to that many acks share a commit;
- ``huey``: ``SqliteHuey`` (WAL, SQLite's default synchronous) and its thread consumer
  with 4 workers;
- ``persist-queue``: ``SQLiteAckQueue`` (WAL, SQLite's default synchronous;
  ``multithreading=True`` so that 4 threads may share it), 4 threads get and ack.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

PRODUCERS = 100
DRAIN_TIMEOUT_S = 600.0

HANDLERS_MODULE = "wippy_bench_sqlite_handlers"
HANDLERS_SOURCE = '''\
"""No-op handler for bench/sqlite.py; the counter checks that nothing was lost."""

import itertools

done = itertools.count()


async def noop(data):
    next(done)
'''


def counted(counter: itertools.count[int]) -> int:
    return next(counter)


# -- wippy-queue ----------------------------------------------------------------------


def wippy_entries(folder: Path, synchronous: str, prefetch: int = PREFETCH) -> None:
    noop = {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"}
    document = harness.bench_entries(noop, max_length=1)
    entries = document["entries"]
    entries[0] = {
        "name": "disk",
        "kind": "queue.driver.sqlite",
        "path": "queues.db",
        "synchronous": synchronous,
        "lifecycle": {"auto_start": True},
    }
    entries[1] = {"name": "jobs", "kind": "queue.queue", "driver": "bench:disk"}
    entries[3]["lifecycle"] = {"auto_start": False}  # publish first, then drain
    entries[3]["prefetch"] = prefetch
    (folder / "_index.yaml").write_text(json.dumps(document))


async def wippy_run(folder: Path, n: int, commits: list[int]) -> Timing:
    import importlib

    from wippy_queue import Runtime
    from wippy_queue.drivers.sqlite.driver import SqliteDriver

    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.done = itertools.count()
    runtime = Runtime.load(folder)
    async with runtime:
        driver = runtime.drivers["bench:disk"]
        assert isinstance(driver, SqliteDriver)
        before = driver.commits
        numbers = iter(range(n))

        async def produce() -> None:
            for i in numbers:
                await runtime.publish("bench:jobs", {"i": i})

        started = clock()
        await asyncio.gather(*(produce() for _ in range(PRODUCERS)))
        await runtime.start("bench:worker")
        await runtime.join("bench:jobs", timeout=DRAIN_TIMEOUT_S)
        elapsed = since(started)
        commits.append(driver.commits - before)
    check_handled(counted(handlers.done), n, f"wippy-queue {folder.name}")
    return elapsed


# -- huey ---------------------------------------------------------------------------------


def huey_run(folder: Path, n: int) -> Timing:
    from huey import SqliteHuey

    done = itertools.count()
    huey = SqliteHuey(filename=str(folder / "huey.db"))

    @huey.task()
    def noop(i: int) -> None:
        next(done)

    consumer = huey.create_consumer(workers=CONCURRENCY, worker_type="thread", periodic=False)
    started = clock()
    for i in range(n):
        noop(i)
    consumer.scheduler.start()
    for _, worker in consumer.worker_threads:
        worker.start()
    try:
        _wait_for(lambda: huey.pending_count() == 0 and _value(done) >= n)
        elapsed = since(started)
    finally:
        consumer.stop(graceful=True)
        huey.storage.close()
    check_handled(counted(done), n, "huey")
    return elapsed


def _value(counter: itertools.count[int]) -> int:
    """Peek at a counter (``repr`` shows the next value without consuming it)."""
    return int(re.sub(r"\D", "", repr(counter)) or 0)


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"not drained after {DRAIN_TIMEOUT_S}s; the run is invalid")
        time.sleep(0.001)


# -- persist-queue ------------------------------------------------------------------------


def persist_queue_run(folder: Path, n: int) -> Timing:
    import persistqueue

    done = itertools.count()
    queue = persistqueue.SQLiteAckQueue(str(folder / "pq"), multithreading=True)

    def work() -> None:
        while True:
            try:
                item = queue.get(block=True, timeout=0.5)
            except persistqueue.Empty:
                if queue.qsize() == 0:
                    return
                continue
            next(done)
            queue.ack(item)

    started = clock()
    for i in range(n):
        queue.put({"i": i})
    workers = [threading.Thread(target=work) for _ in range(CONCURRENCY)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DRAIN_TIMEOUT_S)
    elapsed = since(started)
    check_handled(counted(done), n, "persist-queue")
    return elapsed


# -- rows, fsyncs, table --------------------------------------------------------------------


@dataclass
class SqliteRow(harness.Row):
    system: str
    config: str
    peer: bool
    #: wippy-queue's rows: transactions committed with changes, per run
    commits: list[int] = field(default_factory=list)
    #: fsync + fdatasync calls of one counted run, per message (None: not counted)
    fsyncs_per_msg: float | None = None


def rows() -> list[SqliteRow]:
    ours = f"concurrency {CONCURRENCY}, prefetch {PREFETCH}, {PRODUCERS} producers"
    return [
        SqliteRow("wippy-full", "wippy-queue sqlite", f"synchronous full, {ours}", peer=False),
        SqliteRow("wippy-normal", "wippy-queue sqlite", f"synchronous normal, {ours}", peer=False),
        SqliteRow(
            "wippy-full-p100",
            "wippy-queue sqlite",
            f"synchronous full, concurrency {CONCURRENCY}, prefetch 100, {PRODUCERS} producers",
            peer=False,
        ),
        SqliteRow("huey", "huey SqliteHuey", f"defaults, {CONCURRENCY} thread workers", peer=True),
        SqliteRow(
            "persist-queue",
            "persist-queue SQLiteAckQueue",
            f"defaults (multithreading=True), {CONCURRENCY} threads get + ack",
            peer=True,
        ),
    ]


def run_row(row: SqliteRow, n: int) -> Timing:
    folder = Path(tempfile.mkdtemp(prefix=f"wq-bench-{row.key}-"))
    try:
        if row.key.startswith("wippy-"):
            synchronous, _, prefetch = row.key.removeprefix("wippy-").partition("-p")
            wippy_entries(folder, synchronous, int(prefetch or PREFETCH))
            return asyncio.run(wippy_run(folder, n, row.commits))
        if row.key == "huey":
            return huey_run(folder, n)
        return persist_queue_run(folder, n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def count_fsyncs(row: SqliteRow, n: int) -> float | None:
    """fsync + fdatasync calls per message of one run of ``row`` under strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "strace.txt"
        command = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out)]
        command += [sys.executable, __file__, "--one", row.key, "--n", str(n)]
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0 or not out.exists():
            print(f"  {row.key}: counting fsyncs failed: {done.stderr[-500:]}", file=sys.stderr)
            return None
        calls = 0
        for line in out.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                calls += int(parts[3])  # % time, seconds, usecs/call, calls, [errors,] name
    return calls / n


def _pythonpath() -> str:
    here = str(Path(__file__).parent)
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


def table(done: list[SqliteRow]) -> str:
    peers = [r for r in done if r.peer]
    best = max(peers, key=lambda r: r.median) if peers else None
    header = ["system", "configuration", "median msg/s", "range msg/s", "CPU µs/msg"]
    header += ["fsyncs/msg", "commits/msg", "vs faster peer", "paired"]
    body = []
    for row in done:
        fsyncs = "n/a" if row.fsyncs_per_msg is None else f"{row.fsyncs_per_msg:.3f}"
        commits = f"{statistics.median(row.commits) / row.n:.3f}" if row.commits else "-"
        ratio = f"{row.median / best.median:.1f}x" if best else "n/a"
        paired = f"{row.paired_ratio(best):.1f}x" if best else "n/a"
        rates = [f"{row.median:,.0f}", row.rate_range, f"{row.cpu_us:,.0f}"]
        body.append([row.system, row.config, *rates, fsyncs, commits, ratio, paired])
    lines = [harness.markdown_table(header, body, left=2), ""]
    if best:
        lines.append(f"Faster peer: {best.system} ({best.config}). {harness.PAIRED_NOTE}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__, with_json=True)
    parser.set_defaults(n=5000)
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys)")
    parser.add_argument("--no-fsyncs", action="store_true", help="do not count fsyncs (strace)")
    parser.add_argument("--one", metavar="KEY", help=argparse.SUPPRESS)  # one run, for strace
    return harness.parse(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as modules:
        (Path(modules) / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        sys.path.insert(0, modules)
        chosen = [r for r in rows() if not args.only or r.key in args.only]
        if args.one:
            row = next(r for r in rows() if r.key == args.one)
            run_row(row, args.n)
            return 0
        before = harness.machine(("wippy-queue", "huey", "persist-queue"))
        harness.measure(chosen, run_row, n=args.n, repeat=args.repeat, warmup=0)
        if not args.no_fsyncs:
            for row in chosen:
                row.fsyncs_per_msg = count_fsyncs(row, args.n)
    print(
        f"N = {args.n:,} jobs per run, {args.repeat} runs per row (medians), publish then "
        f"drain, {CONCURRENCY} workers; machine: {before['cpus']} CPUs, "
        f"Python {before['python']}\n"
    )
    print(table(chosen))
    if args.svg:
        harness.write_chart(
            args.svg,
            [r.bar() for r in chosen],
            title="Durable queues on SQLite: publish then drain",
            n=args.n,
            repeat=args.repeat,
            settings=f"{CONCURRENCY} workers",
        )
    if args.json:
        harness.write_json(
            args.json,
            {
                "n": args.n,
                "repeat": args.repeat,
                "machine": before,
                "rows": [
                    {
                        "key": r.key,
                        "system": r.system,
                        "config": r.config,
                        "median_msg_s": r.median,
                        "rates": r.rates,
                        "cpu_us": r.cpu_us,
                        "fsyncs_per_msg": r.fsyncs_per_msg,
                        "commits": r.commits,
                    }
                    for r in chosen
                ],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
