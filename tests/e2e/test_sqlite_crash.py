"""The sqlite driver under real ``SIGKILL``: ``wippy-queue run`` processes on one file.

Each test writes an entry folder in ``tmp_path`` (the database at an absolute path
there, leases of 1 s), runs ``python -m wippy_queue run`` subprocesses whose
handlers append what they did to a file, kills them, and reads the database
afterwards through a fresh driver. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wippy_queue.drivers.sqlite.config import SqliteQueueOptions
from wippy_queue.drivers.sqlite.driver import SqliteDriver
from wippy_queue.queue.codec import get_codec
from wippy_queue.queue.driver import QueueSpec, SubscribeSpec
from wippy_queue.queue.message import Message, new_message_id

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
LEASE_S = 1.0

HANDLERS = '''\
import asyncio
import os

from wippy_queue import current_message
from wippy_queue.queue import publish_async

OUT = os.environ["WQ_TEST_OUT"]


def _log(line):
    with open(OUT, "a") as out:  # one small O_APPEND write: never torn or interleaved
        out.write(line + "\\n")


async def burst(data):
    """Publish 0, 1, 2, ... from 100 concurrent tasks; log each once it returned."""
    numbers = iter(range(data["count"]))

    async def producer():
        for n in numbers:
            await publish_async("app:jobs", {"n": n})
            _log(str(n))

    await asyncio.gather(*(producer() for _ in range(100)))


async def work(data):
    await asyncio.sleep(data.get("sleep", 0.0))
    _log(f"{os.getpid()} {data['n']} {current_message().attempt}")
'''


def entries(folder: Path, *, consumer: bool) -> None:
    """The app: a sqlite driver, queue ``jobs`` (with a worker) and queue ``burst``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handlers.py").write_text(HANDLERS)
    lease = {"sqlite": {"visibility_timeout": f"{LEASE_S}s"}}
    docs: list[dict[str, object]] = [
        {
            "name": "disk",
            "kind": "queue.driver.sqlite",
            "path": str(folder / "queues.db"),  # absolute
            "poll_interval": "20ms",
            "lifecycle": {"auto_start": True},
        },
        {"name": "jobs", "kind": "queue.queue", "driver": "app:disk", "driver_options": lease},
        {"name": "burst", "kind": "queue.queue", "driver": "app:disk"},
        {"name": "burst_fn", "kind": "function.python", "source": "file://handlers.py"},
        {"name": "work_fn", "kind": "function.python", "source": "file://handlers.py"},
        {"name": "burster", "kind": "queue.consumer", "queue": "app:burst", "func": "app:burst_fn"},
    ]
    docs[3]["method"], docs[4]["method"] = "burst", "work"
    docs[5]["lifecycle"] = {"auto_start": True}
    if consumer:
        docs.append(
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "app:jobs",
                "func": "app:work_fn",
                "concurrency": 4,
                "prefetch": 8,
                "lifecycle": {"auto_start": True},
            }
        )
    document = {"version": "1.0", "namespace": "app", "entries": docs}
    (folder / "_index.yaml").write_text(json.dumps(document))


@contextmanager
def running(folder: Path, out: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m wippy_queue run FOLDER ARGS``; killed (SIGKILL) if still running after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wippy_queue", "run", str(folder), *args],
        cwd=ROOT,
        env={**os.environ, "WQ_TEST_OUT": str(out)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=WAIT_S)


def lines(out: Path) -> list[str]:
    """The complete lines written so far."""
    if not out.exists():
        return []
    text = out.read_text()
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


def wait_until(condition: Callable[[], bool], what: str, *processes: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"a process exited ({process.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            said = []
            for process in processes:  # (what they logged says why)
                process.kill()
                said.append(process.communicate()[1][-3000:])
            pytest.fail(f"not {what} after {WAIT_S}s; the processes said: {said}")
        time.sleep(0.01)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=WAIT_S)
    assert process.returncode == -signal.SIGKILL


# -- reading and writing the database from the test -----------------------------------


def spec(name: str) -> QueueSpec:
    return QueueSpec(f"app:{name}", name, SqliteQueueOptions(visibility_timeout=LEASE_S))


async def publish(db: Path, numbers: range, **data: object) -> None:
    codec = get_codec("json")
    driver = SqliteDriver("t:disk", db)
    await driver.start()
    try:
        await driver.declare(spec("jobs"))
        await asyncio.gather(
            *(
                driver.publish("jobs", Message(new_message_id(), codec.encode({"n": n, **data})))
                for n in numbers
            )
        )
    finally:
        await driver.stop()


async def queued(db: Path) -> tuple[list[int], int]:
    """(the numbers of every message in ``jobs``, in flight or not, by its body; the
    count info gives), read through a fresh driver once every lease has run out."""
    codec = get_codec("json")
    driver = SqliteDriver("t:disk", db)
    await driver.start()
    try:
        await driver.declare(spec("jobs"))
        info = await driver.info("jobs")
        held = info.message_count
        subscription = await driver.subscribe(SubscribeSpec("t:read", "jobs", held, held or 1))
        async with asyncio.timeout(WAIT_S):  # in-flight ones once their lease ends
            deliveries = [await subscription.receive() for _ in range(held)]
        for delivery in deliveries:
            await delivery.release()
        await subscription.close()
        return [codec.decode(d.message.body)["n"] for d in deliveries], held
    finally:
        await driver.stop()


# -- the tests -------------------------------------------------------------------------


def test_a_kill_during_a_publish_burst_keeps_every_publish_that_returned(tmp_path: Path) -> None:
    app, out = tmp_path / "app", tmp_path / "published.txt"
    entries(app, consumer=False)
    with running(app, out, "--publish", "app:burst", '{"count": 1000000}') as process:
        wait_until(lambda: len(lines(out)) >= 3000, "3000 publishes returned", process)
        kill(process)
    returned = [int(line) for line in lines(out)]
    found, count = asyncio.run(queued(app / "queues.db"))
    assert len(found) == count == len(set(found))
    missing = set(returned) - set(found)
    assert not missing, f"{len(missing)} publishes returned but are not in the queue"


def test_a_kill_during_handling_loses_nothing_after_a_restart(tmp_path: Path) -> None:
    app, out = tmp_path / "app", tmp_path / "handled.txt"
    entries(app, consumer=True)
    total = 60
    asyncio.run(publish(app / "queues.db", range(total), sleep=0.05))
    with running(app, out) as first:
        wait_until(lambda: len(lines(out)) >= 10, "10 messages handled", first)
        kill(first)  # with handlers running and messages prefetched
    before = len(lines(out))
    assert before < total
    with running(app, out, "--until-idle", "--timeout", str(WAIT_S)) as second:
        assert second.wait(timeout=WAIT_S + 10) == 0, second.communicate()[1]
    handled = Counter(int(line.split()[1]) for line in lines(out))
    assert set(handled) == set(range(total))  # each at least once
    # those the killed process held came back with their attempt counted
    retried = [line for line in lines(out)[before:] if line.split()[2] != "1"]
    assert retried, "no message was held by the killed process"
    assert asyncio.run(queued(app / "queues.db")) == ([], 0)


def test_two_processes_on_one_file_handle_each_message_once(tmp_path: Path) -> None:
    app, out = tmp_path / "app", tmp_path / "handled.txt"
    entries(app, consumer=True)
    db = app / "queues.db"
    total = 200
    with running(app, out) as one, running(app, out) as two:

        async def both_consuming() -> bool:
            driver = SqliteDriver("t:disk", db)
            await driver.start()
            try:
                await driver.declare(spec("jobs"))
                return (await driver.info("jobs")).consumer_count == 2
            finally:
                await driver.stop()

        wait_until(lambda: db.exists() and asyncio.run(both_consuming()), "both consume", one, two)
        asyncio.run(publish(db, range(total), sleep=0.005))
        wait_until(lambda: len(lines(out)) >= total, f"{total} handled", one, two)
        for process in (one, two):
            process.send_signal(signal.SIGTERM)
        for process in (one, two):
            assert process.wait(timeout=WAIT_S) == 0
    handled = [line.split() for line in lines(out)]
    assert sorted(int(n) for _, n, _ in handled) == list(range(total))  # each exactly once
    assert {attempt for _, _, attempt in handled} == {"1"}
    assert len({pid for pid, _, _ in handled}) == 2, "both processes took a share"


def test_the_durable_example_killed_and_resumed_loses_nothing(tmp_path: Path) -> None:
    """The README's run of ``examples/durable/`` (in a copy: its database goes beside it)."""
    app = tmp_path / "durable"
    shutil.copytree(ROOT / "examples" / "durable", app)
    tasks = [f"task-{i}" for i in range(1, 9)]
    publish_args = []
    for task in tasks:
        publish_args += ["--publish", "app.queue:tasks", json.dumps({"id": task, "seconds": 0.5})]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with first_log.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "wippy_queue", "run", str(app), *publish_args],
            cwd=ROOT,
            stderr=log,
        )
        try:
            wait_until(lambda: "task_id=task-5" in first_log.read_text(), "task-5 started", process)
        finally:
            process.kill()
            process.wait(timeout=WAIT_S)
    assert process.returncode == -signal.SIGKILL
    with second_log.open("w") as log:
        resume = ["run", str(app), "--until-idle", "--timeout", str(WAIT_S)]
        second = subprocess.run(
            [sys.executable, "-m", "wippy_queue", *resume],
            cwd=ROOT,
            stderr=log,
            timeout=WAIT_S + 10,
        )
    assert second.returncode == 0, second_log.read_text()
    assert (app / "data" / "queues.db").is_file()
    resumed = second_log.read_text()
    assert "task_id=task-5" in resumed  # it was being handled when the first run died
    done = first_log.read_text() + resumed
    assert all(f"task_id={task}" in done for task in tasks)
