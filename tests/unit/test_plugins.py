"""The plugin table: one row per kind, lazily imported, extendable by entry points."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.drivers.memory import MemoryDriver, MemoryDriverConfig
from wippy_queue.plugins import ENTRY_POINT_GROUP, Plugin, Plugins, default_plugins
from wippy_queue.registry.entry import Entry

APP = """
namespace: app
entries:
  - name: bus
    kind: queue.driver.fake
    lifecycle: {auto_start: true}
  - name: jobs
    kind: queue.queue
    driver: bus
"""


class FakeDriver(MemoryDriver):
    @classmethod
    def from_entry(cls, entry: Entry) -> FakeDriver:
        return cls(entry.id)


FAKE = Plugin(
    "queue.driver.fake",
    MemoryDriverConfig,
    role="driver",
    factory=FakeDriver.from_entry,
    options_key="fake",
    queue_options="wippy_queue.drivers.memory:MemoryQueueOptions",
)


class _EntryPoint:
    name, value = "fake", "tests:FAKE"

    def load(self) -> Any:
        return [FAKE]


def test_a_third_party_driver_registers_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def entry_points(group: str) -> list[_EntryPoint]:
        return [_EntryPoint()] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    write(tmp_path / "app.yaml", APP)
    runtime = Runtime.load(tmp_path)
    assert isinstance(runtime.drivers["app:bus"], FakeDriver)


def test_its_queue_options_are_checked_under_its_own_key(tmp_path: Path) -> None:
    write(tmp_path / "app.yaml", APP + "    driver_options: {fake: {max_lenght: 3}}\n")
    plugins = default_plugins()
    plugins.add(FAKE)
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path, plugins=plugins)
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field) == ("app:jobs", "driver_options.fake.max_lenght")
    assert "known options: max_length" in problem.message


def test_a_kind_whose_library_is_missing_names_the_pip_command(tmp_path: Path) -> None:
    write(tmp_path / "app.yaml", APP)
    plugins = Plugins([*default_plugins(), Plugin(**{**_fields(FAKE), "needs": ("wq_nope",)})])
    plugins.replace("queue.driver.fake", extra="fake")
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path, plugins=plugins)
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"{tmp_path / 'app.yaml'}:4: app:bus: kind: ")
    assert "wq_nope" in problem.message
    assert "pip install 'wippy-queue[fake]'" in problem.message


def _fields(plugin: Plugin) -> dict[str, Any]:
    return {name: getattr(plugin, name) for name in Plugin.__dataclass_fields__}


def test_loading_imports_only_the_kinds_it_uses() -> None:
    """A memory-only app never imports the Lua runtime or another kind's module."""
    code = (
        "import sys; from wippy_queue import Runtime; Runtime.load('examples/seed'); "
        "lua = ('lupa', 'wippy_queue.functions.lua'); "
        "print(sorted(m for m in sys.modules if m.startswith(lua)))"
    )
    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_asking_a_driver_for_a_longer_delay_than_it_holds_is_a_load_error(
    tmp_path: Path,
) -> None:
    from wippy_queue.queue.driver import Capabilities

    short = Plugin(**{**_fields(FAKE), "capabilities": Capabilities(max_delay_s=60)})
    write(
        tmp_path / "app.yaml",
        APP + "  - {name: s, kind: security.settings, deny_backoff: {initial: 1s, max: 2m}}\n",
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path, plugins=Plugins([*default_plugins(), short]))
    (problem,) = caught.value.problems
    assert (problem.entry_id, problem.field, problem.line) == ("app:jobs", "driver", 8)
    assert "deny_backoff.max is 120s" in problem.message and "at most 60s" in problem.message


def test_a_retry_delay_longer_than_the_driver_holds_is_a_load_error(tmp_path: Path) -> None:
    from wippy_queue.queue.driver import Capabilities

    short = Plugin(**{**_fields(FAKE), "capabilities": Capabilities(max_delay_s=60)})
    write(
        tmp_path / "app.yaml",
        APP
        + "    retry_delay: {initial: 1s, max: 2m}\n"
        + "  - {name: fixed, kind: queue.queue, driver: bus, retry_delay: 90s}\n"
        + "  - {name: ok, kind: queue.queue, driver: bus, retry_delay: 1m}\n",
    )
    with pytest.raises(ConfigError) as caught:
        Runtime.load(tmp_path, plugins=Plugins([*default_plugins(), short]))
    found = [(p.entry_id, p.field, p.line) for p in caught.value.problems]
    assert found == [("app:jobs", "retry_delay", 9), ("app:fixed", "retry_delay", 10)]
    assert "retry_delay.max is 120s" in caught.value.problems[0].message
    assert "at most 60s" in caught.value.problems[0].message
