"""Whole-registry checks (policy groups, Lua imports, driver options) report their
problems together with every other problem, not only once the rest is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime


def test_group_problem_is_reported_beside_an_unrelated_error(tmp_path: Path) -> None:
    write(
        tmp_path / "e.yaml",
        """
        namespace: t
        entries:
          - {name: d, kind: queue.driver.memory}
          - {name: q, kind: queue.queue, driver: d}
          - {name: broken, kind: queue.queue}
          - {name: f, kind: function.python, source: "json:dumps"}
          - name: c
            kind: queue.consumer
            queue: q
            func: f
            lifecycle:
              security:
                actor: {id: a}
                groups: [nobody_declares_this]
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path)
    fields = {(p.entry_id, p.field) for p in caught.value.problems}
    assert ("t:broken", "driver") in fields
    assert ("t:c", "lifecycle.security.groups") in fields


NO_DEAD_LETTER = """
namespace: t
entries:
  - {name: d, kind: queue.driver.memory}
  - {name: jobs, kind: queue.queue, driver: d}
  - {name: fast, kind: queue.queue, driver: d, retry_delay: 0}
  - {name: kept, kind: queue.queue, driver: d, dead_letter: {queue: dead}}
  - {name: dead, kind: queue.queue, driver: d}
  - {name: idle, kind: queue.queue, driver: d}
  - {name: f, kind: function.python, source: "json:dumps"}
  - {name: c1, kind: queue.consumer, queue: jobs, func: f}
  - {name: c2, kind: queue.consumer, queue: jobs, func: f}
  - {name: c3, kind: queue.consumer, queue: fast, func: f}
  - {name: c4, kind: queue.consumer, queue: kept, func: f}
"""


def test_a_consumed_queue_without_a_dead_letter_queue_is_a_validate_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: a message its handler always fails on is retried forever there."""
    from wippy_queue.cli import main

    write(tmp_path / "app.yaml", NO_DEAD_LETTER)
    assert main(["validate", str(tmp_path)]) == 0  # a warning: it loads and runs
    warnings = capsys.readouterr().err.splitlines()
    assert [w.split(": ")[1:3] for w in warnings] == [
        ["t:jobs", "dead_letter"],  # once per queue, however many consumers
        ["t:fast", "dead_letter"],
    ]
    assert warnings[0].startswith(f"{tmp_path / 'app.yaml'}:4: t:jobs: dead_letter: warning: ")
    assert "consumed by t:c1 but has no dead_letter" in warnings[0]
    assert "retried forever (every 30s at most)" in warnings[0]
    assert "retried forever (at once, in a tight loop)" in warnings[1]
