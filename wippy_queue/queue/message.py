"""The message a driver carries: an id, an encoded body and flat headers."""

from __future__ import annotations

import math
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


class _IdPool:
    """Random hex for message ids, drawn from ``os.urandom`` 1,024 ids at a time: one
    system call per 1,024 ids instead of one per id (the ids stay unpredictable). A
    forked child drops what it inherited, so two processes never share ids."""

    __slots__ = ("hex", "next", "watching_forks")

    #: hex characters drawn per refill (32 per id)
    SIZE = 32 * 1024

    def __init__(self) -> None:
        self.hex = ""
        self.next = 0
        self.watching_forks = False

    def refill(self) -> str:
        if not self.watching_forks:  # on first use, never at import
            self.watching_forks = True
            os.register_at_fork(after_in_child=self.drop)
        self.hex = os.urandom(self.SIZE // 2).hex()
        self.next = 0
        return self.hex

    def drop(self) -> None:
        self.hex = ""
        self.next = 0


_IDS = _IdPool()
#: a hex digit's two low bits under the RFC 4122 variant bits (``10xx``)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_message_id() -> str:
    """A random UUID4 string, formatted directly (``str(uuid.uuid4())`` costs 5x more)."""
    i, h = _IDS.next, _IDS.hex
    if i + 32 > len(h):
        i, h = 0, _IDS.refill()
    _IDS.next = i + 32
    # version 4 in the 13th digit, the variant's bits in the 17th
    return (
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
    )


def exact_value(value: Any) -> HeaderValue | None:
    """``value`` as an exact built-in ``str``/``int``/``float``/``bool``, or None if it is
    none of them. A subclass keeps its data but loses its methods, so that no check
    (``startswith``, ``==``, hashing) can be answered by code the sender wrote."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool:
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return None


def exact_key(key: Any) -> str | None:
    """A header key as an exact ``str`` (None if it is no string)."""
    if type(key) is str:
        return key
    return str.__str__(key) if isinstance(key, str) else None


def user_headers(headers: Mapping[Any, Any] | None) -> Headers:
    """Validate headers given by a publisher; reserved keys and odd values are refused.

    Keys and values are made exact built-in types first: every check below, and every
    later one (the provenance stamp, policy conditions), sees plain data.
    """
    if headers is None:
        return {}
    if type(headers) is not dict and not isinstance(headers, Mapping):
        raise PublishError(
            f"headers must be a mapping of str to str/int/float/bool, got {headers!r}"
        )
    checked: Headers = {}
    for raw_key, raw_value in list(headers.items()):
        key = exact_key(raw_key)
        if not key:
            raise PublishError(f"header keys must be non-empty strings, got {raw_key!r}")
        if key.startswith(RESERVED_PREFIX) or key in (ATTEMPTS, TIMESTAMP):
            raise PublishError(
                f"header {key!r} is reserved for the runtime (keys starting 'x_', "
                f"'attempts' and 'timestamp'); use another name"
            )
        value = exact_value(raw_value)
        if type(value) is float and not math.isfinite(value):
            raise PublishError(f"header {key!r} is {value!r}; a float header must be finite")
        if value is None:
            raise PublishError(
                f"header {key!r} has a {type(raw_value).__name__} value {raw_value!r}; "
                "header values must be str, int, float or bool"
            )
        if key in checked:
            raise PublishError(f"header {key!r} is given twice")
        checked[key] = value
    return checked


def exact_headers(headers: Any) -> tuple[Headers, str | None]:
    """Headers read from a broker as exact built-in types, and what was wrong with them
    (None when nothing): a key that is no string or a value of another type is left
    out and named."""
    if type(headers) is dict and all(
        type(k) is str and type(v) in _EXACT for k, v in headers.items()
    ):
        return headers, None  # the common case: as decoded from the wire
    if not isinstance(headers, Mapping):
        return {}, f"its headers are a {type(headers).__name__}, not a mapping"
    exact: Headers = {}
    problem = None
    for raw_key, raw_value in list(headers.items()):
        key, value = exact_key(raw_key), exact_value(raw_value)
        if key is None or value is None:
            problem = problem or (
                f"header {raw_key!r} has a {type(raw_key).__name__} key"
                if key is None
                else f"header {key!r} has a {type(raw_value).__name__} value"
            )
            continue
        exact[key] = value
    return exact, problem


_EXACT = (str, int, float, bool)


def exact_id(message_id: Any) -> tuple[str, str | None]:
    """A message id as an exact ``str``, and what was wrong with it (None when nothing)."""
    if type(message_id) is str and message_id:
        return message_id, None
    if isinstance(message_id, str) and message_id:
        return str.__str__(message_id), None
    shown = repr(message_id)[:100]
    return shown, f"its id is a {type(message_id).__name__} ({shown}), not a non-empty string"


def stamp_new(
    message_id: str | None, body: bytes, headers: Headers, ttl_s: float | None = None
) -> Message:
    """Create a fresh message: an id (UUID4 unless given), a ``timestamp`` header and,
    for a queue with a ``ttl``, the time it expires."""
    now = time.time()
    headers[TIMESTAMP] = int(now)
    if ttl_s is not None:
        headers[EXPIRES_AT] = round(now + ttl_s, 3)
    if message_id is None or (type(message_id) is str and not message_id):
        message_id = new_message_id()
    else:
        message_id, problem = exact_id(message_id)
        if problem:
            raise PublishError(f"message_id must be a non-empty string: {problem}")
    return Message(id=message_id, body=body, headers=headers)


def expired(message: Message) -> bool:
    """Whether its queue's ttl has run out (the clock read only for a message with one)."""
    expires_at = message.headers.get(EXPIRES_AT)
    if expires_at is None:  # the common case, decided first
        return False
    if not isinstance(expires_at, _NUMBER) or type(expires_at) is bool:
        return False
    return expires_at < time.time()


_NUMBER = (int, float)
