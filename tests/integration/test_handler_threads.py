"""Sync handlers that hang past their timeout: their thread is replaced, so the
consumer keeps its capacity; the hung thread ends when its call returns."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import backends
import pytest
import yaml
from conftest import handler_plugins, write

from wippy_queue import Runtime
from wippy_queue.functions.threads import MAX_ABANDONED_PER_THREAD, HandlerThreads

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

WAIT_S = 5.0
JOBS = "t:jobs"
THREADS_LOG = "wippy_queue.functions.threads"


def app(tmp_path: Path, handler: Any, *, timeout_s: float) -> Runtime:
    """Queue ``t:jobs`` (dead letters to ``t:dead`` after one attempt) consumed by
    ``t:worker`` at concurrency 1, calling ``handler`` with ``timeout_s``."""
    backend = backends.current()
    document = {
        "version": "1.0",
        "namespace": "t",
        "entries": [
            backend.driver_entry("mem"),
            backend.queue_entry("jobs", dead_letter={"queue": "dead", "max_attempts": 1}),
            backend.queue_entry("dead"),
            # the source is a placeholder: the test's callable is injected below
            {"name": "fn", "kind": "function.python", "source": "builtins:print"},
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "jobs",
                "func": "fn",
                "concurrency": 1,
                "timeout": timeout_s,
                "lifecycle": {"auto_start": True},
            },
        ],
    }
    path = write(tmp_path / "app.yaml", yaml.safe_dump(document, sort_keys=False))
    return Runtime.load(path, plugins=handler_plugins(handler))


async def test_a_hung_sync_handler_does_not_stall_its_consumer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    entered = threading.Event()
    second_done = threading.Event()
    hung: list[threading.Thread] = []
    handled: list[tuple[int, str]] = []

    def handler(data: Any) -> Any:
        if data["n"] == 1:
            hung.append(threading.current_thread())
            entered.set()
            release.wait(WAIT_S)  # hangs far past the consumer's timeout
            return True
        handled.append((data["n"], threading.current_thread().name))
        second_done.set()
        return True

    caplog.set_level(logging.WARNING, logger=THREADS_LOG)
    try:
        async with app(tmp_path, handler, timeout_s=0.2) as runtime:
            first = await runtime.publish(JOBS, {"n": 1})
            assert await asyncio.to_thread(entered.wait, WAIT_S)
            await runtime.publish(JOBS, {"n": 2})
            # concurrency 1 and the first call still running: the second is handled anyway
            assert await asyncio.to_thread(second_done.wait, WAIT_S)
            (thread,) = hung
            assert thread.is_alive()
            ((n, handled_in),) = handled
            assert (n, handled_in != thread.name) == (2, True)

            await runtime.join(JOBS, timeout=WAIT_S)
            (dead,) = await backends.waiting(runtime, "t:dead", expect=1)
            assert (dead.id, dead.headers["x_dead_letter_reason"]) == (first, "timeout")
    finally:
        release.set()
    # the abandoned thread ends once its call returns
    await asyncio.to_thread(thread.join, WAIT_S)
    assert not thread.is_alive()
    warnings = [r for r in caplog.records if r.name == THREADS_LOG]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "t:fn" in warnings[0].getMessage()
    assert thread.name in warnings[0].getMessage()


# -- HandlerThreads directly -----------------------------------------------------------


class Hang:
    """A call that blocks until released and says when it started and in which thread."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.started = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self) -> str:
        self.thread = threading.current_thread()
        self.started.set()
        self.release.wait(WAIT_S)
        return "late"


def where() -> str:
    return threading.current_thread().name


def hung_call(
    threads: HandlerThreads, release: threading.Event
) -> tuple[Hang, asyncio.Future[Any]]:
    """A call that blocks ``threads``' thread until ``release``, once it has started."""
    hang = Hang(release)
    future = threads.submit(hang)
    assert hang.started.wait(WAIT_S)
    return hang, future


async def give_up(threads: HandlerThreads, future: asyncio.Future[Any]) -> None:
    """What a caller whose timeout fired does: cancel the future, say so."""
    future.cancel()
    threads.stopped_waiting(future)


async def test_a_call_given_up_on_gets_its_thread_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    threads = HandlerThreads(1, "unit", replace_abandoned=True)
    try:
        hang, hung = hung_call(threads, release)
        await give_up(threads, hung)
        assert threads.abandoned_running == 1

        async with asyncio.timeout(WAIT_S):
            name = await threads.submit(where)
        assert hang.thread is not None
        assert name.startswith("unit-")
        assert name != hang.thread.name
        (record,) = [r for r in caplog.records if r.name == THREADS_LOG]
        assert record.levelno == logging.WARNING
        assert hang.thread.name in record.getMessage()
    finally:
        release.set()
        threads.close()
    assert hang.thread is not None
    await asyncio.to_thread(hang.thread.join, WAIT_S)
    assert not hang.thread.is_alive()
    assert threads.abandoned_running == 0


async def test_without_the_flag_a_thread_is_never_replaced() -> None:
    """Lua handlers bind a state per thread: the pool keeps its threads."""
    release = threading.Event()
    threads = HandlerThreads(1, "fixed")
    try:
        hang, hung = hung_call(threads, release)
        await give_up(threads, hung)
        assert threads.abandoned_running == 0
        queued = threads.submit(where)
        release.set()
        async with asyncio.timeout(WAIT_S):
            name = await queued
        assert hang.thread is not None
        assert name == hang.thread.name
    finally:
        release.set()
        threads.close()


async def test_a_call_given_up_on_before_it_started_never_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    ran: list[str] = []
    threads = HandlerThreads(1, "queued", replace_abandoned=True)
    try:
        hang, busy = hung_call(threads, release)
        queued = threads.submit(ran.append, "ran")
        await give_up(threads, queued)
        assert threads.abandoned_running == 0  # nothing was running it: no replacement
        release.set()
        async with asyncio.timeout(WAIT_S):
            assert await busy == "late"
            name = await threads.submit(where)
        assert hang.thread is not None
        assert name == hang.thread.name
    finally:
        release.set()
        threads.close()
    assert ran == []
    assert not [r for r in caplog.records if r.name == THREADS_LOG]


async def test_replacing_stops_at_the_bound_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    threads = HandlerThreads(1, "leaky", replace_abandoned=True)
    hangs: list[Hang] = []
    try:
        # each hung thread is replaced up to the bound; the one past it is not
        for _ in range(MAX_ABANDONED_PER_THREAD + 1):
            hang, future = hung_call(threads, release)
            hangs.append(hang)
            await give_up(threads, future)
        assert threads.abandoned_running == MAX_ABANDONED_PER_THREAD
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "leaking hung handler threads" in errors[0].getMessage()
        assert "restart" in errors[0].getMessage()

        # the unreplaced thread still serves once its call returns
        release.set()
        async with asyncio.timeout(WAIT_S):
            assert (await threads.submit(where)).startswith("leaky-")
    finally:
        release.set()
        threads.close()
    for hang in hangs:
        assert hang.thread is not None
        await asyncio.to_thread(hang.thread.join, WAIT_S)
        assert not hang.thread.is_alive()
    assert threads.abandoned_running == 0


async def test_a_timed_call_runs_out_from_its_start_and_frees_its_thread() -> None:
    """With ``timeout_s`` the pool times its calls: the hung one fails with
    TimeoutError and its thread is replaced; the one queued behind it, which waited
    longer than the timeout before it started, runs to its end."""
    release = threading.Event()
    threads = HandlerThreads(1, "timed", replace_abandoned=True, timeout_s=0.2)
    try:
        hang = Hang(release)
        hung = threads.submit(hang)
        queued = threads.submit(where)
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(TimeoutError, match=r"ran past 0\.2s"):
                await hung
            name = await queued
        assert hang.thread is not None
        assert name != hang.thread.name  # it ran on the replacement
        assert threads.abandoned_running == 1
    finally:
        release.set()
        threads.close()


async def test_a_call_raising_stop_iteration_fails_instead_of_never_ending() -> None:
    """``next()`` on an empty iterator in a plain handler: a future refuses
    StopIteration, so the call fails with an error saying so (before, it never ended,
    and the results behind it in the same hand-over waited with it)."""
    threads = HandlerThreads(1, "stop-iteration")
    try:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(RuntimeError, match="StopIteration"):
                await threads.submit(next, iter(()))
            assert await threads.submit(len, "abc") == 3
    finally:
        threads.close()


async def test_a_call_returning_as_it_is_given_up_on_leaves_every_thread_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timed-out call that returns between the loop's look at its thread and the
    thread's replacement: its thread either keeps its place or ends, and every call
    after is timed (before, it went on taking calls beside its replacement, unwatched,
    so a call that hung there was never timed out)."""
    returned, hang = threading.Event(), threading.Event()
    threads = HandlerThreads(1, "race", replace_abandoned=True, timeout_s=0.1)
    looked = HandlerThreads.abandoned_running

    def returns_meanwhile(self: HandlerThreads) -> int:  # read between the two looks
        returned.set()
        deadline = time.monotonic() + WAIT_S
        while any(w.running is not None for w in self._workers):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        return looked.fget(self)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(HandlerThreads, "abandoned_running", property(returns_meanwhile))
    try:
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(TimeoutError):
                await threads.submit(returned.wait, WAIT_S)
        monkeypatch.undo()
        calls = [threads.submit(hang.wait, WAIT_S) for _ in range(2)]
        async with asyncio.timeout(1.0):  # each times out after 0.1 s of running
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
    finally:
        hang.set()
        threads.close()


async def test_cancel_waiting_cancels_only_the_calls_not_started() -> None:
    release = threading.Event()
    threads = HandlerThreads(1, "waiting")
    try:
        _, running = hung_call(threads, release)
        waiting = [threads.submit(where) for _ in range(3)]
        threads.cancel_waiting()
        assert all(future.cancelled() for future in waiting)
        release.set()
        async with asyncio.timeout(WAIT_S):
            assert await running == "late"
    finally:
        release.set()
        threads.close()


async def test_an_untimed_call_outlives_the_timeout_of_the_calls_beside_it() -> None:
    """Set-up work (a Lua handler's first state) is submitted ``timed=False``: the timer
    that fails a handler call running past ``timeout_s`` leaves it alone."""
    release = threading.Event()
    threads = HandlerThreads(2, "setup", replace_abandoned=True, timeout_s=0.1)
    try:
        setup = Hang(release)
        untimed = threads.submit(setup, timed=False)
        assert await asyncio.to_thread(setup.started.wait, WAIT_S)
        hang = Hang(release)
        timed = threads.submit(hang)
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(TimeoutError, match=r"ran past 0\.1s"):
                await timed  # the set-up call has run longer than that by now
            release.set()
            assert await untimed == "late"
    finally:
        release.set()
        threads.close()
