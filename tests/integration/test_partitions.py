"""Tenant partitions: on a shared queue a foreign tenant's consumer is never offered
a message, so nothing is denied, no attempt is spent, and nothing is dead-lettered."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from security_support import (
    NAMESPACE,
    SIGNING_KEY,
    consumer,
    dead_letters,
    driver,
    eventually,
    func,
    load,
    queue,
    reset,
    rule,
    watch_decisions,
    write_entries,
)
from security_support import settings as security_settings

from wippy_queue import ConfigError, Runtime
from wippy_queue.identity import Actor
from wippy_queue.plugins import default_plugins
from wippy_queue.queue.driver import Capabilities
from wippy_queue.queue.message import Message, new_message_id

pytestmark = pytest.mark.usefixtures("backend")

JOBS = f"{NAMESPACE}:jobs"
TENANTS = ("acme", "globex")


def entries(partition_by: str = "message.tenant", *, reader: bool = False) -> list[dict[str, Any]]:
    found = [
        security_settings(signing_key=SIGNING_KEY),
        driver(),
        queue("jobs", dead="dead", max_attempts=2, partition_by=partition_by),
        queue("dead"),
        func("record_async"),
        rule(
            "own",
            "queue.consume",
            "app:jobs",
            conditions=[
                {"field": "message.tenant", "operator": "eq", "value_from": "actor.meta.tenant"},
            ],
        ),
    ]
    for tenant in TENANTS:
        found.append(
            consumer(
                f"worker_{tenant}",
                "jobs",
                "record_async",
                actor=f"w-{tenant}",
                tenant=tenant,
                policies=("own",),
                concurrency=2,
                prefetch=5,
            )
        )
    if reader:
        found.append(rule("all", "queue.consume", "app:jobs"))
        found.append(
            consumer(
                "reader",
                "jobs",
                "record_async",
                actor="auditor",
                policies=("all",),
                auto_start=False,
            )
        )
    return found


async def publish(
    runtime: Runtime, tenant: str, n: int, headers: dict[str, str] | None = None
) -> None:
    """As ``tenant``'s publisher (stamped and signed as the runtime's guard does)."""
    body = f'{{"n": {n}, "tenant": "{tenant}"}}'.encode()
    message = Message(new_message_id(), body, dict(headers or {}))
    runtime.security.stamper.stamp(message, JOBS, Actor(f"svc-{tenant}", {"tenant": tenant}))
    await runtime.queues[JOBS].put(message)


async def test_each_tenant_runs_only_its_own_and_nothing_is_denied_or_dead(
    tmp_path: Path,
) -> None:
    state = reset()
    runtime = load(tmp_path, entries())
    decisions = watch_decisions(runtime, *(f"{NAMESPACE}:worker_{t}" for t in TENANTS))
    async with runtime:
        for n in range(200):
            await publish(runtime, TENANTS[n % 2], n)
        await runtime.join(JOBS, timeout=15)
        assert await dead_letters(runtime) == []

        # one tenant's consumer stops: its messages wait for it, none is dead-lettered
        await runtime.stop(f"{NAMESPACE}:worker_globex")
        for n in range(200, 210):
            await publish(runtime, TENANTS[n % 2], n)

        async def acme_done() -> bool:  # handled, and settled (a driver may batch acks)
            handled = sum(1 for s in state.seen if s.tenant == "acme") == 105
            return handled and (await runtime.info(JOBS)).in_flight == 0

        await eventually(acme_done)
        info = await runtime.info(JOBS)
        assert (info.ready, info.in_flight) == (5, 0)  # globex's five, waiting
        await runtime.start(f"{NAMESPACE}:worker_globex")
        await runtime.join(JOBS, timeout=15)
        assert await dead_letters(runtime) == []

    assert all(s.tenant == s.data["tenant"] for s in state.seen)
    assert Counter(s.data["n"] for s in state.seen) == Counter(range(210))
    assert all(r.decision.allowed and r.attempt == 1 for r in decisions.records)


async def test_a_consumer_without_a_tenant_reads_every_partition_even_new_ones(
    tmp_path: Path,
) -> None:
    state = reset()
    runtime = load(tmp_path, entries(reader=True))
    async with runtime:
        for tenant in TENANTS:
            await runtime.stop(f"{NAMESPACE}:worker_{tenant}")
        await runtime.start(f"{NAMESPACE}:reader")
        await publish(runtime, "acme", 1)
        await publish(runtime, "initech", 2)  # a partition no consumer has named
        await runtime.join(JOBS, timeout=10)
    assert sorted((s.actor, s.data["n"]) for s in state.seen) == [("auditor", 1), ("auditor", 2)]


async def test_partitions_by_a_header(tmp_path: Path) -> None:
    state = reset()
    runtime = load(tmp_path, entries("message.headers.region"))
    async with runtime:
        await publish(runtime, "acme", 1, {"region": "acme"})  # the header decides
        await publish(runtime, "acme", 2, {"region": "globex"})
        await runtime.join(JOBS, timeout=10)
        dead = await dead_letters(runtime, expect=1)
    # the globex-region message went to globex's consumer, whose policy denies an
    # acme publisher's message: defence in depth, the check still runs
    assert [(s.actor, s.data["n"]) for s in state.seen] == [("w-acme", 1)]
    assert [m.headers["x_dead_letter_reason"] for m in dead] == ["permission_denied"]


@pytest.mark.backends("memory", reason="about loading: no driver runs")
def test_a_driver_without_partitions_refuses_partition_by_at_load(tmp_path: Path) -> None:
    plugins = default_plugins()
    plugins.replace("queue.driver.memory", capabilities=Capabilities(partitions=False))
    write_entries(tmp_path, entries())
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path, plugins=plugins)
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field) == ("app:jobs", "partition_by")
    assert "has no partitions" in problem.message


@pytest.mark.backends("memory", reason="about loading: no driver runs")
def test_validate_warns_when_tenants_share_a_queue_without_partitions(tmp_path: Path) -> None:
    from wippy_queue.loading import load as load_entries

    found = entries()
    found[2] = queue("jobs", dead="dead", max_attempts=2)  # no partition_by
    write_entries(tmp_path, found)
    warnings = load_entries([tmp_path]).registry.warnings
    (warning,) = [w for w in warnings if w.field == "partition_by"]
    assert warning.entry_id == "app:jobs" and warning.severity == "warning"
    assert "acme, globex" in warning.message and "partition_by: message.tenant" in warning.message
    write_entries(tmp_path, entries())
    assert not [w for w in load_entries([tmp_path]).registry.warnings if w.field == "partition_by"]
