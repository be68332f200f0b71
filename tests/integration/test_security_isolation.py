"""Cross-tenant isolation on ONE shared queue, under concurrency, as a property.

Hypothesis draws the tenants, their publisher actors (async or sync handlers), the
workers' concurrency and prefetch, whether the rules are indexed, and a list of
messages in a random order: published by a tenant's publisher (some claiming another
tenant in a plain header), published anonymously, or forged straight into the broker.
Every run must show: no handler ever sees another tenant's message; a tenant message
is handled at most once, and only by its own tenant's worker; a message with no
(verified) tenant is dead-lettered, never handled; the check ran for every delivery.

Nothing is lost: every tenant message is handled, however many foreign workers
deny it first (a denial counts an attempt, so the driver must offer a denied
message to the other consumers before the same ones again).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
)
from security_support import settings as security_settings

from wippy_queue import Runtime
from wippy_queue.identity import Actor
from wippy_queue.queue.message import Message, new_message_id

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

RBAC = Path(__file__).parents[2] / "wippy_queue" / "policies" / "rbac_with_tenants.conf"
JOBS = f"{NAMESPACE}:jobs"
#: a message no worker may take is denied by each of them in turn until dead-lettered
MAX_ATTEMPTS = 20
BACKOFF = {"initial": "1ms", "max": "5ms"}


@dataclass(frozen=True)
class Publisher:
    tenant: str
    index: int
    style: str  # "async" or "sync"

    @property
    def actor(self) -> str:
        return f"svc-{self.tenant}-{self.index}"

    @property
    def outbox(self) -> str:
        return f"outbox_{self.tenant}_{self.index}"


@dataclass(frozen=True)
class Send:
    """One message: ``via`` a publisher (index into the scenario's), anonymous, or forged."""

    via: int | str
    claim: str | None = None  # a plain "tenant" header naming some tenant


@dataclass(frozen=True)
class Scenario:
    tenants: tuple[str, ...]
    publishers: tuple[Publisher, ...]
    worker_styles: dict[str, str]
    concurrency: int
    prefetch: int
    indexed: bool
    sends: tuple[Send, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    tenants = tuple(
        draw(
            st.lists(
                st.sampled_from(["acme", "globex", "initech", "umbrella", "hooli"]),
                min_size=2,
                max_size=4,
                unique=True,
            )
        )
    )
    publishers = tuple(
        Publisher(t, i, draw(st.sampled_from(["async", "sync"])))
        for t in tenants
        for i in range(draw(st.integers(1, 2)))
    )
    send = st.one_of(
        st.builds(
            Send,
            st.integers(0, len(publishers) - 1),
            st.none() | st.sampled_from(tenants),
        ),
        st.builds(Send, st.sampled_from(["anonymous", "forged"])),
    )
    return Scenario(
        tenants=tenants,
        publishers=publishers,
        worker_styles={t: draw(st.sampled_from(["async", "sync"])) for t in tenants},
        concurrency=draw(st.integers(2, 4)),
        prefetch=draw(st.integers(1, 5)),
        indexed=draw(st.booleans()),
        sends=tuple(draw(st.lists(send, min_size=1, max_size=16))),
    )


def tenant_rules(scenario: Scenario) -> str:
    lines = []
    for t in scenario.tenants:
        lines += [
            f"p, worker, {t}, app:jobs, queue.consume, allow",
            f"p, publisher, {t}, *, queue.publish, allow",
            f"p, publisher, {t}, app:jobs, queue.publish.queue, allow",
            f"g, worker-{t}, worker, {t}",
        ]
    lines += [f"g, {p.actor}, publisher, {p.tenant}" for p in scenario.publishers]
    return "\n".join(lines) + "\n"


def entries(
    scenario: Scenario, folder: Path, backoff: dict[str, str] = BACKOFF
) -> list[dict[str, Any]]:
    (folder / "tenants.csv").write_text(tenant_rules(scenario))
    tenants: dict[str, Any] = {
        "name": "tenants",
        "kind": "security.policy.casbin",
        "model": f"file://{RBAC}",
        "policy": f"file://{folder / 'tenants.csv'}",
        "request": ["actor.id", "message.tenant", "resource", "action"],
    }
    if scenario.indexed:
        tenants["index"] = ["message.tenant"]
    result = [
        security_settings(signing_key=SIGNING_KEY, deny_backoff=backoff),
        driver(),
        queue("jobs", dead="dead", max_attempts=MAX_ATTEMPTS, partition_by="message.tenant"),
        queue("dead"),
        func("record_async"),
        func("record_sync"),
        func("forward_async"),
        func("forward_sync"),
        tenants,
        rule("outboxes", "queue.consume", "app:outbox_*"),
    ]
    for t in scenario.tenants:
        result.append(
            consumer(
                f"worker_{t}",
                "jobs",
                f"record_{scenario.worker_styles[t]}",
                actor=f"worker-{t}",
                tenant=t,
                policies=("tenants",),
                concurrency=scenario.concurrency,
                prefetch=scenario.prefetch,
            )
        )
    for p in scenario.publishers:
        result.append(queue(p.outbox))
        result.append(
            consumer(
                f"pub_{p.tenant}_{p.index}",
                p.outbox,
                f"forward_{p.style}",
                actor=p.actor,
                tenant=p.tenant,
                policies=("tenants", "outboxes"),
                concurrency=scenario.concurrency,
            )
        )
    return result


async def publish_all(runtime: Runtime, scenario: Scenario) -> dict[int, str | None]:
    """Send every message in the drawn order; return each message number's true tenant."""
    truth: dict[int, str | None] = {}
    for n, send in enumerate(scenario.sends):
        if send.via == "anonymous":
            truth[n] = None
            await runtime.publish(JOBS, {"n": n, "tenant": None})
        elif send.via == "forged":
            truth[n] = None  # claims a tenant in the reserved headers, without a signature
            victim = scenario.tenants[n % len(scenario.tenants)]
            body = json.dumps({"n": n, "tenant": victim}).encode()
            headers = {"x_publisher": f"svc-{victim}-0", "x_publisher_tenant": victim}
            await runtime.queues[JOBS].put(Message(new_message_id(), body, headers))
        else:
            assert isinstance(send.via, int)
            publisher = scenario.publishers[send.via]
            truth[n] = publisher.tenant
            headers = {"tenant": send.claim} if send.claim else None
            payload = {"n": n, "tenant": publisher.tenant}
            target = {"target": JOBS, "payload": payload, "headers": headers}
            await runtime.publish(f"{NAMESPACE}:{publisher.outbox}", target)
    return truth


async def run_scenario(scenario: Scenario, folder: Path) -> None:
    state = reset()
    runtime = load(folder, entries(scenario, folder))
    workers = [f"{NAMESPACE}:worker_{t}" for t in scenario.tenants]
    decisions = watch_decisions(runtime, *workers)
    async with runtime:
        truth = await publish_all(runtime, scenario)
        tenant_messages = {n for n, tenant in truth.items() if tenant is not None}
        forged = {n for n, send in enumerate(scenario.sends) if send.via == "forged"}
        anonymous = {n for n, send in enumerate(scenario.sends) if send.via == "anonymous"}

        async def settled() -> bool:
            handled = {s.data["n"] for s in state.seen if s.actor and s.actor.startswith("worker-")}
            dead = (await runtime.info(f"{NAMESPACE}:dead")).ready
            return handled == tenant_messages and dead == len(forged)

        await eventually(settled, timeout_s=15)
        dead = await dead_letters(runtime)
        # an anonymous message has no tenant's partition: no worker is offered it
        assert (await runtime.info(JOBS)).ready == len(anonymous)

    assert state.errors == [] and state.mismatches == []
    handled = [s for s in state.seen if s.actor and s.actor.startswith("worker-")]
    # 1. no handler ever sees another tenant's message
    for seen in handled:
        assert seen.tenant == seen.data["tenant"], seen
        assert seen.headers["x_publisher_tenant"] == seen.tenant, seen
    # 2. nothing lost: each tenant message handled exactly once, by its own tenant
    counts = Counter(s.data["n"] for s in handled)
    assert set(counts) == tenant_messages and set(counts.values()) <= {1}, counts
    # 3. a forged one (in a victim's partition) is dead-lettered, never handled
    reasons = {json.loads(m.body)["n"]: m.headers["x_dead_letter_reason"] for m in dead}
    assert reasons == dict.fromkeys(forged, "forged_provenance")
    # 4. the check really ran: once per delivery of a verified message to a worker
    allowed = [r for r in decisions.records if r.decision.allowed]
    assert len(allowed) == len(handled)
    assert all(r.request.tenant == r.request.actor.tenant for r in allowed)  # type: ignore[union-attr]


@pytest.mark.backends(
    "memory",
    "sqlite",
    reason="each example needs empty queues: on a broker the test's queue names are shared by "
    "all its examples (test_partitions and the partition contract cover the brokers)",
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_tenants_never_see_each_others_messages_on_a_shared_queue(scenario: Scenario) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            with tempfile.TemporaryDirectory() as folder:
                await run_scenario(scenario, Path(folder))

    asyncio.run(bounded())


@pytest.mark.parametrize(("tenant", "concurrency", "prefetch", "messages"), [
    ("initech", 2, 2, 3),
    ("hooli", 4, 4, 2),
])  # fmt: skip
async def test_foreign_workers_cannot_starve_a_tenants_messages(
    tmp_path: Path, tenant: str, concurrency: int, prefetch: int, messages: int
) -> None:
    """Found by the property above: two foreign workers used to pass a tenant's
    messages back and forth (each driver wake-up robbed by the other's prefetch)
    until they were dead-lettered while the tenant's own worker waited."""
    tenants = ("acme", "globex", "hooli", "initech")
    scenario = Scenario(
        tenants=tenants,
        publishers=(Publisher(tenant, 0, "async"),),
        worker_styles=dict.fromkeys(tenants, "async"),
        concurrency=concurrency,
        prefetch=prefetch,
        indexed=False,
        sends=(),
    )
    for _ in range(3):
        state = reset()
        # denials of messages published together come back together: in lock-step
        runtime = load(tmp_path, entries(scenario, tmp_path, {"initial": "1ms", "max": "2ms"}))
        publisher = Actor(scenario.publishers[0].actor, {"tenant": tenant})
        async with runtime:
            for n in range(messages):  # published together: they are denied together
                body = json.dumps({"n": n, "tenant": tenant}).encode()
                message = Message(new_message_id(), body, {})
                runtime.security.stamper.stamp(message, JOBS, publisher)
                await runtime.queues[JOBS].put(message)
            await runtime.join(timeout=10)
            assert await dead_letters(runtime) == []
        assert sorted(s.data["n"] for s in state.seen) == list(range(messages))
