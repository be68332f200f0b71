"""What a subscription needs of its driver: the shared connection and the queue keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
