"""Lua-handler throughput beside the Python handlers, on the memory driver.

Each row publishes N messages to one queue and drains them with a consumer of
concurrency 4 and prefetch 20, in this one process; rows are interleaved round by
round, ``--repeat`` times, and the table shows the median. The clock starts before
the first publish and stops once the queue is idle (every message acked).

Rows: ``function.python`` async and sync no-ops (the baseline), a ``function.lua``
no-op, and the seed page's Lua handler (json.decode, logger.info with logging off,
process_task), which is what a Wippy user actually runs.

    pip install -e '.[lua]'
    python bench/lua_handlers.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CONCURRENCY = 4
PREFETCH = 20

PYTHON_HANDLERS = """\
async def noop_async(data):
    return None


def noop_sync(data):
    return None
"""

LUA_NOOP = "return function(body) end\n"

LUA_SEED = """\
local json = require("json")
local logger = require("logger")

local function process_task(data)
    if type(data) ~= "table" or data.id == nil then
        return nil, "task has no id"
    end
    return {task_id = data.id, status = "done"}
end

local function handler(body)
    local data = json.decode(body)
    logger.info("Processing", {task_id = data.id})
    local result, err = process_task(data)
    if err then
        return nil, err
    end
    return result
end

return handler
"""

ENTRIES = """\
version: "1.0"
namespace: bench
entries:
  - name: memory
    kind: queue.driver.memory
    lifecycle:
      auto_start: true
  - name: jobs
    kind: queue.queue
    driver: bench:memory
    driver_options:
      memory:
        max_length: {max_length}
  - name: handler
{handler}
  - name: worker
    kind: queue.consumer
    queue: bench:jobs
    func: bench:handler
    concurrency: {concurrency}
    prefetch: {prefetch}
    lifecycle:
      auto_start: true
"""

#: row name -> the handler entry's fields (indented under ``- name: handler``)
ROWS = {
    "python async no-op": "    kind: function.python\n    source: file://handlers.py\n"
    "    method: noop_async",
    "python sync no-op (threads)": "    kind: function.python\n    source: file://handlers.py\n"
    "    method: noop_sync",
    "lua no-op": "    kind: function.lua\n    source: file://noop.lua",
    "lua seed handler": "    kind: function.lua\n    source: file://seed.lua\n"
    "    modules: [json, logger]",
}


def write_apps(root: Path, n: int) -> dict[str, Path]:
    """One entry folder per row, all sharing the handler files."""
    apps = {}
    for index, (row, handler) in enumerate(ROWS.items()):
        folder = root / f"app{index}"
        folder.mkdir()
        (folder / "handlers.py").write_text(PYTHON_HANDLERS)
        (folder / "noop.lua").write_text(LUA_NOOP)
        (folder / "seed.lua").write_text(LUA_SEED)
        (folder / "_index.yaml").write_text(
            ENTRIES.format(
                max_length=n, handler=handler, concurrency=CONCURRENCY, prefetch=PREFETCH
            )
        )
        apps[row] = folder
    return apps


async def one_run(folder: Path, n: int) -> float:
    from wippy_queue import Runtime

    runtime = Runtime.load(folder)
    async with runtime:
        started = time.perf_counter()
        for i in range(n):
            await runtime.publish("bench:jobs", {"id": f"task-{i}", "action": "process"})
        await runtime.join("bench:jobs")
        elapsed = time.perf_counter() - started
        info = await runtime.info("bench:jobs")
    if info.message_count or info.in_flight:
        raise SystemExit(f"{folder.name}: {info.message_count} messages left: results invalid")
    return elapsed


def measure(
    apps: dict[str, Path], n: int, repeat: int, report: Callable[[str], None]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {row: [] for row in apps}
    for round_no in range(1, repeat + 1):
        for row, folder in apps.items():
            gc.collect()
            elapsed = asyncio.run(one_run(folder, n))
            times[row].append(elapsed)
            report(f"round {round_no}/{repeat} {row}: {n / elapsed:,.0f} msg/s")
    return times


def table(times: dict[str, list[float]], n: int) -> str:
    baseline = statistics.median(times["python async no-op"])
    lines = [
        f"| handler (N={n:,}, concurrency {CONCURRENCY}, prefetch {PREFETCH}) "
        "| median s | msg/s | min-max msg/s | vs python async |",
        "|---|---:|---:|---:|---:|",
    ]
    for row, values in times.items():
        median = statistics.median(values)
        lo, hi = n / max(values), n / min(values)
        lines.append(
            f"| {row} | {median:.3f} | {n / median:,.0f} | {lo:,.0f}-{hi:,.0f} "
            f"| {baseline / median:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (median reported)")
    args = parser.parse_args(argv)
    try:
        import lupa  # noqa: F401
    except ImportError:
        print("needs lupa: pip install 'wippy-queue[lua]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        apps = write_apps(Path(tmp), args.n)
        times = measure(apps, args.n, args.repeat, lambda line: print(line, file=sys.stderr))
    print(table(times, args.n))
    print(
        f"\nPython {platform.python_version()}, {platform.machine()}, "
        f"{platform.system()}; median of {args.repeat} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
