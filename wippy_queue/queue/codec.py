"""Codecs turn a publisher's data into message bytes and back (``codec`` on a queue)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wippy_queue.errors import PublishError


class DecodeError(ValueError):
    """The message body is not valid for the queue's codec."""


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    content_type: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()


def _json_encode(data: Any) -> bytes:
    try:
        return _ENCODER.encode(data).encode()
    except (TypeError, ValueError) as err:
        raise PublishError(f"message data is not JSON-serialisable: {err}") from err


def _json_decode(body: bytes) -> Any:
    try:  # the common case (UTF-8 without BOM) without json.loads' encoding sniffing
        return _DECODER.decode(body.decode())
    except ValueError:
        pass
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise DecodeError(f"body is not valid JSON: {err}") from err


def _msgpack() -> Codec:
    try:
        import msgpack
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise PublishError("codec 'application/msgpack' needs: pip install msgpack") from err

    def encode(data: Any) -> bytes:
        try:
            return bytes(msgpack.packb(data, use_bin_type=True))
        except (TypeError, ValueError) as err:
            raise PublishError(f"message data is not msgpack-serialisable: {err}") from err

    def decode(body: bytes) -> Any:
        try:
            return msgpack.unpackb(body, raw=False)
        except Exception as err:
            raise DecodeError(f"body is not valid msgpack: {err}") from err

    return Codec("application/msgpack", "application/msgpack", encode, decode)


JSON = Codec("json", "application/json", _json_encode, _json_decode)

#: Names accepted in a queue's ``codec`` field.
CODEC_NAMES = ("json", "json/plain", "application/json", "application/msgpack", "msgpack")


def get_codec(name: str) -> Codec:
    if name in ("json", "json/plain", "application/json"):
        return JSON
    if name in ("application/msgpack", "msgpack"):
        return _msgpack()
    raise PublishError(f"unknown codec {name!r}; use one of {', '.join(CODEC_NAMES)}")
