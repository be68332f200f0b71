"""A message on SQS: how id, typed headers and body bytes ride in one SQS message.

SQS carries a text body and at most 10 message attributes, typed String, Number or
Binary (no bool), so headers do not ride as attributes one by one. The format
(version 1), in the README too:

- ``MessageBody``: the body itself when it is UTF-8 text of characters SQS accepts
  (XML 1.0 characters, CR excepted); otherwise its standard base64, and the attribute
  ``wq-body`` (String) says ``base64``.
- ``wq-id`` (String): the message id.
- ``wq-headers`` (String): the headers as the canonical envelope JSON
  (``queue/envelope.py``: sorted keys, no spaces, so ``1``, ``1.0`` and ``true`` stay
  distinct); absent when there are none.

Three attributes, whatever the number of headers; any other attribute is ignored.
An SQS message without ``wq-id`` (a plain ``SendMessage`` from any client) is read
as id = SQS's MessageId, no headers, body = the text's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from wippy_queue.errors import DriverError
from wippy_queue.queue.codec import DecodeError
from wippy_queue.queue.envelope import decode_headers, encode_headers
from wippy_queue.queue.message import Message

ID = "wq-id"
HEADERS = "wq-headers"
BODY = "wq-body"
BASE64 = "base64"
ATTRIBUTE_NAMES = (ID, HEADERS, BODY)

#: characters SQS refuses in a body or a String attribute (outside XML 1.0's Char), and
#: CR, which an XML hop may turn into LF: such text goes as base64
_NOT_XML = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DEDUP_ID = re.compile(r"[!-~]{1,128}")
_STRING = "String"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message as SQS takes it, and its size as SQS counts it (body + attributes)."""

    message_id: str
    body: str
    attributes: dict[str, dict[str, str]]
    size: int

    def entry(self, entry_id: str, fifo_group: str | None) -> dict[str, Any]:
        """A SendMessageBatch entry."""
        entry: dict[str, Any] = {
            "Id": entry_id,
            "MessageBody": self.body,
            "MessageAttributes": self.attributes,
        }
        if fifo_group is not None:
            entry["MessageGroupId"] = fifo_group
            entry["MessageDeduplicationId"] = deduplication_id(self.message_id)
        return entry


def _text(data: bytes) -> str | None:
    """``data`` as text SQS carries unchanged, or None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return None if _NOT_XML.search(text) else text


def _string(value: str) -> dict[str, str]:
    return {"DataType": _STRING, "StringValue": value}


def encode(message: Message) -> Outgoing:
    """``message`` as SQS takes it; DriverError for an id SQS cannot carry."""
    if not message.id or _NOT_XML.search(message.id):
        raise DriverError(f"message id {message.id!r} has characters SQS cannot carry")
    attributes = {ID: _string(message.id)}
    if message.headers:
        headers = encode_headers(message.headers).decode()
        if _NOT_XML.search(headers):  # escaped, the same headers in characters SQS takes
            headers = json.dumps(message.headers, sort_keys=True, separators=(",", ":"))
        attributes[HEADERS] = _string(headers)
    body = _text(message.body)
    if body is None:
        body = base64.b64encode(message.body).decode("ascii")
        attributes[BODY] = _string(BASE64)
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name) + len(_STRING) + len(value["StringValue"].encode())
    return Outgoing(message.id, body, attributes, size)


def _attribute(raw: dict[str, Any], name: str) -> str | None:
    value = (raw.get("MessageAttributes") or {}).get(name)
    if value is None:
        return None
    string = value.get("StringValue")
    if not isinstance(string, str):
        raise DecodeError(f"SQS attribute {name} is not a String")
    return string


def decode(raw: dict[str, Any]) -> Message:
    """The message in a ReceiveMessage result; DecodeError when our attributes are broken."""
    text = raw.get("Body", "")
    message_id = _attribute(raw, ID)
    if message_id is None:  # from another SQS client: its body, no headers
        return Message(str(raw["MessageId"]), text.encode(), {})
    headers_text = _attribute(raw, HEADERS)
    headers = decode_headers(headers_text) if headers_text is not None else {}
    encoding = _attribute(raw, BODY)
    if encoding is None:
        body = text.encode()
    elif encoding == BASE64:
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise DecodeError(f"the base64 body of message {message_id} is broken: {err}") from err
    else:
        raise DecodeError(f"message {message_id}: unknown body encoding {encoding!r}")
    return Message(message_id, body, headers)


def deduplication_id(message_id: str) -> str:
    """A FIFO queue's MessageDeduplicationId for ``message_id`` (its sha256 if it won't do)."""
    if _DEDUP_ID.fullmatch(message_id):
        return message_id
    return hashlib.sha256(message_id.encode()).hexdigest()
