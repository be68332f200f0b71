"""Counting what other processes hold: a census over a fanout exchange.

AMQP tells a client how many messages of a queue are ready (``queue.declare`` passive)
and how many consumers it has, not how many are delivered and unacknowledged. So
every AMQP driver binds a private queue (exclusive, server-named) to the fanout
exchange ``wippy-queue.census``; ``info`` on a queue that has consumers of other
processes publishes a question there, and each driver with subscriptions on that
queue answers with what it holds: its subscriptions (the broker counts them among
the consumers), deliveries prefetched and not yet handed out (ready, as far as the
asker is concerned), handed out and not settled (in flight), and nacked back but
maybe not yet ready on the broker; and the holding queues of its delayed nacks,
which the asker then counts too. The asker waits for answers covering every
consumer the broker listed, at most ``ANSWER_WAIT_S``; a consumer that never
answers (another AMQP client, a wippy-queue without the census) counts as holding
nothing.

The exchange is declared (never deleted) by every driver: it is shared, like the
broker. Questions and answers are small JSON bodies, not persisted, never acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pamqp.commands import Basic

from wippy_queue.drivers.amqp.link import CLIENT_ERRORS, Link

log = logging.getLogger(__name__)

EXCHANGE = "wippy-queue.census"
#: the longest ``info`` waits for the other processes' answers
ANSWER_WAIT_S = 0.5


@dataclass(frozen=True)
class Held:
    """What the subscriptions of one or more drivers hold on one queue."""

    consumers: int = 0
    buffered: int = 0
    handed: int = 0
    returning: int = 0
    #: the holding queues (delayed nacks) known: (name, delay in ms)
    holding: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: Held) -> Held:
        return Held(
            self.consumers + other.consumers,
            self.buffered + other.buffered,
            self.handed + other.handed,
            self.returning + other.returning,
            self.holding + other.holding,
        )


class _Poll:
    """One question's answers as they come in."""

    def __init__(self, queue: str, wanted: int) -> None:
        self.queue = queue
        self.wanted = wanted
        self.total = Held()
        self.enough = asyncio.Event()

    def add(self, held: Held) -> None:
        self.total = self.total + held
        if self.total.consumers >= self.wanted:
            self.enough.set()


class Census:
    """The census channel of one driver: answers others' questions, asks its own."""

    def __init__(self, link: Link, holding: Callable[[str], Held]) -> None:
        self._link = link
        self._holding = holding
        self._raw: Any = None
        self._generation = -1
        self._reply_to = ""
        self._ids = itertools.count(1)
        self._polls: dict[str, _Poll] = {}

    @property
    def ready(self) -> bool:
        raw = self._raw
        return raw is not None and not raw.is_closed and self._generation == self._link.generation

    async def open(self) -> None:
        """Bind a private queue to the exchange and listen (at start, after a reconnect).
        A failure is logged: ``info`` then counts this process's deliveries only."""
        try:
            _channel, raw, generation = await self._link.channel()
            await raw.exchange_declare(EXCHANGE, exchange_type="fanout", durable=False)
            declared = await raw.queue_declare("", exclusive=True, auto_delete=True)
            await raw.queue_bind(declared.queue, EXCHANGE)
            await raw.basic_consume(declared.queue, self._received, no_ack=True)
        except Exception as err:
            log.warning("driver %s: census unavailable: %s", self._link.entry_id, err)
            return
        self._raw, self._generation, self._reply_to = raw, generation, declared.queue

    async def count(self, queue: str, others: int) -> Held:
        """What the other processes' ``others`` consumers of ``queue`` hold."""
        if others <= 0 or not self.ready:
            return Held()
        ask = f"{next(self._ids)}"
        poll = self._polls[ask] = _Poll(queue, others)
        body = orjson.dumps({"ask": ask, "queue": queue})
        try:
            await self._raw.basic_publish(
                body,
                exchange=EXCHANGE,
                properties=Basic.Properties(reply_to=self._reply_to),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANSWER_WAIT_S):
                    await poll.enough.wait()
        except CLIENT_ERRORS as err:
            log.debug("census of %s failed: %s", queue, err)
        finally:
            del self._polls[ask]
        if poll.total.consumers < others:
            log.debug(
                "census of %s: %d of %d other consumers answered",
                queue,
                poll.total.consumers,
                others,
            )
        return poll.total

    async def _received(self, delivered: Any) -> None:
        try:
            data = orjson.loads(delivered.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        if "answer" in data:
            poll = self._polls.get(str(data["answer"]))
            if poll is not None:
                poll.add(_held_of(data, poll.queue))
            return
        reply_to = delivered.header.properties.reply_to
        queue = data.get("queue")
        if not isinstance(queue, str) or not reply_to or reply_to == self._reply_to:
            return  # ours, or not a question
        held = self._holding(queue)
        if held.consumers == 0:
            return
        answer = {"answer": data.get("ask"), **held.__dict__}
        with contextlib.suppress(*CLIENT_ERRORS):
            await self._raw.basic_publish(orjson.dumps(answer), routing_key=reply_to)


def _held_of(data: dict[str, Any], queue: str) -> Held:
    """An answer's counts and the holding queues it names under ``queue``."""
    counts = {}
    for field in ("consumers", "buffered", "handed", "returning"):
        value = data.get(field)
        counts[field] = value if isinstance(value, int) and value >= 0 else 0
    holding = []
    listed = data.get("holding")
    for item in listed if isinstance(listed, list) else ():
        if isinstance(item, list) and len(item) == 2:
            name, ms = item
            if isinstance(ms, int) and isinstance(name, str) and name.startswith(queue):
                holding.append((name, ms))  # the driver takes those of its queue's states
    return Held(**counts, holding=tuple(holding))
