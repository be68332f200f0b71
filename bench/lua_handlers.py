"""Lua-handler throughput beside the Python handlers, on the memory driver.

Each row publishes N messages to one queue and drains them with a consumer of
concurrency 4 and prefetch 20, in this one process; rows are interleaved round by
round, ``--repeat`` times, and the table shows the median. The clock starts before
the first publish and stops once the queue is idle (every message acked).

Rows: ``function.python`` async and sync no-ops (the baseline), a ``function.lua``
no-op, and the seed page's Lua handler (json.decode, logger.info with logging off,
process_task), which is what a Wippy user actually runs.

    pip install -e '.[lua]'
    python bench/lua_handlers.py [--n 20000] [--repeat 5] [--svg chart.svg]
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness import CONCURRENCY, PREFETCH, Timing, clock, since

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


#: row name -> the handler entry's fields
ROWS: dict[str, dict[str, Any]] = {
    "python async no-op": {
        "kind": "function.python",
        "source": "file://handlers.py",
        "method": "noop_async",
    },
    "python sync no-op (threads)": {
        "kind": "function.python",
        "source": "file://handlers.py",
        "method": "noop_sync",
    },
    "lua no-op": {"kind": "function.lua", "source": "file://noop.lua"},
    "lua seed handler": {
        "kind": "function.lua",
        "source": "file://seed.lua",
        "modules": ["json", "logger"],
    },
}


@dataclass
class HandlerRow(harness.Row):
    folder: Path


def write_apps(root: Path, n: int) -> list[HandlerRow]:
    """One entry folder per row, all sharing the handler files."""
    rows = []
    for index, (key, handler) in enumerate(ROWS.items()):
        folder = root / f"app{index}"
        folder.mkdir()
        (folder / "handlers.py").write_text(PYTHON_HANDLERS)
        (folder / "noop.lua").write_text(LUA_NOOP)
        (folder / "seed.lua").write_text(LUA_SEED)
        document = harness.bench_entries({"name": "handler", **handler}, max_length=n)
        (folder / "_index.yaml").write_text(json.dumps(document))
        rows.append(HandlerRow(key, folder))
    return rows


async def one_run(row: HandlerRow, n: int) -> Timing:
    from wippy_queue import Runtime

    runtime = Runtime.load(row.folder)
    async with runtime:
        started = clock()
        for i in range(n):
            await runtime.publish("bench:jobs", {"id": f"task-{i}", "action": "process"})
        await runtime.join("bench:jobs")
        elapsed = since(started)
        info = await runtime.info("bench:jobs")
    if info.message_count or info.in_flight:
        raise SystemExit(f"{row.key}: {info.message_count} messages left: results invalid")
    return elapsed


def _cells(row: HandlerRow, baseline_s: float) -> list[str]:
    """msg/s is N over the median run time, as the median s column shows."""
    ratio = f"{baseline_s / row.wall_s:.2f}x"
    return [row.key, f"{row.wall_s:.3f}", f"{row.n / row.wall_s:,.0f}", row.rate_range, ratio]


def table(rows: list[HandlerRow], n: int) -> str:
    baseline = next(row for row in rows if row.key == "python async no-op")
    header = [f"handler (N={n:,}, concurrency {CONCURRENCY}, prefetch {PREFETCH})", "median s"]
    header += ["msg/s", "min-max msg/s", "vs python async"]
    return harness.markdown_table(header, [_cells(row, baseline.wall_s) for row in rows])


def main(argv: list[str] | None = None) -> int:
    args = harness.parse(harness.parser(__doc__), argv)
    try:
        import lupa  # noqa: F401
    except ImportError:
        print("needs lupa: pip install 'wippy-queue[lua]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_apps(Path(tmp), args.n)
        # no warm-up run: every row's first round includes its first-call costs
        harness.measure(
            rows,
            lambda row, n: asyncio.run(one_run(row, n)),
            n=args.n,
            repeat=args.repeat,
            warmup=0,
        )
    print(table(rows, args.n))
    print(
        f"\nPython {platform.python_version()}, {platform.machine()}, "
        f"{platform.system()}; median of {args.repeat} runs"
    )
    if args.svg:
        harness.write_chart(
            args.svg,
            [harness.Bar(r.key, r.n / r.wall_s, r.low, r.high) for r in rows],
            title="bench/lua_handlers.py: function.lua handlers beside function.python",
            n=args.n,
            repeat=args.repeat,
            settings=f"concurrency {CONCURRENCY}, prefetch {PREFETCH}; no warm-up run",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
