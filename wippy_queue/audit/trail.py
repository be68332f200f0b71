"""The audit trail writer: records are chained and handed to the OS on the loop.

A consume record is written before its message is settled: nothing is acked
unaudited. Handing a line to the OS is a page-cache copy; the disk I/O (fsync)
always runs in a worker thread, so the event loop never waits on the disk.
``fsync`` says how durable a record is when its message is acked: ``never`` (in
the OS, survives a process crash), ``batch`` (the same, and fsynced at least every
100 ms and at stop), ``always`` (on disk: records are group-committed, one fsync
per batch, and the ack waits for it).

When a write fails the trail turns unhealthy: it says why, closes its ``gate``
(consumers stop taking messages), fails every waiting record (their messages go
back to the queue unacked), truncates any partial write and rolls the chain back
to the last record on disk. It retries every second; the first record that gets
through (``audit_recovered``) reopens the gate.

When the path no longer names the open file (deleted, moved, its folder replaced:
``st_dev``/``st_ino`` of the path and of the open file differ), checked before a
record is written (at most once a millisecond: a ``stat()`` costs as much as the
write) and before every batch and fsync, the trail is lost for good: the gate stays
closed until a restart, and the chain's head is saved beside the path (``head.py``)
so that the restart's new file names the lost one as its predecessor instead of
passing for a fresh start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wippy_queue.audit.chain import (
    CLOSED,
    GENESIS,
    HEADER,
    KEYED,
    OPENED,
    RESUMED,
    fragment,
    mac,
    seal_fragment,
    verify_file,
)
from wippy_queue.audit.head import Head, continues, read_head, save_head
from wippy_queue.audit.instance import expand, holder, new_instance
from wippy_queue.errors import WippyQueueError

log = logging.getLogger(__name__)

FsyncMode = Literal["always", "batch", "never"]
FSYNC_EVERY_S = 0.1
#: data and the size that reaches it, without the timestamps fsync also writes (as a WAL does)
_sync_data = getattr(os, "fdatasync", os.fsync)


class AuditUnavailable(WippyQueueError):
    """The audit file cannot be written; nothing may proceed unaudited."""


class _Clock:
    """ISO 8601 UTC to the millisecond, e.g. ``2026-11-27T18:00:00.123Z``; formatted once
    per millisecond however many records share it (``seq`` orders them)."""

    __slots__ = ("_ms", "_stamp")

    def __init__(self) -> None:
        self._ms, self._stamp = -1, ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        if ms != self._ms:
            seconds, millis = divmod(ms, 1000)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._ms, self._stamp = ms, f"{stamp}.{millis:03d}Z"
        return self._stamp


def _ends_a_line(path: Path) -> bool:
    """Whether the file's last byte is a newline (an empty file ends one too)."""
    with open(path, "rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


@dataclass(slots=True)
class _Batch:
    """Records queued for one write; they share one future (group commit)."""

    lines: list[bytes]
    done: asyncio.Future[None]
    last: tuple[int, str] = (-1, GENESIS)
    #: how many of ``lines`` are already handed to the OS (``append_members(flush=True)``)
    flushed: int = 0


def _new_batch() -> _Batch:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Records nobody awaits (publish decisions) must not log "exception never retrieved".
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return _Batch([], done)


class AuditTrail:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncMode = "batch",
        retry_s: float = 1.0,
        origin: str | None = None,
        key: str | None = None,
        key_id: str = "default",
    ) -> None:
        """``key``: the audit key; given, every hash is an HMAC-SHA256 under it.
        ``path`` may hold ``{instance}``, ``{host}``, ``{pid}`` (one file per instance)."""
        #: this runtime instance, named by every record it writes
        self.instance = new_instance()
        self.path = Path(expand(os.fspath(path), self.instance))
        self._tag = f'"instance":"{self.instance}"'
        self._key = key
        self.key_id = key_id
        self._mac = mac(key) if key is not None else None
        #: where the path was given (an entry's field, ``--audit``), for error messages
        self.origin = origin
        self.fsync: FsyncMode = fsync
        self.retry_s = retry_s
        self.error: str | None = None
        #: set while records can be written; consumers wait on it before taking messages
        self.gate = asyncio.Event()
        self._seq, self._prev = -1, GENESIS  # the chain's head, including pending records
        self._written = (-1, GENESIS)  # the last record on disk
        self._size = 0
        self._pending: _Batch | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._fd = -1
        self._clock = _Clock()
        self._file: io.FileIO | None = None
        self._last_fsync = 0.0
        self._dirty = False
        self._file_id = ""
        #: (st_dev, st_ino) of the open file: the path must still name it
        self._identity = (0, 0)
        #: the path no longer names the open file: nothing more is written until a restart
        self.lost = False
        self._head_saved: tuple[int, str] = (-1, GENESIS)
        self._synced = (-1, GENESIS)  # the last record fsynced
        self._head_at = 0.0
        self._checked_ms = -1  # the millisecond the path was last found to name the file

    @property
    def healthy(self) -> bool:
        return self.error is None

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Open (or continue) the file; a torn last line is ended and marked."""
        try:
            await asyncio.to_thread(self._open_file)
        except OSError as err:
            where = f" (given by {self.origin})" if self.origin else ""
            raise AuditUnavailable(
                f"cannot open the audit file {self.path}{where}: {err.strerror or err}; "
                "nothing runs unaudited: give a path to a writable file"
            ) from err
        self._task = asyncio.create_task(self._writer(), name="audit-writer")
        self.gate.set()

    def _open_file(self) -> None:
        """Open the file for this process alone (a lock), then continue its chain."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unbuffered: every write goes straight to the OS (nothing waits in our memory)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - the trail's lifetime
        self._fd = self._file.fileno()
        try:
            self._lock()
            self._start()
        except BaseException:
            self._file.close()
            self._file, self._fd = None, -1
            raise

    def _lock(self) -> None:
        """One writer per file: a second process (or trail) is refused while it lives."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditUnavailable(
                f"audit file {self.path} is being written by another live process "
                f"({holder(self.path)}); processes never share an audit file: give each "
                "its own, e.g. path: file://audit-{instance}.jsonl"
            ) from None

    def _start(self) -> None:
        """Continue a verified chain, or start one; the first record (a header, the
        mark of a torn last line, or ``audit_opened``) names this instance, host and
        pid, and goes to disk with the newline that ends a torn line, in one write,
        so that no crash can leave a complete line that is no record."""
        start = {"host": socket.gethostname(), "pid": os.getpid()}
        prefix = b""
        opened = os.fstat(self._fd)
        self._identity = (opened.st_dev, opened.st_ino)
        head = read_head(self.path)
        if opened.st_size > 0:
            state = verify_file(self.path, self._key)
            if state.unverifiable:
                raise AuditUnavailable(
                    f"audit file {self.path} is keyed (key id {state.key_id}) and no audit "
                    "key is set: set the key it was written with, or move the file aside"
                )
            if not state.ok:
                raise AuditUnavailable(
                    f"audit file {self.path} fails verification ({state.summary()}); "
                    "refusing to extend it (tampered, or not an audit file): move it aside"
                )
            problem = continues(self.path, state, head)
            if problem:
                raise AuditUnavailable(
                    f"audit file {self.path}: {problem}; refusing to extend it: find out what "
                    "happened, then move it (and its .head file) aside"
                )
            self._file_id = str(state.file_id)
            self._seq, self._prev = state.last_seq, state.last_hash
            first: dict[str, Any] = {"event": OPENED, **start}
            if state.trailing_torn is not None:
                first = {"event": RESUMED, "torn_line": state.trailing_torn, **start}
                prefix = b"\n"
            elif not _ends_a_line(self.path):  # a whole last record cut off before its
                prefix = b"\n"  # newline (a full disk, a size limit): ended, not joined
        else:
            self._file_id = str(uuid.uuid4())
            first = {"event": HEADER, "version": 1, "file_id": self._file_id, **start}
            if self._mac is not None:
                first |= {"mac": KEYED, "key_id": self.key_id}
            if head is not None:  # a chain was written here, and its file is gone
                first["predecessor"] = head.as_record()
                log.warning(
                    "audit file %s was gone at start, yet its chain had reached seq %d (hash "
                    "%s, file %s): the new file names it as its predecessor; `audit verify` "
                    "flags it until the old file is given too",
                    self.path, head.seq, head.hash, head.file_id,
                )  # fmt: skip
        self._size = os.fstat(self._fd).st_size
        seq = self._seq + 1
        members = self._members(fragment(first))
        line, value = seal_fragment(seq, self._clock.now(), members, self._prev, self._mac)
        self._append(prefix + line)
        if self.fsync != "never":
            self._fsync()
        self._seq, self._prev = seq, value
        self._size += len(prefix) + len(line)
        self._written = self._synced = (self._seq, self._prev)
        self._save_head()

    def _save_head(self, *, written: bool = False) -> None:
        """Save the chain's head beside the path: the last record fsynced (so that a
        power loss never leaves a head ahead of the file), or under ``never`` or when
        ``written``, the last handed to the OS."""
        written_ = self._written if written else self._head_value()
        try:
            save_head(self.path, Head(self._file_id, *written_))
        except OSError as err:
            log.warning("cannot save the audit chain's head beside %s: %s", self.path, err)
        self._head_saved, self._head_at = written_, time.monotonic()

    def _head_value(self) -> tuple[int, str]:
        return self._written if self.fsync == "never" else self._synced

    def _same_file(self) -> bool:
        """Whether the path still names the open file."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == self._identity

    def _lose(self, batch: _Batch | None = None) -> AuditUnavailable:
        """The path no longer names the open file: refuse every record, close the gate
        for good (a restart continues), give back what waits, save the head."""
        reason = (
            "the audit path no longer names the file being written (deleted, moved, or its "
            "folder replaced)"
        )
        if self.lost:  # found already (by the writer or a record)
            return AuditUnavailable(f"audit trail {self.path} is lost: {self.error}")
        self._fail(reason, batch, recover=False)
        self.lost = True
        self._save_head(written=True)
        return AuditUnavailable(
            f"audit trail {self.path} is lost: {reason}; nothing runs unaudited: restart to "
            "continue in a new file that names the lost one's last record"
        )

    def _refusal(self) -> AuditUnavailable:
        """Why a record is refused once the trail has failed."""
        if self.lost:
            return self._lose()  # found already: says so, changes nothing
        return AuditUnavailable(f"audit trail {self.path} is not writable: {self.error}")

    def _members(self, members: str) -> str:
        """A record's members, led by this instance's id."""
        return f"{self._tag},{members}" if members else self._tag

    async def close(self) -> None:
        """Write everything pending and the ``audit_closed`` mark, fsync (unless
        ``never``) and close."""
        if self._task is not None and self.healthy:
            with contextlib.suppress(AuditUnavailable):
                await self.record({"event": CLOSED})
        if self._task is not None:
            if self._pending is not None and self.healthy:
                with contextlib.suppress(AuditUnavailable):
                    await self._pending.done
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None
        if self._file is not None:
            await asyncio.to_thread(self._close_file)

    def _close_file(self) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):
            self._file.flush()
            if self.fsync != "never":
                _sync_data(self._file.fileno())
                self._synced = self._written
        if not self.lost:
            self._save_head()
        self._file.close()
        self._file = None

    # -- recording ---------------------------------------------------------------

    def append(self, fields: dict[str, Any]) -> asyncio.Future[None] | None:
        """Chain a record and write it; see ``append_members``."""
        return self.append_members(fragment(fields))

    def append_members(self, members: str, *, flush: bool = False) -> asyncio.Future[None] | None:
        """Chain a record given as JSON object members (the hot path) and write it.

        Under ``never`` and ``batch`` the line goes to the OS at once (a page-cache
        copy; fsync runs in a thread every 100 ms) and None is returned: the record
        is written. Under ``always`` records are group-committed with an fsync in a
        worker thread; the returned future resolves once the batch is on disk.
        ``flush``: under ``always``, hand it (and the records waiting before it) to the
        OS now and return None; the writer fsyncs it with its batch (an ``attempt``
        record: a full disk must show before the handler runs, its fsync can wait).
        The path is checked to still name the open file when the last look is a
        millisecond old or more (a ``stat()`` costs as much as the write).
        AuditUnavailable means the record could not be written.
        """
        if self.error is not None:
            raise self._refusal()
        now_ms = time.monotonic_ns() // 1_000_000
        if now_ms != self._checked_ms:  # one stat() a millisecond at most
            if not self._same_file():
                raise self._lose()
            self._checked_ms = now_ms
        seq = self._seq + 1
        members = self._members(members)
        line, digest = seal_fragment(seq, self._clock.now(), members, self._prev, self._mac)
        self._seq, self._prev = seq, digest
        if self.fsync != "always":
            try:
                written = os.write(self._fd, line)
                if written != len(line):  # a write may take only part
                    self._append(line[written:])
                if not self._dirty and self.fsync == "batch":
                    self._wake.set()  # the writer's 100 ms fsync clock starts now
                self._dirty = True
            except OSError as err:
                self._fail(f"{type(err).__name__}: {err}")
                raise AuditUnavailable(f"audit trail {self.path} is not writable: {err}") from err
            self._size += len(line)
            self._written = (seq, digest)
            return None
        batch = self._pending
        if batch is None:
            batch = self._pending = _new_batch()
            self._wake.set()
        batch.lines.append(line)
        batch.last = (seq, digest)
        if flush:  # in the OS now (a full disk shows here); fsynced with the batch
            self._flush(batch)
            return None
        return batch.done

    def _flush(self, batch: _Batch) -> None:
        """Hand the waiting batch's lines to the OS now; the writer fsyncs them later."""
        data = b"".join(batch.lines[batch.flushed :])
        try:
            self._append(data)
        except OSError as err:
            self._fail(f"{type(err).__name__}: {err}", batch)
            raise AuditUnavailable(f"audit trail {self.path} is not writable: {err}") from err
        batch.flushed = len(batch.lines)
        self._size += len(data)
        self._written = batch.last

    async def record(self, fields: dict[str, Any]) -> None:
        """Append and wait until written; raise AuditUnavailable when it cannot be."""
        written = self.append(fields)
        if written is not None:
            await written

    # -- writing -----------------------------------------------------------------

    async def _writer(self) -> None:
        """``always``: write and fsync each batch; ``batch``: fsync every 100 ms."""
        while True:
            due = False  # woken by the clock: a batch-mode fsync is due
            try:
                async with asyncio.timeout(FSYNC_EVERY_S if self._dirty else None):
                    await self._wake.wait()
            except TimeoutError:
                due = True
            self._wake.clear()
            batch, self._pending = self._pending, None
            if (batch is not None or self._dirty) and not self._same_file():
                self._lose(batch)
                return  # nothing more is written to this file
            try:
                if batch is not None:
                    data = b"".join(batch.lines[batch.flushed :])
                    self._append(data)  # in the OS now, as under never and batch
                    self._size += len(data)
                    self._written = batch.last
                    await asyncio.to_thread(self._fsync)
                    self._synced = batch.last
                elif due and self._dirty and self.fsync == "batch":
                    # clean from here: a record written while the fsync runs dirties
                    # the file again (and is synced at the next turn), never lost
                    self._dirty = False
                    await asyncio.to_thread(self._sync)
            except OSError as err:
                self._fail(f"{type(err).__name__}: {err}", batch)
                continue
            if batch is not None and not batch.done.done():
                batch.done.set_result(None)
            head_due = time.monotonic() - self._head_at >= FSYNC_EVERY_S
            if self._head_value() != self._head_saved and head_due:
                await asyncio.to_thread(self._save_head)

    def _append(self, data: bytes) -> None:
        """Hand ``data`` to the OS (a page-cache copy: no disk I/O on the loop)."""
        view = memoryview(data)
        while view:  # a write may take only part of it
            view = view[os.write(self._fd, view) :]
        self._dirty = self._dirty or bool(data)

    def _fsync(self) -> None:
        self._sync()
        self._dirty = False

    def _sync(self) -> None:
        covered = self._written  # what was handed to the OS before this fsync
        _sync_data(self._fd)
        self._synced = covered
        self._last_fsync = time.monotonic()

    def _fail(self, reason: str, batch: _Batch | None = None, *, recover: bool = True) -> None:
        """Refuse records, close the gate, give back what waits, retry in the background
        (unless not ``recover``: then only a restart reopens it)."""
        self.error = reason
        self.gate.clear()
        log.error(
            "audit trail %s cannot be written (%s): consumers stop taking messages %s; "
            "nothing is acked unaudited",
            self.path,
            reason,
            "until it can" if recover else "until a restart",
        )
        err = AuditUnavailable(f"audit trail {self.path} is not writable: {reason}")
        for failed in (batch, self._pending):
            if failed is not None and not failed.done.done():
                failed.done.set_exception(err)
        self._pending = None
        self._seq, self._prev = self._written
        if recover and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(self._recover(reason))

    async def _recover(self, reason: str) -> None:
        """Retry until a record gets through (``audit_recovered``), then reopen the gate."""
        while True:
            await asyncio.sleep(self.retry_s)
            members = self._members(fragment({"event": "audit_recovered", "error": reason}))
            line, value = seal_fragment(
                self._seq + 1, self._clock.now(), members, self._prev, self._mac
            )
            if self.lost:
                return
            if not self._same_file():
                self._lose()
                return
            try:
                await asyncio.to_thread(self._rewrite_tail, line)
            except OSError:
                continue
            self._seq, self._prev = self._seq + 1, value
            self._written = self._synced = (self._seq, self._prev)
            self._size += len(line)
            self.error = None
            self.gate.set()
            log.warning("audit trail %s is writable again; consumers resume", self.path)
            return

    def _rewrite_tail(self, line: bytes) -> None:
        """Drop a partial write, then append ``line`` durably."""
        assert self._file is not None
        self._file.truncate(self._size)
        self._file.seek(0, os.SEEK_END)
        self._append(line)
        self._fsync()
