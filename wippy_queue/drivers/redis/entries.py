"""A message as a stream entry, and back: the Redis driver's wire format.

An entry's fields: ``id`` (the message id), ``h`` (its headers, canonical JSON:
``queue/envelope.py``), ``body`` (the codec's bytes) and, on a requeued copy, ``a``
(the attempts it has had). Only ``body`` is required: ``XADD q '*' body '{"n": 1}'``
from any client is a message whose id is the entry id and which has no headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.envelope import decode_headers, encode_headers
from wippy_queue.queue.message import Message


def fields_of(message: Message) -> list[bytes]:
    """The entry's fields and values, flat (as ``XADD`` takes them)."""
    fields = [b"id", message.id.encode(), b"body", message.body]
    if message.headers:
        fields += [b"h", encode_headers(message.headers)]
    return fields


def read_streams(reply: Any) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """The entries of an ``XREADGROUP`` reply on several streams, by stream (in the
    reply's order): RESP3 (a map) or RESP2 (a list of [stream, entries])."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else ((p[0], p[1]) for p in reply)
    out = []
    for stream, entries in pairs:
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        found = []
        for entry_id, flat in entries:
            values = iter(flat or ())
            found.append((entry_id, dict(zip(values, values, strict=False))))
        out.append((name, found))
    return out


@dataclass(slots=True)
class Entry:
    """One stream entry read back: the message, or why it is not one."""

    entry_id: str
    message: Message
    #: attempts it had before this copy was written (0 for a first publish)
    base: int
    malformed: str | None = None


def parse(entry_id: bytes, fields: Mapping[bytes, bytes]) -> Entry:
    """An entry as a message; a malformed one keeps what could be read and says why."""
    key = entry_id.decode()
    body = fields.get(b"body", b"")
    problem = None
    try:
        message_id = fields[b"id"].decode() if b"id" in fields else key
    except UnicodeDecodeError:
        message_id, problem = key, "the message id is not UTF-8"
    headers = {}
    raw = fields.get(b"h")
    if raw is not None:
        try:
            headers = decode_headers(raw)
        except DecodeError as err:
            problem = str(err)
    if b"body" not in fields:
        problem = problem or f"stream entry {key} has no 'body' field"
    try:
        base = int(fields.get(b"a", b"0"))
    except ValueError:
        base, problem = 0, problem or "its attempt count 'a' is not a number"
    return Entry(key, Message(message_id, body, headers), base, problem)
