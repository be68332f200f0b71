"""bench/amqp.py runs end to end on the broker, with the peers installed here (CI
installs only the test extra: wippy-queue's row at least). No timings are asserted."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import amqp_support
import pytest

pytestmark = pytest.mark.services

BENCH = Path(__file__).parents[2] / "bench"

#: row key -> the modules it needs
PEERS = {
    "dramatiq": ("dramatiq", "pika"),
    "celery": ("celery",),
    "taskiq-aio-pika": ("taskiq", "taskiq_aio_pika"),
}


def installed(modules: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.timeout(240)
def test_the_amqp_bench_prints_a_row_per_system(tmp_path: Path) -> None:
    amqp_support.require()
    rows = ["wippy-queue", *(key for key, mods in PEERS.items() if installed(mods))]
    argv = ["--n", "100", "--repeat", "1", "--warmup", "0", "--only", *rows]
    argv += ["--url", amqp_support.URL, "--json", str(tmp_path / "amqp.json")]
    done = subprocess.run(
        [sys.executable, str(BENCH / "amqp.py"), *argv],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # the header and one line per row
    assert (tmp_path / "amqp.json").exists()
