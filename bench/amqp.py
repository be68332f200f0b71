"""wippy-queue on RabbitMQ beside Dramatiq, Celery and taskiq-aio-pika, one broker.

Each system publishes N no-op jobs to a fresh queue, then drains them with 4 workers
(its consumers start once all are published; the time covers both), ``--repeat``
times, interleaved round by round, on the same RabbitMQ. Async systems publish from
``--producers`` concurrent tasks, the synchronous ones from one thread. CPU is that
of every process of the system (publisher and workers): wippy-queue, Dramatiq and
taskiq run their workers in this process; Celery's worker is a subprocess (threads
pool) whose CPU is read from /proc around each run and added. Every run uses fresh
queue names and deletes what it declared. See bench/README.md for what each row
means and why it is fair.

    pip install -e '.[bench]'
    python bench/amqp.py [--n 5000] [--repeat 5] [--url amqp://guest:guest@127.0.0.1:5672/]
"""

from __future__ import annotations

import os
import sys

# This file is named like the py-amqp package (Celery's client): with bench/ first on
# sys.path, ``import amqp`` (in kombu) would import this file. bench/ goes last, so the
# client is found first and ``harness`` is still found.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import importlib
import itertools
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

HANDLERS_MODULE = "wippy_bench_amqp_handlers"
CELERY_MODULE = "wippy_bench_amqp_celery"
#: every queue a run declares has this in its name
MARK = "wqbench"
#: how often a drain's "all handled" is checked when it cannot be awaited (s)
POLL_S = 0.005

HANDLERS_SOURCE = '''\
"""No-op handler for bench/amqp.py; the counter checks that nothing was lost."""

import itertools

done = itertools.count()


async def noop(data):
    next(done)
'''

#: Celery's app for the worker subprocess and the publisher: each task appends one byte
#: to the count file, which the publisher watches (the worker is another process)
CELERY_SOURCE = """\
import os

from celery import Celery

app = Celery("wqbench", broker=os.environ["WQBENCH_URL"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
_fd = os.open(os.environ["WQBENCH_COUNT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)


@app.task(name="wqbench.noop", ignore_result=True)
def noop(i):
    os.write(_fd, b".")
"""


def fresh(system: str) -> str:
    return f"{MARK}-{system}-{uuid.uuid4().hex[:10]}"


@dataclass
class Context:
    url: str
    producers: int
    tmp: Path
    versions: dict[str, str] = field(default_factory=dict)
    celery: CeleryWorker | None = None


class Countdown:
    """Counts handled jobs; ``done`` is set at ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.handled = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.handled += 1
        if self.handled == self.n:
            self.done.set()


async def produce(send: Callable[[int], Awaitable[Any]], n: int, producers: int) -> None:
    """Send jobs 0..n-1 from ``producers`` concurrent tasks."""
    left = iter(range(n))

    async def producer() -> None:
        for i in left:
            await send(i)

    await asyncio.gather(*(producer() for _ in range(producers)))


async def drop_queues(url: str, names: list[str], exchanges: tuple[str, ...] = ()) -> None:
    """Delete queues (and exchanges) this run declared; all have fresh names: ours.
    Through aio-pika, which every install of the amqp extra has (pika may be absent)."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)  # own
        for name in exchanges:
            await channel.exchange_delete(name)  # own
    finally:
        await connection.close()


def delete_queues(url: str, names: list[str], exchanges: tuple[str, ...] = ()) -> None:
    """``drop_queues`` from a thread with no event loop running."""
    asyncio.run(drop_queues(url, names, exchanges))


# -- wippy-queue ----------------------------------------------------------------------


def wippy_entries(url: str, name: str) -> dict[str, Any]:
    """The AMQP driver, a queue under a fresh name, the no-op, a consumer (4, 20)."""
    return harness.bench_entries(
        {"name": "noop", "kind": "function.python", "source": f"{HANDLERS_MODULE}:noop"},
        driver={"name": "rabbit", "kind": "queue.driver.amqp", "url": url},
        queue_name=name,
        consume_at_start=False,
    )


async def wippy_run(ctx: Context, n: int) -> Timing:
    """Publish (confirmed) from the producers, then start the consumer and join."""
    from wippy_queue import Runtime

    name = fresh("wippy")
    folder = ctx.tmp / name
    folder.mkdir()
    (folder / "_index.yaml").write_text(json.dumps(wippy_entries(ctx.url, name)))
    handlers: Any = importlib.import_module(HANDLERS_MODULE)
    handlers.done = done = itertools.count()
    try:
        async with Runtime.load(folder) as runtime:
            started = clock()
            await produce(lambda i: runtime.publish("bench:jobs", {"i": i}), n, ctx.producers)
            await runtime.start("bench:worker")
            await runtime.join("bench:jobs")
            elapsed = since(started)
    finally:
        await drop_queues(ctx.url, [name])
    check_handled(next(done), n, "wippy-queue")
    return elapsed


# -- taskiq + taskiq-aio-pika ---------------------------------------------------------


async def taskiq_run(ctx: Context, n: int) -> Timing:
    """AioPikaBroker (quorum queue, its channel confirms publishes) drained by taskiq's
    own Receiver with max_async_tasks 4, qos 20 (a worker's loop)."""
    from taskiq.receiver import Receiver
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

    name = fresh("taskiq")
    count = Countdown(n)
    broker = AioPikaBroker(
        ctx.url,
        qos=PREFETCH,
        exchange=Exchange(name=name),
        task_queues=[Queue(name=name)],
        dead_letter_queue=Queue(name=f"{name}.dead_letter"),
    )
    broker.is_worker_process = True

    async def noop(i: int) -> None:
        count.hit()

    task = broker.task(task_name="wqbench.noop")(noop)
    await broker.startup()
    receiver = Receiver(
        broker, max_async_tasks=CONCURRENCY, max_prefetch=PREFETCH, run_startup=False
    )
    finish = asyncio.Event()
    listening: asyncio.Task[None] | None = None
    try:
        started = clock()
        await produce(task.kiq, n, ctx.producers)
        listening = asyncio.create_task(receiver.listen(finish))
        await count.done.wait()
        elapsed = since(started)
    finally:
        finish.set()
        if listening is not None:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        await broker.shutdown()
        await drop_queues(ctx.url, [name, f"{name}.dead_letter"], exchanges=(name,))
    check_handled(count.handled, n, "taskiq-aio-pika")
    return elapsed


# -- Dramatiq RabbitmqBroker ------------------------------------------------------------


def dramatiq_run(ctx: Context, n: int) -> Timing:
    """RabbitmqBroker (its default: no publisher confirms) + Worker(worker_threads=4),
    queue_prefetch 20, default middleware; ``actor.send`` from this thread."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    name = fresh("dramatiq")
    done = itertools.count(1)
    all_done = threading.Event()
    broker = RabbitmqBroker(url=ctx.url)
    broker.emit_after("process_boot")

    def noop(i: int) -> None:
        if next(done) == n:
            all_done.set()

    actor = dramatiq.actor(broker=broker, queue_name=name, max_retries=0)(noop)
    worker = dramatiq.Worker(broker, worker_threads=CONCURRENCY)
    worker.queue_prefetch = PREFETCH
    try:
        started = clock()
        for i in range(n):
            actor.send(i)
        worker.start()
        all_done.wait()  # broker.join sees ready messages only, not unacked ones
        elapsed = since(started)
    finally:
        worker.stop()
        broker.close()
        delete_queues(ctx.url, [name, f"{name}.DQ", f"{name}.XQ"])
    check_handled(next(done) - 1, n, "dramatiq")
    return elapsed


# -- Celery (threads pool, worker subprocess) -------------------------------------------


def cpu_s_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CeleryWorker:
    """``celery worker --pool threads --concurrency 4`` in a subprocess for the whole
    bench; each run points it at a fresh queue (``add_consumer``) once published."""

    def __init__(self, ctx: Context) -> None:
        self.url = ctx.url
        self.count_file = ctx.tmp / "celery-count"
        self.count_file.touch()
        self.node = f"{fresh('celery')}@bench"
        env = {**os.environ, "WQBENCH_URL": ctx.url, "WQBENCH_COUNT": str(self.count_file)}
        env["PYTHONPATH"] = os.pathsep.join([str(ctx.tmp), env.get("PYTHONPATH", "")])
        os.environ.update(WQBENCH_URL=ctx.url, WQBENCH_COUNT=str(self.count_file))
        self.app: Any = importlib.import_module(CELERY_MODULE).app
        idle = fresh("celery-idle")
        self.queues = [idle]
        argv = [sys.executable, "-m", "celery", "-A", CELERY_MODULE, "worker"]
        argv += ["--pool", "threads", "--concurrency", str(CONCURRENCY)]
        argv += ["--prefetch-multiplier", str(max(1, PREFETCH // CONCURRENCY))]
        argv += ["-Q", idle, "-n", self.node, "--without-gossip", "--without-mingle"]
        argv += ["--without-heartbeat", "-l", "warning"]
        self.process = subprocess.Popen(argv, env=env, cwd=ctx.tmp, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.app.control.ping(destination=[self.node], timeout=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("celery worker did not start")

    def handled(self) -> int:
        return self.count_file.stat().st_size

    def run(self, n: int) -> Timing:
        name = fresh("celery")
        self.queues.append(name)
        before = self.handled()
        worker0 = cpu_s_of(self.process.pid)
        started = clock()
        with self.app.producer_or_acquire() as producer:
            for i in range(n):
                self.app.send_task("wqbench.noop", args=(i,), queue=name, producer=producer)
        self.app.control.add_consumer(name, destination=[self.node], reply=True)
        while self.handled() - before < n:
            time.sleep(POLL_S)
        t = since(started)
        elapsed = Timing(t.wall_s, t.cpu_s + cpu_s_of(self.process.pid) - worker0)
        self.app.control.cancel_consumer(name, destination=[self.node], reply=True)
        check_handled(self.handled() - before, n, "celery")
        return elapsed

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        delete_queues(self.url, self.queues, exchanges=tuple(self.queues))


def celery_run(ctx: Context, n: int) -> Timing:
    if ctx.celery is None:
        ctx.celery = CeleryWorker(ctx)
    return ctx.celery.run(n)


# -- rows and table ---------------------------------------------------------------------


@dataclass
class SystemRow(harness.Row):
    system: str = ""
    config: str = ""
    run: Callable[[Context, int], Timing] = field(default=lambda ctx, n: Timing(0, 0))
    peer: bool = True


def build_rows(producers: int) -> list[SystemRow]:
    fan = f"{producers} producers"
    return [
        SystemRow(
            "wippy-queue",
            "wippy-queue, queue.driver.amqp",
            f"quorum queue, confirms, concurrency {CONCURRENCY}, prefetch {PREFETCH}, {fan}",
            lambda ctx, n: asyncio.run(wippy_run(ctx, n)),
            peer=False,
        ),
        SystemRow(
            "dramatiq",
            "Dramatiq RabbitmqBroker + Worker",
            f"classic queue, no confirms (default), worker_threads {CONCURRENCY}, "
            f"queue_prefetch {PREFETCH}, 1 producer thread",
            dramatiq_run,
        ),
        SystemRow(
            "celery",
            "Celery, threads pool (worker subprocess)",
            f"classic queue, no confirms (default), ack before running (default), "
            f"concurrency {CONCURRENCY}, prefetch {PREFETCH}, 1 producer thread",
            celery_run,
        ),
        SystemRow(
            "taskiq-aio-pika",
            "taskiq + taskiq-aio-pika AioPikaBroker",
            f"quorum queue, confirms, Receiver max_async_tasks {CONCURRENCY}, "
            f"qos {PREFETCH}, {fan}",
            lambda ctx, n: asyncio.run(taskiq_run(ctx, n)),
        ),
    ]


def table(rows: list[SystemRow]) -> str:
    peers = [r for r in rows if r.peer]
    best = max(peers, key=lambda r: r.median) if peers else None
    header = ["system", "configuration", "median jobs/s", "range jobs/s"]
    header += ["CPU µs/job (all processes)", "vs fastest peer"]
    body = [
        [
            row.system,
            row.config,
            f"{row.median:,.0f}",
            row.rate_range,
            f"{row.cpu_us:,.0f}",
            f"{row.median / best.median:.2f}x" if best else "n/a",
        ]
        for row in rows
    ]
    text = harness.markdown_table(header, body, left=2)
    if best:
        text += f"\n\nFastest peer: {best.system}."
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__doc__, with_json=True)
    parser.set_defaults(n=5_000)
    parser.add_argument(
        "--url",
        default=os.environ.get("WIPPY_QUEUE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="the RabbitMQ broker",
    )
    parser.add_argument("--producers", type=int, default=100, help="concurrent async producers")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs in one unmeasured run (default n/10)"
    )
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys)")
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
        "rows": [harness.row_json(r, system=r.system, config=r.config, peer=r.peer) for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warmup = args.n // 10 if args.warmup is None else args.warmup
    dists = ("wippy-queue", "aio-pika", "taskiq", "taskiq-aio-pika", "dramatiq", "pika")
    info = harness.machine((*dists, "celery", "kombu"))
    rows = harness.select(build_rows(args.producers), args.only)
    with tempfile.TemporaryDirectory(prefix="wippy-bench-amqp-") as tmp:
        (Path(tmp) / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_SOURCE)
        (Path(tmp) / f"{CELERY_MODULE}.py").write_text(CELERY_SOURCE)
        sys.path.insert(0, tmp)
        ctx = Context(args.url, args.producers, Path(tmp))
        try:
            harness.measure(
                rows, lambda row, n: row.run(ctx, n), n=args.n, repeat=args.repeat, warmup=warmup
            )
        finally:
            if ctx.celery is not None:
                ctx.celery.close()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    print(
        f"\nN = {args.n:,} jobs, {args.repeat} runs per row (medians), {args.producers} "
        f"producers; Python {info['python']} on {info['platform']}, {info['cpus']} CPUs, "
        f"load average {info['load_average_1min']:.2f} before / {os.getloadavg()[0]:.2f} "
        f"after; {versions}; wippy_queue {info['wippy_queue_tree']}\n"
    )
    harness.report(
        args,
        rows,
        table(rows),
        lambda: as_json(args, rows, info),
        title="bench/amqp.py: wippy-queue on RabbitMQ beside Dramatiq, Celery, taskiq",
        settings=f"concurrency {CONCURRENCY}, prefetch {PREFETCH}, {args.producers} producers",
    )


if __name__ == "__main__":
    main()
