"""Supervision: start order, stop order, timeouts, restarts with real backoff, startup modes."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import write

from wippy_queue import LifecycleError, Runtime, ServiceState
from wippy_queue.lifecycle import supervisor as supervisor_module
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.lifecycle.config import Lifecycle, RestartPolicy
from wippy_queue.lifecycle.supervisor import Supervised, Supervisor

WAIT_S = 5.0


# -- restart delays ------------------------------------------------------------------


def test_restart_delay_grows_exponentially_up_to_max_delay() -> None:
    policy = RestartPolicy(initial_delay=1.0, backoff_factor=2.0, max_delay=90.0, jitter=0.0)
    delays = [restart_delay(policy, attempt) for attempt in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 90.0, 90.0]

    slow = RestartPolicy(initial_delay=0.5, backoff_factor=3.0, max_delay=10.0, jitter=0.0)
    assert [restart_delay(slow, n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


def test_restart_delay_stays_at_max_delay_however_many_attempts() -> None:
    # max_attempts 0 retries forever: a day of a broker being down is ~1000 restarts
    policy = RestartPolicy(initial_delay=1.0, backoff_factor=2.0, max_delay=90.0, jitter=0.0)
    assert restart_delay(policy, 1_100) == 90.0
    steep = RestartPolicy(initial_delay=1.0, backoff_factor=100.0, max_delay=5.0, jitter=0.5)
    assert 2.5 <= restart_delay(steep, 10**6) <= 5.0


def test_restart_delay_defaults_match_wippy() -> None:
    policy = RestartPolicy()
    assert (policy.initial_delay, policy.max_delay) == (1.0, 90.0)
    assert (policy.backoff_factor, policy.jitter, policy.max_attempts) == (2.0, 0.1, 0)


def test_restart_delay_jitter_stays_within_its_bounds_and_never_past_max_delay() -> None:
    policy = RestartPolicy(initial_delay=1.0, backoff_factor=2.0, max_delay=10.0, jitter=0.25)
    rng = random.Random(1234)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        samples = [restart_delay(policy, attempt, rng) for _ in range(500)]
        assert all(base * 0.75 <= s <= base * 1.25 for s in samples), attempt
        assert max(samples) - min(samples) > base * 0.25  # really spread out
    capped = [restart_delay(policy, 10, rng) for _ in range(500)]
    assert all(7.5 <= s <= 10.0 for s in capped)  # max_delay is a ceiling, jitter included
    assert len(set(capped)) > 1


# -- a fake service ------------------------------------------------------------------


class FakeService:
    """Records starts and stops; can fail to start, hang, or crash while running."""

    def __init__(self, name: str, journal: list[tuple[str, str]], clock: FakeClock) -> None:
        self.name = name
        self.clock = clock
        self.journal = journal
        self.failed: asyncio.Future[BaseException] | None = None
        self.fail_starts = 0  # the next N starts raise
        self.crashes = 0  # the next N successful starts crash right away
        self.hang_start = False
        self.started_at: list[float] = []
        self.events: asyncio.Queue[str] = asyncio.Queue()

    async def start(self) -> None:
        self.journal.append(("start", self.name))
        if self.hang_start:
            await asyncio.Event().wait()
        if self.fail_starts:
            self.fail_starts -= 1
            self.events.put_nowait("start_failed")
            raise RuntimeError(f"{self.name} cannot start")
        loop = asyncio.get_running_loop()
        self.failed = loop.create_future()
        self.started_at.append(self.clock.now())
        self.events.put_nowait("started")
        if self.crashes:
            self.crashes -= 1
            loop.call_soon(self.crash)

    def crash(self) -> None:
        assert self.failed is not None
        self.failed.set_result(RuntimeError(f"{self.name} crashed"))

    async def stop(self) -> None:
        self.journal.append(("stop", self.name))
        self.events.put_nowait("stopped")

    async def next_event(self) -> str:
        async with asyncio.timeout(WAIT_S):
            return await self.events.get()

    async def wait_for(self, event: str) -> None:
        while await self.next_event() != event:
            pass


def lifecycle(**fields: Any) -> Lifecycle:
    fields.setdefault("auto_start", True)
    return Lifecycle.model_validate(fields)


class FakeClock:
    """Time the test moves. ``auto``: a sleep passes at once (virtual time); otherwise a
    sleeper waits until ``advance`` moves the clock past its deadline."""

    def __init__(self, *, auto: bool = True) -> None:
        self.time = 1000.0
        self.auto = auto
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        if self.auto:
            self.time += seconds
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.time + seconds, waiter))
        await waiter

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for deadline, waiter in self._sleepers:
            if deadline <= self.time and not waiter.done():
                waiter.set_result(None)

    @property
    def sleepers(self) -> int:
        """Sleeps still waiting (a cancelled one is not)."""
        return sum(1 for _, waiter in self._sleepers if not waiter.done())


def supervisor(
    *specs: tuple[str, Lifecycle, tuple[str, ...]],
    clock: FakeClock | None = None,
) -> tuple[Supervisor, dict[str, FakeService], list[tuple[str, str]]]:
    """A supervisor over fake services on a fake clock; returns it, the fakes by id, and
    the journal."""
    journal: list[tuple[str, str]] = []
    clock = clock or FakeClock()
    fakes = {sid: FakeService(sid, journal, clock) for sid, _, _ in specs}
    units = {sid: Supervised(sid, fakes[sid], lc, requires) for sid, lc, requires in specs}
    order = [sid for sid, _, _ in specs]
    return Supervisor(units, order, clock), fakes, journal


FAST = {"initial_delay": 0.01, "backoff_factor": 2.0, "max_delay": 0.04, "jitter": 0.0}


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    """Every (attempt, delay) the supervisor asks for, computed by the real function."""
    asked: list[tuple[int, float]] = []

    def recording(policy: RestartPolicy, attempt: int, rng: Any = None) -> float:
        delay = restart_delay(policy, attempt, rng)
        asked.append((attempt, delay))
        return delay

    monkeypatch.setattr(supervisor_module, "restart_delay", recording)
    return asked


# -- order ---------------------------------------------------------------------------


async def test_start_in_dependency_order_and_stop_in_reverse() -> None:
    sup, _fakes, journal = supervisor(
        ("driver", lifecycle(), ()),
        ("consumer_a", lifecycle(), ("driver",)),
        ("consumer_b", lifecycle(), ("driver", "consumer_a")),
        ("manual", lifecycle(auto_start=False), ("driver",)),
    )
    await sup.start_all()
    assert journal == [("start", "driver"), ("start", "consumer_a"), ("start", "consumer_b")]
    assert sup.states() == {
        "driver": ServiceState.RUNNING,
        "consumer_a": ServiceState.RUNNING,
        "consumer_b": ServiceState.RUNNING,
        "manual": ServiceState.UNKNOWN,
    }
    journal.clear()
    await sup.stop_all()
    assert journal == [("stop", "consumer_b"), ("stop", "consumer_a"), ("stop", "driver")]
    assert set(sup.states().values()) == {ServiceState.STOPPED, ServiceState.UNKNOWN}


async def test_start_one_starts_what_it_requires_and_stop_one_stops_its_dependents() -> None:
    sup, _fakes, journal = supervisor(
        ("driver", lifecycle(auto_start=False), ()),
        ("consumer", lifecycle(auto_start=False), ("driver",)),
        ("other", lifecycle(auto_start=False), ()),
    )
    await sup.start("consumer")
    assert journal == [("start", "driver"), ("start", "consumer")]
    journal.clear()
    await sup.stop("driver")
    assert journal == [("stop", "consumer"), ("stop", "driver")]
    with pytest.raises(LifecycleError, match="'nope' is not a service"):
        await sup.start("nope")


ORDER_APP = """
namespace: t
entries:
  - {name: d1, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: d2, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: q, kind: queue.queue, driver: d1}
  - {name: fn, kind: function.python, source: "file://h.py", method: handle}
  - name: a_late
    kind: queue.consumer
    queue: q
    func: fn
    lifecycle:
      auto_start: true
      requires: [z_early]
      depends_on: [d2]
  - name: z_early
    kind: queue.consumer
    queue: q
    func: fn
    lifecycle: {auto_start: true}
"""


class Recorder:
    """Wraps a runtime service to journal its starts and stops."""

    def __init__(self, sid: str, inner: Any, journal: list[tuple[str, str]]) -> None:
        self.sid, self.inner, self.journal = sid, inner, journal

    @property
    def failed(self) -> Any:
        return self.inner.failed

    async def start(self) -> None:
        self.journal.append(("start", self.sid))
        await self.inner.start()

    async def stop(self) -> None:
        self.journal.append(("stop", self.sid))
        await self.inner.stop()


async def test_runtime_orders_by_requires_depends_on_and_references(tmp_path: Path) -> None:
    write(tmp_path / "h.py", "def handle(data):\n    return True\n")
    write(tmp_path / "app.yaml", ORDER_APP)
    runtime = Runtime.load(tmp_path)
    journal: list[tuple[str, str]] = []
    for sid in runtime.states():
        unit = runtime.supervisor.get(sid)
        unit.service = Recorder(sid, unit.service, journal)

    assert set(runtime.supervisor.get("t:a_late").requires) == {"t:d1", "t:d2", "t:z_early"}
    async with runtime:
        starts = [sid for what, sid in journal if what == "start"]
        assert set(starts) == {"t:d1", "t:d2", "t:a_late", "t:z_early"}
        for before, after in [("t:d1", "t:z_early"), ("t:d2", "t:a_late")]:
            assert starts.index(before) < starts.index(after)
        assert starts.index("t:z_early") < starts.index("t:a_late")  # requires beats the name
        assert all(s is ServiceState.RUNNING for s in runtime.states().values())
        journal.clear()
    stops = [sid for what, sid in journal if what == "stop"]
    assert stops == list(reversed(starts))


# -- start failures ------------------------------------------------------------------


async def test_start_timeout_fails_the_start_and_cleans_up() -> None:
    sup, fakes, journal = supervisor(("slow", lifecycle(start_timeout=0.05), ()))
    fakes["slow"].hang_start = True
    with pytest.raises(LifecycleError, match=r"slow failed to start: timed out after 0\.05s"):
        await sup.start("slow")
    assert sup.get("slow").state is ServiceState.FAILED
    assert "timed out" in (sup.get("slow").last_error or "")
    assert journal == [("start", "slow"), ("stop", "slow")]


async def test_required_service_failing_to_start_fails_boot_and_stops_the_rest() -> None:
    sup, fakes, journal = supervisor(
        ("driver", lifecycle(), ()),
        ("broken", lifecycle(), ("driver",)),
        ("after", lifecycle(), ("driver",)),
    )
    fakes["broken"].fail_starts = 1
    with pytest.raises(LifecycleError) as caught:
        await sup.start_all()
    assert "broken" in str(caught.value) and "broken cannot start" in str(caught.value)
    assert ("start", "after") not in journal
    assert sup.get("driver").state is ServiceState.STOPPED
    assert sup.get("broken").state is ServiceState.STOPPED


async def test_optional_service_failing_to_start_does_not_block_boot(
    delays: list[tuple[int, float]],
) -> None:
    sup, fakes, _journal = supervisor(
        ("driver", lifecycle(), ()),
        ("optional", lifecycle(startup="optional", restart=FAST), ()),
        ("after", lifecycle(), ("driver",)),
    )
    fakes["optional"].fail_starts = 2
    await sup.start_all()
    assert sup.get("after").state is ServiceState.RUNNING
    assert sup.get("optional").state is not ServiceState.RUNNING
    # retried in the background with backoff until it starts
    await fakes["optional"].wait_for("started")
    assert sup.get("optional").state is ServiceState.RUNNING
    assert delays == [(1, 0.01), (2, 0.02)]
    await sup.stop_all()
    assert set(sup.states().values()) == {ServiceState.STOPPED}


async def test_an_optional_dependency_retrying_keeps_retrying_after_a_dependent_tried_it(
    delays: list[tuple[int, float]],
) -> None:
    """An optional driver that did not start retries in the background; a consumer's
    start tries it first (replacing that retry) and fails with it: the driver's retries
    go on (before, they were gone, and the driver never came back)."""
    sup, fakes, _journal = supervisor(
        ("driver", lifecycle(startup="optional", restart=FAST), ()),
        ("consumer", lifecycle(startup="optional", restart=FAST), ("driver",)),
    )
    fakes["driver"].fail_starts = 3  # boot, the consumer's try, then one retry
    await sup.start_all()
    await fakes["driver"].wait_for("started")
    assert sup.get("driver").state is ServiceState.RUNNING
    await sup.stop_all()


# -- restarts ------------------------------------------------------------------------


async def test_failed_service_restarts_with_real_exponential_backoff(
    delays: list[tuple[int, float]],
) -> None:
    sup, fakes, _journal = supervisor(("svc", lifecycle(restart=FAST, stable_threshold=3600), ()))
    fake = fakes["svc"]
    fake.crashes = 4
    await sup.start_all()
    for _ in range(5):
        await fake.wait_for("started")
    assert delays == [(1, 0.01), (2, 0.02), (3, 0.04), (4, 0.04)]
    gaps = [b - a for a, b in zip(fake.started_at, fake.started_at[1:], strict=False)]
    for gap, (_, delay) in zip(gaps, delays, strict=True):
        assert gap == pytest.approx(delay)  # it really waited that long
    unit = sup.get("svc")
    assert unit.state is ServiceState.RUNNING
    assert unit.restarts == 4
    assert "svc crashed" in (unit.last_error or "")
    await sup.stop_all()


async def test_restart_attempts_that_fail_to_start_keep_backing_off(
    delays: list[tuple[int, float]],
) -> None:
    sup, fakes, _ = supervisor(("svc", lifecycle(restart=FAST, stable_threshold=3600), ()))
    fake = fakes["svc"]
    await sup.start_all()
    await fake.wait_for("started")
    fake.fail_starts = 2
    fake.crash()
    await fake.wait_for("started")
    assert delays == [(1, 0.01), (2, 0.02), (3, 0.04)]
    assert sup.get("svc").state is ServiceState.RUNNING
    await sup.stop_all()


async def test_max_attempts_gives_up_and_stays_failed(delays: list[tuple[int, float]]) -> None:
    restart = {**FAST, "max_attempts": 2}
    sup, fakes, journal = supervisor(("svc", lifecycle(restart=restart, stable_threshold=3600), ()))
    fake = fakes["svc"]
    fake.crashes = 100
    await sup.start_all()
    for _ in range(3):  # the first start and two restarts
        await fake.wait_for("started")
    unit = sup.get("svc")
    assert unit.watcher is not None
    async with asyncio.timeout(WAIT_S):
        await unit.watcher  # the supervisor gives up: its watcher ends
    assert unit.state is ServiceState.FAILED
    assert [what for what, _ in journal].count("start") == 3
    assert len(delays) == 2
    await sup.stop_all()


async def test_restart_counter_resets_after_a_stable_run(
    delays: list[tuple[int, float]],
) -> None:
    stable_s = 0.2
    clock = FakeClock()
    sup, fakes, _ = supervisor(
        ("svc", lifecycle(restart=FAST, stable_threshold=stable_s), ()), clock=clock
    )
    fake = fakes["svc"]
    fake.crashes = 3  # three quick crashes: the counter grows
    await sup.start_all()
    for _ in range(4):
        await fake.wait_for("started")
    assert [attempt for attempt, _ in delays] == [1, 2, 3]
    clock.advance(stable_s * 1.5)  # a run longer than stable_threshold
    fake.crash()
    await fake.wait_for("started")
    assert [attempt for attempt, _ in delays] == [1, 2, 3, 1]
    assert delays[-1] == (1, 0.01)
    assert sup.get("svc").restarts == 1
    await sup.stop_all()


async def test_stop_cancels_a_pending_restart(delays: list[tuple[int, float]]) -> None:
    slow = {**FAST, "initial_delay": 3600, "max_delay": 3600}
    clock = FakeClock(auto=False)
    sup, fakes, journal = supervisor(("svc", lifecycle(restart=slow), ()), clock=clock)
    fake = fakes["svc"]
    fake.crashes = 1
    await sup.start_all()
    await fake.wait_for("started")
    await fake.wait_for("stopped")  # the supervisor stopped the crashed service
    await asyncio.sleep(0)  # the restart goes to sleep
    assert clock.sleepers == 1
    async with asyncio.timeout(WAIT_S):
        await sup.stop_all()  # does not wait out the hour-long restart delay
    assert clock.sleepers == 0
    assert [what for what, _ in journal].count("start") == 1


async def test_manual_start_during_a_pending_restart_starts_once(
    delays: list[tuple[int, float]],
) -> None:
    clock = FakeClock(auto=False)
    sup, fakes, journal = supervisor(
        ("svc", lifecycle(restart={**FAST, "initial_delay": 0.2, "max_delay": 0.2}), ()),
        clock=clock,
    )
    fake = fakes["svc"]
    fake.crashes = 1
    await sup.start_all()
    await fake.wait_for("started")
    await fake.wait_for("stopped")  # crashed; a restart is due in 0.2s
    await sup.start("svc")  # the operator does not wait for it
    await fake.wait_for("started")
    assert clock.sleepers == 0  # the pending restart was called off
    clock.advance(0.3)  # past the moment it was due
    await asyncio.sleep(0)
    assert [what for what, _ in journal].count("start") == 2  # never started twice
    assert sup.get("svc").state is ServiceState.RUNNING
    await sup.stop_all()


# -- a real consumer, restarted when its driver goes away ----------------------------

RESTART_APP = """
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: fn, kind: function.python, source: "file://h.py", method: handle}
  - name: worker
    kind: queue.consumer
    queue: jobs
    func: fn
    lifecycle:
      auto_start: true
      restart: {initial_delay: 0.01, max_delay: 0.02, jitter: 0}
"""


async def test_consumer_that_fails_while_running_is_restarted(
    tmp_path: Path, delays: list[tuple[int, float]]
) -> None:
    write(tmp_path / "h.py", "def handle(data):\n    return True\n")
    write(tmp_path / "app.yaml", RESTART_APP)
    async with Runtime.load(tmp_path) as runtime:
        driver = runtime.drivers["t:mem"]
        await runtime.publish("t:jobs", {"n": 1})
        await runtime.join("t:jobs", timeout=WAIT_S)

        await driver.stop()  # behind the supervisor's back: the consumer loses its feed

        async def retried_twice() -> bool:
            return len(delays) >= 2

        async with asyncio.timeout(WAIT_S):
            while not await retried_twice():
                await asyncio.sleep(0.005)
        assert runtime.state("t:worker") is not ServiceState.RUNNING
        assert "driver" in (runtime.supervisor.get("t:worker").last_error or "")

        await driver.start()  # the broker is back: the next restart succeeds
        async with asyncio.timeout(WAIT_S):
            while runtime.state("t:worker") is not ServiceState.RUNNING:
                await asyncio.sleep(0.005)
        await runtime.publish("t:jobs", {"n": 2})
        await runtime.join("t:jobs", timeout=WAIT_S)
    assert [attempt for attempt, _ in delays] == list(range(1, len(delays) + 1))
    assert [delay for _, delay in delays] == [0.01] + [0.02] * (len(delays) - 1)
