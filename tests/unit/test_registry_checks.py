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
