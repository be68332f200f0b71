"""The writer: one thread and one connection that run every operation of a driver
instance, committed in groups.

Coroutines submit operations and await futures; the thread takes everything waiting
(up to ``MAX_BATCH``), runs it in one transaction and commits once, so concurrent
publishes and settles share one fsync, and the event loop never touches the disk.
Operations of one kind submitted in the same batch (acks) may ``join`` one
operation over all their items: one statement for many rows, each caller still
waiting on its own future.
A batch that fails is run again one operation per transaction, so only the
operations that cannot be committed fail (each with an error naming the path), and
an operation that failed was never committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from wippy_queue.drivers.sqlite.store import Effects, Store, open_database, translate
from wippy_queue.errors import DriverError

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")

MAX_BATCH = 2000
#: how long one statement waits for another process's lock, and how often a batch that
#: still found the file locked is tried again before its operations fail
BUSY_TIMEOUT_S = 10.0
BUSY_RETRIES = 5


class Request(Generic[T]):
    __slots__ = ("cancelled", "future", "op", "what")

    def __init__(self, op: Callable[[Store], T], future: asyncio.Future[T], what: str) -> None:
        self.op = op
        self.future = future
        self.what = what
        #: set by the submitter: skip it if the thread has not begun it
        self.cancelled = False


class Writer:
    """Runs ``Store`` operations on its own thread, in group-committed transactions."""

    def __init__(self, path: Path, synchronous: str, on_commit: Callable[[Effects], None]) -> None:
        self.path = path
        self.synchronous = synchronous
        self._on_commit = on_commit
        #: batches handed to the thread (None: stop)
        self._requests: queue.SimpleQueue[list[Request[Any]] | None] = queue.SimpleQueue()
        #: submitted on the loop, not yet handed over
        self._pending: list[Request[Any]] = []
        #: joined operations among them, by kind: (their items, their callers' futures)
        self._groups: dict[str, tuple[list[Any], list[asyncio.Future[Any]]]] = {}
        #: submissions so far (joins included): a flush waits until none came for a turn
        self._submitted = 0
        self._seen = 0
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exited: asyncio.Future[None] | None = None
        self._open = False
        #: transactions committed with changes (each an fsync under synchronous full)
        self.commits = 0

    @property
    def open(self) -> bool:
        return self._open

    async def start(self) -> None:
        """Open the database on the thread; DriverError (naming the path) if it cannot be."""
        loop = self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._exited = loop.create_future()
        self._requests = queue.SimpleQueue()
        self._pending, self._flushing = [], False
        self._groups.clear()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"wippy-queue sqlite {self.path.name}"
        )
        self._thread.daemon = True
        self._thread.start()
        await opened
        self._open = True

    def submit(self, op: Callable[[Store], T], what: str) -> Request[T]:
        """Queue ``op``; its result (or error) arrives on ``request.future``."""
        if not self._open or self._loop is None:
            raise DriverError(f"sqlite database {self.path} is closed")
        request = Request(op, self._loop.create_future(), what)
        self._pending.append(request)
        self._submitted += 1
        if not self._flushing:
            self._flushing = True
            self._seen = self._submitted - 1
            self._loop.call_soon(self._flush)
        return request

    def join(
        self, kind: str, item: ItemT, op: Callable[[Store, list[ItemT]], T], what: str
    ) -> asyncio.Future[T]:
        """Add ``item`` to the one ``op`` this batch runs over every item of ``kind``
        (``op`` is the same for a kind); the caller's own future gets ``op``'s whole
        result, or its error. Cancelling that future leaves the item in."""
        group = self._groups.get(kind)
        if group is None:
            items: list[ItemT] = []
            waiters: list[asyncio.Future[T]] = []
            request = self.submit(lambda store: op(store, items), what)
            request.future.add_done_callback(functools.partial(_fan_out, waiters))
            group = self._groups[kind] = (items, waiters)
        else:
            self._submitted += 1
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        group[0].append(item)
        group[1].append(future)
        return future

    def _flush(self) -> None:
        """Hand what was submitted to the thread once a loop iteration passes with no
        more: the callers a commit woke submit their next operations over a few
        iterations, and one batch for all of them is one commit (one fsync)."""
        if self._submitted != self._seen:
            self._seen = self._submitted
            assert self._loop is not None
            self._loop.call_soon(self._flush)
            return
        batch, self._pending = self._pending, []
        self._groups.clear()  # handed over: their items are the thread's now
        self._flushing = False
        self._requests.put(batch)

    async def stop(self) -> None:
        """Finish what was submitted, then close the database."""
        if not self._open:
            return
        self._open = False
        if self._pending:
            self._requests.put(self._pending)
            self._pending = []
            self._groups.clear()
        self._requests.put(None)
        assert self._exited is not None
        await asyncio.shield(self._exited)

    # -- the thread --------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self, opened: asyncio.Future[None]) -> None:
        try:
            conn = open_database(self.path, self.synchronous, BUSY_TIMEOUT_S)
        except DriverError as err:
            self._post(_fail, opened, err)
            self._post(_finish, self._exited)
            return
        except Exception as err:  # e.g. a path sqlite cannot take
            self._post(_fail, opened, DriverError(f"sqlite database {self.path}: {err}"))
            self._post(_finish, self._exited)
            return
        self._post(_finish, opened)
        store = Store(conn, self.path)
        try:
            self._serve(store)
        finally:
            try:
                conn.close()
            except sqlite3.Error as err:
                log.warning("sqlite database %s: closing it failed: %s", self.path, err)
            self._fail_rest()
            self._post(_finish, self._exited)

    def _serve(self, store: Store) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch, stopping = list(first), False
            while len(batch) < MAX_BATCH:  # and whatever else was handed over meanwhile
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch += more
            self._run_batch(store, [r for r in batch if not r.cancelled])
            if stopping:
                return

    def _fail_rest(self) -> None:
        error = DriverError(f"sqlite database {self.path} is closed")
        while True:
            try:
                batch = self._requests.get_nowait()
            except queue.Empty:
                return
            for request in batch or ():
                self._post(_fail, request.future, error)

    def _run_batch(self, store: Store, batch: list[Request[Any]]) -> None:
        if not batch:
            return
        for attempt in range(BUSY_RETRIES + 1):
            try:
                results = self._transaction(store, batch)
            except sqlite3.OperationalError as err:
                if _busy(err) and attempt < BUSY_RETRIES:
                    log.warning("sqlite database %s is locked by another process", self.path)
                    continue
                self._failed(store, batch, err)
                return
            except Exception as err:
                self._failed(store, batch, err)
                return
            self._post(self._deliver, batch, results, store.effects)
            return

    def _transaction(self, store: Store, batch: list[Request[Any]]) -> list[Any]:
        conn = store.conn
        store.begin()
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            results = [request.op(store) for request in batch]
            changed = conn.total_changes != before
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            store.forget()
            raise
        if changed:
            self.commits += 1
        return results

    def _failed(self, store: Store, batch: list[Request[Any]], err: Exception) -> None:
        """A batch could not be committed: alone, each operation succeeds or fails alone."""
        if len(batch) > 1:
            for request in batch:
                self._run_batch(store, [request])
            return
        request = batch[0]
        if isinstance(err, sqlite3.Error):
            error: Exception = translate(err, self.path, request.what)
        elif isinstance(err, DriverError):
            error = err
        else:
            log.error("sqlite database %s: %s failed", self.path, request.what, exc_info=err)
            error = DriverError(f"sqlite database {self.path}: {request.what} failed: {err!r}")
        self._post(_fail, request.future, error)

    def _deliver(self, batch: list[Request[Any]], results: list[Any], effects: Effects) -> None:
        """On the loop: hand each caller its result, then tell the driver what changed."""
        for request, result in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)
        self._on_commit(effects)


def _busy(err: sqlite3.Error) -> bool:
    return (getattr(err, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY")


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error as err:
        log.warning("rollback failed: %s", err)


def _finish(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _fan_out(waiters: list[asyncio.Future[Any]], done: asyncio.Future[Any]) -> None:
    """A joined operation's result (or error) to each caller still waiting."""
    error = done.exception()
    result = None if error is not None else done.result()
    for waiter in waiters:
        if waiter.done():  # (its caller was cancelled)
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
