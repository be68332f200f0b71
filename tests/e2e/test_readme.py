"""The README's commands are executed, so that they cannot rot.

Every `wippy-queue ...` line in a ```console block is its own test (run as
`python -m wippy_queue`, from the repository root, in README order) and must exit 0;
the quick start's install steps are skipped but its `wippy-queue` command runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def commands() -> list[str]:
    found = []
    for block in BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and Path(words[0]).name == "wippy-queue":
                    found.append(shlex.join(["wippy-queue", *words[1:]]))
    return found


def test_readme_has_runnable_commands() -> None:
    listed = commands()
    assert any(c.startswith("wippy-queue run examples/seed ") for c in listed)
    assert any(c.startswith("wippy-queue audit verify") for c in listed)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where files the README writes under /tmp go (shared: a later command may read them)."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", commands())
def test_readme_command_exits_zero(command: str, scratch: Path) -> None:
    argv = [a.replace("/tmp/", f"{scratch}/") for a in shlex.split(command)[1:]]
    if argv[0] == "run" and "--timeout" not in argv:
        argv += ["--timeout", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "wippy_queue", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, command


PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks() -> list[str]:
    return PYTHON.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.splitlines()[0][:40])
def test_readme_python_block_runs(block: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
