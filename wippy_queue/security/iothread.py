"""One daemon thread for the policy watcher's blocking work: file looks and loads.

The watcher looks at its files 4 times a second. It used to start a thread per look,
and ``Thread.start()`` blocks its caller, here the event loop, until the new thread
has run: about 0.1 ms on an idle machine, 2 to 6 ms on a busy one, once per file
per look (bench/pauses.py). The thread is now started once and reused.

Never the loop's default executor: a read that hangs (a stalled network file system)
would hold that pool's thread, and a process waits for those at exit, so it could
never stop. A job not answered in time is given up together with its thread: the
next job starts a fresh one, and the stuck thread ends by itself once its job does.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
#: a job: the function, the loop to answer on, the future it answers
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class IoThread:
    """Runs functions one at a time in one reused daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: the running thread's jobs (None: no thread; the next ``run`` starts one)
        self._jobs: queue.SimpleQueue[_Job | None] | None = None

    async def run(self, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()`` in the thread, awaited for at most ``timeout_s``; TimeoutError
        gives the thread up (a fresh one takes the next job)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(jobs,), name=self.name, daemon=True).start()
        jobs.put((fn, loop, done))
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        except TimeoutError:
            self._give_up(jobs)
            raise TimeoutError(
                f"no answer within {timeout_s}s (a file that does not answer?)"
            ) from None

    def close(self) -> None:
        """Let the thread end once its current job (if any) returns."""
        if self._jobs is not None:
            self._give_up(self._jobs)

    def _give_up(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        jobs.put(None)  # the thread ends when it reaches this
        if self._jobs is jobs:
            self._jobs = None


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        fn, loop, done = job
        try:
            result, error = fn(), None
        except BaseException as err:  # handed to the awaiting task
            result, error = None, err
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(_settle, done, result, error)


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():  # given up on (timed out) or cancelled
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)
