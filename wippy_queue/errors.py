"""One exception root with a base per subsystem.

Messages carry the offending values and say what to do; library errors are
translated at the boundary with ``raise ... from err``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class WippyQueueError(Exception):
    """Root of every error wippy-queue raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    entry_id: str | None = None
    field: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        parts = [where]
        if self.entry_id:
            parts.append(self.entry_id)
        if self.field:
            parts.append(self.field)
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return ": ".join(parts) + f": {prefix}{self.message}"


class ConfigError(WippyQueueError):
    """The entry files are wrong; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        # one problem per line, FILE:LINE first, so editors and grep can jump to it
        lines = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{count} configuration problem{'s' * (count != 1)}:\n{lines}")


class RegistryError(WippyQueueError):
    """A registry ID that is malformed or names nothing (at run time)."""


class LifecycleError(WippyQueueError):
    """A service failed to start or to stop in time."""


class DriverError(WippyQueueError):
    """The queue backend failed or is not running."""


class PublishError(WippyQueueError):
    """A message was refused at publish: bad data, headers or queue."""


class SettleError(WippyQueueError):
    """A message was settled twice, or after its handler returned."""


class HandlerError(WippyQueueError):
    """A handler function could not be loaded or called."""


class PermissionDenied(WippyQueueError):
    """A security policy denied the action (error kind PERMISSION_DENIED)."""

    kind = "PERMISSION_DENIED"

    def __init__(self, action: str, resource: str, actor_id: str | None, reason: str) -> None:
        self.action = action
        self.resource = resource
        self.actor_id = actor_id
        self.reason = reason
        who = f"actor {actor_id!r}" if actor_id else "a caller without an actor"
        super().__init__(f"permission denied: {who} may not {action} on {resource!r} ({reason})")
