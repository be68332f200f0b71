"""Instructions per message, counted by valgrind: a measure this noisy VM cannot move.

Wall-clock and CPU time here move by 15-20% from run to run (and by 2x from one hour
to the next), so a change worth 3% cannot be seen in them. The number of instructions
a run executes does not move: this script runs a scenario under ``valgrind
--tool=callgrind`` at two sizes (same hash seed) and prints the difference per
message, which leaves out start-up. Use it to compare two trees of the code, then
confirm with the timed benches (instructions are not time: a system call or a cache
miss costs more than its count says).

    python bench/instructions.py memory              # this tree
    python bench/instructions.py memory-sync         # a plain ``def`` handler (threads)
    python bench/instructions.py sqlite --tree /tmp/base   # another checkout's code
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: one run of N messages: publish them, then drain with the bench's consumer
SCENARIO = """
import asyncio, importlib, itertools, sys
sys.path.insert(0, {bench!r})
sys.path.insert(0, {tmp!r})
import harness
n, kind = int(sys.argv[1]), sys.argv[2]
source = ("import itertools\\ndone = itertools.count()\\nasync def noop(data):\\n    next(done)\\n"
          "def noop_sync(data):\\n    next(done)\\n")
open({tmp!r} + "/wippy_icount_handlers.py", "w").write(source)
method = "noop_sync" if kind == "memory-sync" else "noop"
noop = {{"name": "noop", "kind": "function.python", "source": "wippy_icount_handlers:" + method}}
disk = {{"name": "disk", "kind": "queue.driver.sqlite", "path": "q.db"}}
driver = disk if kind == "sqlite" else None
document = harness.bench_entries(noop, max_length=None if kind == "sqlite" else n, driver=driver,
                                 consume_at_start=False)
if kind == "sqlite":
    document["entries"][3]["prefetch"] = 100
folder = {tmp!r} + "/" + kind + str(n)
import json, os
os.makedirs(folder)
open(folder + "/_index.yaml", "w").write(json.dumps(document))

async def main():
    from wippy_queue import Runtime
    handlers = importlib.import_module("wippy_icount_handlers")
    async with Runtime.load(folder) as runtime:
        numbers = iter(range(n))
        async def produce():
            for i in numbers:
                await runtime.publish("bench:jobs", {{"i": i}})
        await asyncio.gather(*(produce() for _ in range(100 if kind == "sqlite" else 1)))
        await runtime.start("bench:worker")
        await runtime.join("bench:jobs", timeout=300)
    assert next(handlers.done) == n, "messages lost"

asyncio.run(main())
"""


def instructions(tree: Path | None, kind: str, n: int, tmp: str) -> int:
    script = Path(tmp) / "scenario.py"
    script.write_text(SCENARIO.format(bench=str(BENCH), tmp=tmp))
    env = dict(os.environ, PYTHONHASHSEED="0")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(script),
            str(n),
            kind,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the {kind} scenario failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("scenario", choices=("memory", "memory-sync", "sqlite"))
    parser.add_argument("--tree", type=Path, help="a checkout whose wippy_queue to count")
    parser.add_argument("--small", type=int, default=1_000, help="messages in the first run")
    parser.add_argument("--large", type=int, default=4_000, help="messages in the second run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wippy-icount-") as tmp:
        os.chdir(tmp)  # (the sqlite file goes here)
        small = instructions(args.tree, args.scenario, args.small, tmp)
        large = instructions(args.tree, args.scenario, args.large, tmp)
    per = (large - small) / (args.large - args.small)
    print(f"{args.scenario}: {per:,.0f} instructions per message ({args.tree or 'this tree'})")


if __name__ == "__main__":
    main()
