"""``wippy-queue run`` end to end, in a subprocess, as a user types it."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
WAIT_S = 15.0


def wippy_queue(*args: str, timeout_s: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wippy_queue", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


@functools.cache
def run_seed(log_format: str) -> subprocess.CompletedProcess[str]:
    """The README's command (run once per format, shared by the tests that read it)."""
    return wippy_queue(
        "run",
        str(SEED),
        "--publish",
        "app.queue:tasks",
        '{"id":"task-123"}',
        "--until-idle",
        "--timeout",
        "10",
        "--log-format",
        log_format,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_run_seed_until_idle_processes_the_message() -> None:
    result = run_seed("text")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    processing = [line for line in result.stderr.splitlines() if "Processing" in line]
    assert len(processing) == 1, result.stderr
    assert "task_id=task-123" in processing[0]
    assert "stopped" in result.stderr  # a graceful stop, not a kill


def test_run_says_the_load_warnings_validate_gives() -> None:
    result = run_seed("text")
    warnings = [line for line in result.stderr.splitlines() if "has no dead_letter" in line]
    assert len(warnings) == 1, result.stderr
    assert "app.queue:tasks" in warnings[0] and "WARNING" in warnings[0].upper()


def test_run_log_format_json_gives_json_records() -> None:
    result = run_seed("json")
    assert result.returncode == 0, result.stderr
    records = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    (processing,) = [r for r in records if r.get("message") == "Processing"]
    assert processing["task_id"] == "task-123"
    assert processing["level"] == "info"
    assert {"time", "logger"} <= processing.keys()


def test_run_log_format_json_every_stderr_line_is_json() -> None:
    result = run_seed("json")
    assert result.returncode == 0, result.stderr
    for line in result.stderr.splitlines():
        json.loads(line)


def test_run_bad_publish_json_is_a_clear_error() -> None:
    result = wippy_queue("run", str(SEED), "--publish", "app.queue:tasks", "{bad", "--until-idle")
    assert result.returncode != 0
    no_traceback(result)
    assert "{bad" in result.stderr and "JSON" in result.stderr


def test_run_publish_to_an_unknown_queue_is_a_clear_error() -> None:
    result = wippy_queue(
        "run", str(SEED), "--publish", "app.queue:nope", '{"id":1}', "--until-idle"
    )
    assert result.returncode != 0
    no_traceback(result)
    assert "app.queue:nope" in result.stderr and "app.queue:tasks" in result.stderr


def test_run_config_error_is_a_clear_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: tasks
            kind: queue.queue
            driver: missing_driver
        """,
    )
    result = wippy_queue("run", str(tmp_path), "--until-idle", "--timeout", "5")
    assert result.returncode != 0
    no_traceback(result)
    assert f"{path}:5: app:tasks: driver: refers to 'app:missing_driver'" in result.stderr


def test_run_until_idle_that_times_out_is_non_zero(tmp_path: Path) -> None:
    write(
        tmp_path / "slow.py",
        """
        import asyncio

        async def handle(data):
            await asyncio.sleep(60)
        """,
    )
    write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
          - {name: jobs, kind: queue.queue, driver: mem}
          - {name: slow, kind: function.python, source: "file://slow.py", method: handle}
          - name: worker
            kind: queue.consumer
            queue: jobs
            func: slow
            lifecycle: {auto_start: true, stop_timeout: 0.1}
        """,
    )
    result = wippy_queue(
        "run", str(tmp_path), "--publish", "app:jobs", '{"n":1}', "--until-idle", "--timeout", "0.5"
    )
    assert result.returncode != 0
    no_traceback(result)
    assert "not idle after 0.5s" in result.stderr


def test_run_freezes_the_startup_heap_and_still_collects_later_cycles(tmp_path: Path) -> None:
    """``run`` moves what start-up made into the collector's permanent generation (so
    a full collection does not walk it: bench/pauses.py); what handlers make later is
    collected as before."""
    write(
        tmp_path / "probe.py",
        """
        import gc
        import json
        import weakref


        class Node:
            pass


        def handle(data):
            cycle = Node()
            cycle.me = cycle  # garbage only the cyclic collector can free
            freed = []
            weakref.finalize(cycle, freed.append, True)
            del cycle
            gc.collect()
            tracked = {id(o) for o in gc.get_objects()}  # the permanent generation is not listed
            report = {
                "frozen": gc.get_freeze_count(),
                "handler_frozen": id(handle) not in tracked,
                "cycle_freed": freed == [True],
            }
            with open(data["out"], "w") as out:
                json.dump(report, out)
        """,
    )
    write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
          - {name: jobs, kind: queue.queue, driver: mem}
          - {name: probe, kind: function.python, source: "file://probe.py", method: handle}
          - {name: worker, kind: queue.consumer, queue: jobs, func: probe,
             lifecycle: {auto_start: true}}
        """,
    )
    out = tmp_path / "report.json"
    data = json.dumps({"out": str(out)})
    result = wippy_queue(
        "run", str(tmp_path), "--publish", "app:jobs", data, "--until-idle", "--timeout", "10"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["frozen"] > 1000, report  # the start-up heap, frozen
    assert report["handler_frozen"], report  # loaded at start: frozen
    assert report["cycle_freed"], report  # made later: collected as before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_during_run_stops_gracefully(sig: signal.Signals) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wippy_queue",
        "run",
        str(SEED),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen: list[str] = []
    rest = b""
    try:
        async with asyncio.timeout(WAIT_S):
            while "service app.queue:task_consumer running" not in (seen or [""])[-1]:
                line = await process.stderr.readline()
                assert line, f"exited early: {''.join(seen)}"
                seen.append(line.decode())
        process.send_signal(sig)
        async with asyncio.timeout(WAIT_S):
            _, rest = await process.communicate()
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = "".join(seen) + rest.decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "service app.queue:task_consumer stopped" in stderr
