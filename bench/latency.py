"""Publish-to-handler latency at fixed rates, on the memory and Redis drivers.

For each driver it first measures the maximum rate in this run (N messages published
unpaced by ``--producers`` tasks and drained), then publishes N messages at fixed
rates: 1,000 msg/s, half the maximum and 90% of it, paced by absolute deadlines.
Each message carries ``time.perf_counter_ns()`` taken just before its publish; the
handler's first statement subtracts it from its own clock (one process, one clock).
The rows take turns round by round (``--repeat``). See bench/README.md.

    pip install -e '.[bench]'
    python bench/latency.py [--n 5000] [--repeat 3] [--drivers memory redis]
"""

from __future__ import annotations

import os
import sys

# bench/redis.py is named like the redis client package: with bench/ first on
# sys.path, ``import redis`` (in wippy_queue's Redis driver) would import that file.
# bench/ goes last, so the client is found first and ``harness`` is still found.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import gc
import importlib
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

HANDLERS_MODULE = "wippy_bench_latency_handlers"
#: every Redis key a run creates has this in its name (the cleanup deletes by it)
KEY_MARK = "wqlatency"
#: the fixed rate every driver is measured at, besides the fractions of its maximum
FIXED_RATE = 1000.0
#: the issue's p99 targets at half the maximum, per driver (µs)
P99_TARGET_US = {"memory": 1000.0, "redis": 5000.0}
#: the unpaced runs that measure the maximum publish this many times N (a run of a
#: few thousand messages on the memory driver lasts under 0.1 s: too short to time)
MAX_RUN_FACTOR = 4
#: with ``--pacing spin``, the last stretch before a deadline is spent yielding (ns)
SPIN_NS = 1_000_000

HANDLERS_SOURCE = '''\
"""The latency bench's handler: its first statement reads the clock."""

import time

latencies = []


async def stamp(data):
    latencies.append(time.perf_counter_ns() - data["t"])
'''


# -- entries --------------------------------------------------------------------------


def _stamp_entry() -> dict[str, Any]:
    return {"name": "stamp", "kind": "function.python", "source": f"{HANDLERS_MODULE}:stamp"}


def memory_entries(max_length: int) -> dict[str, Any]:
    return harness.bench_entries(_stamp_entry(), max_length=max_length)


def redis_entries(url: str, name: str) -> dict[str, Any]:
    """The Redis driver, a queue under a fresh stream name, the handler, a consumer."""
    document = harness.bench_entries(_stamp_entry(), max_length=1)
    document["entries"][0] = {
        "name": "memory",  # the id the shared entries refer to; the kind is Redis
        "kind": "queue.driver.redis",
        "url": url,
        "lifecycle": {"auto_start": True},
    }
    document["entries"][1] = {
        "name": "jobs",
        "kind": "queue.queue",
        "driver": "bench:memory",
        "queue_name": name,
    }
    return document


@dataclass
class Context:
    tmp: Path
    url: str
    producers: int
    max_length: int
    #: freeze the start-up heap once the runtime has started, as ``wippy-queue run`` does
    freeze: bool = True
    #: pace the last millisecond before each deadline by yielding (see ``until``)
    spin: bool = True


def write_folder(ctx: Context, driver: str) -> tuple[Path, str]:
    """A fresh entry folder for one run; the Redis stream name to delete afterwards."""
    name = f"{KEY_MARK}-{uuid.uuid4().hex[:10]}"
    folder = ctx.tmp / name
    folder.mkdir()
    redis = driver == "redis"
    document = redis_entries(ctx.url, name) if redis else memory_entries(ctx.max_length)
    (folder / "_index.yaml").write_text(json.dumps(document))
    return folder, name


def delete_redis_keys(url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


# -- publishing -----------------------------------------------------------------------

Publish = Callable[[dict[str, int]], Awaitable[Any]]


async def unpaced(publish: Publish, n: int, producers: int, late_ns: list[int]) -> None:
    """Publish 0..n-1 as fast as ``producers`` concurrent tasks can."""

    async def producer(first: int) -> None:
        for i in range(first, n, producers):
            await publish({"i": i, "t": time.perf_counter_ns()})

    await asyncio.gather(*(producer(k) for k in range(min(producers, n))))


async def until(due_ns: int, spin: bool) -> int:
    """Wait until ``perf_counter_ns()`` reaches ``due_ns``; return the time then.

    asyncio's timers wake an idle loop at millisecond resolution (epoll), so a timer
    alone (``spin`` False) publishes what is due once a millisecond, in bursts. With
    ``spin`` the last millisecond is spent yielding to the loop (``sleep(0)``: every
    other task still runs) until the deadline: each message goes out on time, at the
    cost of a busy loop while waiting."""
    now = time.perf_counter_ns()
    if now >= due_ns:
        return now
    if not spin:
        await asyncio.sleep((due_ns - now) / 1e9)
        return time.perf_counter_ns()
    if due_ns - now > SPIN_NS:
        await asyncio.sleep((due_ns - now - SPIN_NS) / 1e9)
    while (now := time.perf_counter_ns()) < due_ns:
        await asyncio.sleep(0)
    return now


def paced(rate: float, spin: bool) -> Callable[[Publish, int, int, list[int]], Awaitable[None]]:
    """Publish 0..n-1 at ``rate``: message i is due at start + i / rate (absolute
    deadlines, so a late wake-up is caught up, never carried forward as drift).
    ``producers`` tasks take every ``producers``-th message, so a publish waiting on
    the broker does not hold up the next one; each records how late it published."""

    async def run(publish: Publish, n: int, producers: int, late_ns: list[int]) -> None:
        interval_ns = 1e9 / rate
        start = time.perf_counter_ns() + 1_000_000

        async def producer(first: int) -> None:
            for i in range(first, n, producers):
                due = start + int(i * interval_ns)
                now = await until(due, spin)
                late_ns.append(now - due)
                await publish({"i": i, "t": now})

        await asyncio.gather(*(producer(k) for k in range(min(producers, n))))

    return run


@contextmanager
def startup_frozen(freeze: bool) -> Iterator[None]:
    """``wippy-queue run``'s gc.freeze() after start, undone after the run."""
    from wippy_queue.cli_run import freeze_startup_heap

    if freeze:
        freeze_startup_heap()
    try:
        yield
    finally:
        gc.unfreeze()


# -- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyTiming(Timing):
    """A run's wall and CPU seconds, its latencies and its publishers' lateness (ns),
    and how long the loop's thread was ready to run but waited for a CPU (-1: unknown)."""

    latencies_ns: list[int] = field(default_factory=list)
    late_ns: list[int] = field(default_factory=list)
    cpu_wait_ns: int = -1


def run_queue_wait_ns() -> int:
    """How long this thread has waited, runnable, for a CPU (Linux schedstat; -1 if
    unknown): the share of a run spent so is the machine's other load, not ours."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1])
    except (OSError, IndexError, ValueError):
        return -1


async def wippy_run(
    ctx: Context,
    driver: str,
    n: int,
    publishing: Callable[[Publish, int, int, list[int]], Awaitable[None]],
) -> LatencyTiming:
    from wippy_queue import Runtime

    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.latencies = latencies = []
    folder, name = write_folder(ctx, driver)
    late_ns: list[int] = []
    try:
        async with Runtime.load(folder) as runtime:

            async def publish(data: dict[str, int]) -> Any:
                return await runtime.publish("bench:jobs", data)

            with startup_frozen(ctx.freeze):
                started, waited = clock(), run_queue_wait_ns()
                await publishing(publish, n, ctx.producers, late_ns)
                await runtime.join("bench:jobs")
                elapsed = since(started)
                waited = run_queue_wait_ns() - waited if waited >= 0 else -1
    finally:
        if driver == "redis":
            delete_redis_keys(ctx.url, name)
    check_handled(len(latencies), n, f"{driver} run")
    return LatencyTiming(elapsed.wall_s, elapsed.cpu_s, latencies, late_ns, waited)


# -- rows -----------------------------------------------------------------------------


def percentile(values: list[int], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``, in µs."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1000


@dataclass
class LatencyRow(harness.Row):
    driver: str
    #: "max" (unpaced), or the label of a fixed rate: "1k", "half max", "90% max"
    load: str
    #: the rate asked for (msg/s); 0 for the unpaced row
    target_msg_s: float

    def _runs(self, fraction: float) -> list[float]:
        return [percentile(_timing(t).latencies_ns, fraction) for t in self.timings]

    @property
    def p50_us(self) -> float:
        return statistics.median(self._runs(0.50))

    @property
    def p99_us(self) -> float:
        return statistics.median(self._runs(0.99))

    @property
    def p99_range(self) -> str:
        runs = self._runs(0.99)
        return f"{min(runs):,.0f}-{max(runs):,.0f}"

    @property
    def max_us(self) -> float:
        """The worst latency of any run."""
        return max(max(_timing(t).latencies_ns) for t in self.timings) / 1000

    @property
    def cpu_wait(self) -> str:
        """The median share of a run the loop's thread waited for a CPU."""
        shares = [_timing(t).cpu_wait_ns / 1e9 / t.wall_s for t in self.timings]
        return f"{statistics.median(shares):.0%}" if min(shares) >= 0 else "n/a"

    @property
    def late_p99_us(self) -> float:
        """How late the publishers were on their schedule (p99, median over runs)."""
        runs = [percentile(_timing(t).late_ns, 0.99) for t in self.timings if _timing(t).late_ns]
        return statistics.median(runs) if runs else 0.0


def _timing(t: Timing) -> LatencyTiming:
    assert isinstance(t, LatencyTiming)
    return t


def run_row(ctx: Context, row: LatencyRow, n: int) -> Timing:
    publishing = paced(row.target_msg_s, ctx.spin) if row.target_msg_s else unpaced
    return asyncio.run(wippy_run(ctx, row.driver, n, publishing))


def rate_rows(maxima: list[LatencyRow]) -> list[LatencyRow]:
    """The fixed-rate rows of each driver, from its measured maximum."""
    rows = []
    for top in maxima:
        for label, rate in (
            ("1k", FIXED_RATE),
            ("half max", top.median / 2),
            ("90% max", top.median * 0.9),
        ):
            rows.append(LatencyRow(f"{top.driver} {label}", top.driver, label, rate))
    return rows


# -- report ---------------------------------------------------------------------------


def _verdict(row: LatencyRow) -> str:
    if row.load != "half max":
        return ""
    target = P99_TARGET_US[row.driver]
    return f"{'met' if row.p99_us < target else 'MISSED'} (< {target:,.0f})"


def table(rows: list[LatencyRow]) -> str:
    header = ["driver", "load", "target msg/s", "achieved msg/s", "CPU µs/msg", "CPU wait"]
    header += ["p50 µs", "p99 µs", "p99 range µs", "max µs", "late p99 µs", "p99 target"]
    body = [
        [
            row.driver,
            row.load,
            f"{row.target_msg_s:,.0f}" if row.target_msg_s else "unpaced",
            f"{row.median:,.0f}",
            f"{row.cpu_us:,.1f}",
            row.cpu_wait,
            f"{row.p50_us:,.0f}",
            f"{row.p99_us:,.0f}",
            row.p99_range,
            f"{row.max_us:,.0f}",
            f"{row.late_p99_us:,.0f}" if row.target_msg_s else "",
            _verdict(row),
        ]
        for row in rows
    ]
    return harness.markdown_table(header, body, left=2)


def as_json(args: argparse.Namespace, rows: list[LatencyRow], info: dict[str, Any]) -> Any:
    return {
        "n": args.n,
        "repeat": args.repeat,
        "producers": args.producers,
        "startup_heap_frozen": args.freeze,
        "pacing": args.pacing,
        "machine": info,
        "load_average_1min_after": os.getloadavg()[0],
        "rows": [
            {
                "key": r.key,
                "driver": r.driver,
                "load": r.load,
                "target_msg_s": r.target_msg_s,
                "achieved_msg_s": r.rates,
                "cpu_us_per_msg": r.cpu_us_runs,
                "p50_us": r._runs(0.5),
                "p99_us": r._runs(0.99),
                "max_us": r.max_us,
                "late_p99_us": r.late_p99_us,
                "cpu_wait": r.cpu_wait,
            }
            for r in rows
        ],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__, with_json=True)
    parser.set_defaults(n=5000, repeat=3)
    parser.add_argument(
        "--drivers", nargs="+", choices=("memory", "redis"), default=["memory", "redis"]
    )
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--producers", type=int, default=4, help="concurrent publishing tasks (default 4)"
    )
    parser.add_argument(
        "--pacing",
        choices=("spin", "timer"),
        default="spin",
        help="spin: on time, yielding the last ms before each deadline (default); "
        "timer: asyncio timers only (bursts once a millisecond, less CPU)",
    )
    parser.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        help="leave the start-up heap to the collector (run freezes it: see bench/README.md)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="messages in one unmeasured run (default n/10)"
    )
    return harness.parse(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warmup = args.n // 10 if args.warmup is None else args.warmup
    info = harness.machine(("wippy-queue", "redis"))
    with tempfile.TemporaryDirectory(prefix="wippy-latency-") as tmp:
        ctx = Context(
            Path(tmp),
            args.url,
            args.producers,
            args.n * MAX_RUN_FACTOR,
            args.freeze,
            spin=args.pacing == "spin",
        )
        (ctx.tmp / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        sys.path.insert(0, tmp)
        maxima = [LatencyRow(f"{d} max", d, "max", 0.0) for d in args.drivers]
        print("measuring the maximum rates", file=sys.stderr)

        def run(row: LatencyRow, n: int) -> Timing:
            return run_row(ctx, row, n)

        n_max = args.n * MAX_RUN_FACTOR
        harness.measure(maxima, run, n=n_max, repeat=args.repeat, warmup=warmup)
        rows = rate_rows(maxima)
        print("publishing at fixed rates", file=sys.stderr)
        harness.measure(rows, run, n=args.n, repeat=args.repeat, warmup=warmup)
    every = sorted([*maxima, *rows], key=lambda r: args.drivers.index(r.driver))
    print(
        f"\nN = {args.n:,} messages per paced run ({args.n * MAX_RUN_FACTOR:,} unpaced), "
        f"{args.repeat} runs per row (medians; max: the "
        f"worst of all runs); {args.producers} publishing tasks, pacing {args.pacing}; "
        f"concurrency {CONCURRENCY}, "
        f"prefetch {PREFETCH}; start-up heap {'frozen' if args.freeze else 'not frozen'}; "
        f"Python {info['python']}, {info['cpus']} CPUs, load average "
        f"{info['load_average_1min']:.2f} before / {os.getloadavg()[0]:.2f} after; "
        f"wippy_queue {info['wippy_queue_tree']}\n"
    )
    print(table(every))
    if args.json:
        harness.write_json(args.json, as_json(args, every, info))
    if args.svg:
        bars = [harness.Bar(r.key, r.p99_us, min(r._runs(0.99)), max(r._runs(0.99))) for r in every]
        notes = [
            f"N = {args.n:,} messages per run, {args.repeat} runs per row; "
            f"concurrency {CONCURRENCY}, prefetch {PREFETCH}",
            "bar: median p99 of the runs; whisker: min-max",
        ]
        title = "bench/latency.py: p99 publish-to-handler latency"
        svg = harness.bar_chart_svg(title, notes, bars, "microseconds")
        args.svg.write_text(svg, encoding="utf-8")


if __name__ == "__main__":
    main()
