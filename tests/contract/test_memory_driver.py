"""Memory-driver behaviour beyond the shared contract."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.drivers.memory import MemoryDriver
from wippy_queue.queue.driver import QueueSpec, SubscribeSpec
from wippy_queue.queue.message import Message


async def test_a_nacked_message_is_offered_to_another_waiting_consumer_first() -> None:
    driver = MemoryDriver("t:mem")
    await driver.start()
    await driver.declare(QueueSpec("t:q", "q"))
    first = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
    second = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
    await driver.publish("q", Message("m1", b"{}", {}))
    delivery = await first.receive()
    # both consumers wait again; the one that nacked asked first
    again_first = asyncio.create_task(first.receive())
    await asyncio.sleep(0)
    again_second = asyncio.create_task(second.receive())
    await asyncio.sleep(0)
    for _ in range(3):
        await delivery.nack(requeue=True)
        done, _ = await asyncio.wait(
            [again_first, again_second], timeout=2, return_when=asyncio.FIRST_COMPLETED
        )
        assert done == {again_second}, "the consumer that nacked it took it back"
        delivery = again_second.result()
        assert delivery.message.id == "m1"
        # now `second` nacks: `first` (still waiting) must get it
        again_second = asyncio.create_task(second.receive())
        await asyncio.sleep(0)
        await delivery.nack(requeue=True)
        done, _ = await asyncio.wait(
            [again_first, again_second], timeout=2, return_when=asyncio.FIRST_COMPLETED
        )
        assert done == {again_first}
        delivery = again_first.result()
        again_first = asyncio.create_task(first.receive())
        await asyncio.sleep(0)
    await delivery.ack()
    again_first.cancel()
    again_second.cancel()
    await asyncio.gather(again_first, again_second, return_exceptions=True)
    assert (await driver.info("q")).idle


async def test_a_lone_consumer_gets_its_nacked_message_back() -> None:
    driver = MemoryDriver("t:mem")
    await driver.start()
    await driver.declare(QueueSpec("t:q", "q"))
    only = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
    await driver.publish("q", Message("m1", b"{}", {}))
    delivery = await only.receive()
    await delivery.nack(requeue=True)
    async with asyncio.timeout(2):
        again = await only.receive()
    assert again.message.id == "m1" and again.attempt == 2


def test_bad_memory_options_are_load_errors(tmp_path: Path) -> None:
    write(
        tmp_path / "e.yaml",
        """
        namespace: t
        entries:
          - {name: d, kind: queue.driver.memory}
          - name: q
            kind: queue.queue
            driver: d
            driver_options:
              memory: {max_length: -3, colour: red}
          - {name: q2, kind: queue.queue, driver: d, options: {max_length: lots}}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path)
    found = {(p.entry_id, p.field, p.line) for p in caught.value.problems}
    assert found == {
        ("t:q", "driver_options.memory.max_length", 7),
        ("t:q", "driver_options.memory.colour", 7),
        ("t:q2", "options.max_length", 9),
    }
