"""The supervisor: dependency order, start/stop timeouts, restarts with real backoff.

A service that dies while running is restarted after ``restart_delay`` (growing
by ``backoff_factor`` up to ``max_delay``); the attempt counter resets once a run
lasted ``stable_threshold``; after ``max_attempts`` restarts (0 = forever) it
stays FAILED. At boot a ``required`` service that cannot start fails the boot; an
``optional`` one is retried in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from wippy_queue.errors import LifecycleError
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.lifecycle.clock import Clock, SystemClock
from wippy_queue.lifecycle.config import Lifecycle
from wippy_queue.lifecycle.service import Service, ServiceState

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Supervised:
    id: str
    service: Service
    lifecycle: Lifecycle
    #: services that must run before this one (transitively, through queues)
    requires: tuple[str, ...] = ()
    state: ServiceState = ServiceState.UNKNOWN
    restarts: int = 0
    last_error: str | None = None
    started_at: float = 0.0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self, services: Mapping[str, Supervised], order: list[str], clock: Clock | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self._services = dict(services)
        self._order = [s for s in order if s in self._services]

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._services

    def get(self, service_id: str) -> Supervised:
        try:
            return self._services[service_id]
        except KeyError:
            known = ", ".join(self._order) or "none"
            raise LifecycleError(f"{service_id!r} is not a service; services: {known}") from None

    def states(self) -> dict[str, ServiceState]:
        return {sid: self.state(sid) for sid in self._order}

    def state(self, service_id: str) -> ServiceState:
        """The service's state; RUNNING shows as RECONNECTING while its broker is away."""
        unit = self.get(service_id)
        if unit.state is ServiceState.RUNNING and not getattr(unit.service, "connected", True):
            return ServiceState.RECONNECTING
        return unit.state

    async def start_all(self) -> None:
        for sid in self._order:
            unit = self._services[sid]
            if not unit.lifecycle.auto_start or unit.state is ServiceState.RUNNING:
                continue
            try:
                await self.start(sid)
            except LifecycleError as err:
                if unit.lifecycle.startup == "optional":
                    log.warning("optional service %s did not start: %s; retrying", sid, err)
                    unit.watcher = asyncio.create_task(self._restart(unit))
                    continue
                await self.stop_all()
                raise

    async def start(self, service_id: str) -> None:
        """Start ``service_id`` and, first, every service it requires."""
        unit = self.get(service_id)
        for dep in unit.requires:
            if self._services[dep].state is not ServiceState.RUNNING:
                await self.start(dep)
        if unit.state is not ServiceState.RUNNING:
            retrying = unit.watcher is not None
            await self._cancel_watcher(unit)  # a pending restart: this start replaces it
            try:
                await self._start_one(unit)
            except LifecycleError:
                if retrying:  # (it failed too: the retries it replaced go on, or none would)
                    unit.watcher = asyncio.create_task(self._restart(unit))
                raise

    async def _start_one(self, unit: Supervised) -> None:
        unit.state = ServiceState.STARTING
        timeout_s = unit.lifecycle.start_timeout
        try:
            async with asyncio.timeout(timeout_s or None):
                await unit.service.start()
        except Exception as err:
            unit.state = ServiceState.FAILED
            reason = f"timed out after {timeout_s}s" if isinstance(err, TimeoutError) else err
            unit.last_error = f"{type(err).__name__}: {reason}"
            with contextlib.suppress(Exception):
                await unit.service.stop()
            raise LifecycleError(f"service {unit.id} failed to start: {reason}") from err
        unit.state = ServiceState.RUNNING
        unit.started_at = self._clock.now()
        log.info("service %s running", unit.id, extra={"fields": {"service": unit.id}})
        if unit.service.failed is not None:
            unit.watcher = asyncio.create_task(self._watch(unit), name=f"watch:{unit.id}")

    async def _watch(self, unit: Supervised) -> None:
        assert unit.service.failed is not None
        err = await unit.service.failed
        unit.state = ServiceState.FAILED
        unit.last_error = f"{type(err).__name__}: {err}"
        log.error("service %s failed: %s", unit.id, err)
        with contextlib.suppress(Exception):
            await unit.service.stop()
        await self._restart(unit)

    async def _restart(self, unit: Supervised) -> None:
        policy = unit.lifecycle.restart
        if (
            unit.started_at
            and self._clock.now() - unit.started_at >= unit.lifecycle.stable_threshold
        ):
            unit.restarts = 0
        while True:
            unit.restarts += 1
            if policy.max_attempts and unit.restarts > policy.max_attempts:
                unit.state = ServiceState.FAILED
                log.error("service %s: giving up after %d restarts", unit.id, policy.max_attempts)
                return
            delay_s = restart_delay(policy, unit.restarts)
            log.warning("service %s: restart %d in %.2fs", unit.id, unit.restarts, delay_s)
            await self._clock.sleep(delay_s)
            try:
                await self._start_one(unit)
                return
            except LifecycleError as err:
                log.error("%s", err)

    async def stop(self, service_id: str) -> None:
        """Stop ``service_id`` and, first, every running service that requires it."""
        unit = self.get(service_id)
        for other in reversed(self._order):
            if service_id in self._services[other].requires:
                await self.stop(other)
        await self._stop_one(unit)

    async def _cancel_watcher(self, unit: Supervised) -> None:
        if unit.watcher is not None:
            unit.watcher.cancel()
            try:
                await unit.watcher
            except asyncio.CancelledError:
                # the watcher's own cancellation is swallowed, never ours: a stop that is
                # itself cancelled (a second Ctrl-C) must not carry on gracefully
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            unit.watcher = None

    async def _stop_one(self, unit: Supervised) -> None:
        await self._cancel_watcher(unit)
        if unit.state not in (ServiceState.RUNNING, ServiceState.FAILED, ServiceState.STARTING):
            return
        unit.state = ServiceState.STOPPING
        try:
            await unit.service.stop()
        except Exception as err:
            unit.state = ServiceState.FAILED
            unit.last_error = str(err)
            raise LifecycleError(f"service {unit.id} did not stop cleanly: {err}") from err
        unit.state = ServiceState.STOPPED
        log.info("service %s stopped", unit.id, extra={"fields": {"service": unit.id}})

    async def stop_all(self) -> None:
        """Stop everything in reverse start order; report every failure at the end."""
        errors = []
        for sid in reversed(self._order):
            try:
                await self._stop_one(self._services[sid])
            except LifecycleError as err:
                errors.append(str(err))
        if errors:
            raise LifecycleError("; ".join(errors))
