"""``wippy-queue run``: start the runtime on entry files, publish, stop on a signal.

Exit codes: 0 a clean stop (a signal, ``--until-idle``, ``--timeout``); 1 bad
configuration, a failed start, or a ``--publish`` refused; 2 a usage error; 3
``--until-idle`` timed out; 130 (SIGINT) or 143 (SIGTERM) a second signal stopped it
at once, without waiting for running handlers.

Its arguments are parsed by ``cli_args``; this module is imported when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

from wippy_queue.audit.config import given_key
from wippy_queue.errors import PublishError, WippyQueueError
from wippy_queue.lifecycle.service import ServiceState
from wippy_queue.queue import context
from wippy_queue.queue.config import ConsumerConfig
from wippy_queue.queue.message import user_headers
from wippy_queue.runtime import Runtime
from wippy_queue.security.manager import actor_of, policies_of

log = logging.getLogger("wippy_queue.cli")

# -- what --publish sends ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    queue_id: str
    data: Any


def prepare(runtime: Runtime, args: argparse.Namespace) -> tuple[list[Publish], Any]:
    """The publishes, their queues resolved, and the call context they run in; a
    PublishError says what is wrong before any service starts."""
    publishes = []
    for queue_id, data in args.publish:
        resolved = _queue_id(runtime, queue_id)
        if data is None or (isinstance(data, str | list | dict) and not data):
            # the publisher refuses it too, but only once everything has started
            raise PublishError(f"--publish {queue_id}: refusing to publish empty data {data!r}")
        publishes.append(Publish(resolved, data))
    try:  # reserved or empty keys are refused here, not once everything has started
        user_headers(dict(args.header))
    except PublishError as err:
        raise PublishError(f"--header: {err}") from None
    return publishes, _actor_context(runtime, args.as_actor)


def _queue_id(runtime: Runtime, written: str) -> str:
    """``written``, or the one loaded queue named so when it gives no namespace."""
    named = [q for q in runtime.queues if q.partition(":")[2] == written]
    if written in runtime.queues or ":" in written or not named:
        try:
            return runtime.publisher.queue(written).id
        except PublishError as err:  # no such queue: it lists the known ones
            raise PublishError(f"--publish {written}: {err}") from None
    if len(named) > 1:
        raise PublishError(
            f"--publish {written}: several queues are named so ({', '.join(sorted(named))}); "
            "give the namespace"
        )
    return named[0]


def _actor_context(runtime: Runtime, actor_id: str | None) -> context.CallContext | None:
    """The call context of the consumers that run as ``actor_id`` (their actor and
    policies), for publishes checked like theirs; None without ``--as``."""
    if actor_id is None:
        return None
    registry = runtime.registry
    found: dict[tuple[str, ...], str] = {}
    actors = set()
    for entry in registry.of_kind("queue.consumer"):
        assert isinstance(entry.config, ConsumerConfig)
        block = entry.config.lifecycle.security
        actor = actor_of(block)
        if actor is None or block is None:
            continue
        actors.add(actor.id)
        if actor.id == actor_id:
            key = (repr(sorted(actor.meta.items())), *policies_of(registry, block))
            found.setdefault(key, entry.id)
    if not found:
        known = ", ".join(sorted(actors)) or "none"
        raise PublishError(f"--as {actor_id}: no consumer runs as that actor; actors: {known}")
    if len(found) > 1:
        raise PublishError(
            f"--as {actor_id}: consumers {', '.join(sorted(found.values()))} run as that actor "
            "with different meta or policies; give them one, or one actor id each"
        )
    consumer = registry.get(next(iter(found.values())))
    return context.CallContext(publisher=runtime.publisher).evolve(
        **runtime.security.consumer_context(consumer)
    )


async def publish_all(
    runtime: Runtime, publishes: list[Publish], headers: dict[str, str], ctx: Any
) -> None:
    for item in publishes:
        if ctx is None:
            message_id = await runtime.publish(item.queue_id, item.data, headers)
        else:
            with context.bound(ctx.evolve(loop=asyncio.get_running_loop())):
                message_id = await runtime.publish(item.queue_id, item.data, headers)
        fields = {"message_id": message_id, "queue": item.queue_id}
        log.info("published", extra={"fields": fields})


# -- running and stopping ------------------------------------------------------------------


class Stopper:
    """Signals: the first stops gracefully (saying what is drained), the second at once
    (saying what is given back), by cancelling the graceful stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.stop = asyncio.Event()
        self.hurried: signal.Signals | None = None
        self._stopping: asyncio.Task[None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    async def stop_all(self) -> None:
        """Stop the runtime gracefully, or at once if a second signal came or comes;
        CancelledError when it was cut short."""
        self._stopping = asyncio.create_task(self.runtime.stop_all())
        if self.hurried is not None:  # after its first step, so that it cleans up
            asyncio.get_running_loop().call_soon(self._stopping.cancel)
        await self._stopping

    def _held(self) -> str:
        held = {cid: c.held for cid, c in self.runtime.consumers.items() if c.held}
        return ", ".join(f"{cid} {n}" for cid, n in held.items()) or "none"

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            self.stop.set()
            log.warning(
                "%s received: stopping gracefully: no new deliveries; unsettled messages "
                "(by consumer: %s) finish within each consumer's stop_timeout or go back to "
                "their queues; %s again stops at once",
                sig.name,
                self._held(),
                sig.name,
            )
        elif self.hurried is None:
            self.hurried = sig
            log.warning(
                "%s again: stopping at once; running handlers are cut off and their messages "
                "(by consumer: %s) go back to their queues unsettled",
                sig.name,
                self._held(),
            )
            if self._stopping is not None:
                self._stopping.cancel()


async def run(args: argparse.Namespace) -> int:
    runtime = Runtime.load(
        *args.paths,
        strict=args.strict or None,
        audit_path=args.audit,
        audit_key=given_key(args.audit_key),
    )
    publishes, ctx = prepare(runtime, args)  # a refused command says only why
    for warning in runtime.registry.warnings:  # what validate says, said at start too
        log.warning("%s", warning)
    stopper = Stopper(runtime)
    stopper.install()
    try:
        code = await _run_until_stopped(runtime, stopper, publishes, ctx, args)
    finally:
        stopper.uninstall()
    await _report_discarded(runtime)
    return code


async def _run_until_stopped(
    runtime: Runtime, stopper: Stopper, publishes: list[Publish], ctx: Any, args: Any
) -> int:
    await runtime.start_all()
    freeze_startup_heap()
    try:
        _warn_if_nothing_starts(runtime)
        await publish_all(runtime, publishes, dict(args.header), ctx)
        code = await _wait(runtime, stopper.stop, args)
    finally:
        try:
            await stopper.stop_all()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if stopper.hurried is None or (task is not None and task.cancelling()):
                raise
            code = 128 + stopper.hurried.value
    return code


def freeze_startup_heap() -> None:
    """Move every object alive once the services have started into the collector's
    permanent generation (``gc.freeze``), after collecting what is already garbage.

    Why: a full (generation 2) collection walks every tracked object, and most of
    them are the start-up heap (modules, pydantic models, Casbin, the registry: some
    40,000 objects) that lives as long as the process. Each full collection stopped
    the event loop for 17-35 ms under a 50,000-message backlog (bench/pauses.py);
    frozen, they are no longer walked and it takes at most 3.5 ms. Frozen objects are still
    freed by reference counting; only a cycle among start-up objects that later becomes
    garbage (a policy replaced by a reload, a connection replaced by a reconnect) is
    kept, once. Here and not in ``Runtime``: the process is ours only in ``run``; a
    program that embeds a Runtime decides about its own collector.
    """
    gc.collect()
    gc.freeze()


def _warn_if_nothing_starts(runtime: Runtime) -> None:
    states = runtime.states()
    if ServiceState.RUNNING in states.values():
        return
    idle = (ServiceState.UNKNOWN, ServiceState.STOPPED)  # never started, or stopped
    waiting = sorted(s for s, state in states.items() if state not in idle)
    if waiting:  # (started, and failed or retrying: their own lines said why)
        log.warning("nothing runs yet: %s did not start (see above)", ", ".join(waiting))
    else:
        log.warning("no service has lifecycle.auto_start: true, so nothing runs; set it")


async def _wait(runtime: Runtime, stop: asyncio.Event, args: argparse.Namespace) -> int:
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if args.until_idle:
        waiters.append(asyncio.create_task(runtime.join()))
    done, pending = await asyncio.wait(
        waiters, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    if not done and args.until_idle:
        print(f"wippy-queue: not idle after {args.timeout}s; stopping", file=sys.stderr)
        return 3
    return 0


async def _report_discarded(runtime: Runtime) -> None:
    """A driver that is not durable keeps messages in this process only: say what goes."""
    counts = {}
    for queue in runtime.queues.values():
        if queue.driver.capabilities.durable:
            continue
        try:
            count = (await runtime.info(queue.id)).message_count
        except WippyQueueError:
            continue
        if count:
            counts[queue.id] = count
    if counts:
        listed = ", ".join(f"{qid} {n}" for qid, n in counts.items())
        log.warning(
            "%d message(s) still in memory-driver queues are discarded with the process (%s); "
            "a durable driver keeps them",
            sum(counts.values()),
            listed,
        )
