"""A buffered frame reader for the driver's own AMQP connection.

aiormq reads each incoming frame with three ``readexactly`` calls, under a lock, into
a ``BytesIO``, and decodes it with pamqp's generic ``unmarshal``: about a sixth of the
instructions a consumed message costs (three frames a delivery, one per confirm).
``BufferedFrames`` reads whatever the socket has into one buffer and cuts every
complete frame from it; the frames of a delivery (``basic.deliver``, its content
header when it carries what our publishes write, its body) and publisher confirms
(``basic.ack``) are decoded here, every other frame by pamqp. The same frames come
out in the same order with the same errors (a property test holds it to aiormq's
reader). One exception: a delivery to a consumer of the driver's (a channel whose
callback ``deliver.py`` replaced) whose header and body are in the buffer already
comes out as one ``BundledDeliver``, so that its content does not go through the
channel's frame queue frame by frame (about an eighth of a message's instructions).

Only the driver's connection reads this way: ``DriverConnection`` is the aio-pika
connection class the link connects with, and it opens a ``BufferedConnection``,
whose reader task iterates ``BufferedFrames`` instead of aiormq's receiver (the one
private name it relies on is aiormq's ``Connection.__reader``). Should an aiormq
release drop that name, ``connection_class`` falls back to aio-pika's own connection
(the driver works as before, without the saving; a test fails so that we notice).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import UnderlayConnection
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

#: frame type, channel, payload size (then the payload and FRAME_END)
FRAME = struct.Struct(">BHI")
FRAME_END = 0xCE
FRAME_END_BYTE = bytes((FRAME_END,))
METHOD, HEADER, BODY = 1, 2, 3
#: a content header's class id, weight, body size and first property flags
HEADER_START = struct.Struct(">HHQH")
#: the property flags of what our publishes carry (decoded here; any other: pamqp)
CONTENT_TYPE, HEADERS, DELIVERY_MODE, MESSAGE_ID = 1 << 15, 1 << 13, 1 << 12, 1 << 7
_OURS = CONTENT_TYPE | HEADERS | DELIVERY_MODE | MESSAGE_ID
#: a method frame's class and method ids, as one number
_METHOD_ID = struct.Struct(">I")
_DELIVER, _ACK = (60 << 16) | 60, (60 << 16) | 80
_LONGLONG = struct.Struct(">Q")
#: a table's (or long string's) length
LENGTH = struct.Struct(">I")
#: header table values of fixed size, by type code, decoded as pamqp decodes them
#: (``L`` too is signed there); ``t`` and ``S`` below; any other type: pamqp
_NUMBERS = {
    ord(code): struct.Struct(fmt)
    for code, fmt in (
        ("b", ">b"),
        ("B", ">B"),
        ("s", ">h"),
        ("u", ">H"),
        ("I", ">l"),
        ("i", ">L"),
        ("l", ">q"),
        ("L", ">q"),
        ("f", ">f"),
        ("d", ">d"),
    )
}
_BOOL, _LONG_STR = ord("t"), ord("S")
#: what one read may take from the socket's buffer
READ_SIZE = 1 << 20
#: consumed bytes kept at the front of the buffer before it is compacted
_COMPACT_AT = 1 << 16

#: a channel attribute: the consumer tags whose deliveries it takes with their content
DIRECT_ROUTES = "wippy_direct_routes"
#: aiormq's reader task method (name-mangled), which ``BufferedConnection`` wraps
_READER = "_Connection__reader"
HOOKABLE = callable(getattr(aiormq.Connection, _READER, None))

ReceivedFrame = tuple[int, int, Any]


def framed(kind: int, channel: int, payload: bytes) -> bytes:
    """A frame's bytes: header, payload, end byte."""
    return FRAME.pack(kind, channel, len(payload)) + payload + FRAME_END_BYTE


def _short_str(data: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + data[at]
    if end > len(data):
        raise ValueError("a short string runs past the frame")
    return data[at + 1 : end].decode(), end


def _method(payload: bytes) -> Any:
    """``basic.deliver`` and ``basic.ack`` decoded here; None for the rest (pamqp).
    Made as pamqp makes a received method: its fields set, not validated again."""
    method_id = _METHOD_ID.unpack_from(payload)[0]
    if method_id == _DELIVER:
        deliver = Basic.Deliver.__new__(Basic.Deliver)
        deliver.consumer_tag, at = _short_str(payload, 4)
        deliver.delivery_tag = _LONGLONG.unpack_from(payload, at)[0]
        deliver.redelivered = bool(payload[at + 8] & 1)
        deliver.exchange, at = _short_str(payload, at + 9)
        deliver.routing_key, _ = _short_str(payload, at)
        return deliver
    if method_id == _ACK:
        ack = Basic.Ack.__new__(Basic.Ack)
        ack.delivery_tag = _LONGLONG.unpack_from(payload, 4)[0]
        ack.multiple = bool(payload[12] & 1)
        return ack
    return None


def _table(data: bytes, at: int, end: int) -> dict[str, Any] | None:
    """A header table of the common value types; None if it holds another (pamqp)."""
    table: dict[str, Any] = {}
    while at < end:
        key, at = _short_str(data, at)
        code = data[at]
        at += 1
        if code == _LONG_STR:
            size = LENGTH.unpack_from(data, at)[0]
            raw = data[at + 4 : at + 4 + size]
            at += 4 + size
            try:
                table[key] = raw.decode()
            except UnicodeDecodeError:
                table[key] = raw  # (as pamqp gives it)
        elif code == _BOOL:
            table[key] = bool(data[at])
            at += 1
        else:
            number = _NUMBERS.get(code)
            if number is None:
                return None
            table[key] = number.unpack_from(data, at)[0]
            at += number.size
    if at != end:
        raise ValueError("a header table value runs past the table")
    return table


def _content_header(payload: bytes) -> ContentHeader | None:
    """A content header with only our publishes' properties and common header
    values, made as pamqp makes it; None for any other (pamqp decodes it)."""
    class_id, weight, body_size, flags = HEADER_START.unpack_from(payload)
    if flags & ~_OURS:
        return None
    properties = Basic.Properties()  # (as pamqp's ContentHeader starts them)
    at = HEADER_START.size
    if flags & CONTENT_TYPE:
        properties.content_type, at = _short_str(payload, at)
    if flags & HEADERS:
        end = at + 4 + LENGTH.unpack_from(payload, at)[0]
        if end > len(payload):
            raise ValueError("the header table runs past the frame")
        table = _table(payload, at + 4, end)
        if table is None:
            return None
        properties.headers, at = table, end
    if flags & DELIVERY_MODE:
        properties.delivery_mode = payload[at]
        at += 1
    if flags & MESSAGE_ID:
        properties.message_id, at = _short_str(payload, at)
    header = ContentHeader.__new__(ContentHeader)
    header.class_id, header.weight, header.body_size = class_id, weight, body_size
    header.properties = properties
    return header


def decode(kind: int, channel: int, payload: bytes) -> Any:
    """The frame of ``kind`` on ``channel`` carrying ``payload``. Malformed:
    ``InvalidFrameError``, as aiormq's reader raises."""
    try:
        decoded: Any = None
        if kind == BODY and payload:  # (an empty one is pamqp's error)
            return ContentBody(payload)
        if kind == METHOD:
            decoded = _method(payload)
        elif kind == HEADER:
            decoded = _content_header(payload)
        if decoded is not None:
            return decoded
        # (the frame's bytes again: rare frames only)
        return pamqp_frame.unmarshal(framed(kind, channel, payload))[2]
    except PAMQPException as err:
        raise InvalidFrameError(str(err)) from err
    except (struct.error, ValueError, IndexError) as err:  # (as pamqp wraps them)
        raise InvalidFrameError(f"malformed frame of type {kind}: {err}") from err


class BufferedFrames(FrameReceiver):
    """aiormq's frame receiver, reading the socket in large pieces (see the module)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        bundles: Callable[[int, str], bool] | None = None,
    ) -> None:
        super().__init__(reader)
        self.started = True  # (the handshake is done when the reader task starts)
        self._buffer = bytearray()
        self._at = 0
        #: whether a delivery on (channel, consumer tag) is handed over with its content
        self._bundles = bundles

    def _cut(self, at: int) -> tuple[int, int, bytes, int] | None:
        """The complete frame at ``at`` (kind, channel, payload, end), or None."""
        buffer = self._buffer
        if len(buffer) - at < FRAME.size:
            return None
        kind, channel, size = FRAME.unpack_from(buffer, at)
        end = at + FRAME.size + size + 1
        if len(buffer) < end:
            return None
        if buffer[end - 1] != FRAME_END:
            raise InvalidFrameError(f"frame of type {kind} does not end in 0xCE")
        return kind, channel, bytes(buffer[at + FRAME.size : end - 1]), end

    async def get_frame(self) -> ReceivedFrame:
        buffer = self._buffer
        while True:
            at = self._at
            cut = self._cut(at)
            if cut is not None:
                kind, channel, payload, end = cut
                self._at = end
                frame = decode(kind, channel, payload)
                if self._bundles is not None and type(frame) is Basic.Deliver:
                    bundled = self._bundled(channel, frame)
                    if bundled is not None:
                        return self._at - at, channel, bundled
                return end - at, channel, frame
            if at >= _COMPACT_AT or at == len(buffer):
                del buffer[:at]
                self._at = 0
            await self._read_more()

    def _bundled(self, channel: int, deliver: Any) -> BundledDeliver | None:
        """The delivery with its header and body when its consumer takes them so and
        they are all in the buffer already (the broker writes them together); None:
        its frames are read one by one, as aiormq reads them."""
        assert self._bundles is not None
        if not self._bundles(channel, deliver.consumer_tag):
            return None
        cut = self._cut(self._at)
        if cut is None or cut[0] != HEADER or cut[1] != channel:
            return None
        at, header_payload = cut[3], cut[2]
        if len(header_payload) < HEADER_START.size:
            return None  # (malformed: read alone, it is the error)
        # the body size first: the header is decoded once, when the body is here too
        left, parts = HEADER_START.unpack_from(header_payload)[2], []
        while left > 0:
            cut = self._cut(at)
            if cut is None or cut[0] != BODY or cut[1] != channel or len(cut[2]) > left:
                return None
            parts.append(cut[2])
            left -= len(cut[2])
            at = cut[3]
        header = decode(HEADER, channel, header_payload)
        self._at = at
        return BundledDeliver(deliver, header, parts[0] if len(parts) == 1 else b"".join(parts))

    async def _read_more(self) -> None:
        """More bytes into the buffer; the end of the stream between frames ends the
        iteration, within one is a lost connection (as aiormq's reader says)."""
        try:
            chunk = await self.reader.read(READ_SIZE)
        except ConnectionError as err:
            raise AMQPConnectionError(f"Server connection error: {err!r}") from err
        except OSError as err:
            raise AMQPConnectionError(f"Server communication error: {err!r}") from err
        if chunk:
            self._buffer += chunk
            return
        partial = len(self._buffer) - self._at
        if not partial:
            raise StopAsyncIteration
        raise AMQPConnectionError(
            f"Server connection unexpectedly closed. Read {partial} bytes of a frame"
        )


class BundledDeliver(Basic.Deliver):
    """A ``basic.deliver`` read with its content: the consumer callback of a channel
    that takes deliveries so (``DIRECT_ROUTES``) reads no more frames for it."""

    __slots__ = ("body", "header")

    def __init__(self, deliver: Any, header: ContentHeader, body: bytes) -> None:
        self.consumer_tag = deliver.consumer_tag
        self.delivery_tag = deliver.delivery_tag
        self.redelivered = deliver.redelivered
        self.exchange = deliver.exchange
        self.routing_key = deliver.routing_key
        self.header = header
        self.body = body


class BufferedConnection(aiormq.Connection):
    """aiormq's connection whose reader task reads through ``BufferedFrames``."""

    def _Connection__reader(self, frame_receiver: FrameReceiver) -> Any:
        reader = getattr(super(), _READER)
        return reader(BufferedFrames(frame_receiver.reader, self._bundles))

    def _bundles(self, channel: int, consumer_tag: str) -> bool:
        routes = getattr(self.channels.get(channel), DIRECT_ROUTES, None)
        return routes is not None and consumer_tag in routes


class _Underlay(UnderlayConnection):
    @classmethod
    async def make_connection(
        cls, url: Any, timeout: Any = None, **kwargs: Any
    ) -> aiormq.abc.AbstractConnection:
        connection = BufferedConnection(url, **kwargs)
        await asyncio.wait_for(connection.connect(), timeout=timeout)
        await connection.ready()
        return connection


class DriverConnection(aio_pika.Connection):
    """aio-pika's connection over a ``BufferedConnection`` (its ``connect``, with the
    underlying connection made by ``_Underlay``)."""

    async def connect(self, timeout: Any = None) -> None:
        self.transport = await _Underlay.connect(
            self.url, self._on_connection_close, timeout=timeout, **self.kwargs
        )
        await self._on_connected()


def connection_class() -> type[aio_pika.Connection]:
    """The class the driver connects with: ours, unless aiormq lacks the hook."""
    return DriverConnection if HOOKABLE else aio_pika.Connection
