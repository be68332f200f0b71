"""The JSON codec reads and writes what the standard library did: orjson is only a
faster road to the same data, and the cases where the two differ take the old one."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wippy_queue.errors import PublishError
from wippy_queue.queue.codec import JSON, DecodeError

#: the codec as it was: the standard library, compact, UTF-8
_before_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def before_roundtrip(data: Any) -> Any:
    return json.loads(_before_encoder.encode(data).encode())


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and an int never equal to a float."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()  # NaN and infinities too
    | st.text()
)
keys = st.text() | st.integers() | st.floats(allow_nan=False) | st.booleans() | st.none()
data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(data)
def test_a_published_value_reads_back_as_the_standard_library_read_it(value: Any) -> None:
    try:
        expected = before_roundtrip(value)
    except (TypeError, ValueError):  # e.g. a lone surrogate is no UTF-8
        with pytest.raises(PublishError):
            JSON.encode(value)
        return
    if value is None or value in ("", [], {}, ()):
        return  # the publisher refuses empty data before the codec
    assert same(JSON.decode(JSON.encode(value)), expected)


@settings(max_examples=400, deadline=None)
@given(data)
def test_a_body_written_by_another_publisher_reads_as_the_standard_library_reads_it(
    value: Any,
) -> None:
    try:
        body = _before_encoder.encode(value).encode()
    except (TypeError, ValueError):
        return
    assert same(JSON.decode(body), json.loads(body))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"123456789012345678901234567890", 123456789012345678901234567890),  # not a float
        (b"-9223372036854775809", -9223372036854775809),  # 19 digits, below int64
        (b'{"n":-99999999999999999999}', {"n": -99999999999999999999}),
        (b'{"n":NaN}', {"n": math.nan}),
        (b"[Infinity,-Infinity]", [math.inf, -math.inf]),
        (b"1e400", math.inf),
        (b'"\\ud800"', "\ud800"),  # a lone surrogate escaped: read as before
        ('{"a":"é"}'.encode("utf-16"), {"a": "é"}),  # UTF-16 with its BOM
        (b'\xef\xbb\xbf{"a":1}', {"a": 1}),  # UTF-8 with a BOM
        (b'{"a":1,"a":2}', {"a": 2}),
    ],
)
def test_bodies_orjson_reads_otherwise_read_as_before(body: bytes, expected: Any) -> None:
    assert same(JSON.decode(body), expected)


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe\xfd", b"[1,]", b"nul"])
def test_an_invalid_body_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        JSON.decode(body)


@pytest.mark.parametrize(
    "value",
    [{"n": 2**70}, {"x": math.nan}, {"x": [math.inf]}, {1: "int key"}, {"x": None}],
)
def test_values_orjson_writes_otherwise_keep_the_standard_library_bytes(value: Any) -> None:
    assert JSON.encode(value) == _before_encoder.encode(value).encode()


@pytest.mark.parametrize("value", [{"s": {1, 2}}, {"b": b"bytes"}, {"o": object()}])
def test_what_json_cannot_hold_is_still_refused(value: Any) -> None:
    with pytest.raises(PublishError, match="not JSON-serialisable"):
        JSON.encode(value)


def test_a_uuid_is_written_as_its_string() -> None:
    """The one thing taken now that was refused before (orjson writes it natively)."""
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert JSON.decode(JSON.encode({"id": value})) == {"id": str(value)}
