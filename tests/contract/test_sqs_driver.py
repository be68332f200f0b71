"""SQS-driver behaviour beyond the shared contract, against moto's SQS server."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import handler_plugins
from sqs_support import LEASE_S, driver_fields, shared

from wippy_queue import ConfigError, Runtime
from wippy_queue.drivers.sqs import wire
from wippy_queue.drivers.sqs.config import SqsDriverConfig, SqsQueueOptions
from wippy_queue.drivers.sqs.driver import SqsDriver
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import QueueSpec, SubscribeSpec
from wippy_queue.queue.message import Message

pytestmark = pytest.mark.services
WAIT_S = 10.0


def name(suffix: str = "") -> str:
    return f"wq-sqs-{uuid.uuid4().hex[:12]}{suffix}"


def new_driver(**fields: Any) -> SqsDriver:
    config = SqsDriverConfig.model_validate({**driver_fields(shared().url), **fields})
    return SqsDriver("t:sqs", config)


@asynccontextmanager
async def running(**fields: Any) -> AsyncIterator[SqsDriver]:
    driver = new_driver(**fields)
    await driver.start()
    try:
        yield driver
    finally:
        await driver.stop()


async def declare(driver: SqsDriver, queue: str, **options: Any) -> None:
    options.setdefault("visibility_timeout", LEASE_S)
    await driver.declare(QueueSpec(f"t:{queue}", queue, SqsQueueOptions(**options)))


def msg(body: bytes = b'{"n":1}', **headers: Any) -> Message:
    return Message(str(uuid.uuid4()), body, dict(headers))


async def url_of(driver: SqsDriver, queue: str) -> str:
    got = await driver.client.call("GetQueueUrl", QueueName=queue)
    return str(got["QueueUrl"])


# -- batching --------------------------------------------------------------------------


async def test_under_load_one_call_carries_ten_publishes_and_ten_acks() -> None:
    n = 200
    async with running(settle_linger="100ms") as driver:
        queue = name()
        await declare(driver, queue)
        before = driver.calls.copy()
        await asyncio.gather(*(driver.publish(queue, msg()) for _ in range(n)))
        assert driver.calls["SendMessageBatch"] - before["SendMessageBatch"] <= n // 10

        sub = await driver.subscribe(SubscribeSpec("t:c", queue, 50, 60))
        for _ in range(n):
            async with asyncio.timeout(WAIT_S):
                await (await sub.receive()).ack()
        await driver.wait_idle(queue, timeout_s=WAIT_S)
        assert driver.calls["DeleteMessageBatch"] <= n // 10
        assert driver.calls["ReceiveMessage"] <= n // 10 + 2  # up to 10 a poll, and idle polls


async def test_a_publish_returns_once_sqs_has_the_message() -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue)
        await driver.publish(queue, msg())
        got = await driver.client.call(
            "GetQueueAttributes",
            QueueUrl=await url_of(driver, queue),
            AttributeNames=["ApproximateNumberOfMessages"],
        )
        assert got["Attributes"]["ApproximateNumberOfMessages"] == "1"


async def test_a_message_over_the_size_limit_is_refused_with_both_sizes() -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue)
        with pytest.raises(DriverError, match=r"over queue .* MaximumMessageSize of 1048576"):
            await driver.publish(queue, msg(b"x" * 1_048_576))


# -- the wire format -------------------------------------------------------------------


async def test_the_wire_format_is_three_attributes_and_the_body_as_text_or_base64() -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue)
        headers = {f"h{i}": v for i, v in enumerate([1, 1.0, True, "1", "ünï"] * 5)}
        text, binary = msg(b'{"n":1}', **headers), msg(b"\xff\x00\r\n")
        await driver.publish(queue, text)
        await driver.publish(queue, binary)
        got = await driver.client.call(
            "ReceiveMessage",
            QueueUrl=await url_of(driver, queue),
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
        )
        raw = {m["MessageAttributes"]["wq-id"]["StringValue"]: m for m in got["Messages"]}
        plain = raw[text.id]
        assert plain["Body"] == '{"n":1}'
        assert set(plain["MessageAttributes"]) == {"wq-id", "wq-headers"}  # 25 headers, 1 slot
        sent = plain["MessageAttributes"]["wq-headers"]["StringValue"]
        assert sent == json.dumps(
            headers, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        encoded = raw[binary.id]
        assert encoded["MessageAttributes"]["wq-body"]["StringValue"] == "base64"
        assert encoded["Body"] == "/wANCg=="
        assert wire.decode(encoded).body == b"\xff\x00\r\n"


async def test_a_plain_send_message_from_any_client_is_consumed(tmp_path: Path) -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    def handler(data: Any) -> None:
        import wippy_queue

        message = wippy_queue.current_message()
        seen.append((data, {k: message.header(k) for k in ("attempts",)}))

    queue = name()
    entries = {
        "version": "1.0",
        "namespace": "app",
        "entries": [
            {"name": "sqs", "kind": "queue.driver.sqs", **driver_fields(shared().url),
             "lifecycle": {"auto_start": True}},
            {"name": "jobs", "kind": "queue.queue", "driver": "sqs", "queue_name": queue},
            {"name": "h", "kind": "function.python", "source": "file://h.py", "method": "h"},
            {"name": "worker", "kind": "queue.consumer", "queue": "jobs", "func": "h",
             "lifecycle": {"auto_start": True}},
        ],
    }  # fmt: skip
    (tmp_path / "h.py").write_text("def h(data):\n    pass\n")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(entries))
    async with Runtime.load(tmp_path, plugins=handler_plugins(handler)) as runtime:
        driver = runtime.drivers["app:sqs"]
        assert isinstance(driver, SqsDriver)
        await driver.client.call(
            "SendMessage", QueueUrl=await url_of(driver, queue), MessageBody='{"from": "cli"}'
        )
        await runtime.join("app:jobs", timeout=WAIT_S)
    assert seen == [({"from": "cli"}, {"attempts": 1})]


async def test_broken_attributes_are_a_decode_error_never_a_crash() -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue)
        await driver.client.call(
            "SendMessage",
            QueueUrl=await url_of(driver, queue),
            MessageBody="{}",
            MessageAttributes={
                "wq-id": {"DataType": "String", "StringValue": "m1"},
                "wq-headers": {"DataType": "String", "StringValue": "[not headers"},
            },
        )
        sub = await driver.subscribe(SubscribeSpec("t:c", queue, 1, 1))
        async with asyncio.timeout(WAIT_S):
            delivery = await sub.receive()
        assert delivery.malformed is not None and "not valid JSON" in delivery.malformed
        await delivery.ack()


# -- queues ----------------------------------------------------------------------------


async def test_declare_creates_with_the_visibility_and_refuses_another_one() -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue, visibility_timeout=7)
        await declare(driver, queue, visibility_timeout=7)  # the same again: fine
        got = await driver.client.call(
            "GetQueueAttributes", QueueUrl=await url_of(driver, queue), AttributeNames=["All"]
        )
        assert got["Attributes"]["VisibilityTimeout"] == "7"
        with pytest.raises(DriverError, match=r"visibility_timeout 7.*asks for 9"):
            await declare(driver, queue, visibility_timeout=9)
    async with running() as other:  # another process: the queue on SQS says 7
        with pytest.raises(DriverError, match=r"has visibility_timeout 7.*asks for 9"):
            await declare(other, queue, visibility_timeout=9)
        await other.declare(QueueSpec("t:q", queue, SqsQueueOptions()))  # unset: takes 7
        sub = await other.subscribe(SubscribeSpec("t:c", queue, 1, 1))
        await other.publish(queue, msg())
        async with asyncio.timeout(WAIT_S):
            assert (await sub.receive()).lease_s == 7


async def test_create_false_needs_the_queue_to_exist() -> None:
    async with running() as driver:
        with pytest.raises(DriverError, match=r"does not exist.*create: false"):
            await declare(driver, name(), create=False)


async def test_a_fifo_queue_keeps_order_and_drops_a_duplicate_id() -> None:
    async with running() as driver:
        queue = name(".fifo")
        await declare(driver, queue)
        first, second = msg(b'"a"'), msg(b'"b"')
        for m in (first, second, first):  # the third is the first again: dropped
            await driver.publish(queue, m)
        sub = await driver.subscribe(SubscribeSpec("t:c", queue, 10, 10))
        got = []
        for _ in range(2):
            async with asyncio.timeout(WAIT_S):
                delivery = await sub.receive()
            got.append(delivery.message.id)
            await delivery.ack()
        assert got == [first.id, second.id]
        await driver.wait_idle(queue, timeout_s=WAIT_S)


# -- leases, attempts, stopping ----------------------------------------------------------


async def test_a_release_made_elsewhere_counts_a_receive() -> None:
    """What ``attempts: approximate`` means: SQS counts every receive; a driver
    subtracts only the releases it made itself."""
    async with running() as one, running() as two:
        queue = name()
        await declare(one, queue)
        await declare(two, queue)
        await one.publish(queue, msg())
        sub = await one.subscribe(SubscribeSpec("t:one", queue, 1, 1))
        first = await sub.receive()
        await sub.close()  # so that ``one`` does not take it again itself
        await first.release()
        async with asyncio.timeout(WAIT_S):
            again = await (await two.subscribe(SubscribeSpec("t:two", queue, 1, 1))).receive()
        assert (again.message.id, again.attempt) == (first.message.id, 2)


async def test_a_nack_delay_past_what_sqs_allows_is_shortened_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running() as driver:
        queue = name()
        await declare(driver, queue)
        await driver.publish(queue, msg())
        sub = await driver.subscribe(SubscribeSpec("t:late", queue, 1, 1))
        async with asyncio.timeout(WAIT_S):
            delivery = await sub.receive()
        with caplog.at_level(logging.WARNING, logger="wippy_queue.drivers.sqs"):
            await delivery.nack(delay_s=13 * 3600)
        await sub.close()
        assert (await driver.info(queue)).delayed == 1  # held back, not dropped
    assert re.search(r"46800s delay comes back after 431\d\ds", caplog.text)  # 12 h - held
    assert "at most 12 h from its receive" in caplog.text


async def test_a_stop_never_waits_for_a_long_poll_and_hides_nothing() -> None:
    async with running(wait_time=20) as driver:
        queue = name()
        await declare(driver, queue, visibility_timeout=30)
        sub = await driver.subscribe(SubscribeSpec("t:c", queue, 10, 10))
        pending = asyncio.create_task(sub.receive())
        await asyncio.sleep(0.2)  # its long poll is out at SQS
        started = time.monotonic()
        await sub.close()
        await asyncio.gather(pending, return_exceptions=True)
        sent = msg()
        await driver.publish(queue, sent)  # the closed poll may catch it: it gives it back
        other = await driver.subscribe(SubscribeSpec("t:other", queue, 10, 10))
        async with asyncio.timeout(5):  # well within the 30 s visibility timeout
            delivery = await other.receive()
        assert (delivery.message.id, delivery.attempt) == (sent.id, 1)
        await delivery.ack()
    assert time.monotonic() - started < 5


async def test_a_stop_ends_a_poll_that_swallowed_its_cancellation() -> None:
    """Python 3.11's ``wait_for`` (inside HTTP clients) can drop a cancellation: the
    stop cancels a late poll again instead of waiting for it as long as it runs."""
    swallowed = asyncio.Event()

    async def poll_swallowing_one_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)  # the second cancellation ends it

    driver = new_driver()
    await driver.start()
    poller = asyncio.create_task(poll_swallowing_one_cancel())
    driver.pollers.add(poller)
    await asyncio.sleep(0)  # (it is running)
    async with asyncio.timeout(WAIT_S):
        await driver.stop()
    assert swallowed.is_set() and poller.cancelled()


async def test_a_handler_running_past_its_lease_keeps_its_message(tmp_path: Path) -> None:
    handled: list[tuple[str, int]] = []

    async def handler(data: Any) -> None:
        import wippy_queue

        await asyncio.sleep(LEASE_S * 2.5)  # the runtime extends the lease meanwhile
        message = wippy_queue.current_message()
        handled.append((message.id, message.attempt))

    queue = name()
    consumer = {
        "kind": "queue.consumer",
        "queue": "jobs",
        "func": "h",
        "concurrency": 2,
        "lifecycle": {"auto_start": True},
    }
    entries = {
        "version": "1.0",
        "namespace": "app",
        "entries": [
            {"name": "sqs", "kind": "queue.driver.sqs", **driver_fields(shared().url),
             "lifecycle": {"auto_start": True}},
            {"name": "jobs", "kind": "queue.queue", "driver": "sqs", "queue_name": queue,
             "driver_options": {"sqs": {"visibility_timeout": LEASE_S}}},
            {"name": "h", "kind": "function.python", "source": "file://h.py", "method": "h"},
            {"name": "one", **consumer},
            {"name": "two", **consumer},
        ],
    }  # fmt: skip
    (tmp_path / "h.py").write_text("def h(data):\n    pass\n")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(entries))
    async with Runtime.load(tmp_path, plugins=handler_plugins(handler)) as runtime:
        message_id = await runtime.publish("app:jobs", {"n": 1})
        await runtime.join("app:jobs", timeout=WAIT_S * 2)
    assert handled == [(message_id, 1)]  # once: no other consumer got it meanwhile


# -- configuration ---------------------------------------------------------------------


def load_problems(tmp_path: Path, driver: dict[str, Any], queue: dict[str, Any]) -> str:
    entries = {
        "version": "1.0",
        "namespace": "app",
        "entries": [
            {"name": "sqs", "kind": "queue.driver.sqs", **driver},
            {"name": "jobs", "kind": "queue.queue", "driver": "sqs", **queue},
        ],
    }
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(entries))
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path)
    return str(caught.value)


def test_credentials_in_an_entry_file_are_refused(tmp_path: Path) -> None:
    problems = load_problems(
        tmp_path,
        {"region": "us-east-1", "aws_secret_access_key": "x", "aws_access_key_id": "y"},
        {},
    )
    assert "credentials are never read from entry files" in problems
    assert "AWS_ACCESS_KEY_ID" in problems


def test_max_length_is_not_offered(tmp_path: Path) -> None:
    problems = load_problems(
        tmp_path, {"region": "us-east-1"}, {"driver_options": {"sqs": {"max_length": 10}}}
    )
    assert "SQS cannot bound a queue" in problems


def test_an_empty_endpoint_means_aws_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQS_ENDPOINT_URL", raising=False)
    config = SqsDriverConfig.model_validate({"region": "eu-west-1", "endpoint_url": ""})
    assert config.endpoint_url is None
    with pytest.raises(ValueError, match="whole seconds"):
        SqsQueueOptions(visibility_timeout="1500ms")
    assert SqsQueueOptions(visibility_timeout="2m").visibility_timeout == 120


def test_the_readme_entries_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### SQS (`queue.driver.sqs`)") :]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.delenv("SQS_ENDPOINT_URL", raising=False)
    entries = "".join(f"  {line}\n" for line in block.splitlines())
    (tmp_path / "app.yaml").write_text(f"version: '1.0'\nnamespace: app\nentries:\n{entries}")
    runtime = Runtime.load(tmp_path)
    driver = runtime.drivers["app:sqs"]
    assert isinstance(driver, SqsDriver)
    assert (driver.config.region, driver.config.endpoint_url) == ("us-east-1", None)
    assert runtime.queues["app:tasks"].spec.option("visibility_timeout") == 30
