"""What handler code calls: the current message and publishing under the call context."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from wippy_queue.errors import HandlerError
from wippy_queue.identity import Actor
from wippy_queue.queue import context
from wippy_queue.queue.handle import MessageHandle


def _ctx() -> context.CallContext:
    ctx = context.current()
    if ctx is None or ctx.publisher is None or ctx.loop is None:
        raise HandlerError(
            "no call context: this works only inside a handler run by wippy-queue; "
            "outside one, use runtime.publish(...)"
        )
    return ctx


def current_message() -> MessageHandle:
    """The message the running handler was called for."""
    ctx = context.current()
    if ctx is None or ctx.message is None:
        raise HandlerError("current_message() is only available inside a consumer's handler")
    return ctx.message


def current_actor() -> Actor | None:
    """The actor the running handler acts as (None when its consumer has none)."""
    ctx = context.current()
    return ctx.actor if ctx else None


async def publish_async(queue_id: str, data: Any, headers: Mapping[str, Any] | None = None) -> str:
    """Publish from an async handler, under the handler's actor and policies."""
    ctx = _ctx()
    assert ctx.publisher is not None
    return await ctx.publisher.publish(queue_id, data, headers)


def publish(queue_id: str, data: Any, headers: Mapping[str, Any] | None = None) -> str:
    """Publish from a sync handler (it runs in a worker thread); blocks until enqueued."""
    ctx = _ctx()
    assert ctx.publisher is not None and ctx.loop is not None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # a worker thread: blocking here is fine
    else:
        raise HandlerError("publish() blocks; in an async handler use await publish_async()")
    future = asyncio.run_coroutine_threadsafe(
        context_publish(ctx, queue_id, data, headers), ctx.loop
    )
    return future.result()


async def context_publish(
    ctx: context.CallContext, queue_id: str, data: Any, headers: Mapping[str, Any] | None
) -> str:
    """Publish on the loop thread under ``ctx`` (the caller's context, from another thread)."""
    assert ctx.publisher is not None
    with context.bound(ctx):
        return await ctx.publisher.publish(queue_id, data, headers)
