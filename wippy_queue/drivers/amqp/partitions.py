"""Partitioned queues on RabbitMQ: a queue per partition, and a stream that names them.

A partitioned queue ``jobs`` keeps messages without a partition in ``jobs`` itself
and those of partition ``acme`` in ``jobs.p.acme`` (``drivers/partitions.py`` makes
any partition a safe name), each declared as the queue is (quorum or classic, its
bound per partition), with its own holding queues for delayed nacks. The stream
``jobs.wq-partitions`` names every partition queue: whoever makes one declares it,
then appends its name. Each driver reads that stream from its first entry on, for as
long as it runs (``Partitions``), so it knows the partitions other processes made
and hears of new ones at once; subscriptions of every partition are told and start
consuming them. No management API and no plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from wippy_queue.drivers.amqp.link import CLIENT_ERRORS, Link, translate
from wippy_queue.drivers.partitions import safe_name

log = logging.getLogger(__name__)

#: how many names the stream hands over unacknowledged (a stream consumer needs a QoS)
STREAM_PREFETCH = 500


def partition_queue(queue: str, partition: str) -> str:
    """The broker queue of ``partition`` of ``queue`` (the queue itself for ``""``)."""
    return f"{queue}.p.{safe_name(partition)}" if partition else queue


def registry_name(queue: str) -> str:
    """The stream naming the partition queues of ``queue``."""
    return f"{queue}.wq-partitions"


REGISTRY_ARGUMENTS = {"x-queue-type": "stream"}


class Partitions:
    """Follows one partitioned queue's stream of partition names; ``found`` is called
    (on the event loop) with each partition queue name the first time it is seen."""

    def __init__(self, link: Link, queue: str, found: Callable[[str, str], None]) -> None:
        self._link = link
        self.queue = queue
        self.registry = registry_name(queue)
        self._found = found
        #: every partition queue name seen (the queue's own included)
        self.names: set[str] = {queue}
        self._channel: Any = None

    async def follow(self) -> None:
        """Declare the stream and read it from its start (again after a reconnect or a
        stop: a name seen before is not news)."""
        await self.stop()
        channel, raw, _generation = await self._link.channel()
        try:
            await raw.queue_declare(self.registry, durable=True, arguments=REGISTRY_ARGUMENTS)
            await raw.basic_qos(prefetch_count=STREAM_PREFETCH)
            await raw.basic_consume(
                self.registry,
                lambda delivered: self._heard(raw, delivered),
                arguments={"x-stream-offset": "first"},
            )
        except CLIENT_ERRORS as err:
            with contextlib.suppress(Exception):
                await channel.close()
            raise translate(err, f"reading the partitions of {self.queue!r}") from err
        self._channel = channel

    async def _heard(self, raw: Any, delivered: Any) -> None:
        with contextlib.suppress(*CLIENT_ERRORS):
            await raw.basic_ack(delivered.delivery.delivery_tag)
        try:
            name = bytes(delivered.body).decode()
        except UnicodeDecodeError:
            return
        if name.startswith(f"{self.queue}.p.") and name not in self.names:
            self.names.add(name)
            self._found(self.queue, name)

    async def announce(self, name: str, publish: Callable[[str, bytes], Any]) -> None:
        """Append partition queue ``name`` (declared already) to the stream."""
        if name not in self.names:
            await publish(self.registry, name.encode())
            self.names.add(name)

    async def stop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await channel.close()
