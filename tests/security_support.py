"""Helpers for the security tests: entry builders, recording handlers, a decision recorder.

Handlers here are loaded by the runtime as ``security_support:<name>`` (the tests
folder is on ``sys.path``); they report into ``STATE``, which each test resets.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backends
import yaml

from wippy_queue import PermissionDenied, PublishError, Runtime, current_actor, current_message
from wippy_queue.identity import Decision, Request
from wippy_queue.queue import api
from wippy_queue.queue.message import Message

NAMESPACE = "app"
SIGNING_KEY = "test-signing-key-0123456789"

#: set by ``leaky_*`` handlers and never reset: the next message must not see it
LEAK: contextvars.ContextVar[str | None] = contextvars.ContextVar("security_leak", default=None)


@dataclass
class Seen:
    """What one handler call saw of its own call context."""

    data: Any
    message_id: str
    actor: str | None
    tenant: str | None
    headers: dict[str, Any]
    thread: int
    leaked: str | None = None


@dataclass
class State:
    seen: list[Seen] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    barrier: asyncio.Barrier | None = None
    mismatches: list[str] = field(default_factory=list)


STATE = State()


def reset() -> State:
    global STATE
    STATE = State()
    return STATE


def _observe(data: Any) -> Seen:
    message = current_message()
    actor = current_actor()
    seen = Seen(
        data=data,
        message_id=message.id,
        actor=actor.id if actor else None,
        tenant=actor.tenant if actor else None,
        headers=message.headers(),
        thread=threading.get_ident(),
        leaked=LEAK.get(),
    )
    if message.data != data:
        STATE.mismatches.append(f"handler got {data!r} but current_message() is {message.data!r}")
    STATE.seen.append(seen)
    return seen


# -- handlers (``security_support:<name>``) ---------------------------------------------


async def record_async(data: Any) -> bool:
    _observe(data)
    return True


async def fail_async(data: Any) -> bool:
    raise RuntimeError(f"handler refuses {data!r}")


def record_sync(data: Any) -> bool:
    _observe(data)
    return True


async def interleave(data: Any) -> bool:
    """Wait until every worker is inside a handler, then check the context is still ours."""
    before = _observe(data)
    assert STATE.barrier is not None
    await STATE.barrier.wait()
    message, actor = current_message(), current_actor()
    if message.id != before.message_id or (actor.id if actor else None) != before.actor:
        STATE.mismatches.append(f"{data!r}: context changed across an await")
    return True


async def leaky_async(data: Any) -> bool:
    _observe(data)
    LEAK.set(f"left by {data!r}")
    return True


def leaky_sync(data: Any) -> bool:
    _observe(data)
    LEAK.set(f"left by {data!r}")
    return True


def _forward_args(data: dict[str, Any]) -> tuple[str, Any, dict[str, Any] | None]:
    return data["target"], data["payload"], data.get("headers")


async def forward_async(data: dict[str, Any]) -> bool:
    """Publish ``payload`` to ``target`` under this consumer's actor; record the outcome."""
    _observe(data)
    try:
        STATE.published.append(await api.publish_async(*_forward_args(data)))
    except (PermissionDenied, PublishError) as err:
        STATE.errors.append(err)
    return True


def forward_sync(data: dict[str, Any]) -> bool:
    _observe(data)
    try:
        STATE.published.append(api.publish(*_forward_args(data)))
    except (PermissionDenied, PublishError) as err:
        STATE.errors.append(err)
    return True


# -- entries ------------------------------------------------------------------------------


def driver(name: str = "mem") -> dict[str, Any]:
    """The driver entry of the test's backend (see ``backends``)."""
    return backends.current().driver_entry(name)


def queue(
    name: str, *, dead: str | None = None, max_attempts: int = 3, partition_by: str | None = None
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if partition_by:
        fields["partition_by"] = partition_by
    if dead:
        fields["dead_letter"] = {"queue": dead, "max_attempts": max_attempts}
    return backends.current().queue_entry(name, **fields)


def func(name: str, handler: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "function.python",
        "source": f"security_support:{handler or name}",
    }


def consumer(
    name: str,
    queue: str,
    func: str,
    *,
    actor: str | None = None,
    tenant: str | None = None,
    policies: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    secured: bool = True,
    concurrency: int = 1,
    prefetch: int = 10,
    auto_start: bool = True,
) -> dict[str, Any]:
    lifecycle: dict[str, Any] = {"auto_start": auto_start}
    if secured:
        security: dict[str, Any] = {"policies": list(policies), "groups": list(groups)}
        if actor is not None:
            meta = {"tenant": tenant} if tenant else {}
            security["actor"] = {"id": actor, "meta": meta}
        lifecycle["security"] = security
    return {
        "name": name,
        "kind": "queue.consumer",
        "queue": queue,
        "func": func,
        "concurrency": concurrency,
        "prefetch": prefetch,
        "lifecycle": lifecycle,
    }


def rule(
    name: str,
    actions: str | list[str],
    resources: str | list[str],
    effect: str = "allow",
    *,
    conditions: list[dict[str, Any]] | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    policy: dict[str, Any] = {"actions": actions, "resources": resources, "effect": effect}
    if conditions:
        policy["conditions"] = conditions
    entry: dict[str, Any] = {"name": name, "kind": "security.policy", "policy": policy}
    if groups:
        entry["groups"] = groups
    return entry


def settings(**fields: Any) -> dict[str, Any]:
    return {"name": "settings", "kind": "security.settings", **fields}


FAST_BACKOFF = {"deny_backoff": {"initial": "1ms", "max": "2ms"}}


def write_entries(folder: Path, entries: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "_index.yaml"
    document = {"version": "1.0", "namespace": NAMESPACE, "entries": entries}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def load(folder: Path, entries: list[dict[str, Any]], **options: Any) -> Runtime:
    write_entries(folder, entries)
    return Runtime.load(folder, **options)


async def dead_letters(runtime: Runtime, queue: str = "dead", *, expect: int = 0) -> list[Message]:
    """The messages waiting in ``queue`` (read through the driver protocol); ``expect``:
    wait until at least that many are there."""
    return await backends.waiting(runtime, f"{NAMESPACE}:{queue}", expect=expect)


# -- observing decisions ------------------------------------------------------------------


@dataclass
class Recorded:
    consumer: str
    request: Request
    decision: Decision
    attempt: int
    at: float


class DecisionLog:
    """Every decision the scopes of some consumers make, with a way to wait for one.

    It wraps ``Scope.check`` on the scope objects the guards hold, so it sees exactly
    the checks that run (cached or not), and nothing else.
    """

    def __init__(self) -> None:
        self.records: list[Recorded] = []
        self._waiters: list[tuple[Callable[[Recorded], bool], asyncio.Future[Recorded]]] = []

    def watch(self, runtime: Runtime, consumer_id: str) -> None:
        scope = runtime.security.scopes[consumer_id]
        check = scope.check

        def recording_check(request: Request) -> Decision:
            decision = check(request)
            attempt = current_message().attempt if request.action == "queue.consume" else 0
            loop = asyncio.get_running_loop()
            self._add(Recorded(consumer_id, request, decision, attempt, loop.time()))
            return decision

        scope.check = recording_check  # type: ignore[method-assign]

    def _add(self, record: Recorded) -> None:
        self.records.append(record)
        for predicate, future in self._waiters:
            if not future.done() and predicate(record):
                future.set_result(record)

    async def wait(self, predicate: Callable[[Recorded], bool], timeout_s: float = 5.0) -> Recorded:
        for record in self.records:
            if predicate(record):
                return record
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        async with asyncio.timeout(timeout_s):
            return await future

    def of(self, consumer_id: str, action: str = "queue.consume") -> list[Recorded]:
        return [r for r in self.records if r.consumer == consumer_id and r.request.action == action]


def watch_decisions(runtime: Runtime, *consumer_ids: str) -> DecisionLog:
    log = DecisionLog()
    for consumer_id in consumer_ids:
        log.watch(runtime, consumer_id)
    return log


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0) -> None:
    """Re-check an async condition that has no event of its own, up to a bound."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


async def later_async(data: Any) -> bool:
    """Nacked with ``data["delay"]`` at its first attempt; recorded at the next."""
    message = current_message()
    if message.attempt == 1:
        message.nack("later", delay_s=data["delay"])
        return False
    _observe(data)
    return True
