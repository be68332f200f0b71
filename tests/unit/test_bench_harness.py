"""bench/harness.py: the rows, the round runner, the table and the SVG chart; and the
bench scripts still start as ``python bench/<script>.py``. No timings are asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "bench"
SVG = "{http://www.w3.org/2000/svg}"


def _load_harness() -> Any:
    spec = importlib.util.spec_from_file_location("bench_harness", BENCH / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness: Any = _load_harness()


def test_measure_warms_up_then_interleaves_rounds() -> None:
    calls: list[tuple[str, int]] = []
    walls_s = iter([1.0, 1.0, 0.2, 0.5, 0.1, 0.5])  # warm-ups, round 1, round 2

    def run(row: Any, n: int) -> Any:
        calls.append((row.key, n))
        return harness.Timing(wall_s=next(walls_s), cpu_s=n / 2000)

    rows = [harness.Row("a"), harness.Row("b")]
    harness.measure(rows, run, n=100, repeat=2, warmup=10)
    assert calls == [("a", 10), ("b", 10), ("a", 100), ("b", 100), ("a", 100), ("b", 100)]
    assert [len(row.timings) for row in rows] == [2, 2]
    assert rows[0].rates == [500.0, 1000.0]
    assert (rows[0].median, rows[0].low, rows[0].high) == (750.0, 500.0, 1000.0)
    assert rows[0].rate_range == "500-1,000"
    assert rows[0].cpu_us == 500.0


def test_markdown_table_aligns_text_left_and_numbers_right() -> None:
    text = harness.markdown_table(["name", "kind", "msg/s"], [["a", "x", "1,000"]], left=2)
    assert text.splitlines() == ["| name | kind | msg/s |", "|---|---|---:|", "| a | x | 1,000 |"]


def test_bar_chart_is_valid_svg_with_one_labelled_bar_per_row() -> None:
    bars = [
        harness.Bar("fast <async>", 42_399.0, 40_000.0, 45_000.0),
        harness.Bar("slow", 8.5, 8, 9),
    ]
    text = harness.bar_chart_svg("bench & co", ["N = 10"], bars, "messages per second")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"bench & co", "N = 10", "fast <async>", "slow", "42,399", "8.5"} <= set(texts)
    _background, *drawn = root.iter(f"{SVG}rect")
    assert len(drawn) == 2
    assert float(drawn[0].get("width", 0)) > float(drawn[1].get("width", 0)) > 0
    assert len(list(root.iter(f"{SVG}path"))) == 2  # one whisker per bar
    width = float(root.get("width", 0))
    assert all(float(t.get("x", 0)) < width for t in root.iter(f"{SVG}text"))


def test_axis_ticks_cover_the_longest_whisker() -> None:
    bars = [harness.Bar("a", 50.0, 40.0, 123_456.0)]
    root = ET.fromstring(harness.bar_chart_svg("t", [], bars, "msg/s"))
    ticks = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("font-size") == "11"]
    assert ticks[0] == "0"
    assert float(ticks[-1].replace(",", "")) >= 123_456


@pytest.mark.parametrize(
    "script",
    ["throughput", "security", "audit", "lua_handlers", "redis", "amqp", "latency", "pauses"],
)
def test_bench_scripts_start_and_take_svg(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "--svg PATH" in done.stdout


def test_the_instruction_counter_starts_and_names_its_scenarios() -> None:
    """(It needs valgrind to count; CI runs only its help.)"""
    done = subprocess.run(
        [sys.executable, str(BENCH / "instructions.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "{memory,memory-sync,sqlite}" in done.stdout and "--tree" in done.stdout


@pytest.mark.timeout(60)
def test_latency_bench_prints_its_table_on_the_memory_driver(tmp_path: Path) -> None:
    argv = ["--drivers", "memory", "--n", "200", "--repeat", "1", "--warmup", "0"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "latency.py"), *argv, "--json", str(tmp_path / "l.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "| memory | half max |" in done.stdout
    rows = json.loads((tmp_path / "l.json").read_text())["rows"]
    assert [r["load"] for r in rows] == ["max", "1k", "half max", "90% max"]


@pytest.mark.timeout(60)
def test_pause_finder_prints_its_tables_and_writes_the_chart(tmp_path: Path) -> None:
    chart = tmp_path / "pauses.svg"
    argv = ["--n", "200", "--backlog", "500", "--repeat", "1", "--warmup", "0"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "pauses.py"), *argv, "--svg", str(chart)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "| mode | CPU µs/msg |" in done.stdout
    assert "worst pauses" in done.stdout
    ET.fromstring(chart.read_text())


@pytest.mark.timeout(60)
def test_audit_bench_prints_its_table_and_writes_the_chart(tmp_path: Path) -> None:
    chart = tmp_path / "audit.svg"
    argv = ["--n", "200", "--repeat", "1", "--svg", str(chart)]
    done = subprocess.run(
        [sys.executable, str(BENCH / "audit.py"), *argv],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    header = "| row | median msg/s | range msg/s | vs unaudited | CPU µs/msg | CPU vs unaudited |"
    assert header in done.stdout.splitlines()
    labels = {t.text for t in ET.parse(chart).getroot().iter(f"{SVG}text")}
    assert {"unaudited", "audit never", "audit batch", "audit always"} <= labels


@pytest.mark.services
@pytest.mark.timeout(120)
def test_redis_bench_runs_its_rows_on_the_server() -> None:
    """bench/redis.py against the test Redis: our row, and the peers installed here (the
    bench extra; arq's row needs its own venv: left out)."""
    import services

    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    rows = {
        "wippy-queue": "| wippy-queue, queue.driver.redis",
        "taskiq-redis": "| taskiq + taskiq-redis RedisStreamBroker",
        "dramatiq": "| Dramatiq RedisBroker + Worker",
    }
    peers = {"taskiq-redis": "taskiq_redis", "dramatiq": "dramatiq"}
    keys = [k for k in rows if k not in peers or importlib.util.find_spec(peers[k])]
    argv = ["--n", "200", "--repeat", "1", "--warmup", "0", "--url", services.REDIS_URL]
    argv += ["--only", *keys]
    done = subprocess.run(
        [sys.executable, str(BENCH / "redis.py"), *argv],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    printed = [line.split(" | ")[0] for line in done.stdout.splitlines() if line.startswith("| ")]
    assert printed[1:] == [rows[k] for k in keys]


def test_the_paired_ratio_is_the_median_of_the_rounds_ratios() -> None:
    """A drift that slows both rows in one round moves the medians apart, not the
    rounds' ratios."""
    ours, peer = harness.Row("ours"), harness.Row("peer")
    for row, walls in ((ours, [1.0, 2.0, 2.0]), (peer, [3.0, 6.0, 4.0])):
        row.n = 60
        row.timings = [harness.Timing(wall_s=w, cpu_s=0.1) for w in walls]
    assert ours.paired_ratio(peer) == pytest.approx(3.0)  # rounds: 60/20, 30/10, 30/15
    assert ours.median / peer.median == pytest.approx(2.0)  # medians: 30 against 15
