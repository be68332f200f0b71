"""The audit trail writer: records are chained on the loop, written by a thread.

Group commit: records queue up in memory and one writer task writes everything
pending in a worker thread, so the event loop never waits on the disk. A consume
record is awaited before its message is settled (nothing is acked unaudited);
``fsync`` says how durable that write is: ``always`` (fsync each batch),
``batch`` (fsync at least every 100 ms and at stop), ``never``.

When a write fails the trail turns unhealthy: it says why, closes its ``gate``
(consumers stop taking messages), fails every waiting record (their messages go
back to the queue unacked), truncates any partial write and rolls the chain back
to the last record on disk. It retries every second; the first record that gets
through (``audit_recovered``) reopens the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from wippy_queue.errors import WippyQueueError
from wippy_queue.security.audit.chain import GENESIS, HEADER, RESUMED, line_of, seal, verify_file

log = logging.getLogger(__name__)

FsyncMode = Literal["always", "batch", "never"]
FSYNC_EVERY_S = 0.1


class AuditUnavailable(WippyQueueError):
    """The audit file cannot be written; nothing may proceed unaudited."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Pending:
    line: bytes
    seq: int
    hash: str
    waiter: asyncio.Future[None]


class AuditTrail:
    def __init__(
        self, path: str | os.PathLike[str], *, fsync: FsyncMode = "batch", retry_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.fsync: FsyncMode = fsync
        self.retry_s = retry_s
        self.error: str | None = None
        #: set while records can be written; consumers wait on it before taking messages
        self.gate = asyncio.Event()
        self._seq, self._prev = -1, GENESIS  # the chain's head, including pending records
        self._written = (-1, GENESIS)  # the last record on disk
        self._size = 0
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._file: BinaryIO | None = None
        self._last_fsync = 0.0
        self._dirty = False

    @property
    def healthy(self) -> bool:
        return self.error is None

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Open (or continue) the file; a torn last line is ended and marked."""
        first = await asyncio.to_thread(self._open_file)
        self._task = asyncio.create_task(self._writer(), name="audit-writer")
        self.gate.set()
        if first is not None:
            await self.record(first)

    def _open_file(self) -> dict[str, Any] | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        first: dict[str, Any] | None
        if self.path.exists() and self.path.stat().st_size > 0:
            state = verify_file(self.path)
            if not state.ok:
                raise AuditUnavailable(
                    f"audit file {self.path} fails verification ({state.summary()}); "
                    "refusing to extend a tampered chain: move it aside"
                )
            self._seq, self._prev = state.last_seq, state.last_hash
            first = None
            if state.trailing_torn is not None:
                first = {"event": RESUMED, "torn_line": state.trailing_torn}
        else:
            first = {"event": HEADER, "version": 1, "file_id": str(uuid.uuid4())}
        self._written = (self._seq, self._prev)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held for the trail's lifetime
        self._size = self.path.stat().st_size
        if self._size and not _ends_with_newline(self.path):
            self._file.write(b"\n")
            self._file.flush()
            self._size += 1
        return first

    async def close(self) -> None:
        """Write everything pending (fsync unless ``never``) and close."""
        if self._task is not None:
            if self._pending and self.healthy:
                with contextlib.suppress(AuditUnavailable):
                    await self._pending[-1].waiter
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._file is not None:
            await asyncio.to_thread(self._close_file)

    def _close_file(self) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):
            self._file.flush()
            if self.fsync != "never":
                os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    # -- recording ---------------------------------------------------------------

    def append(self, fields: dict[str, Any]) -> asyncio.Future[None]:
        """Chain a record and queue it; the future resolves once it is written."""
        if not self.healthy:
            raise AuditUnavailable(f"audit trail {self.path} is not writable: {self.error}")
        self._seq += 1
        record = seal({"seq": self._seq, "time": utc_now(), **fields}, self._prev)
        self._prev = record["hash"]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(line_of(record), self._seq, self._prev, waiter))
        self._wake.set()
        return waiter

    async def record(self, fields: dict[str, Any]) -> None:
        """Append and wait until written; raise AuditUnavailable when it cannot be."""
        await self.append(fields)

    # -- writing -----------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FSYNC_EVERY_S if self._dirty else None):
                    await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            sync = self.fsync == "always" or (
                self.fsync == "batch" and time.monotonic() - self._last_fsync >= FSYNC_EVERY_S
            )
            data = b"".join(p.line for p in batch)
            try:
                await asyncio.to_thread(self._write, data, sync)
            except OSError as err:
                await self._fail(f"{type(err).__name__}: {err}", batch)
                continue
            if batch:
                self._size += len(data)
                self._written = (batch[-1].seq, batch[-1].hash)
            for pending in batch:
                if not pending.waiter.done():
                    pending.waiter.set_result(None)

    def _write(self, data: bytes, sync: bool) -> None:
        assert self._file is not None
        if data:
            self._file.write(data)
            self._file.flush()
            self._dirty = True
        if sync and self._dirty:
            os.fsync(self._file.fileno())
            self._last_fsync = time.monotonic()
            self._dirty = False

    async def _fail(self, reason: str, batch: list[_Pending]) -> None:
        self.error = reason
        self.gate.clear()
        log.error(
            "audit trail %s cannot be written (%s): consumers stop taking messages until it "
            "can; nothing is acked unaudited",
            self.path,
            reason,
        )
        err = AuditUnavailable(f"audit trail {self.path} is not writable: {reason}")
        for pending in [*batch, *self._pending]:
            if not pending.waiter.done():
                pending.waiter.set_exception(err)
        self._pending = []
        self._seq, self._prev = self._written
        while True:
            await asyncio.sleep(self.retry_s)
            record = seal(
                {
                    "seq": self._seq + 1,
                    "time": utc_now(),
                    "event": "audit_recovered",
                    "error": reason,
                },
                self._prev,
            )
            line = line_of(record)
            try:
                await asyncio.to_thread(self._rewrite_tail, line)
            except OSError:
                continue
            self._seq, self._prev = record["seq"], record["hash"]
            self._written = (self._seq, self._prev)
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
        self._write(line, True)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
