"""Publishing: validate, stamp, intercept (security), encode, enqueue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from wippy_queue.errors import PublishError
from wippy_queue.queue import context
from wippy_queue.queue.message import Message, stamp_new, user_headers
from wippy_queue.queue.queue import Queue


class PublishInterceptor(Protocol):
    """Runs before a message is enqueued; may refuse it (raise) or add reserved headers."""

    async def before_publish(
        self, ctx: context.CallContext | None, queue: Queue, message: Message
    ) -> None: ...


def _is_empty(data: Any) -> bool:
    if data is None:
        return True
    if isinstance(data, str | bytes | dict | list | tuple):
        return len(data) == 0
    return False


class Publisher:
    def __init__(
        self, queues: Mapping[str, Queue], interceptors: Sequence[PublishInterceptor] = ()
    ) -> None:
        self._queues = queues
        self._interceptors = tuple(interceptors)

    def queue(self, queue_id: str) -> Queue:
        try:
            return self._queues[queue_id]
        except KeyError:
            known = ", ".join(sorted(self._queues)) or "none"
            raise PublishError(f"no queue {queue_id!r}; known queues: {known}") from None

    async def publish(
        self,
        queue_id: str,
        data: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> str:
        """Publish ``data`` to ``queue_id`` under the current call context; return its id."""
        queue = self.queue(queue_id)
        if _is_empty(data):
            raise PublishError(f"refusing to publish empty data {data!r} to {queue_id}")
        headers = user_headers(headers)
        message = stamp_new(message_id, queue.codec.encode(data), headers, queue.ttl_s)
        if self._interceptors:
            ctx = context.current()
            for interceptor in self._interceptors:
                await interceptor.before_publish(ctx, queue, message)
        await queue.put(message)
        return message.id
