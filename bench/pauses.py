"""The pause finder: what stops the event loop, and for how long, under a backlog.

One run (memory driver, audit trail on with ``fsync: batch``, the policy watcher
polling the entry files): fill a queue nobody consumes with ``--backlog`` messages
(they stay in memory, as a backlog does, and make every full collection walk them),
then publish ``--n`` messages at ``--rate`` to a consumed queue, recording each
one's publish-to-handler latency. Meanwhile it records:

- every garbage collection (``gc.callbacks``): generation, start, duration, objects
  collected;
- the loop's lag: a task that sleeps 1 ms, over and over, records how late it woke;
- every loop callback (task step) that ran longer than ``--slow-ms``, and what it was;
- every audit fsync (they run in a worker thread: they do not hold the loop);
- the thread's CPU time across each lag sample (a lag with little CPU spent was the
  OS running something else: the machine's other load, not our code).

Each lag sample of ``--pause-ms`` or more is a pause; it is attributed to the
collections and slow callbacks that overlap it. Modes (rows, interleaved round by
round): ``default``; ``freeze``, ``gc.freeze()`` once the runtime has started (what
``wippy-queue run`` does); ``threshold``, ``gc.set_threshold(THRESHOLD)``.

    python bench/pauses.py [--n 20000] [--rate 5000] [--backlog 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since
from loopprobe import Event, Lag, Probe, cause

HANDLERS_MODULE = "wippy_bench_pauses_handlers"
#: the ``threshold`` mode's gc.set_threshold (the default is 700, 10, 10)
THRESHOLD = (10_000, 10, 10)
MODES = ("default", "freeze", "threshold")

HANDLERS_SOURCE = '''\
"""The pause finder's handler: its first statement reads the clock."""

import time

latencies = []


async def stamp(data):
    latencies.append(time.perf_counter_ns() - data["t"])
'''


def entries(n: int, backlog: int) -> dict[str, Any]:
    """bench_entries (memory, ``bench:jobs`` consumed) plus ``bench:backlog``, unconsumed."""
    stamp = {"name": "stamp", "kind": "function.python", "source": f"{HANDLERS_MODULE}:stamp"}
    document = harness.bench_entries(stamp, max_length=n)
    document["entries"].append(
        {
            "name": "backlog",
            "kind": "queue.queue",
            "driver": "bench:memory",
            "driver_options": {"memory": {"max_length": backlog + 1}},
        }
    )
    return document


# -- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class PauseTiming(Timing):
    probe: Probe = field(default_factory=lambda: Probe(0))
    latencies_ns: list[int] = field(default_factory=list)
    #: when the paced phase began (perf_counter_ns): earlier pauses are the fill's
    paced_from_ns: int = 0


@contextmanager
def gc_mode(mode: str) -> Iterator[None]:
    """Apply a mode once the runtime has started; undo it afterwards."""
    thresholds = gc.get_threshold()
    if mode == "freeze":
        gc.collect()
        gc.freeze()
    elif mode == "threshold":
        gc.set_threshold(*THRESHOLD)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def fill(runtime: Any, backlog: int) -> None:
    """Queue ``backlog`` messages nobody consumes, yielding to the loop now and then."""
    body = {"order": 0, "customer": "c-1", "items": [{"sku": "s-1", "qty": 1}]}
    for i in range(backlog):
        await runtime.publish("bench:backlog", {**body, "order": i})
        if i % 100 == 0:
            await asyncio.sleep(0)


async def paced(runtime: Any, n: int, rate: float) -> None:
    """Publish n messages to ``bench:jobs`` at ``rate``, by absolute deadlines."""
    interval_ns = 1e9 / rate
    start = time.perf_counter_ns()
    for i in range(n):
        due = start + int(i * interval_ns)
        now = time.perf_counter_ns()
        if now < due:
            await asyncio.sleep((due - now) / 1e9)
            now = time.perf_counter_ns()
        await runtime.publish("bench:jobs", {"i": i, "t": now})


async def pause_run(folder: Path, mode: str, args: argparse.Namespace, n: int) -> PauseTiming:
    from wippy_queue import Runtime

    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.latencies = latencies = []
    audit = folder / "audit.jsonl"
    audit.unlink(missing_ok=True)
    probe = Probe(round(args.slow_ms * 1e6))
    async with Runtime.load(folder, audit_path=audit) as runtime:
        with gc_mode(mode), probe.installed():
            sampler = asyncio.create_task(probe.sample(), name="lag-sampler")
            started = clock()
            await fill(runtime, args.backlog)
            paced_from = time.perf_counter_ns()
            await paced(runtime, n, args.rate)
            await runtime.join("bench:jobs")
            elapsed = since(started)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
    check_handled(len(latencies), n, mode)
    return PauseTiming(elapsed.wall_s, elapsed.cpu_s, probe, latencies, paced_from)


# -- rows and report ------------------------------------------------------------------


def _probe(t: Timing) -> PauseTiming:
    assert isinstance(t, PauseTiming)
    return t


def _q(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] / 1e6


@dataclass
class ModeRow(harness.Row):
    mode: str

    def runs(self) -> list[PauseTiming]:
        return [_probe(t) for t in self.timings]

    def med(self, fn: Callable[[PauseTiming], float]) -> float:
        return statistics.median(fn(t) for t in self.runs())

    def worst(self, fn: Callable[[PauseTiming], float]) -> float:
        return max(fn(t) for t in self.runs())


def _gc_max(t: PauseTiming, gen: int) -> float:
    return max((e.duration_ns for e in t.probe.gcs if e.what.startswith(f"gen{gen}")), default=0)


def _gc_cpu_max(t: PauseTiming, gen: int) -> float:
    """The most CPU time one collection took (what a busy machine does not inflate)."""
    return max((e.cpu_ns for e in t.probe.gcs if e.what.startswith(f"gen{gen}")), default=0)


def _gc_count(t: PauseTiming, gen: int) -> int:
    return sum(1 for e in t.probe.gcs if e.what.startswith(f"gen{gen}"))


def _gen2_walked(t: PauseTiming) -> int:
    """The most objects a full collection walked (0: none ran)."""
    counts = [e.what.rsplit(" of ", 1)[1] for e in t.probe.gcs if e.what.startswith("gen2")]
    return max((int(c.split()[0].replace(",", "")) for c in counts), default=0)


def _pauses(t: PauseTiming, pause_ns: int) -> list[Lag]:
    return [lag for lag in t.probe.lags if lag.lag_ns >= pause_ns]


def _lag_max(t: PauseTiming) -> float:
    return max(lag.lag_ns for lag in t.probe.lags) / 1e6


def _fsync_max(t: PauseTiming) -> float:
    return max((e.duration_ns for e in t.probe.fsyncs), default=0) / 1e6


def mode_table(rows: list[ModeRow], pause_ns: int) -> str:
    header = ["mode", "CPU µs/msg", "latency p50 µs", "p99 µs", "max µs"]
    header += ["loop lag p99 ms", "lag max ms", f"pauses ≥ {pause_ns / 1e6:g} ms"]
    header += [f"gen{g} n / max ms (CPU ms)" for g in range(3)] + ["gen2 walked"]
    header += ["fsyncs n / max ms"]
    body = []
    for row in rows:
        gens = [
            f"{row.med(lambda t, g=g: _gc_count(t, g)):,.0f} / "  # type: ignore[misc]
            f"{row.worst(lambda t, g=g: _gc_max(t, g)) / 1e6:.1f} "  # type: ignore[misc]
            f"({row.worst(lambda t, g=g: _gc_cpu_max(t, g)) / 1e6:.1f})"  # type: ignore[misc]
            for g in range(3)
        ]
        body.append(
            [
                row.mode,
                f"{row.cpu_us:,.1f}",
                f"{row.med(lambda t: _q(t.latencies_ns, 0.5) * 1000):,.0f}",
                f"{row.med(lambda t: _q(t.latencies_ns, 0.99) * 1000):,.0f}",
                f"{row.worst(lambda t: max(t.latencies_ns) / 1000):,.0f}",
                f"{row.med(lambda t: _q([lag.lag_ns for lag in t.probe.lags], 0.99)):.2f}",
                f"{row.worst(_lag_max):.1f}",
                f"{row.med(lambda t: len(_pauses(t, pause_ns))):,.0f}",
                *gens,
                f"{row.worst(_gen2_walked):,.0f}",
                f"{row.med(lambda t: len(t.probe.fsyncs)):,.0f} / {row.worst(_fsync_max):.2f}",
            ]
        )
    return harness.markdown_table(header, body)


def worst_table(rows: list[ModeRow], count: int) -> str:
    """The ``count`` worst pauses of every run of every mode, with their causes."""
    found = []
    for row in rows:
        for run_no, t in enumerate(row.runs(), 1):
            for lag in t.probe.lags:
                phase = "paced" if lag.start_ns >= t.paced_from_ns else "fill"
                found.append((lag.lag_ns, row.mode, run_no, phase, lag, t))
    found.sort(key=lambda item: -item[0])
    body = [
        [mode, str(run_no), phase, f"{lag_ns / 1e6:.1f}", cause(lag, t.probe)]
        for lag_ns, mode, run_no, phase, lag, t in found[:count]
    ]
    return harness.markdown_table(["mode", "run", "phase", "pause ms", "cause"], body, left=3)


def slow_table(rows: list[ModeRow]) -> str:
    """Every loop callback that ran ``--slow-ms`` or more, grouped by what it was."""
    groups: dict[tuple[str, str], list[Event]] = {}
    for row in rows:
        for t in row.runs():
            for e in t.probe.slow:
                what = e.what.split(": ", 1)[-1]  # the coroutine, without the task's name
                groups.setdefault((row.mode, what), []).append(e)
    body = [
        [
            mode,
            what,
            f"{len(events):,}",
            f"{max(e.duration_ns for e in events) / 1e6:.1f}",
            f"{sum(e.cpu_ns for e in events) / max(1, sum(e.duration_ns for e in events)):.0%}",
        ]
        for (mode, what), events in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    header = ["mode", "callback", "count", "max ms", "ran"]
    return harness.markdown_table(header, body, left=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__)
    parser.set_defaults(repeat=3)
    parser.add_argument("--rate", type=float, default=5000.0, help="paced msg/s (5,000)")
    parser.add_argument("--backlog", type=int, default=50_000, help="messages kept queued")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--slow-ms", type=float, default=2.0, help="record callbacks this long")
    parser.add_argument("--pause-ms", type=float, default=5.0, help="a lag this long is a pause")
    parser.add_argument("--worst", type=int, default=10, help="list this many worst pauses")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="messages in one unmeasured run per mode"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the pauses here")
    return harness.parse(parser, argv)


def as_json(rows: list[ModeRow], pause_ns: int, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": info,
        "load_average_1min_after": os.getloadavg()[0],
        "modes": {
            row.mode: [
                {
                    "gc": [(e.what, e.duration_ns / 1e6) for e in t.probe.gcs if e.what[3] != "0"],
                    "pauses": [
                        (lag.lag_ns / 1e6, cause(lag, t.probe)) for lag in _pauses(t, pause_ns)
                    ],
                }
                for t in row.runs()
            ]
            for row in rows
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = harness.machine()
    with tempfile.TemporaryDirectory(prefix="wippy-pauses-") as tmp:
        root = Path(tmp)
        (root / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        sys.path.insert(0, tmp)
        folder = root / "entries"
        folder.mkdir()
        (folder / "_index.yaml").write_text(json.dumps(entries(args.n, args.backlog)))
        rows = [ModeRow(mode, mode) for mode in args.modes]

        def run(row: ModeRow, n: int) -> Timing:
            return asyncio.run(pause_run(folder, row.mode, args, n))

        harness.measure(rows, run, n=args.n, repeat=args.repeat, warmup=args.warmup)
    pause_ns = round(args.pause_ms * 1e6)
    print(
        f"\nbacklog {args.backlog:,} messages, then N = {args.n:,} at {args.rate:,.0f} msg/s; "
        f"audit on (fsync batch); {args.repeat} runs per mode (medians; max: the worst run); "
        f"concurrency {CONCURRENCY}, prefetch {PREFETCH}; Python {info['python']}, "
        f"{info['cpus']} CPUs, load average {info['load_average_1min']:.2f} before / "
        f"{os.getloadavg()[0]:.2f} after; wippy_queue {info['wippy_queue_tree']}\n"
    )
    print(mode_table(rows, pause_ns))
    print(f"\nThe {args.worst} worst pauses (loop lag), with what overlapped them:\n")
    print(worst_table(rows, args.worst))
    print(f"\nLoop callbacks of {args.slow_ms:g} ms or more (ran: the thread's CPU share):\n")
    print(slow_table(rows))
    if args.json:
        harness.write_json(args.json, as_json(rows, pause_ns, info))
    if args.svg:
        bars = [
            harness.Bar(r.mode, r.med(_lag_max), min(map(_lag_max, r.runs())), r.worst(_lag_max))
            for r in rows
        ]
        notes = [
            f"backlog {args.backlog:,}, then N = {args.n:,} at {args.rate:,.0f} msg/s, audit on; "
            f"{args.repeat} runs per mode",
            "bar: median of the runs' worst loop lag; whisker: min-max",
        ]
        title = "bench/pauses.py: the worst event-loop pause per gc mode"
        args.svg.write_text(
            harness.bar_chart_svg(title, notes, bars, "milliseconds"), encoding="utf-8"
        )


if __name__ == "__main__":
    main()
