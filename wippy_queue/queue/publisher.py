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


#: (a tuple: ``str | bytes | ...`` would build a union at every publish, 1 µs)
_SIZED = (str, bytes, dict, list, tuple)


def _is_empty(data: Any) -> bool:
    if data is None:
        return True
    if isinstance(data, _SIZED):
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
        queue = self._queues.get(queue_id) or self.queue(queue_id)
        if not (type(data) is dict and data) and _is_empty(data):  # (a call saved per dict)
            raise PublishError(f"refusing to publish empty data {data!r} to {queue_id}")
        headers = user_headers(headers)
        message = stamp_new(message_id, queue.codec.encode(data), headers, queue.ttl_s)
        if self._interceptors:
            ctx = context.current()
            for interceptor in self._interceptors:
                await interceptor.before_publish(ctx, queue, message)
        await queue.put(message)
        return message.id


class BoundPublisher:
    """The publisher a consumer's handlers find in their call context, bound to that
    consumer: a publish made through it is checked, stamped and recorded under the
    consumer's actor and policies wherever it is made from — its handler's own call
    context, or a task or thread the handler started without it (a fresh
    ``contextvars.Context``, ``threading.Thread``, ``run_in_executor``). Never as
    nobody: leaving the call context does not leave the consumer's security."""

    def __init__(self, publisher: Publisher, consumer: str) -> None:
        self._publisher = publisher
        self.consumer = consumer
        #: the consumer's own call context (actor, policies), set when it starts
        self.home: context.CallContext | None = None

    def queue(self, queue_id: str) -> Queue:
        return self._publisher.queue(queue_id)

    async def publish(
        self,
        queue_id: str,
        data: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> str:
        ctx = context.current()
        if ctx is not None and ctx.consumer == self.consumer and ctx.publisher is self:
            return await self._publisher.publish(queue_id, data, headers, message_id=message_id)
        if self.home is None:
            raise PublishError(f"consumer {self.consumer} is not running: it cannot publish")
        with context.bound(self.home):
            return await self._publisher.publish(queue_id, data, headers, message_id=message_id)
