"""Publishing in batches on one confirming channel: the publishes of one event-loop turn
are framed by us and written together, each with its own confirm future.

aiormq's ``basic_publish`` takes a lock, frames with pamqp's generic marshaller and
waits for the socket to drain before it waits for the confirm: three loop turns and a
socket write per message. Here a publish takes its delivery tag and registers its
confirm future in the channel's own table (so aiormq's reader settles it on
``basic.ack``/``basic.nack``/``basic.return``, and the channel's close rejects it)
at once, and the frames of every publish of the turn go out in one write, in tag
order. A publish still returns only once the broker has confirmed it.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections import deque
from typing import Any

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import encode, frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from wippy_queue.drivers.amqp.frames import (
    BODY,
    CONTENT_TYPE,
    DELIVERY_MODE,
    HEADER,
    HEADER_START,
    HEADERS,
    LENGTH,
    MESSAGE_ID,
    framed,
)

#: table integers by range, smallest first: pamqp's choice of type
_INTEGERS = tuple(
    (low, high, code, struct.Struct(fmt))
    for low, high, code, fmt in (
        (-(2**7), 2**7 - 1, b"b", ">b"),
        (-(2**15), 2**15 - 1, b"s", ">h"),
        (0, 2**16 - 1, b"u", ">H"),
        (-(2**31), 2**31 - 1, b"I", ">l"),
        (0, 2**32 - 1, b"i", ">L"),
        (-(2**63), 2**63 - 1, b"l", ">q"),
    )
)
_FLOAT = struct.Struct(">f")  # (the table's floats are 32-bit)
#: the properties the fast header encoder writes; any other set goes through pamqp
_FAST = frozenset({"content_type", "headers", "delivery_mode", "message_id"})
#: the properties the fast encoder does not write
_OTHERS = tuple(name for name in Basic.Properties.attributes() if name not in _FAST)


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    return bytes((len(raw),)) + raw


def _integer(value: int) -> bytes | None:
    """A table integer in the smallest type that holds it, as pamqp chooses."""
    for low, high, code, packer in _INTEGERS:
        if low <= value <= high:
            return code + packer.pack(value)
    return None


def _table(table: dict[str, Any]) -> bytes:
    """The headers table as pamqp encodes it (sorted keys, the same value types),
    directly for str, bool, int and float values; pamqp encodes any other table."""
    if not table or encode.DEPRECATED_RABBITMQ_SUPPORT:
        return encode.field_table(table)
    parts = []
    for key, value in sorted(table.items()):
        raw_key = key.encode()
        if len(raw_key) > 128:  # (pamqp truncates it, with a warning)
            return encode.field_table(table)
        parts.append(bytes((len(raw_key),)) + raw_key)
        if isinstance(value, bool):
            parts.append(b"t\x01" if value else b"t\x00")
        elif isinstance(value, int):
            number = _integer(value)
            if number is None:
                return encode.field_table(table)  # (pamqp's error for it)
            parts.append(number)
        elif isinstance(value, float):
            parts.append(b"f" + _FLOAT.pack(value))
        elif isinstance(value, str):
            raw = value.encode()
            parts.append(b"S" + LENGTH.pack(len(raw)) + raw)
        else:
            return encode.field_table(table)
    body = b"".join(parts)
    return LENGTH.pack(len(body)) + body


def _only_fast(properties: Basic.Properties) -> bool:
    """Whether pamqp would write none but the fast encoder's properties (it leaves out
    None and ''). A loop, no call per property: it runs at every publish."""
    for name in _OTHERS:
        value = getattr(properties, name)
        if value is not None and value != "":
            return False
    return True


def header_frame(channel: int, size: int, properties: Basic.Properties) -> bytes:
    """The content header frame: the common properties (ours) encoded directly."""
    if not _only_fast(properties):
        return bytes(frame.marshal(ContentHeader(0, size, properties), channel))
    flags, parts = 0, []
    content_type, headers = properties.content_type, properties.headers
    mode, message_id = properties.delivery_mode, properties.message_id
    if content_type:
        flags |= CONTENT_TYPE
        parts.append(_shortstr(content_type))
    if headers is not None:
        flags |= HEADERS
        parts.append(_table(headers))
    if mode is not None:
        flags |= DELIVERY_MODE
        parts.append(bytes((mode,)))
    if message_id:
        flags |= MESSAGE_ID
        parts.append(_shortstr(message_id))
    payload = HEADER_START.pack(60, 0, size, flags) + b"".join(parts)
    return framed(HEADER, channel, payload)


class Batcher:
    """Batched publishes on one aiormq channel with publisher confirms on."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._parts: list[bytes] = []
        self._scheduled = False
        self._methods: dict[str, bytes] = {}
        #: written batches the connection's bounded write queue has no room for yet
        self._backlog: deque[ChannelFrame] = deque()
        self._drainer: asyncio.Task[None] | None = None

    def _method(self, routing_key: str) -> bytes:
        made = self._methods.get(routing_key)
        if made is None:
            publish = Basic.Publish(exchange="", routing_key=routing_key, mandatory=True)
            made = self._methods[routing_key] = bytes(frame.marshal(publish, self.raw.number))
        return made

    def publish(
        self, routing_key: str, body: bytes, properties: Basic.Properties
    ) -> asyncio.Future[Any]:
        """Queue one publish for this turn's write; its future is the broker's confirm
        (a ``Basic.Ack``; ``DeliveryError`` for a nack, ``PublishError`` if returned)."""
        raw = self.raw
        if raw.is_closed:
            raise ChannelInvalidStateError("the publishing channel is closed")
        if not properties.message_id:  # a returned message is matched by its id
            properties.message_id = uuid.uuid4().hex
        number = raw.number
        parts = self._parts
        parts.append(self._method(routing_key))
        parts.append(header_frame(number, len(body), properties))
        step = raw.max_content_size
        for start in range(0, len(body), step):
            parts.append(framed(BODY, number, body[start : start + step]))
        raw.delivery_tag += 1
        tag = raw.delivery_tag
        confirmation: asyncio.Future[Any] = raw.create_future()
        raw.confirmations[tag] = confirmation
        message_id = properties.message_id
        ids = raw.message_id_delivery_tag
        ids[message_id] = tag

        def forget(_: asyncio.Future[Any]) -> None:
            if ids.get(message_id) == tag:
                del ids[message_id]

        confirmation.add_done_callback(forget)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._write)
        return confirmation

    def _write(self) -> None:
        self._scheduled = False
        parts, self._parts = self._parts, []
        if not parts or self.raw.is_closed:
            return  # closing the channel rejects the confirm futures
        self._backlog.append(ChannelFrame(payload=b"".join(parts), should_close=False))
        if self._drainer is not None:
            return  # it writes this batch after the earlier ones: tags stay in order
        queue = self.raw.write_queue
        while self._backlog:
            try:
                queue.put_nowait(self._backlog[0])
            except asyncio.QueueFull:
                self._drainer = asyncio.get_running_loop().create_task(self._drain())
                return
            self._backlog.popleft()

    async def _drain(self) -> None:
        try:
            while self._backlog:
                await self.raw.write_queue.put(self._backlog[0])
                self._backlog.popleft()
        finally:
            self._drainer = None
