"""The database file: how it is recognised, opened and laid out, and every operation
on it. Runs on the writer thread only (``writer.py``), inside its transactions.

One row per message in ``messages`` (its queue, place, lease and attempts) and its
envelope in ``bodies`` (so a lease change never rewrites a large body). A message is

- ready when it has no lease and ``due <= now``: ``due`` is then its place in the
  queue (the time it was published or nacked; a release keeps its place);
- delayed when it has no lease and ``due > now`` (a nack with a delay);
- in flight when it has a lease (``lease`` is the claim's token); ``due`` is then the
  end of the lease, after which any process may claim it again (its holder died).

``nackers`` lists the consumers (registry IDs) that nacked a message: they skip it
while a live consumer that has not nacked it exists (``consumers``: each
subscription of every process, renewed by its process every few seconds), so on a
queue shared by tenants a foreign tenant's consumer cannot use up a message's attempts while its
own tenant's consumer waits; once every live consumer has nacked it, anyone takes it.

So one index, ``(queue, due)``, finds what to claim in queue order, expired leases
included. A partitioned queue's rows carry their partition (``part``; ``''`` for a
message without one) and ``partitions`` lists the partitions a queue has had: a
subscriber of one partition claims through the index ``(queue, part, due)``; one of
every partition takes them in turn (each claim starts at the next partition and
interleaves them), so one busy partition cannot starve another. A consumer's
``consumers`` row names its partition (NULL: every one), so only those that may take
a message count as its other live consumers. Times are the system clock's seconds,
shared by every process on the machine.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from wippy_queue.errors import DriverError
from wippy_queue.queue.envelope import pack, unpack
from wippy_queue.queue.message import Message

#: ``PRAGMA application_id`` of our files ("WQSQ"): how a file is known to be ours
APPLICATION_ID = 0x57515351
SCHEMA_VERSION = 2

SCHEMA = (
    """CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        max_length INTEGER,
        visibility_timeout REAL NOT NULL,
        expired INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        due REAL NOT NULL,
        ready_at REAL NOT NULL,
        lease INTEGER,
        owner INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        nackers TEXT,
        part TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX messages_due ON messages (queue, due, lease)",
    "CREATE INDEX messages_part ON messages (queue, part, due)",
    """CREATE TABLE partitions (
        queue TEXT NOT NULL,
        part TEXT NOT NULL,
        PRIMARY KEY (queue, part)
    ) WITHOUT ROWID""",
    "CREATE TABLE bodies (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    """CREATE TABLE consumers (
        subscription INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        consumer TEXT NOT NULL,
        alive_until REAL NOT NULL,
        part TEXT
    )""",
)

#: from schema 1 (no partitions) to 2; the rows it had are the default partition's
MIGRATE_1 = (
    "ALTER TABLE messages ADD COLUMN part TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX messages_part ON messages (queue, part, due)",
    SCHEMA[4],  # partitions
    "ALTER TABLE consumers ADD COLUMN part TEXT",
)

#: a subscription counts as live this long after its process last renewed it (a
#: third of this apart, see ``SqliteDriver``); a process that died stops counting then
CONSUMER_TTL_S = 10.0
#: separates the consumer IDs in ``messages.nackers``
SEP = "\x1f"

#: SQLite's result codes, as Python names them, and what to tell a person
_ADVICE = {
    "SQLITE_NOTADB": "is not a SQLite database, or is corrupt: move it aside or set another path",
    "SQLITE_CORRUPT": "is corrupt: move it aside (keep it for recovery) or set another path",
    "SQLITE_READONLY": "cannot be written (read-only file, folder or filesystem): "
    "check its permissions or set another path",
    "SQLITE_CANTOPEN": "cannot be opened or created: check that its folder exists and is "
    "writable, or set another path",
    "SQLITE_PERM": "may not be written: check its permissions",
    "SQLITE_FULL": "cannot grow: the disk is full; free space",
    "SQLITE_IOERR": "could not be read or written (an I/O error): check the disk",
    "SQLITE_BUSY": "is locked by another process for too long",
    "SQLITE_LOCKED": "is locked",
    "SQLITE_AUTH": "may not be accessed",
    "SQLITE_NOLFS": "is too large for this system",
}


def translate(err: sqlite3.Error, path: Path, doing: str) -> DriverError:
    """Our error for a SQLite one: the path, what failed and what to do."""
    name = getattr(err, "sqlite_errorname", "") or ""
    base = name.split("_")[0] + "_" + name.split("_")[1] if name.count("_") >= 2 else name
    advice = _ADVICE.get(name) or _ADVICE.get(base)
    if advice is None:
        advice = "failed"
    return DriverError(f"sqlite database {path} {advice} ({doing}: {name or 'error'}: {err})")


class NotOurs(DriverError):
    """The file is a SQLite database of something else (or a newer schema)."""


def open_database(path: Path, synchronous: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (creating it if new) our database at ``path``; DriverError naming the path
    for a file that is not ours, corrupt, unreadable or unwritable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DriverError(
            f"sqlite database {path}: its folder cannot be created ({err}): set another path"
        ) from err
    if path.is_dir():
        raise DriverError(f"sqlite database {path} is a directory: give a file path")
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise translate(err, path, "opening it") from err
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        _prepare(conn, path, busy_timeout_s)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except DriverError:
        conn.close()
        raise
    except sqlite3.Error as err:
        conn.close()
        raise translate(err, path, "opening it") from err
    return conn


def open_wal(conn: sqlite3.Connection, path: Path) -> int | None:
    """Take over ``synchronous = full``'s sync at each commit: the write-ahead log of
    ``path``, opened for the caller to sync after each commit (SQLite's own ``full``
    does just that, inside the commit), and the connection turned to ``normal`` (which
    still syncs at checkpoints). The caller can then hand a claim's result over before
    the sync and everything else after it. None (SQLite syncs, as before) where the log
    cannot be opened."""
    try:
        wal = os.open(f"{path}-wal", os.O_RDONLY)
    except OSError:
        return None
    try:
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # (SQLite syncs the folder of a log it created at the log's first sync)
            os.fsync(folder)
        finally:
            os.close(folder)
        conn.execute("PRAGMA synchronous = NORMAL")
    except (OSError, sqlite3.Error):
        os.close(wal)
        return None
    return wal


def _prepare(conn: sqlite3.Connection, path: Path, busy_timeout_s: float) -> None:
    """Check the file is ours (or empty: make it ours), touching nothing of a file that
    is not, then turn on write-ahead logging."""
    _check_ours(conn, path)
    mode = _turn_on_wal(conn, busy_timeout_s)
    if str(mode).lower() != "wal":
        raise DriverError(
            f"sqlite database {path}: write-ahead logging cannot be turned on (journal mode "
            f"stays {mode!r}; a network filesystem?): put the file on a local disk"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _check_ours(conn, path):  # still empty: another process did not make it first
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif conn.execute("PRAGMA user_version").fetchone()[0] == 1:
            for statement in MIGRATE_1:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _turn_on_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> str:
    """``PRAGMA journal_mode = WAL``, tried again while the file is busy: connections
    opening a new file at the same moment (two processes starting) can make the switch
    fail with SQLITE_BUSY at once, without waiting (its busy handler is not asked)."""
    deadline = time.monotonic() + busy_timeout_s
    pause_s = 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as err:
            if not busy(err) or time.monotonic() >= deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.05)


def busy(err: sqlite3.Error) -> bool:
    """Another connection holds the lock this one needs."""
    return (getattr(err, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY")


def _check_ours(conn: sqlite3.Connection, path: Path) -> bool:
    """True if the database is empty (ours to make); NotOurs unless it is ours.
    The tables are read first: another process may make the file between these reads
    (it writes tables and id in one commit), and tables seen mean its id is seen too."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and not tables:
        return True
    if app_id != APPLICATION_ID:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "") or "none"
        raise NotOurs(
            f"sqlite database {path} is not a wippy-queue database (application_id "
            f"{app_id:#x}, tables: {shown}); refusing to touch it: set another path"
        )
    if version > SCHEMA_VERSION:
        raise NotOurs(
            f"sqlite database {path} has wippy-queue schema {version}, newer than this "
            f"version's {SCHEMA_VERSION}: upgrade wippy-queue"
        )
    return False


#: a publish: (queue, message, its max_length, its partition or None)
Publish = tuple[str, Message, int | None, str | None]


class Claimed(NamedTuple):
    """One claimed message: its row, the claim's lease token and its attempt number.
    (A named tuple: one is made per message claimed, at a third of a frozen dataclass.)"""

    seq: int
    token: int
    attempt: int
    message: Message


@dataclass
class Effects:
    """What a committed batch changed that waiting coroutines care about."""

    #: queues that got a ready message (wake their receivers)
    ready: set[str] = field(default_factory=set)
    #: queues that got room (wake their blocked publishers)
    room: set[str] = field(default_factory=set)
    #: (queue, time) of delayed messages (wake their receivers then)
    due: list[tuple[str, float]] = field(default_factory=list)
    #: how many commits (each one fsync with synchronous full, but one of claims alone)
    commits: int = 0
    #: messages were removed (acked, dropped): a queue may have become idle
    removed: bool = False


class Store:
    """The operations, on one connection; the writer runs them inside its transactions."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.now = time.time()
        self.effects = Effects()
        #: ready + delayed count per bounded queue, known within the current batch
        self._waiting: dict[str, int] = {}
        #: (queue, partition) rows known to be in ``partitions`` (committed)
        self._parts: set[tuple[str, str]] = set()
        self._parts_new: set[tuple[str, str]] = set()
        #: per queue, the partition an every-partition claim starts at next
        self._turn: dict[str, int] = {}

    def begin(self) -> None:
        """A new batch: its clock (never behind the last one) and fresh effects."""
        self.now = max(time.time(), self.now)
        self.effects = Effects()
        self._waiting.clear()
        self._parts |= self._parts_new
        self._parts_new.clear()

    def forget(self) -> None:
        """The batch was rolled back: nothing it did happened."""
        self.effects = Effects()
        self._waiting.clear()
        self._parts_new.clear()

    # -- queues ------------------------------------------------------------------------

    def declare(self, queue: str, max_length: int | None, visibility_timeout_s: float) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, max_length, visibility_timeout) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET max_length = excluded.max_length, "
            "visibility_timeout = excluded.visibility_timeout",
            (queue, max_length, visibility_timeout_s),
        )

    def holds_any(self, queue: str) -> bool:
        """Whether any message of ``queue`` is left (ready, in flight or delayed): one
        index probe, where ``info`` counts every row."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?)", (queue,)
        ).fetchone()
        return bool(row[0])

    def info(self, queue: str) -> tuple[int, int, int, int, int]:
        """(ready, in_flight, delayed, expired, consumers); expired leases count as in
        flight; consumers are the live subscriptions of every process."""
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE lease IS NULL AND due <= ?1), "
            "count(*) FILTER (WHERE lease IS NOT NULL), "
            "count(*) FILTER (WHERE lease IS NULL AND due > ?1) "
            "FROM messages WHERE queue = ?2",
            (self.now, queue),
        ).fetchone()
        expired = self.conn.execute("SELECT expired FROM queues WHERE name = ?", (queue,))
        found = expired.fetchone()
        consumers = self.conn.execute(
            "SELECT count(*) FROM consumers WHERE queue = ? AND alive_until > ?",
            (queue, self.now),
        ).fetchone()[0]
        return row[0], row[1], row[2], found[0] if found else 0, consumers

    def subscribe(
        self, subscription: int, queue: str, consumer: str, partition: str | None = None
    ) -> None:
        """Register (or keep alive) a subscription of ``consumer`` to ``queue`` (to its
        ``partition``; None: to every partition)."""
        self.conn.execute(
            "INSERT INTO consumers (subscription, queue, consumer, alive_until, part) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscription) DO UPDATE SET "
            "alive_until = excluded.alive_until",
            (subscription, queue, consumer, self.now + CONSUMER_TTL_S, partition),
        )

    def unsubscribe(self, subscription: int) -> None:
        self.conn.execute("DELETE FROM consumers WHERE subscription = ?", (subscription,))
        # and forget the subscriptions of processes that died
        self.conn.execute("DELETE FROM consumers WHERE alive_until < ?", (self.now,))

    # -- publish -----------------------------------------------------------------------

    def publish_many(self, publishes: list[Publish]) -> list[bool]:
        """Enqueue each message (into its partition of a partitioned queue; None: the
        queue has none); for each, False (nothing written) when its queue is full. Rows
        numbered here (the transaction holds the write lock) and written two statements
        for all, not two per message."""
        accepted = [self._admit(*publish) for publish in publishes]
        seq = self.conn.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM messages), 0), "
            "coalesce((SELECT max(seq) FROM bodies), 0))"
        ).fetchone()[0]
        rows, bodies = [], []
        for (queue, message, _, partition), ok in zip(publishes, accepted, strict=True):
            if ok:
                seq += 1
                rows.append((seq, queue, self.now, self.now, partition or ""))
                bodies.append((seq, pack(message)))
                self.effects.ready.add(queue)
        self.conn.executemany(
            "INSERT INTO messages (seq, queue, due, ready_at, part) VALUES (?, ?, ?, ?, ?)", rows
        )
        self.conn.executemany("INSERT INTO bodies (seq, data) VALUES (?, ?)", bodies)
        return accepted

    def _admit(
        self, queue: str, message: Message, max_length: int | None, partition: str | None
    ) -> bool:
        """Whether a bounded queue has room for one more (counted within the batch); the
        partition recorded as one the queue has."""
        if max_length is not None:
            waiting = self._waiting.get(queue)
            if waiting is None:
                waiting = self.conn.execute(
                    "SELECT count(*) FROM messages WHERE queue = ? AND lease IS NULL", (queue,)
                ).fetchone()[0]
            if waiting >= max_length:
                self._waiting[queue] = waiting
                return False
            self._waiting[queue] = waiting + 1
        if partition is not None and (queue, partition) not in self._parts:
            self.conn.execute(
                "INSERT OR IGNORE INTO partitions (queue, part) VALUES (?, ?)", (queue, partition)
            )
            self._parts_new.add((queue, partition))
        return True

    # -- claim -------------------------------------------------------------------------

    def claim(
        self,
        queue: str,
        limit: int,
        lease_s: float,
        owner: int,
        consumer: str,
        partition: str | None = None,
        partitioned: bool = False,
    ) -> tuple[list[Claimed], float | None]:
        """Lease up to ``limit`` ready messages (expired leases included) of ``partition``
        (None: of every partition, in turn), in queue order, skipping those ``consumer``
        nacked while another live consumer may take them; with none, the time the next
        one falls due (None: nothing to wait for)."""
        if partition is not None:
            found = self._claimable(queue, limit, consumer, partition)
        elif partitioned:
            found = self._claimable_in_turn(queue, limit, consumer)
        else:
            found = self._claimable(queue, limit, consumer, None)
        if not found:
            if partition is None:
                row = self.conn.execute(
                    "SELECT min(due) FROM messages WHERE queue = ? AND due > ?",
                    (queue, self.now),
                ).fetchone()
            else:
                row = self.conn.execute(
                    "SELECT min(due) FROM messages WHERE queue = ? AND part = ? AND due > ?",
                    (queue, partition, self.now),
                ).fetchone()
            return [], row[0]
        token = secrets.randbits(62) + 1
        seqs = [seq for seq, _ in found]
        marks = _marks(seqs)
        # (no RETURNING: it made the statement dearer; the write lock is held, so
        # each attempt count is the one read above, plus this one)
        self.conn.execute(
            f"UPDATE messages SET lease = ?, owner = ?, due = ?, attempts = attempts + 1 "
            f"WHERE seq IN ({marks})",
            (token, owner, self.now + lease_s, *seqs),
        )
        bodies = dict(
            self.conn.execute(f"SELECT seq, data FROM bodies WHERE seq IN ({marks})", seqs)
        )
        self._waiting.pop(queue, None)
        self.effects.room.add(queue)
        return [
            Claimed(s, token, tried + 1, _message(s, bodies.get(s, b""))) for s, tried in found
        ], None

    def _claimable_in_turn(self, queue: str, limit: int, consumer: str) -> list[tuple[int, int]]:
        """Every partition's claimable messages, interleaved: the first of each partition
        (starting at this queue's turn), then the second of each, ..."""
        parts = [
            row[0]
            for row in self.conn.execute(
                "SELECT part FROM partitions WHERE queue = ? ORDER BY part", (queue,)
            )
        ]
        if "" not in parts:  # messages without a partition (e.g. published before the
            parts.insert(0, "")  # queue had any, or from schema 1) are listed or not
        if len(parts) <= 1:  # one partition (every unpartitioned queue): queue order
            return self._claimable(queue, limit, consumer, None)
        turn = self._turn.get(queue, 0) % len(parts)
        self._turn[queue] = turn + 1
        found = [
            self._claimable(queue, limit, consumer, part) for part in parts[turn:] + parts[:turn]
        ]
        picked: list[tuple[int, int]] = []
        for rank in range(limit):
            for claimable in found:
                if rank < len(claimable):
                    picked.append(claimable[rank])
            if len(picked) >= limit or not any(rank < len(c) for c in found):
                break
        return picked[:limit]

    def _claimable(
        self, queue: str, limit: int, consumer: str, partition: str | None
    ) -> list[tuple[int, int]]:
        """(seq, attempts so far) of up to ``limit`` claimable messages, in queue order."""
        found: list[tuple[int, int]] = []
        others: set[str] | None = None  # live consumers, looked up when first needed
        if partition is None:
            rows = self.conn.execute(
                "SELECT seq, nackers, part, attempts FROM messages WHERE queue = ? AND due <= ? "
                "ORDER BY due",
                (queue, self.now),
            )
        else:
            rows = self.conn.execute(
                "SELECT seq, nackers, part, attempts FROM messages WHERE queue = ? AND part = ? "
                "AND due <= ? ORDER BY due",
                (queue, partition, self.now),
            )
        for seq, nackers, part, attempts in rows:
            if nackers is not None and f"{SEP}{consumer}{SEP}" in nackers:
                if others is None or partition is None:
                    others = self._live(queue, part) - {consumer}
                if not others <= set(nackers.strip(SEP).split(SEP)):
                    continue  # someone who has not nacked it may take it
            found.append((seq, attempts))
            if len(found) >= limit:
                break
        rows.close()
        return found

    def _live(self, queue: str, partition: str) -> set[str]:
        """The live consumers that may take a message of ``partition``."""
        rows = self.conn.execute(
            "SELECT DISTINCT consumer FROM consumers WHERE queue = ? AND alive_until > ? "
            "AND (part IS NULL OR part = ?)",
            (queue, self.now, partition),
        )
        return {row[0] for row in rows}

    # -- settles -----------------------------------------------------------------------

    def ack_many(self, leases: list[tuple[int, int]]) -> list[bool]:
        """Remove the message of each ``(seq, token)`` lease still ours; for each, whether
        it was. A statement per claim (its messages share the token), not two per message."""
        by_token: dict[int, list[int]] = {}
        for seq, token in leases:
            by_token.setdefault(token, []).append(seq)
        removed: set[tuple[int, int]] = set()
        for token, seqs in by_token.items():
            for chunk in _chunks(seqs):
                rows = self.conn.execute(
                    f"DELETE FROM messages WHERE lease = ? AND seq IN ({_marks(chunk)}) "
                    "RETURNING seq",
                    (token, *chunk),
                )
                removed.update((row[0], token) for row in rows)
        acked = [seq for seq, _ in removed]
        for chunk in _chunks(acked):
            self.conn.execute(f"DELETE FROM bodies WHERE seq IN ({_marks(chunk)})", chunk)
        if acked:
            self.effects.removed = True
        # (by lease, not by row: a stale lease acked in the batch of the one that took
        # its message over is not done, though the row went)
        return [lease in removed for lease in leases]

    def drop(self, queue: str, seq: int, token: int, *, expired: bool) -> bool:
        if not self.ack_many([(seq, token)])[0]:
            return False
        if expired:
            self.conn.execute("UPDATE queues SET expired = expired + 1 WHERE name = ?", (queue,))
        return True

    def requeue(self, queue: str, seq: int, token: int, delay_s: float, consumer: str) -> bool:
        """Back at the tail, now or after ``delay_s``; the attempt stays counted and
        ``consumer`` joins its nackers."""
        due = self.now + delay_s
        cursor = self.conn.execute(
            "UPDATE messages SET lease = NULL, due = ?1, ready_at = ?1, nackers = CASE "
            "WHEN instr(coalesce(nackers, ''), ?4) > 0 THEN nackers "
            "ELSE coalesce(nackers, ?5) || ?6 END "
            "WHERE seq = ?2 AND lease = ?3",
            (due, seq, token, f"{SEP}{consumer}{SEP}", SEP, f"{consumer}{SEP}"),
        )
        if cursor.rowcount != 1:
            return False
        self._waiting.pop(queue, None)
        if delay_s > 0:
            self.effects.due.append((queue, due))
        else:
            self.effects.ready.add(queue)
        return True

    def release(self, queue: str, seq: int, token: int) -> bool:
        """Back at its old place, untried: the claim's attempt is taken back."""
        cursor = self.conn.execute(
            "UPDATE messages SET lease = NULL, due = ready_at, attempts = attempts - 1 "
            "WHERE seq = ? AND lease = ?",
            (seq, token),
        )
        if cursor.rowcount != 1:
            return False
        self._waiting.pop(queue, None)
        self.effects.ready.add(queue)
        return True

    def extend(self, leases: Sequence[tuple[int, int]], lease_s: float) -> list[bool]:
        """Renew each ``(seq, token)`` lease for ``lease_s`` more; False for lost ones."""
        until = self.now + lease_s
        return [
            self.conn.execute(
                "UPDATE messages SET due = ? WHERE seq = ? AND lease = ?", (until, seq, token)
            ).rowcount
            == 1
            for seq, token in leases
        ]

    def undelay(self, owner: int, queues: Iterable[str]) -> int:
        """Make the delayed messages ``owner`` nacked ready now (a clean stop)."""
        changed = 0
        for queue in queues:
            changed += self.conn.execute(
                "UPDATE messages SET due = ?1, ready_at = ?1 "
                "WHERE queue = ?2 AND owner = ?3 AND lease IS NULL AND due > ?1",
                (self.now, queue, owner),
            ).rowcount
        return changed


#: the most values one ``IN (...)`` list binds (SQLite allows 32,766 variables)
_CHUNK = 500


def _chunks(values: list[int]) -> list[list[int]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def _marks(values: list[int]) -> str:
    return ",".join("?" * len(values))


def _message(seq: int, data: bytes) -> Message:
    """The stored envelope; one that cannot be read keeps its bytes as the body (the
    consumer then fails to decode it: recorded and dead-lettered as a decode error)."""
    try:
        return unpack(data)
    except Exception:
        return Message(f"sqlite-row-{seq}", data, {})
