"""Stopping tasks for certain, even when library code swallows a cancellation.

Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives just as the
future it waits on completes (gh-86296, fixed in 3.12), and redis-py awaits every
socket write through it. A task cancelled at that moment runs on as if nothing
happened; one that then waits for more work waits forever, and so does whatever
stop awaits it. So a stop cancels again until its tasks are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: how long a cancelled task may take before it is cancelled again
CANCEL_AGAIN_S = 0.1


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], again_s: float = CANCEL_AGAIN_S
) -> None:
    """Cancel ``tasks`` and wait until every one is done, cancelling again each
    ``again_s`` those that are not; their results and errors are dropped."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_s)
    await asyncio.gather(*tasks, return_exceptions=True)  # (marks their errors seen)
