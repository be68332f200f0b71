"""RabbitMQ for the tests: reachability, our own connections closed, our own queues deleted.

The broker is shared by every test and process (and other people's work): a test
closes only connections whose client-provided name carries its own tag, and deletes
only queues it created.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterable
from urllib.parse import urlsplit

import services

URL = services.AMQP_URL


def require() -> None:
    parts = urlsplit(URL)
    services.require(
        "RabbitMQ", parts.hostname or "127.0.0.1", parts.port or 5672, module="aio_pika"
    )


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


async def close_connections(tag: str) -> int:
    """Close every broker connection whose client-provided name contains ``tag``."""
    listing = await asyncio.to_thread(
        _rabbitmqctl, "list_connections", "--no-table-headers", "pid", "client_properties"
    )
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if tag in line]
    for pid in pids:
        await asyncio.to_thread(_rabbitmqctl, "close_connection", pid, f"test {tag}")
    return len(pids)


async def restart_broker() -> None:
    """``rabbitmqctl stop_app`` then ``start_app`` (affects everyone: one test only)."""
    await asyncio.to_thread(_rabbitmqctl, "stop_app")
    await asyncio.to_thread(_rabbitmqctl, "start_app")
    await asyncio.to_thread(_rabbitmqctl, "await_startup")


def delete_queues(names: Iterable[str], *, partitioned: Iterable[str] = ()) -> None:
    """Delete queues this test created; of ``partitioned`` ones also those named after
    them (partitions, their holding queues, the stream of partition names), as far as
    ``rabbitmqctl`` can list them (a broker another test is restarting cannot)."""
    names = [n for n in names if re.fullmatch(r"wq-[\w.-]+", n)]
    prefixes = tuple(f"{n}." for n in partitioned if n in names)
    if prefixes:
        try:
            listed = _rabbitmqctl("list_queues", "--no-table-headers", "name").split()
        except (subprocess.SubprocessError, OSError):
            listed = []
        names += [q for q in listed if q not in names and q.startswith(prefixes)]
    if not names:
        return

    async def run() -> None:
        import aio_pika

        connection = await aio_pika.connect(URL)
        try:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)  # own
        finally:
            await connection.close()

    asyncio.run(run())
