"""RabbitMQ throughput: wippy-queue's AMQP driver against Dramatiq's RabbitmqBroker.

Each system publishes N no-op jobs to a fresh queue on the same broker, then drains
them with 4 workers; rounds are interleaved and medians reported. wippy-queue
publishes from 100 concurrent producers with publisher confirms on (its only mode);
Dramatiq publishes from one thread without confirms (its default). Celery and
taskiq-aio-pika rows are not in this script yet.

    pip install -e '.[amqp,bench]' pika
    python bench/amqp.py [--n 5000] [--repeat 5]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

URL = os.environ.get("WIPPY_QUEUE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PRODUCERS = 100
DONE = itertools.count()


@dataclass
class AmqpRow(harness.Row):
    system: str = ""


async def noop(data: Any) -> None:
    next(DONE)


def _entries(queue: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "namespace": "bench",
        "entries": [
            {
                "name": "rabbit",
                "kind": "queue.driver.amqp",
                "url": URL,
                "lifecycle": {"auto_start": True},
            },
            {"name": "jobs", "kind": "queue.queue", "driver": "rabbit", "queue_name": queue},
            {
                "name": "noop",
                "kind": "function.python",
                "source": "file://noop.py",
                "method": "noop",
            },
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "jobs",
                "func": "noop",
                "concurrency": CONCURRENCY,
                "prefetch": PREFETCH,
                "lifecycle": {"auto_start": True},
            },
        ],
    }


async def _wippy(n: int) -> Timing:
    import json
    import tempfile

    from wippy_queue import Runtime
    from wippy_queue.plugins import default_plugins

    class Fixed:
        def build(self, entry: Any, registry: Any) -> Any:
            from wippy_queue.functions.python import PythonHandler

            return PythonHandler(entry.id, noop)

    plugins = default_plugins()
    plugins.replace("function.python", factory=lambda: Fixed())
    queue = f"wq-bench-{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.yaml"
        (Path(folder) / "noop.py").write_text("async def noop(data):\n    pass\n")
        path.write_text(json.dumps(_entries(queue)))
        runtime = Runtime.load(path, plugins=plugins)
    await runtime.start("bench:rabbit")
    start = next(DONE)
    started = clock()
    left = iter(range(n))

    async def producer() -> None:
        for i in left:
            await runtime.publish("bench:jobs", {"i": i})

    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
    await runtime.start("bench:worker")
    await runtime.join("bench:jobs")
    timing = since(started)
    check_handled(next(DONE) - start - 1, n, "wippy-queue")
    driver = runtime.drivers["bench:rabbit"]
    raw = await driver._admin.get()  # type: ignore[attr-defined]
    await runtime.stop_all()
    await driver.start()
    raw = await driver._admin.get()  # type: ignore[attr-defined]
    await raw.queue_delete(queue)  # own
    await driver.stop()
    return timing


def _dramatiq(n: int) -> Timing:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, TimeLimit

    broker = RabbitmqBroker(
        url=URL, middleware=[AgeLimit(), TimeLimit(), Callbacks(), Pipelines(), Retries()]
    )
    dramatiq.set_broker(broker)
    queue = f"wq-bench-dramatiq-{uuid.uuid4().hex[:8]}"
    counter = itertools.count()

    @dramatiq.actor(queue_name=queue, broker=broker)
    def job(i: int) -> None:
        next(counter)

    started = clock()
    for i in range(n):
        job.send(i)
    worker = dramatiq.Worker(broker, worker_threads=CONCURRENCY, worker_timeout=100)
    worker.start()
    broker.join(queue)
    worker.join()
    timing = since(started)
    worker.stop()
    check_handled(next(counter), n, "dramatiq")
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        broker.channel.queue_delete(name)  # own
    broker.close()
    return timing


def run(row: AmqpRow, n: int) -> Timing:
    if row.system == "wippy-queue":
        return asyncio.run(_wippy(n))
    return _dramatiq(n)


def main(argv: list[str] | None = None) -> int:
    made = harness.parser(__doc__)
    made.set_defaults(n=5000)
    args = harness.parse(made, argv)
    rows = [AmqpRow("wippy-queue amqp (confirms)", system="wippy-queue")]
    try:
        import dramatiq  # noqa: F401
        import pika  # noqa: F401

        rows.append(AmqpRow("dramatiq RabbitmqBroker (no confirms)", system="dramatiq"))
    except ImportError as err:
        print(f"dramatiq row left out: {err}", file=sys.stderr)
    harness.measure(rows, run, n=args.n, repeat=args.repeat, warmup=200)
    body = [(r.key, f"{r.median:,.0f}", r.rate_range, f"{r.cpu_us:.0f}") for r in rows]
    print(harness.markdown_table(["system", "jobs/s (median)", "range", "CPU µs/job"], body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
