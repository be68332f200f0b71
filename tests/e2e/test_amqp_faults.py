"""The AMQP driver under faults, with real processes and the real broker.

- ``kill -9`` of one of two ``wippy-queue run`` processes mid-handling: the broker
  gives its unacknowledged messages to the other at once, and every message is
  handled at least once.
- connections closed by the broker mid-run (``rabbitmqctl close_connection`` on this
  test's own connections only): the runtime reconnects and handles every message.
- interop: a plain JSON message published by another AMQP client (aio-pika, no
  headers, no id) to the default exchange is consumed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import amqp_support
import pytest

from wippy_queue import Runtime
from wippy_queue.queue.driver import QueueInfo

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 20.0

HANDLER = """
import os, time

def handle(data):
    with open(os.environ["WQ_RECORD"], "a") as out:
        out.write(f"{data['n']} {os.getpid()}\\n")
    time.sleep(float(os.environ.get("WQ_HANDLE_S", "0")))
    return True
"""


@pytest.fixture(autouse=True)
def _broker() -> None:
    amqp_support.require()


def entries(folder: Path, queue: str, tag: str, *, concurrency: int = 2) -> Path:
    (folder / "handler_mod.py").write_text(HANDLER)
    entry = {
        "version": "1.0",
        "namespace": "app",
        "entries": [
            {
                "name": "rabbit",
                "kind": "queue.driver.amqp",
                "url": amqp_support.URL,
                "lifecycle": {
                    "auto_start": True,
                    "restart": {"initial_delay": 0.05, "max_delay": 0.5},
                },
            },
            {"name": "jobs", "kind": "queue.queue", "driver": "rabbit", "queue_name": queue},
            {
                "name": "handle",
                "kind": "function.python",
                "source": "file://handler_mod.py",
                "method": "handle",
            },
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "jobs",
                "func": "handle",
                "concurrency": concurrency,
                "prefetch": 5,
                "lifecycle": {"auto_start": True},
            },
        ],
    }
    path = folder / f"{tag}.yaml"
    path.write_text(json.dumps(entry))  # JSON is YAML
    return path


def spawn(entry: Path, record: Path, handle_s: float, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "WQ_RECORD": str(record), "WQ_HANDLE_S": str(handle_s)}
    return subprocess.Popen(
        [sys.executable, "-m", "wippy_queue", "run", str(entry), *extra],
        cwd=entry.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def handled(record: Path) -> list[tuple[int, int]]:
    if not record.exists():
        return []
    return [tuple(map(int, line.split())) for line in record.read_text().splitlines() if line]  # type: ignore[misc]


def wait_for(condition: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def publish(entry: Path, n: int) -> None:
    runtime = Runtime.load(entry)
    await runtime.start("app:rabbit")
    try:
        await asyncio.gather(*(runtime.publish("app:jobs", {"n": i}) for i in range(n)))
    finally:
        await runtime.stop("app:rabbit")


def test_kill_9_of_one_of_two_runs_hands_its_messages_to_the_other(tmp_path: Path) -> None:
    queue = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    record = tmp_path / "handled.txt"
    entry = entries(tmp_path, queue, "app")
    n = 30
    first = spawn(entry, record, 0.05)
    second = spawn(entry, record, 0.05)
    try:
        asyncio.run(publish(entry, n))
        pids = {first.pid, second.pid}
        # both are handling: kill the first mid-handling, holding unacked messages
        wait_for(lambda: {pid for _, pid in handled(record)} == pids, "both runs handling")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=WAIT_S)
        wait_for(lambda: {m for m, _ in handled(record)} == set(range(n)), "every message")
        assert second.poll() is None
        by_survivor = {m for m, pid in handled(record) if pid == second.pid}
        by_killed = {m for m, pid in handled(record) if pid == first.pid}
        assert by_survivor | by_killed == set(range(n))
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=WAIT_S)
        amqp_support.delete_queues([queue])


async def info_of(entry: Path) -> QueueInfo:
    """``info`` from a runtime of this process that consumes nothing."""
    runtime = Runtime.load(entry)
    await runtime.start("app:rabbit")
    try:
        return await runtime.info("app:jobs")
    finally:
        await runtime.stop("app:rabbit")


def test_info_and_until_idle_count_what_another_process_holds(tmp_path: Path) -> None:
    """One run holds every message unacknowledged (prefetch 5 + concurrency 2 >= 6):
    none is ready on the broker, yet the queue is not idle, here or for a second run
    with --until-idle, which stops only once all are handled."""
    queue = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    record = tmp_path / "handled.txt"
    entry = entries(tmp_path, queue, "app")
    n = 6
    asyncio.run(publish(entry, n))
    holder = spawn(entry, record, 0.3)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: len(handled(record)) >= 1, "the first run handling")
        info = asyncio.run(info_of(entry))
        assert not info.idle and info.in_flight >= 1, info
        second = spawn(entry, record, 0.3, "--until-idle", "--timeout", str(WAIT_S))
        _, err = second.communicate(timeout=WAIT_S + 10)
        assert second.returncode == 0, err
        assert {m for m, _ in handled(record)} == set(range(n))
    finally:
        for process in (holder, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=WAIT_S)
        amqp_support.delete_queues([queue])


NACK_LATER = """
import wippy_queue


def handle(data):
    wippy_queue.current_message().nack("later", delay_s=3600)
"""


async def _delayed_by_another_runtime(entry: Path) -> QueueInfo:
    consumer, observer = Runtime.load(entry), Runtime.load(entry)
    async with consumer:
        await observer.start("app:rabbit")
        try:
            await consumer.publish("app:jobs", {"n": 1})
            # (while the consumer moves it, the copy may be in its holding queue before the
            # consumer's census stops counting the delivery: one look then counts it twice,
            # the safe way for a join; the move ends within a confirm's round trip)
            async with asyncio.timeout(WAIT_S):
                while (info := await observer.info("app:jobs")).delayed == 0 or (
                    info.message_count > 1
                ):
                    await asyncio.sleep(0.02)
            return info
        finally:
            await observer.stop("app:rabbit")


def test_info_counts_the_holding_queues_of_another_runtime(tmp_path: Path) -> None:
    """A runtime that never delayed a nack learns the holding queues from the census."""
    queue = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    entry = entries(tmp_path, queue, "app")
    (tmp_path / "handler_mod.py").write_text(NACK_LATER)
    sys.path.insert(0, str(tmp_path))
    try:
        info = asyncio.run(_delayed_by_another_runtime(entry))
        assert (info.delayed, info.message_count, info.idle) == (1, 1, False)
    finally:
        sys.path.remove(str(tmp_path))
        amqp_support.delete_queues([queue, f"{queue}.wq-delay-3600000ms"])


async def _consume_through_reconnects(entry: Path, record: Path, tag: str, n: int) -> None:
    os.environ["WQ_RECORD"], os.environ["WQ_HANDLE_S"] = str(record), "0.01"
    sys.path.insert(0, str(entry.parent))
    try:
        runtime = Runtime.load(entry)
        async with runtime:
            driver = runtime.drivers["app:rabbit"]
            await asyncio.gather(*(runtime.publish("app:jobs", {"n": i}) for i in range(n)))
            for _ in range(2):  # twice, mid-run
                async with asyncio.timeout(WAIT_S):
                    while len(handled(record)) < 5:
                        await asyncio.sleep(0.01)
                assert await amqp_support.close_connections(driver.link.name) == 1
                async with asyncio.timeout(WAIT_S):
                    while not driver.connected:
                        await asyncio.sleep(0.01)
            await runtime.join(timeout=WAIT_S)
            await runtime.publish("app:jobs", {"n": n})  # and publishing works after
            await runtime.join(timeout=WAIT_S)
    finally:
        sys.path.remove(str(entry.parent))
        del os.environ["WQ_RECORD"], os.environ["WQ_HANDLE_S"]
    assert {m for m, _ in handled(record)} == set(range(n + 1))  # at least once each


def test_closed_connections_reconnect_and_every_message_is_handled(tmp_path: Path) -> None:
    queue = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    entry = entries(tmp_path, queue, "conn")
    try:
        asyncio.run(_consume_through_reconnects(entry, tmp_path / "handled.txt", queue, 60))
    finally:
        amqp_support.delete_queues([queue])


async def _foreign_publish(queue: str) -> None:
    connection = await aio_pika.connect(amqp_support.URL)
    async with connection:
        channel = await connection.channel()
        for body, content_type in ((b'{"n": 0}', "application/json"), (b'{"n": 1}', None)):
            message = aio_pika.Message(body, content_type=content_type)
            await channel.default_exchange.publish(message, routing_key=queue)


def test_a_plain_json_message_from_another_amqp_client_is_consumed(tmp_path: Path) -> None:
    queue = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    record = tmp_path / "handled.txt"
    entry = entries(tmp_path, queue, "interop", concurrency=1)

    async def run() -> None:
        os.environ["WQ_RECORD"] = str(record)
        sys.path.insert(0, str(tmp_path))
        try:
            async with Runtime.load(entry) as runtime:  # declares the queue
                await _foreign_publish(queue)
                async with asyncio.timeout(WAIT_S):
                    while len(handled(record)) < 2:
                        await asyncio.sleep(0.01)
                await runtime.join(timeout=WAIT_S)
        finally:
            sys.path.remove(str(tmp_path))
            del os.environ["WQ_RECORD"]

    try:
        asyncio.run(run())
        assert sorted(m for m, _ in handled(record)) == [0, 1]
    finally:
        amqp_support.delete_queues([queue])
