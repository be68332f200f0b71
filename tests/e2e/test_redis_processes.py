"""The Redis driver across real processes: shared work, ``kill -9``, killed connections.

Each test writes an app on its own stream, starts ``python -m wippy_queue run``
processes on it, publishes through a runtime of its own, and reads what the
handlers recorded (a line per message handled, written when the handler is done).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import services
import yaml
from processes import HANDLER, handled, start, stop, until

from wippy_queue import Runtime

pytestmark = pytest.mark.services


@pytest.fixture
def stream() -> Iterator[str]:
    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    name = f"wq-e2e-{uuid.uuid4().hex[:10]}"
    yield name
    services.redis_delete_prefix(name)


def write_apps(tmp_path: Path, stream: str, *, visibility_s: float = 1.0) -> tuple[Path, Path]:
    """``app/``: the consumer the processes run; ``pub/``: the queue alone, to publish."""
    driver = {
        "name": "redis",
        "kind": "queue.driver.redis",
        "url": services.REDIS_URL,
        "lifecycle": {"auto_start": True},
    }
    queue = {
        "name": "jobs",
        "kind": "queue.queue",
        "driver": "redis",
        "queue_name": stream,
        "driver_options": {"redis": {"visibility_timeout": visibility_s}},
    }
    consumer = {
        "name": "worker",
        "kind": "queue.consumer",
        "queue": "jobs",
        "func": "handle",
        "concurrency": 2,
        "prefetch": 4,
        "lifecycle": {"auto_start": True},
    }
    handler = {
        "name": "handle",
        "kind": "function.python",
        "source": "file://h.py",
        "method": "handle",
    }
    for folder, entries in (("app", [driver, queue, handler, consumer]), ("pub", [driver, queue])):
        (tmp_path / folder).mkdir()
        document = {"namespace": "e2e", "entries": entries}
        (tmp_path / folder / "_index.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "app" / "h.py").write_text(HANDLER)
    return tmp_path / "app", tmp_path / "pub"


async def publish(pub: Path, count: int) -> None:
    async with Runtime.load(pub) as runtime:
        for n in range(count):
            await runtime.publish("e2e:jobs", {"n": n})


async def test_two_processes_share_one_queue_and_handle_each_message_once(
    tmp_path: Path, stream: str
) -> None:
    app, pub = write_apps(tmp_path, stream)
    out = tmp_path / "out.txt"
    workers = [start(app, out, sleep_s=0.005), start(app, out, sleep_s=0.005)]
    try:
        await publish(pub, 200)
        await until(lambda: len(handled(out)) >= 200, "200 handled")
    finally:
        errors = [stop(w) for w in workers]
    done = handled(out)
    assert Counter(n for _, n in done) == Counter(range(200)), errors  # each exactly once
    assert {pid for pid, _ in done} == {w.pid for w in workers}  # both took a share
    assert all("Traceback" not in err for err in errors), errors


async def test_messages_a_killed_process_held_are_handled_by_the_other(
    tmp_path: Path, stream: str
) -> None:
    app, pub = write_apps(tmp_path, stream, visibility_s=1.0)
    out = tmp_path / "out.txt"
    doomed = start(app, out, sleep_s=0.3)
    survivor = None
    try:
        await publish(pub, 30)
        await until(lambda: len(handled(out)) >= 2, "the first process at work")
        doomed.kill()  # SIGKILL: it holds messages it took and did not finish
        doomed.wait()
        survivor = start(app, out, sleep_s=0.0)
        await until(lambda: {n for _, n in handled(out)} == set(range(30)), "all handled")
    finally:
        stop(doomed)
        err = stop(survivor) if survivor else ""
    by_survivor = {n for pid, n in handled(out) if pid == survivor.pid}  # type: ignore[union-attr]
    assert by_survivor, err
    assert "Traceback" not in err, err


async def test_killed_connections_are_reconnected_and_nothing_is_lost(
    tmp_path: Path, stream: str
) -> None:
    import redis

    app, pub = write_apps(tmp_path, stream)
    out = tmp_path / "out.txt"
    worker = start(app, out, sleep_s=0.01)
    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        await publish(pub, 60)
        await until(lambda: len(handled(out)) >= 10, "some handled")
        ours = [c for c in client.client_list() if f"-{worker.pid}-" in c.get("name", "")]
        assert ours, "the worker's connections carry its pid in their name"
        for connection in ours:
            client.client_kill_filter(_id=connection["id"])
        await until(lambda: {n for _, n in handled(out)} == set(range(60)), "all handled")
    finally:
        client.close()
        err = stop(worker)
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err


async def test_a_plain_xadd_from_any_client_is_consumed(tmp_path: Path, stream: str) -> None:
    import redis

    app, _ = write_apps(tmp_path, stream)
    out = tmp_path / "out.txt"
    client = redis.Redis.from_url(services.REDIS_URL)
    client.xadd(stream, {"body": '{"n": 7}'})  # as redis-cli XADD <queue_name> '*' body ...
    client.close()
    worker = start(app, out)
    try:
        await until(lambda: handled(out) != [], "the plain entry handled")
    finally:
        stop(worker)
    assert [n for _, n in handled(out)] == [7]
