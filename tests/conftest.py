"""Shared test helpers.

``async def`` tests run here with ``asyncio.run`` (no pytest-asyncio dependency),
each bounded by ``ASYNC_TEST_TIMEOUT_S`` so that a hang fails fast with a clear
error instead of waiting for pytest-timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import backends
import pytest
from backends import Backend

from wippy_queue.functions.python import PythonHandler
from wippy_queue.plugins import Plugins, default_plugins
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.registry import Registry

ASYNC_TEST_TIMEOUT_S = 30.0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Some dev venvs carry pytest-asyncio (not a dependency of ours): its configure hook
    # warns about an unset option, which ``filterwarnings = error`` turns into a crash.
    warnings.filterwarnings(
        "ignore",
        message='The configuration option "asyncio_default_fixture_loop_scope" is unset',
        category=pytest.PytestDeprecationWarning,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in a fresh event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}

    async def bounded() -> None:
        async with asyncio.timeout(ASYNC_TEST_TIMEOUT_S):
            await pyfuncitem.obj(**kwargs)

    asyncio.run(bounded())
    return True


def write(path: Path, text: str) -> Path:
    """Write dedented ``text`` to ``path`` (parents created); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write_file("app/_index.yaml", text)`` writes under ``tmp_path``."""

    def _write(name: str, text: str) -> Path:
        return write(tmp_path / name, text)

    return _write


class _FixedHandler:
    """A ``function.python`` builder whose every entry runs ``fn`` (a test's callable)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def build(self, entry: Entry, registry: Registry) -> PythonHandler:
        return PythonHandler(entry.id, self._fn)


def handler_plugins(fn: Callable[..., Any]) -> Plugins:
    """The default plugin table, with every ``function.python`` entry running ``fn``."""
    plugins = default_plugins()
    plugins.replace("function.python", factory=lambda: _FixedHandler(fn))
    return plugins


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect a test's runs on drivers its ``@pytest.mark.backends(...)`` leaves out.

    Those runs do not apply (a capability the other drivers lack), so they are not
    collected at all rather than reported as skipped: in CI a skip must mean something
    is missing.
    """
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        only = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        driver = callspec.params.get("backend") if callspec is not None else None
        if only is not None and driver is not None and driver not in only.args:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=backends.BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Run the test once per driver (its entries built with ``backends.current()``).

    ``@pytest.mark.backends("memory", reason=...)`` keeps a test to the drivers it names
    (a capability the others lack); its runs on the others are deselected.
    """
    chosen = backends.make(request.param)
    token = backends.use(chosen)
    yield chosen
    backends.reset(token)
    chosen.cleanup()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what ``main(["run", ...])`` run in-process does to the root logger (the CLI
    installs its own handlers and level there)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
