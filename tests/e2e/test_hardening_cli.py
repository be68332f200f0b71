"""The CLI as a new user met it (issue 15): every mistake is a clear message and an exit
code the README documents, never a traceback or a silent success."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write

from wippy_queue.audit import AuditTrail
from wippy_queue.cli import main

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"


def wippy_queue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wippy_queue", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


# -- item 16: a file that is no audit trail ------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "show"])
@pytest.mark.parametrize("content", ["# a README\n", "", '{"a": 1}\n{"b": 2}\n'])
def test_a_file_that_is_no_audit_trail_is_bad_input_not_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: str
) -> None:
    path = tmp_path / "README.md"
    path.write_text(content)
    assert main(["audit", command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"wippy-queue audit: {path}: not an audit file: ")
    assert "TAMPERED" not in captured.out + captured.err
    assert captured.out == ""  # show prints no empty table for it


async def test_an_audit_trail_whose_header_was_edited_is_still_tampered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path)
    await trail.open()
    await trail.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["garbage", *lines[1:]]) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: TAMPERED: line 1: " in out and "header edited or removed" in out
    assert json.loads(lines[1])["seq"] == 1  # a record followed: that is what gave it away


# -- item 9: what a signal stops, and a second one -----------------------------------------

SLOW_APP = """
namespace: app
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: slow, kind: function.python, source: "file://slow.py", method: handle}
  - name: worker
    kind: queue.consumer
    queue: jobs
    func: slow
    lifecycle: {auto_start: true, stop_timeout: 30s}
"""
SLOW = """
import argparse
import asyncio
import logging


async def handle(data):
    logging.getLogger("slow").warning("handler started")
    await asyncio.sleep(60)
"""


async def read_until(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    async with asyncio.timeout(15):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"exited early: {''.join(seen)}"
            seen.append(line)
            if needle in line:
                return


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_says_what_it_drains_and_a_second_stops_at_once(
    tmp_path: Path, sig: signal.Signals
) -> None:
    write(tmp_path / "app.yaml", SLOW_APP)
    write(tmp_path / "slow.py", SLOW)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wippy_queue", "run", str(tmp_path),
        "--publish", "jobs", '{"n": 1}', "--publish", "jobs", '{"n": 2}',
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        await read_until(process.stderr, "handler started", seen)
        process.send_signal(sig)
        await read_until(process.stderr, "stopping gracefully", seen)
        assert f"{sig.name} received: stopping gracefully" in seen[-1]
        assert "(by consumer: app:worker " in seen[-1]  # one running, one prefetched
        assert f"{sig.name} again stops at once" in seen[-1]
        process.send_signal(sig)  # the handler would keep it 30 s more
        async with asyncio.timeout(15):
            _, rest = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = "".join(seen) + rest.decode()
    assert process.returncode == 128 + sig.value, stderr
    assert "Traceback" not in stderr
    assert f"{sig.name} again: stopping at once; running handlers are cut off" in stderr
    # the message in flight (and the one given back untried) go with the process
    assert "2 message(s) still in memory-driver queues are discarded with the process" in stderr
    assert "(app:jobs 2)" in stderr


def test_a_clean_run_of_the_memory_driver_says_what_it_leaves_behind(tmp_path: Path) -> None:
    write(
        tmp_path / "app.yaml",
        SLOW_APP.replace("lifecycle: {auto_start: true, stop", "lifecycle: {stop"),
    )
    write(tmp_path / "slow.py", SLOW)
    done = wippy_queue("run", str(tmp_path), "--publish", "jobs", '{"n": 1}', "--timeout", "0.2")
    assert done.returncode == 0, done.stderr
    assert "1 message(s) still in memory-driver queues are discarded" in done.stderr


# -- items 4 and 14: option values and --publish are checked before anything starts -------


def usage_error(*args: str) -> str:
    done = wippy_queue(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: wippy-queue run ")  # run's usage, not the top one
    return done.stderr.splitlines()[-1]


def test_an_unknown_log_level_is_a_usage_error_listing_the_levels() -> None:
    last = usage_error("run", str(SEED), "--log-level", "verbose")
    assert last.endswith(
        "invalid choice: 'verbose' (choose from 'debug', 'info', 'warning', 'error')"
    )


@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf", "soon"])
def test_a_timeout_that_is_no_positive_number_is_a_usage_error(seconds: str) -> None:
    last = usage_error("run", str(SEED), "--timeout", seconds)
    assert last.endswith(f"argument --timeout: expected seconds > 0, got {seconds!r}")


def test_bad_publish_json_is_a_usage_error_of_run() -> None:
    last = usage_error("run", str(SEED), "--publish", "tasks", "{bad")
    assert "--publish tasks: not valid JSON" in last and "'{bad'" in last


@pytest.mark.parametrize(
    ("queue", "body", "message"),
    [
        ("app.queue:nope", '{"id": 1}', "--publish app.queue:nope: no queue 'app.queue:nope'; "
         "known queues: app.queue:tasks"),
        ("nope", '{"id": 1}', "--publish nope: no queue 'nope'; known queues: app.queue:tasks"),
        ("tasks", "{}", "--publish tasks: refusing to publish empty data {}"),
        ("tasks", '""', "--publish tasks: refusing to publish empty data ''"),
    ],
)  # fmt: skip
def test_a_publish_that_cannot_go_is_refused_before_any_service_starts(
    queue: str, body: str, message: str
) -> None:
    done = wippy_queue("run", str(SEED), "--publish", queue, body, "--until-idle")
    assert done.returncode == 1
    assert done.stderr == f"wippy-queue: {message}\n"  # nothing started, nothing stopped


def test_a_queue_name_without_namespace_is_resolved_when_one_queue_has_it() -> None:
    done = wippy_queue("run", str(SEED), "--publish", "tasks", '{"id": "t9"}', "--until-idle")
    assert done.returncode == 0, done.stderr
    assert "queue=app.queue:tasks" in done.stderr and "task_id=t9" in done.stderr


def test_a_queue_name_two_namespaces_have_is_ambiguous(tmp_path: Path) -> None:
    for ns in ("a", "b"):
        write(tmp_path / f"{ns}.yaml", f"namespace: {ns}\nentries:\n"
              "  - {name: mem, kind: queue.driver.memory}\n"
              "  - {name: tasks, kind: queue.queue, driver: mem}\n")  # fmt: skip
    done = wippy_queue("run", str(tmp_path), "--publish", "tasks", '{"id": 1}')
    assert done.returncode == 1
    assert done.stderr == (
        "wippy-queue: --publish tasks: several queues are named so (a:tasks, b:tasks); "
        "give the namespace\n"
    )


# -- item 11: --header and --as ------------------------------------------------------------

MULTI = ROOT / "examples" / "multi_tenant"


def test_headers_reach_the_published_message(tmp_path: Path) -> None:
    write(tmp_path / "app.yaml", SLOW_APP.replace("slow.py", "h.py"))
    write(
        tmp_path / "h.py",
        """
        import logging
        from wippy_queue import current_message

        def handle(data):
            logging.getLogger("h").warning("prio=%s", current_message().header("prio"))
        """,
    )
    done = wippy_queue(
        "run", str(tmp_path), "--publish", "jobs", '{"n": 1}', "--header", "prio=high",
        "--until-idle",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "prio=high" in done.stderr


def test_a_reserved_header_is_refused_before_anything_starts() -> None:
    done = wippy_queue("run", str(SEED), "--publish", "tasks", '{"id": 1}', "--header", "x_a=1")
    assert done.returncode == 1
    assert done.stderr.startswith("wippy-queue: --header: header 'x_a' is reserved")


def test_publishing_as_an_actor_is_checked_by_its_policies() -> None:
    denied = wippy_queue(
        "run", str(MULTI), "--publish", "a_private", '{"job": "x"}', "--as", "svc-b",
        "--until-idle", "--timeout", "20",
    )  # fmt: skip
    assert denied.returncode == 1
    assert (
        "wippy-queue: permission denied: actor 'svc-b' may not queue.publish.queue on "
        "'app.mt:a_private'"
    ) in denied.stderr
    allowed = wippy_queue(
        "run", str(MULTI), "--publish", "a_private", '{"job": "x"}', "--as", "svc-a",
        "--until-idle", "--timeout", "20",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    # stamped with the actor it published as: the provenance a consumer trusts
    assert "job handled job=x by=worker-a publisher=svc-a tenant=tenant-a" in allowed.stderr


def test_publishing_as_an_actor_no_consumer_runs_as_is_refused() -> None:
    done = wippy_queue("run", str(MULTI), "--publish", "jobs", '{"job": 1}', "--as", "svc-c")
    assert done.returncode == 1
    assert done.stderr == (
        "wippy-queue: --as svc-c: no consumer runs as that actor; actors: svc-a, svc-b, "
        "worker-a, worker-b\n"
    )


# -- item 18: the CLI's own help -----------------------------------------------------------


def all_parsers() -> list[argparse.ArgumentParser]:
    from wippy_queue.cli import _parser

    found, pending = [], [_parser()]
    while pending:
        parser = pending.pop()
        found.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += action.choices.values()
    return found


def test_every_argument_of_every_command_has_help() -> None:
    missing = [
        f"{parser.prog}: {action.dest}"
        for parser in all_parsers()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert missing == []


def test_version_and_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"wippy-queue {metadata.version('wippy-queue')}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "`" not in out and "validate" in out and "--version" in out


def test_the_license_file_is_the_mit_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()


def test_the_sdist_carries_every_file_the_tests_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from setuptools._distutils.filelist import FileList

    monkeypatch.chdir(ROOT)  # MANIFEST.in patterns are relative to the project's root
    files = FileList()
    files.findall()
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            files.process_template_line(line)
    carried = set(files.files)
    needed = {"README.md", "LICENSE"} | {
        str(path.relative_to(ROOT))
        for folder in ("tests", "examples", "bench")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert needed - carried == set()


def test_a_run_where_nothing_auto_starts_says_so(tmp_path: Path) -> None:
    write(
        tmp_path / "app.yaml",
        "namespace: app\nentries:\n  - {name: mem, kind: queue.driver.memory}\n",
    )
    done = wippy_queue("run", str(tmp_path), "--timeout", "0.1")
    assert done.returncode == 0, done.stderr
    assert "no service has lifecycle.auto_start: true, so nothing runs" in done.stderr


def test_a_run_whose_services_fail_to_start_does_not_say_none_auto_starts(
    tmp_path: Path,
) -> None:
    """Before, every run with nothing running said "no service has auto_start", even
    when they had it and their start failed."""
    write(
        tmp_path / "app.yaml",
        "namespace: app\nentries:\n"
        "  - name: drv\n    kind: queue.driver.redis\n    url: redis://127.0.0.1:1/0\n"
        "    lifecycle: {auto_start: true, start_timeout: 1s, startup: optional,\n"
        "                restart: {initial_delay: 10s, max_attempts: 1}}\n",
    )
    done = wippy_queue("run", str(tmp_path), "--timeout", "0.1")
    assert "nothing runs yet: app:drv did not start" in done.stderr
    assert "no service has lifecycle.auto_start" not in done.stderr
