"""The SQS driver against moto's SQS server: messages/s and API calls per message.

moto stands in for SQS (no machine here reaches AWS), in a process of its own on a
free local port, so the rates say what the driver and moto manage on this machine,
not what SQS does; the API calls per message are what SQS would bill. Rows:

- ``wippy-sqs publish``: N concurrent ``Runtime.publish`` calls (SendMessageBatch).
- ``wippy-sqs end-to-end``: publish N, then a consumer (no-op handler, concurrency 4,
  prefetch 20) drains them: long-poll receives, pipelined DeleteMessageBatch.
- ``aiobotocore one by one``: the same N with one SendMessage each (16 at a time),
  the baseline a client without batching pays.

    pip install -e '.[sqs,test]'
    python bench/sqs.py [--n 2000] [--repeat 3]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import yaml
from harness import CONCURRENCY, PREFETCH, Timing, check_handled, clock, since

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
HANDLER = (
    "import itertools\n\ndone = itertools.count()\n\n\nasync def noop(data):\n    next(done)\n"
)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class SqsRow(harness.Row):
    run_once: Callable[[int], tuple[Timing, collections.Counter[str]]] = field(
        default=lambda n: (Timing(0, 0), collections.Counter())
    )
    calls: list[collections.Counter[str]] = field(default_factory=list)

    def run(self, n: int) -> Timing:
        timing, calls = self.run_once(n)
        self.calls.append(calls)
        return timing

    def per_message(self, operation: str) -> float:
        measured = self.calls[-len(self.timings) :] if self.timings else self.calls
        return sum(c[operation] for c in measured) / (self.n * len(measured))


def entries(url: str, queue: str, folder: Path) -> Path:
    doc = {
        "version": "1.0",
        "namespace": "bench",
        "entries": [
            {"name": "sqs", "kind": "queue.driver.sqs", "region": "us-east-1",
             "endpoint_url": url, "lifecycle": {"auto_start": True}},
            {"name": "jobs", "kind": "queue.queue", "driver": "sqs", "queue_name": queue},
            {"name": "noop", "kind": "function.python", "source": "wippy_bench_sqs:noop"},
            {"name": "worker", "kind": "queue.consumer", "queue": "jobs", "func": "noop",
             "concurrency": CONCURRENCY, "prefetch": PREFETCH,
             "lifecycle": {"auto_start": False}},
        ],
    }  # fmt: skip
    path = folder / f"{queue}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def publish_all(runtime: Any, n: int) -> None:
    await asyncio.gather(*(runtime.publish("bench:jobs", {"n": i}) for i in range(n)))


def wippy(url: str, folder: Path, *, consume: bool) -> Callable[[int], Any]:
    from wippy_queue import Runtime

    def run(n: int) -> tuple[Timing, collections.Counter[str]]:
        import wippy_bench_sqs

        async def go() -> tuple[Timing, collections.Counter[str]]:
            path = entries(url, f"bench-{uuid.uuid4().hex[:10]}", folder)
            async with Runtime.load(path) as runtime:
                driver = runtime.drivers["bench:sqs"]
                before = driver.calls.copy()  # type: ignore[attr-defined]
                done_before = next(wippy_bench_sqs.done)
                started = clock()
                await publish_all(runtime, n)
                if consume:
                    await runtime.start("bench:worker")
                    await runtime.join("bench:jobs", timeout=600)
                timing = since(started)
                calls = driver.calls - before  # type: ignore[attr-defined]
                if consume:
                    check_handled(next(wippy_bench_sqs.done) - done_before - 1, n, "wippy-sqs")
            return timing, calls

        return asyncio.run(go())

    return run


def one_by_one(url: str) -> Callable[[int], Any]:
    from aiobotocore.session import get_session

    def run(n: int) -> tuple[Timing, collections.Counter[str]]:
        async def go() -> tuple[Timing, collections.Counter[str]]:
            session = get_session()
            async with session.create_client("sqs", endpoint_url=url) as client:
                queue = await client.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:10]}")
                gate = asyncio.Semaphore(16)

                async def send(i: int) -> None:
                    async with gate:
                        await client.send_message(QueueUrl=queue["QueueUrl"], MessageBody="{}")

                started = clock()
                await asyncio.gather(*(send(i) for i in range(n)))
                return since(started), collections.Counter({"SendMessage": n})

        return asyncio.run(go())

    return run


def table(rows: list[SqsRow]) -> str:
    ops = ["SendMessageBatch", "SendMessage", "ReceiveMessage", "DeleteMessageBatch"]
    body = [
        [
            row.key,
            f"{row.median:,.0f}",
            row.rate_range,
            f"{row.cpu_us:,.0f}",
            *(f"{row.per_message(op):.3f}" for op in ops),
        ]
        for row in rows
    ]
    header = ["row", "msg/s (median)", "range", "CPU µs/msg", *(f"{op}/msg" for op in ops)]
    return harness.markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__)
    parser.set_defaults(n=2000, repeat=3)
    args = harness.parse(parser, argv)
    os.environ.update(FAKE_ENV)
    info = harness.machine(("wippy-queue", "aiobotocore", "moto"))
    with moto_server() as url, tempfile.TemporaryDirectory(prefix="wippy-bench-") as tmp:
        sys.path.insert(0, tmp)
        folder = Path(tmp)
        (folder / "wippy_bench_sqs.py").write_text(HANDLER)
        rows = [
            SqsRow("wippy-sqs publish", run_once=wippy(url, folder, consume=False)),
            SqsRow("wippy-sqs end-to-end", run_once=wippy(url, folder, consume=True)),
            SqsRow("aiobotocore one by one", run_once=one_by_one(url)),
        ]
        harness.measure(rows, lambda row, n: row.run(n), n=args.n, repeat=args.repeat, warmup=0)
    print(
        f"\nN = {args.n:,} messages, {args.repeat} runs per row (medians), against moto "
        f"{info['versions']['moto']}; Python {info['python']} on {info['platform']}, "
        f"{info['cpus']} CPUs\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
