"""The runtime: a loaded registry turned into running drivers, queues and consumers.

There is no global runtime: create one with ``Runtime.load(paths)`` and pass it
where it is needed. Handler code reaches the runtime's publisher only through its
call context.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from wippy_queue.audit.config import AuditConfig
from wippy_queue.audit.recorder import AuditRecorder, RecordAttempt
from wippy_queue.audit.trail import AuditTrail
from wippy_queue.errors import ConfigError, HandlerError, Problem
from wippy_queue.lifecycle.config import ServiceModel
from wippy_queue.lifecycle.service import ServiceState
from wippy_queue.lifecycle.supervisor import Supervised, Supervisor
from wippy_queue.loading import Loaded, load
from wippy_queue.plugins import Plugin, Plugins, resolve
from wippy_queue.queue import context
from wippy_queue.queue.checks import refuse_auto_ack_audited
from wippy_queue.queue.codec import get_codec
from wippy_queue.queue.config import ConsumerConfig, QueueConfig
from wippy_queue.queue.consumer import Consumer
from wippy_queue.queue.driver import Driver, QueueInfo, QueueSpec
from wippy_queue.queue.publisher import BoundPublisher, Publisher
from wippy_queue.queue.queue import Queue
from wippy_queue.queue.settle import RetryPolicy
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.loader import load_registry
from wippy_queue.registry.registry import Registry
from wippy_queue.security.manager import Security
from wippy_queue.security.reload import PolicyWatcher

log = logging.getLogger(__name__)


class DriverService:
    """A driver as a supervised service: start it, then declare its queues."""

    def __init__(self, driver: Driver, queues: list[Queue]) -> None:
        self.driver = driver
        self.queues = queues

    @property
    def failed(self) -> asyncio.Future[BaseException] | None:
        """Resolves when the driver gives up on its broker (set by ``start``)."""
        return self.driver.failed

    @property
    def connected(self) -> bool:
        return self.driver.connected

    async def start(self) -> None:
        await self.driver.start()
        for queue in self.queues:
            await self.driver.declare(queue.spec)

    async def stop(self) -> None:
        await self.driver.stop()


class Runtime:
    def __init__(
        self,
        loaded: Loaded,
        *,
        strict: bool | None = None,
        signing_key: str | None = None,
        audit_path: str | os.PathLike[str] | None = None,
        audit_key: str | None = None,
        sources: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        """``sources``: the entry files or folders ``loaded`` was read from; given,
        their ``security.policy`` entries are reloaded when the files change."""
        registry = self.registry = loaded.registry
        self.plugins = loaded.plugins
        if strict or (audit_path is not None and not registry.of_kind("security.audit")):
            # what the entries alone did not say (checked at load): --strict, --audit
            given = "--audit" if audit_path is not None else None
            refused = list(refuse_auto_ack_audited(registry, audit_given=given, strict=strict))
            if refused:
                raise ConfigError(refused)
        self.audit = _audit_trail(registry, audit_path, audit_key)
        self._recorder = AuditRecorder(self.audit) if self.audit else None
        #: a handler never runs before its attempt is recorded
        self._attempts = RecordAttempt(self.audit) if self.audit else None
        recorders = [self._recorder] if self._recorder else []
        self.security = Security(
            registry,
            strict=strict,
            signing_key=signing_key,
            recorders=recorders,
            load_casbin=loaded.casbin.take,
        )
        self.policy_watcher = PolicyWatcher(
            self.security,
            [self._recorder.policy_reload] if self._recorder else [],
            sources=sources,
            entry_digests=registry.files,
            load_entries=partial(load_registry, sources, loaded.kinds) if sources else None,
        )
        self.drivers: dict[str, Driver] = {}
        self.queues: dict[str, Queue] = {}
        self.consumers: dict[str, Consumer] = {}
        self._build_queues()
        self.publisher = Publisher(self.queues, [self.security.publish_guard()])
        self._build_consumers()
        self.supervisor = self._build_supervisor()

    @classmethod
    def load(
        cls,
        *paths: str | os.PathLike[str],
        plugins: Plugins | None = None,
        strict: bool | None = None,
        signing_key: str | None = None,
        audit_path: str | os.PathLike[str] | None = None,
        audit_key: str | None = None,
    ) -> Runtime:
        """Load entry files (or folders of them); raise ConfigError listing every problem.

        ``strict`` (default: the ``security.settings`` entry, else off) denies consumers
        and publishers that have no security block; ``signing_key`` signs provenance;
        ``audit_path`` writes the audit trail there (over a ``security.audit`` entry);
        ``audit_key`` keys its chain (over the entry's ``key``).
        """
        return cls(
            load(paths, plugins),
            strict=strict,
            signing_key=signing_key,
            audit_path=audit_path,
            audit_key=audit_key,
            sources=paths,
        )

    # -- building ---------------------------------------------------------------

    def _build_queues(self) -> None:
        for entry in self.registry:
            plugin = self.plugins.get(entry.kind)
            if plugin.role == "driver":
                self.drivers[entry.id] = resolve(plugin.factory)(entry)
        for entry in self.registry.of_kind("queue.queue"):
            config = _config(entry, QueueConfig)
            driver = self.plugins.get(self.registry.get(config.driver).kind)
            codec = get_codec(config.codec)
            spec = QueueSpec(
                id=entry.id,
                name=config.queue_name or entry.name,
                options=_options(
                    driver.queue_options, config.options_for(driver.options_key or "")
                ),
                max_attempts=config.dead_letter.max_attempts if config.dead_letter else 0,
                dead_letter=config.dead_letter.queue if config.dead_letter else None,
                partitioned=config.partition_by is not None,
                content_type=codec.content_type,
            )
            self.queues[entry.id] = Queue(
                self.drivers[config.driver], codec, spec, partition_by=config.partition_by
            )
        for queue in self.queues.values():
            if queue.spec.dead_letter:
                queue.dead_letter = self.queues[queue.spec.dead_letter]

    def _build_consumers(self) -> None:
        problems = []
        base = context.CallContext(publisher=self.publisher)
        builders: dict[str, Any] = {}  # one per function kind and runtime
        for entry in self.registry.of_kind("queue.consumer"):
            config = _config(entry, ConsumerConfig)
            func = self.registry.get(config.func)
            try:
                builder = builders.get(func.kind)
                if builder is None:
                    builder = builders[func.kind] = resolve(self.plugins.get(func.kind).factory)()
                handler = builder.build(func, self.registry)
            except HandlerError as err:
                problems.append(
                    Problem(str(err), func.location.file, func.location.line, func.id, "source")
                )
                continue
            queue = self.queues[config.queue]
            queue.consumers.append(entry.id)
            driver = self._driver_plugin(queue)
            options = config.driver_options.get(driver.options_key or "", {})
            capabilities = queue.driver.capabilities
            trusted = not (capabilities.shared or capabilities.durable)
            guard = self.security.consume_guard(entry, trusted=trusted)
            security = self.security.consumer_context(entry)
            actor = security["actor"]
            self.consumers[entry.id] = Consumer(
                entry.id,
                queue,
                handler,
                concurrency=config.concurrency,
                prefetch=config.prefetch,
                # bound to this consumer: a handler publishes as it, from anywhere
                base_context=base.evolve(
                    publisher=BoundPublisher(self.publisher, entry.id), **security
                ),
                retry=self._retry_policy(queue),
                driver_options=_options(driver.consumer_options, options),
                # a tenant's consumer reads its tenant's partition only; others read all
                partition=actor.tenant if queue.partition_by and actor else None,
                middlewares=[m for m in (guard, self._attempts) if m is not None],
                settle_hooks=[self._recorder] if self._recorder else [],
                timeout_s=config.timeout,
                stop_timeout_s=config.lifecycle.stop_timeout,
                auto_ack=config.auto_ack,
            )
        if problems:
            raise ConfigError(problems)

    def _driver_plugin(self, queue: Queue) -> Plugin:
        driver_id = _config(self.registry.get(queue.id), QueueConfig).driver
        return self.plugins.get(self.registry.get(driver_id).kind)

    def _retry_policy(self, queue: Queue) -> RetryPolicy:
        backoff = self.security.backoff
        delay = _config(self.registry.get(queue.id), QueueConfig).retry_delay
        return RetryPolicy(
            dead_letter=queue.dead_letter,
            max_attempts=queue.spec.max_attempts,
            deny_initial_s=backoff.initial,
            deny_max_s=backoff.max,
            retry_initial_s=delay.initial,
            retry_max_s=delay.max,
            retry_factor=delay.factor,
            retry_jitter=delay.jitter,
        )

    def _build_supervisor(self) -> Supervisor:
        services: dict[str, Supervised] = {}
        for entry_id, driver in self.drivers.items():
            bound = [q for q in self.queues.values() if q.driver is driver]
            services[entry_id] = self._supervised(entry_id, DriverService(driver, bound))
        for entry_id, consumer in self.consumers.items():
            services[entry_id] = self._supervised(entry_id, consumer)
        for unit in services.values():
            closure = self.registry.closure(unit.id)[:-1]
            unit.requires = tuple(s for s in closure if s in services)
        return Supervisor(services, self.registry.start_order())

    def _supervised(self, entry_id: str, service: Any) -> Supervised:
        config = self.registry.config(entry_id)
        assert isinstance(config, ServiceModel)
        return Supervised(entry_id, service, config.lifecycle)

    # -- running ----------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.start_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_all()

    async def start_all(self) -> None:
        """Open the audit trail, watch policy files, start every ``auto_start`` service."""
        if self.audit is not None:
            await self.audit.open()
        await self.policy_watcher.start()
        try:
            await self.supervisor.start_all()
        except BaseException:
            await self._stop_security()
            raise

    async def stop_all(self) -> None:
        """Stop every service, dependents first, draining consumers gracefully."""
        try:
            await self.supervisor.stop_all()
        finally:
            await self._stop_security()

    async def _stop_security(self) -> None:
        await self.policy_watcher.stop()
        if self.audit is not None:
            await self.audit.close()

    async def start(self, service_id: str) -> None:
        await self.supervisor.start(service_id)

    async def stop(self, service_id: str) -> None:
        await self.supervisor.stop(service_id)

    def state(self, service_id: str) -> ServiceState:
        return self.supervisor.state(service_id)

    def states(self) -> dict[str, ServiceState]:
        return self.supervisor.states()

    async def publish(
        self,
        queue_id: str,
        data: Any,
        headers: Mapping[str, Any] | None = None,
        *,
        message_id: str | None = None,
    ) -> str:
        """Publish from outside any handler; returns the message id."""
        return await self.publisher.publish(queue_id, data, headers, message_id=message_id)

    async def info(self, queue_id: str) -> QueueInfo:
        return await self.publisher.queue(queue_id).info()

    async def join(self, queue_id: str | None = None, *, timeout: float | None = None) -> None:
        """Return once ``queue_id`` (or every queue that has a consumer) is idle.

        Idle means nothing ready, in flight or delayed; raise TimeoutError otherwise.
        """
        if queue_id is not None:
            queues = [self.publisher.queue(queue_id)]
        else:
            queues = [q for q in self.queues.values() if q.consumers]
        async with asyncio.timeout(timeout):
            while True:
                for queue in queues:
                    await queue.driver.wait_idle(queue.name)
                if all([(await q.info()).idle for q in queues]):
                    return


def _options(model: Any, values: dict[str, Any]) -> BaseModel | None:
    """A driver's options model filled from an entry (the loader validated them)."""
    return resolve(model).model_validate(values) if model is not None else None


def _config(entry: Entry, model: type[Any]) -> Any:
    assert isinstance(entry.config, model)
    return entry.config


def _audit_trail(
    registry: Registry, path: str | os.PathLike[str] | None, key: str | None
) -> AuditTrail | None:
    """The trail of the ``security.audit`` entry, or at ``path`` (``--audit``) if given;
    keyed by ``key`` (``--audit-key``), else by the entry's ``key``."""
    entries = registry.of_kind("security.audit")
    config = entries[0].config if entries else None
    assert config is None or isinstance(config, AuditConfig)
    if path is None and config is None:
        return None
    options: dict[str, Any] = {
        "fsync": config.fsync if config else "batch",
        "key": key if key is not None else (config.key if config else None),
        "key_id": config.key_id if config else "default",
    }
    if path is not None:
        return AuditTrail(path, origin="--audit", **options)
    assert config is not None
    entry = entries[0]
    origin = f"{entry.location.file}:{entry.location.line_of('path')}: {entry.id}: path"
    return AuditTrail(config.file(), origin=origin, **options)
