"""The call context: each handler call sees its own message and actor, across awaits,
in worker threads, and nothing of it is left for the next message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from security_support import NAMESPACE, consumer, driver, func, load, queue, reset, rule

from wippy_queue import HandlerError, Runtime, current_actor, current_message
from wippy_queue.queue.context import current

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver


def two_actors(tmp_path: Path, handler: str, *, concurrency: int) -> Runtime:
    return load(
        tmp_path,
        [
            driver(),
            queue("qa"),
            queue("qb"),
            func("handle", handler),
            rule("take", "queue.consume", "*"),
            *(
                consumer(
                    name,
                    f"q{name}",
                    "handle",
                    actor=f"actor-{name}",
                    tenant=f"tenant-{name}",
                    policies=("take",),
                    concurrency=concurrency,
                )
                for name in ("a", "b")
            ),
        ],
    )


async def test_concurrent_async_handlers_keep_their_own_context(tmp_path: Path) -> None:
    state = reset()
    state.barrier = asyncio.Barrier(4)  # all four handlers in flight at once
    runtime = two_actors(tmp_path, "interleave", concurrency=2)
    async with runtime:
        for n in range(2):
            await runtime.publish(f"{NAMESPACE}:qa", {"for": "actor-a", "n": n})
            await runtime.publish(f"{NAMESPACE}:qb", {"for": "actor-b", "n": n})
        await runtime.join(timeout=5)

    assert state.mismatches == []
    assert sorted((s.actor, s.data["n"]) for s in state.seen) == [
        ("actor-a", 0),
        ("actor-a", 1),
        ("actor-b", 0),
        ("actor-b", 1),
    ]
    assert all(s.data["for"] == s.actor for s in state.seen)
    assert len({s.message_id for s in state.seen}) == 4
    # the caller's own context was never touched
    assert current() is None and current_actor() is None
    with pytest.raises(HandlerError):
        current_message()


@pytest.mark.parametrize("handler", ["record_sync", "leaky_sync"])
async def test_sync_handlers_see_their_own_context_in_the_thread_pool(
    tmp_path: Path, handler: str
) -> None:
    state = reset()
    runtime = two_actors(tmp_path, handler, concurrency=1)
    async with runtime:
        for n in range(4):
            await runtime.publish(f"{NAMESPACE}:qa", {"for": "actor-a", "n": n})
            await runtime.publish(f"{NAMESPACE}:qb", {"for": "actor-b", "n": n})
        await runtime.join(timeout=5)

    assert state.mismatches == []
    assert len(state.seen) == 8
    assert all(s.data["for"] == s.actor for s in state.seen)
    assert {s.tenant for s in state.seen if s.actor == "actor-a"} == {"tenant-a"}
    for actor in ("actor-a", "actor-b"):
        threads = {s.thread for s in state.seen if s.actor == actor}
        assert len(threads) == 1  # one reused worker thread per consumer...
    # ...and still nothing a handler set there is visible to the next message
    assert [s.leaked for s in state.seen] == [None] * 8


async def test_nothing_an_async_handler_sets_leaks_to_the_next_message(tmp_path: Path) -> None:
    state = reset()
    runtime = two_actors(tmp_path, "leaky_async", concurrency=1)
    async with runtime:
        for n in range(3):
            await runtime.publish(f"{NAMESPACE}:qa", {"for": "actor-a", "n": n})
        await runtime.join(timeout=5)
    assert [s.data["n"] for s in state.seen] == [0, 1, 2]
    assert [s.leaked for s in state.seen] == [None, None, None]
