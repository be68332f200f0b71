"""The audit trail: one hash-chained record per decision and outcome, tamper
evidence, crash-torn lines, fail-closed writes, and hot reload of policy files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import backends
import pytest
import yaml
from conftest import handler_plugins, write

from wippy_queue import Runtime
from wippy_queue.audit import AuditTrail, AuditUnavailable, verify_file
from wippy_queue.audit.chain import CLOSED, RESUMED
from wippy_queue.cli import main
from wippy_queue.functions.python import PythonHandler

pytestmark = pytest.mark.usefixtures("backend")  # every test runs on every driver

WAIT_S = 5.0
MODEL = Path(__file__).parents[2] / "wippy_queue" / "policies" / "rbac_with_tenants.conf"
ALLOW_A = "p, worker, tenant-a, t:*, queue.consume, allow\ng, worker-a, worker, tenant-a\n"
ALLOW_NONE = "g, worker-a, worker, tenant-a\n"


def app(
    tmp_path: Path,
    handler: Callable[..., Any],
    *,
    rules: str = ALLOW_A,
    fsync: str = "batch",
    max_attempts: int = 50,
) -> Runtime:
    """Queue t:jobs consumed by t:worker (actor worker-a, tenant-a) under RBAC rules
    in tmp_path/rules.csv; publishers stamp tenant-a via the `t:outbox` consumer."""
    write(tmp_path / "rules.csv", rules)
    backend = backends.current()
    document = {
        "namespace": "t",
        "entries": [
            {
                "name": "audit",
                "kind": "security.audit",
                "path": "file://audit.jsonl",
                "fsync": fsync,
            },
            backend.driver_entry("mem"),
            backend.queue_entry(
                "jobs", dead_letter={"queue": "dead", "max_attempts": max_attempts}
            ),
            backend.queue_entry("dead"),
            {
                "name": "tenants",
                "kind": "security.policy.casbin",
                "model": f"file://{MODEL}",
                "policy": "file://rules.csv",
                "request": ["actor.id", "actor.meta.tenant", "resource", "action"],
            },
            {"name": "fn", "kind": "function.python", "source": "builtins:print"},
            {
                "name": "worker",
                "kind": "queue.consumer",
                "queue": "jobs",
                "func": "fn",
                "lifecycle": {
                    "auto_start": True,
                    "security": {
                        "actor": {"id": "worker-a", "meta": {"tenant": "tenant-a"}},
                        "policies": ["tenants"],
                    },
                },
            },
        ],
    }
    path = write(tmp_path / "app.yaml", yaml.safe_dump(document, sort_keys=False))
    return Runtime.load(path, plugins=handler_plugins(handler))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def ok(data: Any) -> bool:
    return True


# -- records ---------------------------------------------------------------------


async def test_every_consume_is_recorded_with_decision_and_outcome(tmp_path: Path) -> None:
    async def flaky(data: Any) -> Any:
        if data["n"] == 1:
            raise ValueError("boom")
        return True

    runtime = app(tmp_path, flaky, max_attempts=1)
    async with runtime:
        await runtime.publish("t:jobs", {"n": 0})
        await runtime.publish("t:jobs", {"n": 1})
        await runtime.join("t:jobs", timeout=WAIT_S)
    records = lines(tmp_path / "audit.jsonl")
    assert records[0]["event"] == "audit_header"
    consumes = [r for r in records if r["event"] == "consume"]
    assert [r["outcome"] for r in consumes] == ["ack", "dead_letter"]
    for record in consumes:
        assert record["decision"] == "allow" and record["reason"] == "policy"
        assert record["actor"] == "worker-a" and record["tenant"] == "tenant-a"
        assert record["consumer"] == "t:worker" and record["queue"] == "t:jobs"
        assert record["policy"] == "t:tenants" and record["rule"][:2] == ["worker", "tenant-a"]
        assert record["attempt"] == 1 and record["duration_us"] >= 0
    assert consumes[1]["error"] == "ValueError: boom"
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert verify_file(tmp_path / "audit.jsonl").ok


async def test_denied_consume_is_recorded_and_handler_never_runs(tmp_path: Path) -> None:
    ran: list[Any] = []

    async def handler(data: Any) -> bool:
        ran.append(data)
        return True

    runtime = app(tmp_path, handler, rules=ALLOW_NONE, max_attempts=2)
    async with runtime:
        await runtime.publish("t:jobs", {"n": 0})
        await runtime.join("t:jobs", timeout=WAIT_S)
    assert ran == []
    consumes = [r for r in lines(tmp_path / "audit.jsonl") if r["event"] == "consume"]
    assert [(r["decision"], r["reason"], r["outcome"]) for r in consumes] == [
        ("deny", "no_allow", "nack"),
        ("deny", "no_allow", "dead_letter"),
    ]
    assert consumes[0]["outcome_reason"] == "permission_denied"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`wippy-queue run` in-process installs log handlers; put the old ones back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_cli_run_audit_flag_and_show_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "trail.jsonl"
    code = main(
        [
            "run",
            "examples/multi_tenant",
            "--audit",
            str(audit),
            "--publish",
            "app.mt:outbox_a",
            '{"job": "a1"}',
            "--publish",
            "app.mt:outbox_b",
            '{"job": "b3", "target": "app.mt:a_private"}',
            "--until-idle",
            "--timeout",
            "10",
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(audit)]) == 0
    assert "chain intact" in capsys.readouterr().out
    assert main(["audit", "show", str(audit), "--denied", "--json"]) == 0
    denied = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert denied and all(r["decision"] == "deny" for r in denied)
    assert any(r["actor"] == "svc-b" and r["queue"] == "app.mt:a_private" for r in denied)
    assert main(["audit", "show", str(audit), "--actor", "worker-a"]) == 0
    table = capsys.readouterr().out
    assert "worker-a" in table and "svc-b" not in table and "ACTOR" in table
    assert main(["audit", "show", str(audit), "--since", "2999-01-01"]) == 0
    assert "(0 records)" in capsys.readouterr().out
    for ago in ("10m", "1d"):  # a duration ago
        assert main(["audit", "show", str(audit), "--since", ago]) == 0
        assert "worker-a" in capsys.readouterr().out
    for odd in ("yesterday", "2026", "99999999999h", "inf"):
        assert main(["audit", "show", str(audit), "--since", odd]) == 2, odd
        assert "duration ago" in capsys.readouterr().err

    audit.write_text(audit.read_text().replace('"worker-a"', '"worker-z"'))
    assert main(["audit", "show", str(audit), "--actor", "worker-z"]) == 1  # shown, but flagged
    out, err = capsys.readouterr()
    assert "worker-z" in out and "fails verification" in err and "cannot be trusted" in err


def test_a_strict_mode_publish_denial_is_recorded_with_its_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = tmp_path / "audit.jsonl"
    argv = ["run", "examples/multi_tenant", "--strict", "--audit", str(audit)]
    argv += ["--publish", "app.mt:outbox_a", '{"job": "s1"}', "--until-idle", "--timeout", "10"]
    assert main(argv) == 1  # publishing with no actor is denied in strict mode
    assert "a caller without an actor may not queue.publish" in capsys.readouterr().err
    (denial,) = [r for r in lines(audit) if r["event"] == "publish"]
    assert (denial["decision"], denial["reason"]) == ("deny", "strict_mode")
    assert (denial["action"], denial["queue"]) == ("queue.publish", "app.mt:outbox_a")


# -- durability ---------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["never", "batch", "always"])
async def test_records_reach_the_disk_as_the_fsync_mode_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    from wippy_queue.audit import trail as trail_module

    syncs: list[int] = []  # file sizes at each sync
    synced = asyncio.Event()
    loop = asyncio.get_running_loop()
    path = tmp_path / "t.jsonl"

    def spy(fd: int) -> None:
        syncs.append(os.fstat(fd).st_size)
        loop.call_soon_threadsafe(synced.set)

    monkeypatch.setattr(trail_module, "_sync_data", spy)
    trail = AuditTrail(path, fsync=fsync)  # type: ignore[arg-type]
    await trail.open()
    syncs.clear()
    # m1 comes once the file is clean again (m0 synced): its record must start the
    # writer's clock anew, not wait for the stop
    for message_id in ("m0", "m1"):
        syncs.clear()
        await trail.record({"event": "consume", "message_id": message_id})
        size = path.stat().st_size
        if fsync == "always":
            assert syncs == [size]  # acked only once on disk
        elif fsync == "batch":
            async with asyncio.timeout(2.0):  # on disk within ~100 ms
                while not (syncs and syncs[-1] >= size):
                    synced.clear()
                    await synced.wait()
            assert len(syncs) == 1  # one fsync per 100 ms, not one per record
    await trail.record({"event": "consume", "message_id": "m2"})
    await trail.close()
    if fsync == "never":
        assert syncs == []  # left to the OS
    else:
        assert syncs[-1] == path.stat().st_size  # and everything at stop
    assert verify_file(path).records == 5  # header, m0, m1, m2 and the close


# -- tamper evidence ---------------------------------------------------------------


@pytest.fixture
def trail_file(tmp_path: Path) -> Path:
    async def make() -> None:
        trail = AuditTrail(tmp_path / "t.jsonl")
        await trail.open()
        for i in range(6):
            await trail.record({"event": "consume", "message_id": f"m{i}", "outcome": "ack"})
        await trail.close()

    asyncio.run(make())
    return tmp_path / "t.jsonl"


def _edit(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(change(path.read_text().splitlines(keepends=True))))


@pytest.mark.parametrize(
    ("name", "change", "bad_line", "words"),
    [
        ("edit", lambda ls: [*ls[:3], ls[3].replace('"ack"', '"nack"'), *ls[4:]], 4, "edited"),
        ("delete", lambda ls: [*ls[:2], *ls[3:]], 3, "sequence"),
        ("insert", lambda ls: [*ls[:4], ls[2], *ls[4:]], 5, "sequence"),
        ("reorder", lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], 3, "sequence"),
        ("delete header", lambda ls: ls[1:], 1, "header"),
        ("garbage line", lambda ls: [*ls[:2], "not json\n", *ls[2:]], 4, "torn"),
        ("complete junk last line", lambda ls: [*ls[:-1], "junk\n"], 8, "complete line"),
    ],
)
def test_verify_names_the_first_bad_line(
    trail_file: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    change: Callable[[list[str]], list[str]],
    bad_line: int,
    words: str,
) -> None:
    assert main(["audit", "verify", str(trail_file)]) == 0
    assert "ok: 8 records, chain intact; closed at a clean stop" in capsys.readouterr().out
    _edit(trail_file, change)
    result = verify_file(trail_file)
    assert not result.ok and result.bad_line == bad_line and words in str(result.problem)
    assert main(["audit", "verify", str(trail_file)]) == 1
    assert f"line {bad_line}" in capsys.readouterr().out


def test_rehashed_edit_is_still_caught(trail_file: Path) -> None:
    """Recomputing the edited record's own hash breaks the next record's prev."""
    from wippy_queue.audit.chain import seal

    records = lines(trail_file)
    records[3]["outcome"] = "nack"
    trail_file.write_bytes(b"".join(seal(r, r["prev"]) for r in records))
    result = verify_file(trail_file)
    assert not result.ok and result.bad_line == 5


async def test_torn_last_line_is_reported_and_the_chain_continues(trail_file: Path) -> None:
    data = trail_file.read_bytes()
    trail_file.write_bytes(data[:-30])  # a crash in the middle of the last record
    # ... before the chain's head was saved (it is saved once a record is written)
    trail_file.with_name("t.jsonl.head").unlink()
    torn = verify_file(trail_file)
    assert torn.ok and torn.torn_lines == [8] and "torn" in torn.summary()

    trail = AuditTrail(trail_file)
    await trail.open()
    await trail.record({"event": "consume", "message_id": "after", "outcome": "ack"})
    await trail.close()
    result = verify_file(trail_file)
    assert result.ok, result.summary()
    assert result.torn_lines == [8] and result.closed
    tail = [json.loads(line) for line in trail_file.read_text().splitlines()[-3:]]
    assert tail[0]["event"] == RESUMED and tail[0]["torn_line"] == 8
    assert tail[1]["message_id"] == "after" and tail[2]["event"] == CLOSED


async def test_a_last_record_cut_off_before_its_newline_is_ended_not_joined(
    trail_file: Path,
) -> None:
    """A write that a full disk or a size limit cut just before the record's newline
    leaves a whole last record on an unended line: the next start ends the line first
    (before, it wrote its first record onto that line, and the file failed
    verification from then on)."""
    trail_file.write_bytes(trail_file.read_bytes()[:-1])
    assert verify_file(trail_file).ok
    trail = AuditTrail(trail_file)
    await trail.open()
    await trail.record({"event": "consume", "message_id": "after", "outcome": "ack"})
    await trail.close()
    result = verify_file(trail_file)
    assert result.ok and result.closed, result.summary()
    assert result.torn_lines == []


def test_records_cut_from_the_end_show_as_a_file_not_closed(trail_file: Path) -> None:
    """A chain cannot tell a cut end from a writer still running or crashed: verify
    says the file was not closed, and names its last seq and hash to compare."""
    closed = verify_file(trail_file)
    _edit(trail_file, lambda ls: ls[:-2])  # the close and the last consume, gone
    cut = verify_file(trail_file)
    assert cut.ok and not cut.closed and cut.last_seq == closed.last_seq - 2
    assert "not closed" in cut.summary() and f"last seq {cut.last_seq}" in cut.summary()


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"hello world"])
async def test_a_file_that_is_no_audit_file_fails_and_is_never_extended(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    result = verify_file(path)
    assert not result.ok and result.bad_line == 1 and "not an audit file" in str(result.problem)
    if content:  # an empty file is where a new trail starts
        with pytest.raises(AuditUnavailable, match="not an audit file"):
            await AuditTrail(path).open()
        assert path.read_bytes() == content


async def test_opening_a_tampered_file_is_refused(trail_file: Path) -> None:
    _edit(trail_file, lambda ls: [*ls[:2], *ls[3:]])
    trail = AuditTrail(trail_file)
    with pytest.raises(AuditUnavailable, match="refusing to extend it"):
        await trail.open()


def test_an_audit_file_that_cannot_be_opened_stops_the_run_with_where_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = write(tmp_path / "not-a-folder", "")
    flag = ["run", "examples/seed", "--until-idle", "--timeout", "10", "--audit"]
    assert main([*flag, str(blocker / "audit.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "cannot open the audit file" in err and "given by --audit" in err
    assert "Traceback" not in err

    app(tmp_path, ok)  # its security.audit entry writes file://audit.jsonl
    (tmp_path / "audit.jsonl").mkdir()
    assert main(["run", str(tmp_path), "--until-idle", "--timeout", "10"]) == 1
    err = capsys.readouterr().err
    assert "app.yaml:" in err and "t:audit: path" in err and "Is a directory" in err


HANGING_APP = """
namespace: k
entries:
  - {name: audit, kind: security.audit, path: "file://audit.jsonl", fsync: always}
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: fn, kind: function.python, source: "file://handlers.py", method: handle}
  - {name: worker, kind: queue.consumer, queue: jobs, func: fn, lifecycle: {auto_start: true}}
"""
HANGING_HANDLER = """
import asyncio, os

async def handle(data):
    if data["n"] == 1 and os.environ.get("HANG") == "1":
        await asyncio.Event().wait()  # killed in here
    return True
"""


@pytest.mark.backends("memory", reason="the audit chain across a kill; the queue plays no part")
async def test_a_process_killed_mid_message_leaves_a_chain_the_next_run_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "app.yaml", HANGING_APP)
    write(tmp_path / "handlers.py", HANGING_HANDLER)
    audit = tmp_path / "audit.jsonl"
    publish = ["--publish", "k:jobs", '{"n": 0}', "--publish", "k:jobs", '{"n": 1}']
    command = [sys.executable, "-m", "wippy_queue", "run", str(tmp_path), *publish]
    env = {**os.environ, "HANG": "1"}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(WAIT_S):  # n=0 is recorded and acked; n=1 hangs
            while '"outcome":"ack"' not in (audit.read_text() if audit.exists() else ""):
                await asyncio.sleep(0.01)
    finally:
        process.kill()  # SIGKILL: no stop, no flush, no close
        await process.wait()
    assert main(["audit", "verify", str(audit)]) == 0
    out = capsys.readouterr().out
    # the header, n=0's attempt and record, n=1's attempt (recorded before its handler ran)
    assert "ok: 4 records" in out and "not closed" in out

    with open(audit, "ab") as f:  # as if the kill had landed mid-write
        f.write(b'{"seq":4,"time":"2026-')
    env["HANG"] = "0"
    await asyncio.to_thread(
        subprocess.run, [*command, "--until-idle", "--timeout", "10"], env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    assert main(["audit", "verify", str(audit)]) == 0
    assert "torn line(s) after a crash: 5" in capsys.readouterr().out
    records = [json.loads(line) for i, line in enumerate(audit.read_text().splitlines()) if i != 4]
    assert [r["event"] for r in records] == [
        "audit_header",
        "attempt",
        "consume",
        "attempt",  # n=1, killed in its handler: recorded as attempted, never as done
        RESUMED,
        "attempt",
        "consume",
        "attempt",
        "consume",
        CLOSED,
    ]
    assert [r["seq"] for r in records] == list(range(10))


# -- fail closed -------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["never", "batch", "always"])
async def test_unwritable_audit_stops_consumers_and_acks_nothing_unaudited(
    tmp_path: Path, fsync: str
) -> None:
    handled: list[int] = []
    runtime = app(tmp_path, ok, fsync=fsync)
    assert runtime.audit is not None
    runtime.audit.retry_s = 0.05
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC

    async def handler(data: Any) -> bool:
        handled.append(data["n"])
        return True

    runtime.consumers["t:worker"].handler = PythonHandler("t:fn", handler)
    async with runtime:
        await runtime.publish("t:jobs", {"n": 0})
        await runtime.join("t:jobs", timeout=WAIT_S)
        real, runtime.audit._fd = runtime.audit._fd, full  # the disk fills up
        await runtime.publish("t:jobs", {"n": 1})
        async with asyncio.timeout(WAIT_S):
            while runtime.audit.healthy:  # the attempt record fails before the handler
                await asyncio.sleep(0.001)
        async with asyncio.timeout(WAIT_S):  # a broker takes a round trip to give it back
            while (await runtime.info("t:jobs")).message_count != 1:
                await asyncio.sleep(0.001)  # handled but NOT acked: it went back to the queue
        assert not runtime.audit.gate.is_set()  # consumers take nothing while unwritable
        runtime.audit._fd = real  # room again
        await runtime.join("t:jobs", timeout=WAIT_S)
    os.close(full)
    # n=1's attempt could not be recorded, so its handler never ran while the disk was
    # full (issue 16 item 7: it used to run unrecorded); it ran once the audit came back
    assert handled == [0, 1]
    records = lines(tmp_path / "audit.jsonl")
    assert [r["outcome"] for r in records if r["event"] == "consume"] == ["ack", "ack"]
    assert any(r["event"] == "audit_recovered" for r in records)
    assert verify_file(tmp_path / "audit.jsonl").ok


# -- hot reload --------------------------------------------------------------------


async def test_hot_reload_applies_a_good_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    handled: list[int] = []

    async def handler(data: Any) -> bool:
        handled.append(data["n"])
        return True

    runtime = app(tmp_path, handler, rules=ALLOW_NONE)
    reloads: asyncio.Queue[tuple[bool, str | None]] = asyncio.Queue()
    runtime.policy_watcher.listeners.append(
        lambda policy, file, old, new, applied, error: reloads.put_nowait((applied, error))
    )
    async with runtime:
        await runtime.publish("t:jobs", {"n": 0})
        async with asyncio.timeout(WAIT_S):  # denied while no rule allows it
            while (await runtime.info("t:jobs")).delayed == 0:
                await asyncio.sleep(0.001)
        assert handled == []

        (tmp_path / "rules.csv").write_text(ALLOW_A)
        assert await asyncio.wait_for(reloads.get(), WAIT_S) == (True, None)
        await runtime.join("t:jobs", timeout=WAIT_S)
        assert handled == [0]

        (tmp_path / "rules.csv").write_text("p, worker, tenant-a\n")  # too few fields
        applied, error = await asyncio.wait_for(reloads.get(), WAIT_S)
        assert not applied and "fields" in str(error)
        await runtime.publish("t:jobs", {"n": 1})
        await runtime.join("t:jobs", timeout=WAIT_S)
        assert handled == [0, 1]  # the last good rules stayed in force

    events = [r for r in lines(tmp_path / "audit.jsonl") if r["event"] == "policy_reload"]
    assert [r["result"] for r in events] == ["applied", "refused"]
    assert events[0]["old_digest"] != events[0]["new_digest"]
    assert events[1]["error"]


async def test_a_message_id_that_needs_escaping_is_recorded_as_given(tmp_path: Path) -> None:
    runtime = app(tmp_path, ok)
    odd = 'id with "quotes", \\ and ünïcode'
    async with runtime:
        await runtime.publish("t:jobs", {"n": 0}, message_id=odd)
        await runtime.join("t:jobs", timeout=WAIT_S)
    consumes = [r for r in lines(tmp_path / "audit.jsonl") if r["event"] == "consume"]
    assert [r["message_id"] for r in consumes] == [odd]
    assert verify_file(tmp_path / "audit.jsonl").ok
