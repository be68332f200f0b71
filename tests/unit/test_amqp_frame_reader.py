"""The AMQP driver's buffered frame reader reads exactly what aiormq's own reader reads."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from aiormq.connection import FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic, Channel
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from wippy_queue.drivers.amqp.frames import (
    FRAME,
    FRAME_END,
    HEADER,
    HEADER_START,
    HEADERS,
    BufferedFrames,
    BundledDeliver,
)

SHORT = st.text(max_size=40)
TAG = st.integers(min_value=0, max_value=2**63 - 1)
#: header values the reader decodes itself (strings, booleans, integers of every
#: width, floats) and some it leaves to pamqp (nested tables, lists, None)
VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=30),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
OTHER_VALUES = st.one_of(
    st.none(),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=2),
)
TABLE = st.dictionaries(
    st.text(min_size=1, max_size=10), st.one_of(VALUES, VALUES, OTHER_VALUES), max_size=5
)
PROPERTIES = st.one_of(
    st.builds(  # what our publishes carry
        Basic.Properties,
        content_type=st.one_of(st.none(), st.just("application/json")),
        headers=st.one_of(st.none(), TABLE),
        delivery_mode=st.one_of(st.none(), st.sampled_from([1, 2])),
        message_id=st.one_of(st.none(), SHORT),
    ),
    st.builds(  # and what other clients may add
        Basic.Properties,
        headers=st.one_of(st.none(), TABLE),
        correlation_id=st.one_of(st.none(), SHORT),
        priority=st.one_of(st.none(), st.integers(0, 9)),
        app_id=st.one_of(st.none(), SHORT),
    ),
)
FRAMES = st.one_of(
    st.builds(
        Basic.Deliver,
        consumer_tag=SHORT,
        delivery_tag=TAG,
        redelivered=st.booleans(),
        exchange=st.sampled_from(["", "amq.direct", "wq.holding-5000"]),
        routing_key=SHORT,
    ),
    st.builds(Basic.Ack, delivery_tag=TAG, multiple=st.booleans()),
    st.builds(Basic.Nack, delivery_tag=TAG, multiple=st.booleans(), requeue=st.booleans()),
    st.builds(ContentHeader, st.just(0), st.integers(0, 2**40), PROPERTIES),
    st.builds(ContentBody, st.binary(max_size=300)),
    st.builds(Channel.Close, st.just(406), SHORT, st.just(60), st.just(40)),
    st.builds(Basic.ConsumeOk, consumer_tag=SHORT),
    st.just(Heartbeat()),
)


def wire(frames: list[tuple[int, Any]]) -> bytes:
    return b"".join(
        bytes(frame.marshal(f, 0 if isinstance(f, Heartbeat) else ch)) for ch, f in frames
    )


def stream(data: bytes, cuts: list[int], eof: bool = True) -> asyncio.StreamReader:
    """A reader fed ``data`` in pieces cut at ``cuts``."""
    reader = asyncio.StreamReader()
    at = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        reader.feed_data(data[at:cut])
        at = cut
    if eof:
        reader.feed_eof()
    return reader


async def read_all(receiver: FrameReceiver) -> list[tuple[int, int, bytes]]:
    """Every frame until the stream ends, each as it would be written again."""
    return [
        (weight, channel, bytes(frame.marshal(f, channel))) async for weight, channel, f in receiver
    ]


async def outcome(receiver: FrameReceiver) -> tuple[list[tuple[int, int, bytes]], str | None]:
    """The frames read, as they would be written again, and the error that ended the
    reading (None: the stream ended between frames)."""
    read: list[tuple[int, int, bytes]] = []
    try:
        async for weight, channel, got in receiver:
            read.append((weight, channel, bytes(frame.marshal(got, channel))))
    except (AMQPConnectionError, InvalidFrameError) as err:
        return read, type(err).__name__
    return read, None


@settings(max_examples=400, deadline=None)
@given(
    frames=st.lists(st.tuples(st.integers(1, 65535), FRAMES), max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_every_frame_is_read_as_aiormq_reads_it(
    frames: list[tuple[int, Any]], cuts: list[int]
) -> None:
    data = wire(frames)

    async def both() -> tuple[Any, Any]:
        ours = await outcome(BufferedFrames(stream(data, cuts)))
        theirs = await outcome(FrameReceiver(stream(data, cuts)))
        return ours, theirs

    ours, theirs = asyncio.run(both())
    assert ours == theirs
    if ours[1] is None:
        assert len(ours[0]) == len(frames)


async def test_a_stream_cut_within_a_frame_is_a_lost_connection() -> None:
    data = wire([(1, Basic.Ack(7, False)), (1, ContentBody(b"x" * 100))])
    for receiver_class in (BufferedFrames, FrameReceiver):
        receiver = receiver_class(stream(data[:-10], []))
        with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
            await read_all(receiver)


async def test_a_frame_without_its_end_byte_is_an_invalid_frame() -> None:
    data = bytearray(wire([(1, Basic.Ack(7, False))]))
    data[-1] = 0
    for receiver_class in (BufferedFrames, FrameReceiver):
        with pytest.raises(InvalidFrameError):
            await read_all(receiver_class(stream(bytes(data), [])))


async def test_a_malformed_delivery_is_an_invalid_frame_not_a_crash() -> None:
    deliver = bytearray(wire([(1, Basic.Deliver("ctag", 1, False, "", "q"))]))
    deliver[11] = 200  # the consumer tag's length now runs past the frame
    with pytest.raises(InvalidFrameError):
        await read_all(BufferedFrames(stream(bytes(deliver), [])))
    bad_utf8 = bytearray(wire([(1, Basic.Deliver("ctag", 1, False, "", "q"))]))
    bad_utf8[12] = 0xFF
    with pytest.raises(InvalidFrameError):
        await read_all(BufferedFrames(stream(bytes(bad_utf8), [])))


async def test_frames_arriving_one_read_at_a_time_wait_for_the_rest() -> None:
    """A frame split across reads is returned once its last byte has arrived."""
    data = wire([(3, ContentBody(b"payload"))])
    reader = asyncio.StreamReader()
    receiver = BufferedFrames(reader)
    pending = asyncio.ensure_future(receiver.get_frame())
    for byte in data[:-1]:
        reader.feed_data(bytes([byte]))
        await asyncio.sleep(0)
        assert not pending.done()
    reader.feed_data(data[-1:])
    weight, channel, body = await asyncio.wait_for(pending, 5)
    assert (weight, channel, body.value) == (len(data), 3, b"payload")


async def test_a_header_string_that_is_not_utf8_is_read_as_bytes_as_pamqp_reads_it() -> None:
    entries = b"\x03key" + b"S" + struct.pack(">I", 2) + b"\xff\xfe"
    payload = HEADER_START.pack(60, 0, 5, HEADERS) + struct.pack(">I", len(entries)) + entries
    data = FRAME.pack(HEADER, 1, len(payload)) + payload + bytes((FRAME_END,))
    headers = []
    for receiver_class in (BufferedFrames, FrameReceiver):
        _, _, header = await receiver_class(stream(data, [])).get_frame()
        headers.append(header.properties.headers)
    assert headers == [{"key": b"\xff\xfe"}] * 2


# -- a delivery read with its content ------------------------------------------------

DELIVER = Basic.Deliver("ctag", 42, True, "", "jobs")


def delivery_frames(body: bytes, channel: int = 1, step: int = 100) -> bytes:
    """A delivery as the broker writes it: method, header, body in ``step`` frames."""
    parts = [bytes(frame.marshal(DELIVER, channel))]
    header = ContentHeader(0, len(body), Basic.Properties(message_id="m1", headers={"a": 1}))
    parts.append(bytes(frame.marshal(header, channel)))
    parts += [
        bytes(frame.marshal(ContentBody(body[i : i + step]), channel))
        for i in range(0, len(body), step)
    ]
    return b"".join(parts)


def everyone(channel: int, consumer_tag: str) -> bool:
    return True


@pytest.mark.parametrize("body", [b"", b"x" * 50, bytes(range(256)) * 3])
async def test_a_delivery_whose_frames_are_all_here_is_read_with_its_content(
    body: bytes,
) -> None:
    data = delivery_frames(body)
    receiver = BufferedFrames(stream(data, []), everyone)
    weight, channel, got = await receiver.get_frame()
    assert isinstance(got, BundledDeliver) and (weight, channel) == (len(data), 1)
    assert (got.consumer_tag, got.delivery_tag, got.redelivered, got.routing_key) == (
        "ctag",
        42,
        True,
        "jobs",
    )
    assert got.header.body_size == len(body) and got.body == body
    assert got.header.properties.message_id == "m1"
    with pytest.raises(StopAsyncIteration):
        await receiver.get_frame()


async def test_a_delivery_is_read_frame_by_frame_unless_all_of_it_is_here_and_wanted() -> None:
    """Its body still on the way, another channel's frame between its own, or a
    consumer that reads frames itself: the frames come one by one, as aiormq's."""
    body = b"y" * 250
    whole = delivery_frames(body)
    other = bytes(frame.marshal(Basic.Ack(1, False), 2))
    header_end = len(whole) - 3 * (8 + 100) + 50  # (the last body frame is 50 bytes)
    cases = [
        (whole[:-10], whole[-10:], everyone),  # its last body frame not read yet
        (whole[:header_end] + other + whole[header_end:], b"", everyone),
        (whole, b"", lambda channel, tag: False),  # not one of ours
    ]
    for first, rest, bundles in cases:
        reader = asyncio.StreamReader()
        reader.feed_data(first)
        receiver = BufferedFrames(reader, bundles)
        _, _, got = await receiver.get_frame()
        assert type(got) is Basic.Deliver
        reader.feed_data(rest)
        reader.feed_eof()
        later = [f async for _, _, f in receiver]
        bodies = b"".join(f.value for f in later if isinstance(f, ContentBody))
        assert isinstance(later[0], ContentHeader) and bodies == body
