"""The pause finder's probe: what ran on the event loop, and when (bench/pauses.py).

``Probe.installed()`` records, for the block it wraps: every garbage collection
(``gc.callbacks``: generation, wall and thread CPU time, objects collected, and for a
full collection how many objects it walked), every loop callback that ran at least
``slow_ns`` (``asyncio.Handle._run`` wrapped), every audit fsync; ``Probe.sample`` is
the loop-lag sampler (sleep 1 ms, record how late). ``cause`` names what overlapped
a lag. bench/ is not a package: ``import loopprobe`` from the scripts' folder.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: the loop-lag sampler's sleep
SAMPLE_S = 0.001


@dataclass(frozen=True)
class Event:
    """Something that took time: a collection, a slow callback, an fsync (ns)."""

    kind: str
    start_ns: int
    duration_ns: int
    what: str
    #: CPU time the thread spent meanwhile (-1: not measured); far below the duration,
    #: the OS ran something else (the machine's other load) for the rest
    cpu_ns: int = -1

    @property
    def ran(self) -> str:
        if self.cpu_ns < 0:
            return ""
        return f", ran {min(1.0, self.cpu_ns / max(1, self.duration_ns)):.0%}"

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


@dataclass(frozen=True)
class Lag:
    """One lag sample: the sleep began at ``start_ns``; woke ``lag_ns`` late; the
    loop's thread spent ``cpu_ns`` of CPU time over the whole sample."""

    start_ns: int
    lag_ns: int
    cpu_ns: int

    @property
    def end_ns(self) -> int:
        return self.start_ns + round(SAMPLE_S * 1e9) + self.lag_ns


@dataclass
class Probe:
    slow_ns: int
    gcs: list[Event] = field(default_factory=list)
    slow: list[Event] = field(default_factory=list)
    fsyncs: list[Event] = field(default_factory=list)
    lags: list[Lag] = field(default_factory=list)
    _gc_start: int = 0
    _walked: int = 0
    _gc_cpu: int = 0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if info["generation"] == 2:  # how many objects it walks (counted off the clock)
                self._walked = sum(len(gc.get_objects(g)) for g in range(3))
            self._gc_start = time.perf_counter_ns()
            self._gc_cpu = time.thread_time_ns()
            return
        now = time.perf_counter_ns()
        cpu = time.thread_time_ns() - self._gc_cpu
        what = f"gen{info['generation']} collected {info['collected']}"
        if info["generation"] == 2:
            what += f" of {self._walked:,} objects"
        self.gcs.append(Event("gc", self._gc_start, now - self._gc_start, what, cpu))

    async def sample(self) -> None:
        """Sleep 1 ms over and over; record how late each wake-up was."""
        while True:
            start, cpu = time.perf_counter_ns(), time.thread_time_ns()
            await asyncio.sleep(SAMPLE_S)
            end = time.perf_counter_ns()
            lag = end - start - round(SAMPLE_S * 1e9)
            self.lags.append(Lag(start, lag, time.thread_time_ns() - cpu))

    @contextmanager
    def installed(self) -> Iterator[None]:
        """gc callbacks, timed loop callbacks and timed audit fsyncs, for the block."""
        from wippy_queue.audit import trail

        handle_run = asyncio.events.Handle._run
        sync_data = trail._sync_data
        slow_ns, slow = self.slow_ns, self.slow

        def timed_run(handle: asyncio.Handle) -> None:
            start, cpu = time.perf_counter_ns(), time.thread_time_ns()
            handle_run(handle)
            took = time.perf_counter_ns() - start
            if took >= slow_ns:
                cpu = time.thread_time_ns() - cpu
                slow.append(Event("callback", start, took, describe(handle), cpu))

        def timed_sync(fd: int) -> None:
            start = time.perf_counter_ns()
            sync_data(fd)
            self.fsyncs.append(Event("fsync", start, time.perf_counter_ns() - start, "fsync"))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
        trail._sync_data = timed_sync
        gc.callbacks.append(self.on_gc)
        try:
            yield
        finally:
            gc.callbacks.remove(self.on_gc)
            asyncio.events.Handle._run = handle_run  # type: ignore[method-assign]
            trail._sync_data = sync_data


def describe(handle: asyncio.Handle) -> str:
    """What a loop callback was: the task's coroutine, or the callback's name."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {owner.get_name()}: {getattr(coro, '__qualname__', coro)}"
    return getattr(callback, "__qualname__", repr(callback))


# -- attribution ----------------------------------------------------------------------


def overlap(lag: Lag, event: Event) -> int:
    return max(0, min(lag.end_ns, event.end_ns) - max(lag.start_ns, event.start_ns))


def cause(lag: Lag, probe: Probe) -> str:
    """The collections and slow callbacks inside a pause, biggest first; or, when
    they cover less than half of it, whether the thread ran at all meanwhile."""
    found = [(overlap(lag, e), e) for e in [*probe.gcs, *probe.slow] if overlap(lag, e) > 0]
    found.sort(key=lambda pair: -pair[0])
    gc_ns = sum(ns for ns, e in found if e.kind == "gc")
    parts = [f"{e.what} {ns / 1e6:.1f} ms{e.ran}" for ns, e in found if e.kind == "gc"][:3]
    # a collection runs inside some callback: name the callback when it is not all gc
    parts += [
        f"{e.what} {ns / 1e6:.1f} ms{e.ran}"
        for ns, e in found
        if e.kind == "callback" and ns > gc_ns * 1.2 and "sample" not in e.what
    ][:2]
    covered = max([gc_ns, *(ns for ns, e in found if e.kind == "callback")], default=0)
    if covered < lag.lag_ns / 2:
        ran = lag.cpu_ns / max(1, lag.lag_ns + round(SAMPLE_S * 1e9))
        parts.append(f"loop thread ran {ran:.0%} of the time (the rest: OS, other processes)")
    return "; ".join(parts) or "unattributed"
