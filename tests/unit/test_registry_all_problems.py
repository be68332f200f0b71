"""An entry with a field error still has its references checked in the same run:
one load reports the field errors AND the missing or wrong-kind references."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.cli import main
from wippy_queue.errors import Problem

BASE = """
namespace: app
entries:
  - {name: mem, kind: queue.driver.memory}
  - {name: tasks, kind: queue.queue, driver: mem}
  - {name: handler, kind: function.python, source: "json:dumps"}
  - name: reader
    kind: security.policy
    policy: {actions: ["queue.consume"], resources: ["*"], effect: allow}
"""


def line_of(path: Path, needle: str) -> int:
    """1-based line of the only line of ``path`` containing ``needle``."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    assert len(hits) == 1, f"{needle!r} is on lines {hits} of {path}"
    return hits[0]


def load_problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    problems = caught.value.problems
    where = [(p.file, p.line, p.entry_id, p.field, p.message) for p in problems]
    assert len(where) == len(set(where)), "a problem is reported twice:\n" + "\n".join(
        map(str, problems)
    )
    return problems


def assert_problems(path: Path, expected: dict[tuple[str, str], tuple[str, str]]) -> None:
    """``expected``: (entry id, field) -> (marker on its line, words in the message);
    exactly these problems, each at the marked line of ``path``."""
    problems = load_problems(path)
    listing = "\n".join(map(str, problems))
    got = {(p.entry_id, p.field): p for p in problems}
    assert len(got) == len(problems), listing
    assert set(got) == set(expected), listing
    for key, (marker, words) in expected.items():
        problem = got[key]
        assert (problem.file, problem.line) == (str(path), line_of(path, marker)), problem
        assert words in problem.message, problem


def test_a_field_error_and_missing_references_in_one_entry_are_reported_together(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: worker
    kind: queue.consumer
    queue: app:missing          # QUEUE
    func: handler
    concurrency: "lots"         # CONCURRENCY
    lifecycle:
      security:
        actor: {id: svc}
        policies: [app:nope]    # POLICIES
""",
    )
    assert_problems(
        path,
        {
            ("app:worker", "concurrency"): ("CONCURRENCY", "got 'lots'"),
            ("app:worker", "queue"): ("QUEUE", "'app:missing', which is not defined"),
            ("app:worker", "lifecycle.security.policies"): (
                "POLICIES",
                "'app:nope', which is not defined",
            ),
        },
    )


def test_validate_prints_the_field_error_and_the_reference_error_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: worker
    kind: queue.consumer
    queue: app:missing          # QUEUE
    func: handler
    concurrency: "lots"         # CONCURRENCY
""",
    )
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = (out + err).splitlines()
    for marker, field, words in [
        ("CONCURRENCY", "concurrency", "got 'lots'"),
        ("QUEUE", "queue", "'app:missing', which is not defined"),
    ]:
        prefix = f"{path}:{line_of(path, marker)}: app:worker: {field}: "
        assert any(ln.startswith(prefix) and words in ln for ln in lines), (prefix, lines)


def test_wrong_kind_references_of_an_invalid_entry_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: worker
    kind: queue.consumer
    queue: mem                  # QUEUE
    func: tasks                 # FUNC
    prefetch: 10001             # PREFETCH
    lifecycle:
      security:
        policies: [handler]     # POLICIES
""",
    )
    assert_problems(
        path,
        {
            ("app:worker", "prefetch"): ("PREFETCH", "10000"),
            ("app:worker", "queue"): ("QUEUE", "a queue.driver.memory; it must be queue.queue"),
            ("app:worker", "func"): ("FUNC", "a queue.queue; it must be function.*"),
            ("app:worker", "lifecycle.security.policies"): (
                "POLICIES",
                "a function.python; it must be security.policy*",
            ),
        },
    )


def test_a_reference_field_with_its_own_error_gets_no_reference_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: worker
    kind: queue.consumer
    queue: "a:b:c"                          # QUEUE
    func: [handler]                         # FUNC
    lifecycle:
      requires: [nowhere, "bad id!:x"]      # REQUIRES
      depends_on: [ghost, ghost]            # DEPENDS
      restart: {jitter: 5}                  # JITTER
""",
    )
    assert_problems(
        path,
        {
            # the malformed fields are reported once, as what they are...
            ("app:worker", "queue"): ("QUEUE", "not a registry ID"),
            ("app:worker", "func"): ("FUNC", "valid string"),
            ("app:worker", "lifecycle.requires.1"): ("REQUIRES", "not a registry ID"),
            ("app:worker", "lifecycle.restart.jitter"): ("JITTER", "too large"),
            # ...while a sound reference beside an error in the same block is checked
            # (once, though it names its target twice)
            ("app:worker", "lifecycle.depends_on"): ("DEPENDS", "'app:ghost', which is not"),
        },
    )


def test_a_missing_required_field_does_not_hide_the_other_references(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: worker                # WORKER
    kind: queue.consumer
    queue: missing              # QUEUE
  - name: dlq_user
    kind: queue.queue
    driver: mem
    codec: yaml                 # CODEC
    dead_letter:
      queue: no_dlq             # DEAD_LETTER
""",
    )
    assert_problems(
        path,
        {
            ("app:worker", "func"): ("WORKER", "required field is missing"),
            ("app:worker", "queue"): ("QUEUE", "'app:missing', which is not defined"),
            ("app:dlq_user", "codec"): ("CODEC", "unknown codec 'yaml'"),
            ("app:dlq_user", "dead_letter.queue"): ("DEAD_LETTER", "'app:no_dlq', which is not"),
        },
    )


def test_a_reference_to_an_invalid_entry_is_checked_by_its_kind_not_called_undefined(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: broken_queue
    kind: queue.queue
    driver: mem
    colour: blue                # COLOUR
  - name: broken_driver
    kind: queue.driver.memory
    flavour: vanilla            # FLAVOUR
  - name: right_kind
    kind: queue.consumer
    queue: broken_queue
    func: handler
  - name: wrong_kind
    kind: queue.consumer
    queue: broken_driver        # WRONG
    func: handler
""",
    )
    assert_problems(
        path,
        {
            ("app:broken_queue", "colour"): ("COLOUR", "unknown field"),
            ("app:broken_driver", "flavour"): ("FLAVOUR", "unknown field"),
            ("app:wrong_kind", "queue"): ("WRONG", "a queue.driver.memory; it must be queue.queue"),
        },
    )


def test_a_second_entry_of_an_invalid_entrys_id_is_a_duplicate(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: jobs                  # FIRST
    kind: queue.queue
    driver: mem
    codec: yaml                 # CODEC
  - name: jobs                  # SECOND
    kind: queue.queue
    driver: mem
""",
    )
    assert_problems(
        path,
        {
            ("app:jobs", "codec"): ("CODEC", "unknown codec"),
            ("app:jobs", "name"): ("SECOND", f"already defined at {path}:{line_of(path, 'FIRST')}"),
        },
    )


def test_import_references_of_an_invalid_lua_function_are_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.yaml",
        BASE
        + """
  - name: lua_handler
    kind: function.lua
    source: "return 1\\n"
    modules: [sockets]          # MODULES
    imports:
      util: gone                # GONE
      other: handler            # OTHER
""",
    )
    assert_problems(
        path,
        {
            ("app:lua_handler", "modules"): ("MODULES", "unknown module 'sockets'"),
            ("app:lua_handler", "imports.util"): ("GONE", "'app:gone', which is not defined"),
            ("app:lua_handler", "imports.other"): ("OTHER", "it must be function.lua"),
        },
    )
