"""What the CLI imports before it needs to (issue 15 item 19).

``wippy-queue --help`` took 0.9 s, most of it importing the runtime: pydantic and
every kind's model, Casbin, asyncio. The parser now imports nothing heavy; each
command imports what it runs. Checked by what is imported, never by a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wippy_queue.plugins import BUILTIN

ROOT = Path(__file__).parents[2]

#: third-party packages a quick answer never needs
HEAVY = ("pydantic", "casbin", "lupa", "aiobotocore", "redis", "aio_pika", "yaml", "asyncio")


def _kind_modules() -> set[str]:
    """Every module the plugin table names: the kinds' models, factories and checks."""
    targets = []
    for plugin in BUILTIN:
        targets += [plugin.config, plugin.factory, plugin.queue_options, plugin.consumer_options]
        targets += [plugin.capabilities, *plugin.checks]
    return {t.partition(":")[0] for t in targets if isinstance(t, str)}


def imported_by(argv: list[str]) -> tuple[int, set[str]]:
    """The exit code of ``wippy-queue ARGV`` run in a fresh interpreter, and its modules."""
    code = (
        "import json, sys\n"
        "from wippy_queue.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    exit_code, modules = json.loads(done.stderr.strip().splitlines()[-1])
    return exit_code, set(modules)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["policy", "explain", "--help"],
        ["audit", "show", "--help"],
        ["run"],  # a usage error: no PATH
    ],
    ids=" ".join,
)
def test_help_version_and_usage_errors_import_nothing_heavy(argv: list[str]) -> None:
    code, modules = imported_by(argv)
    assert code in (0, 2)
    assert sorted(m for m in HEAVY if m in modules) == []
    assert sorted(_kind_modules() & modules) == []  # no kind's pydantic model
    assert "wippy_queue.runtime" not in modules


def test_a_command_that_loads_entries_imports_only_the_kinds_it_uses() -> None:
    code, modules = imported_by(["validate", "examples/seed"])
    assert code == 0
    assert {"pydantic", "yaml", "wippy_queue.runtime", "wippy_queue.drivers.memory"} <= modules
    assert sorted(m for m in ("lupa", "aiobotocore", "redis", "aio_pika") if m in modules) == []
    unused = {"wippy_queue.drivers.sqs.config", "wippy_queue.functions.lua.config"}
    assert sorted(unused & modules) == []


def test_the_public_api_is_imported_when_first_used() -> None:
    code = (
        "import sys, wippy_queue\n"
        "before = 'wippy_queue.runtime' in sys.modules\n"
        "from wippy_queue import Runtime, current_message, ConfigError\n"
        "print(before, Runtime.__module__, current_message.__module__, "
        "'Runtime' in dir(wippy_queue))\n"
        "try:\n"
        "    wippy_queue.Nope\n"
        "except AttributeError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False wippy_queue.runtime wippy_queue.queue.api True",
        "module 'wippy_queue' has no attribute 'Nope'",
    ]
