"""Provenance across processes on one Redis queue: forged stamps and key rotation.

A publisher process (``run --publish ... --as svc-a``) and a consumer process share
a stream; the consumer's policy takes only messages published by ``svc-a``, so a
handler run proves the stamp verified, and a dead letter says why it did not.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import backends
import pytest
import services
import yaml
from processes import HANDLER, handled, start, stop, until

from wippy_queue import Runtime

pytestmark = pytest.mark.services

K1, K2 = "first-key-0123456789abcdef", "second-key-0123456789abcdef"


@pytest.fixture
def stream() -> Iterator[str]:
    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    name = f"wq-prov-{uuid.uuid4().hex[:10]}"
    yield name
    services.redis_delete_prefix(name)


def write_app(
    folder: Path,
    stream: str,
    keys: dict[str, str] | None,
    signer: str | None,
    *,
    consume: bool = False,
) -> Path:
    """Queue ``e2e:jobs`` (dead letters to ``e2e:dead`` at once), a consumer running as
    ``worker`` that takes only svc-a's messages, and ``outbox`` running as svc-a (for
    ``--as``); ``keys``/``signer`` are this process's signing keys."""
    settings: dict[str, Any] = {"name": "settings", "kind": "security.settings"}
    if keys:
        settings["signing_keys"] = keys
        settings["signing_key_id"] = signer
    entries: list[dict[str, Any]] = [
        settings,
        {"name": "redis", "kind": "queue.driver.redis", "url": services.REDIS_URL,
         "lifecycle": {"auto_start": True}},
        {"name": "jobs", "kind": "queue.queue", "driver": "redis", "queue_name": stream,
         "dead_letter": {"queue": "dead", "max_attempts": 1}},
        {"name": "dead", "kind": "queue.queue", "driver": "redis", "queue_name": f"{stream}-dead"},
        {"name": "outbox", "kind": "queue.queue", "driver": "redis", "queue_name": f"{stream}-out"},
        {"name": "handle", "kind": "function.python", "source": "file://h.py", "method": "handle"},
        {"name": "from_svc", "kind": "security.policy", "policy": {
            "actions": "queue.consume", "resources": "e2e:jobs", "effect": "allow",
            "conditions": [{"field": "message.publisher", "operator": "eq", "value": "svc-a"}]}},
        {"name": "send", "kind": "security.policy", "policy": {
            "actions": ["queue.publish", "queue.publish.queue"], "resources": ["", "e2e:jobs"],
            "effect": "allow"}},
        {"name": "worker", "kind": "queue.consumer", "queue": "jobs", "func": "handle",
         "lifecycle": {"auto_start": consume,
                       "security": {"actor": {"id": "worker"}, "policies": ["from_svc"]}}},
        {"name": "sender", "kind": "queue.consumer", "queue": "outbox", "func": "handle",
         "lifecycle": {"security": {"actor": {"id": "svc-a"}, "policies": ["send"]}}},
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_index.yaml").write_text(yaml.safe_dump({"namespace": "e2e", "entries": entries}))
    (folder / "h.py").write_text(HANDLER)
    return folder


def publish(app: Path, n: int, out: Path) -> None:
    """One publish as svc-a from a process of its own (``run --publish --as``)."""
    sender = start(app, out, 0.0, "--publish", "e2e:jobs", f'{{"n": {n}}}', "--as", "svc-a",
                   "--until-idle", "--timeout", "20")  # fmt: skip
    _, err = sender.communicate(timeout=30)  # it ends by itself once idle
    assert sender.returncode == 0, err


async def dead_reasons(app: Path, expect: int) -> dict[int, str]:
    import json

    async with Runtime.load(app) as runtime:
        dead = await backends.waiting(runtime, "e2e:dead", expect=expect)
    return {json.loads(m.body)["n"]: str(m.headers["x_dead_letter_reason"]) for m in dead}


async def test_a_publisher_with_another_key_or_none_is_forged(tmp_path: Path, stream: str) -> None:
    out = tmp_path / "out.txt"
    consumer = write_app(tmp_path / "consumer", stream, {"k1": K1}, "k1", consume=True)
    worker = start(consumer, out)
    try:
        publish(write_app(tmp_path / "other", stream, {"k1": K2}, "k1"), 1, out)  # wrong key
        publish(write_app(tmp_path / "none", stream, None, None), 2, out)  # no key
        publish(write_app(tmp_path / "same", stream, {"k1": K1}, "k1"), 3, out)  # the key

        await until(lambda: handled(out) != [], "the genuine one handled")
    finally:
        err = stop(worker)
    assert [n for _, n in handled(out)] == [3], err
    assert await dead_reasons(consumer, 2) == {1: "forged_provenance", 2: "forged_provenance"}


async def test_keys_rotate_across_processes_with_no_message_denied(
    tmp_path: Path, stream: str
) -> None:
    out = tmp_path / "out.txt"
    # the consumers know both keys before any publisher signs with the new one
    consumer = write_app(tmp_path / "c1", stream, {"k1": K1, "k2": K2}, "k1", consume=True)
    worker = start(consumer, out)
    try:
        publish(write_app(tmp_path / "p1", stream, {"k1": K1}, "k1"), 1, out)  # before
        publish(write_app(tmp_path / "p2", stream, {"k1": K1, "k2": K2}, "k2"), 2, out)  # switch
        publish(write_app(tmp_path / "p3", stream, {"k2": K2}, "k2"), 3, out)  # old key gone
        await until(lambda: len(handled(out)) == 3, "all three handled")
    finally:
        stop(worker)
    # later the consumers drop the old key too: what it signed is no longer believed
    consumer = write_app(tmp_path / "c2", stream, {"k2": K2}, "k2", consume=True)
    worker = start(consumer, out)
    try:
        publish(write_app(tmp_path / "p3", stream, {"k2": K2}, "k2"), 4, out)
        publish(write_app(tmp_path / "p1", stream, {"k1": K1}, "k1"), 5, out)
        await until(lambda: len(handled(out)) == 4, "the new-key message handled")
    finally:
        stop(worker)
    assert sorted(n for _, n in handled(out)) == [1, 2, 3, 4]
    assert await dead_reasons(consumer, 1) == {5: "forged_provenance"}
