"""The wire format: a ``Message`` as an AMQP message and back (documented in the README).

- body: the codec's bytes; ``content_type``: the codec's MIME type;
  ``message_id``: the message id; ``delivery_mode`` 2 (persistent).
- the AMQP headers table: the message headers, for any AMQP client to read; and,
  because the table cannot keep every value exactly (its floats are 32-bit as our
  client writes them, its integers 64-bit), the canonical header JSON of
  ``queue/envelope.py`` in the ``x-wq-headers`` header. A message that has it is
  read from it; one without it (published by another client) from the table.
- ``x-wq-attempts``: attempts counted before this copy was published (a delayed
  nack or a release republishes; the broker counts the copy afresh).
- ``x-wq-id``: the id, when it is longer than AMQP's 255-byte ``message_id``.

Table keys starting ``x-`` are AMQP's and the broker's (``x-delivery-count``,
``x-death``) and ours: they never enter ``Message.headers``.
"""

from __future__ import annotations

import datetime
import decimal
import logging
import math
from collections.abc import Mapping
from typing import Any

from pamqp.commands import Basic

from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.envelope import decode_headers, encode_headers
from wippy_queue.queue.message import Headers, Message, new_message_id

log = logging.getLogger(__name__)

HEADERS = "x-wq-headers"
ATTEMPTS = "x-wq-attempts"
LONG_ID = "x-wq-id"
DELIVERY_COUNT = "x-delivery-count"
PERSISTENT = 2
MAX_SHORTSTR = 255
_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32_MAX = 3.4028234663852886e38


def _table_value(value: Any) -> Any:
    """A header value as the table holds it (None: leave it out of the table)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, float) and abs(value) > _FLOAT32_MAX:
        return str(value)  # the table's floats are 32-bit (the exact value: x-wq-headers)
    return value


def table_of(message: Message, carried: int = 0) -> dict[str, Any]:
    """The AMQP headers table for ``message`` with ``carried`` attempts counted before."""
    table: dict[str, Any] = {
        k: _table_value(v) for k, v in message.headers.items() if not k.startswith("x-")
    }
    table[HEADERS] = encode_headers(message.headers).decode()
    if carried:
        table[ATTEMPTS] = carried
    if len(message.id) * 4 > MAX_SHORTSTR and len(message.id.encode()) > MAX_SHORTSTR:
        table[LONG_ID] = message.id
    return table


def properties_of(message: Message, content_type: str | None, carried: int = 0) -> Basic.Properties:
    """Basic properties of ``message`` (persistent, typed, identified)."""
    table = table_of(message, carried)
    return Basic.Properties(
        content_type=content_type,
        delivery_mode=PERSISTENT,
        message_id=None if LONG_ID in table else message.id,
        headers=table,
    )


def recarried(properties: Basic.Properties, carried: int) -> Basic.Properties:
    """``properties`` of a received message for a republished copy with ``carried``."""
    table = dict(properties.headers or {})
    table.pop(DELIVERY_COUNT, None)
    for key in [k for k in table if k.startswith(("x-death", "x-first-death", "x-last-death"))]:
        del table[key]
    if carried:
        table[ATTEMPTS] = carried
    else:
        table.pop(ATTEMPTS, None)
    return Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        delivery_mode=PERSISTENT,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        app_id=properties.app_id,
        headers=table,
    )


def _foreign_value(key: str, value: Any) -> Any:
    """A table value from another client as a header value (None: not representable)."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return None


def headers_of(table: Mapping[str, Any] | None) -> Headers:
    """Message headers from a received table: the exact copy if ours, else the table."""
    if not table:
        return {}
    exact = table.get(HEADERS)
    if isinstance(exact, bytes | bytearray):
        exact = bytes(exact).decode(errors="replace")
    if isinstance(exact, str):
        try:
            return decode_headers(exact)
        except DecodeError as err:
            log.warning("message header %s is unreadable (%s); using the table", HEADERS, err)
    headers: Headers = {}
    for key, value in table.items():
        if key.startswith("x-"):
            continue
        converted = _foreign_value(key, value)
        if converted is None:
            log.debug("header %r: a %s value is not a header value; left out", key, type(value))
            continue
        headers[key] = converted
    return headers


def carried_of(table: Mapping[str, Any] | None) -> int:
    value = table.get(ATTEMPTS) if table else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def delivery_count_of(table: Mapping[str, Any] | None) -> int:
    value = table.get(DELIVERY_COUNT) if table else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def message_of(properties: Basic.Properties, body: bytes) -> Message:
    """The message a received AMQP message carries."""
    table = properties.headers
    message_id: Any = properties.message_id
    if table and isinstance(table.get(LONG_ID), str):
        message_id = table[LONG_ID]
    if not message_id:
        message_id = new_message_id()  # another client's message without an id
    elif isinstance(message_id, bytes):
        message_id = message_id.decode(errors="replace")
    return Message(message_id, body, headers_of(table))
