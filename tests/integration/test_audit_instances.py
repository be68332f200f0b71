"""Audit per runtime instance (issue 14 item 5): every record names the instance that
wrote it (an id per start, with host and pid in its start record); processes never
share a file (a pattern path gives each its own; a second writer is refused); and
``audit verify`` / ``audit show`` read several files, ``show`` merged by time."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write
from processes import HANDLER, ROOT, handled, start, stop, until

from wippy_queue import ConfigError, Runtime
from wippy_queue.audit import AuditTrail, AuditUnavailable, verify_file
from wippy_queue.cli import main

APP = """
namespace: k
entries:
  - {{name: audit, kind: security.audit, path: "file://{path}", fsync: always}}
  - {{name: mem, kind: queue.driver.memory, lifecycle: {{auto_start: true}}}}
  - {{name: jobs, kind: queue.queue, driver: mem}}
  - {{name: fn, kind: function.python, source: "file://handlers.py", method: handle}}
  - {{name: worker, kind: queue.consumer, queue: jobs, func: fn, lifecycle: {{auto_start: true}}}}
"""


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _app(tmp_path: Path, path: str) -> Path:
    write(tmp_path / "handlers.py", HANDLER)
    return write(tmp_path / "app.yaml", APP.format(path=path))


def _publish(n: int) -> list[str]:
    return ["--publish", "k:jobs", json.dumps({"n": n})]


async def test_two_processes_each_write_their_own_file_from_a_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _app(tmp_path, "audit-{instance}.jsonl")
    out = tmp_path / "out.txt"
    first = start(app, out, 0.0, *_publish(1))
    second = start(app, out, 0.0, *_publish(2))
    try:
        await until(lambda: len(handled(out)) == 2, "both processes handled their message")
    finally:
        errors = [stop(first), stop(second)]
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(files) == 2, errors
    pids = {first.pid, second.pid}
    seen = set()
    for file in files:
        records = _records(file)
        header = records[0]
        assert header["host"] == socket.gethostname() and header["pid"] in pids
        assert file.name == f"audit-{header['instance']}.jsonl"
        assert {r["instance"] for r in records} == {header["instance"]}  # every record
        assert [r["event"] for r in records] == [
            "audit_header",
            "attempt",
            "consume",
            "audit_closed",
        ]
        seen.add(header["pid"])
        assert verify_file(file).ok
    assert seen == pids
    assert main(["audit", "verify", *map(str, files)]) == 0
    assert capsys.readouterr().out.count("chain intact") == 2
    assert main(["audit", "show", *map(str, files), "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["event"] for r in shown) == ["attempt", "attempt", "consume", "consume"]
    assert [r["time"] for r in shown] == sorted(r["time"] for r in shown)
    assert {r["instance"] for r in shown} == {_records(f)[0]["instance"] for f in files}
    assert main(["audit", "show", *map(str, files)]) == 0
    assert "INSTANCE" in capsys.readouterr().out


async def test_a_second_process_on_a_file_another_one_writes_is_refused(tmp_path: Path) -> None:
    app = _app(tmp_path, "audit.jsonl")
    out = tmp_path / "out.txt"
    first = start(app, out, 0.0, *_publish(1))
    try:
        await until(lambda: handled(out) == [(first.pid, 1)], "the first process ran")
        refused = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "wippy_queue", "run", str(app), *_publish(2)],
            cwd=ROOT, env={**os.environ, "WQ_OUT": str(out)}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        stop(first)
    assert refused.returncode != 0
    assert "is being written by another live process" in refused.stderr
    assert f"pid {first.pid}" in refused.stderr and "audit-{instance}.jsonl" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [n for _, n in handled(out)] == [1]  # the refused process ran nothing
    assert verify_file(tmp_path / "audit.jsonl").ok
    events = [r["event"] for r in _records(tmp_path / "audit.jsonl")]
    assert events == ["audit_header", "attempt", "consume", "audit_closed"]


async def test_a_restart_on_the_same_file_names_its_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    instances = []
    for _ in range(2):
        trail = AuditTrail(path)
        await trail.open()
        with pytest.raises(AuditUnavailable, match="another live process"):
            await AuditTrail(path).open()  # in one process too: one writer per file
        await trail.record({"event": "consume", "message_id": "m"})
        await trail.close()
        instances.append(trail.instance)
    records = _records(path)
    assert [r["event"] for r in records] == [
        "audit_header", "consume", "audit_closed", "audit_opened", "consume", "audit_closed",
    ]  # fmt: skip
    assert records[3]["pid"] == os.getpid() and "host" in records[3]
    assert [r["instance"] for r in records] == [instances[0]] * 3 + [instances[1]] * 3
    assert instances[0] != instances[1] and verify_file(path).ok


def test_an_unknown_placeholder_in_the_path_is_a_load_error(tmp_path: Path) -> None:
    app = _app(tmp_path, "audit-{instnace}.jsonl")
    with pytest.raises(ConfigError, match=r"unknown placeholder \{instnace\}.*known: \{instance\}"):
        Runtime.load(app)
