"""The AMQP driver's own content-header encoder writes exactly what pamqp writes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pamqp import frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from wippy_queue.drivers.amqp import wire
from wippy_queue.drivers.amqp.batching import header_frame
from wippy_queue.queue.message import Message

HEADER_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def pamqp_header(channel: int, size: int, properties: Basic.Properties) -> bytes:
    return bytes(frame.marshal(ContentHeader(0, size, properties), channel))


@given(
    message_id=st.text(min_size=1, max_size=80),
    headers=st.dictionaries(st.text(min_size=1, max_size=10), HEADER_VALUES, max_size=5),
    content_type=st.sampled_from([None, "", "application/json", "application/msgpack"]),
    size=st.integers(min_value=0, max_value=2**40),
)
def test_our_messages_are_framed_as_pamqp_frames_them(
    message_id: str, headers: dict[str, object], content_type: str | None, size: int
) -> None:
    headers = {k: v for k, v in headers.items() if not k.startswith("x")}
    message = Message(message_id, b"", headers)  # type: ignore[arg-type]
    properties = wire.properties_of(message, content_type)
    assert header_frame(7, size, properties) == pamqp_header(7, size, properties)


def test_other_properties_go_through_pamqp() -> None:
    for properties in (
        Basic.Properties(),
        Basic.Properties(headers={}),
        Basic.Properties(message_id="m", correlation_id="c", priority=3),
        Basic.Properties(content_type="text/plain", delivery_mode=1, app_id="a"),
    ):
        assert header_frame(1, 3, properties) == pamqp_header(1, 3, properties)


TABLE_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),  # (past int64: pamqp's TypeError)
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    st.none(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2),
)


def framed(frame_it: Any) -> bytes | str:
    """The frame's bytes, or the name of the error framing it raised."""
    try:
        return bytes(frame_it())
    except (TypeError, ValueError) as err:
        return type(err).__name__


@given(
    headers=st.dictionaries(
        st.one_of(st.text(min_size=1, max_size=8), st.text(min_size=129, max_size=140)),
        TABLE_VALUES,
        max_size=5,
    )
)
def test_any_headers_table_is_encoded_as_pamqp_encodes_it(headers: dict[str, Any]) -> None:
    """Strings, booleans, integers of every width and floats directly; keys pamqp
    truncates, values of other types and integers it refuses through pamqp."""
    properties = Basic.Properties(content_type="application/json", headers=headers)
    ours = framed(lambda: header_frame(5, 10, properties))
    assert ours == framed(lambda: pamqp_header(5, 10, properties))
