"""The message a driver carries: an id, an encoded body and flat headers."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wippy_queue.errors import PublishError

HeaderValue = str | int | float | bool
Headers = dict[str, HeaderValue]

#: Header keys the runtime writes for its own bookkeeping; users may not set them.
#: (``attempts`` is what a handler's message reports as its delivery's attempt.)
RESERVED_PREFIX = "x_"
ATTEMPTS = "attempts"
TIMESTAMP = "timestamp"
#: unix seconds after which a message of a queue with a ``ttl`` is not handled
EXPIRES_AT = "x_expires_at"
#: the provenance stamp: who published (their actor id) and their tenant
PUBLISHER = "x_publisher"
PUBLISHER_TENANT = "x_publisher_tenant"


@dataclass(slots=True)
class Message:
    """A message as stored by a driver; ``body`` is already encoded by the queue codec."""

    id: str
    body: bytes
    headers: Headers = field(default_factory=dict)


def new_message_id() -> str:
    """A random UUID4 string, formatted directly (``str(uuid.uuid4())`` costs 3x more)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def user_headers(headers: Mapping[Any, Any] | None) -> Headers:
    """Validate headers given by a publisher; reserved keys and odd values are refused."""
    if headers is None:
        return {}
    if not isinstance(headers, dict | Mapping):  # dict first: the common, cheap check
        raise PublishError(
            f"headers must be a mapping of str to str/int/float/bool, got {headers!r}"
        )
    checked: Headers = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not key:
            raise PublishError(f"header keys must be non-empty strings, got {key!r}")
        if key.startswith(RESERVED_PREFIX) or key in (ATTEMPTS, TIMESTAMP):
            raise PublishError(
                f"header {key!r} is reserved for the runtime (keys starting 'x_', "
                f"'attempts' and 'timestamp'); use another name"
            )
        if not isinstance(value, str | int | float | bool):
            raise PublishError(
                f"header {key!r} has a {type(value).__name__} value {value!r}; "
                "header values must be str, int, float or bool"
            )
        checked[key] = value
    return checked


def stamp_new(
    message_id: str | None, body: bytes, headers: Headers, ttl_s: float | None = None
) -> Message:
    """Create a fresh message: an id (UUID4 unless given), a ``timestamp`` header and,
    for a queue with a ``ttl``, the time it expires."""
    now = time.time()
    headers[TIMESTAMP] = int(now)
    if ttl_s is not None:
        headers[EXPIRES_AT] = round(now + ttl_s, 3)
    return Message(id=message_id or new_message_id(), body=body, headers=headers)


def expired(message: Message, now: float) -> bool:
    expires_at = message.headers.get(EXPIRES_AT)
    return (
        isinstance(expires_at, int | float)
        and not isinstance(expires_at, bool)
        and expires_at < now
    )
