"""wippy-queue on Redis beside taskiq-redis, arq and Dramatiq's RedisBroker, one server.

Each system publishes N no-op jobs and drains them with 4 workers, its consumers
running throughout, ``--repeat`` times, interleaved round by round, on the same
Redis. Async systems publish from ``--producers`` concurrent tasks. Every run uses
fresh key names and deletes its keys afterwards. arq pins ``redis<6``, so its rows
run in a subprocess in its own venv (``bench/.venv-arq``, made on first use). See
bench/README.md for what each row means and why it is fair.

    pip install -e '.[bench]'
    python bench/redis.py [--n 5000] [--repeat 5] [--url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import os
import sys

# This file is named like the redis client package: with bench/ first on sys.path,
# ``import redis`` (in wippy_queue, taskiq-redis, Dramatiq) would import this file.
# bench/ goes last, so the client is found first and ``harness`` is still found.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import importlib
import itertools
import json
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

BENCH = Path(__file__).resolve().parent
ARQ_VENV = BENCH / ".venv-arq"
ARQ_REQUIREMENT = "arq>=0.26"
HANDLERS_MODULE = "wippy_bench_redis_handlers"
#: every key a run creates has this in its name (the cleanup deletes by it)
KEY_MARK = "wqbench"
#: arq's Worker sleeps poll_delay (default 0.5 s) between reads of at most
#: queue_read_limit (default 100) job ids: 200 jobs/s at most by default; 10 ms lifts it
ARQ_POLL_DELAY_S = 0.01
#: how often a peer's "nothing left unacked" is checked once all handlers ran (s)
POLL_S = 0.005


@dataclass(frozen=True)
class RedisTiming(Timing):
    """A run's wall and CPU seconds, and the Redis server's CPU seconds meanwhile."""

    server_cpu_s: float = 0.0


class Server:
    """The Redis server the rows share: its CPU time, and deleting a run's keys."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def cpu_s(self) -> float:
        info: dict[str, Any] = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def delete_run(self, name: str) -> int:
        """Delete every key whose name contains ``name`` (fresh per run: only ours)."""
        keys = list(self.client.scan_iter(match=f"*{name}*", count=1000))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])  # own
        return len(keys)


def fresh(system: str) -> str:
    return f"{KEY_MARK}-{system}-{uuid.uuid4().hex[:10]}"


async def produce(publish: Callable[[int], Awaitable[Any]], n: int, producers: int) -> None:
    """Publish 0..n-1 from ``producers`` concurrent tasks."""

    async def producer(first: int) -> None:
        for i in range(first, n, producers):
            await publish(i)

    await asyncio.gather(*(producer(k) for k in range(min(producers, n))))


class Countdown:
    """The no-op handlers' counter: ``done`` is set when the n-th job has run."""

    def __init__(self, n: int) -> None:
        self.n, self.handled = n, 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.handled += 1
        if self.handled == self.n:
            self.done.set()


# -- wippy-queue ----------------------------------------------------------------------

HANDLERS_SOURCE = '''\
"""No-op handler for bench/redis.py; the counter checks that nothing was lost."""

import itertools

done = itertools.count()


async def noop(data):
    next(done)
'''


def wippy_entries(url: str, name: str) -> dict[str, Any]:
    """The Redis driver, a queue under a fresh name, the no-op, a consumer (4, 20)."""
    return harness.bench_entries(
        {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"},
        driver={"name": "redis", "kind": "queue.driver.redis", "url": url},
        queue_name=name,
        consume_at_start=True,
    )


async def wippy_run(ctx: Context, n: int) -> RedisTiming:
    from wippy_queue import Runtime

    name = fresh("wippy")
    folder = ctx.tmp / name
    folder.mkdir()
    (folder / "_index.yaml").write_text(json.dumps(wippy_entries(ctx.url, name)))
    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.done = done = itertools.count()
    try:
        async with Runtime.load(folder) as runtime:
            started, server0 = clock(), ctx.server.cpu_s()
            await produce(lambda i: runtime.publish("bench:jobs", {"i": i}), n, ctx.producers)
            await runtime.join("bench:jobs")
            elapsed = timed(started, ctx.server.cpu_s() - server0)
    finally:
        ctx.server.delete_run(name)
    check_handled(next(done), n, "wippy-queue")
    return elapsed


def timed(started: tuple[float, float], server_cpu_s: float) -> RedisTiming:
    t = since(started)
    return RedisTiming(t.wall_s, t.cpu_s, server_cpu_s)


# -- taskiq + taskiq-redis ------------------------------------------------------------


async def taskiq_run(ctx: Context, n: int) -> RedisTiming:
    """RedisStreamBroker (consumer group, XREADGROUP, XACK after the task ran) drained
    by taskiq's own Receiver with max_async_tasks 4, max_prefetch 20 (a worker's loop)."""
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisStreamBroker

    name = fresh("taskiq")
    count = Countdown(n)
    broker = RedisStreamBroker(ctx.url, queue_name=name)

    async def noop(i: int) -> None:
        count.hit()

    task = broker.task(task_name="bench.noop")(noop)
    await broker.startup()
    receiver = Receiver(
        broker, max_async_tasks=CONCURRENCY, max_prefetch=PREFETCH, run_startup=False
    )
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    client = broker_client(ctx)
    try:
        started, server0 = clock(), ctx.server.cpu_s()
        await produce(task.kiq, n, ctx.producers)
        await count.done.wait()
        while (await client.xpending(name, broker.consumer_group_name))["pending"]:
            await asyncio.sleep(POLL_S)  # acked: nothing pending in its group
        elapsed = timed(started, ctx.server.cpu_s() - server0)
    finally:
        finish.set()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await broker.shutdown()
        await client.aclose()
        ctx.server.delete_run(name)
    check_handled(count.handled, n, "taskiq-redis")
    return elapsed


def broker_client(ctx: Context) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(ctx.url)


# -- Dramatiq RedisBroker ---------------------------------------------------------------


def dramatiq_run(ctx: Context, n: int) -> RedisTiming:
    """RedisBroker + Worker(worker_threads=4), queue_prefetch 20, default middleware;
    ``actor.send`` from this thread (Dramatiq is synchronous: one producer)."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    name = fresh("dramatiq")
    done = itertools.count()
    broker = RedisBroker(url=ctx.url, namespace=name)
    broker.emit_after("process_boot")

    def noop(i: int) -> None:
        next(done)

    actor = dramatiq.actor(broker=broker, queue_name="bench", max_retries=0)(noop)
    worker = dramatiq.Worker(broker, worker_threads=CONCURRENCY)
    worker.queue_prefetch = PREFETCH
    worker.start()
    try:
        started, server0 = clock(), ctx.server.cpu_s()
        for i in range(n):
            actor.send(i)
        broker.join("bench", interval=round(POLL_S * 1000))  # every message acked
        elapsed = timed(started, ctx.server.cpu_s() - server0)
    finally:
        worker.stop()
        broker.close()
        ctx.server.delete_run(name)
    check_handled(next(done), n, "dramatiq")
    return elapsed


# -- arq (its own venv) -----------------------------------------------------------------


def arq_python(ctx: Context) -> Path:
    """The arq venv's Python; the venv is made (arq installed) on first use."""
    if ctx.arq_python is not None:
        return ctx.arq_python
    python = ARQ_VENV / "bin" / "python"
    if not python.exists():
        print(f"making {ARQ_VENV} for arq ({ARQ_REQUIREMENT}: it pins redis<6)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ARQ_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", ARQ_REQUIREMENT]
        subprocess.run(pip, check=True)
    return python


def arq_run(ctx: Context, n: int) -> RedisTiming:
    """bench/redis_arq.py in arq's venv: Worker(max_jobs=4), enqueue_job from the
    producers; it times publish + drain itself (wall and its own CPU) and reports."""
    name = fresh("arq")
    argv = [str(arq_python(ctx)), "-P", str(BENCH / "redis_arq.py"), "--url", ctx.url]
    argv += ["--n", str(n), "--producers", str(ctx.producers), "--prefix", name]
    argv += ["--concurrency", str(CONCURRENCY), "--poll-delay", str(ARQ_POLL_DELAY_S)]
    server0 = ctx.server.cpu_s()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    finally:
        server_cpu_s = ctx.server.cpu_s() - server0
        ctx.server.delete_run(name)
    if done.returncode != 0:
        raise SystemExit(f"arq run failed ({done.returncode}):\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    check_handled(result["handled"], n, "arq")
    theirs = result["versions"]
    ctx.versions["arq"] = f"{theirs['arq']} (redis {theirs['redis']}, hiredis {theirs['hiredis']})"
    # the server's CPU is read around the whole subprocess, its start and stop too:
    # for arq that column is an upper bound
    return RedisTiming(result["wall_s"], result["cpu_s"], server_cpu_s)


# -- rows and report ----------------------------------------------------------------------


@dataclass
class Context:
    url: str
    producers: int
    tmp: Path
    server: Server
    arq_python: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class SystemRow(harness.Row):
    system: str
    config: str
    run: Callable[[Context, int], RedisTiming]
    peer: bool

    @property
    def server_us(self) -> float:
        """Median Redis server CPU µs per message (the server is shared: approximate)."""
        import statistics

        runs = [getattr(t, "server_cpu_s", 0.0) / self.n * 1e6 for t in self.timings]
        return statistics.median(runs)


def build_rows(producers: int) -> list[SystemRow]:
    workers = f"concurrency {CONCURRENCY}"
    fan = f"{producers} producers"
    return [
        SystemRow(
            "wippy-queue",
            "wippy-queue, queue.driver.redis",
            f"{workers}, prefetch {PREFETCH}, async no-op, {fan}",
            lambda ctx, n: asyncio.run(wippy_run(ctx, n)),
            peer=False,
        ),
        SystemRow(
            "taskiq-redis",
            "taskiq + taskiq-redis RedisStreamBroker",
            f"Receiver max_async_tasks {CONCURRENCY}, max_prefetch {PREFETCH}, {fan}",
            lambda ctx, n: asyncio.run(taskiq_run(ctx, n)),
            peer=True,
        ),
        SystemRow(
            "arq",
            "arq Worker (own venv, subprocess)",
            f"max_jobs {CONCURRENCY}, poll_delay {ARQ_POLL_DELAY_S * 1000:g} ms, {fan}",
            arq_run,
            peer=True,
        ),
        SystemRow(
            "dramatiq",
            "Dramatiq RedisBroker + Worker",
            f"worker_threads {CONCURRENCY}, queue_prefetch {PREFETCH}, 1 producer thread",
            dramatiq_run,
            peer=True,
        ),
    ]


def table(rows: list[SystemRow]) -> str:
    peers = [r for r in rows if r.peer]
    best = max(peers, key=lambda r: r.median) if peers else None
    header = ["system", "configuration", "median jobs/s", "range jobs/s", "CPU µs/msg"]
    header += ["Redis CPU µs/msg", "vs fastest peer"]
    body = [
        [
            row.system,
            row.config,
            f"{row.median:,.0f}",
            row.rate_range,
            f"{row.cpu_us:,.1f}",
            f"{row.server_us:,.1f}",
            f"{row.median / best.median:.2f}x" if best else "n/a",
        ]
        for row in rows
    ]
    text = harness.markdown_table(header, body, left=2)
    if best:
        text += f"\n\nFastest peer: {best.system}.  "
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__, with_json=True)
    parser.set_defaults(n=5_000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="the Redis server")
    parser.add_argument("--producers", type=int, default=100, help="concurrent async producers")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs in one unmeasured run (default n/10)"
    )
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys)")
    parser.add_argument(
        "--arq-python", type=Path, help=f"arq's venv Python (default {ARQ_VENV}/bin/python)"
    )
    return harness.parse(parser, argv)


def as_json(args: argparse.Namespace, rows: list[SystemRow], info: dict[str, Any]) -> Any:
    return {
        "n": args.n,
        "repeat": args.repeat,
        "producers": args.producers,
        "concurrency": CONCURRENCY,
        "prefetch": PREFETCH,
        "machine": info,
        "load_average_1min_after": os.getloadavg()[0],
        "rows": [
            {
                **harness.row_json(r, system=r.system, config=r.config, peer=r.peer),
                "median_redis_cpu_us_per_msg": r.server_us,
            }
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warmup = args.n // 10 if args.warmup is None else args.warmup
    dists = ("wippy-queue", "redis", "hiredis", "taskiq", "taskiq-redis", "dramatiq")
    info = harness.machine(dists)
    server = Server(args.url)
    info["redis_server"] = server.client.info("server")["redis_version"]
    rows = harness.select(build_rows(args.producers), args.only)
    with tempfile.TemporaryDirectory(prefix="wippy-bench-redis-") as tmp:
        (Path(tmp) / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        sys.path.insert(0, tmp)
        ctx = Context(args.url, args.producers, Path(tmp), server, args.arq_python)
        harness.measure(
            rows, lambda row, n: row.run(ctx, n), n=args.n, repeat=args.repeat, warmup=warmup
        )
    info["versions"].update(ctx.versions)
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    print(
        f"\nN = {args.n:,} jobs, {args.repeat} runs per row (medians), {args.producers} "
        f"producers; Redis {info['redis_server']}; Python {info['python']} on "
        f"{info['platform']}, {info['cpus']} CPUs, load average "
        f"{info['load_average_1min']:.2f} before / {os.getloadavg()[0]:.2f} after; "
        f"{versions}; wippy_queue {info['wippy_queue_tree']}\n"
    )
    harness.report(
        args,
        rows,
        table(rows),
        lambda: as_json(args, rows, info),
        title="bench/redis.py: wippy-queue on Redis beside taskiq-redis, arq and Dramatiq",
        settings=f"concurrency {CONCURRENCY}, prefetch {PREFETCH}, {args.producers} producers",
    )


if __name__ == "__main__":
    main()
