"""End-to-end throughput: wippy-queue's memory driver against Dramatiq and taskiq.

Each system publishes N messages and drains them with a no-op handler (concurrency 4,
prefetch 20), in this one process, ``--repeat`` times, interleaved round by round.
The clock starts before the first publish and stops once every message is settled
(acked) and the system says its queue is drained. See bench/README.md for what each
row means and why it is fair.

    pip install -e '.[bench]'
    python bench/throughput.py [--n 20000] [--repeat 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

CONCURRENCY = 4
PREFETCH = 20
HANDLERS_MODULE = "wippy_bench_handlers"


@dataclass(frozen=True)
class Timing:
    """One measured run: wall-clock seconds and CPU seconds of the whole process."""

    wall_s: float
    cpu_s: float


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(started: tuple[float, float]) -> Timing:
    wall, cpu = clock()
    return Timing(wall - started[0], cpu - started[1])


# -- wippy-queue ----------------------------------------------------------------------

HANDLERS_SOURCE = '''\
"""No-op handlers for bench/throughput.py; the counter checks that nothing was lost."""

import itertools

done = itertools.count()


async def noop_async(data):
    next(done)


def noop_sync(data):
    next(done)
'''

ENTRIES_TEMPLATE = """\
version: "1.0"
namespace: bench
entries:
  - name: memory
    kind: queue.driver.memory
    lifecycle:
      auto_start: true
  - name: jobs
    kind: queue.queue
    driver: bench:memory
    driver_options:
      memory:
        max_length: {max_length}
  - name: noop
    kind: function.python
    source: {module}:{function}
  - name: worker
    kind: queue.consumer
    queue: bench:jobs
    func: bench:noop
    concurrency: {concurrency}
    prefetch: {prefetch}
    lifecycle:
      auto_start: true
"""


def write_entries(root: Path, max_length: int) -> dict[str, Path]:
    """Write the handler module and one entry folder per handler style; return the folders."""
    (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
    folders = {}
    for style in ("async", "sync"):
        folder = root / style
        folder.mkdir()
        (folder / "_index.yaml").write_text(
            ENTRIES_TEMPLATE.format(
                max_length=max_length,
                module=HANDLERS_MODULE,
                function=f"noop_{style}",
                concurrency=CONCURRENCY,
                prefetch=PREFETCH,
            )
        )
        folders[style] = folder
    return folders


def counted(counter: itertools.count[int]) -> int:
    """How many times ``next`` was called on ``counter`` (consumes one more value)."""
    return next(counter)


async def wippy_run(folder: Path, n: int) -> Timing:
    from wippy_queue import Runtime

    handlers = importlib.import_module(HANDLERS_MODULE)
    handlers.done = itertools.count()
    runtime = Runtime.load(folder)
    async with runtime:
        started = clock()
        for i in range(n):
            await runtime.publish("bench:jobs", {"i": i})
        await runtime.join("bench:jobs")
        elapsed = since(started)
    check(counted(handlers.done), n, f"wippy-queue {folder.name}")
    return elapsed


# -- Dramatiq ---------------------------------------------------------------------------


def dramatiq_run(n: int) -> Timing:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    done = itertools.count()
    broker = StubBroker()
    broker.emit_after("process_boot")

    def noop(i: int) -> None:
        next(done)

    actor = dramatiq.actor(noop, broker=broker, queue_name="bench", max_retries=0)
    worker = dramatiq.Worker(broker, worker_threads=CONCURRENCY)
    worker.queue_prefetch = PREFETCH
    worker.start()
    try:
        started = clock()
        for i in range(n):
            actor.send(i)
        broker.join("bench")
        elapsed = since(started)
    finally:
        worker.stop()
        broker.close()
    check(counted(done), n, "dramatiq")
    return elapsed


# -- taskiq -----------------------------------------------------------------------------


async def taskiq_shipped_run(n: int) -> Timing:
    """InMemoryBroker as shipped: kick() starts one asyncio task per message (unbounded)."""
    from taskiq import InMemoryBroker

    done = itertools.count()
    broker = InMemoryBroker(max_async_tasks=CONCURRENCY)

    async def noop(i: int) -> None:
        next(done)

    task = broker.task(task_name="bench.noop")(noop)
    await broker.startup()
    try:
        started = clock()
        for i in range(n):
            await task.kiq(i)
        await broker.wait_all()
        elapsed = since(started)
    finally:
        await broker.shutdown()
    check(counted(done), n, "taskiq shipped")
    return elapsed


def _queued_broker_class() -> type[Any]:
    """InMemoryBroker whose kick() enqueues, so taskiq's own Receiver.listen() runs the
    tasks with its max_async_tasks / max_prefetch bounds (what a taskiq worker does)."""
    from taskiq import AckableMessage, InMemoryBroker
    from taskiq.message import BrokerMessage

    class QueuedInMemoryBroker(InMemoryBroker):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pending: asyncio.Queue[bytes] = asyncio.Queue()
            self.unacked = 0
            self.drained = asyncio.Event()

        async def kick(self, message: BrokerMessage) -> None:
            self.unacked += 1
            self.drained.clear()
            self.pending.put_nowait(message.message)

        def _ack(self) -> None:
            self.unacked -= 1
            if self.unacked == 0:
                self.drained.set()

        async def listen(self) -> AsyncIterator[AckableMessage]:  # type: ignore[override]
            while True:
                data = await self.pending.get()
                yield AckableMessage(data=data, ack=self._ack)

    return QueuedInMemoryBroker


async def taskiq_receiver_run(n: int) -> Timing:
    """taskiq's Receiver.listen() with max_async_tasks=4 and max_prefetch=20."""
    from taskiq.receiver import Receiver

    done = itertools.count()
    broker = _queued_broker_class()()

    async def noop(i: int) -> None:
        next(done)

    task = broker.task(task_name="bench.noop")(noop)
    await broker.startup()
    receiver = Receiver(
        broker,
        executor=broker.executor,
        max_async_tasks=CONCURRENCY,
        max_prefetch=PREFETCH,
        run_startup=False,
    )
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    try:
        started = clock()
        for i in range(n):
            await task.kiq(i)
        await broker.drained.wait()
        elapsed = since(started)
    finally:
        finish.set()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await broker.shutdown()
    check(counted(done), n, "taskiq receiver")
    return elapsed


# -- running and reporting --------------------------------------------------------------


def check(handled: int, n: int, name: str) -> None:
    if handled != n:
        raise SystemExit(f"{name}: handled {handled} of {n} messages; the run is invalid")


@dataclass
class Row:
    key: str
    system: str
    config: str
    run: Callable[[int], Timing]
    #: False for wippy-queue's own rows
    peer: bool
    #: True when at most CONCURRENCY handlers run at once (the issue's configuration)
    bounded: bool
    n: int = 0
    timings: list[Timing] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.n / t.wall_s for t in self.timings]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_us(self) -> float:
        """Median CPU time of the whole process per message, in microseconds."""
        return statistics.median(t.cpu_s / self.n * 1e6 for t in self.timings)


def build_rows(folders: dict[str, Path], max_length: int) -> list[Row]:
    def wippy(style: str) -> Callable[[int], Timing]:
        return lambda n: asyncio.run(wippy_run(folders[style], n))

    bounds = f"concurrency {CONCURRENCY}, prefetch {PREFETCH}"
    return [
        Row(
            "wippy-async",
            "wippy-queue memory",
            f"async handler, {bounds}, max_length {max_length}",
            wippy("async"),
            peer=False,
            bounded=True,
        ),
        Row(
            "wippy-sync",
            "wippy-queue memory",
            f"sync handler (thread pool), {bounds}, max_length {max_length}",
            wippy("sync"),
            peer=False,
            bounded=True,
        ),
        Row(
            "dramatiq",
            "Dramatiq StubBroker + Worker",
            f"worker_threads {CONCURRENCY}, queue_prefetch {PREFETCH}, default middleware",
            dramatiq_run,
            peer=True,
            bounded=True,
        ),
        Row(
            "taskiq-receiver",
            "taskiq InMemoryBroker + Receiver",
            f"max_async_tasks {CONCURRENCY}, max_prefetch {PREFETCH}, async task",
            lambda n: asyncio.run(taskiq_receiver_run(n)),
            peer=True,
            bounded=True,
        ),
        Row(
            "taskiq-shipped",
            "taskiq InMemoryBroker (as shipped)",
            "kick() starts a task per message: concurrency UNBOUNDED, async task",
            lambda n: asyncio.run(taskiq_shipped_run(n)),
            peer=True,
            bounded=False,
        ),
    ]


def measure(rows: list[Row], n: int, repeat: int, warmup: int) -> None:
    """One unmeasured warm-up run per row, then ``repeat`` rounds of every row in turn."""
    for row in rows:
        row.n = n
        if warmup:
            row.run(warmup)
    for round_no in range(1, repeat + 1):
        for row in rows:
            gc.collect()
            row.timings.append(row.run(n))
            print(
                f"  round {round_no}/{repeat}  {row.key:<16} {row.rates[-1]:>10,.0f} msg/s",
                file=sys.stderr,
            )


def _fastest(rows: list[Row]) -> Row | None:
    return max(rows, key=lambda r: r.median) if rows else None


def _ratio(row: Row, best: Row | None) -> str:
    return f"{row.median / best.median:.2f}x" if best else "n/a"


def table(rows: list[Row]) -> str:
    best = _fastest([r for r in rows if r.peer])
    best_bounded = _fastest([r for r in rows if r.peer and r.bounded])
    lines = [
        "| system | configuration | median msg/s | range msg/s | CPU µs/msg "
        "| vs faster peer | vs faster peer at concurrency 4 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.system} | {row.config} | {row.median:,.0f} | "
            f"{min(row.rates):,.0f}-{max(row.rates):,.0f} | {row.cpu_us:,.1f} | "
            f"{_ratio(row, best)} | {_ratio(row, best_bounded)} |"
        )
    lines.append("")
    for label, peer in (("Faster peer", best), ("Faster peer at concurrency 4", best_bounded)):
        if peer:
            lines.append(f"{label}: {peer.system} ({peer.config}).  ")
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _tree() -> str:
    """The wippy_queue source measured: its git commit, ``-dirty`` with local edits."""
    import wippy_queue

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(wippy_queue.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "wippy_queue_tree": _tree(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "versions": {d: _version(d) for d in ("wippy-queue", "dramatiq", "taskiq")},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per row")
    parser.add_argument(
        "--warmup", type=int, default=None, help="messages in one unmeasured run (default n/10)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="wippy memory queue bound (default n: never full, like the peers' queues)",
    )
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    if args.n <= 0 or args.repeat <= 0:
        parser.error("--n and --repeat must be positive")
    return args


def as_json(args: argparse.Namespace, rows: list[Row], before: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": args.n,
        "repeat": args.repeat,
        "concurrency": CONCURRENCY,
        "prefetch": PREFETCH,
        "machine": before,
        "load_average_1min_after": os.getloadavg()[0],
        "rows": [
            {
                "key": r.key,
                "system": r.system,
                "config": r.config,
                "peer": r.peer,
                "bounded": r.bounded,
                "median_msg_s": r.median,
                "runs_msg_s": r.rates,
                "median_cpu_us_per_msg": r.cpu_us,
            }
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    max_length = args.max_length or args.n
    warmup = args.n // 10 if args.warmup is None else args.warmup
    info = machine()
    with tempfile.TemporaryDirectory(prefix="wippy-bench-") as tmp:
        folders = write_entries(Path(tmp), max_length)
        sys.path.insert(0, tmp)
        rows = build_rows(folders, max_length)
        if args.only:
            known = {r.key for r in rows}
            if unknown := set(args.only) - known:
                raise SystemExit(f"unknown row(s) {sorted(unknown)}; known: {sorted(known)}")
            rows = [r for r in rows if r.key in args.only]
        measure(rows, args.n, args.repeat, warmup)
    print(
        f"\nN = {args.n:,} messages, {args.repeat} runs per row (medians); "
        f"Python {info['python']} on {info['platform']}, {info['cpus']} CPUs, "
        f"load average {info['load_average_1min']:.2f} before / {os.getloadavg()[0]:.2f} after; "
        f"wippy_queue {info['wippy_queue_tree']}\n"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(as_json(args, rows, info), indent=2) + "\n")


if __name__ == "__main__":
    main()
