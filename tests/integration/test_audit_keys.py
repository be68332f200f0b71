"""A keyed audit chain (issue 16 item 5): with an audit key every hash is an
HMAC-SHA256, so someone who can write the file but holds no key cannot rewrite a
decision and recompute the chain; a verifier without the key says it cannot check."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write

from wippy_queue import ConfigError, Runtime
from wippy_queue.audit import AuditTrail, AuditUnavailable, verify_file
from wippy_queue.audit.chain import GENESIS, seal
from wippy_queue.cli import main

KEY = "k" * 8 + "-audit-key-0001"
OTHER = "o" * 8 + "-audit-key-0002"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WIPPY_QUEUE_AUDIT_KEY", raising=False)


def _write(path: Path, key: str | None) -> Path:
    async def make() -> None:
        trail = AuditTrail(path, key=key, key_id="k1")
        await trail.open()
        for i, decision in enumerate(["allow", "deny", "allow"]):
            await trail.record({"event": "consume", "message_id": f"m{i}", "decision": decision})
        await trail.close()

    asyncio.run(make())
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rehash(path: Path, records: list[dict[str, Any]], start: int) -> None:
    """Recompute every hash from record ``start`` on with plain SHA-256 (no key)."""
    prev = records[start - 1]["hash"] if start else GENESIS
    out = [path.read_bytes().splitlines(keepends=True)[i] for i in range(start)]
    for record in records[start:]:
        out.append(seal(record, prev))
        prev = record["hash"]
    path.write_bytes(b"".join(out))


def test_a_keyed_chain_verifies_with_its_key_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "a.jsonl", KEY)
    header = _records(path)[0]
    assert (header["mac"], header["key_id"]) == ("hmac-sha256", "k1")
    ok = verify_file(path, KEY)
    assert ok.ok and ok.key_id == "k1" and "keyed: HMAC-SHA256, key id k1" in ok.summary()
    blind = verify_file(path)
    assert not blind.ok and blind.unverifiable and "CANNOT CHECK" in blind.summary()
    assert main(["audit", "verify", str(path)]) == 3
    assert "give its key" in capsys.readouterr().out
    assert main(["audit", "verify", str(path), "--audit-key", KEY]) == 0
    key_file = write(tmp_path / "key", KEY + "\n")
    assert main(["audit", "verify", str(path), "--audit-key", f"file://{key_file}"]) == 0
    wrong = verify_file(path, OTHER)
    assert not wrong.ok and wrong.bad_line == 1 and "not key id k1's key" in str(wrong.problem)
    assert main(["audit", "verify", str(path), "--audit-key", OTHER]) == 1


def test_attack_deny_rewritten_to_allow_and_rehashed_without_the_key_fails(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "a.jsonl", KEY)
    records = _records(path)
    assert records[2]["decision"] == "deny"
    records[2]["decision"] = "allow"
    _rehash(path, records, 2)  # every hash from the edit on, recomputed with SHA-256
    result = verify_file(path, KEY)
    assert not result.ok and result.bad_line == 3 and "edited" in str(result.problem)


def test_attack_whole_chain_rewritten_unkeyed_fails_when_the_key_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "a.jsonl", KEY)
    records = _records(path)
    del records[0]["mac"], records[0]["key_id"]  # pass it off as an unkeyed chain
    records[2]["decision"] = "allow"
    _rehash(path, records, 0)
    assert verify_file(path).ok  # without the key, a plain chain is all anyone can see
    result = verify_file(path, KEY)
    assert not result.ok and result.bad_line == 1 and "not keyed" in str(result.problem)
    monkeypatch.setenv("WIPPY_QUEUE_AUDIT_KEY", KEY)  # the verifier's key from the env
    assert main(["audit", "verify", str(path)]) == 1
    assert "TAMPERED: line 1" in capsys.readouterr().out


def test_unkeyed_chains_keep_working_and_are_not_mixed_with_keyed_ones(tmp_path: Path) -> None:
    plain = _write(tmp_path / "plain.jsonl", None)
    assert verify_file(plain).ok and verify_file(plain).key_id is None
    with pytest.raises(AuditUnavailable, match="not keyed"):
        _write(plain, KEY)  # a keyed runtime never extends a chain nobody keyed
    keyed = _write(tmp_path / "keyed.jsonl", KEY)
    with pytest.raises(AuditUnavailable, match=r"is keyed \(key id k1\) and no audit key"):
        _write(keyed, None)
    with pytest.raises(AuditUnavailable, match="fails verification"):
        _write(keyed, OTHER)
    assert verify_file(keyed, KEY).ok


APP = """
namespace: t
entries:
  - name: audit
    kind: security.audit
    path: file://audit.jsonl
    key: ${env:APP_AUDIT_KEY}
    key_id: "2026-12"
  - {name: d, kind: queue.driver.memory}
"""


def test_the_key_comes_from_the_entry_via_env_or_file_or_from_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "app.yaml", APP)

    async def run(**options: Any) -> None:
        async with Runtime.load(path, **options):
            pass

    monkeypatch.setenv("APP_AUDIT_KEY", KEY)
    asyncio.run(run())
    audit = tmp_path / "audit.jsonl"
    assert verify_file(audit, KEY).ok and verify_file(audit, KEY).key_id == "2026-12"
    write(tmp_path / "key.txt", KEY + "\n")
    monkeypatch.setenv("APP_AUDIT_KEY", f"file://{tmp_path / 'key.txt'}")
    asyncio.run(run())  # the same key, read from a file: the chain continues
    assert verify_file(audit, KEY).ok
    flagged = tmp_path / "flag.jsonl"
    asyncio.run(run(audit_path=flagged, audit_key=OTHER))
    assert verify_file(flagged, OTHER).ok
    monkeypatch.setenv("APP_AUDIT_KEY", "short")
    with pytest.raises(ConfigError, match="key: a key needs at least 16 characters"):
        Runtime.load(path)


def test_run_takes_the_key_from_the_flag_as_env_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = write(
        tmp_path / "app.yaml", "namespace: t\nentries:\n  - {name: d, kind: queue.driver.memory}\n"
    )
    audit = tmp_path / "run.jsonl"
    monkeypatch.setenv("RUN_AUDIT_KEY", KEY)
    run = ["run", str(app), "--audit", str(audit), "--until-idle", "--timeout", "10"]
    assert main([*run, "--audit-key", "${env:RUN_AUDIT_KEY}"]) == 0
    assert verify_file(audit, KEY).ok and verify_file(audit, KEY).key_id == "default"
    monkeypatch.setenv("WIPPY_QUEUE_AUDIT_KEY", KEY)  # no flag: the environment's key
    assert main(run) == 0
    assert main(["audit", "verify", str(audit)]) == 0
    assert "keyed: HMAC-SHA256" in capsys.readouterr().out
    assert main([*run, "--audit-key", "${env:NOT_SET_ANYWHERE}"]) == 1  # a config problem
    assert "--audit-key: the environment variable NOT_SET_ANYWHERE is not set" in (
        capsys.readouterr().err
    )
    assert main(["audit", "verify", str(audit), "--audit-key", "short"]) == 2  # bad input
    assert "a key needs at least 16 characters" in capsys.readouterr().err
