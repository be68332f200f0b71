"""Lua handlers a new user got wrong (issue 15): what a start refuses, validate reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue.cli import main

# main(["run", ...]) sets up the CLI's log handlers: each test gets the logging it had
pytestmark = pytest.mark.usefixtures("restore_logging")


APP = """
namespace: app
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: mem}
  - name: handler
    kind: function.lua
    source: file://h.lua
    modules: [json]
    {method}
  - name: worker
    kind: queue.consumer
    queue: tasks
    func: handler
    lifecycle: {auto_start: true}
"""


@pytest.mark.parametrize(
    ("lua", "method", "message"),
    [
        # a module the entry does not list: start refused it, validate passed it
        (
            'local json = require("json")\nlocal log = require("logger")\n'
            "return function(body) return true end\n",
            "",
            "h.lua:2: module 'logger' is not available to app:handler; it may require: json",
        ),
        ("return 42\n", "", "app:handler returned a number, not the handler function"),
        (
            "return {main = function(body) return true end}\n",
            "method: handle",
            "app:handler has no function 'handle' (method)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_what_a_start_would_refuse_is_a_load_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lua: str,
    method: str,
    message: str,
    command: str,
) -> None:
    write(tmp_path / "h.lua", lua)
    app = tmp_path / "app.yaml"
    app.write_text(APP.replace("{method}", method))
    argv = [command, str(tmp_path)] + (["--timeout", "5"] if command == "run" else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{app}:6: app:handler: source: loading app:handler failed: " in err
    assert message in err
    assert "running" not in err  # refused before anything started
