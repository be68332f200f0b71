"""Entry files -> registry: the file format, references, and every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.cli import main
from wippy_queue.errors import Problem
from wippy_queue.functions.python import PythonFunctionConfig
from wippy_queue.queue.config import ConsumerConfig, QueueConfig

HANDLER = """
def handle(data):
    return True
"""


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line of ``path`` containing ``needle``."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    assert len(hits) >= occurrence, f"{needle!r} not found {occurrence} times in {path}"
    return hits[occurrence - 1]


# -- the file format ---------------------------------------------------------------


def test_entry_file_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WQ_TEST_QUEUE_NAME", "orders_v2")
    monkeypatch.delenv("WQ_TEST_UNSET", raising=False)
    write(tmp_path / "handlers" / "orders.py", HANDLER)
    write(
        tmp_path / "app.yaml",
        """
        version: "1.0"
        namespace: shop.orders
        meta:
          team: payments
          tier: gold
        entries:
          - name: mem
            kind: queue.driver.memory
            meta:
              tier: silver
              comment: entry meta wins over file meta
          - name: orders
            kind: queue.queue
            driver: mem
            queue_name: ${env:WQ_TEST_QUEUE_NAME}
            codec: ${env:WQ_TEST_UNSET:-json}
          - name: handle
            kind: function.python
            data:
              source: file://handlers/orders.py
              method: handle
          - name: worker
            kind: queue.consumer
            queue: orders
            func: shop.orders:handle
        """,
    )
    registry = Runtime.load(tmp_path / "app.yaml").registry

    assert sorted(registry.entries) == [
        "shop.orders:handle",
        "shop.orders:mem",
        "shop.orders:orders",
        "shop.orders:worker",
    ]
    mem = registry.get("shop.orders:mem")
    assert (mem.namespace, mem.name, mem.kind) == ("shop.orders", "mem", "queue.driver.memory")
    assert mem.meta == {
        "team": "payments",
        "tier": "silver",
        "comment": "entry meta wins over file meta",
    }
    assert registry.get("shop.orders:worker").meta == {"team": "payments", "tier": "gold"}

    orders = registry.config("shop.orders:orders")
    assert isinstance(orders, QueueConfig)
    assert orders.driver == "shop.orders:mem"  # unqualified: resolved in own namespace
    assert orders.queue_name == "orders_v2"  # ${env:NAME}
    assert orders.codec == "json"  # ${env:NAME:-default}

    handle = registry.config("shop.orders:handle")
    assert isinstance(handle, PythonFunctionConfig)  # explicit data: mapping
    assert handle.source == "file://" + str((tmp_path / "handlers" / "orders.py").resolve())
    assert handle.method == "handle"

    worker = registry.config("shop.orders:worker")
    assert isinstance(worker, ConsumerConfig)
    assert (worker.queue, worker.func) == ("shop.orders:orders", "shop.orders:handle")
    assert (worker.concurrency, worker.prefetch, worker.auto_ack) == (1, 10, False)
    assert worker.lifecycle.auto_start is False
    assert worker.lifecycle.restart.initial_delay == 1.0
    assert worker.lifecycle.restart.max_delay == 90.0
    # a consumer depends on its queue and function, a queue on its driver
    assert set(registry.dependencies["shop.orders:worker"]) == {
        "shop.orders:orders",
        "shop.orders:handle",
    }
    assert registry.dependencies["shop.orders:orders"] == ("shop.orders:mem",)


def test_file_paths_are_relative_to_the_entry_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "deep" / "nested" / "h.py", HANDLER)
    write(
        tmp_path / "deep" / "nested" / "fn.yaml",
        """
        namespace: app
        entries:
          - name: fn
            kind: function.python
            source: file://h.py
            method: handle
        """,
    )
    monkeypatch.chdir(tmp_path)
    registry = Runtime.load("deep").registry
    config = registry.config("app:fn")
    assert isinstance(config, PythonFunctionConfig)
    assert config.source == "file://" + str((tmp_path / "deep" / "nested" / "h.py").resolve())


def test_directory_tree_across_namespaces(tmp_path: Path) -> None:
    write(tmp_path / "handler.py", HANDLER)
    write(
        tmp_path / "infra" / "drivers.yaml",
        """
        namespace: infra
        entries:
          - name: mem
            kind: queue.driver.memory
        """,
    )
    write(
        tmp_path / "apps" / "billing" / "queues.yml",
        """
        namespace: apps.billing
        entries:
          - name: invoices
            kind: queue.queue
            driver: infra:mem
          - name: worker
            kind: queue.consumer
            queue: invoices
            func: shared:fn
        """,
    )
    write(
        tmp_path / "shared.yaml",
        """
        namespace: shared
        entries:
          - name: fn
            kind: function.python
            source: file://handler.py
            method: handle
        """,
    )
    # a YAML file that is not an entry file (no namespace/entries) is skipped in a scan
    write(tmp_path / "apps" / "billing" / "policy_cases.yaml", "cases:\n  - allow: true\n")
    write(tmp_path / "notes.txt", "not yaml at all: [")

    registry = Runtime.load(tmp_path).registry

    assert sorted(registry.entries) == [
        "apps.billing:invoices",
        "apps.billing:worker",
        "infra:mem",
        "shared:fn",
    ]
    order = registry.start_order()
    assert order.index("infra:mem") < order.index("apps.billing:invoices")
    assert order.index("apps.billing:invoices") < order.index("apps.billing:worker")
    assert order.index("shared:fn") < order.index("apps.billing:worker")


def test_concurrency_and_prefetch_at_or_below_zero_fall_back_to_defaults(tmp_path: Path) -> None:
    write(tmp_path / "handler.py", HANDLER)
    write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory}
          - {name: q, kind: queue.queue, driver: mem}
          - {name: fn, kind: function.python, source: "file://handler.py", method: handle}
          - {name: zero, kind: queue.consumer, queue: q, func: fn, concurrency: 0, prefetch: 0}
          - {name: neg, kind: queue.consumer, queue: q, func: fn, concurrency: -5, prefetch: -1}
          - {name: max, kind: queue.consumer, queue: q, func: fn, concurrency: 1000,
             prefetch: 10000}
        """,
    )
    registry = Runtime.load(tmp_path).registry
    for name, expected in [("zero", (1, 10)), ("neg", (1, 10)), ("max", (1000, 10000))]:
        config = registry.config(f"app:{name}")
        assert isinstance(config, ConsumerConfig)
        assert (config.concurrency, config.prefetch) == expected, name


@pytest.mark.parametrize("written", ["nan", ".nan", ".inf", "inf", "-.inf"])
def test_a_duration_that_is_not_a_finite_number_is_a_problem(tmp_path: Path, written: str) -> None:
    """``retry_delay: nan`` passed every bound (a failed message retried at once, in a
    tight loop); infinities are no duration either."""
    write(tmp_path / "handler.py", HANDLER)
    path = write(
        tmp_path / "app.yaml",
        f"""
        namespace: app
        entries:
          - {{name: mem, kind: queue.driver.memory}}
          - {{name: q, kind: queue.queue, driver: mem, retry_delay: {written}}}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.entry_id) == (str(path), "app:q")
    assert "retry_delay" in str(problem) and "finite" in problem.message


def test_a_field_given_beside_data_and_under_it_is_a_problem(tmp_path: Path) -> None:
    """Which one was meant cannot be told: said, naming the field, never picked."""
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: mem
            kind: queue.driver.memory
            lifecycle: {auto_start: true}
            data:
              lifecycle: {auto_start: false}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.entry_id) == (str(path), "app:mem")
    assert "lifecycle" in str(problem) and "twice" in problem.message


def test_unset_environment_variable_without_default_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WQ_TEST_MISSING", raising=False)
    path = write(
        tmp_path / "app.yaml",
        """
        namespace: app
        entries:
          - name: mem
            kind: queue.driver.memory
          - name: q
            kind: queue.queue
            driver: mem
            queue_name: ${env:WQ_TEST_MISSING}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    problems = [p for p in caught.value.problems if "WQ_TEST_MISSING" in p.message]
    assert len(problems) == 1
    assert (problems[0].file, problems[0].entry_id) == (str(path), "app:q")


def test_missing_path_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path / "nope.yaml")
    assert caught.value.problems[0].file == str(tmp_path / "nope.yaml")
    assert "no such file" in caught.value.problems[0].message


# -- every kind of mistake, reported at once ---------------------------------------


BAD_APP = """
version: "1.0"
namespace: app
entries:
  - name: mem
    kind: queue.driver.memory
  - name: tasks
    kind: queue.queue
    driver: mem
  - name: handler
    kind: function.python
    source: file://handler.py
    method: handle
  - kind: queue.queue            # MISSING-NAME
    driver: mem
  - name: nokind                 # MISSING-KIND
    driver: mem
  - name: weird
    kind: queue.weird            # UNKNOWN-KIND
  - name: q_unknown
    kind: queue.queue
    driver: mem
    colour: blue                 # UNKNOWN-FIELD
  - name: c_type
    kind: queue.consumer
    queue: tasks
    func: handler
    concurrency: lots            # WRONG-TYPE
  - name: tasks                  # DUPLICATE
    kind: queue.queue
    driver: mem
  - name: c_missing
    kind: queue.consumer
    queue: nowhere               # MISSING-REF
    func: handler
  - name: c_wrongkind
    kind: queue.consumer
    queue: mem                   # WRONG-KIND-REF
    func: handler
  - name: c_a
    kind: queue.consumer
    queue: tasks
    func: handler
    lifecycle:
      requires: [c_b]            # CYCLE-A
  - name: c_b
    kind: queue.consumer
    queue: tasks
    func: handler
    lifecycle:
      requires:                  # CYCLE-B
        - c_a
  - name: c_conc
    kind: queue.consumer
    queue: tasks
    func: handler
    concurrency: 1001            # TOO-CONCURRENT
  - name: c_pref
    kind: queue.consumer
    queue: tasks
    func: handler
    prefetch: 10001              # TOO-MUCH-PREFETCH
  - name: q_dl
    kind: queue.queue
    driver: mem
    dead_letter:
      queue: nowhere_dl          # MISSING-DL-REF
  - name: c_uses_invalid
    kind: queue.consumer
    queue: q_unknown             # invalid itself, so no second "not defined" problem
    func: handler
"""

MALFORMED = """
namespace: broken
entries:
  - name: x
    kind: queue.driver.memory
    lifecycle: auto_start: true
"""

NO_NAMESPACE = """
version: "1.0"
entries:
  - name: orphan
    kind: queue.driver.memory
"""


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    write(folder / "handler.py", HANDLER)
    write(folder / "app.yaml", BAD_APP)
    write(folder / "sub" / "malformed.yaml", MALFORMED)
    write(folder / "sub" / "no_namespace.yaml", NO_NAMESPACE)
    return folder


def expected_problems(folder: Path) -> list[tuple[str, int, str | None, str | None, str]]:
    """(file, line, entry id, field, words the message must contain) for each mistake."""
    app = folder / "app.yaml"
    malformed = folder / "sub" / "malformed.yaml"
    a = str(app)
    return [
        (str(malformed), line_of(malformed, "auto_start"), None, None, "malformed YAML"),
        (str(folder / "sub" / "no_namespace.yaml"), 1, None, None, "missing 'namespace'"),
        (a, line_of(app, "MISSING-NAME"), None, "name", "missing 'name'"),
        (a, line_of(app, "MISSING-KIND"), "app:nokind", "kind", "missing 'kind'"),
        (a, line_of(app, "UNKNOWN-KIND"), "app:weird", "kind", "unknown kind 'queue.weird'"),
        (a, line_of(app, "UNKNOWN-FIELD"), "app:q_unknown", "colour", "unknown field"),
        (a, line_of(app, "WRONG-TYPE"), "app:c_type", "concurrency", "valid integer"),
        (a, line_of(app, "DUPLICATE"), "app:tasks", "name", "duplicate ID"),
        (a, line_of(app, "MISSING-REF"), "app:c_missing", "queue", "'app:nowhere'"),
        (a, line_of(app, "WRONG-KIND-REF"), "app:c_wrongkind", "queue", "queue.driver.memory"),
        (a, line_of(app, "MISSING-DL-REF"), "app:q_dl", "dead_letter.queue", "'app:nowhere_dl'"),
        (a, line_of(app, "TOO-CONCURRENT"), "app:c_conc", "concurrency", "1000"),
        (a, line_of(app, "TOO-MUCH-PREFETCH"), "app:c_pref", "prefetch", "10000"),
    ]


def test_every_mistake_is_reported_at_once_with_file_line_entry_and_field(
    bad_folder: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        Runtime.load(bad_folder)
    problems = caught.value.problems
    app = bad_folder / "app.yaml"

    cycles = [p for p in problems if "cycle" in p.message]
    assert len(cycles) == 1, cycles
    cycle = cycles[0]
    assert "app:c_a" in cycle.message and "app:c_b" in cycle.message
    assert (cycle.file, cycle.field) == (str(app), "lifecycle.requires")
    assert (cycle.entry_id, cycle.line) in {
        ("app:c_a", line_of(app, "CYCLE-A")),
        ("app:c_b", line_of(app, "CYCLE-B")),
    }

    others = [p for p in problems if p is not cycle]
    expected = expected_problems(bad_folder)
    got = {(p.file, p.line, p.entry_id, p.field) for p in others}
    assert got == {e[:4] for e in expected}, "\n".join(map(str, problems))
    assert len(others) == len(expected), "\n".join(map(str, problems))
    for *where, words in expected:
        (match,) = [p for p in others if [p.file, p.line, p.entry_id, p.field] == where]
        assert words in match.message, match


def test_problem_messages_say_what_to_do(bad_folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Runtime.load(bad_folder)
    by_entry = {p.entry_id: p.message for p in caught.value.problems if p.entry_id}
    assert "queue.driver.memory" in by_entry["app:weird"]  # lists the known kinds
    assert "driver" in by_entry["app:q_unknown"]  # lists the known fields
    assert "got 'lots'" in by_entry["app:c_type"]
    assert "already defined at" in by_entry["app:tasks"]
    assert "must be queue.queue" in by_entry["app:c_wrongkind"]


SHAPE_MISTAKES = """
namespace: app
meta: just a string             # FILE-META
entries:
  - name: mem
    kind: queue.driver.memory
    meta: hello                 # ENTRY-META
  - name: mem2
    kind: queue.driver.memory
    data: [1, 2]                # DATA-LIST
  - name: 123                   # NAME-NUMBER
    kind: queue.driver.memory
  - name: q
    kind: 7                     # KIND-NUMBER
  - name: c
    kind: queue.consumer
    queue: q
    func: fn
    concurrency: true           # BOOL-FOR-INT
    auto_ack: "yes"             # STRING-FOR-BOOL
    lifecycle:
      restart:
        max_attempts: 2.5       # FLOAT-FOR-INT
"""


def test_entry_shape_mistakes_are_problems_not_tracebacks(tmp_path: Path) -> None:
    path = write(tmp_path / "app.yaml", SHAPE_MISTAKES)
    with pytest.raises(ConfigError) as caught:
        Runtime.load(path)
    got = {(p.line, p.entry_id, p.field): p.message for p in caught.value.problems}
    expected = {
        (line_of(path, "FILE-META"), None, "meta"): "mapping",
        (line_of(path, "ENTRY-META"), "app:mem", "meta"): "mapping",
        (line_of(path, "DATA-LIST"), "app:mem2", "data"): "mapping",
        (line_of(path, "NAME-NUMBER"), None, "name"): "string",
        (line_of(path, "KIND-NUMBER"), "app:q", "kind"): "string",
        (line_of(path, "BOOL-FOR-INT"), "app:c", "concurrency"): "integer",
        (line_of(path, "STRING-FOR-BOOL"), "app:c", "auto_ack"): "boolean",
        (line_of(path, "FLOAT-FOR-INT"), "app:c", "lifecycle.restart.max_attempts"): "integer",
        # reported beside the field errors of the same entry, not after they are fixed
        (line_of(path, "func: fn"), "app:c", "func"): "'app:fn', which is not defined",
    }
    assert set(got) == set(expected), "\n".join(map(str, caught.value.problems))
    for key, words in expected.items():
        assert words in got[key], (key, got[key])


def test_validate_prints_every_problem_and_exits_1(
    bad_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["validate", str(bad_folder)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    lines = (out + err).splitlines()
    for file, line, entry_id, field, words in expected_problems(bad_folder):
        prefix = ": ".join(str(part) for part in (f"{file}:{line}", entry_id, field) if part)
        assert any(ln.startswith(prefix + ": ") and words in ln for ln in lines), prefix
    app = bad_folder / "app.yaml"
    assert any(
        ln.startswith(f"{app}:") and ": lifecycle.requires: dependency cycle" in ln for ln in lines
    )


def test_validate_good_folder_prints_a_one_line_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = Path(__file__).resolve().parents[2] / "examples" / "seed"
    code = main(["validate", str(seed)])
    out, err = capsys.readouterr()
    assert code == 0
    # the Wippy page's queue has no dead-letter queue: a warning, printed apart
    (warning,) = err.splitlines()
    assert ": app.queue:tasks: dead_letter: warning: " in warning
    assert len(out.strip().splitlines()) == 1
    assert "4 entries" in out


def test_problem_format_is_file_line_entry_field_message() -> None:
    problem = Problem("too large", "a.yaml", 7, "app:c", "prefetch")
    assert str(problem) == "a.yaml:7: app:c: prefetch: too large"
    assert str(Problem("bad YAML", "b.yaml", 2)) == "b.yaml:2: bad YAML"
    error = ConfigError([problem, Problem("x", "b.yaml", 1)])
    assert error.problems[0] is problem
    assert "a.yaml:7: app:c: prefetch: too large" in str(error).splitlines()
