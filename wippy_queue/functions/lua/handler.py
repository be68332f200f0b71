"""``LuaHandler``: a consumer's pool of Lua states, one per worker thread.

lupa calls are synchronous, so each call runs in a consumer's handler threads (as
sync Python handlers do), with the call context copied in; prefetched calls wait in
the threads' queue and the consumer's ``timeout`` counts from a call's start, not
from when it was queued (see ``Handler.backlog``). In its thread, Lua is
plain blocking code: ``time.sleep`` blocks only that thread and wakes early on
cancellation, ``queue.publish`` hands the publish to the event loop and waits.
lupa releases the GIL while Lua runs, so the loop and other workers keep going.
Each thread lazily builds its own Lua state; no state is ever shared.

A cancelled call normally stops within microseconds (at its next hook, sleep or
publish). One that is still running ``STOP_GRACE_S`` later is stuck in something
the hook cannot reach (a long C function, a module blocked elsewhere): its thread
is abandoned and replaced, so the consumer keeps its capacity, and a warning says so
(see ``HandlerThreads``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from wippy_queue.errors import HandlerError
from wippy_queue.functions.lua.host import CallToken
from wippy_queue.functions.lua.modules import BUILTIN_MODULES, ModuleSpec
from wippy_queue.functions.lua.program import Program
from wippy_queue.functions.lua.state import LuaState
from wippy_queue.functions.threads import HandlerThreads
from wippy_queue.queue import context
from wippy_queue.queue.handler import Handler

log = logging.getLogger(__name__)

#: how long a cancelled call has to stop before its thread is given up on
STOP_GRACE_S = 1.0


class LuaHandler(Handler):
    """One consumer's Lua handler: ``states`` threads, each with its own Lua state."""

    def __init__(
        self,
        program: Program,
        *,
        modules: Mapping[str, ModuleSpec] = BUILTIN_MODULES,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        super().__init__(program.entry_id)
        self.program = program
        self._stop_grace_s = stop_grace_s
        self._modules = modules
        self._threads: HandlerThreads | None = None
        self._local = threading.local()
        self._tokens: set[CallToken] = set()
        self._lock = threading.Lock()
        #: how many Lua states were built (a stopped state is replaced by a new one)
        self.states_built = 0

    async def start(self, *, concurrency: int, timeout_s: float | None = None) -> None:
        """Start the thread pool and build one state now: a chunk that fails to load
        fails the consumer's start instead of nacking every message."""
        if self._threads is not None:
            return
        size = self.program.config.states(concurrency)
        self._local = threading.local()
        name = "lua-" + self.entry_id.replace(":", "-")
        self._threads = HandlerThreads(
            size, name, replace_abandoned=True, timeout_s=timeout_s, grace_s=self._stop_grace_s
        )
        try:
            await self._threads.submit(self._state, timed=False)  # (a load is not a call)
        except BaseException:
            await self.close()
            raise

    def backlog(self, prefetch: int) -> int:
        """Prefetched calls wait in the thread queue, as a plain Python function's do
        (see Handler): a thread that ends a call starts the next without waiting for
        the event loop, and one wake-up of the loop takes many results."""
        return prefetch

    def drop_backlog(self) -> None:
        if self._threads is not None:
            self._threads.cancel_waiting()

    async def close(self) -> None:
        for token in list(self._tokens):
            token.cancel()
        if self._threads is not None:
            self._threads.close()
            self._threads = None

    async def call(self, data: Any) -> Any:
        if self._threads is None:
            raise HandlerError(f"{self.entry_id}: the Lua handler is not started")
        threads = self._threads
        token = CallToken()
        self._tokens.add(token)
        future = threads.submit(self._run, token, data)
        try:
            return await future
        except asyncio.CancelledError:
            token.cancel()  # the Lua call stops at its next hook, sleep or publish
            threads.stopped_waiting(future)  # ...or its thread is given up on after the grace
            raise
        except TimeoutError:  # the pool timed it out (and gives up on it after the grace)
            token.cancel()
            raise
        finally:
            self._tokens.discard(token)

    def check_load(self) -> None:
        """Load the chunk once, as a start will, and drop the state: what a start would
        refuse (a require of a module not listed, no handler function) is then a load
        error that ``validate`` reports, not a failed start."""
        self._new_state()

    def _new_state(self) -> LuaState:
        # a chunk's top level runs outside any message's context
        with context.bound(context.CallContext()):
            return LuaState(self.program, self._modules)

    def _run(self, token: CallToken, data: Any) -> Any:
        state = self._state()
        try:
            return state.call(token, data)
        finally:
            if state.broken:
                self._local.state = None

    def _state(self) -> LuaState:
        state: LuaState | None = getattr(self._local, "state", None)
        if state is not None and state.oversized:
            log.warning(
                "%s: a Lua state kept more than limits.memory_mb between calls; replacing it "
                "(its globals are lost)",
                self.entry_id,
            )
            state = None
        if state is None:
            state = self._new_state()
            self._local.state = state
            with self._lock:
                self.states_built += 1
        return state
