"""One arq run for bench/redis.py, in arq's own venv (arq pins ``redis<6``; we use 8).

Not run by hand: ``bench/redis.py`` starts it as
``bench/.venv-arq/bin/python -P bench/redis_arq.py --url URL --n N ...`` once per run
and reads one JSON line from stdout. The run is the same as every other row's: an
arq ``Worker`` (``max_jobs`` 4, otherwise arq's defaults) running in this process,
N no-op jobs enqueued with ``enqueue_job`` from ``--producers`` concurrent tasks,
then wait until every job has run and arq has finished it (removed it from its
queue). Wall and CPU seconds (``time.process_time``: this whole process) are taken
around publish + drain only, as ``harness.clock``/``since`` do in the parent;
starting Python, importing arq and starting the worker are outside the clock.

Only the standard library and arq are imported: nothing from wippy_queue or bench/.
``-P`` keeps bench/ off ``sys.path`` (its ``redis.py`` would shadow the client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from importlib import metadata
from typing import Any

#: how often the drained condition is checked once every handler has run (s)
POLL_S = 0.005


async def _produce(enqueue: Any, n: int, producers: int) -> None:
    async def producer(first: int) -> None:
        for i in range(first, n, producers):
            await enqueue(i)

    await asyncio.gather(*(producer(k) for k in range(min(producers, n))))


async def run(
    url: str, n: int, producers: int, prefix: str, concurrency: int, **worker_options: Any
) -> dict[str, Any]:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    handled = 0
    all_handled = asyncio.Event()

    async def noop(ctx: dict[str, Any], i: int) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            all_handled.set()

    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings, default_queue_name=prefix)
    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=settings,
        queue_name=prefix,
        max_jobs=concurrency,
        handle_signals=False,
        **worker_options,
    )
    running = asyncio.create_task(worker.async_run())
    while worker._pool is None:  # started: its pool exists and it polls
        await asyncio.sleep(0.01)

    async def enqueue(i: int) -> None:
        job = await pool.enqueue_job("noop", i, _job_id=f"{prefix}-{i}")
        if job is None:
            raise SystemExit(f"arq refused job {i}: its id is taken")

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await _produce(enqueue, n, producers)
    await all_handled.wait()
    while await pool.zcard(prefix):  # arq removes a job from its queue once finished
        await asyncio.sleep(POLL_S)
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await worker.close()
    await pool.aclose()
    versions = {dist: metadata.version(dist) for dist in ("arq", "redis", "hiredis")}
    return {"wall_s": wall_s, "cpu_s": cpu_s, "handled": handled, "versions": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description="one arq run for bench/redis.py")
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--producers", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="queue name and job id prefix")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--poll-delay", type=float, help="arq Worker poll_delay (s)")
    parser.add_argument("--queue-read-limit", type=int, help="arq Worker queue_read_limit")
    args = parser.parse_args()
    given = {"poll_delay": args.poll_delay, "queue_read_limit": args.queue_read_limit}
    options = {key: value for key, value in given.items() if value is not None}
    result = asyncio.run(
        run(args.url, args.n, args.producers, args.prefix, args.concurrency, **options)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
