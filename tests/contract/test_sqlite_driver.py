"""SQLite-driver behaviour beyond the shared contract: where the file is, files that
are not ours (or corrupt, read-only, full), durable delays and truthful info."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import write

from wippy_queue import Runtime
from wippy_queue.drivers.sqlite import driver as sqlite_driver
from wippy_queue.drivers.sqlite import writer
from wippy_queue.drivers.sqlite.config import SqliteQueueOptions
from wippy_queue.drivers.sqlite.driver import SqliteDriver
from wippy_queue.drivers.sqlite.store import Store, open_database
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Delivery,
    LostDelivery,
    QueueSpec,
    SubscribeSpec,
    Subscription,
)
from wippy_queue.queue.message import Message, new_message_id

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 5.0


def spec(max_length: int | None = None, lease_s: float = 30.0) -> QueueSpec:
    options = SqliteQueueOptions(max_length=max_length, visibility_timeout=lease_s)
    return QueueSpec("t:q", "q", options)


def msg(body: bytes = b"{}") -> Message:
    return Message(new_message_id(), body, {})


@contextlib.asynccontextmanager
async def started(path: Path) -> AsyncIterator[SqliteDriver]:
    driver = SqliteDriver("t:disk", path, poll_interval_s=0.02)
    await driver.start()
    try:
        await driver.declare(spec())
        yield driver
    finally:
        await driver.stop()


# -- where the file is ---------------------------------------------------------------


def entry_file(folder: Path, path: str) -> None:
    write(
        folder / "app" / "_index.yaml",
        f"""
        version: "1.0"
        namespace: app
        entries:
          - name: disk
            kind: queue.driver.sqlite
            path: {path}
            lifecycle: {{auto_start: true}}
          - name: jobs
            kind: queue.queue
            driver: app:disk
        """,
    )


@pytest.mark.parametrize(
    "written",
    ["data/queues.db", "file://data/queues.db", "ABSOLUTE", "${env:WQ_TEST_DB_DIR}/queues.db"],
    ids=["plain-relative", "file-relative", "absolute", "env"],
)
async def test_the_path_is_relative_to_the_entry_file(
    tmp_path: Path, written: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = tmp_path / "app" / "data" / "queues.db"
    monkeypatch.setenv("WQ_TEST_DB_DIR", str(expected.parent))
    monkeypatch.chdir(tmp_path)  # not where the entry file is
    entry_file(tmp_path, written.replace("ABSOLUTE", str(expected)))
    async with Runtime.load(tmp_path / "app") as runtime:
        await runtime.publish("app:jobs", {"n": 1})
    assert expected.is_file()
    assert not (tmp_path / "data").exists()


# -- files that are not ours ---------------------------------------------------------


async def start_fails(path: Path) -> str:
    driver = SqliteDriver("t:disk", path)
    with pytest.raises(DriverError) as caught:
        await driver.start()
    assert not driver.running
    message = str(caught.value)
    assert str(path) in message
    return message


async def test_a_database_of_something_else_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
        conn.commit()
    before = path.read_bytes()
    message = await start_fails(path)
    assert "not a wippy-queue database" in message and "users" in message
    assert path.read_bytes() == before


def test_a_new_file_made_by_another_process_meanwhile_is_known_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting on a new file: the other one makes it between the
    statements that look at it (a race a run of two processes hit: read as "not ours")."""
    path = tmp_path / "queues.db"
    connect = sqlite3.connect

    class Raced(sqlite3.Connection):
        looks = 0
        raced = False

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if not sql.startswith("PRAGMA busy_timeout"):
                Raced.looks += 1
            if Raced.looks == 2 and not Raced.raced:  # after the first look, before the next
                Raced.raced = True
                monkeypatch.setattr(sqlite3, "connect", connect)
                open_database(path, "full", 10.0).close()
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **k, factory=Raced))
    with contextlib.closing(open_database(path, "full", 10.0)) as conn:
        assert Raced.raced
        assert conn.execute("SELECT count(*) FROM queues").fetchone()[0] == 0


def test_turning_on_the_log_is_tried_again_while_another_opener_holds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a new file at once: the switch to write-ahead logging can
    fail with SQLITE_BUSY at once (no busy wait); a start failed on it (a run of two
    processes hit it, and a thread race showed it 1 time in 150)."""
    connect = sqlite3.connect

    class Busy(sqlite3.Connection):
        refusals = 2

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.startswith("PRAGMA journal_mode") and Busy.refusals:
                Busy.refusals -= 1
                error = sqlite3.OperationalError("database is locked")
                error.sqlite_errorname = "SQLITE_BUSY"
                raise error
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **k, factory=Busy))
    with contextlib.closing(open_database(tmp_path / "queues.db", "full", 10.0)) as conn:
        assert Busy.refusals == 0
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    "content", [b"hello, I am a text file\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000]
)
async def test_a_file_that_is_no_database_or_is_corrupt_is_a_clear_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "queues.db"
    path.write_bytes(content)
    message = await start_fails(path)
    assert "not a SQLite database" in message or "corrupt" in message
    assert path.read_bytes() == content


async def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    assert "is a directory" in await start_fails(tmp_path)


async def test_a_path_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    assert "cannot be created" in await start_fails(tmp_path / "plain" / "queues.db")


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` and its folder read-only, even for root (immutable attribute)."""
    targets = [path, path.parent]
    for target in targets:
        target.chmod(0o555 if target.is_dir() else 0o444)
    immutable = os.geteuid() == 0
    if immutable:
        for target in targets:
            subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        yield
    finally:
        if immutable:
            for target in targets:
                subprocess.run(["chattr", "-i", str(target)], check=False)
        for target in targets:
            target.chmod(0o755 if target.is_dir() else 0o644)


async def test_a_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "queues.db"
    async with started(path) as driver:
        await driver.publish("q", msg())
    with read_only(path):
        message = await start_fails(path)
    assert "read-only" in message or "cannot be opened" in message


async def test_a_full_disk_fails_the_publish_loudly_and_commits_nothing(tmp_path: Path) -> None:
    async with started(tmp_path / "queues.db") as driver:
        await driver.publish("q", msg())
        sub = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
        held = await sub.receive()
        # the file may not grow past its size now: as if the disk were full
        await driver.call(lambda store: _cap_size(store), "test: cap the size")
        big = msg(b"x" * 200_000)
        with pytest.raises(DriverError, match="disk is full") as caught:
            await driver.publish("q", big)
        assert str(driver.path) in str(caught.value)
        assert f"message {big.id} was not published to queue 'q'" in str(caught.value)
        assert (await driver.info("q")).message_count == 1  # nothing of it committed
        await held.ack()  # what needs no room still works
        assert (await driver.info("q")).message_count == 0


def _cap_size(store: Store) -> None:
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")


def test_run_on_a_foreign_database_says_so_without_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "app" / "other.db"
    entry_file(tmp_path, "other.db")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    result = subprocess.run(
        [sys.executable, "-m", "wippy_queue", "run", str(tmp_path / "app"), "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"sqlite database {db} is not a wippy-queue database" in result.stderr


# -- durable delays, truthful info ---------------------------------------------------


async def test_a_delayed_nack_is_in_the_file_for_every_process(tmp_path: Path) -> None:
    path = tmp_path / "queues.db"
    async with started(path) as one, started(path) as two:
        await one.publish("q", msg())
        sub = await one.subscribe(SubscribeSpec("t:c", "q", 1, 1))
        await (await sub.receive()).nack(delay_s=60)
        info = await two.info("q")
        assert (info.ready, info.in_flight, info.delayed) == (0, 0, 1)


async def test_a_dead_holder_s_lease_counts_in_flight_until_it_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "queues.db"
    lease_s = 0.2
    async with started(path) as observer:
        dead = SqliteDriver("t:dead", path)
        await dead.start()
        await dead.declare(spec(lease_s=lease_s))
        await dead.publish("q", msg())
        held = await (await dead.subscribe(SubscribeSpec("t:c", "q", 1, 1))).receive()
        await asyncio.sleep(lease_s * 2)  # the lease ran out, nobody took it yet
        info = await observer.info("q")
        assert (info.ready, info.in_flight) == (0, 1)
        taker = await observer.subscribe(SubscribeSpec("t:c", "q", 1, 1))
        async with asyncio.timeout(WAIT_S):
            again = await taker.receive()
        assert (again.message.id, again.attempt) == (held.message.id, 2)
        await again.ack()
        await dead.stop()


async def test_acks_of_one_turn_share_a_commit_each_with_its_own_result(tmp_path: Path) -> None:
    """Acks made together are one statement in one commit; a lease taken over fails
    its own ack only, and an ack whose caller was cancelled still commits."""
    lease_s = 0.2
    driver = SqliteDriver("t:disk", tmp_path / "queues.db", poll_interval_s=0.02)
    await driver.start()
    try:
        await driver.declare(spec(lease_s=lease_s))
        for _ in range(4):
            await driver.publish("q", msg())
        late = await (await driver.subscribe(SubscribeSpec("t:late", "q", 1, 1))).receive()
        await asyncio.sleep(lease_s * 2)  # its lease runs out: another takes the message
        other = await driver.subscribe(SubscribeSpec("t:other", "q", 4, 4))
        async with asyncio.timeout(WAIT_S):
            held = [await other.receive() for _ in range(4)]
        assert late.message.id in {d.message.id for d in held}
        retaken = next(d for d in held if d.message.id == late.message.id)
        rest = [d for d in held if d is not retaken]
        commits = driver.commits
        acking = [asyncio.ensure_future(d.ack()) for d in (late, *rest)]
        await asyncio.sleep(0)  # each has made its ack
        acking[1].cancel()
        results = await asyncio.gather(*acking, return_exceptions=True)
        assert isinstance(results[0], LostDelivery)
        assert isinstance(results[1], asyncio.CancelledError)
        assert results[2:] == [None, None]
        assert driver.commits == commits + 1
        info = await driver.info("q")
        assert (info.ready, info.in_flight) == (0, 1), "only the retaken message is left"
        await retaken.ack()
        assert (await driver.info("q")).message_count == 0
    finally:
        await driver.stop()


async def test_publishes_of_one_turn_share_a_commit_and_a_cancelled_one_is_left_out(
    tmp_path: Path,
) -> None:
    async with started(tmp_path / "queues.db") as driver:
        sent = [msg(f'{{"n":{i}}}'.encode()) for i in range(3)]
        commits = driver.commits
        publishing = [asyncio.ensure_future(driver.publish("q", m)) for m in sent]
        await asyncio.sleep(0)  # each has joined the batch's publish
        publishing[1].cancel()
        results = await asyncio.gather(*publishing, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], asyncio.CancelledError)
        assert driver.commits == commits + 1
        sub = await driver.subscribe(SubscribeSpec("t:c", "q", 5, 5))
        async with asyncio.timeout(WAIT_S):
            got = [await sub.receive() for _ in range(2)]
        assert [(d.message.id, d.message.body) for d in got] == [
            (m.id, m.body) for m in (sent[0], sent[2])
        ]
        assert (await driver.info("q")).message_count == 2


async def take(
    driver: SqliteDriver, *, sent: int, limit: int
) -> tuple[Subscription, list[Delivery]]:
    """Publish ``sent`` messages to ``q``; subscribe with room for ``limit`` and take them."""
    for _ in range(sent):
        await driver.publish("q", msg())
    sub = await driver.subscribe(SubscribeSpec("t:c", "q", limit, limit))
    async with asyncio.timeout(WAIT_S):
        return sub, [await sub.receive() for _ in range(limit)]


async def test_a_pipelined_ack_is_told_without_a_future_and_a_failing_callback_harms_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(tmp_path / "queues.db") as driver:
        _, held = await take(driver, sent=3, limit=3)
        heard: list[BaseException | None] = []

        def broken(error: BaseException | None) -> None:
            raise RuntimeError("a bug in the caller")

        held[0].ack_then(heard.append)
        held[1].ack_then(broken)
        awaited = asyncio.ensure_future(held[2].ack())  # (joins the same statement)
        async with asyncio.timeout(WAIT_S):
            await awaited
        assert heard == [None]
        assert "a settle's callback failed" in caplog.text
        assert (await driver.info("q")).message_count == 0


async def test_a_join_ends_as_the_last_ack_commits_not_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "IDLE_POLL_S", 3600.0)  # no poll would end it
    async with started(tmp_path / "queues.db") as driver:
        _, held = await take(driver, sent=2, limit=2)
        joining = asyncio.ensure_future(driver.wait_idle("q"))
        await held[0].ack()
        async with asyncio.timeout(WAIT_S):
            while not driver._idlers._futures:  # (parked until a commit removes one)
                await asyncio.sleep(0.001)
        assert not joining.done(), "idle with a message still held"
        await held[1].ack()
        async with asyncio.timeout(WAIT_S):
            await joining
        with pytest.raises(TimeoutError, match="not idle after"):
            await driver.publish("q", msg())
            await driver.wait_idle("q", timeout_s=0.05)


# -- synchronous full: the writer syncs the log itself ----------------------------------


class HeldSync:
    """Stands in for the writer's log sync: records what it syncs and, while ``hold``
    is set, waits (on the writer thread) until the test lets it go."""

    def __init__(self) -> None:
        self.synced: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = False
        self.fail: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        self.entered.set()
        if self.hold:
            self.release.wait(WAIT_S * 2)  # (past the test's own timeouts)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        os.fsync(fd)


@pytest.fixture
def held_sync(monkeypatch: pytest.MonkeyPatch) -> HeldSync:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("reads /proc/self/fd (Linux) to see which file is synced")
    sync = HeldSync()
    monkeypatch.setattr(writer, "sync_file", sync)
    return sync


async def entered(sync: HeldSync) -> None:
    async with asyncio.timeout(WAIT_S):
        while not sync.entered.is_set():
            await asyncio.sleep(0.001)


async def test_a_publish_returns_only_once_its_commit_is_synced(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    async with started(tmp_path / "queues.db") as driver:
        held_sync.hold = True
        held_sync.entered.clear()
        publishing = asyncio.ensure_future(driver.publish("q", msg()))
        await entered(held_sync)
        for _ in range(20):  # (its result is posted only after the sync returns)
            await asyncio.sleep(0)
        assert not publishing.done(), "a publish returned before its commit was on disk"
        held_sync.release.set()
        async with asyncio.timeout(WAIT_S):
            await publishing
        assert held_sync.synced and set(held_sync.synced) == {f"{tmp_path / 'queues.db'}-wal"}


async def test_a_claim_is_handed_over_before_the_sync_its_acks_after(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    """The overlap that lets a drain handle the next messages while the acks sync."""
    async with started(tmp_path / "queues.db") as driver:
        sub, [first] = await take(driver, sent=2, limit=1)
        # (handed over before its own commit's sync, done once a later result is in)
        await driver.info("q")
        held_sync.hold = True
        held_sync.entered.clear()
        acking = asyncio.ensure_future(first.ack())  # its room claims the second message
        async with asyncio.timeout(WAIT_S):
            second = await sub.receive()  # handed over before the sync (which is held)
        await entered(held_sync)
        assert not acking.done(), "the ack returned before its commit was on disk"
        held_sync.release.set()
        async with asyncio.timeout(WAIT_S):
            await acking
            await second.ack()
        assert (await driver.info("q")).message_count == 0


async def test_a_commit_of_claims_alone_is_not_synced(tmp_path: Path, held_sync: HeldSync) -> None:
    """(A power cut that forgets a claim loses nothing: the message is ready again.)"""
    async with started(tmp_path / "queues.db") as driver:
        await driver.publish("q", msg())
        sub = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
        synced = len(held_sync.synced)
        async with asyncio.timeout(WAIT_S):
            delivery = await sub.receive()
        await driver.info("q")  # (after the claim's commit: nothing left to sync for it)
        assert len(held_sync.synced) == synced, "a commit of a claim alone was synced"
        await delivery.ack()
        assert len(held_sync.synced) == synced + 1, "an ack returned unsynced"


async def test_a_failed_sync_fails_what_waited_for_it_naming_the_file(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    """...and nothing more is written until a restart: after a failed sync the kernel
    may count lost pages as written, so a later sync that works would prove nothing."""
    path = tmp_path / "queues.db"
    async with started(path) as driver:
        held_sync.fail = OSError(5, "Input/output error")
        with pytest.raises(DriverError) as failed:
            await driver.publish("q", msg())
        assert str(path) in str(failed.value) and "could not be synced" in str(failed.value)
        assert driver.failed is not None
        async with asyncio.timeout(WAIT_S):
            told = await driver.failed  # (the supervisor restarts the driver on this)
        assert str(path) in str(told) and "restarted" in str(told)
        with pytest.raises(DriverError, match="nothing more is written"):
            await driver.publish("q", msg())
        await driver.stop()
        await driver.start()
        await driver.declare(spec())
        await driver.publish("q", msg())  # restarted: written again
        assert (await driver.info("q")).message_count >= 1


async def test_with_synchronous_normal_nothing_is_synced_at_a_commit(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    driver = SqliteDriver("t:disk", tmp_path / "queues.db", synchronous="normal")
    await driver.start()
    try:
        await driver.declare(spec())
        await driver.publish("q", msg())
    finally:
        await driver.stop()
    assert held_sync.synced == []


async def test_expired_drops_are_counted_for_every_process(tmp_path: Path) -> None:
    path = tmp_path / "queues.db"
    async with started(path) as one, started(path) as two:
        await one.publish("q", msg())
        delivery = await (await one.subscribe(SubscribeSpec("t:c", "q", 1, 1))).receive()
        await delivery.nack(requeue=False, reason="expired")
        assert (await two.info("q")).expired == 1


async def test_a_bounded_queue_counts_the_messages_of_every_process(tmp_path: Path) -> None:
    path = tmp_path / "queues.db"
    bounded = spec(max_length=2)
    async with started(path) as one, started(path) as two:
        for driver in (one, two):
            await driver.declare(QueueSpec("t:b", "b", bounded.options))
        await one.publish("b", msg())
        await two.publish("b", msg())
        blocked = asyncio.create_task(one.publish("b", msg()))
        done, _ = await asyncio.wait([blocked], timeout=0.1)
        assert not done
        sub = await two.subscribe(SubscribeSpec("t:c", "b", 1, 1))
        await (await sub.receive()).ack()  # room, made by the other instance
        async with asyncio.timeout(WAIT_S):
            await blocked  # found by the poll


# -- schema upgrades -----------------------------------------------------------------

#: the tables of schema 1 (before partitions), as a file of that version holds them
SCHEMA_1 = (
    "CREATE TABLE queues (name TEXT PRIMARY KEY, max_length INTEGER, "
    "visibility_timeout REAL NOT NULL, expired INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE messages (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, due REAL NOT NULL, "
    "ready_at REAL NOT NULL, lease INTEGER, owner INTEGER, "
    "attempts INTEGER NOT NULL DEFAULT 0, nackers TEXT)",
    "CREATE INDEX messages_due ON messages (queue, due, lease)",
    "CREATE TABLE bodies (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE consumers (subscription INTEGER PRIMARY KEY, queue TEXT NOT NULL, "
    "consumer TEXT NOT NULL, alive_until REAL NOT NULL)",
)


async def test_a_schema_1_file_is_upgraded_and_keeps_its_messages(tmp_path: Path) -> None:
    from wippy_queue.drivers.sqlite.store import APPLICATION_ID, SCHEMA_VERSION
    from wippy_queue.queue.envelope import pack

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in SCHEMA_1:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO queues VALUES ('q', NULL, 30.0, 0)")
    old = msg(b'{"old": 1}')
    conn.execute("INSERT INTO messages (seq, queue, due, ready_at) VALUES (1, 'q', 0, 0)")
    conn.execute("INSERT INTO bodies VALUES (1, ?)", (pack(old),))
    conn.commit()
    conn.close()
    async with started(path) as driver:
        subscription = await driver.subscribe(SubscribeSpec("t:c", "q"))
        async with asyncio.timeout(WAIT_S):
            delivery = await subscription.receive()
        assert delivery.message.id == old.id
        await delivery.ack()
        await subscription.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_messages_from_before_a_queue_had_partitions_are_still_claimed(
    tmp_path: Path,
) -> None:
    """A queue declared without partitions, then with them (or a schema 1 file): its
    earlier messages are the '' partition, which ``partitions`` never listed; a consumer
    of every partition takes them in turn with the others (before, they stayed ready
    for good once the queue had two partitions)."""
    path = tmp_path / "queues.db"
    async with started(path) as driver:
        earlier = [msg() for _ in range(3)]
        for message in earlier:
            await driver.publish("q", message)
    partitioned = QueueSpec("t:q", "q", SqliteQueueOptions(), partitioned=True)
    driver = SqliteDriver("t:disk", path, poll_interval_s=0.02)
    await driver.start()
    try:
        await driver.declare(partitioned)
        later = {"a": msg(), "b": msg()}
        for partition, message in later.items():
            await driver.publish("q", message, partition=partition)
        subscription = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
        taken = []
        async with asyncio.timeout(WAIT_S):
            for _ in range(5):
                delivery = await subscription.receive()
                taken.append(delivery.message.id)
                await delivery.ack()
        assert set(taken) == {m.id for m in earlier} | {m.id for m in later.values()}
        assert (await driver.info("q")).message_count == 0
        await subscription.close()
    finally:
        await driver.stop()


async def test_a_claimed_ahead_message_found_lost_at_renewal_is_never_handed_out(
    tmp_path: Path,
) -> None:
    """A process stalled past its leases: another took over the message it had claimed
    ahead, and the renewal says so; that message leaves the buffer (before, the next
    receive handed it out while the other process held it)."""
    path = tmp_path / "queues.db"
    short = QueueSpec("t:q", "q", SqliteQueueOptions(visibility_timeout=0.2))
    one = SqliteDriver("t:one", path, poll_interval_s=0.02)
    two = SqliteDriver("t:two", path, poll_interval_s=0.02)
    await one.start()
    await two.start()
    try:
        for driver in (one, two):
            await driver.declare(short)
        for _ in range(2):
            await one.publish("q", msg())
        stalled = await one.subscribe(SubscribeSpec("t:c", "q", 1, 2))
        async with asyncio.timeout(WAIT_S):
            held = await stalled.receive()
        assert stalled.buffered == 1  # the second, claimed ahead
        other = await two.subscribe(SubscribeSpec("t:c", "q", 2, 2))
        async with asyncio.timeout(WAIT_S):  # both leases run out: taken over
            taken = [await other.receive() for _ in range(2)]
        with pytest.raises(LostDelivery):
            await stalled.extend([held])
        assert stalled.buffered == 0
        for delivery in taken:
            await delivery.ack()
        await stalled.close()
        await other.close()
    finally:
        await one.stop()
        await two.stop()


def test_a_stale_lease_acked_beside_the_one_that_took_its_message_over_is_not_done(
    tmp_path: Path,
) -> None:
    """Two acks of one row in one batch, the first under a lease that ran out: only
    the current lease's is done; the stale one is told it was lost (before, both were
    reported acked, by row)."""
    path = tmp_path / "queues.db"
    conn = open_database(path, "normal", 1.0)
    store = Store(conn, path)

    def tx(op: Any) -> Any:
        store.begin()
        conn.execute("BEGIN IMMEDIATE")
        try:
            return op()
        finally:
            conn.execute("COMMIT")

    try:
        tx(lambda: store.declare("q", None, 30.0))
        tx(lambda: store.publish_many([("q", msg(), None, None)]))
        (stale,), _ = tx(lambda: store.claim("q", 1, 0.05, 1, "t:c"))
        store.now += 1.0  # its lease has run out
        (fresh,), _ = tx(lambda: store.claim("q", 1, 30.0, 2, "t:c"))
        assert fresh.seq == stale.seq and fresh.attempt == 2
        acks = [(stale.seq, stale.token), (fresh.seq, fresh.token)]
        assert tx(lambda: store.ack_many(acks)) == [False, True]
    finally:
        conn.close()


async def test_a_subscription_whose_handlers_hold_all_its_credit_stays_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It claims nothing while its handlers run, yet counts as a live consumer past the
    liveness window (``info``, and the nackers rule that keeps a foreign tenant's
    consumer from using up a message's attempts); before, only a claim renewed it."""
    from wippy_queue.drivers.sqlite import store as sqlite_store

    monkeypatch.setattr(sqlite_store, "CONSUMER_TTL_S", 0.3)
    monkeypatch.setattr(sqlite_driver, "CONSUMER_TTL_S", 0.3)
    async with started(tmp_path / "queues.db") as driver:
        sub, [held] = await take(driver, sent=2, limit=1)  # no room: no more claims
        assert (await driver.info("q")).consumer_count == 1
        await asyncio.sleep(0.6)  # twice the window, the handler still busy
        assert (await driver.info("q")).consumer_count == 1
        await held.ack()
        await sub.close()


async def test_a_stop_cancelled_midway_still_closes_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a subscription closes, the stop still stops the writer thread
    and closes the file (before, the thread stayed, its connection open, and a restart
    started a second one beside it)."""
    driver = SqliteDriver("t:disk", tmp_path / "queues.db", poll_interval_s=0.02)
    await driver.start()
    await driver.declare(spec())
    subscription = await driver.subscribe(SubscribeSpec("t:c", "q", 1, 1))
    closing = asyncio.Event()

    async def close_slowly() -> None:
        closing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(subscription, "close", close_slowly)
    stopping = asyncio.ensure_future(driver.stop())
    async with asyncio.timeout(WAIT_S):
        await closing.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT_S):
            await stopping
    assert not driver.writer.open
