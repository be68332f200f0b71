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

from wippy_queue.identity import Actor
from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.envelope import (
    decode_headers,
    encode_headers,
    pack,
    signed_bytes,
    signed_bytes_v1,
    unpack,
)
from wippy_queue.queue.message import Message
from wippy_queue.queue.settle import DL_QUEUE
from wippy_queue.security.provenance import (
    _UNSIGNED,
    _UNSIGNED_PREFIX,
    SIGNATURE,
    ForgedProvenance,
    HmacSha256,
    Stamper,
)

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
    expected = json.loads(raw)
    for read in (decode_headers(raw), decode_headers(raw.decode())):  # (text: AMQP, SQS)
        assert read == expected
        assert [type(v) for v in read.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize(
    "raw",
    [b'{"a":NaN}', b'{"a":1e400}', b"[1]", b'{"a":{"b":1}}', b"\xff", b'{"a":', b""],
)
def test_headers_that_are_not_ours_are_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_headers(raw)
    if raw != b"\xff":
        with pytest.raises(DecodeError):
            decode_headers(raw.decode())


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


def covered(frame: Any, message: Message, queue_id: str = "app:q") -> bytes:
    return frame(message, queue_id, _UNSIGNED, _UNSIGNED_PREFIX, DL_QUEUE)


def test_a_signature_covers_the_json_of_id_queue_and_headers_then_the_body() -> None:
    """The frame is part of the wire format: a signature made by one process verifies
    in another (and in later versions), so the bytes are pinned."""
    message = Message("m-1", b"\xffbody", {"x_publisher": "svc", "timestamp": 1, SIGNATURE: "k:0"})
    assert covered(signed_bytes, message) == (
        b'["m-1","app:q",{"timestamp":1,"x_publisher":"svc"}]\xffbody'
    )
    assert covered(signed_bytes_v1, message) == (
        b'3:m-15:app:q5:\xffbody35:{"timestamp":1,"x_publisher":"svc"}'
    )


@settings(max_examples=1000)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.dictionaries(st.text().filter(lambda key: not key.startswith("x_")), values, max_size=6),
    st.binary(max_size=20),
)
def test_the_signed_frame_is_the_standard_librarys_json(
    message_id: str, queue_id: str, headers: dict[str, Any], body: bytes
) -> None:
    try:
        head = REFERENCE.encode([message_id, queue_id, headers]).encode()
    except (ValueError, UnicodeEncodeError):
        return  # refused by both (see the header tests)
    assert covered(signed_bytes, Message(message_id, body, headers), queue_id) == head + body


def test_a_stamp_signed_over_the_earlier_frame_still_verifies_and_a_forged_one_does_not() -> None:
    """Messages signed by a version before the JSON frame may wait in a queue across the
    upgrade: they verify; an altered one fails either way."""
    stamper = Stamper({"k1": "secret"}, "k1")
    old = Message("m-1", b'{"n": 1}', {"timestamp": 1})
    stamper.stamp(old, "app:q", Actor("svc", meta={"tenant": "t1"}))
    del old.headers[SIGNATURE]
    old.headers[SIGNATURE] = "k1:" + HmacSha256(b"secret").sign(old, "app:q", signed_bytes_v1)
    assert stamper.verify(old, "app:q", trusted=False).publisher == "svc"
    for altered in (Message(old.id, b'{"n": 2}', dict(old.headers)), old):
        if altered is old:
            old.headers["x_publisher_tenant"] = "t2"
        with pytest.raises(ForgedProvenance, match="does not match"):
            stamper.verify(altered, "app:q", trusted=False)
