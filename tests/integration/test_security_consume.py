"""The consume check: a denied message is never handled, is nacked with a growing delay,
and is dead-lettered at max_attempts; forged or tampered stamps are denied; strict mode."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import backends
import pytest
from security_support import (
    FAST_BACKOFF,
    NAMESPACE,
    SIGNING_KEY,
    consumer,
    dead_letters,
    driver,
    func,
    load,
    queue,
    reset,
    rule,
    settings,
    watch_decisions,
)

from wippy_queue.identity import Actor
from wippy_queue.queue.message import Message, new_message_id
from wippy_queue.security.provenance import Stamper

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

JOBS = f"{NAMESPACE}:jobs"


@pytest.mark.backends("memory", reason="times back-offs of 20-50ms; SQS delays in whole seconds")
async def test_deny_nacks_with_growing_backoff_then_dead_letters(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            settings(deny_backoff={"initial": "20ms", "max": "50ms"}),
            driver(),
            queue("jobs", dead="dead", max_attempts=5),
            queue("dead"),
            func("record_async"),
            rule("elsewhere", "queue.consume", "app:other"),
            consumer("worker", "jobs", "record_async", actor="w", policies=("elsewhere",)),
        ],
    )
    decisions = watch_decisions(runtime, "app:worker")
    async with runtime:
        message_id = await runtime.publish(JOBS, {"n": 1})
        await runtime.join(timeout=5)
        (dead,) = await dead_letters(runtime, expect=1)

    assert state.seen == []  # the handler never ran
    tries = decisions.of("app:worker")
    assert [r.attempt for r in tries] == [1, 2, 3, 4, 5]  # each denial counted an attempt
    assert all(not r.decision.allowed and r.decision.reason == "no_allow" for r in tries)
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    for gap, delay in zip(gaps, [0.02, 0.04, 0.05, 0.05], strict=True):
        assert gap >= delay * 0.9, gaps  # backed off: never a hot loop (the doubling itself
        # is RetryPolicy's, asserted exactly in tests/unit/test_settle.py)
    assert dead.id == message_id
    assert dead.headers["x_dead_letter_reason"] == "permission_denied"
    assert dead.headers["x_dead_letter_attempts"] == 5
    assert dead.headers["x_dead_letter_consumer"] == "app:worker"
    assert dead.headers["x_dead_letter_error"] == "deny (no_allow)"
    assert json.loads(dead.body) == {"n": 1}


async def test_a_deny_rule_is_named_in_the_dead_letter(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            settings(**FAST_BACKOFF),
            driver(),
            queue("jobs", dead="dead", max_attempts=1),
            queue("dead"),
            func("record_async"),
            rule("all", "queue.*", "*"),
            rule("not_jobs", "queue.consume", "app:jobs", "deny"),
            consumer("worker", "jobs", "record_async", actor="w", policies=("all", "not_jobs")),
        ],
    )
    async with runtime:
        await runtime.publish(JOBS, {"n": 1})
        await runtime.join(timeout=5)
        (dead,) = await dead_letters(runtime, expect=1)
    assert state.seen == []
    error = dead.headers["x_dead_letter_error"]
    assert error.startswith("deny (policy) by app:not_jobs rule [queue.consume, app:jobs")


async def test_an_allowed_consumer_takes_what_another_was_denied(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            settings(**FAST_BACKOFF),
            driver(),
            queue("jobs", dead="dead", max_attempts=5),
            queue("dead"),
            func("record_async"),
            rule("take_jobs", "queue.consume", "app:jobs"),
            rule("elsewhere", "queue.consume", "app:other"),
            consumer("denied", "jobs", "record_async", actor="d", policies=("elsewhere",)),
            consumer(
                "allowed",
                "jobs",
                "record_async",
                actor="a",
                policies=("take_jobs",),
                auto_start=False,
            ),
        ],
    )
    decisions = watch_decisions(runtime, "app:denied", "app:allowed")
    async with runtime:
        await runtime.publish(JOBS, {"n": 1})
        await decisions.wait(lambda r: r.consumer == "app:denied")  # the first try is denied
        if backends.current().name == "sqs":
            # moto's long poll looks for messages made visible again once a second, so
            # two pollers fall into step and the first takes every redelivery (real SQS
            # does not): there the denied consumer steps aside
            await runtime.stop("app:denied")
        await runtime.start("app:allowed")
        await runtime.join(timeout=5)
        assert await dead_letters(runtime) == []

    assert [(s.actor, s.data) for s in state.seen] == [("a", {"n": 1})]
    assert state.seen[0].headers["attempts"] >= 2
    taken = decisions.of("app:allowed")[-1]
    assert taken.decision.allowed and taken.decision.policy == "app:take_jobs"


# -- provenance ------------------------------------------------------------------------


def _provenance_app(tmp_path: Path, **options: Any) -> Any:
    return load(
        tmp_path,
        [
            settings(signing_key=SIGNING_KEY),
            driver(),
            queue("jobs", dead="dead", max_attempts=1),
            queue("other"),
            queue("dead"),
            func("record_async"),
            rule("take_jobs", "queue.consume", "*"),
            consumer("worker", "jobs", "record_async", actor="w", policies=("take_jobs",)),
        ],
        **options,
    )


SVC_A = Actor("svc-a", {"tenant": "tenant-a"})


def signed(body: dict[str, Any], *, queue_id: str = JOBS, key: str = SIGNING_KEY) -> Message:
    message = Message(new_message_id(), json.dumps(body).encode(), {"timestamp": 1})
    Stamper({"default": key}, "default").stamp(message, queue_id, SVC_A)
    return message


def _tamper_body(m: Message) -> None:
    m.body = m.body.replace(b"1", b"2")


def _tamper(header: str, value: Any) -> Any:
    return lambda m: m.headers.__setitem__(header, value)


def _drop(header: str) -> Any:
    return lambda m: m.headers.pop(header)


TAMPERINGS = {
    "body changed": _tamper_body,
    "tenant changed": _tamper("x_publisher_tenant", "tenant-b"),
    "publisher changed": _tamper("x_publisher", "svc-b"),
    "header added": _tamper("priority", 9),
    "timestamp changed": _tamper("timestamp", 2),
    "signature dropped": _drop("x_signature"),
    "signature garbled": _tamper("x_signature", "0" * 64),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
async def test_a_tampered_stamp_is_forged_and_never_handled(tmp_path: Path, tampering: str) -> None:
    state = reset()
    runtime = _provenance_app(tmp_path)
    async with runtime:
        good, bad = signed({"n": 1}), signed({"n": 1})
        TAMPERINGS[tampering](bad)
        await runtime.queues[JOBS].put(good)
        await runtime.queues[JOBS].put(bad)
        await runtime.join(timeout=5)
        dead = await dead_letters(runtime, expect=1)
    assert [s.message_id for s in state.seen] == [good.id]
    assert state.seen[0].headers["x_publisher_tenant"] == "tenant-a"
    assert [(m.id, m.headers["x_dead_letter_reason"]) for m in dead] == [
        (bad.id, "forged_provenance")
    ]


@pytest.mark.parametrize(
    "forge",
    [
        "stamp without signature",
        "tenant without publisher",
        "signed with another key",
        "signed for another queue",
    ],
)
async def test_a_forged_stamp_is_denied(tmp_path: Path, forge: str) -> None:
    state = reset()
    runtime = _provenance_app(tmp_path)
    if forge == "stamp without signature":
        message = Message(new_message_id(), b'{"n": 1}', {"x_publisher": "svc-a"})
    elif forge == "tenant without publisher":
        message = Message(new_message_id(), b'{"n": 1}', {"x_publisher_tenant": "tenant-a"})
    elif forge == "signed with another key":
        message = signed({"n": 1}, key="an-attackers-own-key-0123")
    else:
        message = signed({"n": 1}, queue_id=f"{NAMESPACE}:other")
    async with runtime:
        await runtime.queues[JOBS].put(message)
        await runtime.join(timeout=5)
        (dead,) = await dead_letters(runtime, expect=1)
    assert state.seen == []
    assert dead.headers["x_dead_letter_reason"] == "forged_provenance"


async def test_a_signed_message_cannot_be_replayed_into_another_queue(tmp_path: Path) -> None:
    state = reset()
    runtime = _provenance_app(tmp_path)
    message = signed({"n": 1}, queue_id=f"{NAMESPACE}:other")
    message.headers["x_dead_letter_queue"] = f"{NAMESPACE}:other"
    async with runtime:
        await runtime.queues[JOBS].put(message)
        await runtime.join(timeout=5)
    assert state.seen == []


async def test_a_signed_message_still_verifies_in_its_dead_letter_queue(tmp_path: Path) -> None:
    """The copy keeps the signature made for its first queue; the dead-letter queue of
    that queue (and only it) accepts it."""
    state = reset()
    runtime = load(
        tmp_path,
        [
            settings(signing_key=SIGNING_KEY),
            driver(),
            queue("jobs", dead="dead", max_attempts=1),
            queue("dead"),
            func("fail_async"),
            func("record_async"),
            rule("take_all", "queue.consume", "*"),
            consumer("worker", "jobs", "fail_async", actor="w", policies=("take_all",)),
            consumer("salvage", "dead", "record_async", actor="s", policies=("take_all",)),
        ],
    )
    async with runtime:
        await runtime.queues[JOBS].put(signed({"n": 1}))
        await runtime.join(timeout=5)
    assert [seen.data for seen in state.seen] == [{"n": 1}]
    assert state.seen[0].headers["x_dead_letter_queue"] == JOBS


async def test_without_a_signing_key_a_stamp_is_believed_only_from_this_process(
    tmp_path: Path,
) -> None:
    """Without a key nothing can be verified: the memory driver's messages can only have
    been stamped by this process, a broker's can have been written by anyone, so their
    stamp is dropped before the check (the message is anonymous)."""
    state = reset()
    runtime = load(
        tmp_path,
        [
            driver(),
            queue("jobs"),
            func("record_async"),
            rule("take_jobs", "queue.consume", "*"),
            consumer("worker", "jobs", "record_async", actor="w", policies=("take_jobs",)),
        ],
    )
    decisions = watch_decisions(runtime, "app:worker")
    async with runtime:
        stamp = {"x_publisher": "svc-a", "x_publisher_tenant": "acme"}
        await runtime.queues[JOBS].put(Message(new_message_id(), b'{"n": 1}', stamp))
        await runtime.join(timeout=5)
    in_process = backends.current().name == "memory"
    assert [s.headers.get("x_publisher") for s in state.seen] == ["svc-a" if in_process else None]
    (taken,) = decisions.of("app:worker")
    assert taken.request.publisher == ("svc-a" if in_process else None)


async def test_an_unstamped_message_is_anonymous_not_forged(tmp_path: Path) -> None:
    state = reset()
    runtime = _provenance_app(tmp_path)
    decisions = watch_decisions(runtime, "app:worker")
    async with runtime:
        await runtime.publish(JOBS, {"n": 1})  # outside any actor: no stamp
        await runtime.join(timeout=5)
    assert [s.data for s in state.seen] == [{"n": 1}]
    (taken,) = decisions.of("app:worker")
    assert (taken.request.publisher, taken.request.tenant) == (None, None)


# -- strict mode ---------------------------------------------------------------------


def _strict_app(tmp_path: Path, **options: Any) -> Any:
    entries = [
        driver(),
        queue("jobs", dead="dead", max_attempts=1),
        queue("dead"),
        func("record_async"),
        consumer("open", "jobs", "record_async", secured=False),
    ]
    if options.pop("settings_strict", False):
        entries.insert(0, settings(strict=True))
    return load(tmp_path, entries, **options)


@pytest.mark.parametrize("how", ["argument", "settings entry"])
async def test_strict_mode_denies_a_consumer_without_a_security_block(
    tmp_path: Path, how: str
) -> None:
    state = reset()
    if how == "argument":
        runtime = _strict_app(tmp_path, strict=True)
    else:
        runtime = _strict_app(tmp_path, settings_strict=True)
    async with runtime:
        await runtime.queues[JOBS].put(Message(new_message_id(), b'{"n": 1}', {}))
        await runtime.join(timeout=5)
        (dead,) = await dead_letters(runtime, expect=1)
    assert state.seen == []
    assert dead.headers["x_dead_letter_reason"] == "permission_denied"
    assert "strict" in dead.headers["x_dead_letter_error"]


async def test_without_strict_mode_a_consumer_without_a_security_block_runs(
    tmp_path: Path,
) -> None:
    state = reset()
    runtime = _strict_app(tmp_path)
    async with runtime:
        await runtime.publish(JOBS, {"n": 1})
        await runtime.join(timeout=5)
        assert await dead_letters(runtime) == []
    assert [(s.actor, s.data) for s in state.seen] == [(None, {"n": 1})]


async def test_strict_mode_denies_a_security_block_without_an_actor(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            driver(),
            queue("jobs", dead="dead", max_attempts=1),
            queue("dead"),
            func("record_async"),
            rule("take_jobs", "queue.consume", "*"),
            consumer("nobody", "jobs", "record_async", policies=("take_jobs",)),
        ],
        strict=True,
    )
    async with runtime:
        await runtime.queues[JOBS].put(Message(new_message_id(), b'{"n": 1}', {}))
        await runtime.join(timeout=5)
        (dead,) = await dead_letters(runtime, expect=1)
    assert state.seen == []
    assert "strict" in dead.headers["x_dead_letter_error"]
