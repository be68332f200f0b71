"""The CLI as a new user met it (issue 15): every mistake is a clear message and an exit
code the README documents, never a traceback or a silent success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wippy_queue.cli import main
from wippy_queue.security.audit import AuditTrail

ROOT = Path(__file__).resolve().parent.parent


# -- item 16: a file that is no audit trail ------------------------------------------------


@pytest.mark.parametrize("command", ["verify", "show"])
@pytest.mark.parametrize("content", ["# a README\n", "", '{"a": 1}\n{"b": 2}\n'])
def test_a_file_that_is_no_audit_trail_is_bad_input_not_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: str
) -> None:
    path = tmp_path / "README.md"
    path.write_text(content)
    assert main(["audit", command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"wippy-queue audit: {path}: not an audit file: ")
    assert "TAMPERED" not in captured.out + captured.err
    assert captured.out == ""  # show prints no empty table for it


async def test_an_audit_trail_whose_header_was_edited_is_still_tampered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path)
    await trail.open()
    await trail.close()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["garbage", *lines[1:]]) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: TAMPERED: line 1: " in out and "header edited or removed" in out
    assert json.loads(lines[1])["seq"] == 1  # a record followed: that is what gave it away
