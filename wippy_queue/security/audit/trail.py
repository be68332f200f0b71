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
from pathlib import Path
from typing import Any, BinaryIO, Literal

from wippy_queue.errors import WippyQueueError
from wippy_queue.security.audit.chain import (
    GENESIS,
    HEADER,
    RESUMED,
    fragment,
    seal_fragment,
    verify_file,
)

log = logging.getLogger(__name__)

FsyncMode = Literal["always", "batch", "never"]
FSYNC_EVERY_S = 0.1


class AuditUnavailable(WippyQueueError):
    """The audit file cannot be written; nothing may proceed unaudited."""


_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2026-11-27T18:00:00.123456Z``."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:  # formatting the date part once a second is enough
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1e6):06d}Z"


@dataclass(slots=True)
class _Batch:
    """Records queued for one write; they share one future (group commit)."""

    lines: list[bytes]
    done: asyncio.Future[None]
    last: tuple[int, str] = (-1, GENESIS)


def _new_batch() -> _Batch:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Records nobody awaits (publish decisions) must not log "exception never retrieved".
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return _Batch([], done)


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
        self._pending: _Batch | None = None
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
            if self._pending is not None and self.healthy:
                with contextlib.suppress(AuditUnavailable):
                    await self._pending.done
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
        return self.append_members(fragment(fields))

    def append_members(self, members: str) -> asyncio.Future[None]:
        """``append`` for a record already encoded as JSON object members (hot path)."""
        if not self.healthy:
            raise AuditUnavailable(f"audit trail {self.path} is not writable: {self.error}")
        self._seq += 1
        line, self._prev = seal_fragment(self._seq, utc_now(), members, self._prev)
        batch = self._pending
        if batch is None:
            batch = self._pending = _new_batch()
            self._wake.set()
        batch.lines.append(line)
        batch.last = (self._seq, self._prev)
        return batch.done

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
            batch, self._pending = self._pending, None
            sync = self.fsync == "always" or (
                self.fsync == "batch" and time.monotonic() - self._last_fsync >= FSYNC_EVERY_S
            )
            data = b"".join(batch.lines) if batch else b""
            try:
                # Appending to the page cache is a memory copy, done here; the disk I/O
                # (fsync) runs in a worker thread, never on the event loop.
                self._append(data)
                if sync and self._dirty:
                    await asyncio.to_thread(self._fsync)
            except OSError as err:
                await self._fail(f"{type(err).__name__}: {err}", batch)
                continue
            if batch is not None:
                self._size += len(data)
                self._written = batch.last
                if not batch.done.done():
                    batch.done.set_result(None)

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        if data:
            self._file.write(data)
            self._file.flush()
            self._dirty = True

    def _fsync(self) -> None:
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._last_fsync = time.monotonic()
        self._dirty = False

    async def _fail(self, reason: str, batch: _Batch | None) -> None:
        self.error = reason
        self.gate.clear()
        log.error(
            "audit trail %s cannot be written (%s): consumers stop taking messages until it "
            "can; nothing is acked unaudited",
            self.path,
            reason,
        )
        err = AuditUnavailable(f"audit trail {self.path} is not writable: {reason}")
        for failed in (batch, self._pending):
            if failed is not None and not failed.done.done():
                failed.done.set_exception(err)
        self._pending = None
        self._seq, self._prev = self._written
        while True:
            await asyncio.sleep(self.retry_s)
            members = fragment({"event": "audit_recovered", "error": reason})
            line, value = seal_fragment(self._seq + 1, utc_now(), members, self._prev)
            try:
                await asyncio.to_thread(self._rewrite_tail, line)
            except OSError:
                continue
            self._seq, self._prev = self._seq + 1, value
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
        self._append(line)
        self._fsync()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
