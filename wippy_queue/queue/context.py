"""The call context: who is calling, under which policies, for which message.

It is the ONE place that touches the context-variable library
(contextvars-extras' ``ContextVarsRegistry``), so that replacing it is a one-file
change. Everything a handler calls (a publish, a nested function, a sync handler in
the thread pool) sees the same context; each message gets its own, so nothing
leaks between messages or between concurrent workers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from contextvars_extras import ContextVarsRegistry

from wippy_queue.identity import Actor, Decision, Request

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from wippy_queue.queue.handle import MessageHandle

T = TypeVar("T")


class Checker(Protocol):
    """What the context needs of a security scope: a decision for a request."""

    def check(self, request: Request) -> Decision: ...


class Publishes(Protocol):
    """What a handler's publish goes through (the runtime's Publisher)."""

    async def publish(
        self,
        queue_id: str,
        data: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> str: ...


class CallContext(NamedTuple):
    """Immutable; derive a changed copy with ``evolve``.

    A named tuple rather than a frozen dataclass: one is made per message, and a
    frozen dataclass's ``__init__`` costs 2 µs (``object.__setattr__`` per field)
    where a tuple costs 0.4.
    """

    publisher: Publishes | None = None
    loop: asyncio.AbstractEventLoop | None = None
    actor: Actor | None = None
    scope: Checker | None = None  # the consumer's policies, when it has a security block
    checked: bool = False  # True when the security block applies to this call
    message: MessageHandle | None = None
    consumer: str | None = None
    trace_id: str | None = None

    def evolve(self, **changes: Any) -> CallContext:
        return self._replace(**changes)

    def for_message(self, message: MessageHandle, trace_id: str) -> CallContext:
        """``evolve(message=..., trace_id=...)`` at a tuple's cost (per message)."""
        return _new_tuple(
            CallContext,
            (self[0], self[1], self[2], self[3], self[4], message, self[6], trace_id),
        )


_new_tuple = tuple.__new__


class _Vars(ContextVarsRegistry):  # type: ignore[misc]
    call: CallContext | None = None


_CALL: Any = _Vars.call  # the ContextVarDescriptor (set/get/reset)
#: its ContextVar, read directly where it is read per message (a third of the cost)
_CALL_GET = _CALL.context_var.get
#: and set directly where it is set per message (two thirds of the descriptor's cost)
_CALL_SET = _CALL.context_var.set


def current() -> CallContext | None:
    """The call context of the running handler, or None outside any."""
    return _CALL_GET(None)  # type: ignore[no-any-return]


class bound:
    """Run the block under ``ctx``; the previous context is restored afterwards.

    A plain class rather than ``@contextmanager``: it runs once per message.
    """

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx

    def __enter__(self) -> CallContext:
        self._token = _CALL.set(self._ctx)
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        _CALL.reset(self._token)


def fresh(base: contextvars.Context, call: CallContext) -> contextvars.Context:
    """A copy of ``base`` with ``call`` bound: a message's own context."""
    ctx = base.copy()
    ctx.run(_CALL_SET, call)
    return ctx


class run_in(Generic[T]):
    """Await ``coro`` with every step of it run inside ``ctx``.

    Like running it as a task created with ``context=ctx``, without the cost of a
    task per message: the awaiting task drives the coroutine, each resumption
    inside ``ctx``. Cancellation and exceptions pass through as with ``await``.
    """

    __slots__ = ("_coro", "_ctx")

    def __init__(self, ctx: contextvars.Context, coro: Coroutine[Any, Any, T]) -> None:
        self._ctx = ctx
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, T]:
        run, coro = self._ctx.run, self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = run(coro.send, value) if error is None else run(coro.throw, error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                value, error = (yield yielded), None
            except BaseException as err:  # cancellation or a throw: hand it to the coroutine
                value, error = None, err
