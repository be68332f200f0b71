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

A call still running a whole ``timeout`` after its cancellation is cancelled again,
and again: Python 3.11's ``asyncio.wait_for`` (inside redis-py and others) drops a
cancellation that lands as its inner future completes, and a handler that then hangs
would otherwise hold its worker until the consumer stops. (A handler that catches
the cancellation to clean up gets that ``timeout`` for it.)
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
        #: tasks cancelled by the timer whose call has not ended yet: how many times,
        #: and when to cancel again (in the order they ran out)
        self._expired: dict[asyncio.Task[Any], tuple[int, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, task: asyncio.Task[Any]) -> None:
        deadline = self._loop.time() + self.timeout_s
        self._running[task] = deadline
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def end(self, task: asyncio.Task[Any]) -> int:
        """The call is over: how many times its task was cancelled because its time ran
        out (0: it did not), for the caller to ``uncancel`` that many."""
        if self._running.pop(task, None) is not None:
            return 0
        cancels, _ = self._expired.pop(task, (0, 0.0))
        return cancels

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        expired, again_s = self._expired, self.timeout_s
        for task, (cancels, again_at) in list(expired.items()):
            if again_at > now:
                break  # (in order: the rest are due later still)
            del expired[task]  # (re-added last: the order stays that of their times)
            expired[task] = (cancels + 1, now + again_s)
            task.cancel()  # still running: the last cancellation did not reach it
        running = self._running
        while running:
            task, deadline = next(iter(running.items()))
            if deadline > now:  # the oldest still has time
                break
            del running[task]
            expired[task] = (1, now + again_s)
            task.cancel()
        # wake for the oldest running call's deadline or the first cancel due again
        wake = [next(iter(running.values()))] if running else []
        if expired:
            wake.append(next(iter(expired.values()))[1])
        if wake:
            self._timer = self._loop.call_at(min(wake), self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running.clear()
        self._expired.clear()
