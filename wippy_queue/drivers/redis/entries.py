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


def read_reply(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an ``XREADGROUP`` reply on one stream: RESP3 (a map of streams)
    or RESP2 (a list of [stream, entries]); None when the read timed out."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (pair[1] for pair in reply)
    out = []
    for entries in streams:
        for entry_id, flat in entries:
            pairs = iter(flat or ())
            out.append((entry_id, dict(zip(pairs, pairs, strict=False))))
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
