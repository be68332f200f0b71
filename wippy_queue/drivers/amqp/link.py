"""The driver's one AMQP connection: open it, notice its loss, reconnect with back-off.

Every channel belongs to one connection *generation*: after a reconnect the
generation grows, and whatever holds a channel of an older one (a delivery waiting
to be settled) knows its delivery tags are stale. Client-library errors are
translated here into our ``DriverError`` family.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from wippy_queue.drivers.amqp.frames import connection_class
from wippy_queue.errors import DriverError
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.lifecycle.config import RestartPolicy
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: every client-library error a broker call can raise
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    RuntimeError,  # aio-pika: a channel used while its connection closes
)
#: those, and a connect or channel open that timed out
CONNECT_ERRORS: tuple[type[Exception], ...] = (*CLIENT_ERRORS, TimeoutError)
#: those, and ours (a reconnect's own steps fail with DriverError)
RECONNECT_ERRORS: tuple[type[Exception], ...] = (*CONNECT_ERRORS, DriverError)

CONNECT_TIMEOUT_S = 10.0


def safe_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user = auth.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def translate(err: BaseException, doing: str) -> DriverError:
    """Our error for a client-library one."""
    return DriverError(f"AMQP broker: {doing} failed: {type(err).__name__}: {err}")


class Link:
    """One connection with reconnects; ``on_up`` callbacks run after each reconnect."""

    def __init__(self, entry_id: str, url: str, policy: RestartPolicy) -> None:
        self.entry_id = entry_id
        self.url = url
        self.policy = policy
        #: the client-provided connection name: the broker lists it (rabbitmqctl)
        self.name = f"wippy-queue {entry_id} pid={os.getpid()} {uuid.uuid4().hex[:8]}"
        self.generation = 0
        self.up = asyncio.Event()
        self.failed: asyncio.Future[BaseException] | None = None
        self._connection: AbstractConnection | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._closing = False
        self._on_up: list[Callable[[], Awaitable[None]]] = []

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after every reconnect (before waiters see the link up)."""
        self._on_up.append(callback)

    async def open(self) -> None:
        """Connect once (a failure is a DriverError: the supervisor retries the start)."""
        self._closing = False
        self.failed = asyncio.get_running_loop().create_future()
        await self._connect()
        self.up.set()

    async def _connect(self) -> None:
        try:
            connection = await aio_pika.connect(
                self.url,
                timeout=CONNECT_TIMEOUT_S,
                client_properties={"connection_name": self.name},
                connection_class=connection_class(),
            )
        except CONNECT_ERRORS as err:
            raise DriverError(
                f"driver {self.entry_id}: cannot connect to {safe_url(self.url)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        self.generation += 1
        self._connection = connection
        generation = self.generation
        connection.close_callbacks.add(lambda _sender, exc: self._lost(generation, exc))

    def _lost(self, generation: int, exc: BaseException | None) -> None:
        if self._closing or generation != self.generation:
            return
        self.up.clear()
        log.warning(
            "driver %s: connection to %s lost (%s); reconnecting",
            self.entry_id,
            safe_url(self.url),
            exc,
        )
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            attempt += 1
            if self.policy.max_attempts and attempt > self.policy.max_attempts:
                err = DriverError(
                    f"driver {self.entry_id}: {safe_url(self.url)} unreachable after "
                    f"{self.policy.max_attempts} reconnect attempts"
                )
                if self.failed is not None and not self.failed.done():
                    self.failed.set_result(err)
                return
            await asyncio.sleep(restart_delay(self.policy, attempt) if attempt > 1 else 0.05)
            try:
                await self._connect()
                for callback in self._on_up:
                    await callback()
            except RECONNECT_ERRORS as err:
                log.warning("driver %s: reconnect %d failed: %s", self.entry_id, attempt, err)
                await self._drop()
                continue
            log.info("driver %s: reconnected to %s", self.entry_id, safe_url(self.url))
            self.up.set()
            return

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self.generation += 1  # its close is not news
            with contextlib.suppress(Exception):
                await connection.close()

    async def channel(self, *, confirms: bool = False) -> tuple[AbstractChannel, Any, int]:
        """A new channel: (aio-pika channel, its aiormq channel, generation)."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise DriverError(f"driver {self.entry_id}: not connected to the broker")
        generation = self.generation
        try:
            channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
            await channel.initialize(timeout=CONNECT_TIMEOUT_S)
            raw = await channel.get_underlay_channel()
        except CONNECT_ERRORS as err:
            raise translate(err, "opening a channel") from err
        return channel, raw, generation

    async def wait_up(self, running: Callable[[], bool]) -> None:
        """Wait until connected (raise DriverError if ``running()`` turns False)."""
        while not self.up.is_set():
            if not running():
                raise DriverError(f"driver {self.entry_id} is not running")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.up.wait()
        if not running():
            raise DriverError(f"driver {self.entry_id} is not running")

    async def close(self) -> None:
        self._closing = True
        self.up.clear()
        if self._reconnector is not None:
            await cancel_and_wait([self._reconnector])
            self._reconnector = None
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
