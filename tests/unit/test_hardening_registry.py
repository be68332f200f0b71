"""Entry files a new user got wrong (issue 15): each is one clear problem at FILE:LINE."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.errors import Problem

# main(["run", ...]) sets up the CLI's log handlers: each test gets the logging it had
pytestmark = pytest.mark.usefixtures("restore_logging")


def problems_of(*paths: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        Runtime.load(*paths)
    return caught.value.problems


def one_problem(*paths: Path) -> Problem:
    problems = problems_of(*paths)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# -- item 2: YAML that expands without bound -----------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    lines = [
        "namespace: app",
        "entries:",
        "  - name: mem",
        "    kind: queue.driver.memory",
        "    meta:",
        '      a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]',
    ]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"      a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", alias_bomb())
    started = time.monotonic()
    problem = one_problem(path)
    assert time.monotonic() - started < 5  # it ran for minutes before
    assert problem.file == str(path)
    # a4 is the first level whose ten aliases add more than 100,000 values
    assert problem.line == 10
    assert "aliases" in problem.message and "100,000" in problem.message


def test_an_alias_inside_the_value_it_names_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "loop.yaml",
        """
        namespace: app
        entries:
          - name: mem
            kind: queue.driver.memory
            meta:
              loop: &loop [1, *loop]
        """,
    )
    problem = one_problem(path)
    assert problem.line == 6
    assert "contains it" in problem.message


def test_nesting_too_deep_is_refused_at_its_line_without_a_traceback(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    path = write(
        tmp_path / "deep.yaml",
        f"namespace: app\nentries:\n  - name: mem\n    kind: queue.driver.memory\n"
        f"    meta: {{x: {deep}}}\n",
    )
    problem = one_problem(path)
    assert (problem.line, "nested deeper than 100 levels") == (5, problem.message[:29])


def test_aliases_nesting_deep_through_each_other_are_refused(tmp_path: Path) -> None:
    # each anchor is shallow, but each holds the one before: deep once expanded
    lines = ["namespace: app", "entries:", "  - name: mem", "    kind: queue.driver.memory"]
    lines += ["    meta:", "      d0: &d0 " + "[" * 40 + "]" * 40]
    for level in range(1, 5):
        lines.append(f"      d{level}: &d{level} " + "[" * 40 + f"*d{level - 1}" + "]" * 40)
    path = write(tmp_path / "deep.yaml", "\n".join(lines) + "\n")
    problem = one_problem(path)
    assert "deeper than 100 levels" in problem.message
    assert problem.line == 8  # d2: d0 inside d1 inside d2, 120 levels below meta


def test_shared_blocks_by_merge_key_still_load(tmp_path: Path) -> None:
    write(tmp_path / "h.py", "def handle(body):\n    return True\n")
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: mem
            kind: queue.driver.memory
            lifecycle: &service {auto_start: true, stop_timeout: 2s}
          - {name: jobs, kind: queue.queue, driver: mem}
          - {name: handle, kind: function.python, source: file://h.py, method: handle}
          - name: worker
            kind: queue.consumer
            queue: jobs
            func: handle
            lifecycle:
              <<: *service
              start_timeout: 5s
        """,
    )
    runtime = Runtime.load(path)
    lifecycle = runtime.registry.get("app:worker").config.lifecycle  # type: ignore[attr-defined]
    assert (lifecycle.auto_start, lifecycle.stop_timeout, lifecycle.start_timeout) == (
        True,
        2.0,
        5.0,
    )


# -- item 5: nothing to load -------------------------------------------------------------


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    problem = one_problem(tmp_path)
    assert problem.file == str(tmp_path)
    assert "no .yaml or .yml file" in problem.message


def test_a_folder_of_other_yaml_names_each_file_and_why_it_was_skipped(tmp_path: Path) -> None:
    compose = write(tmp_path / "docker-compose.yml", "services:\n  web: {image: nginx}\n")
    listed = write(tmp_path / "list.yaml", "- a\n- b\n")
    empty = write(tmp_path / "nothing.yaml", "")
    no_entries = write(tmp_path / "app.yaml", "namespace: app\nentries: []\n")
    problem = one_problem(tmp_path)
    assert "no entries found" in problem.message
    assert f"{compose} (no 'namespace' or 'entries' at its top level; its keys: services)" in (
        problem.message
    )
    assert f"{listed} (its top level is a list, not a mapping)" in problem.message
    assert f"{empty} (empty)" in problem.message
    assert f"{no_entries} (its entries list is empty)" in problem.message


def test_validate_and_run_of_a_folder_without_entries_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wippy_queue.cli import main

    write(tmp_path / "docker-compose.yml", "services: {}\n")
    assert main(["validate", str(tmp_path)]) == 1
    assert main(["run", str(tmp_path), "--timeout", "5"]) == 1  # it idled forever
    err = capsys.readouterr().err
    assert err.count("no entries found") == 2


# -- item 13: the same file twice --------------------------------------------------------


def test_a_file_named_twice_or_inside_a_named_folder_is_read_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app" / "app.yaml",
        "namespace: app\nentries:\n  - {name: m, kind: queue.driver.memory}\n",
    )
    for paths in [(path, path), (tmp_path / "app", path), (path, tmp_path / "app" / ".." / "app")]:
        runtime = Runtime.load(*paths)
        assert list(runtime.registry.entries) == ["app:m"]


def test_lint_of_a_folder_of_policy_files_says_to_give_the_entry_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wippy_queue.cli import main

    write(tmp_path / "model.conf", "[request_definition]\nr = sub, obj, act\n")
    assert main(["policy", "lint", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path}: no entries: no .yaml or .yml file here; give the entry files" in out


# -- item 17: an unset ${env:X} ----------------------------------------------------------


def test_an_unset_env_variable_is_one_problem_at_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WQ_UNSET_KEY", "WQ_UNSET_TIMEOUT", "WQ_UNSET_DRIVER", "WQ_UNSET_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: settings
            kind: security.settings
            signing_key: ${env:WQ_UNSET_KEY}
          - name: mem
            kind: queue.driver.memory
            lifecycle:
              start_timeout: ${env:WQ_UNSET_TIMEOUT}
          - name: jobs
            kind: queue.queue
            driver: ${env:WQ_UNSET_DRIVER}
          - name: handle
            kind: function.python
            data:
              source: ${env:WQ_UNSET_SOURCE}
          - {name: worker, kind: queue.consumer, queue: jobs, func: handle}
        """,
    )
    found = {(p.line, p.entry_id, p.field): p.message for p in problems_of(path)}
    assert list(found) == [
        (5, "app:settings", "signing_key"),
        (9, "app:mem", "lifecycle.start_timeout"),
        (12, "app:jobs", "driver"),
        (16, "app:handle", "source"),
    ]
    assert found[(5, "app:settings", "signing_key")] == (
        "environment variable WQ_UNSET_KEY is not set; export it or write "
        "${env:WQ_UNSET_KEY:-default}"
    )


# -- item 8: unknown fields inside nested blocks -----------------------------------------

NESTED = """
namespace: app
entries:
  - name: settings
    kind: security.settings
    deny_backoff: {initial: 1s, maxx: 2s}
  - name: mem
    kind: queue.driver.memory
    lifecycle:
      auto_strat: true
      restart: {max_attempt: 3}
  - name: jobs
    kind: queue.queue
    driver: mem
    dead_letter: {queue: dead, max_atempts: 3}
  - {name: dead, kind: queue.queue, driver: mem}
  - name: lua
    kind: function.lua
    source: file://h.lua
    limits: {memory: 3}
    pool: {type: static, size: 2, sise: 3}
  - name: p
    kind: security.policy
    policy:
      actions: [queue.consume]
      resources: ["*"]
      effect: allow
      conditions:
        - {field: actor.id, operator: eq, value: x, valu: y}
  - name: w
    kind: queue.consumer
    queue: jobs
    func: lua
    lifecycle:
      security:
        actor: {id: w, tenant: x}
        policies: [p]
        group: [x]
"""


def test_an_unknown_nested_field_lists_the_fields_of_its_own_block(tmp_path: Path) -> None:
    write(tmp_path / "h.lua", "return function(body) return true end\n")
    path = write(tmp_path / "app.yaml", NESTED)
    found = {p.field: (p.line, p.message) for p in problems_of(path)}
    known = {field: message.partition("known fields: ")[2] for field, (_, message) in found.items()}
    assert known == {
        "deny_backoff.maxx": "initial, max",
        "lifecycle.auto_strat": "auto_start, start_timeout, stop_timeout, stable_threshold, "
        "requires, depends_on, restart, startup, security",
        "lifecycle.restart.max_attempt": "initial_delay, max_delay, backoff_factor, jitter, "
        "max_attempts",
        "dead_letter.max_atempts": "queue, max_attempts",
        "limits.memory": "instructions, memory_mb",
        # a union (a number or a block): the block's fields, without pydantic's member tag
        "pool.sise": "type, size, max_size, buffer, workers",
        "policy.conditions.0.valu": "field, operator, value, value_from",
        "lifecycle.security.actor.tenant": "id, meta",
        "lifecycle.security.group": "actor, policies, groups",
    }
    assert found["lifecycle.auto_strat"] == (
        9,
        "unknown field; did you mean 'auto_start'? known fields: " + known["lifecycle.auto_strat"],
    )
    assert found["pool.sise"][0] == 20


def test_a_value_that_fits_no_alternative_of_a_union_is_one_problem(tmp_path: Path) -> None:
    write(tmp_path / "h.lua", "return function(body) return true end\n")
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: lua, kind: function.lua, source: file://h.lua, pool: many}
        """,
    )
    problem = one_problem(path)
    assert problem.field == "pool"
    assert problem.message.count("(got 'many')") == 1
    assert "valid integer" in problem.message and "LuaPool" in problem.message
