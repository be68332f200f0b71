"""What a subscription needs of its driver: the shared connection and the queue keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wippy_queue.drivers.partitions import safe_name
from wippy_queue.drivers.redis.wire import Wire

GROUP = "wippy-queue"
#: broken connections: these mean "reconnect", anything else from redis is an error
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one queue: its stream and what the driver keeps beside it."""

    stream: str

    @property
    def delayed(self) -> str:
        return f"{self.stream}:wq:delayed"

    @property
    def delayed_prefix(self) -> str:
        return f"{self.stream}:wq:d:"

    @property
    def expired(self) -> str:
        return f"{self.stream}:wq:expired"

    @property
    def meta(self) -> str:
        return f"{self.stream}:wq:meta"

    @property
    def members(self) -> str:
        """Live subscriptions: member name -> when it last said so (ms)."""
        return f"{self.stream}:wq:members"

    @property
    def partitions(self) -> str:
        """A partitioned queue's partitions: the set of their streams' keys."""
        return f"{self.stream}:wq:partitions"


def partition_stream(queue: str, partition: str) -> str:
    """The stream of ``partition`` of ``queue``: the queue's own for ``""``, else
    ``<queue>:wq:p:<safe name>`` (``drivers/partitions.py``)."""
    return f"{queue}:wq:p:{safe_name(partition)}" if partition else queue


async def ensure_partition(client: aioredis.Redis, queue: str, stream: str) -> None:
    """Make ``stream`` a partition of ``queue``: its group exists, and the queue's set of
    partitions names it (in that order: a reader that finds it can read it)."""
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    pipe.sadd(Keys(queue).partitions, stream)
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            raise reply


class Link(Protocol):
    """The driver as its subscriptions use it."""

    instance: str
    subscriptions: set[Any]

    @property
    def running(self) -> bool: ...

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]], what: str) -> T: ...

    async def wait_up(self) -> aioredis.Redis: ...

    def connection_lost(self, err: BaseException) -> None: ...

    def script(self, name: str) -> Any: ...

    def new_wire(self, *, timeout_s: float = ..., name: str = ...) -> Wire: ...

    def delayed_added(self) -> None: ...

    async def streams_of(self, queue: str) -> list[str]: ...
