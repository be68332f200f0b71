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
    #: running, but its broker is unreachable: it reconnects (consumers pause)
    RECONNECTING = "reconnecting"


class Service(Protocol):
    """``failed``: set by ``start``; resolves with the error if the service dies while
    running. A service with a ``connected`` attribute that is False while running is
    shown as RECONNECTING."""

    @property
    def failed(self) -> asyncio.Future[BaseException] | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
