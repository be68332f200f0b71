"""The audit file deleted, or its folder swapped, mid-run (issue 16 item 6): the
trail notices that its path no longer names the open file, refuses every record and
keeps consumers stopped until a restart; the restart's new file names the lost one's
last record (kept in ``<file>.head``), so ``audit verify`` flags the missing file
instead of passing a fresh chain."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import handler_plugins, write

from wippy_queue import Runtime
from wippy_queue.audit import AuditTrail, AuditUnavailable, verify_file
from wippy_queue.audit.chain import verify_files
from wippy_queue.cli import main


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def _run(path: Path, n: int = 2) -> AuditTrail:
    trail = AuditTrail(path)
    await trail.open()
    for i in range(n):
        await trail.record({"event": "consume", "message_id": f"m{i}", "outcome": "ack"})
    return trail


async def _loses(trail: AuditTrail, caplog: pytest.LogCaptureFixture) -> None:
    """Every record is refused from now on, and no retry reopens the gate."""
    await _next_millisecond()  # the path is looked at once a millisecond at most
    with caplog.at_level(logging.ERROR), pytest.raises(AuditUnavailable, match="is lost"):
        trail.append_members('"event":"attempt","message_id":"after"')
    assert trail.lost and not trail.gate.is_set()
    assert "no longer names the file being written" in caplog.text
    assert "until a restart" in caplog.text
    with pytest.raises(AuditUnavailable):
        await trail.record({"event": "consume", "message_id": "again"})
    assert trail._recovery is None  # nothing will write to the lost file and reopen
    await trail.close()


@pytest.mark.parametrize("fsync", ["never", "batch", "always"])
async def test_a_deleted_file_stops_the_trail_and_the_restart_names_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], fsync: str
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = await _run(path)
    kept = tmp_path / "kept-copy.jsonl"
    os.link(path, kept)  # the evidence, kept aside by the test (an attacker would not)
    path.unlink()
    await _loses(trail, caplog)
    lost = verify_file(kept)
    assert lost.ok and lost.last_seq == 2  # header and two records; nothing after the loss

    again = await _run(path, 1)  # a restart
    await again.close()
    header = _records(path)[0]
    assert header["predecessor"] == {
        "file_id": lost.file_id, "seq": lost.last_seq, "hash": lost.last_hash,
    }  # fmt: skip
    assert verify_file(path).ok  # the chain itself is intact ...
    alone = verify_files([path])[path]  # ... but it continues a file that is missing
    assert not alone.ok and "predecessor" in str(alone.problem) and "not given" in alone.summary()
    assert main(["audit", "verify", str(path)]) == 1
    assert "TAMPERED: line 1: its predecessor" in capsys.readouterr().out
    assert main(["audit", "verify", str(kept), str(path)]) == 0  # given both: linked


async def test_a_swapped_folder_is_noticed_and_the_restart_names_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "audit"
    path = folder / "audit.jsonl"
    trail = await _run(path)
    folder.rename(tmp_path / "audit.old")
    folder.mkdir()  # an empty folder in its place: the path names no file
    await _loses(trail, caplog)
    old = tmp_path / "audit.old" / "audit.jsonl"
    assert verify_file(old).ok

    again = await _run(path, 1)
    await again.close()
    assert _records(path)[0]["predecessor"]["file_id"] == verify_file(old).file_id
    assert not verify_files([path])[path].ok
    assert all(r.ok for r in verify_files([old, path]).values())


async def test_a_file_replaced_by_another_path_at_the_same_name_is_noticed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = await _run(path)
    other = tmp_path / "other.jsonl"
    await (await _run(other, 0)).close()
    os.replace(other, path)  # a valid audit file, but another one
    await _loses(trail, caplog)


async def test_a_file_replaced_or_cut_short_while_stopped_is_never_extended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    await (await _run(path)).close()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the last records cut: the chain alone is intact
    assert verify_file(path).ok
    with pytest.raises(AuditUnavailable, match="records were cut from its end"):
        await AuditTrail(path).open()
    other = tmp_path / "other.jsonl"
    await (await _run(other, 5)).close()
    os.replace(other, path)
    with pytest.raises(AuditUnavailable, match="it was replaced"):
        await AuditTrail(path).open()


APP = """
namespace: k
entries:
  - {name: audit, kind: security.audit, path: "file://audit.jsonl"}
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: fn, kind: function.python, source: "builtins:print"}
  - {name: worker, kind: queue.consumer, queue: jobs, func: fn, lifecycle: {auto_start: true}}
"""


async def test_after_the_file_is_deleted_no_handler_runs_and_nothing_is_acked(
    tmp_path: Path,
) -> None:
    ran: list[int] = []

    async def handler(data: dict[str, int]) -> bool:
        ran.append(data["n"])
        return True

    app = write(tmp_path / "app.yaml", APP)
    async with Runtime.load(app, plugins=handler_plugins(handler)) as runtime:
        assert runtime.audit is not None
        await runtime.publish("k:jobs", {"n": 0})
        await runtime.join("k:jobs", timeout=5)
        (tmp_path / "audit.jsonl").unlink()
        await _next_millisecond()  # the path is looked at once a millisecond at most
        await runtime.publish("k:jobs", {"n": 1})
        async with asyncio.timeout(5):
            await _until(lambda: runtime.audit is not None and runtime.audit.lost)
        async with asyncio.timeout(5):  # given back, unacked: it waits for a restart
            while (await runtime.info("k:jobs")).message_count != 1:
                await asyncio.sleep(0.005)
        assert ran == [0]  # its attempt could not be recorded: the handler never ran
        assert not runtime.audit.gate.is_set()


async def _next_millisecond() -> None:
    now_ms = time.monotonic_ns() // 1_000_000
    while time.monotonic_ns() // 1_000_000 == now_ms:
        await asyncio.sleep(0)


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


async def test_the_writer_finds_the_loss_on_its_own_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no record to write, the writer's own look (every 100 ms while records wait
    for their fsync) finds the file gone, closes the gate, and stops looking."""
    path = tmp_path / "audit.jsonl"
    trail = await _run(path)  # batch: the records wait for their fsync
    trail.append({"event": "consume", "message_id": "unsynced"})
    path.unlink()
    with caplog.at_level(logging.ERROR):
        async with asyncio.timeout(5):
            await _until(lambda: trail.lost)
        assert trail._task is not None
        async with asyncio.timeout(5):
            await trail._task  # the writer is done with the lost file
    assert caplog.text.count("no longer names the file being written") == 1
    await trail.close()
