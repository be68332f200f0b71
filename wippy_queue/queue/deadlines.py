"""A consumer's handler time limit (``timeout``): one timer for all its workers.

``asyncio.timeout`` around each call costs about 4 µs (a timer in the loop's heap,
made and cancelled; the current task looked up, which is a ``getpid`` system call):
a quarter of a message's whole cost. A consumer's calls all have the same limit, so
their deadlines fall in the order the calls began: the running calls in one ordered
dict and a single timer, set for the oldest, do the same work for a dict write and
a pop per call.

A call whose time runs out has its task cancelled, as ``asyncio.timeout`` does; the
caller turns that cancellation into ``TimeoutError`` unless the task was also
cancelled by someone else (a stop), which then wins. The timer runs on the event
loop, so it can only cancel a task that is suspended, and a task is in the dict only
while it awaits its handler call: the cancellation lands in that call.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Deadlines:
    __slots__ = ("_expired", "_loop", "_running", "_timer", "timeout_s")

    def __init__(self, timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self.timeout_s = timeout_s
        self._loop = loop
        #: task -> deadline (loop time), in the order the calls began
        self._running: dict[asyncio.Task[Any], float] = {}
        #: tasks cancelled by the timer whose call has not ended yet
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, task: asyncio.Task[Any]) -> None:
        deadline = self._loop.time() + self.timeout_s
        self._running[task] = deadline
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def end(self, task: asyncio.Task[Any]) -> bool:
        """The call is over; True if its time ran out (its task was cancelled for it)."""
        if self._running.pop(task, None) is not None:
            return False
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        running = self._running
        while running:
            task, deadline = next(iter(running.items()))
            if deadline > now:  # the oldest still has time: wake for it
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del running[task]
            self._expired.add(task)
            task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running.clear()
        self._expired.clear()
