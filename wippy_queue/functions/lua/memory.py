"""The per-call memory limit, armed only while Lua code runs.

lupa enforces ``max_memory`` in its allocator. Inside Lua code an allocation over
the limit is an ordinary (catchable) "not enough memory" error, but an allocation
made from the Python side (building a table, pushing a string) outside a protected
Lua call makes Lua PANIC and abort the whole process. So the limit is armed just
before a call into Lua, lifted right after it, and lifted while a module function
(Python, called from Lua) builds values in the state; on the way back it is
restored with some slack so that pushing the results cannot fail. What Python
allocated counts towards the limit: Lua's next allocation fails if it was exceeded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: headroom left after a module function so that returning its results cannot fail
SLACK_BYTES = 256 * 1024


class Memory:
    def __init__(self, runtime: Any, limit_bytes: int) -> None:
        self._runtime = runtime
        self.limit_bytes = limit_bytes
        self._armed = 0  # the current limit in bytes; 0 = lifted

    @property
    def used(self) -> int:
        return int(self._runtime.get_memory_used())

    def arm(self) -> None:
        """Allow the coming call ``limit_bytes`` more than the state holds now."""
        self._armed = self.used + self.limit_bytes
        self._runtime.set_max_memory(self._armed)

    def lift(self) -> None:
        self._armed = 0
        self._runtime.set_max_memory(0)

    @contextmanager
    def unlimited(self) -> Iterator[None]:
        """Let Python allocate in the state (inside a module function called from Lua)."""
        armed = self._armed
        if not armed:
            yield
            return
        self._runtime.set_max_memory(0)
        try:
            yield
        finally:
            self._runtime.set_max_memory(max(armed, self.used + SLACK_BYTES))

    def retained_too_much(self) -> bool:
        """After a full collection, does the state still hold more than one call may use?"""
        if self.used <= self.limit_bytes:
            return False
        self._runtime.gccollect()
        return self.used > self.limit_bytes
