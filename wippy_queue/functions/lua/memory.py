"""The per-call memory limit: one ceiling for the whole call, armed while Lua runs.

lupa enforces ``max_memory`` in its allocator. Inside Lua code an allocation over
the limit is an ordinary "not enough memory" error (the sandbox makes it end the
call: see prelude.py), but an allocation made from the Python side (building a
table, pushing a string) outside a protected Lua call makes Lua PANIC and abort the
whole process. So the limit is armed just before a call into Lua and lifted right
after it, and lifted while a module function (Python, called from Lua) builds values
in the state. The ceiling itself never moves during a call: what Python allocated
counts towards it, and a module function that went past it (``exceeded``) stops the
call as soon as it returns. On the way back Lua only gets room to take the results.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Lua's own message for a failed allocation
NO_MEMORY = "not enough memory"
#: headroom given back to Lua after a module function, so that returning its results
#: (and stopping the call, if it went over) cannot fail
SLACK_BYTES = 256 * 1024


class Memory:
    def __init__(self, runtime: Any, limit_bytes: int) -> None:
        self._runtime = runtime
        self.limit_bytes = limit_bytes
        self._ceiling = 0  # in bytes, for the running call; 0 = no call

    @property
    def used(self) -> int:
        return int(self._runtime.get_memory_used())

    @property
    def exceeded(self) -> bool:
        """Does the running call hold more than its ceiling (allocations made from Python)?"""
        return 0 < self._ceiling < self.used

    @property
    def left(self) -> int:
        """Bytes the running call may still allocate (unbounded between calls: -1)."""
        return self._ceiling - self.used if self._ceiling else -1

    def arm(self) -> None:
        """Start a call: it may allocate ``limit_bytes`` more than the state holds now."""
        self._ceiling = self.used + self.limit_bytes
        self._runtime.set_max_memory(self._ceiling)

    def lift(self) -> None:
        """End a call (or a load): no ceiling until the next ``arm``."""
        self._ceiling = 0
        self._runtime.set_max_memory(0)

    @contextmanager
    def unlimited(self) -> Iterator[None]:
        """Let Python allocate in the state (inside a module function called from Lua)."""
        ceiling = self._ceiling
        if not ceiling:
            yield
            return
        self._runtime.set_max_memory(0)
        try:
            yield
        finally:
            self._runtime.set_max_memory(max(ceiling, self.used + SLACK_BYTES))

    def retained_too_much(self) -> bool:
        """After a full collection, does the state still hold more than one call may use?"""
        if self.used <= self.limit_bytes:
            return False
        self._runtime.gccollect()
        return self.used > self.limit_bytes
