"""Helpers shared by the Lua test files (no tests here).

Two ways to run a Lua handler: ``World`` calls a LuaHandler directly inside a call
context built by hand (a Publisher over memory queues, a MessageHandle, an actor),
which lets a test swap in a refusing publish interceptor or watch publishes;
``write_app`` + ``drive`` run a whole Runtime on the memory driver. Async code runs
with ``run`` (asyncio.run, bounded), so no pytest plugin is needed.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from wippy_queue.drivers.memory import MemoryDriver
from wippy_queue.functions.lua.config import LuaFunctionConfig, LuaLimits
from wippy_queue.functions.lua.handler import LuaHandler
from wippy_queue.functions.lua.modules import BUILTIN_MODULES, ModuleSpec
from wippy_queue.functions.lua.program import Program, Unit
from wippy_queue.identity import Actor
from wippy_queue.queue import context
from wippy_queue.queue.codec import get_codec
from wippy_queue.queue.driver import QueueSpec
from wippy_queue.queue.handle import MessageHandle
from wippy_queue.queue.handler import outcome_of
from wippy_queue.queue.message import Message, stamp_new
from wippy_queue.queue.outcome import Outcome
from wippy_queue.queue.publisher import Publisher, PublishInterceptor
from wippy_queue.queue.queue import Queue
from wippy_queue.runtime import Runtime

T = TypeVar("T")
TIMEOUT_S = 20.0


def run(coro: Awaitable[T], timeout_s: float = TIMEOUT_S) -> T:
    """Run ``coro`` in a fresh event loop; fail (not hang) after ``timeout_s``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


def program(
    source: str,
    *,
    modules: Sequence[str] = (),
    method: str | None = None,
    limits: LuaLimits | None = None,
    pool: int | None = None,
    entry_id: str = "test:handler",
) -> Program:
    """A Program from inline Lua (``modules`` may name test-only modules)."""
    known = [m for m in modules if m in BUILTIN_MODULES]
    config = LuaFunctionConfig(
        source=textwrap.dedent(source) + "\n",
        modules=known,
        limits=limits or LuaLimits(),
        pool=pool,
    )
    unit = Unit(entry_id, config.source, f"={entry_id}", tuple(modules), {})
    return Program(entry_id, method, {entry_id: unit}, config.limits, config)


def lua_handler(
    source: str, *, extra_modules: Mapping[str, ModuleSpec] | None = None, **kw: Any
) -> LuaHandler:
    modules = {**BUILTIN_MODULES, **(extra_modules or {})}
    return LuaHandler(program(source, **kw), modules=modules)


class World:
    """Memory queues, a publisher and a consumer-like call context for one handler."""

    def __init__(
        self,
        queues: Iterable[str] = ("app:out",),
        interceptors: Sequence[PublishInterceptor] = (),
        actor: Actor | None = None,
    ) -> None:
        self.driver = MemoryDriver("app:mem")
        codec = get_codec("json")
        self.queues = {
            qid: Queue(self.driver, codec, QueueSpec(qid, qid.partition(":")[2])) for qid in queues
        }
        self.publisher = Publisher(self.queues, interceptors)
        self.actor = actor or Actor("tester")
        self.decisions: list[Outcome] = []

    async def start(self) -> World:
        await self.driver.start()
        for queue in self.queues.values():
            await self.driver.declare(queue.spec)
        return self

    async def call(
        self, handler: LuaHandler, data: Any, headers: Mapping[str, Any] | None = None
    ) -> tuple[Any, Outcome]:
        """Call like a consumer does: in a call context, then settle from the result."""
        loop = asyncio.get_running_loop()
        message = stamp_new(None, json.dumps(data).encode(), dict(headers or {}))

        async def settle(outcome: Outcome) -> None:
            self.decisions.append(outcome)

        handle = MessageHandle(message, data, "app:jobs", settle, loop)
        ctx = context.CallContext(
            publisher=self.publisher,
            loop=loop,
            actor=self.actor,
            message=handle,
            consumer="app:worker",
            trace_id=message.id,
        )
        with context.bound(ctx):
            result = await handler.call(data)
        outcome = await handle.finish(outcome_of(result))
        return result, outcome

    def bodies(self, queue_id: str) -> list[Any]:
        return [json.loads(m.body) for m in self.messages(queue_id)]

    def messages(self, queue_id: str) -> list[Message]:
        return self.driver.dead_letters(self.queues[queue_id].name)


async def one_call(source: str, data: Any = None, **kw: Any) -> tuple[Any, Outcome]:
    """Start a handler, call it once in a fresh World, close it."""
    handler = lua_handler(source, **kw)
    world = await World().start()
    await handler.start(concurrency=1)
    try:
        return await world.call(handler, {} if data is None else data)
    finally:
        await handler.close()


# -- a whole runtime ---------------------------------------------------------------------

APP = """\
version: "1.0"
namespace: app
entries:
  - name: mem
    kind: queue.driver.memory
    lifecycle:
      auto_start: true
  - name: jobs
    kind: queue.queue
    driver: mem
    dead_letter:
      queue: dead
      max_attempts: 1
  - name: dead
    kind: queue.queue
    driver: mem
  - name: out
    kind: queue.queue
    driver: mem
  - name: handler
    kind: function.lua
    source: file://handler.lua
{handler}
  - name: worker
    kind: queue.consumer
    queue: jobs
    func: handler
{consumer}
    lifecycle:
      auto_start: true
"""


def _indent(fields: Mapping[str, Any]) -> str:
    return "\n".join(f"    {key}: {json.dumps(value)}" for key, value in fields.items())


def write_app(
    root: Path,
    lua: str,
    *,
    handler: Mapping[str, Any] | None = None,
    consumer: Mapping[str, Any] | None = None,
) -> Path:
    """An app: jobs (dead-lettered at the first nack) -> worker -> Lua handler; out, dead."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.lua").write_text(textwrap.dedent(lua).lstrip("\n"), encoding="utf-8")
    text = APP.format(handler=_indent(handler or {}), consumer=_indent(consumer or {}))
    (root / "_index.yaml").write_text(text, encoding="utf-8")
    return root


async def drive(
    root: Path,
    bodies: Sequence[Any],
    *,
    headers: Mapping[str, Any] | None = None,
    before: Callable[[Runtime], None] | None = None,
) -> dict[str, list[Message]]:
    """Publish ``bodies`` to app:jobs, wait until it is idle; return out and dead messages."""
    runtime = Runtime.load(root)
    if before is not None:
        before(runtime)
    async with runtime:
        for body in bodies:
            await runtime.publish("app:jobs", body, headers)
        await runtime.join("app:jobs", timeout=TIMEOUT_S / 2)
        driver = runtime.drivers["app:mem"]
        return {"out": driver.dead_letters("out"), "dead": driver.dead_letters("dead")}


def body_of(message: Message) -> Any:
    return json.loads(message.body)
