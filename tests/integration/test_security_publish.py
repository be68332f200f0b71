"""The publish check: queue.publish then queue.publish.queue under the caller's actor,
PermissionDenied from inside a handler, the provenance stamp, reserved headers, strict mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import backends
import pytest
from security_support import (
    NAMESPACE,
    SIGNING_KEY,
    consumer,
    driver,
    func,
    load,
    queue,
    reset,
    rule,
    settings,
)

from wippy_queue import PermissionDenied, PublishError, Runtime
from wippy_queue.queue.message import Message, new_message_id

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

INBOX = f"{NAMESPACE}:inbox"


def app(
    tmp_path: Path,
    *,
    handler: str = "forward_async",
    signing: bool = True,
    publisher_policies: tuple[str, ...] = ("take_inbox", "publish", "to_out", "no_secret"),
    **options: Any,
) -> Runtime:
    entries = [
        driver(),
        queue("inbox"),
        queue("out"),
        queue("other"),
        queue("secret"),
        func("forward", handler),
        func("record_async"),
        rule("take_inbox", "queue.consume", "app:inbox"),
        rule("publish", "queue.publish", "*"),
        rule("to_out", "queue.publish.queue", ["app:out", "app:secret"]),
        rule("no_secret", "queue.publish.queue", "app:secret", "deny"),
        rule("take_out", "queue.consume", "app:out"),
        consumer(
            "svc", "inbox", "forward", actor="svc-a", tenant="tenant-a", policies=publisher_policies
        ),
        consumer("reader", "out", "record_async", actor="reader", policies=("take_out",)),
    ]
    if signing:
        entries.insert(0, settings(signing_key=SIGNING_KEY))
    return load(tmp_path, entries, **options)


def request(target: str, payload: Any = None, headers: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"target": f"{NAMESPACE}:{target}", "payload": payload or {"n": 1}}
    if headers is not None:
        body["headers"] = headers
    return body


async def run(runtime: Runtime, *requests: Any) -> None:
    async with runtime:
        for body in requests:
            await runtime.publish(INBOX, body)
        await runtime.join(timeout=5)


async def count(runtime: Runtime, queue_id: str) -> int:
    return (await runtime.info(f"{NAMESPACE}:{queue_id}")).message_count


@pytest.mark.parametrize("handler", ["forward_async", "forward_sync"])
async def test_an_allowed_publish_is_stamped_and_signed(tmp_path: Path, handler: str) -> None:
    state = reset()
    await run(app(tmp_path, handler=handler), request("out", {"n": 7}))
    assert state.errors == []
    received = [s for s in state.seen if s.actor == "reader"]
    assert [s.data for s in received] == [{"n": 7}]
    headers = received[0].headers
    assert headers["x_publisher"] == "svc-a"
    assert headers["x_publisher_tenant"] == "tenant-a"
    key_id, _, digest = headers["x_signature"].partition(":")
    assert (key_id, len(digest)) == ("default", 64)  # it verified, or the reader would not see it


async def test_without_a_key_the_stamp_is_not_signed(tmp_path: Path) -> None:
    """Unsigned, the stamp is believed from this process only (a broker's is dropped)."""
    state = reset()
    await run(app(tmp_path, signing=False), request("out"))
    (received,) = [s for s in state.seen if s.actor == "reader"]
    in_process = backends.current().name == "memory"
    assert received.headers.get("x_publisher") == ("svc-a" if in_process else None)
    assert "x_signature" not in received.headers


@pytest.mark.parametrize("handler", ["forward_async", "forward_sync"])
async def test_a_denied_publish_raises_permission_denied_in_the_handler(
    tmp_path: Path, handler: str
) -> None:
    state = reset()
    runtime = app(tmp_path, handler=handler)
    await run(runtime, request("other"))
    (err,) = state.errors
    assert isinstance(err, PermissionDenied)
    assert err.kind == "PERMISSION_DENIED"
    assert (err.action, err.resource, err.actor_id) == ("queue.publish.queue", "app:other", "svc-a")
    assert "no_allow" in err.reason
    assert str(err) == (
        "permission denied: actor 'svc-a' may not queue.publish.queue on 'app:other' "
        "(deny (no_allow))"
    )
    async with runtime:
        assert await count(runtime, "other") == 0


async def test_a_deny_rule_names_itself_in_the_error(tmp_path: Path) -> None:
    state = reset()
    runtime = app(tmp_path)
    await run(runtime, request("secret"))
    (err,) = state.errors
    assert isinstance(err, PermissionDenied)
    assert "by app:no_secret" in err.reason
    async with runtime:
        assert await count(runtime, "secret") == 0


async def test_queue_publish_is_checked_before_the_queue(tmp_path: Path) -> None:
    state = reset()
    await run(app(tmp_path, publisher_policies=("take_inbox", "to_out")), request("out"))
    (err,) = state.errors
    assert isinstance(err, PermissionDenied)
    assert (err.action, err.resource) == ("queue.publish", "")
    assert [s for s in state.seen if s.actor == "reader"] == []


# -- reserved headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["x_publisher", "x_publisher_tenant", "x_signature", "x_anything", "attempts"]
)
async def test_reserved_headers_are_refused_at_publish(tmp_path: Path, header: str) -> None:
    state = reset()
    runtime = app(tmp_path)
    async with runtime:
        with pytest.raises(PublishError, match="reserved"):
            await runtime.publish(f"{NAMESPACE}:out", {"n": 1}, {header: "tenant-b"})
        # and from inside a handler, under an actor
        await runtime.publish(INBOX, request("out", headers={header: "tenant-b"}))
        await runtime.join(timeout=5)
        assert await count(runtime, "out") == 0
    (err,) = state.errors
    assert isinstance(err, PublishError) and header in str(err)
    assert [s for s in state.seen if s.actor == "reader"] == []


async def test_a_claimed_tenant_header_does_not_change_the_stamp(tmp_path: Path) -> None:
    state = reset()
    await run(app(tmp_path), request("out", headers={"tenant": "tenant-b"}))
    (received,) = [s for s in state.seen if s.actor == "reader"]
    assert received.headers["tenant"] == "tenant-b"  # a plain header, kept as written
    assert received.headers["x_publisher_tenant"] == "tenant-a"  # the verified truth


# -- strict mode -------------------------------------------------------------------


async def test_strict_mode_denies_publishing_outside_any_actor(tmp_path: Path) -> None:
    runtime = app(tmp_path, strict=True)
    async with runtime:
        with pytest.raises(PermissionDenied, match="strict_mode") as caught:
            await runtime.publish(f"{NAMESPACE}:out", {"n": 1})
        assert caught.value.actor_id is None
        assert await count(runtime, "out") == 0


async def test_strict_mode_still_lets_a_checked_actor_publish(tmp_path: Path) -> None:
    state = reset()
    runtime = app(tmp_path, strict=True)
    async with runtime:
        inbox = runtime.queues[INBOX]
        body = json.dumps(request("out")).encode()
        await inbox.put(Message(new_message_id(), body, {}))
        await runtime.join(timeout=5)
    assert state.errors == []
    assert [s.data for s in state.seen if s.actor == "reader"] == [{"n": 1}]


async def test_without_strict_mode_publishing_outside_any_actor_is_allowed_unstamped(
    tmp_path: Path,
) -> None:
    state = reset()
    runtime = app(tmp_path)
    async with runtime:
        await runtime.publish(f"{NAMESPACE}:out", {"n": 1})
        await runtime.join(timeout=5)
    (received,) = state.seen
    assert received.actor == "reader"
    assert not any(k.startswith("x_") for k in received.headers)


async def test_an_unchecked_consumer_publishes_unstamped(tmp_path: Path) -> None:
    state = reset()
    runtime = load(
        tmp_path,
        [
            driver(),
            queue("inbox"),
            queue("out"),
            func("forward", "forward_async"),
            func("record_async"),
            consumer("svc", "inbox", "forward", secured=False),
            consumer("reader", "out", "record_async", secured=False),
        ],
    )
    await run(runtime, request("out"))
    assert state.errors == []
    (received,) = [s for s in state.seen if s.data == {"n": 1}]
    assert "x_publisher" not in received.headers
