"""bench/sqlite.py still runs (its own rows only: the peers are in the bench extra).
No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.timeout(60)
def test_the_sqlite_bench_prints_its_table(tmp_path: Path) -> None:
    argv = ["--only", "wippy-full", "wippy-normal", "--n", "200", "--repeat", "1"]
    argv += ["--no-fsyncs", "--svg", str(tmp_path / "chart.svg")]
    done = subprocess.run(
        [sys.executable, str(BENCH / "sqlite.py"), *argv],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert "| wippy-queue sqlite | synchronous full" in done.stdout
    assert "commits/msg" in done.stdout
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
