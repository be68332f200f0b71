"""What the supervisor runs: anything that starts, stops, and may fail while running."""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol


class ServiceState(enum.Enum):
    UNKNOWN = "unknown"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    EXITED = "exited"


class Service(Protocol):
    #: set by ``start``; resolves with the error if the service dies while running
    failed: asyncio.Future[BaseException] | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
