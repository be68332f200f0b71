"""Deliveries handed to a subscription without a task each.

aiormq reads a ``basic.deliver`` and its content frames, then runs the consumer
callback in a new task (with a ``BytesIO`` for the body): a task, its wrapper and
its done-callback per message. A subscription's callbacks are synchronous (they only
buffer the delivery), so on its own consumer channels the driver replaces that one
step (the channel's ``_on_deliver_frame``, looked up on the instance) with this:
the same frames read in the same order, and the callback of the delivery's consumer
tag called directly. The channel also names those consumer tags (``DIRECT_ROUTES``),
so that the connection's reader (``frames.py``) may hand over a delivery already read
with its content. Channels of other code are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from wippy_queue.drivers.amqp.frames import DIRECT_ROUTES, BundledDeliver

Arrived = Callable[[Any], None]


def deliver_directly(raw: Any, routes: dict[str, Arrived]) -> None:
    """Make ``raw`` (an aiormq channel) hand the deliveries of each consumer tag in
    ``routes`` (filled in as consumers start) to its callback as they are read; any
    other consumer's go through the channel's own way."""
    fallback = raw._on_deliver_frame
    get_frame = raw._get_frame

    async def read_content() -> tuple[ContentHeader, bytes]:
        header = await get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"Unexpected frame {header!r} instead of ContentHeader", header)
        size = header.body_size or 0
        parts: list[bytes] = []
        got = 0
        while got < size:
            content = await get_frame()
            if not isinstance(content, ContentBody):
                raise ValueError(f"Unexpected frame {content!r}", content)
            parts.append(content.value)
            got += len(content.value)
        return header, parts[0] if len(parts) == 1 else b"".join(parts)

    async def on_deliver(frame: Basic.Deliver) -> None:
        tag = frame.consumer_tag
        arrived = routes.get(tag) if tag is not None else None
        if arrived is None:
            await fallback(frame)
            return
        if isinstance(frame, BundledDeliver):  # read with its content
            header, body = frame.header, frame.body
        else:
            header, body = await read_content()
        if tag in raw.consumers:  # cancelled meanwhile: the broker takes it back
            arrived(DeliveredMessage(delivery=frame, header=header, body=body, channel=raw))

    raw._on_deliver_frame = on_deliver
    setattr(raw, DIRECT_ROUTES, routes)  # (its reader hands these over with content)
