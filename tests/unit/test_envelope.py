"""The canonical header encoding (the same bytes as the standard library's, always) and
the HMAC over them.

A provenance signature covers these bytes, so a publisher and a consumer (maybe of
another version) must agree on them exactly; the fast path must never differ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.envelope import decode_headers, encode_headers, pack, signed_bytes, unpack
from wippy_queue.queue.message import Message
from wippy_queue.queue.settle import DL_QUEUE
from wippy_queue.security.provenance import _UNSIGNED, _UNSIGNED_PREFIX, HmacSha256

REFERENCE = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
)


def reference(headers: dict[str, Any]) -> bytes:
    return REFERENCE.encode(headers).encode()


values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False),
)


@settings(max_examples=2000)
@given(st.dictionaries(st.text(), values, max_size=8))
def test_headers_encode_to_the_standard_librarys_bytes(headers: dict[str, Any]) -> None:
    assert encode_headers(headers) == (reference(headers) if headers else b"{}")


@settings(max_examples=1000)
@given(st.dictionaries(st.text(), values, max_size=8))
def test_headers_read_back_as_the_standard_library_reads_them(headers: dict[str, Any]) -> None:
    """Read through orjson where it agrees: the same values, of the same types."""
    raw = encode_headers(headers)
    read, expected = decode_headers(raw), json.loads(raw)
    assert read == expected
    assert [type(v) for v in read.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "raw",
    [b'{"a":NaN}', b'{"a":1e400}', b"[1]", b'{"a":{"b":1}}', b"\xff", b'{"a":', b""],
)
def test_headers_that_are_not_ours_are_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_headers(raw)


@pytest.mark.parametrize(
    "value", [1e-05, 9.9e-05, 2.5e-7, -5e-324, 1e16, 1.5e300, 0.0, -0.0, 2**64, -(2**63) - 1]
)
def test_values_where_fast_encoders_differ_keep_the_canonical_form(value: object) -> None:
    headers = {"v": value, "tenant": "t1"}
    assert encode_headers(headers) == reference(headers)
    assert decode_headers(encode_headers(headers)) == headers


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_as_before(value: float) -> None:
    with pytest.raises(ValueError):
        encode_headers({"v": value})


def test_a_lone_surrogate_is_refused_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_headers({"v": "\ud800"})


@settings(max_examples=500)
@given(
    st.binary(max_size=200),
    st.binary(max_size=300),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
)
def test_the_provenance_hmac_is_hmac_sha256(key: bytes, body: bytes, message_id: str) -> None:
    message = Message(message_id, body, {"timestamp": 1, "x_publisher": "svc"})
    covered = signed_bytes(message, "app:q", _UNSIGNED, _UNSIGNED_PREFIX, DL_QUEUE)
    expected = hmac.new(key, covered, hashlib.sha256).hexdigest()
    assert HmacSha256(key).sign(message, "app:q") == expected


@settings(max_examples=300)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",))), values, max_size=4),
    st.binary(max_size=100),
)
def test_an_envelope_reads_back_whole_and_a_cut_one_is_a_decode_error(
    message_id: str, headers: dict[str, Any], body: bytes
) -> None:
    packed = pack(Message(message_id, body, headers))
    back = unpack(packed)
    assert (back.id, back.headers, back.body) == (
        message_id,
        json.loads(encode_headers(headers)),
        body,
    )
    body_at = len(packed) - len(body)
    for cut in range(body_at):  # inside the magic, the id or the headers
        with pytest.raises(DecodeError):
            unpack(packed[:cut])


def test_the_envelope_bytes_stay_what_earlier_versions_stored() -> None:
    """Queues outlive upgrades (an SQLite file, a Redis stream): the layout is fixed."""
    stored = b'WQ1\n\x00\x00\x00\x03id1\x00\x00\x00\x07{"a":1}body'
    assert pack(Message("id1", b"body", {"a": 1})) == stored
    assert unpack(stored) == Message("id1", b"body", {"a": 1})
