"""The README's commands are executed, so that they cannot rot.

Every `wippy-queue ...` line in a ```console block runs (as `python -m wippy_queue`,
from the repository root, in order) and must exit 0; the quick start's install
steps are skipped but its `wippy-queue` command runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
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


@pytest.mark.timeout(120)
def test_readme_commands_exit_zero(tmp_path: Path) -> None:
    for command in commands():
        # files the README writes under /tmp go to this test's own folder
        argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(command)[1:]]
        if argv[0] == "run" and "--timeout" not in argv:
            argv += ["--timeout", "20"]
        done = subprocess.run(
            [sys.executable, "-m", "wippy_queue", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, command


PYTHON = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.timeout(60)
def test_readme_python_blocks_run() -> None:
    blocks = PYTHON.findall(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
