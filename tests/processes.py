"""Real ``wippy-queue run`` processes for tests: start, stop, read what they handled.

A test's handler appends ``<pid> <n>`` to the file named by ``WQ_OUT`` when it is
done with a message (so a message a process was killed in the middle of is not
counted); ``WQ_SLEEP`` makes each message take that long.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 20.0

HANDLER = """
import os, time

def handle(data):
    time.sleep(float(os.environ.get("WQ_SLEEP", "0")))
    with open(os.environ["WQ_OUT"], "a") as out:
        out.write(f"{os.getpid()} {data['n']}\\n")
    return True
"""


def start(app: Path, out: Path, sleep_s: float = 0.0, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "WQ_OUT": str(out), "WQ_SLEEP": str(sleep_s)}
    return subprocess.Popen(
        [sys.executable, "-m", "wippy_queue", "run", str(app), "--log-level", "warning", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM (a graceful stop) and its stderr; SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def handled(out: Path) -> list[tuple[int, int]]:
    """(pid, n) for every message a handler finished."""
    if not out.exists():
        return []
    return [(int(p), int(n)) for p, n in (line.split() for line in out.read_text().splitlines())]


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (it reads files other processes write) up to a bound."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not {what} within {WAIT_S}s") from None
