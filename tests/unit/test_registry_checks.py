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


AUTO_ACK = """
namespace: t
entries:
  - {name: d, kind: queue.driver.memory}
  - {name: q, kind: queue.queue, driver: d, dead_letter: {queue: dead}}
  - {name: dead, kind: queue.queue, driver: d}
  - {name: f, kind: function.python, source: "json:dumps"}
  - name: guarded
    kind: queue.consumer
    queue: q
    func: f
    auto_ack: true
    lifecycle:
      security: {actor: {id: a}}
  - {name: plain, kind: queue.consumer, queue: q, func: f, auto_ack: true}
"""


def test_auto_ack_under_a_security_block_is_refused_at_load(tmp_path: Path) -> None:
    """Attack: auto_ack acked a denied message on delivery (gone, unrecorded)."""
    path = write(tmp_path / "app.yaml", AUTO_ACK)
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field, problem.file) == ("t:guarded", "auto_ack", str(path))
    assert problem.line == AUTO_ACK.splitlines().index("    auto_ack: true")
    assert "denied message would be acked" in str(problem)
    assert "remove auto_ack" in str(problem)


def test_auto_ack_while_auditing_is_refused_from_the_entry_and_from_the_flag(
    tmp_path: Path,
) -> None:
    plain = AUTO_ACK.split("  - name: guarded")[0]
    plain += "  - {name: plain, kind: queue.consumer, queue: q, func: f, auto_ack: true}\n"
    path = write(tmp_path / "app.yaml", plain)
    Runtime.load(path)  # no security, no audit: auto_ack is the user's choice
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path, audit_path=tmp_path / "audit.jsonl")
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field) == ("t:plain", "auto_ack")
    assert "audit trail on (--audit)" in str(problem)
    audited = plain + "  - {name: audit, kind: security.audit, path: file://audit.jsonl}\n"
    write(tmp_path / "app.yaml", audited)
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    assert [(p.entry_id, p.field) for p in caught.value.problems] == [("t:plain", "auto_ack")]
    assert "audit trail on (t:audit)" in str(caught.value)
    assert not (tmp_path / "audit.jsonl").exists()


def test_auto_ack_in_strict_mode_is_refused_from_the_settings_and_from_the_flag(
    tmp_path: Path,
) -> None:
    """Strict mode denies a consumer without a security block every message: auto_ack
    would ack each one on delivery, and it would be lost."""
    plain = AUTO_ACK.split("  - name: guarded")[0]
    plain += "  - {name: plain, kind: queue.consumer, queue: q, func: f, auto_ack: true}\n"
    path = write(tmp_path / "app.yaml", plain)
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path, strict=True)
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field) == ("t:plain", "auto_ack")
    assert "strict mode denies a consumer without a security block" in str(problem)
    write(tmp_path / "app.yaml", plain + "  - {name: s, kind: security.settings, strict: true}\n")
    with pytest.raises(ConfigError, match="t:plain: auto_ack: auto_ack: true is refused: strict"):
        Runtime.load(path)
