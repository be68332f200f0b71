"""Threads that run synchronous handlers for one consumer.

Cheaper per call than ``ThreadPoolExecutor`` + ``run_in_executor`` (about 60 µs
less here): jobs go through a ``SimpleQueue`` and results come back through a
deque that the event loop drains, woken by one ``call_soon_threadsafe`` for all the
results that arrive before it runs (each wake is a system call on both sides). Each
job runs in a copy of the caller's context, so the call context reaches the handler.
The threads are daemons: a handler that hangs past its timeout cannot keep the
process from exiting.

A thread cannot be stopped from outside, so a call whose caller stopped waiting
(timed out, cancelled) keeps its thread busy until it returns. With
``replace_abandoned=True`` the caller reports that with ``stopped_waiting``: if the
call is still running (``grace_s`` later: a call that can be asked to stop, as a Lua
call can, gets that long to do so), its thread is abandoned (it ends once the call
returns) and a new one takes its place, so ``count`` threads stay free for new work.
Abandoned threads still running are bounded by ``MAX_ABANDONED_PER_THREAD`` x
``count``; past that, nothing is replaced and an error says the process should be
restarted.

Calls may be submitted faster than threads free up: they wait in the queue, and a
thread takes the next one as soon as it is done, without a trip through the event
loop. With ``timeout_s`` a call is timed from when its thread starts it (never while
it waits): one timer on the loop, set for the soonest a running call can run out,
fails a late call with ``TimeoutError`` and gives up on its thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: abandoned threads still running, per thread of the pool, before replacing stops
MAX_ABANDONED_PER_THREAD = 4

_Job = tuple[asyncio.Future[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...]]
_Result = tuple[asyncio.Future[Any], Any, BaseException | None]


class _Worker:
    """One thread and the future of the call it runs (its thread writes ``running``,
    the event loop reads it; ``abandoned`` goes the other way). Ending a call and
    giving up on it are each done under ``lock``: a call that returns just as the loop
    gives up on it either keeps its thread (the loop sees it ended) or ends it (the
    thread sees it abandoned), never neither."""

    __slots__ = ("abandoned", "lock", "running", "started", "thread")

    def __init__(self, run: Callable[[_Worker], None], name: str) -> None:
        self.running: asyncio.Future[Any] | None = None
        #: when the running call started (``time.monotonic``); written before ``running``
        self.started = 0.0
        self.abandoned = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=run, args=(self,), name=name, daemon=True)

    def end_call(self) -> bool:
        """On its thread: the call is over; whether the thread was given up on."""
        with self.lock:
            self.running = None
            return self.abandoned


class HandlerThreads:
    """Made on the event loop that submits to it (each call would otherwise look the
    loop up: a ``getpid`` system call)."""

    def __init__(
        self,
        count: int,
        name: str,
        *,
        replace_abandoned: bool = False,
        timeout_s: float | None = None,
        grace_s: float = 0.0,
    ) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        #: the event loop that submits and the results it has to take
        self._loop = asyncio.get_running_loop()
        self._results: deque[_Result] = deque()
        self._wake_lock = threading.Lock()
        self._woken = False
        self._name = name
        self._count = count
        self._replace = replace_abandoned
        self._numbers = itertools.count()
        self._closed = False
        self._leak_reported = False
        #: the threads taking new jobs (always ``count`` of them)
        self._workers = [self._start_worker() for _ in range(count)]
        #: threads given up on whose call may still be running
        self._abandoned: list[_Worker] = []
        self._timeout_s = timeout_s
        #: how long a call given up on keeps its thread (it may stop by itself meanwhile)
        self._grace_s = grace_s
        #: submitted calls not known to be done, and the timer that times them
        self._timed: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, timed: bool = True) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` in a thread under the caller's context; await the result.
        ``timed=False``: never held to ``timeout_s`` (set-up work, not a handler call)."""
        future = self._loop.create_future()
        self._jobs.put((future, contextvars.copy_context(), fn, args))
        if self._timeout_s is not None and timed:
            self._timed.add(future)
            if self._timer is None:  # nothing submitted now can run out sooner
                self._timer = self._loop.call_later(self._timeout_s, self._watch)
        return future

    def _watch(self) -> None:
        """On the loop: fail the calls running past the timeout; wake again for the
        soonest that can, while any submitted call is not done."""
        self._timer = None
        timeout_s = self._timeout_s
        assert timeout_s is not None
        now = time.monotonic()
        wake_at = now + timeout_s  # a call not started yet runs out no sooner
        for worker in list(self._workers):
            future = worker.running
            started = worker.started  # read after running: it belongs to that call
            if future is None or future.done() or future not in self._timed:
                continue
            if now - started >= timeout_s:
                future.set_exception(TimeoutError(f"the call ran past {timeout_s:g}s"))
                self.stopped_waiting(future)
            else:
                wake_at = min(wake_at, started + timeout_s)
        self._timed = {future for future in self._timed if not future.done()}
        if self._timed and not self._closed:
            self._timer = self._loop.call_later(max(wake_at - now, 0.0), self._watch)

    def cancel_waiting(self) -> None:
        """Cancel the calls no thread has started (their callers see CancelledError)."""
        stops = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stops += 1
            else:
                job[0].cancel()
        for _ in range(stops):  # (a closing pool's stops stay)
            self._jobs.put(None)

    def _done(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> bool:
        """From a thread: hand a result to the loop, waking it unless a wake is pending.
        False when the loop is closed (nobody waits any more)."""
        self._results.append((future, result, error))
        with self._wake_lock:
            if self._woken:
                return True
            self._woken = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            return False
        return True

    def _drain(self) -> None:
        """On the loop: resolve every result handed over so far."""
        with self._wake_lock:
            self._woken = False  # first: a result appended from now on wakes again
        results = self._results
        while results:
            future, result, error = results.popleft()
            if future.done():  # timed out or cancelled meanwhile
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def stopped_waiting(self, future: asyncio.Future[Any]) -> None:
        """Say that nobody waits for ``future`` any more (call from the event loop).

        Only with ``replace_abandoned``: if its call is running (``grace_s`` later,
        when the pool has one), the thread is abandoned and replaced, unless too many
        abandoned threads are still running.
        """
        if not self._replace or self._closed:
            return
        if self._grace_s:
            self._loop.call_later(self._grace_s, self._give_up, future)
        else:
            self._give_up(future)

    def _give_up(self, future: asyncio.Future[Any]) -> None:
        if self._closed:
            return
        for index, worker in enumerate(self._workers):
            if worker.running is future:
                self._abandon(index, worker, future)
                return

    @property
    def abandoned_running(self) -> int:
        """Abandoned threads whose call has not returned yet."""
        self._abandoned = [w for w in self._abandoned if w.thread.is_alive()]
        return len(self._abandoned)

    def _abandon(self, index: int, worker: _Worker, future: asyncio.Future[Any]) -> None:
        name = worker.thread.name
        limit = MAX_ABANDONED_PER_THREAD * self._count
        if self.abandoned_running >= limit:
            if not self._leak_reported:
                self._leak_reported = True
                log.error(
                    "%s: %d abandoned handler threads are still running (limit %d); not "
                    "replacing thread %s: the process is leaking hung handler threads and "
                    "capacity is shrinking; fix the handler and restart the process",
                    self._name,
                    len(self._abandoned),
                    limit,
                    name,
                )
            return
        self._leak_reported = False
        with worker.lock:
            if worker.running is not future:
                return  # it returned meanwhile: its thread takes the next call
            worker.abandoned = True
        self._abandoned.append(worker)
        self._workers[index] = self._start_worker()
        log.warning(
            "%s: a call outlived its caller (timeout or cancel) and still runs in thread %s; "
            "started a replacement, that thread ends when the call returns",
            self._name,
            name,
        )

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._run, f"{self._name}-{next(self._numbers)}")
        worker.thread.start()
        return worker

    def _run(self, worker: _Worker) -> None:
        while (job := self._jobs.get()) is not None:
            future, ctx, fn, args = job
            worker.started = time.monotonic()
            worker.running = future  # before the check: stopped_waiting cannot miss it
            if future.done():  # cancelled before it started
                if worker.end_call():
                    return
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = ctx.run(fn, *args)
            except StopIteration as err:  # (a future refuses it: the call would never end)
                error = RuntimeError(f"the handler raised StopIteration: {err!r}")
                error.__cause__ = err
            except BaseException as err:
                error = err
            abandoned = worker.end_call()
            if not self._done(future, result, error):
                return  # the loop is closed: nobody waits any more
            if abandoned:
                return  # a replacement took this thread's place

    def close(self) -> None:
        """Cancel queued jobs and let the threads end (a running call finishes first)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.cancel_waiting()
        # one stop per thread that may still take a job, abandoned ones included (one
        # abandoned just as its call returned may be waiting for a job); extras are harmless
        for _ in range(len(self._workers) + self.abandoned_running):
            self._jobs.put(None)
