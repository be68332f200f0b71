"""examples/seed_lua: the seed page's YAML and Lua, run as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed_lua"

#: The handler exactly as the seed page prints it.
SEED_HANDLER = """\
local function handler(body)
    local data = json.decode(body)

    logger.info("Processing", {task_id = data.id})

    local result, err = process_task(data)
    if err then
        return nil, err  -- Nack: requeue message
    end

    return result  -- Ack: remove from queue
end

return handler
"""

#: The seed page's entries for the handler and its consumer.
SEED_ENTRIES = {
    "task_handler": {
        "name": "task_handler",
        "kind": "function.lua",
        "source": "file://task_handler.lua",
        "modules": ["json", "logger"],
    },
    "task_consumer": {
        "name": "task_consumer",
        "kind": "queue.consumer",
        "queue": "app.queue:tasks",
        "func": "app.queue:task_handler",
        "concurrency": 4,
        "prefetch": 20,
        "lifecycle": {"auto_start": True, "depends_on": ["app.queue:tasks"]},
    },
}


def test_the_example_holds_the_seed_code_unchanged() -> None:
    lua = (EXAMPLE / "task_handler.lua").read_text(encoding="utf-8")
    assert lua.startswith('local json = require("json")\nlocal logger = require("logger")\n')
    assert lua.endswith(SEED_HANDLER)
    assert "local function process_task(data)" in lua
    document = yaml.safe_load((EXAMPLE / "_index.yaml").read_text(encoding="utf-8"))
    assert document["namespace"] == "app.queue"
    entries = {e["name"]: e for e in document["entries"]}
    for name, entry in SEED_ENTRIES.items():
        assert entries[name] == entry


def _cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "wippy_queue", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


def test_the_readme_command_runs_the_seed_lua_example() -> None:
    done = _cli(
        "run",
        str(EXAMPLE),
        "--publish",
        "app.queue:tasks",
        '{"id":"task-123","action":"process"}',
        "--until-idle",
        "--timeout",
        "10",
    )
    assert done.returncode == 0, done.stderr
    assert "published" in done.stderr
    processing = [line for line in done.stderr.splitlines() if "Processing" in line]
    assert len(processing) == 1
    line = processing[0]
    assert "wippy_queue.lua.app.queue:task_handler" in line
    assert "task_id=task-123" in line and "consumer=app.queue:task_consumer" in line


def test_the_example_validates() -> None:
    done = _cli("validate", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert "function.lua" in done.stdout
