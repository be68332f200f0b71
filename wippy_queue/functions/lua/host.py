"""What the Python side of one Lua state holds for its modules: the running call.

A Lua call runs in a worker thread; cancelling it (the consumer's timeout, or its
stop) happens on the event loop thread. The ``CallToken`` carries that across:
the instruction hook polls it, ``time.sleep`` waits on it, a blocking publish is
cancelled through it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from wippy_queue.errors import SettleError
from wippy_queue.functions.lua.convert import NODE_COST, Converter, ValueTooLarge
from wippy_queue.functions.lua.memory import NO_MEMORY, Memory
from wippy_queue.queue import context
from wippy_queue.queue.handle import MessageHandle

log = logging.getLogger(__name__)

CANCELLED = "cancelled: the handler timed out or its consumer is stopping"


class CallToken:
    """One handler call's cancellation flag, set from any thread (cheap to make: the
    event a sleep waits on is created only when a call sleeps)."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._event: threading.Event | None = None
        self._waiting: concurrent.futures.Future[Any] | None = None

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._event is not None:
                self._event.set()
            if self._waiting is not None:
                self._waiting.cancel()

    def sleep(self, seconds: float) -> bool:
        """Sleep (in the worker thread); True if the call was cancelled meanwhile."""
        with self._lock:
            if self.cancelled:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(seconds)

    def wait_for(self, future: concurrent.futures.Future[Any]) -> Any:
        """Block on ``future`` (from the worker thread) unless the call is cancelled."""
        with self._lock:
            if self.cancelled:
                future.cancel()
            self._waiting = future
        try:
            return future.result()
        finally:
            with self._lock:
                self._waiting = None


class Host:
    """Per Lua state: its converter, memory guard, log, the running call and its messages.

    ``ctl`` is the prelude's control table: a module function that finds the call over
    a limit sets ``ctl.stop`` and the prelude ends the call as the function returns.
    """

    def __init__(
        self, entry_id: str, runtime: Any, converter: Converter, memory: Memory, ctl: Any
    ) -> None:
        self.entry_id = entry_id
        self._ctl = ctl
        self.convert = converter
        self.memory = memory
        self._runtime = runtime
        self.log = logging.getLogger("wippy_queue.lua").getChild(entry_id)
        self._idle = CallToken()  # between calls: never cancelled
        self.token = self._idle
        #: ``queue.message()`` objects of the running call: Lua holds only the number
        self.handles: dict[int, MessageHandle] = {}
        self._next_handle = 0

    def begin(self, token: CallToken) -> None:
        self.token = token
        self.handles.clear()

    def end(self) -> None:
        self.token = self._idle
        self.handles.clear()

    def check(self) -> bool:
        """Called by the instruction hook: should the call stop (it was cancelled)?"""
        return self.token.cancelled

    def guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a module function for Lua: it runs with the memory limit lifted, never
        raises into Lua (its bugs come back as ``false, err``) and returns its values
        packed in one Lua table built before the limit is restored. The values it
        copied are charged to the call; a call it leaves over a limit is stopped."""

        def wrapper(*args: Any) -> Any:
            with self.memory.unlimited():
                over = None
                try:
                    values = fn(*args)
                except ValueTooLarge as err:
                    over = f"{name}: {err}"
                    values = (False, over)
                except Exception as err:
                    log.exception("Lua module function %s failed", name)
                    values = (False, f"{name} failed: {type(err).__name__}: {err}")
                if not isinstance(values, tuple):
                    values = (values,)
                self._settle(over)
                return self._runtime.table_from(values)

        return wrapper

    def _settle(self, over: str | None) -> None:
        """After a module function: charge its copies; stop the call if it went over a
        limit (``over``: a value too large) or was cancelled."""
        copied, self.convert.copied = self.convert.copied, 0
        self._ctl["owed"] = copied * NODE_COST
        if self.memory.exceeded:
            over = NO_MEMORY
        elif self.token.cancelled:
            over = over or CANCELLED
        if over and not self._ctl["stop"]:
            self._ctl["stop"] = over

    def add_handle(self, handle: MessageHandle) -> int:
        self._next_handle += 1
        self.handles[self._next_handle] = handle
        return self._next_handle

    def fields(self) -> dict[str, Any]:
        """The call context as log fields: function, consumer, message and actor."""
        out: dict[str, Any] = {"function": self.entry_id}
        ctx = context.current()
        if ctx is None:
            return out
        if ctx.consumer:
            out["consumer"] = ctx.consumer
        if ctx.message is not None:
            with contextlib.suppress(SettleError):  # released: not ours to read any more
                out["message_id"] = ctx.message.id
        if ctx.actor is not None:
            out["actor_id"] = ctx.actor.id
        return out
