"""function.python handler files: executed once per runtime, never shared across runtimes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime

ENTRIES = """
namespace: t
entries:
  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: q, kind: queue.queue, driver: mem}
  - {name: a, kind: function.python, source: file://h.py, method: handle}
  - {name: b, kind: function.python, source: file://h.py, method: handle}
  - {name: ca, kind: queue.consumer, queue: q, func: a}
  - {name: cb, kind: queue.consumer, queue: q, func: b}
"""

HANDLER = """
loads = []
loads.append(1)

async def handle(data):
    return len(loads)
"""


async def test_a_handler_file_runs_once_per_runtime_and_afresh_in_the_next(
    tmp_path: Path,
) -> None:
    write(tmp_path / "e.yaml", ENTRIES)
    write(tmp_path / "h.py", HANDLER)
    first = Runtime.load(tmp_path)
    results = {await c.handler.call({}) for c in first.consumers.values()}
    assert results == {1}  # both consumers share one execution of the file
    second = Runtime.load(tmp_path)
    (tmp_path / "h.py").write_text(HANDLER.replace("len(loads)", "len(loads) + 100"))
    third = Runtime.load(tmp_path)
    assert {await c.handler.call({}) for c in second.consumers.values()} == {1}
    assert {await c.handler.call({}) for c in third.consumers.values()} == {101}


@pytest.mark.parametrize("raises", ["import sys; sys.exit(3)", "raise BaseException('odd')"])
def test_a_handler_file_that_exits_at_import_is_a_load_problem(tmp_path: Path, raises: str) -> None:
    """``sys.exit()`` (or another non-Exception) at a handler file's top level: a load
    problem naming the file and entry (before, ``validate`` and ``run`` exited with
    its code, saying nothing, or printed a traceback)."""
    write(tmp_path / "h.py", raises + "\n\ndef handle(data):\n    return None\n")
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory}
          - {name: q, kind: queue.queue, driver: mem}
          - {name: fn, kind: function.python, source: "file://h.py", method: handle}
          - {name: c, kind: queue.consumer, queue: q, func: fn}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    (problem,) = caught.value.problems
    assert problem.entry_id == "app:fn" and "h.py" in problem.message
    assert "importing" in problem.message
