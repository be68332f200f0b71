"""End-to-end throughput: wippy-queue's memory driver against Dramatiq and taskiq.

Each system publishes N messages and drains them with a no-op handler (concurrency 4,
prefetch 20), in this one process, ``--repeat`` times, interleaved round by round.
The clock starts before the first publish and stops once every message is settled
(acked) and the system says its queue is drained. See bench/README.md for what each
row means and why it is fair.

    pip install -e '.[bench]'
    python bench/throughput.py [--n 20000] [--repeat 5] [--json results.json] [--svg chart.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

HANDLERS_MODULE = "wippy_bench_handlers"


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


def write_entries(root: Path, max_length: int) -> dict[str, Path]:
    """Write the handler module and one entry folder per handler style; return the folders."""
    (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
    folders = {}
    for style in ("async", "sync"):
        folder = root / style
        folder.mkdir()
        noop = {
            "name": "noop",
            "kind": "function.python",
            "source": f"{HANDLERS_MODULE}:noop_{style}",
        }
        document = harness.bench_entries(noop, max_length=max_length)
        (folder / "_index.yaml").write_text(json.dumps(document))
        folders[style] = folder
    return folders


def counted(counter: itertools.count[int]) -> int:
    """How many times ``next`` was called on ``counter`` (consumes one more value)."""
    return next(counter)


async def wippy_run(folder: Path, n: int) -> Timing:
    from wippy_queue import Runtime

    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.done = itertools.count()
    runtime = Runtime.load(folder)
    async with runtime:
        started = clock()
        for i in range(n):
            await runtime.publish("bench:jobs", {"i": i})
        await runtime.join("bench:jobs")
        elapsed = since(started)
    check_handled(counted(handlers.done), n, f"wippy-queue {folder.name}")
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

    actor = dramatiq.actor(broker=broker, queue_name="bench", max_retries=0)(noop)
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
    check_handled(counted(done), n, "dramatiq")
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
    check_handled(counted(done), n, "taskiq shipped")
    return elapsed


def _queued_broker_class() -> type[Any]:
    """InMemoryBroker whose kick() enqueues, so taskiq's own Receiver.listen() runs the
    tasks with its max_async_tasks / max_prefetch bounds (what a taskiq worker does)."""
    from taskiq import AckableMessage, InMemoryBroker
    from taskiq.message import BrokerMessage

    class QueuedInMemoryBroker(InMemoryBroker):
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
    check_handled(counted(done), n, "taskiq receiver")
    return elapsed


# -- rows and report -------------------------------------------------------------------


@dataclass
class SystemRow(harness.Row):
    system: str
    config: str
    run: Callable[[int], Timing]
    #: False for wippy-queue's own rows
    peer: bool
    #: True when at most CONCURRENCY handlers run at once (the issue's configuration)
    bounded: bool


def build_rows(folders: dict[str, Path], max_length: int) -> list[SystemRow]:
    def wippy(style: str) -> Callable[[int], Timing]:
        return lambda n: asyncio.run(wippy_run(folders[style], n))

    bounds = f"concurrency {CONCURRENCY}, prefetch {PREFETCH}"
    return [
        SystemRow(
            "wippy-async",
            "wippy-queue memory",
            f"async handler, {bounds}, max_length {max_length}",
            wippy("async"),
            peer=False,
            bounded=True,
        ),
        SystemRow(
            "wippy-sync",
            "wippy-queue memory",
            f"sync handler (thread pool), {bounds}, max_length {max_length}",
            wippy("sync"),
            peer=False,
            bounded=True,
        ),
        SystemRow(
            "dramatiq",
            "Dramatiq StubBroker + Worker",
            f"worker_threads {CONCURRENCY}, queue_prefetch {PREFETCH}, default middleware",
            dramatiq_run,
            peer=True,
            bounded=True,
        ),
        SystemRow(
            "taskiq-receiver",
            "taskiq InMemoryBroker + Receiver",
            f"max_async_tasks {CONCURRENCY}, max_prefetch {PREFETCH}, async task",
            lambda n: asyncio.run(taskiq_receiver_run(n)),
            peer=True,
            bounded=True,
        ),
        SystemRow(
            "taskiq-shipped",
            "taskiq InMemoryBroker (as shipped)",
            "kick() starts a task per message: concurrency UNBOUNDED, async task",
            lambda n: asyncio.run(taskiq_shipped_run(n)),
            peer=True,
            bounded=False,
        ),
    ]


def _fastest(rows: list[SystemRow]) -> SystemRow | None:
    return max(rows, key=lambda r: r.median) if rows else None


def _ratio(row: SystemRow, best: SystemRow | None) -> str:
    return f"{row.median / best.median:.2f}x" if best else "n/a"


def _paired(row: SystemRow, best: SystemRow | None) -> str:
    return f"{row.paired_ratio(best):.2f}x" if best else "n/a"


def _cells(row: SystemRow) -> list[str]:
    return [row.system, row.config, f"{row.median:,.0f}", row.rate_range, f"{row.cpu_us:,.1f}"]


def table(rows: list[SystemRow]) -> str:
    best = _fastest([r for r in rows if r.peer])
    best_bounded = _fastest([r for r in rows if r.peer and r.bounded])
    header = ["system", "configuration", "median msg/s", "range msg/s", "CPU µs/msg"]
    header += ["vs faster peer", "paired", "vs faster peer at concurrency 4"]
    body = [
        [*_cells(row), _ratio(row, best), _paired(row, best), _ratio(row, best_bounded)]
        for row in rows
    ]
    lines = [harness.markdown_table(header, body, left=2), "", harness.PAIRED_NOTE + "  "]
    for label, peer in (("Faster peer", best), ("Faster peer at concurrency 4", best_bounded)):
        if peer:
            lines.append(f"{label}: {peer.system} ({peer.config}).  ")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__, with_json=True)
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
    return harness.parse(parser, argv)


def as_json(
    args: argparse.Namespace, rows: list[SystemRow], before: dict[str, Any]
) -> dict[str, Any]:
    return {
        "n": args.n,
        "repeat": args.repeat,
        "concurrency": CONCURRENCY,
        "prefetch": PREFETCH,
        "machine": before,
        "load_average_1min_after": os.getloadavg()[0],
        "rows": [
            harness.row_json(r, system=r.system, config=r.config, peer=r.peer, bounded=r.bounded)
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    max_length = args.max_length or args.n
    warmup = args.n // 10 if args.warmup is None else args.warmup
    info = harness.machine(("wippy-queue", "dramatiq", "taskiq"))
    with tempfile.TemporaryDirectory(prefix="wippy-bench-") as tmp:
        folders = write_entries(Path(tmp), max_length)
        sys.path.insert(0, tmp)
        rows = harness.select(build_rows(folders, max_length), args.only)
        harness.measure(
            rows, lambda row, n: row.run(n), n=args.n, repeat=args.repeat, warmup=warmup
        )
    print(
        f"\nN = {args.n:,} messages, {args.repeat} runs per row (medians); "
        f"Python {info['python']} on {info['platform']}, {info['cpus']} CPUs, "
        f"load average {info['load_average_1min']:.2f} before / {os.getloadavg()[0]:.2f} after; "
        f"wippy_queue {info['wippy_queue_tree']}\n"
    )
    harness.report(
        args,
        rows,
        table(rows),
        lambda: as_json(args, rows, info),
        title="bench/throughput.py: end-to-end throughput beside Dramatiq and taskiq",
        settings=f"concurrency {CONCURRENCY}, prefetch {PREFETCH}, max_length {max_length:,}",
    )


if __name__ == "__main__":
    main()
