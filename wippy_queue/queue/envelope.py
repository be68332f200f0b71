"""The one canonical envelope of a message: its id, typed headers and body as bytes.

Broker drivers store and read messages through these functions, so a header keeps
its exact type on every driver (``1``, ``1.0`` and ``True`` stay distinct: JSON
writes them differently), and the provenance signature covers exactly the bytes
``signed_bytes`` gives, never anything a broker adds. A malformed envelope read
from a broker is a ``DecodeError`` (the delivery is recorded and dead-lettered as
``decode_error``), never a crash.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import orjson

from wippy_queue.queue.codec import DecodeError, parse_json
from wippy_queue.queue.message import Headers, Message

MAGIC = b"WQ1\n"
#: the size before the id and before the headers
_SIZE = struct.Struct(">I")
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
)
#: the same encoding, made once: ``JSONEncoder.encode`` builds its C encoder per call
_C_ENCODE = getattr(json.encoder, "c_make_encoder", None)
_FAST = (
    _C_ENCODE(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    if _C_ENCODE is not None
    else None
)
_SORTED = orjson.OPT_SORT_KEYS
#: orjson writes a float below this as 0.00001 where the standard library writes 1e-05;
#: everywhere else (checked over random bit patterns) the two give the same bytes
_TINY = 1e-4


def _stdlib(value: Any) -> bytes:
    if _FAST is None:
        return _ENCODER.encode(value).encode()
    return "".join(_FAST(value, 0)).encode()


def _canonical(value: Any, headers: Headers) -> bytes:
    """``value`` (``headers`` or a frame holding them) as the standard library's
    canonical JSON, by orjson unless ``headers`` hold a value where the two differ."""
    for item in headers.values():
        if type(item) is float and not (item == 0.0 or _TINY <= abs(item) < math.inf):
            return _stdlib(value)
    try:
        return orjson.dumps(value, option=_SORTED)
    except TypeError:  # (orjson.JSONEncodeError) big ints, surrogates: as before
        return _stdlib(value)


def encode_headers(headers: Headers) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8; the same bytes for the same headers.

    The bytes are the standard library's (``sort_keys``, compact separators, no ASCII
    escaping, no NaN): a signature made by one version verifies in another. orjson
    gives those same bytes about 6x faster (headers are encoded for every signed
    publish and verified delivery), so it is used except where the two differ: tiny
    or non-finite floats, integers past 64 bits, lone surrogates.
    """
    if not headers:
        return b"{}"
    return _canonical(headers, headers)


#: (a tuple: a ``str | int`` union would be built anew for every header read)
_STR_INT = (str, int)


def _valid_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _STR_INT)  # bool is an int


def decode_headers(raw: bytes | str) -> Headers:
    """Headers from ``encode_headers`` bytes; DecodeError when they are not ours.
    (Through the codec's orjson path, text too: once per message read from a broker.)"""
    try:
        headers = parse_json(raw.encode() if isinstance(raw, str) else raw, "message headers")
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"message headers are not valid JSON: {err}") from err
    except RecursionError as err:  # headers are flat: any nesting is wrong, this much fatal
        raise DecodeError("message headers nest too deep (they are one flat object)") from err
    if not isinstance(headers, dict):
        raise DecodeError(f"message headers must be a JSON object, got {type(headers).__name__}")
    for key, value in headers.items():
        if not _valid_value(value):
            raise DecodeError(f"header {key!r} has a {type(value).__name__} value {value!r}")
    return headers


def pack(message: Message) -> bytes:
    """The whole message as one blob (for brokers that store one value per message):
    the magic, the id and the headers each after its 4-byte size, then the body."""
    ident, headers = message.id.encode(), encode_headers(message.headers)
    size = _SIZE.pack
    return b"".join((MAGIC, size(len(ident)), ident, size(len(headers)), headers, message.body))


def unpack(data: bytes) -> Message:
    """The message ``pack`` made; DecodeError for anything else."""
    if not data.startswith(MAGIC):
        raise DecodeError("not a wippy-queue envelope")
    try:  # (slices and one struct read per field: once per message a broker hands over)
        (id_size,) = _SIZE.unpack_from(data, _ID_AT)
        headers_at = _ID_AT + 4 + id_size
        (headers_size,) = _SIZE.unpack_from(data, headers_at)
    except struct.error:
        raise DecodeError("truncated wippy-queue envelope") from None
    body_at = headers_at + 4 + headers_size
    if body_at > len(data):
        raise DecodeError("truncated wippy-queue envelope")
    try:
        message_id = data[_ID_AT + 4 : headers_at].decode()
    except UnicodeDecodeError as err:
        raise DecodeError(f"message id is not UTF-8: {err}") from err
    return Message(message_id, data[body_at:], decode_headers(data[headers_at + 4 : body_at]))


_ID_AT = len(MAGIC)


def _covered(headers: Headers, skip: frozenset[str], skip_prefix: str, skip_marker: str) -> Headers:
    """``headers`` except those in ``skip`` and, when ``skip_marker`` is present, those
    starting ``skip_prefix`` (copied only when one is there)."""
    if skip_marker in headers:  # only then can headers with the prefix be ours
        headers = {k: v for k, v in headers.items() if not k.startswith(skip_prefix)}
    for key in skip:  # (a lookup per skipped key: cheaper than isdisjoint's walk)
        if key in headers:
            return {k: v for k, v in headers.items() if k not in skip}
    return headers


def signed_bytes(
    message: Message, queue_id: str, skip: frozenset[str], skip_prefix: str, skip_marker: str
) -> bytes:
    """What a provenance signature covers: the canonical JSON of ``[id, queue,
    headers]`` (the headers but the skipped ones, see ``_covered``: the signature
    itself, the dead-letter bookkeeping), then the body. The array ends where the body
    begins, so no two messages give the same bytes. One orjson call (once per signed
    publish and per verified delivery): half the cost of the length-prefixed frame
    before it, which ``signed_bytes_v1`` keeps for stamps made earlier."""
    headers = _covered(message.headers, skip, skip_prefix, skip_marker)
    return _canonical((message.id, queue_id, headers), headers) + message.body


def signed_bytes_v1(
    message: Message, queue_id: str, skip: frozenset[str], skip_prefix: str, skip_marker: str
) -> bytes:
    """The frame signatures covered before ``signed_bytes``: the length-prefixed id,
    queue, body and canonical headers. Read only, for messages signed by earlier
    versions that still wait in a queue."""
    encoded = encode_headers(_covered(message.headers, skip, skip_prefix, skip_marker))
    ident, queue, body = message.id.encode(), queue_id.encode(), message.body
    return b"%d:%b%d:%b%d:%b%d:%b" % (
        len(ident),
        ident,
        len(queue),
        queue,
        len(body),
        body,
        len(encoded),
        encoded,
    )
