"""A logical queue: its registry ID, its spec on a driver, its codec."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from wippy_queue.queue.codec import Codec
from wippy_queue.queue.driver import Driver, QueueInfo, QueueSpec
from wippy_queue.queue.message import PUBLISHER_TENANT, Message


@dataclass(eq=False)
class Queue:
    driver: Driver
    codec: Codec
    spec: QueueSpec
    #: where its failed messages go (the consumers' retry policy dead-letters there)
    dead_letter: Queue | None = None
    consumers: list[str] = field(default_factory=list)
    #: ``message.tenant`` or ``message.headers.NAME``: what its partitions follow
    partition_by: str | None = None

    # cached (the spec is frozen): read at every publish and every delivery, and a
    # cached value is a plain attribute read after the first
    @cached_property
    def id(self) -> str:
        return self.spec.id

    @cached_property
    def name(self) -> str:
        """The queue's name on its driver."""
        return self.spec.name

    @cached_property  # read at every publish; the spec is frozen
    def ttl_s(self) -> float | None:
        ttl = self.spec.option("ttl")
        return float(ttl) if isinstance(ttl, int | float) else None

    def partition_of(self, message: Message) -> str:
        """The partition ``message`` belongs to (``""`` when the queue has none, or the
        message has no value: an anonymous message on a tenant-partitioned queue).

        ``message.tenant`` is read from the provenance stamp, which the runtime's publish
        guard has just written (or verified) on every path that reaches here.
        """
        by = self.partition_by
        if by is None:
            return ""
        key = PUBLISHER_TENANT if by == "message.tenant" else by.removeprefix("message.headers.")
        value = message.headers.get(key)
        return "" if value is None else str(value)

    async def put(self, message: Message) -> None:
        partition = "" if self.partition_by is None else self.partition_of(message)
        await self.driver.publish(self.name, message, partition)

    async def info(self) -> QueueInfo:
        """The driver's counts, under the queue's registry ID."""
        return replace(await self.driver.info(self.name), queue=self.id)
