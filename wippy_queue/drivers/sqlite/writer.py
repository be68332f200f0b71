"""The writer: one thread and one connection that run every operation of a driver
instance, committed in groups.

Coroutines submit operations and await futures; the thread takes everything waiting
(up to ``MAX_BATCH``), runs it in one transaction and commits once, so concurrent
publishes and settles share one fsync, and the event loop never touches the disk.
With ``synchronous: full`` the thread syncs the write-ahead log itself after the
commit, and hands a claim's result over before that sync, every other result after it:
the consumer handles the claimed messages while the acks that came with the claim
reach the disk (a power cut in between forgets the claim: the messages are ready again,
as if never claimed; what was published or settled is on disk before it returns).
Operations of one kind submitted in the same batch (publishes, acks) may ``join``
one operation over all their items: a statement for many rows, each caller still
waiting on its own future (or told by its callback: ``join_then``) for its own result.
A batch that fails is run again one operation per transaction, so only the
operations that cannot be committed fail (each with an error naming the path), and
an operation that failed was never committed (but for a commit whose sync failed:
its operations fail and may be in the file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from wippy_queue.drivers.sqlite.store import (
    Effects,
    Store,
    busy,
    open_database,
    open_wal,
    translate,
)
from wippy_queue.errors import DriverError

log = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
#: a joined caller's callback: (its result, or the error)
Then = Callable[[T | None, BaseException | None], None]

MAX_BATCH = 2000
#: how long one statement waits for another process's lock, and how often a batch that
#: still found the file locked is tried again before its operations fail
BUSY_TIMEOUT_S = 10.0
BUSY_RETRIES = 5
#: how the log is synced (what SQLite's ``full`` calls on Linux; fsync where there is none)
sync_file = getattr(os, "fdatasync", os.fsync)


class Request(Generic[T]):
    __slots__ = ("cancelled", "future", "joined", "op", "synced", "what")

    def __init__(
        self, op: Callable[[Store], T], future: asyncio.Future[T], what: str, synced: bool = True
    ) -> None:
        self.op = op
        self.future = future
        self.what = what
        #: its result waits until its commit is on disk (False: a claim, see above)
        self.synced = synced
        #: set by the submitter: skip it if the thread has not begun it
        self.cancelled = False
        #: the callers joined in it (``Writer.join``), told directly when it is done
        self.joined: _Joined[Any, Any] | None = None

    def resolve(self, result: Any) -> None:
        """On the loop: the operation committed with ``result``."""
        if self.joined is not None:
            self.joined.fan_out(result, None)  # (not a callback: no extra loop turn)
        elif not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        """On the loop: the operation failed with ``error`` (nothing of it committed)."""
        if self.joined is not None:
            self.joined.fan_out(None, error)
        elif not self.future.done():
            self.future.set_exception(error)


class Writer:
    """Runs ``Store`` operations on its own thread, in group-committed transactions."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        on_commit: Callable[[Effects], None],
        on_broken: Callable[[DriverError], None] = lambda error: None,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._on_commit = on_commit
        #: told (on the loop) when a sync failed: nothing more is written until a restart
        self._on_broken = on_broken
        self._broken: DriverError | None = None
        #: batches handed to the thread (None: stop)
        self._requests: queue.SimpleQueue[list[Request[Any]] | None] = queue.SimpleQueue()
        #: submitted on the loop, not yet handed over
        self._pending: list[Request[Any]] = []
        #: joined operations among them, by kind
        self._groups: dict[str, _Joined[Any, Any]] = {}
        #: submissions so far (joins included): a flush waits until none came for a turn
        self._submitted = 0
        self._seen = 0
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: the write-ahead log, synced by the thread after each commit (synchronous full)
        self._wal: int | None = None
        self._exited: asyncio.Future[None] | None = None
        self._open = False
        #: transactions committed with changes (each an fsync under synchronous full, but
        #: one of claims alone)
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

    def submit(self, op: Callable[[Store], T], what: str, *, synced: bool = True) -> Request[T]:
        """Queue ``op``; its result (or error) arrives on ``request.future``: once its
        commit is on disk, or once committed if not ``synced``."""
        if not self._open or self._loop is None:
            raise DriverError(f"sqlite database {self.path} is closed")
        request = Request(op, self._loop.create_future(), what, synced)
        self._pending.append(request)
        self._submitted += 1
        if not self._flushing:
            self._flushing = True
            self._seen = self._submitted - 1
            self._loop.call_soon(self._flush)
        return request

    def join(
        self,
        kind: str,
        item: ItemT,
        op: Callable[[Store, list[ItemT]], list[T]],
        what: str,
        *,
        withdraw: bool = False,
    ) -> asyncio.Future[T]:
        """Add ``item`` to the one ``op`` this batch runs over every item of ``kind``
        (``op`` is the same for a kind, and returns a result per item, in order); the
        caller's own future gets its item's result, or the error. A caller cancelled
        before the batch reaches the thread takes its item out if ``withdraw`` (a
        publish, as ``submit``'s callers do); otherwise it stays in (a settle)."""
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._group(kind, op, what, withdraw).add(item, future)
        return future

    def join_then(
        self,
        kind: str,
        item: ItemT,
        op: Callable[[Store, list[ItemT]], list[T]],
        what: str,
        then: Then[T],
    ) -> None:
        """``join`` for a settle nobody awaits (it stays in): ``then(result, error)`` is
        called on the loop when the operation is done, without a future and the loop
        turn its callback would take (a pipelined ack, once per message)."""
        self._group(kind, op, what, False).add(item, then)

    def _group(
        self, kind: str, op: Callable[[Store, list[ItemT]], list[T]], what: str, withdraw: bool
    ) -> _Joined[ItemT, T]:
        group = self._groups.get(kind)
        if group is None:
            items: list[ItemT] = []
            request = self.submit(lambda store: op(store, items), what)
            group = self._groups[kind] = _Joined(items, request, withdraw)
        else:
            self._submitted += 1
        return group

    def _flush(self) -> None:
        """Hand what was submitted to the thread once a loop iteration passes with no
        more: the callers a commit woke submit their next operations over a few
        iterations, and one batch for all of them is one commit (one fsync)."""
        if self._submitted != self._seen:
            self._seen = self._submitted
            assert self._loop is not None
            self._loop.call_soon(self._flush)
            return
        self._close_groups()
        batch, self._pending = self._pending, []
        self._flushing = False
        self._requests.put(batch)

    def _close_groups(self) -> None:
        """Before a batch is handed over: its joined operations take no more items (the
        thread's now), less those of callers cancelled meanwhile."""
        for group in self._groups.values():
            group.close()
        self._groups.clear()

    async def stop(self) -> None:
        """Finish what was submitted, then close the database."""
        if not self._open:
            return
        self._open = False
        if self._pending:
            self._close_groups()
            self._requests.put(self._pending)
            self._pending = []
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
        self._wal = open_wal(conn, self.path) if self.synchronous == "full" else None
        self._broken = None
        store = Store(conn, self.path)
        try:
            self._serve(store)
        finally:
            try:
                conn.close()
            except sqlite3.Error as err:
                log.warning("sqlite database %s: closing it failed: %s", self.path, err)
            if self._wal is not None:
                os.close(self._wal)
                self._wal = None
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
                self._post(request.fail, error)

    def _run_batch(self, store: Store, batch: list[Request[Any]]) -> None:
        if not batch:
            return
        if self._broken is not None:
            for request in batch:
                self._post(request.fail, self._broken)
            return
        for attempt in range(BUSY_RETRIES + 1):
            try:
                results, changed = self._transaction(store, batch)
            except sqlite3.OperationalError as err:
                if busy(err) and attempt < BUSY_RETRIES:
                    log.warning("sqlite database %s is locked by another process", self.path)
                    continue
                self._failed(store, batch, err)
                return
            except Exception as err:
                self._failed(store, batch, err)
                return
            if self._wal is not None and changed:
                self._sync(self._wal, batch, results, store.effects)
            else:
                self._post(self._deliver, batch, results, store.effects)
            return

    def _sync(
        self, wal: int, batch: list[Request[Any]], results: list[Any], effects: Effects
    ) -> None:
        """Hand the claims their results, sync the log, then hand over the rest (a sync
        that fails fails them: they may be in the file, but are not known on disk). A
        commit of claims alone is not synced: a power cut that forgets it loses nothing
        (the next synced commit takes it to disk too: the log is written in order)."""
        now = [i for i, request in enumerate(batch) if not request.synced]
        if len(now) == len(batch):
            self._post(self._deliver, batch, results, effects)
            return
        if now:
            self._post(self._deliver, [batch[i] for i in now], [results[i] for i in now], None)
            later = [i for i, request in enumerate(batch) if request.synced]
            batch, results = [batch[i] for i in later], [results[i] for i in later]
        try:
            sync_file(wal)
        except OSError as err:
            log.error("sqlite database %s: syncing its write-ahead log failed: %s", self.path, err)
            error = DriverError(
                f"sqlite database {self.path}: its commit could not be synced to disk "
                f"({err}); the operation may or may not be on disk: check the disk"
            )
            for request in batch:
                self._post(request.fail, error)
            # After a failed sync the kernel may count the lost pages as written, so a
            # later sync that succeeds proves nothing: write no more until a restart.
            self._broken = DriverError(
                f"sqlite database {self.path}: a commit could not be synced to disk ({err}); "
                "nothing more is written until the driver is restarted: check the disk"
            )
            self._post(self._on_broken, self._broken)
            return
        self._post(self._deliver, batch, results, effects)

    def _transaction(self, store: Store, batch: list[Request[Any]]) -> tuple[list[Any], bool]:
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
        return results, changed

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
        self._post(request.fail, error)

    def _deliver(
        self, batch: list[Request[Any]], results: list[Any], effects: Effects | None
    ) -> None:
        """On the loop: hand each caller its result, then tell the driver what changed."""
        for request, result in zip(batch, results, strict=True):
            request.resolve(result)
        if effects is not None:
            self._on_commit(effects)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error as err:
        log.warning("rollback failed: %s", err)


def _finish(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class _Joined(Generic[ItemT, T]):
    """One operation over the items joined in a batch, and each caller's future (or
    callback)."""

    __slots__ = ("items", "request", "waiters", "withdraw")

    def __init__(self, items: list[ItemT], request: Request[list[T]], withdraw: bool) -> None:
        self.items = items
        #: until the batch is handed over (``close``): the request holds this group
        self.request: Request[list[T]] | None = request
        self.withdraw = withdraw
        self.waiters: list[asyncio.Future[T] | Then[T]] = []
        request.joined = self

    def add(self, item: ItemT, waiter: asyncio.Future[T] | Then[T]) -> None:
        self.items.append(item)
        self.waiters.append(waiter)

    def close(self) -> None:
        """On the loop, as the batch goes to the thread: no more items, and those of
        cancelled callers dropped (when ``withdraw``; with none left the operation is
        skipped). Lets go of the request, so that the two are no reference cycle."""
        request, self.request = self.request, None
        if request is None or not self.withdraw or not any(map(_cancelled, self.waiters)):
            return
        kept = [(i, w) for i, w in zip(self.items, self.waiters, strict=True) if not _cancelled(w)]
        self.items[:] = [item for item, _ in kept]  # (the same list: the operation reads it)
        self.waiters = [waiter for _, waiter in kept]
        request.cancelled = not kept

    def fan_out(self, results: list[T] | None, error: BaseException | None) -> None:
        """The operation's results (or error) to each caller still waiting."""
        if error is None and results is None:
            error = DriverError("the operation was not run")
        for i, waiter in enumerate(self.waiters):
            if not isinstance(waiter, asyncio.Future):
                try:
                    waiter(None if results is None else results[i], error)
                except Exception:  # (one caller's bug must not keep the rest waiting)
                    log.exception("a settle's callback failed")
            elif waiter.done():  # (its caller was cancelled)
                continue
            elif error is None and results is not None:
                waiter.set_result(results[i])
            else:
                assert error is not None
                waiter.set_exception(error)


def _cancelled(waiter: asyncio.Future[Any] | Then[Any]) -> bool:
    return isinstance(waiter, asyncio.Future) and waiter.cancelled()


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
