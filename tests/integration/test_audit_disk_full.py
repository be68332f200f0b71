"""Disk full (ENOSPC) and file too large (EFBIG) while handlers run (issue 16 item 7):
an ``attempt`` record is written before each handler runs, so a handler never runs
unrecorded; once a write fails the consumers stop taking messages."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write
from processes import HANDLER, ROOT, handled

from wippy_queue.audit import AuditTrail, AuditUnavailable, verify_file
from wippy_queue.audit.recorder import RecordAttempt
from wippy_queue.queue.message import Message
from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import ACK, Outcome

APP = """
namespace: k
entries:
  - {name: audit, kind: security.audit, path: "file://audit.jsonl", fsync: batch}
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: fn, kind: function.python, source: "file://handlers.py", method: handle}
  - {name: worker, kind: queue.consumer, queue: jobs, func: fn, lifecycle: {auto_start: true}}
"""
LIMIT_BYTES = 4000


def test_efbig_a_process_over_its_file_size_limit_runs_no_handler_unrecorded(
    tmp_path: Path,
) -> None:
    """RLIMIT_FSIZE makes the audit write fail with EFBIG part-way through a run of 40
    messages: every handler that ran had its attempt recorded first, and none ran after."""
    write(tmp_path / "handlers.py", HANDLER)
    app = write(tmp_path / "app.yaml", APP)
    out = tmp_path / "out.txt"
    publish = [a for n in range(40) for a in ("--publish", "k:jobs", json.dumps({"n": n}))]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))

    command = [sys.executable, "-m", "wippy_queue", "run", str(app), *publish]
    result = subprocess.run(
        [*command, "--until-idle", "--timeout", "3", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "WQ_OUT": str(out)}, preexec_fn=limit,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "File too large" in result.stderr and "consumers stop taking messages" in result.stderr
    audit = tmp_path / "audit.jsonl"
    assert audit.stat().st_size <= LIMIT_BYTES
    state = verify_file(audit)
    assert state.ok, state.summary()  # at most a torn last line: the write cut off
    records = [json.loads(line) for line in audit.read_text().splitlines()[: state.records]]
    attempts = [r for r in records if r["event"] == "attempt"]
    ran = handled(out)
    assert 0 < len(ran) < 40  # the limit was hit mid-run
    assert len(ran) == len(attempts)  # each handler run was recorded before it ran


async def test_enospc_on_the_attempt_record_means_the_handler_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", fsync="never")
    await trail.open()
    step = RecordAttempt(trail)
    ran: list[str] = []

    async def handler(job: Job) -> Outcome:
        ran.append(job.message.id)
        return ACK

    def job(n: int) -> Job:
        message = Message(id=f"m{n}", body=b"{}", headers={})
        return Job("k:worker", "k:jobs", None, message, {}, 1)

    assert await step(job(0), handler) is ACK

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    outcome = await step(job(1), handler)
    assert not outcome.ack and "No space left on device" in str(outcome.error)
    assert ran == ["m0"] and not trail.gate.is_set()
    with pytest.raises(AuditUnavailable):  # so its settle is refused too: given back untried
        trail.append({"event": "consume", "message_id": "m1"})
    monkeypatch.undo()
    await trail.close()
