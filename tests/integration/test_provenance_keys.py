"""Provenance keys that rotate, stamps that go stale, and what settings accept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from security_support import (
    NAMESPACE,
    consumer,
    dead_letters,
    driver,
    func,
    load,
    queue,
    reset,
    rule,
    write_entries,
)
from security_support import settings as security_settings

from wippy_queue import ConfigError, Runtime
from wippy_queue.identity import Actor
from wippy_queue.queue.message import Message, new_message_id
from wippy_queue.security.provenance import ForgedProvenance, StaleProvenance, Stamper

JOBS = f"{NAMESPACE}:jobs"
K1, K2 = "first-key-0123456789abcdef", "second-key-0123456789abcdef"
SVC = Actor("svc-a", {"tenant": "acme"})


def stamped(
    stamper: Stamper, queue_id: str = "app:jobs", body: bytes = b'{"n": 1}', ago_s: float = 0
) -> Message:
    """A message published ``ago_s`` seconds ago (its timestamp), stamped by ``stamper``."""
    message = Message(new_message_id(), body, {"timestamp": int(time.time() - ago_s)})
    stamper.stamp(message, queue_id, SVC)
    return message


def test_a_key_rotation_never_fails_a_message_in_between() -> None:
    old = Stamper({"k1": K1}, "k1")  # before: one key
    both_old = Stamper({"k1": K1, "k2": K2}, "k1")  # the new key added everywhere
    both_new = Stamper({"k1": K1, "k2": K2}, "k2")  # then the signing id switched
    new = Stamper({"k2": K2}, "k2")  # later the old key dropped
    for signer, verifier in [
        (old, both_old),
        (both_old, old),
        (both_new, both_old),
        (both_old, both_new),
        (both_new, new),
        (new, both_new),
    ]:
        assert verifier.verify(stamped(signer), "app:jobs").publisher == "svc-a"
    with pytest.raises(ForgedProvenance, match=r"key id 'k1'.*does not have"):
        new.verify(stamped(old), "app:jobs")


def test_a_stale_stamp_is_denied_only_at_its_first_delivery() -> None:
    stamper = Stamper({"k1": K1}, "k1", max_age_s=60)
    message = stamped(stamper, ago_s=120)
    with pytest.raises(StaleProvenance, match=r"signed 12\ds ago; max_message_age is 60s"):
        stamper.verify(message, "app:jobs", attempt=1)
    assert stamper.verify(message, "app:jobs", attempt=2).publisher == "svc-a"  # requeued


def app_entries(**settings: Any) -> list[dict[str, Any]]:
    return [
        security_settings(**settings),
        driver(),
        queue("jobs", dead="dead", max_attempts=3),
        queue("dead"),
        func("later_async"),
        rule(
            "from_svc",
            "queue.consume",
            "app:jobs",
            conditions=[{"field": "message.publisher", "operator": "eq", "value": "svc-a"}],
        ),
        consumer("worker", "jobs", "later_async", actor="w", policies=("from_svc",)),
    ]


@pytest.mark.usefixtures("backend")
async def test_a_stale_message_is_dead_lettered_and_a_requeued_fresh_one_is_not(
    tmp_path: Path,
) -> None:
    state = reset()
    # 3 s: a first delivery can take a second on moto's SQS (its long poll looks once a
    # second); with 1 s the fresh message itself was sometimes stale on arrival
    runtime = load(tmp_path, app_entries(signing_key=K1, max_message_age="3s"))
    async with runtime:
        stamper = runtime.security.stamper
        old = stamped(stamper, JOBS, b'{"n": "old", "delay": 0}', ago_s=30)  # signed 30 s ago
        fresh = stamped(stamper, JOBS, b'{"n": "fresh", "delay": 3.5}')  # waits past 3 s
        await runtime.queues[JOBS].put(old)
        await runtime.queues[JOBS].put(fresh)
        await runtime.join(JOBS, timeout=10)
        (dead,) = await dead_letters(runtime, expect=1)
    assert (dead.id, dead.headers["x_dead_letter_reason"]) == (old.id, "stale_provenance")
    assert dead.headers["x_dead_letter_attempts"] == 1  # never retried: it only gets older
    assert [s.data["n"] for s in state.seen] == ["fresh"]  # a requeue did not age it out


def test_settings_take_keys_by_id_from_files_and_refuse_what_cannot_sign(
    tmp_path: Path,
) -> None:
    (tmp_path / "k2.key").write_text(K2 + "\n")
    write_entries(
        tmp_path / "ok",
        app_entries(
            signing_keys={"k1": K1, "k2": f"file://{tmp_path / 'k2.key'}"}, signing_key_id="k2"
        ),
    )
    stamper = Runtime.load(tmp_path / "ok").security.stamper
    assert stamper.verify(stamped(Stamper({"k2": K2}, "k2")), "app:jobs").publisher == "svc-a"
    for settings, error in [
        ({"signing_keys": {"k1": K1, "k2": K2}}, "name the one that signs in signing_key_id"),
        ({"signing_keys": {"k1": K1}, "signing_key_id": "k9"}, "'k9' is not in signing_keys"),
        ({"signing_keys": {"k1": "short"}}, "at least 16 characters"),
        ({"signing_keys": {"k1": "file:///nowhere/k.key"}}, "cannot read the key file"),
    ]:
        write_entries(tmp_path / "bad", app_entries(**settings))
        with pytest.raises(ConfigError, match=error):
            Runtime.load(tmp_path / "bad")


def test_validate_warns_of_policies_reading_an_unverifiable_publisher(tmp_path: Path) -> None:
    """On a broker with no key, a stamp is dropped: a policy on the publisher sees no
    one. A warning, and a load error in strict mode."""
    from wippy_queue.loading import load as load_entries
    from wippy_queue.plugins import default_plugins
    from wippy_queue.queue.driver import Capabilities

    broker = default_plugins()  # the memory driver, as if messages could come from outside
    broker.replace("queue.driver.memory", capabilities=Capabilities(shared=True))
    write_entries(tmp_path / "a", app_entries())
    (warning,) = [
        w
        for w in load_entries([tmp_path / "a"], broker).registry.warnings
        if "who published" in w.message
    ]
    assert (warning.entry_id, warning.field) == ("app:worker", "lifecycle.security.policies")
    assert "app:from_svc" in warning.message and "signing_key" in warning.message
    write_entries(tmp_path / "b", app_entries(strict=True))
    with pytest.raises(ConfigError, match="decide on who published"):
        load_entries([tmp_path / "b"], broker)
    write_entries(tmp_path / "c", app_entries(signing_key=K1))
    assert not [w for w in load_entries([tmp_path / "c"], broker).registry.warnings]


def test_verifying_leaves_the_headers_as_they_came_forged_or_not() -> None:
    """The signature is lifted out while the rest is encoded: the handler (and a
    dead-letter copy) still sees every header, whether the stamp held or not."""
    stamper = Stamper({"k1": K1}, "k1")
    good = stamped(stamper)
    before = dict(good.headers)
    stamper.verify(good, "app:jobs")
    assert good.headers == before
    forged = stamped(stamper)
    forged.headers["x_publisher"] = "admin"
    before = dict(forged.headers)
    with pytest.raises(ForgedProvenance, match="does not match"):
        stamper.verify(forged, "app:jobs")
    assert forged.headers == before
